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

    // The retention probe must tell the truth too: compare it with a real delete.
    let probe = store.probe_retention().await.unwrap();
    let _ = store.delete("a/2").await;
    let actual = if store.exists("a/2").await.unwrap() {
        haven_storage::Retention::Enforced
    } else {
        haven_storage::Retention::NotEnforced
    };
    assert_eq!(probe, actual, "the probe misreports retention");
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
    crate::backup_once(&b, repo, "payments", &[], &env);
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

/// An object store that fails the puts it is told to fail (fault injection).
#[derive(Debug)]
struct Flaky {
    inner: std::sync::Arc<dyn object_store::ObjectStore>,
    /// Puts to let through before failing; negative: never fail.
    fail_after: std::sync::atomic::AtomicI64,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky({})", self.inner)
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        use std::sync::atomic::Ordering;
        let left = self.fail_after.fetch_sub(1, Ordering::SeqCst);
        if left == 0 {
            return Err(object_store::Error::Generic {
                store: "flaky",
                source: "injected: the store is unavailable".into(),
            });
        }
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }
    async fn delete(&self, location: &object_store::path::Path) -> object_store::Result<()> {
        self.inner.delete(location).await
    }
    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.inner.copy(from, to).await
    }
    async fn copy_if_not_exists(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
    ) -> object_store::Result<()> {
        self.inner.copy_if_not_exists(from, to).await
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_put_stops_the_backup_and_a_rerun_loses_and_duplicates_nothing() {
    use haven_engine::backup::{self, BackupOptions};
    use haven_engine::events::Collect;
    use haven_engine::repo::Repository;
    use std::sync::atomic::Ordering;

    let b = tokio::task::spawn_blocking(Broker::start)
        .await
        .unwrap()
        .unwrap();
    let b = std::sync::Arc::new(b);
    let b2 = b.clone();
    tokio::task::spawn_blocking(move || {
        b2.create_topic("faulty", 2)?;
        let recs: Vec<Rec> = (0..400)
            .map(|i| Rec::kv(&format!("k{i}"), &"v".repeat(200)).to_partition(i % 2))
            .collect();
        b2.produce("faulty", &recs)
    })
    .await
    .unwrap()
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let flaky = std::sync::Arc::new(Flaky {
        inner: std::sync::Arc::new(local),
        // descriptor + 2 segments, then the 3rd segment fails.
        fail_after: std::sync::atomic::AtomicI64::new(3),
    });
    let store = Store::new(flaky.clone(), "", "flaky://");
    let repo = Repository::open_or_create(store.clone(), Default::default())
        .await
        .unwrap();
    let mut opts = BackupOptions::new(
        haven_kafka::ClusterConfig::new(b.bootstrap()),
        backup::topic_regex("faulty").unwrap(),
    );
    opts.once = true;
    opts.group_interval = None;
    opts.max_buffer_bytes = 8 * 1024; // many small segments
    let (_tx, rx) = tokio::sync::watch::channel(false);
    let err = backup::run(&repo, &opts, &Collect::default(), rx.clone())
        .await
        .expect_err("the injected failure must stop the backup");
    assert!(err.to_string().contains("injected"), "{err}");
    let before = repo.load_state().await.unwrap();
    let durable: u64 = before.partitions.values().map(|p| p.records).sum();
    assert!(
        durable > 0 && durable < 400,
        "some but not all records durable: {durable}"
    );

    flaky.fail_after.store(-1, Ordering::SeqCst);
    let report = backup::run(&repo, &opts, &Collect::default(), rx)
        .await
        .unwrap();
    assert_eq!(
        report.records + durable,
        400,
        "the rerun writes exactly the rest"
    );
    let state = repo.load_state().await.unwrap();
    for p in 0..2 {
        let expected = tokio::task::spawn_blocking({
            let b = b.clone();
            move || b.read_partition("faulty", p)
        })
        .await
        .unwrap()
        .unwrap();
        let mut got = Vec::new();
        let sel = haven_engine::read::Selection {
            topic: "faulty".into(),
            partitions: Some(vec![p]),
            generation: None,
            from: haven_engine::read::Bound::Unbounded,
            to: haven_engine::read::Bound::Unbounded,
        };
        haven_engine::read::for_each_record(&repo, &state, &sel, |_, r| {
            got.push((r.offset, r.key.clone(), r.value.clone()));
            Ok(())
        })
        .await
        .unwrap();
        let want: Vec<_> = expected
            .into_iter()
            .map(|c| (c.offset, c.key, c.value))
            .collect();
        assert_eq!(got, want, "partition {p}");
    }
    let v = haven_engine::verify::verify(&repo, true).await.unwrap();
    assert!(v.intact(), "{:?}", v.problems);
}

/// Records of `repo` (`haven ls`), 0 while it cannot be read.
fn s3_repo_records(repo: &str, env: &[(&str, String)]) -> u64 {
    let out = haven_env(&["--json", "ls", "--repo", repo], env);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v["partitions"]
        .as_array()
        .map(|a| a.iter().map(|p| p["records"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn wait_s3_records(repo: &str, env: &[(&str, String)], n: u64, within: std::time::Duration) {
    let deadline = std::time::Instant::now() + within;
    loop {
        let got = s3_repo_records(repo, env);
        assert!(
            got <= n,
            "the repository holds {got} records, more than {n}"
        );
        if got == n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the repository holds {got} of {n} records"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The object store goes down (kill -9) under a continuous backup: the backup holds on
/// (does not exit), its lag grows past an RPO alarm's threshold on /metrics while the
/// store is down, and once the store is back every record is in the repository exactly
/// once, record by record.
#[test]
fn a_continuous_backup_holds_on_through_an_object_store_outage() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let mut s3 = S3Server::start().expect("start garage");
    s3.create_bucket("backups").unwrap();
    let b = Broker::start().unwrap();
    b.create_topic("outage", 2).unwrap();
    let mut env: Vec<(&str, String)> = s3.env();
    // Each storage call gives up within 2 s, so the backup retries often.
    env.push(("HAVEN_STORAGE_TIMEOUT", "2s".into()));
    let repo = "s3://backups/live";
    let port = testbed::free_port().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_haven"))
        .args(["backup", "--brokers", &b.bootstrap(), "--repo", repo])
        .args([
            "--topics",
            "outage",
            "--flush-ms",
            "200",
            "--group-interval",
            "0",
        ])
        .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    b.produce("outage", &crate::backup::edge_records(100, 2))
        .unwrap();
    wait_s3_records(repo, &env, 100, Duration::from_secs(30));

    s3.kill();
    b.produce("outage", &crate::backup::edge_records(100, 2))
        .unwrap();
    // Sampled while the store is down: the process stays up and its lag shows the
    // records waiting, for longer than a 3 s RPO target.
    let deadline = Instant::now() + Duration::from_secs(30);
    let lagging = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("haven_backup_lag_seconds{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .any(|s| s > 3.0)
    };
    loop {
        assert!(
            matches!(child.try_wait(), Ok(None)),
            "the backup exited while the object store was down"
        );
        let m = crate::backup::scrape(port).unwrap_or_default();
        if lagging(&m) {
            assert!(m.contains("haven_backup_records_total 100\n"), "{m}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the lag never passed 3 s with the store down:\n{m}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        matches!(child.try_wait(), Ok(None)),
        "the backup exited while the object store was down"
    );

    s3.restart().unwrap();
    wait_s3_records(repo, &env, 200, Duration::from_secs(60));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    assert!(child.wait().unwrap().success());
    assert_eq!(crate::backup::assert_same(&b, repo, "outage", 2, &env), 200);
    assert_eq!(code(&haven_env(&["verify", "--repo", repo], &env)), 0);
}
