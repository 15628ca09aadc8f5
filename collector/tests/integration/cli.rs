//! The `skein` binary's exit codes and messages for bad configuration.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn serve(args: &[&str]) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    Command::new(env!("CARGO_BIN_EXE_skein"))
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn bad_config_exits_2_with_a_one_line_reason() {
    for (args, needle) in [
        (&["--retention", "forever"][..], "retention"),
        (&["--http-addr", "not-an-address"][..], "http-addr"),
        (&["--storage", "ftp://x/y"][..], "storage"),
        (&["--max-body-bytes", "0"][..], "max-body-bytes"),
        (&["--config", "/nonexistent/skein.toml"][..], "config file"),
    ] {
        let out = serve(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn unknown_flag_is_a_usage_error() {
    let out = serve(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn busy_port_is_a_runtime_failure_with_exit_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = serve(&[
        "--http-addr",
        &addr,
        "--otlp-grpc-addr",
        "127.0.0.1:0",
        "--otlp-http-addr",
        "127.0.0.1:0",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(&addr));
}

#[cfg(not(feature = "demo"))]
#[test]
fn without_the_demo_feature_demo_and_shop_are_unknown_subcommands() {
    for sub in ["demo", "shop"] {
        let out = Command::new(env!("CARGO_BIN_EXE_skein")).arg(sub).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{sub}");
        assert!(String::from_utf8_lossy(&out.stderr).contains("unrecognized subcommand"), "{sub}");
    }
}
