//! Object storage for Haven repositories.
//!
//! One type, [`Store`], over every backend `object_store` supports. Haven needs only five
//! operations of a store: create-only put, get, ranged get, list and (for retention, later)
//! delete. Every backend runs the same conformance suite (`tests/conformance.rs`).
//!
//! Create-only puts are what make the repository immutable and what fence concurrent
//! writers. Not every S3-compatible server enforces them, so [`Store::probe_create_only`]
//! measures it instead of trusting the API.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::ClientConfigKey;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum StorageError {
    #[error("invalid repository URL {url:?}: {reason}")]
    Url { url: String, reason: String },
    #[error("object {key} already exists (objects are written once and never replaced)")]
    AlreadyExists { key: String },
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("storage error on {key}: {source}")]
    Backend {
        key: String,
        #[source]
        source: object_store::Error,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// The repository option (or `HAVEN_STORAGE_TIMEOUT`) bounding how long one storage
/// operation may take, retries included: seconds, or a number with ms/s/m. Default 30 s.
pub const TIMEOUT_OPTION: &str = "timeout";

fn storage_timeout(options: &[(&str, &str)]) -> std::result::Result<std::time::Duration, String> {
    let given = options
        .iter()
        .find(|(k, _)| *k == TIMEOUT_OPTION)
        .map(|(_, v)| (format!("option {TIMEOUT_OPTION}"), v.to_string()))
        .or_else(|| {
            std::env::var("HAVEN_STORAGE_TIMEOUT")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .map(|v| ("HAVEN_STORAGE_TIMEOUT".to_string(), v))
        });
    let Some((what, text)) = given else {
        return Ok(std::time::Duration::from_secs(30));
    };
    let t = text.trim();
    let (num, unit_ms) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60_000)
    } else {
        (t, 1000)
    };
    match num.trim().parse::<u64>() {
        Ok(n) if n > 0 => Ok(std::time::Duration::from_millis(n.saturating_mul(unit_ms))),
        _ => Err(format!(
            "{what} = {text:?}: expected a positive duration like 30, 30s, 500ms or 2m"
        )),
    }
}

/// Refuses an S3 store with no credentials configured, instead of letting the client fall
/// back to the cloud's instance-metadata address and fail there with a 403 (or wait on a
/// machine that is not in a cloud). Instance roles are used when asked for.
fn check_credentials(b: &AmazonS3Builder) -> std::result::Result<(), String> {
    let set = |k: AmazonS3ConfigKey| b.get_config_value(&k).is_some_and(|v| !v.is_empty());
    let env = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
    let static_keys =
        set(AmazonS3ConfigKey::AccessKeyId) && set(AmazonS3ConfigKey::SecretAccessKey);
    let unsigned = b
        .get_config_value(&AmazonS3ConfigKey::SkipSignature)
        .is_some_and(|v| v == "true");
    let other_source = env("AWS_WEB_IDENTITY_TOKEN_FILE")
        || env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        || std::env::var("HAVEN_S3_INSTANCE_ROLE").is_ok_and(|v| v == "true");
    if static_keys || unsigned || other_source {
        return Ok(());
    }
    if set(AmazonS3ConfigKey::AccessKeyId) != set(AmazonS3ConfigKey::SecretAccessKey) {
        return Err(
            "only half of the S3 credentials are set: give both AWS_ACCESS_KEY_ID and \
                    AWS_SECRET_ACCESS_KEY (or aws_access_key_id in the repository's options and \
                    aws_secret_access_key in its secret_options)"
                .into(),
        );
    }
    Err(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or \
         aws_access_key_id in the repository's options and aws_secret_access_key = \"env:VAR\" in \
         its secret_options in haven.toml); \
         on a cloud machine with an instance role, set HAVEN_S3_INSTANCE_ROLE=true"
            .into(),
    )
}

/// The directory of a local repository URL (`file:///path` or a plain path), if it is one.
pub fn local_path(url: &str) -> Option<std::path::PathBuf> {
    match url.strip_prefix("file://") {
        Some(p) => Some(p.into()),
        None if url.contains("://") => None,
        None => Some(url.into()),
    }
}

