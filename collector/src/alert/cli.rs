//! `skein rules check FILE|DIR...`: validates rule files as `promtool check rules` does, plus
//! skein's own check that every expression is one skein can evaluate, and a directory's
//! per-tenant layout (`layout`). One success line per tenant (the default tenant's as
//! `PATH: SUCCESS: N rules found`, others' as `PATH: tenant T: SUCCESS: …`). Exit 0 when all
//! are valid; 2 with one line per problem (naming file, group and rule) otherwise.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use super::layout;
use crate::tenant::DEFAULT_TENANT;

#[derive(Debug, Args)]
pub struct RulesArgs {
    #[command(subcommand)]
    pub command: RulesCommand,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Check Prometheus rule files (or directories of them, with a sub-directory per tenant).
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

pub fn run(args: RulesArgs) -> ExitCode {
    match args.command {
        RulesCommand::Check { files } => check(&files),
    }
}

fn check(paths: &[PathBuf]) -> ExitCode {
    let mut failed = false;
    for path in paths {
        match layout::load(path) {
            Ok(tenants) => {
                let others = tenants.len() > 1;
                for (tenant, groups) in &tenants {
                    let n: usize = groups.iter().map(|g| g.rules.len()).sum();
                    if tenant != DEFAULT_TENANT {
                        println!("{}: tenant {tenant}: SUCCESS: {n} rules found", path.display());
                    } else if n > 0 || !others {
                        println!("{}: SUCCESS: {n} rules found", path.display());
                    }
                }
            }
            Err(errors) => {
                failed = true;
                for e in errors {
                    eprintln!("skein rules check: {}", e.to_string().replace('\n', " "));
                }
            }
        }
    }
    if failed { ExitCode::from(2) } else { ExitCode::SUCCESS }
}
