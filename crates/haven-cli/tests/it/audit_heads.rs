//! Signed heads on schedule (#15 item 1): `haven audit sign --every` (the loop each agent
//! runs with `[audit]`) keeps pinning the chain's end, in the repository and in the other
//! region's copy, and `[audit]` is checked like the rest of haven.toml.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{code, haven, ok, path, stderr};

fn heads(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_else(|_| Vec::new());
    v.sort();
    v.iter()
        .map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap())
        .collect()
}

#[test]
fn heads_are_signed_on_schedule_and_copied_to_the_other_region() {
    let dir = tempfile::tempdir().unwrap();
    let main = dir.path().join("main");
    let copy = dir.path().join("copy");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for d in [&main, &copy] {
            let s = haven_storage::Store::open(&path(d)).unwrap();
            haven_engine::repo::Repository::open_or_create(s, Default::default())
                .await
                .unwrap();
        }
    });
    let key = dir.path().join("signing.key");
    std::fs::write(&key, "22".repeat(32)).unwrap();
    let config = dir.path().join("haven.toml");
    let write_config = |audit: &str| {
        std::fs::write(
            &config,
            format!(
                "[repositories.main]\nurl = \"{}\"\n[repositories.eu]\nurl = \"{}\"\n{audit}",
                path(&main),
                path(&copy)
            ),
        )
        .unwrap();
    };
    let cfg = path(&config);
    let hold = |name: &str| {
        ok(&haven(&[
            "--config", &cfg, "hold", "add", name, "--repo", "main", "--topics", "x", "--reason",
            "test",
        ]))
    };
    write_config("");
    hold("h1");

    let mut signer = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(["--config", &cfg, "audit", "sign", "--repo", "main"])
        .args([
            "--signing-key-file",
            &path(&key),
            "--copy-to",
            "eu",
            "--every",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let heads_dir = main.join("audit-heads");
    let wait = |what: &str, f: &dyn Fn(&[serde_json::Value]) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f(&heads(&heads_dir)) {
            assert!(Instant::now() < deadline, "{what}: {:?}", heads(&heads_dir));
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait("two heads of entry 1", &|h| {
        h.iter().filter(|h| h["seq"] == 1).count() >= 2
    });
    hold("h2");
    wait("a head of entry 2", &|h| h.iter().any(|h| h["seq"] == 2));
    let _ = Command::new("kill").arg(signer.id().to_string()).status();
    assert!(signer.wait().unwrap().success(), "SIGTERM stops it cleanly");

    let signed = heads(&heads_dir).len();
    assert!(signed >= 3, "{signed}");
    let copies = std::fs::read_dir(copy.join("audit-heads-of"))
        .unwrap()
        .map(|d| std::fs::read_dir(d.unwrap().path()).unwrap().count())
        .sum::<usize>();
    assert_eq!(copies, signed, "every head is copied to the other region");
    let v: serde_json::Value = serde_json::from_str(&ok(&haven(&[
        "--json",
        "--config",
        &cfg,
        "audit",
        "verify",
        "--repo",
        "main",
        "--signing-key-file",
        &path(&key),
        "--heads-from",
        "eu",
    ])))
    .unwrap();
    assert_eq!(v["ok"], true, "{v:#}");
    assert!(
        v["report"]["heads_authenticated"].as_u64().unwrap() >= signed as u64,
        "{v:#}"
    );

    // [audit] is checked with the rest of the file.
    let audit = format!(
        "[audit]\nsigning_key_file = \"{}\"\nrepositories = [\"main\"]\ncopy_to = [\"eu\"]\n",
        path(&key)
    );
    write_config(&audit);
    ok(&haven(&["config", "check", "--config", &cfg]));
    for (bad, says) in [
        (audit.replace("[\"main\"]", "[\"nope\"]"), "nope"),
        (format!("{audit}sign_every_s = 2\n"), "at least 10"),
    ] {
        write_config(&bad);
        let out = haven(&["config", "check", "--config", &cfg]);
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
}

#[test]
fn a_state_directory_audit_log_is_a_chain_that_names_the_entry_edited() {
    use haven_engine::executor::{Audit, FileAudit};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let audit = FileAudit {
        dir: state.join("audit"),
    };
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        for step in 1..=4 {
            audit
                .record(
                    "switchover",
                    "ab",
                    Some(7),
                    serde_json::json!({ "step": step }),
                )
                .await
                .unwrap();
        }
    });
    let verify = || {
        haven(&[
            "--json",
            "audit",
            "verify-state",
            "--state-dir",
            &path(&state),
        ])
    };
    let v: serde_json::Value = serde_json::from_str(&ok(&verify())).unwrap();
    assert_eq!(v["report"]["entries"], 4, "{v:#}");

    let second = state.join("audit/chain/000000000002.json");
    let text = std::fs::read_to_string(&second).unwrap();
    std::fs::write(&second, text.replace("\"step\": 2", "\"step\": 9")).unwrap();
    let out = verify();
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("entry 2 "), "{text}");

    let out = haven(&["audit", "verify-state", "--state-dir", &path(dir.path())]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}