/// What the store guarantees about create-only puts, as measured by a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CreateOnly {
    /// A second create of the same key fails: objects cannot be replaced.
    Enforced,
    /// The store accepted a second create of the same key and replaced the object.
    NotEnforced,
}

/// Whether the store refuses to delete what was written (S3 Object Lock, WORM storage).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// A delete of a fresh object failed or left it there.
    Enforced,
    /// A fresh object could be deleted: whoever holds the credentials can delete backups.
    NotEnforced,
}

/// An object listed by [`Store::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Key relative to the repository root, with `/` separators.
    pub key: String,
    pub size: u64,
}

/// Counters of the traffic a [`Store`] made (shared by its clones).
#[derive(Debug, Default)]
pub struct Traffic {
    pub gets: AtomicU64,
    pub bytes_read: AtomicU64,
    pub puts: AtomicU64,
    pub bytes_written: AtomicU64,
}

/// A repository's object store, rooted at the URL's prefix.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    prefix: Path,
    url: String,
    traffic: Arc<Traffic>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Store({})", self.url)
    }
}

impl Store {
    /// Opens a store from a URL:
    /// - `file:///abs/path` or a plain path (`./backups`): a local directory, created if missing;
    /// - `s3://bucket/prefix`: S3 or an S3-compatible server, configured from the usual
    ///   environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`,
    ///   `AWS_ENDPOINT` for non-AWS servers, `AWS_ALLOW_HTTP=true` for plain HTTP).
    pub fn open(url: &str) -> Result<Store> {
        Self::open_with(url, &[])
    }

