//! Provenance headers: what every record `haven mirror` copies carries (the mirror's
//! format on the target cluster; see FORMAT.md, "Mirror metadata").
//!
//! - `haven-mirror-source` = `CLUSTER/TOPIC/PARTITION/OFFSET`: the record this one is a copy
//!   of, one hop back. The target partition itself is therefore the durable truth of how
//!   far a mirror got: a restarted mirror reads it back (`haven_engine::mirror::position`).
//! - `haven-origin` = `CLUSTER`: where the record was first produced, written from the
//!   second hop on (on the first hop the origin is the cluster of `haven-mirror-source`, so
//!   one header suffices: brokers that store headers row by row, like tansu, pay per
//!   header). A mirror never copies a record back to its origin, so active-active pairs
//!   do not loop.
//!
//! Cluster ids are the names used in `haven.toml` (or the bootstrap string for a cluster
//! given as `host:port`): keep them stable, as a mirror recognises its own records by them.

pub const SOURCE_HEADER: &str = "haven-mirror-source";
pub const ORIGIN_HEADER: &str = "haven-origin";

/// Where a mirrored record came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source<'a> {
    pub cluster: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

pub fn encode(cluster: &str, topic: &str, partition: i32, offset: i64) -> String {
    format!("{cluster}/{topic}/{partition}/{offset}")
}

/// Parses a `haven-mirror-source` value; None when it is not one (topics cannot hold `/`).
pub fn decode(value: &[u8]) -> Option<Source<'_>> {
    let s = std::str::from_utf8(value).ok()?;
    let mut it = s.rsplitn(4, '/');
    let offset = it.next()?.parse().ok()?;
    let partition = it.next()?.parse().ok()?;
    let topic = it.next()?;
    let cluster = it.next()?;
    Some(Source {
        cluster,
        topic,
        partition,
        offset,
    })
}

/// The cluster a record was first produced on, from its `haven-origin` and
/// `haven-mirror-source` headers (None: produced where it is read).
pub fn origin<'a>(
    origin_header: Option<&'a [u8]>,
    source_header: Option<&'a [u8]>,
) -> Option<&'a [u8]> {
    origin_header.or_else(|| source_header.and_then(decode).map(|s| s.cluster.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_survives_hops() {
        let first = encode("us", "t", 0, 5);
        assert_eq!(origin(None, None), None);
        assert_eq!(origin(None, Some(first.as_bytes())), Some(b"us".as_slice()));
        let second = encode("eu", "t", 0, 9);
        assert_eq!(
            origin(Some(b"us"), Some(second.as_bytes())),
            Some(b"us".as_slice())
        );
        assert_eq!(origin(None, Some(b"garbage")), None);
    }
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let v = encode("127.0.0.1:9092,127.0.0.1:9093", "orders.eu", 3, 42);
        let s = decode(v.as_bytes()).unwrap();
        assert_eq!(
            s,
            Source {
                cluster: "127.0.0.1:9092,127.0.0.1:9093",
                topic: "orders.eu",
                partition: 3,
                offset: 42
            }
        );
        assert!(decode(b"junk").is_none());
        assert!(decode(b"a/b/c/d").is_none());
        assert!(decode(&[0xff, b'/', b'1']).is_none());
    }

    proptest! {
        #[test]
        fn decode_never_panics(v in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(&v);
        }

        #[test]
        fn encode_decode(cluster in "[a-z0-9:,./-]{1,20}", topic in "[a-zA-Z0-9._-]{1,20}",
                         p in 0i32..1000, o in 0i64..i64::MAX) {
            let v = encode(&cluster, &topic, p, o);
            let s = decode(v.as_bytes()).unwrap();
            prop_assert_eq!((s.cluster, s.topic, s.partition, s.offset), (cluster.as_str(), topic.as_str(), p, o));
        }
    }
}
