//! Haven's integration tests: one binary, real servers from the test bed.

mod alerts;
mod audit_heads;
mod backup;
mod config;
mod dashboard;
mod drills;
mod erasure;
mod failback;
mod failover;
mod foundation;
mod handover;
mod hardening;
mod keys;
mod lab;
mod labctl;
mod mirror;
mod outages;
mod recovery;
mod repo_sync;
mod restore;
mod retention;
mod secrets;
mod storage;
mod switchover;

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

/// Commits an offset as a real group member would: join the group, then commit.
pub fn commit(b: &testbed::Broker, group: &str, topic: &str, partition: i32, offset: i64) {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let c: BaseConsumer = b
        .config()
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while c.assignment().map(|a| a.count()).unwrap_or(0) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "group {group} got no assignment"
        );
        let _ = c.poll(std::time::Duration::from_millis(100));
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))
        .unwrap();
    c.commit(&tpl, CommitMode::Sync).unwrap();
    c.unsubscribe();
}

/// Runs `haven [--json] backup --once` of `topics` from `b` into `repo`, with extra flags and
/// environment, and returns its stdout.
pub fn backup_once(
    b: &testbed::Broker,
    repo: &str,
    topics: &str,
    extra: &[&str],
    env: &[(&str, String)],
) -> String {
    let bootstrap = b.bootstrap();
    let mut args = vec![
        "--json",
        "backup",
        "--brokers",
        &bootstrap,
        "--repo",
        repo,
        "--topics",
        topics,
        "--once",
    ];
    args.extend_from_slice(extra);
    ok(&haven_env(&args, env))
}
