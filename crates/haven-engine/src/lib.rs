//! Haven's engine: everything between the CLI and the bytes.
//!
//! - [`config`] - `haven.toml`.
//! - [`repo`] - a repository (descriptor + hash-chained log of segments) and its catalog.
//! - [`backup`] - continuous and snapshot backup of Kafka topics.
//! - [`read`] - selecting and decoding records from a repository (cat; restore builds on it).
//! - [`verify`] - integrity checks of a whole repository.
//! - [`events`] - typed events every job emits.
//!
//! - [`restore`] - restoring a repository's records to a cluster.
//! - [`mirror`] - continuous replication between clusters, exact offset translation.
//! - [`residency`] - data-residency rules every job that moves data checks.
//! - [`failover`] - regions, the lease and fencing epoch (etcd), the RPO ledger,
//!   switchover and failover plans.
//! - [`executor`] - runs any plan's steps: progress, resume, guard, audit.
//! - [`drill`] - a DR drill's objectives, measurements and verdict, as JSON and HTML evidence.
//!
//! Offset translation for restore, mirroring and recovery lives in one module: [`offsets`].

pub mod alerts;
pub mod backup;
pub mod config;
pub mod drill;
pub mod erasure;
mod error;
pub mod events;
pub mod executor;
pub mod failback;
pub mod failover;
pub mod metrics;
pub mod mirror;
pub mod notify;
pub mod offsets;
pub mod partitioner;
pub mod posture;
pub mod read;
pub mod recovery;
pub mod repo;
pub mod residency;
pub mod restore;
pub mod retention;
pub mod secrets;
pub mod time;
pub mod timeline;
pub mod verify;

pub use error::{Error, Result};

/// Runs a blocking call (rdkafka metadata, watermarks, ...) off the async runtime.
pub async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Task(e.to_string()))?
}

/// Loads the key ring: from a file holding keys of 64 hex digits (one per line, `#`
/// comments; the first is the one a new repository is created with), or from `HAVEN_KEY`
/// (keys separated by commas). Empty when neither is given.
pub fn load_keys(key_file: Option<&std::path::Path>) -> Result<repo::KeyRing> {
    if let Some(path) = key_file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::Key(format!("cannot read key file {}: {e}", path.display())))?;
        let ring = repo::KeyRing::parse(&text, &format!("key file {}", path.display()))?;
        if ring.is_empty() {
            return Err(Error::Key(format!(
                "key file {} holds no key (64 hex digits per line)",
                path.display()
            )));
        }
        return Ok(ring);
    }
    match std::env::var("HAVEN_KEY") {
        Ok(v) if !v.trim().is_empty() => repo::KeyRing::parse(&v, "HAVEN_KEY"),
        _ => Ok(repo::KeyRing::default()),
    }
}
