//! The `skein` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
#[cfg(feature = "demo")]
use skein_collector::demo;
use skein_collector::serve::shutdown_signal;
use skein_collector::{config::ServeArgs, serve};

// Ingest allocates many small, short-lived objects (decoded OTLP) next to large Arrow buffers;
// glibc's allocator fragments badly under that mix (RSS stayed >1 GiB with an empty head).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "skein",
    version,
    about = "skein: traces, span metrics and span profiles for RPC services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

// One value per process, parsed once: its size does not matter. (Without `demo`, `Serve` is
// the only large variant, which is what the lint flags.)
#[cfg_attr(not(feature = "demo"), allow(clippy::large_enum_variant))]
#[derive(Subcommand)]
enum Command {
    /// Run the collector.
    Serve(ServeArgs),
    /// Run the collector and the demo shop with generated traffic, then print where to look.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
    /// Run one demo shop service (used by `skein demo`).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    Shop(demo::ShopArgs),
    /// Prometheus rule files: `skein rules check FILE...`.
    Rules(skein_collector::alert::cli::RulesArgs),
    /// Write a development CA, server and client certificates and an auth file with one random
    /// token per role into DIR (files already there are kept).
    Certs(skein_collector::devcerts::CertsArgs),
}

fn init_logs() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("SKEIN_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("SKEIN_LOG_FORMAT").is_ok_and(|v| v == "json");
    let b = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json { b.json().init() } else { b.init() }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cli = match cli.command {
        Command::Rules(args) => return skein_collector::alert::cli::run(args),
        Command::Certs(args) => return skein_collector::devcerts::run(args),
        command => Cli { command },
    };
    // Shop services log through skein-instrument's subscriber (trace ids on every line).
    let own_logs = match cli.command {
        #[cfg(feature = "demo")]
        Command::Shop(_) => false,
        _ => true,
    };
    if own_logs {
        init_logs();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("skein: cannot start runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Serve(args) => {
            let cfg = match args.resolve() {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("skein: {e}");
                    return ExitCode::from(2);
                }
            };
            rt.block_on(async {
                let mut running = match serve::start(&cfg).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("skein: {e}");
                        return ExitCode::from(1);
                    }
                };
                tokio::select! {
                    r = running.wait() => {
                        if let Err(e) = r {
                            eprintln!("skein: {e}");
                            return ExitCode::from(1);
                        }
                    }
                    _ = shutdown_signal() => tracing::info!("shutting down"),
                }
                match running.stop().await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        eprintln!("skein: {e}");
                        ExitCode::from(1)
                    }
                }
            })
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => rt.block_on(demo::demo(args)),
        #[cfg(feature = "demo")]
        Command::Shop(args) => rt.block_on(demo::shop(args)),
        // Handled before the runtime starts.
        Command::Rules(_) | Command::Certs(_) => ExitCode::SUCCESS,
    }
}
