//! Selecting and decoding records from a repository: only the chunks a window needs are
//! fetched (one ranged read each).

use haven_format::Record;
use serde_json::{json, Value};

use crate::repo::{RepoState, Repository};
use crate::{Error, Result};

/// One end of a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bound {
    Unbounded,
    Offset(i64),
    /// Epoch milliseconds (record timestamps).
    Time(i64),
}

impl std::fmt::Display for Bound {
    /// `unbounded`, `offset N` or an RFC 3339 time (restore plans store this text).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Bound::Unbounded => f.write_str("unbounded"),
            Bound::Offset(o) => write!(f, "offset {o}"),
            Bound::Time(t) => f.write_str(&crate::time::format_ms(*t)),
        }
    }
}

/// Which records to read: `[from, to)` of the given partitions of one topic.
#[derive(Debug, Clone)]
pub struct Selection {
    pub topic: String,
    /// None: every partition.
    pub partitions: Option<Vec<i32>>,
    /// None: the latest generation of the topic.
    pub generation: Option<u32>,
    pub from: Bound,
    pub to: Bound,
}

/// Whether a record at `offset` with `timestamp` falls in `[from, to)`. The one place
/// that says what a window selects (cat, restore, and what comes next).
pub fn in_window(offset: i64, timestamp: i64, from: Bound, to: Bound) -> bool {
    let after = match from {
        Bound::Unbounded => true,
        Bound::Offset(o) => offset >= o,
        Bound::Time(t) => timestamp >= t,
    };
    let before = match to {
        Bound::Unbounded => true,
        Bound::Offset(o) => offset < o,
        Bound::Time(t) => timestamp < t,
    };
    after && before
}

/// Refuses a window that selects nothing by construction (`--from 10 --to 5`).
pub fn check_window(from: Bound, to: Bound) -> Result<()> {
    if let (Bound::Time(a), Bound::Time(b)) | (Bound::Offset(a), Bound::Offset(b)) = (from, to) {
        if a >= b {
            return Err(Error::Input(format!(
                "empty window: --from {from} is not before --to {to}"
            )));
        }
    }
    Ok(())
}

/// Refuses partitions the repository does not hold for `topic` (generation `generation`).
pub fn check_partitions(
    state: &RepoState,
    topic: &str,
    generation: u32,
    wanted: &[i32],
) -> Result<()> {
    let held: Vec<i32> = state
        .partitions
        .keys()
        .filter(|(t, g, _)| t == topic && *g == generation)
        .map(|k| k.2)
        .collect();
    if let Some(p) = wanted.iter().find(|p| !held.contains(p)) {
        return Err(Error::Input(format!(
            "the repository holds no partition {p} of {topic}; it holds partitions {}",
            held.iter()
                .map(i32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    Ok(())
}

/// Whether a chunk may hold records of `[from, to)` (from its index entry alone).
pub fn chunk_may_hold(m: &haven_format::ChunkMeta, from: Bound, to: Bound) -> bool {
    let after = match from {
        Bound::Unbounded => true,
        Bound::Offset(o) => m.last_offset >= o,
        Bound::Time(t) => m.max_timestamp >= t,
    };
    let before = match to {
        Bound::Unbounded => true,
        Bound::Offset(o) => m.first_offset < o,
        Bound::Time(t) => m.min_timestamp < t,
    };
    after && before
}

/// The chunks that may hold selected records, partition by partition, in offset order.
/// Refuses a damaged log (unless loaded to salvage), a window that selects nothing by
/// construction and partitions the repository does not hold.
pub fn chunks_for<'a>(
    state: &'a RepoState,
    sel: &Selection,
) -> Result<Vec<(i32, &'a crate::repo::ChunkRef)>> {
    state.ensure_intact()?;
    check_window(sel.from, sel.to)?;
    let generation = match sel.generation {
        Some(g) => g,
        None => {
            state
                .topics
                .get(&sel.topic)
                .ok_or_else(|| {
                    let known: Vec<&str> = state.topics.keys().map(String::as_str).collect();
                    Error::Input(format!(
                        "topic {:?} is not in the repository; it holds: {}",
                        sel.topic,
                        if known.is_empty() {
                            "(nothing yet)".to_string()
                        } else {
                            known.join(", ")
                        }
                    ))
                })?
                .generation
        }
    };
    if let Some(wanted) = &sel.partitions {
        check_partitions(state, &sel.topic, generation, wanted)?;
    }
    let mut out = Vec::new();
    for ((t, g, p), ps) in &state.partitions {
        if *t != sel.topic || *g != generation {
            continue;
        }
        if sel.partitions.as_ref().is_some_and(|v| !v.contains(p)) {
            continue;
        }
        out.extend(
            ps.chunks
                .iter()
                .filter(|c| chunk_may_hold(&c.meta, sel.from, sel.to))
                .map(|c| (*p, c)),
        );
    }
    Ok(out)
}

/// Calls `f` for every selected record, partition by partition, in offset order.
/// Returns the number of records.
pub async fn for_each_record<F>(
    repo: &Repository,
    state: &RepoState,
    sel: &Selection,
    mut f: F,
) -> Result<u64>
where
    F: FnMut(i32, &Record) -> Result<()>,
{
    let mut n = 0;
    for (p, c) in chunks_for(state, sel)? {
        for r in repo.read_chunk(c).await? {
            if in_window(r.offset, r.timestamp, sel.from, sel.to) {
                f(p, &r)?;
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Bytes as JSON, exactly reversible: a string when they are UTF-8, else
/// `{"base64": "..."}`; a Kafka null is JSON null.
pub fn bytes_json(b: Option<&[u8]>) -> Value {
    use base64::Engine as _;
    match b {
        None => Value::Null,
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => json!({ "base64": base64::engine::general_purpose::STANDARD.encode(b) }),
        },
    }
}

/// Inverse of [`bytes_json`].
pub fn json_bytes(v: &Value) -> Result<Option<Vec<u8>>> {
    use base64::Engine as _;
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.as_bytes().to_vec())),
        Value::Object(o) => match o.get("base64").and_then(Value::as_str) {
            Some(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map(Some)
                .map_err(|e| Error::Input(format!("bad base64: {e}"))),
            None => Err(Error::Input("expected {\"base64\": ...}".into())),
        },
        _ => Err(Error::Input(
            "expected a string, null or {\"base64\": ...}".into(),
        )),
    }
}

/// One record as the NDJSON line of `haven cat` (see README, "Record JSON").
pub fn record_json(topic: &str, partition: i32, r: &Record) -> Value {
    json!({
        "topic": topic,
        "partition": partition,
        "offset": r.offset,
        "timestamp": r.timestamp,
        "timestamp_type": r.timestamp_type,
        "key": bytes_json(r.key.as_deref()),
        "value": bytes_json(r.value.as_deref()),
        "headers": r.headers.iter().map(|h| json!([h.name, bytes_json(h.value.as_deref())])).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_json_round_trips() {
        for b in [
            None,
            Some(&b""[..]),
            Some(&b"text"[..]),
            Some(&[0xff, 0x00, 0x80][..]),
        ] {
            assert_eq!(json_bytes(&bytes_json(b)).unwrap().as_deref(), b);
        }
    }
}
