//! Retention and legal holds on a repository a real backup wrote: prune deletes only what
//! is past retention and under no hold, what remains verifies and restores record for
//! record, a prune stopped half-way is finished, and a manifest edited or deleted is damage.

use testbed::{Broker, Consumed, Rec};

use crate::{backup_once, code, haven, ok, path, stderr};

const DAY: i64 = 86_400_000;
const YEAR: i64 = 365 * DAY;
const PARTITIONS: i32 = 2;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn batch(b: usize, n: usize, t0: i64) -> Vec<Rec> {
    (0..n)
        .map(|i| {
            Rec::kv(
                &format!("b{b}-{i}"),
                &format!("{{\"batch\":{b},\"i\":{i}}}"),
            )
            .to_partition(i as i32 % PARTITIONS)
            .at(t0 + i as i64)
        })
        .collect()
}

fn json(out: &str) -> serde_json::Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

fn seg(repo: &std::path::Path, seq: u64) -> std::path::PathBuf {
    repo.join("log").join(format!("{seq:020}.seg"))
}

fn prune(repo: &str, keep: &str, apply: bool) -> serde_json::Value {
    let mut args = vec!["--json", "prune", "--repo", repo, "--keep", keep];
    if apply {
        args.push("--apply");
    }
    json(&ok(&haven(&args)))
}

fn seqs(plan: &serde_json::Value, field: &str) -> Vec<u64> {
    plan["plan"][field]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["seq"].as_u64().unwrap())
        .collect()
}

fn verify(repo: &str) -> (i32, serde_json::Value, String) {
    let out = haven(&["--json", "verify", "--repo", repo]);
    (
        code(&out),
        json(&String::from_utf8_lossy(&out.stdout)),
        stderr(&out),
    )
}

/// A record's key, value and timestamp.
type Content = (Option<Vec<u8>>, Option<Vec<u8>>, i64);

/// Records `ls --json` counts as pruned, over every partition.
fn pruned_records(ls: &serde_json::Value) -> u64 {
    ls["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pruned"].as_u64().unwrap())
        .sum()
}

fn content(rs: &[Consumed]) -> Vec<Content> {
    rs.iter()
        .map(|r| (r.key.clone(), r.value.clone(), r.timestamp))
        .collect()
}

