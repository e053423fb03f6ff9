//! Before a restore writes anything, it reads every chunk it will write and checks it
//! (checksum, authentication; not decoded: the restore decodes and checks the rest as it
//! writes): a backup damaged at rest is found while the target is still
//! untouched. A plain restore then refuses, naming each damaged object; with
//! `--skip-damaged` it leaves those chunks out and says exactly which offsets.

use serde::Serialize;

use super::{plan, RestorePlan};
use crate::repo::{RepoState, Repository};
use crate::{Error, Result};

/// A chunk the restore cannot read: where it is, what it held, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DamagedChunk {
    pub object: String,
    /// The chunk's place in its segment.
    pub ordinal: u32,
    pub topic: String,
    pub partition: i32,
    /// The offsets it held (inclusive).
    pub first_offset: i64,
    pub last_offset: i64,
    pub what: String,
}

impl DamagedChunk {
    /// Whether `chunk` is this one.
    pub(crate) fn is(&self, chunk: &crate::repo::ChunkRef) -> bool {
        self.object == chunk.key && self.ordinal == chunk.meta.ordinal
    }
}

/// Chunks checked at once: the reads overlap (an object store's latency per request,
/// which one by one would add up over hundreds of chunks).
const CHECKS_IN_FLIGHT: usize = 8;

/// Reads every chunk of the plan; the damaged ones, in the plan's order. A store that
/// does not answer is an error (not damage): nothing is concluded about the backup from
/// an outage.
pub async fn preflight(
    repo: &Repository,
    state: &RepoState,
    plan: &RestorePlan,
) -> Result<Vec<DamagedChunk>> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let mut chunks = Vec::new();
    for pp in &plan.partitions {
        for chunk in plan::chunks_of(state, pp)? {
            chunks.push((pp, chunk));
        }
    }
    // A small restore (a window) keeps what it checked: the chunks are opened into the
    // repository's chunk cache, and the restore reads them from there instead of from the
    // store a second time (measured: a window read twice its bytes).
    let raw: u64 = chunks.iter().map(|(_, c)| c.meta.raw_len).sum();
    let keep = raw <= (crate::repo::CHUNK_CACHE_BYTES / 2) as u64;
    let checked: Vec<Option<DamagedChunk>> = stream::iter(chunks)
        .map(|(pp, chunk)| async move {
            let checked = if keep {
                repo.chunk_body(chunk).await.map(|_| ())
            } else {
                repo.check_chunk(chunk).await
            };
            let what = match checked {
                Ok(_) => return Ok(None),
                Err(Error::Format { source, .. }) => source.to_string(),
                Err(Error::Storage(haven_storage::StorageError::NotFound { key })) => {
                    format!("{key} is missing")
                }
                Err(Error::Key(e)) => e,
                Err(e) => return Err(e),
            };
            Ok(Some(DamagedChunk {
                object: chunk.key.clone(),
                ordinal: chunk.meta.ordinal,
                topic: pp.source_topic.clone(),
                partition: pp.partition,
                first_offset: chunk.meta.first_offset,
                last_offset: chunk.meta.last_offset,
                what,
            }))
        })
        .buffered(CHECKS_IN_FLIGHT)
        .try_collect()
        .await?;
    Ok(checked.into_iter().flatten().collect())
}

/// The refusal of a restore from a damaged backup: every damaged object named, nothing
/// written.
pub fn refusal(damaged: &[DamagedChunk]) -> Error {
    let list: Vec<String> = damaged
        .iter()
        .map(|d| {
            format!(
                "{} (chunk {}, {}/{} offsets {}..={}): {}",
                d.object, d.ordinal, d.topic, d.partition, d.first_offset, d.last_offset, d.what
            )
        })
        .collect();
    Error::Damaged(format!(
        "{} chunk(s) the restore would write cannot be read, so nothing was written: {}. \
         Restore everything else with --skip-damaged, or repair the objects from a copy first",
        damaged.len(),
        list.join("; ")
    ))
}