    /// As [`Store::open`], with extra backend options (`("aws_endpoint", "...")`, ...) that
    /// override the environment.
    pub fn open_with(url: &str, options: &[(&str, &str)]) -> Result<Store> {
        let bad = |reason: String| StorageError::Url {
            url: url.to_string(),
            reason,
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(bad("no bucket name: use s3://BUCKET/PREFIX".into()));
            }
            let timeout = storage_timeout(options).map_err(&bad)?;
            let mut b = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                // Bounded waits: a server that accepts connections and never answers fails
                // an operation within `timeout` (retries included), not after minutes.
                .with_retry(object_store::RetryConfig {
                    backoff: Default::default(),
                    max_retries: 10,
                    retry_timeout: timeout,
                })
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
                    format!("{}ms", (timeout.as_millis() / 3).max(1)),
                )
                .with_config(
                    AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
                    format!("{}ms", (timeout.as_millis() / 3).clamp(1, 5000)),
                );
            for (k, v) in options.iter().filter(|(k, _)| *k != TIMEOUT_OPTION) {
                let key = k
                    .parse()
                    .map_err(|e: object_store::Error| bad(format!("option {k}: {e}")))?;
                b = b.with_config(key, *v);
            }
            check_credentials(&b).map_err(bad)?;
            let s3 = b.build().map_err(|e| bad(e.to_string()))?;
            return Ok(Store::new(Arc::new(s3), prefix, url));
        }
        let path = match url.strip_prefix("file://") {
            Some(p) => p.to_string(),
            None if url.contains("://") => {
                return Err(bad(
                    "unsupported scheme: use file:///PATH, a plain path, or s3://BUCKET/PREFIX"
                        .into(),
                ))
            }
            None => url.to_string(),
        };
        if path.is_empty() {
            return Err(bad("empty path".into()));
        }
        std::fs::create_dir_all(&path).map_err(|e| bad(format!("cannot create directory: {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(&path).map_err(|e| bad(e.to_string()))?;
        Ok(Store::new(Arc::new(fs), "", url))
    }

    /// Wraps any `object_store` implementation (used by tests to inject faults).
    pub fn new(inner: Arc<dyn ObjectStore>, prefix: &str, url: &str) -> Store {
        Store {
            inner,
            prefix: Path::from(prefix.trim_matches('/')),
            url: url.to_string(),
            traffic: Arc::new(Traffic::default()),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn traffic(&self) -> &Traffic {
        &self.traffic
    }

    fn path(&self, key: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.child(part);
        }
        p
    }

    fn err(key: &str, e: object_store::Error) -> StorageError {
        match e {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => StorageError::AlreadyExists {
                key: key.to_string(),
            },
            object_store::Error::NotFound { .. } => StorageError::NotFound {
                key: key.to_string(),
            },
            source => StorageError::Backend {
                key: key.to_string(),
                source,
            },
        }
    }

    /// Writes a new object; fails with [`StorageError::AlreadyExists`] if the key exists
    /// (on stores that enforce it: see [`Store::probe_create_only`]).
    pub async fn put_new(&self, key: &str, data: Bytes) -> Result<()> {
        let len = data.len() as u64;
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        self.inner
            .put_opts(&self.path(key), PutPayload::from_bytes(data), opts)
            .await
            .map_err(|e| Self::err(key, e))?;
        self.traffic.puts.fetch_add(1, Ordering::Relaxed);
        self.traffic.bytes_written.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let b = self
            .inner
            .get(&self.path(key))
            .await
            .map_err(|e| Self::err(key, e))?
            .bytes()
            .await
            .map_err(|e| Self::err(key, e))?;
        self.count_read(b.len());
        Ok(b)
    }

    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let b = self
            .inner
            .get_range(&self.path(key), range)
            .await
            .map_err(|e| Self::err(key, e))?;
        self.count_read(b.len());
        Ok(b)
    }

    fn count_read(&self, n: usize) {
        self.traffic.gets.fetch_add(1, Ordering::Relaxed);
        self.traffic
            .bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Whether an object exists.
    pub async fn exists(&self, key: &str) -> Result<bool> {
        match self.inner.head(&self.path(key)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Self::err(key, e)),
        }
    }

    /// Lists the objects under `prefix` (relative to the repository root), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let root = self.prefix.clone();
        let p = self.path(prefix);
        let mut out: Vec<ObjectInfo> = self
            .inner
            .list(Some(&p))
            .map_ok(|m| {
                let full = m.location.as_ref();
                let rel = full
                    .strip_prefix(root.as_ref())
                    .unwrap_or(full)
                    .trim_start_matches('/')
                    .to_string();
                ObjectInfo {
                    key: rel,
                    size: m.size,
                }
            })
            .try_collect()
            .await
            .map_err(|e| Self::err(prefix, e))?;
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes an object (retention only; never used to rewrite).
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.inner
            .delete(&self.path(key))
            .await
            .map_err(|e| Self::err(key, e))
    }

    /// Measures whether the store refuses a second create-only put of the same key.
    pub async fn probe_create_only(&self) -> Result<CreateOnly> {
        let key = format!("probe/{:016x}", rand::random::<u64>());
        self.put_new(&key, Bytes::from_static(b"first")).await?;
        let second = self.put_new(&key, Bytes::from_static(b"second")).await;
        let result = match second {
            Err(StorageError::AlreadyExists { .. }) => CreateOnly::Enforced,
            Ok(()) => CreateOnly::NotEnforced,
            Err(e) => return Err(e),
        };
        // Best effort: a bucket under object lock may refuse deletes, which is fine.
        if let Err(e) = self.delete(&key).await {
            tracing::debug!("could not delete probe object {key}: {e}");
        }
        Ok(result)
    }

    /// Measures whether the store keeps objects from deletion: writes a probe object, deletes
    /// it, and looks whether it is gone.
    pub async fn probe_retention(&self) -> Result<Retention> {
        let key = format!("probe/{:016x}", rand::random::<u64>());
        self.put_new(&key, Bytes::from_static(b"retain")).await?;
        let deleted = self.delete(&key).await;
        Ok(match deleted {
            Ok(()) if !self.exists(&key).await? => Retention::NotEnforced,
            _ => Retention::Enforced,
        })
    }
}