#[test]
fn prune_deletes_only_what_is_past_retention_and_not_held_and_what_remains_verifies() {
    let b = Broker::start().unwrap();
    b.create_topic("payments", PARTITIONS).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path().join("repo");
    let repo = path(&repo_dir);
    let now = now_ms();
    // Four backups: 9 and 8 years old, a day old, an hour old. A backup may flush more
    // than once: each batch's segments are told by the log's length around it.
    let starts = [now - 9 * YEAR, now - 8 * YEAR, now - DAY, now - 3_600_000];
    let segments = || {
        json(&ok(&haven(&["--json", "ls", "--repo", &repo])))["segments"]
            .as_u64()
            .unwrap_or(0)
    };
    let mut of_batch: Vec<Vec<u64>> = Vec::new();
    for (i, t0) in starts.iter().enumerate() {
        let before = if i == 0 { 0 } else { segments() };
        b.produce("payments", &batch(i, 40, *t0)).unwrap();
        backup_once(&b, &repo, "payments", &[], &[]);
        of_batch.push((before + 1..=segments()).collect());
    }
    let last = *of_batch[3].last().unwrap();

    // No retention configured: refused, nothing deleted.
    let out = haven(&["prune", "--repo", &repo, "--apply"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(stderr(&out).contains("retention"), "{}", stderr(&out));
    let out = haven(&["prune", "--repo", &repo, "--keep", "7 years"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));

    // A hold on the 8-year-old batch.
    let (from, to) = ((starts[1] - DAY).to_string(), (starts[1] + DAY).to_string());
    ok(&haven(&[
        "hold",
        "add",
        "case-17",
        "--repo",
        &repo,
        "--topics",
        "pay.*",
        "--from",
        &from,
        "--to",
        &to,
        "--reason",
        "inquiry 17",
    ]));
    let out = haven(&[
        "hold", "add", "case-17", "--repo", &repo, "--topics", "x", "--reason", "again",
    ]);
    assert_eq!(code(&out), 2, "a second hold of one name: {}", stderr(&out));
    let hs = json(&ok(&haven(&["--json", "hold", "ls", "--repo", &repo])));
    assert_eq!(hs.as_array().unwrap().len(), 1, "{hs}");

    // A dry run says what would go and what the hold keeps, and deletes nothing.
    let plan = prune(&repo, "7y", false);
    let first = seqs(&plan, "segments");
    assert!(
        !first.is_empty() && first.iter().all(|s| of_batch[0].contains(s)),
        "{plan}"
    );
    assert_eq!(plan["plan"]["records"], 40, "{plan}");
    let held = seqs(&plan, "held");
    assert!(
        !held.is_empty() && held.iter().all(|s| of_batch[1].contains(s)),
        "{plan}"
    );
    assert!(seg(&repo_dir, first[0]).exists());

    let kept = std::fs::read(seg(&repo_dir, first[0])).unwrap();
    let plan = prune(&repo, "7y", true);
    assert_eq!(seqs(&plan, "segments"), first, "{plan}");
    for s in &first {
        assert!(!seg(&repo_dir, *s).exists(), "segment {s} is deleted");
    }
    let (c, v, e) = verify(&repo);
    assert_eq!(c, 0, "{v} {e}");
    assert_eq!(v["report"]["pruned_segments"], first.len() as u64, "{v}");

    // What remains restores record for record: batches 1, 2 and 3 in order.
    ok(&haven(&[
        "restore",
        "--repo",
        &repo,
        "--brokers",
        &b.bootstrap(),
        "--topics",
        "payments",
        "--rename",
        "payments=restored",
    ]));
    for p in 0..PARTITIONS {
        let src = b.read_partition("payments", p).unwrap();
        let got = b.read_partition("restored", p).unwrap();
        let expected: Vec<Consumed> = src.into_iter().skip(20).collect();
        assert_eq!(content(&got), content(&expected), "partition {p}");
    }
    let ls = json(&ok(&haven(&["--json", "ls", "--repo", &repo])));
    let pruned = pruned_records(&ls);
    assert_eq!(pruned, 40, "{ls}");
    assert_eq!(ls["pruned_segments"], first.len() as u64, "{ls}");

    // A prune that stopped after its manifest (the segment still stored) still verifies,
    // and the next prune finishes it.
    std::fs::write(seg(&repo_dir, first[0]), &kept).unwrap();
    let (c, v, e) = verify(&repo);
    assert_eq!(c, 0, "{v} {e}");
    let plan = prune(&repo, "7y", true);
    assert_eq!(
        plan["plan"]["unfinished"],
        serde_json::json!([first[0]]),
        "{plan}"
    );
    assert!(
        !seg(&repo_dir, first[0]).exists(),
        "the unfinished prune is finished"
    );

    // The hold lifted, the 8-year-old segment goes; the last segment never does, even
    // past a 1-second retention.
    ok(&haven(&[
        "hold", "remove", "case-17", "--repo", &repo, "--reason", "closed",
    ]));
    let plan = prune(&repo, "1s", true);
    let rest: Vec<u64> = (first.last().unwrap() + 1..last).collect();
    assert_eq!(seqs(&plan, "segments"), rest, "{plan}");
    assert!(seg(&repo_dir, last).exists(), "the last segment is kept");
    let (c, v, e) = verify(&repo);
    assert_eq!(c, 0, "{v} {e}");
    assert_eq!(v["report"]["pruned_segments"], last - 1, "{v}");
    // Backups go on after a prune: the next segment chains to the kept one.
    b.produce("payments", &batch(4, 10, now)).unwrap();
    backup_once(&b, &repo, "payments", &[], &[]);
    let (c, v, e) = verify(&repo);
    assert_eq!(c, 0, "{v} {e}");

    // Every step is in the audit chain.
    let audit = ok(&haven(&["--json", "audit", "--repo", &repo]));
    for action in ["hold-add", "hold-remove", "prune"] {
        assert!(
            audit.contains(&format!("\"{action}\"")),
            "{action}: {audit}"
        );
    }
    let report = json(&ok(&haven(&[
        "--json",
        "retention",
        "report",
        "--repo",
        &repo,
        "--keep",
        "7y",
    ])));
    assert_eq!(report["pruned_segments"], last - 1, "{report}");
    let ls = json(&ok(&haven(&["--json", "ls", "--repo", &repo])));
    let pruned = pruned_records(&ls);
    assert!(pruned >= 120, "{ls}");
    assert_eq!(report["topics"][0]["pruned_records"], pruned, "{report}");

    // A manifest edited, then deleted: damage, named.
    let manifests: Vec<_> = std::fs::read_dir(repo_dir.join("prune"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(manifests.len(), 2);
    let m = manifests.iter().min().unwrap();
    let mut raw = std::fs::read(m).unwrap();
    raw.extend_from_slice(b"\n");
    std::fs::write(m, &raw).unwrap();
    let (c, v, _) = verify(&repo);
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("prune/"), "{v}");
    std::fs::remove_file(m).unwrap();
    let (c, v, _) = verify(&repo);
    assert_eq!(c, 1, "{v}");
    assert!(v.to_string().contains("instead of 1"), "{v}");
}
