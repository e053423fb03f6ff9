//! Checking the audit chain, and signed heads that pin its end.
//!
//! The chain (`audit/chain/N.json`, see `audit`) shows an edited, deleted or reordered
//! entry by itself, except the deletion of the last entries. A **head** closes that gap:
//! the chain's length and last hash at an instant, signed with ed25519 (a 32-byte seed in
//! a key file, 64 hex digits) and stored create-only at `audit-heads/N-TIME.json`. A
//! chain shorter than a head, or whose entry N no longer hashes to what the head signed,
//! has lost or changed entries. Heads are authenticated only against a public key the
//! verifier trusts (given to it, never read from the head).

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::audit::{chain_key, head, seq_of, Entry, CHAIN_PREFIX, GENESIS};
use crate::repo::Repository;
use crate::{Error, Result};

pub const HEADS_PREFIX: &str = "audit-heads/";

/// Where another repository (the other region's) keeps copies of this one's heads:
/// `audit-heads-of/{repository id}/`. Someone who can write to one repository can then
/// no longer cut entries off its chain and remove its heads unseen.
pub fn copies_prefix(of: &Repository) -> String {
    format!("audit-heads-of/{}/", of.descriptor.id)
}

/// The chain's end at an instant, signed.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Head {
    pub seq: u64,
    pub sha256: String,
    /// Unix ms.
    pub at: i64,
    /// The signer's public key (hex), for the reader's information only.
    pub public_key: String,
    /// ed25519 over [`Head::message`] (hex).
    pub signature: String,
}

impl Head {
    pub fn message(seq: u64, sha256: &str, at: i64) -> Vec<u8> {
        format!("haven-audit-head\n{seq}\n{sha256}\n{at}").into_bytes()
    }
}

/// What `haven audit verify` found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChainReport {
    /// Entries written before the chain existed (not chained).
    pub unchained: u64,
    /// Chained entries that check out, from the first.
    pub entries: u64,
    pub last_sha256: String,
    pub heads: u64,
    /// Heads whose signature was checked against the trusted public key.
    pub heads_authenticated: u64,
    /// The first break of the chain, then every head that disagrees with it; empty when
    /// everything checks out.
    pub problems: Vec<String>,
}

fn hex32(text: &str, what: &str) -> Result<[u8; 32]> {
    let bytes = hex::decode(text.trim())
        .map_err(|e| Error::Key(format!("{what}: not hex ({e}): expected 64 hex digits")))?;
    bytes
        .try_into()
        .map_err(|_| Error::Key(format!("{what}: expected 64 hex digits (32 bytes)")))
}

/// The signing key in `path` (64 hex digits: an ed25519 seed).
pub fn signing_key(path: &std::path::Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Key(format!("cannot read {}: {e}", path.display())))?;
    Ok(SigningKey::from_bytes(&hex32(
        &text,
        &path.display().to_string(),
    )?))
}

/// A public key (64 hex digits) from `path`.
pub fn verifying_key(path: &std::path::Path) -> Result<VerifyingKey> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Key(format!("cannot read {}: {e}", path.display())))?;
    VerifyingKey::from_bytes(&hex32(&text, &path.display().to_string())?).map_err(|e| {
        Error::Key(format!(
            "{}: not an ed25519 public key: {e}",
            path.display()
        ))
    })
}

/// Signs the chain's end now and stores the head create-only, in `repo` and in each of
/// `copies` (under [`copies_prefix`]).
pub async fn sign_head(
    repo: &Repository,
    key: &SigningKey,
    copies: &[&Repository],
) -> Result<(String, Head)> {
    let (seq, sha256) = head(repo).await?;
    let at = chrono::Utc::now().timestamp_millis();
    let signature = key.sign(&Head::message(seq, &sha256, at));
    let h = Head {
        seq,
        sha256,
        at,
        public_key: hex::encode(key.verifying_key().to_bytes()),
        signature: hex::encode(signature.to_bytes()),
    };
    let name = format!("{seq:012}-{at:013}.json");
    let object = format!("{HEADS_PREFIX}{name}");
    let body =
        bytes::Bytes::from(serde_json::to_vec_pretty(&h).map_err(|e| Error::Task(e.to_string()))?);
    repo.store().put_new(&object, body.clone()).await?;
    for c in copies {
        c.store()
            .put_new(&format!("{}{name}", copies_prefix(repo)), body.clone())
            .await?;
    }
    Ok((object, h))
}

