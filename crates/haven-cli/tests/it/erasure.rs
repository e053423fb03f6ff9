//! Erasure by crypto-shredding (#15 item 5) on a real backup of a real broker: records of
//! data subjects are sealed per subject, `haven forget` destroys one subject's key, and then
//! `cat` and `restore` return that subject's records redacted and every other record
//! byte for byte, `verify` and `audit verify` pass, the proof holds no subject id, a copy
//! made by `repo sync` before the forget loses the key at the next pass, and the subject's
//! later records are readable again.

use std::path::Path;

use testbed::{Broker, Consumed, Rec};

use crate::{code, haven, ok, path, stderr};

struct Setup {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    config: String,
    repo: String,
}

fn setup(b: &Broker) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    std::fs::write(
        root.join("subject.secret"),
        "5f1e0c2b9a7d4e3f8a6b1c0d2e4f6a8b\n",
    )
    .unwrap();
    let repo = path(&root.join("repo"));
    let config = root.join("haven.toml");
    std::fs::write(
        &config,
        format!(
            "[clusters.local]\nbootstrap = \"{}\"\n\n\
             [repositories.main]\nurl = \"{repo}\"\n\
             subject_hash_key = \"file:{}\"\n\
             erasure_subjects = {{ \"pay\" = \"json:/customer\", \"kyc\" = \"key\" }}\n\n\
             [repositories.copy]\nurl = \"{}\"\n",
            b.bootstrap(),
            path(&root.join("subject.secret")),
            path(&root.join("copy")),
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        config: path(&config),
        repo,
        root,
    }
}

fn hv(s: &Setup, args: &[&str]) -> std::process::Output {
    let mut v = vec!["--config", s.config.as_str()];
    v.extend_from_slice(args);
    haven(&v)
}

fn backup(s: &Setup) {
    ok(&hv(
        s,
        &[
            "backup",
            "--brokers",
            "local",
            "--repo",
            "main",
            "--topics",
            "pay|kyc",
            "--once",
        ],
    ));
}

fn pay(i: usize) -> Rec {
    let customer = format!("c-{}", i % 3);
    let value = if i % 10 == 9 {
        // No subject: stored as is.
        format!("not json {i}")
    } else {
        format!(r#"{{"customer":"{customer}","amount":{i},"note":"PERSONAL-{customer}-{i}"}}"#)
    };
    Rec::kv(&format!("t-{i}"), &value)
        .header("customer-ref", Some(format!("REF-{customer}").as_bytes()))
}

/// The records `cat` prints, in testbed's form.
fn cat(s: &Setup, repo: &str, topic: &str) -> Vec<Consumed> {
    let out = ok(&hv(s, &["cat", "--repo", repo, "--topic", topic]));
    out.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let bytes = |x: &serde_json::Value| haven_engine::read::json_bytes(x).unwrap();
            Consumed {
                partition: v["partition"].as_i64().unwrap() as i32,
                offset: v["offset"].as_i64().unwrap(),
                timestamp: v["timestamp"].as_i64().unwrap(),
                key: bytes(&v["key"]),
                value: bytes(&v["value"]),
                headers: v["headers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|h| (h[0].as_str().unwrap().to_string(), bytes(&h[1])))
                    .collect(),
            }
        })
        .collect()
}

fn is_redacted(c: &Consumed) -> bool {
    c.key.is_none()
        && c.value.is_none()
        && c.headers == vec![("haven-redacted".to_string(), Some(b"erased".to_vec()))]
}

fn of_c1(c: &Consumed) -> bool {
    c.value
        .as_deref()
        .is_some_and(|v| String::from_utf8_lossy(v).contains("\"customer\":\"c-1\""))
        || c.key.as_deref() == Some(b"c-1")
}

/// Compares what a reader returns with the source: the forgotten subject's records
/// redacted (same offset and timestamp), every other record identical.
fn assert_erased(source: &[Consumed], got: &[Consumed], what: &str) -> usize {
    assert_eq!(got.len(), source.len(), "{what}: record count");
    let mut redacted = 0;
    for (s, g) in source.iter().zip(got) {
        assert_eq!((s.offset, s.timestamp), (g.offset, g.timestamp), "{what}");
        if of_c1(s) {
            assert!(
                is_redacted(g),
                "{what}: offset {} not redacted: {g:?}",
                s.offset
            );
            redacted += 1;
        } else {
            assert_eq!(s, g, "{what}: offset {}", s.offset);
        }
    }
    redacted
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default()
}

