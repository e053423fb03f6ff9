//! One conformance suite every storage backend runs, and a backup into S3 (Garage).

use bytes::Bytes;
use haven_storage::{CreateOnly, StorageError, Store};
use testbed::{Broker, Rec, S3Server};

use crate::{code, haven_env, ok};

/// What Haven needs of a store. `create_only` is what the probe must report.
async fn conformance(store: &Store) {
    store
        .put_new("a/1", Bytes::from_static(b"hello world"))
        .await
        .unwrap();
    store
        .put_new("a/2", Bytes::from_static(b"two"))
        .await
        .unwrap();
    store
        .put_new("b/1", Bytes::from_static(b"other"))
        .await
        .unwrap();
    assert_eq!(&store.get("a/1").await.unwrap()[..], b"hello world");
    assert_eq!(&store.get_range("a/1", 6..11).await.unwrap()[..], b"world");
    let keys: Vec<String> = store
        .list("a/")
        .await
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    assert_eq!(keys, vec!["a/1", "a/2"]);
    assert_eq!(store.list("a/").await.unwrap()[0].size, 11);
    assert!(store.exists("a/2").await.unwrap());
    assert!(!store.exists("a/3").await.unwrap());
    assert!(matches!(
        store.get("nope").await,
        Err(StorageError::NotFound { .. })
    ));

    // The probe must tell the truth: compare it with what a second create actually does.
    let probe = store.probe_create_only().await.unwrap();
    let second = store.put_new("a/1", Bytes::from_static(b"replaced")).await;
    let actual = match second {
        Err(StorageError::AlreadyExists { .. }) => CreateOnly::Enforced,
        Ok(()) => CreateOnly::NotEnforced,
        Err(e) => panic!("unexpected error on second create: {e}"),
    };
    assert_eq!(probe, actual, "the probe misreports create-only puts");
    if actual == CreateOnly::Enforced {
        assert_eq!(&store.get("a/1").await.unwrap()[..], b"hello world");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn local_directory_conforms_and_enforces_create_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("file://{}", dir.path().display())).unwrap();
    conformance(&store).await;
    assert_eq!(
        store.probe_create_only().await.unwrap(),
        CreateOnly::Enforced
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn garage_s3_conforms() {
    let s3 = tokio::task::spawn_blocking(S3Server::start)
        .await
        .unwrap()
        .expect("start garage");
    s3.create_bucket("conformance").unwrap();
    let opts = s3.options();
    let o: Vec<(&str, &str)> = opts.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let store = Store::open_with("s3://conformance/some/prefix", &o).unwrap();
    conformance(&store).await;
}

#[test]
fn backup_into_s3_round_trips() {
    let s3 = S3Server::start().expect("start garage");
    s3.create_bucket("backups").unwrap();
    let b = Broker::start().unwrap();
    b.create_topic("payments", 2).unwrap();
    let recs: Vec<Rec> = (0..200)
        .map(|i| Rec::kv(&format!("k{i}"), &format!("v{i}")).to_partition(i % 2))
        .collect();
    b.produce("payments", &recs).unwrap();
    let env: Vec<(&str, String)> = s3.env();
    let repo = "s3://backups/prod";
    ok(&haven_env(
        &[
            "backup",
            "--brokers",
            &b.bootstrap(),
            "--repo",
            repo,
            "--topics",
            "payments",
            "--once",
        ],
        &env,
    ));
    for p in 0..2 {
        let expected = b.read_partition("payments", p).unwrap();
        let out = ok(&haven_env(
            &[
                "cat",
                "--repo",
                repo,
                "--topic",
                "payments",
                "--partition",
                &p.to_string(),
            ],
            &env,
        ));
        let got: Vec<serde_json::Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            assert_eq!(g["offset"].as_i64(), Some(e.offset));
            assert_eq!(g["value"].as_str().map(str::as_bytes), e.value.as_deref());
        }
    }
    assert_eq!(
        code(&haven_env(&["verify", "--repo", repo, "--deep"], &env)),
        0
    );
}