/// Walks the chain under `audit/` of any store (a repository's, or a local state
/// directory's) from its first entry: the report and each good entry's SHA-256 by number.
async fn walk(store: &haven_storage::Store) -> Result<(ChainReport, Vec<String>)> {
    let mut r = ChainReport {
        last_sha256: GENESIS.into(),
        ..Default::default()
    };
    let objects = store.list("audit/").await?;
    r.unchained = objects
        .iter()
        .filter(|o| !o.key.starts_with(CHAIN_PREFIX) && o.key.ends_with(".json"))
        .count() as u64;
    let mut seqs: Vec<(u64, String)> = objects
        .iter()
        .filter_map(|o| seq_of(&o.key).map(|s| (s, o.key.clone())))
        .collect();
    seqs.sort();
    // Hash of each entry that checked out, by sequence number.
    let mut hashes = vec![GENESIS.to_string()];
    for (i, (seq, key)) in seqs.iter().enumerate() {
        let expected = i as u64 + 1;
        if *seq != expected {
            r.problems.push(format!(
                "entry {expected} is missing ({}): the chain jumps from entry {} to {seq}; it \
                 was deleted",
                chain_key(expected),
                expected - 1
            ));
            break;
        }
        let raw = store.get(key).await?;
        let entry: Entry = match serde_json::from_slice(&raw) {
            Ok(e) => e,
            Err(e) => {
                r.problems.push(format!(
                    "{key}: not an audit entry ({e}): it was overwritten"
                ));
                break;
            }
        };
        if entry.seq != Some(*seq) {
            r.problems.push(format!(
                "{key} holds entry {}: entries were reordered or replaced",
                entry
                    .seq
                    .map_or("without a number".into(), |s| s.to_string())
            ));
            break;
        }
        let prev = &hashes[i];
        if entry.prev_sha256.as_deref() != Some(prev.as_str()) {
            r.problems.push(format!(
                "entry {} ({}) was changed: entry {seq} recorded its SHA-256 as {}, it is now {}",
                seq - 1,
                chain_key(seq - 1),
                entry.prev_sha256.as_deref().unwrap_or("nothing"),
                prev
            ));
            break;
        }
        let sha = hex::encode(Sha256::digest(&raw));
        hashes.push(sha.clone());
        r.entries = *seq;
        r.last_sha256 = sha;
    }
    Ok((r, hashes))
}

/// The chain of a local state directory's audit log (`STATE/audit/`): the agents' and
/// switchovers' steps, kept where no region's repository is needed.
pub async fn verify_state_dir(state_dir: &std::path::Path) -> Result<ChainReport> {
    let store = haven_storage::Store::open(&state_dir.display().to_string())
        .map_err(|e| Error::Input(format!("{}: {e}", state_dir.display())))?;
    Ok(walk(&store).await?.0)
}

/// Walks the chain from its first entry and checks every head (their signatures against
/// `trusted`, when given). Names the first entry that is missing, moved or changed.
pub async fn verify_chain(
    repo: &Repository,
    trusted: Option<&VerifyingKey>,
    copies: &[&Repository],
) -> Result<ChainReport> {
    let (mut r, hashes) = walk(repo.store()).await?;
    let chain_broken = !r.problems.is_empty();
    // Its own heads, then the copies kept in other repositories.
    let mut heads = Vec::new();
    let mut own = repo.store().list(HEADS_PREFIX).await?;
    own.sort_by(|a, b| a.key.cmp(&b.key));
    heads.extend(own.into_iter().map(|o| (repo, o.key)));
    for c in copies {
        let mut theirs = c.store().list(&copies_prefix(repo)).await?;
        theirs.sort_by(|a, b| a.key.cmp(&b.key));
        heads.extend(theirs.into_iter().map(|o| (*c, o.key)));
    }
    for (holder, key) in heads {
        r.heads += 1;
        let raw = holder.store().get(&key).await?;
        let h: Head = match serde_json::from_slice(&raw) {
            Ok(h) => h,
            Err(e) => {
                r.problems.push(format!("{}: not a signed head ({e})", key));
                continue;
            }
        };
        if let Some(k) = trusted {
            let ok = hex::decode(&h.signature)
                .ok()
                .and_then(|b| Signature::from_slice(&b).ok())
                .is_some_and(|sig| {
                    k.verify(&Head::message(h.seq, &h.sha256, h.at), &sig)
                        .is_ok()
                });
            if !ok {
                r.problems.push(format!(
                    "{}: its signature does not verify with the trusted public key",
                    key
                ));
                continue;
            }
            r.heads_authenticated += 1;
        }
        match hashes.get(h.seq as usize) {
            Some(sha) if *sha == h.sha256 => {}
            Some(_) => r.problems.push(format!(
                "entry {} differs from what head {} signed at {}",
                h.seq,
                key,
                crate::time::format_ms(h.at)
            )),
            None if !chain_broken => r.problems.push(format!(
                "the chain ends at entry {}, but head {} signed at {} names entry {}: entries \
                 after {} were deleted",
                r.entries,
                key,
                crate::time::format_ms(h.at),
                h.seq,
                r.entries
            )),
            None => {}
        }
    }
    Ok(r)
}
