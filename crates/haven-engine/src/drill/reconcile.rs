//! Reconciling a restore with its source, record by record: each record's identity is a
//! digest of its key, value, headers and timestamp, and the two sequences must be the
//! same in the same order. Used by the scheduled restore test and the lab's drills.

use std::time::Duration;

use haven_kafka::rdkafka::message::BorrowedMessage;
use haven_kafka::rdkafka::Message;
use haven_kafka::ClusterConfig;

use super::config_hash;
use crate::Result;

/// A record's identity for comparison: a digest of its key, value, headers and timestamp.
pub fn digest(m: &BorrowedMessage<'_>) -> String {
    digest_of(m, false)
}

/// [`digest`] of the record as its producer wrote it: a mirror's provenance headers
/// (`haven-mirror-source`, `haven-origin`) left out, so copies in two regions compare
/// equal.
pub fn digest_own(m: &BorrowedMessage<'_>) -> String {
    digest_of(m, true)
}

fn digest_of(m: &BorrowedMessage<'_>, own: bool) -> String {
    use haven_format::provenance::{ORIGIN_HEADER, SOURCE_HEADER};
    let r = haven_kafka::record_ref(m);
    let mut bytes = Vec::new();
    let mut field = |b: Option<&[u8]>| match b {
        None => bytes.extend_from_slice(&u64::MAX.to_be_bytes()),
        Some(b) => {
            bytes.extend_from_slice(&(b.len() as u64).to_be_bytes());
            bytes.extend_from_slice(b);
        }
    };
    field(r.key);
    field(r.value);
    for (k, v) in &r.headers {
        if own && (*k == SOURCE_HEADER || *k == ORIGIN_HEADER) {
            continue;
        }
        field(Some(k.as_bytes()));
        field(*v);
    }
    bytes.extend_from_slice(&r.timestamp.to_be_bytes());
    config_hash(&bytes)
}

/// The (offset, digest) of every record of `[from, until)` of a partition (blocking).
pub fn digests(
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
) -> Result<Vec<(i64, String)>> {
    digests_with(cluster, topic, partition, (from, until), digest)
}

/// [`digests`] with another record identity (e.g. [`digest_own`]).
pub fn digests_with(
    cluster: &ClusterConfig,
    topic: &str,
    partition: i32,
    (from, until): (i64, i64),
    digest: fn(&BorrowedMessage<'_>) -> String,
) -> Result<Vec<(i64, String)>> {
    let mut out = Vec::new();
    haven_kafka::scan(
        cluster,
        topic,
        partition,
        from,
        until,
        Duration::from_secs(20),
        |m| {
            out.push((m.offset(), digest(m)));
            true
        },
    )?;
    Ok(out)
}

/// Where two sequences of (offset, digest) first differ, the source's (`want`) and the
/// restored (`got`); None when they are the same.
pub fn first_difference(
    what: &str,
    want: &[(i64, String)],
    got: &[(i64, String)],
) -> Option<String> {
    for (i, (w, g)) in want.iter().zip(got).enumerate() {
        if w.1 != g.1 {
            return Some(format!(
                "{what}: restored record {i} (offset {}) differs from the source's offset {}",
                g.0, w.0
            ));
        }
    }
    match want.len().cmp(&got.len()) {
        std::cmp::Ordering::Greater => Some(format!(
            "{what}: the source's offset {} is not in the restore ({} of {} records restored)",
            want[got.len()].0,
            got.len(),
            want.len()
        )),
        std::cmp::Ordering::Less => Some(format!(
            "{what}: {} records restored that the source does not hold",
            got.len() - want.len()
        )),
        std::cmp::Ordering::Equal => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_difference_or_none() {
        let a = |o: i64, d: &str| (o, d.to_string());
        let want = vec![a(0, "x"), a(1, "y"), a(3, "z")];
        assert_eq!(
            first_difference("p0", &want, &[a(0, "x"), a(1, "y"), a(2, "z")]),
            None
        );
        assert!(
            first_difference("p0", &want, &[a(0, "x"), a(1, "q"), a(2, "z")])
                .unwrap()
                .contains("restored record 1")
        );
        assert!(first_difference("p0", &want, &[a(0, "x")])
            .unwrap()
            .contains("offset 1 is not in the restore"));
        assert!(first_difference("p0", &want[..1], &[a(0, "x"), a(1, "y")])
            .unwrap()
            .contains("1 records restored that the source does not hold"));
    }
}
