//! Signed heads written periodically (`[audit]` in haven.toml): each agent, and `haven
//! audit sign --every`, signs the end of every listed repository's audit chain at a fixed
//! interval and copies the head into the other region's repository, so that cutting off
//! the last entries shows without anyone remembering to run `audit sign`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::events::{Event, Observer};
use crate::repo::Repository;
use crate::Result;

/// `[audit]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AuditSection {
    /// The ed25519 signing key (64 hex digits): keep it where the repositories' writers
    /// cannot read it.
    pub signing_key_file: PathBuf,
    /// Repositories (names from [repositories]) whose chains are signed.
    pub repositories: Vec<String>,
    /// Repositories each head is also stored in (the other region's).
    #[serde(default)]
    pub copy_to: Vec<String>,
    /// Seconds between two heads (default 3600).
    #[serde(default = "default_every")]
    pub sign_every_s: u64,
}

fn default_every() -> u64 {
    3600
}

impl AuditSection {
    pub fn validate(&self, cfg: &Config) -> std::result::Result<(), (String, String)> {
        if self.repositories.is_empty() {
            return Err((
                "audit.repositories".into(),
                "name at least one repository whose chain is signed".into(),
            ));
        }
        for (field, names) in [
            ("repositories", &self.repositories),
            ("copy_to", &self.copy_to),
        ] {
            for n in names {
                if !cfg.repositories.contains_key(n) {
                    return Err((
                        format!("audit.{field}"),
                        format!("{n:?} is not a repository of [repositories]"),
                    ));
                }
            }
        }
        if self.sign_every_s < 10 {
            return Err((
                "audit.sign_every_s".into(),
                format!("{} s is too often: at least 10", self.sign_every_s),
            ));
        }
        Ok(())
    }
}

async fn open(cfg: &Config, name: &str) -> Result<Repository> {
    crate::repo::open_configured(&cfg.repository(name), None, false).await
}

/// Signs every listed repository's chain now; returns the heads written.
pub async fn sign_all(
    cfg: &Config,
    names: &[String],
    copy_to: &[String],
    key: &ed25519_dalek::SigningKey,
    observer: &dyn Observer,
) -> Result<u64> {
    let mut copies = Vec::new();
    for c in copy_to {
        copies.push(open(cfg, c).await?);
    }
    let mut n = 0;
    for name in names {
        let repo = open(cfg, name).await?;
        let others: Vec<&Repository> = copies
            .iter()
            .filter(|c| c.descriptor.id != repo.descriptor.id)
            .collect();
        let (object, h) = crate::recovery::audit_verify::sign_head(&repo, key, &others).await?;
        observer.event(&Event::AuditHeadSigned {
            repository: name.clone(),
            seq: h.seq,
            object,
        });
        n += 1;
    }
    Ok(n)
}

/// Signs every `every` until `stop` turns true; a failed round is reported and retried at
/// the next one (a head missed is not lost data: the chain itself is intact).
pub async fn sign_every(
    cfg: &Config,
    names: &[String],
    copy_to: &[String],
    key: &ed25519_dalek::SigningKey,
    every: Duration,
    observer: &dyn Observer,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                if let Err(e) = sign_all(cfg, names, copy_to, key, observer).await {
                    observer.event(&Event::Retrying {
                        what: "sign the audit chain's head".into(),
                        error: e.to_string(),
                    });
                }
            }
            _ = stop.changed() => {
                if *stop.borrow() {
                    return;
                }
            }
        }
    }
}

/// The `[audit]` section's key and interval, for a face that runs [`sign_every`].
pub fn schedule(section: &AuditSection) -> Result<(ed25519_dalek::SigningKey, Duration)> {
    Ok((
        crate::recovery::audit_verify::signing_key(&section.signing_key_file)?,
        Duration::from_secs(section.sign_every_s),
    ))
}
