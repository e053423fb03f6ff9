//! Key rotation (#15 item 4) on a real backup of a real broker: `haven key rotate` re-wraps
//! data keys without rewriting a segment, a running backup seals its next segment with the
//! new key, a backup from before the rotation restores record for record with the new key
//! alone, a key that opens only part of a selection is refused before anything is
//! read or written, and a rotation object edited by hand is damage.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testbed::{Broker, Rec};

use crate::{backup_once, code, haven, haven_env, ok, path, stderr};

fn with_key(args: &[&str], key: &Path) -> std::process::Output {
    let k = path(key);
    let mut v: Vec<&str> = args.to_vec();
    v.extend_from_slice(&["--key-file", &k]);
    haven_env(&v, &[])
}

fn json(out: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn segment_bytes(repo: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(repo.join("log"))
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (path(&p), std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    v
}

fn restore(repo: &str, bs: &str, key: &Path, target: &str) -> std::process::Output {
    let rename = format!("pay={target}");
    with_key(
        &[
            "restore",
            "--repo",
            repo,
            "--brokers",
            bs,
            "--topics",
            "pay",
            "--rename",
            &rename,
        ],
        key,
    )
}

fn batch(from: usize, n: usize) -> Vec<Rec> {
    (from..from + n)
        .map(|i| Rec::kv(&format!("acct-{}", i % 7), &format!("PAYMENT-{i:05}")))
        .collect()
}

#[test]
fn rotation_rewraps_keys_and_old_backups_restore_with_the_new_key_alone() {
    let b = Broker::start().unwrap();
    b.create_topic("pay", 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = path(&repo_dir);
    let bs = b.bootstrap();
    let k1 = dir.path().join("k1.key");
    let k2 = dir.path().join("k2.key");
    let k3 = dir.path().join("k3.key");
    for k in [&k1, &k2, &k3] {
        ok(&haven(&["key", "new", "--out", &path(k)]));
    }
    // A key file is never overwritten.
    let out = haven(&["key", "new", "--out", &path(&k1)]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    let id = |k: &Path| {
        haven_format::MasterKey::from_hex(&std::fs::read_to_string(k).unwrap())
            .unwrap()
            .id()
            .0
    };
    let (id1, id2, id3) = (id(&k1), id(&k2), id(&k3));

    // Two segments under k1.
    let k1s = path(&k1);
    for i in 0..2 {
        b.produce("pay", &batch(i * 20, 20)).unwrap();
        backup_once(&b, &repo, "pay", &["--key-file", &k1s], &[]);
    }
    // Two segments or more: a backup under load may flush twice.
    let before = segment_bytes(&repo_dir);
    assert!(before.len() >= 2, "{}", before.len());

    // A running writer holding both keys (k1 current) seals with k1, then with k2 after
    // the rotation, at its next segment.
    let both = dir.path().join("both.key");
    std::fs::write(
        &both,
        format!(
            "# k2 first: new repositories would use it\n{}{}",
            std::fs::read_to_string(&k2).unwrap(),
            std::fs::read_to_string(&k1).unwrap()
        ),
    )
    .unwrap();
    let mut writer = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args([
            "backup",
            "--brokers",
            &bs,
            "--repo",
            &repo,
            "--topics",
            "pay",
        ])
        .args(["--flush-ms", "200", "--key-file", &path(&both)])
        .env_remove("HAVEN_KEY")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));

    let rotate = |key: &Path, new: &Path| {
        haven_env(
            &[
                "--json",
                "key",
                "rotate",
                "--repo",
                &repo,
                "--key-file",
                &path(key),
                "--new-key-file",
                &path(new),
                "--reason",
                "yearly rotation",
            ],
            &[],
        )
    };
    let r = json(&rotate(&k1, &k2));
    assert_eq!(r["from"], id1.as_str());
    assert_eq!(r["to"], id2.as_str());
    // Every segment so far (the running writer may have added one under k1).
    assert!(
        r["rewrapped_segments"].as_u64().unwrap() >= before.len() as u64,
        "{r}"
    );
    // No segment was rewritten.
    assert_eq!(segment_bytes(&repo_dir)[..before.len()], before[..]);

    // The running writer's next segment is sealed with k2.
    b.produce("pay", &batch(40, 20)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while segment_bytes(&repo_dir).len() < 3 {
        assert!(
            Instant::now() < deadline,
            "the running backup wrote no segment"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = Command::new("kill").arg(writer.id().to_string()).status();
    assert!(writer.wait().unwrap().success());
    // The segment holding the records produced after the rotation is sealed with k2.
    let sealed_with = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let ring = haven_engine::load_keys(Some(&k2)).unwrap();
        let r =
            haven_engine::repo::Repository::open(haven_storage::Store::open(&repo).unwrap(), ring)
                .await
                .unwrap();
        let st = r.load_state().await.unwrap();
        let p = &st.partitions.values().next().unwrap().chunks;
        let c = p.iter().find(|c| c.meta.last_offset >= 40).unwrap();
        c.wrapped_key.as_ref().unwrap().key_id.0.clone()
    });
    assert_eq!(sealed_with, id2);
    // A segment the writer was sealing while the rotation ran may still be under k1: a
    // re-run covers it, and then there is nothing left to do.
    let _ = json(&rotate(&k2, &k2));
    let again = json(&rotate(&k2, &k2));
    assert!(again["object"].is_null(), "{again}");
    let s = json(&with_key(
        &["--json", "key", "status", "--repo", &repo],
        &k2,
    ));
    assert_eq!(s["current"], id2.as_str(), "{s}");
    assert_eq!(s["not_under_current"], serde_json::json!([]), "{s}");
    let stored = s["stored_segments"].as_u64().unwrap();
    assert!(stored >= 3, "{s}");
    let opens = |s: &serde_json::Value, id: &str| {
        s["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["id"] == id)
            .unwrap_or_else(|| panic!("{id} not in {s}"))
            .clone()
    };
    assert!(
        opens(&s, &id1)["opens_segments"].as_u64().unwrap() < stored,
        "{s}"
    );
    assert_eq!(opens(&s, &id1)["retirable"], true, "{s}");
    assert_eq!(opens(&s, &id2)["opens_segments"], stored, "{s}");

    // k1 alone opens only the first segments: refused before anything is printed or
    // produced (no partial plaintext), naming the key that would open the rest.
    let out = with_key(&["cat", "--repo", &repo, "--topic", "pay"], &k1);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(out.stdout.is_empty(), "cat printed records before failing");
    assert!(stderr(&out).contains(&id2), "{}", stderr(&out));
    let out = restore(&repo, &bs, &k1, "pay.k1");
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        b.read_partition("pay.k1", 0).map_or(true, |r| r.is_empty()),
        "a refused restore wrote records"
    );
    // A writer without the current key is refused.
    let out = haven_env(
        &[
            "backup",
            "--brokers",
            &bs,
            "--repo",
            &repo,
            "--topics",
            "pay",
            "--once",
            "--key-file",
            &k1s,
        ],
        &[],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("current key"), "{}", stderr(&out));

    // A second rotation with k2 alone (the first segments open through the first
    // rotation), then a restore with k3 alone: every record, in order.
    let r = json(&rotate(&k2, &k3));
    assert_eq!(r["to"], id3.as_str());
    assert_eq!(r["rewrapped_segments"], stored, "{r}");
    ok(&restore(&repo, &bs, &k3, "pay.copy"));
    let src = b.read_partition("pay", 0).unwrap();
    let dst = b.read_partition("pay.copy", 0).unwrap();
    assert_eq!(src.len(), 60);
    assert_eq!(dst.len(), src.len());
    for (s, d) in src.iter().zip(&dst) {
        assert_eq!(
            (&s.key, &s.value, s.timestamp),
            (&d.key, &d.value, d.timestamp)
        );
    }
    assert_eq!(
        code(&with_key(&["verify", "--repo", &repo, "--deep"], &k3)),
        0
    );
    let audit = ok(&with_key(&["--json", "audit", "--repo", &repo], &k3));
    let rotations = std::fs::read_dir(repo_dir.join("keys")).unwrap().count();
    assert!(rotations >= 2);
    assert_eq!(
        audit.matches("\"key-rotate\"").count(),
        rotations,
        "{audit}"
    );
    // PCI DSS 10.2.2 fields: who, what, when, where, outcome, object.
    let entries: serde_json::Value = serde_json::from_str(&audit).unwrap();
    let e = &entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["entry"]["action"] == "key-rotate")
        .unwrap()["entry"];
    assert_eq!(e["outcome"], "success", "{e}");
    assert!(e["object"].as_str().unwrap().starts_with("keys/"), "{e}");
    assert!(
        e["user"].is_string() && e["host"].is_string() && e["at"].is_i64(),
        "{e}"
    );

    // Bad input: a garbage new key, an unencrypted repository.
    let junk = dir.path().join("junk.key");
    std::fs::write(&junk, "not a key\n").unwrap();
    let out = rotate(&k3, &junk);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("junk.key"), "{}", stderr(&out));
    let plain = path(&dir.path().join("plain"));
    backup_once(&b, &plain, "pay", &[], &[]);
    let out = haven(&[
        "key",
        "rotate",
        "--repo",
        &plain,
        "--new-key-file",
        &path(&k3),
        "--reason",
        "x",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("not encrypted"), "{}", stderr(&out));

    // A rotation edited by hand (a wrapping swapped for another key's) is damage.
    let rot = std::fs::read_dir(repo_dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .min()
        .unwrap();
    let text = std::fs::read_to_string(&rot).unwrap();
    std::fs::write(&rot, text.replace("yearly rotation", "yearly rotatioN")).unwrap();
    let out = with_key(&["verify", "--repo", &repo], &k3);
    assert_eq!(code(&out), 1, "{}", stderr(&out));
    let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(all.contains("keys/"), "{all}");
}
