//! `haven verify`: every checksum, the hash chain and offset continuity.

use serde::Serialize;

use crate::repo::{RepoState, Repository};
use crate::{Error, Result};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Problem {
    /// The damaged object (or partition).
    pub object: String,
    pub what: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct VerifyReport {
    pub segments: u64,
    pub bytes: u64,
    pub chunks_decoded: u64,
    pub records_decoded: u64,
    pub head: Option<String>,
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads every byte of every segment. `deep` also decrypts and decompresses every chunk.
pub async fn verify(repo: &Repository, deep: bool) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let mut state = RepoState::default();
    let data_key_needed = deep && repo.descriptor.key_id.is_some() && repo.key().is_none();
    if data_key_needed {
        return Err(Error::Key(
            "--deep on an encrypted repository needs its key".into(),
        ));
    }
    for obj in repo.segments().await? {
        report.segments += 1;
        report.bytes += obj.size;
        let (bytes, ix, digest) = match repo.read_segment(&obj.key).await {
            Ok(x) => x,
            Err(Error::Format { key, source }) => {
                report.problems.push(Problem {
                    object: key,
                    what: source.to_string(),
                });
                continue;
            }
            Err(e) => return Err(e),
        };
        if crate::repo::segment_seq(&obj.key) != Some(ix.seq) {
            report.problems.push(Problem {
                object: obj.key.clone(),
                what: format!(
                    "holds segment {} under another name: objects were swapped or copied",
                    ix.seq
                ),
            });
            continue;
        }
        state.apply(&obj.key, &ix, digest);
        if deep {
            let dk = match ix.data_key(repo.key()) {
                Ok(k) => k,
                Err(e) => {
                    report.problems.push(Problem {
                        object: obj.key.clone(),
                        what: e.to_string(),
                    });
                    continue;
                }
            };
            for p in &ix.partitions {
                for c in &p.chunks {
                    let s = &bytes[c.byte_offset as usize..(c.byte_offset + c.byte_len) as usize];
                    let encrypted = ix.wrapped_key.is_some();
                    match haven_format::visit_stored_chunk(
                        ix.seq,
                        encrypted,
                        c,
                        s,
                        dk.as_ref(),
                        |_| Ok(()),
                    ) {
                        Ok(n) => {
                            report.chunks_decoded += 1;
                            report.records_decoded += n;
                        }
                        Err(e) => report.problems.push(Problem {
                            object: obj.key.clone(),
                            what: format!("{}/{} chunk {}: {e}", p.topic, p.partition, c.ordinal),
                        }),
                    }
                }
            }
        }
    }
    for (key, what) in &state.chain_breaks {
        report.problems.push(Problem {
            object: key.clone(),
            what: format!("hash chain broken: {what}"),
        });
    }
    for ((t, g, p), ps) in &state.partitions {
        for (key, expected, found) in &ps.discontinuities {
            report.problems.push(Problem {
                object: key.clone(),
                what: format!(
                    "{t}/{p} (generation {g}): range starts at offset {found}, the previous one ended at {expected}"
                ),
            });
        }
    }
    report.head = state.head.map(|(s, d)| format!("{s}:{}", hex::encode(d)));
    Ok(report)
}
