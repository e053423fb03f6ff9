//! `haven --help` and `haven config check` on good and bad configs.

use crate::{code, haven, ok, stderr};

#[test]
fn help_lists_the_commands() {
    let out = ok(&haven(&["--help"]));
    for c in [
        "demo",
        "backup",
        "ls",
        "verify",
        "cat",
        "config",
        "restore",
        "mirror",
        "impact",
        "rewind",
        "replay",
        "compensate",
        "recover",
        "audit",
        "switchover",
        "failover",
        "failback",
        "alerts",
        "--json",
        "--config",
    ] {
        assert!(out.contains(c), "--help does not mention {c}:\n{out}");
    }
    assert_eq!(code(&haven(&["no-such-command"])), 2);
}

#[test]
fn config_check_good_and_bad() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let example = String::from_utf8(haven(&["config", "example"]).stdout).unwrap();
    let good = write("good.toml", &example);
    let out = ok(&haven(&["config", "check", &good]));
    assert!(
        out.contains("valid") && out.contains("us: bootstrap kafka-us-1:9092"),
        "{out}"
    );
    let json = ok(&haven(&["--json", "config", "check", "--config", &good]));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["config"]["jobs"]["orders"]["cluster"], "us");

    let syntax = write("syntax.toml", "[clusters.us\nbootstrap = \"a:1\"\n");
    let out = haven(&["config", "check", &syntax]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("syntax.toml") && stderr(&out).contains("line 1"),
        "{}",
        stderr(&out)
    );

    let unknown = write(
        "unknown.toml",
        "[clusters.us]\nbootstrap = \"a:1\"\nregoin = \"us\"\n",
    );
    let out = haven(&["config", "check", &unknown]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("regoin") && stderr(&out).contains("fix:"),
        "{}",
        stderr(&out)
    );

    let missing = write("missing.toml", "[repositories.main]\nregion = \"eu\"\n");
    let out = haven(&["config", "check", &missing]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("url") && stderr(&out).contains("missing"),
        "{}",
        stderr(&out)
    );

    let out = haven(&[
        "config",
        "check",
        &dir.path().join("absent.toml").display().to_string(),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("not found"), "{}", stderr(&out));
}