#[test]
fn forget_redacts_one_subject_and_leaves_every_other_record_intact() {
    let b = Broker::start().unwrap();
    b.create_topic("pay", 1).unwrap();
    b.create_topic("kyc", 1).unwrap();
    let s = setup(&b);
    b.produce("pay", &(0..30).map(pay).collect::<Vec<_>>())
        .unwrap();
    b.produce(
        "kyc",
        &(0..5)
            .map(|i| Rec::kv(&format!("c-{i}"), &format!("PASSPORT-{i}")))
            .collect::<Vec<_>>(),
    )
    .unwrap();
    backup(&s);

    // Sealed: no subject's personal data is in a segment (the repository is not
    // encrypted), while the record without a subject is.
    for f in files_under(&s.root.join("repo/log")) {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            !text.contains("PERSONAL-c-1") && !text.contains("PASSPORT-1"),
            "{f:?}"
        );
    }
    // 3 subjects in pay (c-0..c-2), 5 in kyc (c-0..c-4, the same people): 5 keys.
    assert_eq!(files_under(&s.root.join("repo/subjects")).len(), 5);
    let pay_src = b.read_partition("pay", 0).unwrap();
    let kyc_src = b.read_partition("kyc", 0).unwrap();
    assert_eq!(cat(&s, "main", "pay"), pay_src);
    assert_eq!(cat(&s, "main", "kyc"), kyc_src);

    // A copy in the other region, made before the forget.
    ok(&hv(
        &s,
        &["repo", "sync", "--from", "main", "--to", "copy", "--once"],
    ));

    let secret_file = s.root.join("request.txt");
    std::fs::write(&secret_file, "c-1\n").unwrap();
    let out = hv(
        &s,
        &[
            "--json",
            "forget",
            "--repo",
            "main",
            "--subject-file",
            &path(&secret_file),
            "--reason",
            "GDPR request 17",
        ],
    );
    let r: serde_json::Value = serde_json::from_str(&ok(&out)).unwrap();
    assert!(r["key_destroyed"].is_string(), "{r}");
    assert_eq!(files_under(&s.root.join("repo/subjects")).len(), 4);

    // The proof and the audit trail hold no subject id.
    for dir in ["repo/forgotten", "repo/audit/chain"] {
        for f in files_under(&s.root.join(dir)) {
            let text = std::fs::read_to_string(&f).unwrap();
            assert!(!text.contains("c-1"), "{f:?} names the subject: {text}");
        }
    }

    let n = assert_erased(&pay_src, &cat(&s, "main", "pay"), "cat pay");
    assert_eq!(n, pay_src.iter().filter(|c| of_c1(c)).count());
    assert!(n >= 9, "{n}");
    assert_eq!(
        assert_erased(&kyc_src, &cat(&s, "main", "kyc"), "cat kyc"),
        1
    );

    // A restore: the same, record for record on the target cluster.
    ok(&hv(
        &s,
        &[
            "restore",
            "--repo",
            "main",
            "--brokers",
            "local",
            "--topics",
            "pay",
            "--rename",
            "pay=pay.after",
        ],
    ));
    assert_erased(
        &pay_src,
        &b.read_partition("pay.after", 0).unwrap(),
        "restore",
    );

    ok(&hv(&s, &["verify", "--repo", "main", "--deep"]));
    ok(&hv(&s, &["audit", "verify", "--repo", "main"]));
    let audit = ok(&hv(&s, &["--json", "audit", "--repo", "main"]));
    assert!(audit.contains("\"forget\""), "{audit}");

    // The copy: the next pass deletes the key there too.
    assert_eq!(cat(&s, "copy", "pay"), pay_src);
    let out = ok(&hv(
        &s,
        &[
            "--json", "repo", "sync", "--from", "main", "--to", "copy", "--once",
        ],
    ));
    assert!(out.contains("\"erased_keys\": 1"), "{out}");
    assert_erased(&pay_src, &cat(&s, "copy", "pay"), "the copy");
    ok(&hv(&s, &["verify", "--repo", "copy"]));

    // Records of the subject backed up after the forget are sealed under a new key.
    b.produce("pay", &[pay(31), pay(34)]).unwrap();
    backup(&s);
    let after = cat(&s, "main", "pay");
    let all = b.read_partition("pay", 0).unwrap();
    assert_eq!(after.len(), 32);
    assert_eq!(after[30..], all[30..]);
    assert!(of_c1(&all[30]) && of_c1(&all[31]));

    // Bad input.
    let out = hv(
        &s,
        &["forget", "--repo", "main", "--subject", "", "--reason", "x"],
    );
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    let out = haven(&[
        "forget",
        "--repo",
        &s.repo,
        "--subject",
        "c-2",
        "--reason",
        "no config",
    ]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
    assert!(
        stderr(&out).contains("subject_hash_key"),
        "{}",
        stderr(&out)
    );
    let out = hv(&s, &["forget", "--repo", "main", "--reason", "who?"]);
    assert_eq!(code(&out), 2, "{}", stderr(&out));
}
