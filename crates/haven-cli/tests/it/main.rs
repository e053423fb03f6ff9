//! Haven's integration tests: one binary, real servers from the test bed.

mod backup;
mod config;
mod foundation;
mod restore;
mod storage;

use std::path::Path;
use std::process::{Command, Output};

/// Runs the `haven` binary built for these tests.
pub fn haven(args: &[&str]) -> Output {
    haven_env(args, &[])
}

pub fn haven_env(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_haven"));
    c.args(args)
        .env_remove("HAVEN_KEY")
        .env_remove("HAVEN_CONFIG");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run haven")
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "haven failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

pub fn path(p: &Path) -> String {
    p.display().to_string()
}
