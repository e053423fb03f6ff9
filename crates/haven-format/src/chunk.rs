//! A chunk: the records of one partition, contiguous in offset order, encoded then
//! zstd-compressed as one frame (FORMAT.md, "Chunk").

use crate::wire::{put_opt_bytes, put_str, put_svarint, put_uvarint, Reader};
use crate::{FormatError, Header, Record, TimestampType};

/// Largest decompressed chunk a reader accepts; bounds memory on corrupt input.
pub const MAX_CHUNK_RAW_LEN: u64 = 256 * 1024 * 1024;

/// Encodes `records` (strictly increasing offsets) into the uncompressed chunk body.
pub fn encode_chunk(records: &[Record]) -> Result<Vec<u8>, FormatError> {
    let first = records
        .first()
        .ok_or_else(|| FormatError::invalid("chunk", "a chunk holds at least one record"))?;
    let mut out = Vec::with_capacity(records.iter().map(|r| r.payload_len() + 16).sum());
    put_uvarint(&mut out, records.len() as u64);
    put_uvarint(&mut out, first.offset as u64);
    put_svarint(&mut out, first.timestamp);
    let mut prev = first.offset - 1;
    for r in records {
        if r.offset <= prev {
            return Err(FormatError::invalid(
                "chunk",
                format!("offsets must increase: {} after {}", r.offset, prev),
            ));
        }
        put_uvarint(&mut out, (r.offset - prev - 1) as u64);
        prev = r.offset;
        put_svarint(&mut out, r.timestamp.wrapping_sub(first.timestamp));
        out.push(r.timestamp_type.to_byte());
        put_opt_bytes(&mut out, r.key.as_deref());
        put_opt_bytes(&mut out, r.value.as_deref());
        put_uvarint(&mut out, r.headers.len() as u64);
        for h in &r.headers {
            put_str(&mut out, &h.name);
            put_opt_bytes(&mut out, h.value.as_deref());
        }
    }
    Ok(out)
}

/// Decodes an uncompressed chunk body.
pub fn decode_chunk(body: &[u8]) -> Result<Vec<Record>, FormatError> {
    let mut r = Reader::new(body, "chunk");
    let count = r.len()?;
    let base_offset = r.offset()?;
    let base_ts = r.svarint()?;
    let mut records = Vec::with_capacity(count);
    let mut prev = base_offset - 1;
    for _ in 0..count {
        let gap = r.offset()?;
        let offset = prev
            .checked_add(1)
            .and_then(|o| o.checked_add(gap))
            .ok_or_else(|| FormatError::invalid("chunk", "offset overflows"))?;
        prev = offset;
        let timestamp = base_ts.wrapping_add(r.svarint()?);
        let tt = r.u8()?;
        let timestamp_type = TimestampType::from_byte(tt)
            .ok_or_else(|| FormatError::invalid("chunk", format!("timestamp type {tt}")))?;
        let key = r.opt_bytes()?.map(<[u8]>::to_vec);
        let value = r.opt_bytes()?.map(<[u8]>::to_vec);
        let nh = r.len()?;
        let mut headers = Vec::with_capacity(nh);
        for _ in 0..nh {
            let name = r.string()?;
            let value = r.opt_bytes()?.map(<[u8]>::to_vec);
            headers.push(Header { name, value });
        }
        records.push(Record {
            offset,
            timestamp,
            timestamp_type,
            key,
            value,
            headers,
        });
    }
    if !r.is_empty() {
        return Err(FormatError::invalid(
            "chunk",
            "trailing bytes after the last record",
        ));
    }
    Ok(records)
}

pub(crate) fn compress(body: &[u8], level: i32) -> Result<Vec<u8>, FormatError> {
    zstd::bulk::compress(body, level).map_err(|e| FormatError::invalid("chunk", e.to_string()))
}

pub(crate) fn decompress(data: &[u8], raw_len: u64) -> Result<Vec<u8>, FormatError> {
    if raw_len > MAX_CHUNK_RAW_LEN {
        return Err(FormatError::invalid(
            "chunk",
            format!("declared size {raw_len} exceeds the {MAX_CHUNK_RAW_LEN}-byte limit"),
        ));
    }
    let out = zstd::bulk::decompress(data, raw_len as usize)
        .map_err(|e| FormatError::Decompress(e.to_string()))?;
    if out.len() as u64 != raw_len {
        return Err(FormatError::Decompress(format!(
            "expected {raw_len} bytes, got {}",
            out.len()
        )));
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_records() -> impl Strategy<Value = Vec<Record>> {
        let header = (
            "[a-z]{0,6}",
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8)),
        )
            .prop_map(|(name, value)| Header { name, value });
        let rec = (
            0i64..1000,
            any::<i64>(),
            0u8..3,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
            proptest::collection::vec(header, 0..4),
        );
        (0i64..i64::MAX / 2, proptest::collection::vec(rec, 1..40)).prop_map(|(base, recs)| {
            let mut off = base;
            recs.into_iter()
                .map(|(gap, ts, tt, key, value, headers)| {
                    let r = Record {
                        offset: off,
                        timestamp: ts,
                        timestamp_type: TimestampType::from_byte(tt).unwrap(),
                        key,
                        value,
                        headers,
                    };
                    off += 1 + gap;
                    r
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn chunk_round_trips(records in arb_records()) {
            let body = encode_chunk(&records).unwrap();
            let z = compress(&body, 3).unwrap();
            let back = decode_chunk(&decompress(&z, body.len() as u64).unwrap()).unwrap();
            prop_assert_eq!(back, records);
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_chunk(&bytes);
        }
    }

    #[test]
    fn null_and_empty_are_distinct() {
        let r = |key: Option<Vec<u8>>| Record {
            offset: 5,
            timestamp: 1,
            timestamp_type: TimestampType::CreateTime,
            key,
            value: None,
            headers: vec![
                Header {
                    name: "a".into(),
                    value: None,
                },
                Header {
                    name: "a".into(),
                    value: Some(vec![]),
                },
            ],
        };
        for rec in [r(None), r(Some(vec![]))] {
            let back = decode_chunk(&encode_chunk(std::slice::from_ref(&rec)).unwrap()).unwrap();
            assert_eq!(back, vec![rec]);
        }
    }

    #[test]
    fn decreasing_offsets_are_refused() {
        let mut a = arb_one(7);
        let b = arb_one(7);
        a.offset = 8;
        assert!(encode_chunk(&[a, b]).is_err());
    }

    fn arb_one(offset: i64) -> Record {
        Record {
            offset,
            timestamp: 0,
            timestamp_type: TimestampType::CreateTime,
            key: None,
            value: Some(b"v".to_vec()),
            headers: vec![],
        }
    }
}
