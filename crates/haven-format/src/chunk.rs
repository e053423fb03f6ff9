//! A chunk: the records of one partition, contiguous in offset order, encoded then
//! zstd-compressed as one frame (FORMAT.md, "Chunk").

use crate::wire::{put_bytes, put_opt_bytes, put_str, put_svarint, put_uvarint, Reader};
use crate::{FormatError, Header, Record, TimestampType};

/// Largest decompressed chunk a reader accepts; bounds memory on corrupt input.
pub const MAX_CHUNK_RAW_LEN: u64 = 256 * 1024 * 1024;

/// Room reserved in front of the records for the chunk header (3 varints of at most 10
/// bytes), so records can be encoded as they arrive and the header written last.
const HEADER_ROOM: usize = 30;

/// Builds one chunk body record by record, copying each record's bytes once.
#[derive(Debug)]
pub struct ChunkEncoder {
    buf: Vec<u8>,
    count: u64,
    first_offset: i64,
    last_offset: i64,
    base_timestamp: i64,
    min_timestamp: i64,
    max_timestamp: i64,
}

impl Default for ChunkEncoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkEncoder {
    pub fn new() -> Self {
        ChunkEncoder {
            buf: vec![0; HEADER_ROOM],
            count: 0,
            first_offset: 0,
            last_offset: -1,
            base_timestamp: 0,
            min_timestamp: i64::MAX,
            max_timestamp: i64::MIN,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// An encoder with room for `capacity` bytes of records. Untouched capacity costs no
    /// resident memory (large allocations are mapped lazily).
    pub fn with_capacity(capacity: usize) -> Self {
        let mut e = Self::new();
        e.buf.reserve(capacity);
        e
    }

    /// Upper bound of the bytes `r` adds when pushed.
    pub fn encoded_len(r: &RecordRef<'_>) -> usize {
        40 + r.key.map_or(0, <[u8]>::len)
            + r.value.map_or(0, <[u8]>::len)
            + r.headers
                .iter()
                .map(|(n, v)| 20 + n.len() + v.map_or(0, <[u8]>::len))
                .sum::<usize>()
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.buf.len() - HEADER_ROOM
    }

    /// Number of records pushed.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Offset of the last record pushed.
    pub fn last_offset(&self) -> Option<i64> {
        (self.count > 0).then_some(self.last_offset)
    }

    /// Appends a record; offsets must strictly increase.
    pub fn push(&mut self, r: &RecordRef<'_>) -> Result<(), FormatError> {
        let prev = if self.count == 0 {
            self.first_offset = r.offset;
            self.base_timestamp = r.timestamp;
            r.offset - 1
        } else {
            self.last_offset
        };
        if r.offset <= prev {
            return Err(FormatError::invalid(
                "chunk",
                format!("offsets must increase: {} after {}", r.offset, prev),
            ));
        }
        let out = &mut self.buf;
        put_uvarint(out, (r.offset - prev - 1) as u64);
        put_svarint(out, r.timestamp.wrapping_sub(self.base_timestamp));
        match &r.sealed {
            None => {
                out.push(r.timestamp_type.to_byte());
                put_tail(out, r);
            }
            Some(s) => {
                out.push(r.timestamp_type.to_byte() | SEALED);
                put_bytes(out, s.subject);
                put_bytes(out, s.key_id);
                put_bytes(out, s.nonce);
                put_bytes(out, s.ciphertext);
            }
        }
        self.last_offset = r.offset;
        self.count += 1;
        self.min_timestamp = self.min_timestamp.min(r.timestamp);
        self.max_timestamp = self.max_timestamp.max(r.timestamp);
        Ok(())
    }

    /// The finished chunk, or None if no record was pushed.
    pub fn finish(mut self) -> Option<EncodedChunk> {
        if self.count == 0 {
            return None;
        }
        let mut header = Vec::with_capacity(HEADER_ROOM);
        put_uvarint(&mut header, self.count);
        put_uvarint(&mut header, self.first_offset as u64);
        put_svarint(&mut header, self.base_timestamp);
        let start = HEADER_ROOM - header.len();
        self.buf[start..HEADER_ROOM].copy_from_slice(&header);
        Some(EncodedChunk {
            buf: self.buf,
            start,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            record_count: self.count,
            min_timestamp: self.min_timestamp,
            max_timestamp: self.max_timestamp,
        })
    }
}

/// An uncompressed chunk body and what it holds.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    buf: Vec<u8>,
    start: usize,
    pub first_offset: i64,
    pub last_offset: i64,
    pub record_count: u64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
}

impl EncodedChunk {
    pub fn body(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Re-encodes the records at or after `offset` (None if there are none).
    pub fn from_offset(&self, offset: i64) -> Result<Option<EncodedChunk>, FormatError> {
        let mut enc = ChunkEncoder::new();
        visit_chunk(self.body(), |r| {
            if r.offset >= offset {
                enc.push(&r)
            } else {
                Ok(())
            }
        })?;
        Ok(enc.finish())
    }
}

/// Encodes `records` (strictly increasing offsets) into the uncompressed chunk body.
pub fn encode_chunk(records: &[Record]) -> Result<Vec<u8>, FormatError> {
    let mut enc = ChunkEncoder::new();
    for r in records {
        enc.push(&r.as_ref())?;
    }
    enc.finish()
        .map(|c| c.body().to_vec())
        .ok_or_else(|| FormatError::invalid("chunk", "a chunk holds at least one record"))
}

/// Bit 7 of a record's timestamp-type byte: the record is sealed for a data subject
/// (format version 2).
const SEALED: u8 = 0x80;

/// The key, value and headers of a record sealed under a subject's key (FORMAT.md,
/// "Erasure"); its offset and timestamp stay in clear.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRef<'a> {
    /// The subject's keyed hash (32 bytes).
    pub subject: &'a [u8],
    /// The id of the subject key it was sealed with (8 bytes).
    pub key_id: &'a [u8],
    pub nonce: &'a [u8],
    /// AES-256-GCM of the record's tail (see [`record_tail`]).
    pub ciphertext: &'a [u8],
}

/// A record decoded in place: its byte fields borrow from the chunk body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub offset: i64,
    pub timestamp: i64,
    pub timestamp_type: TimestampType,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Empty (no allocation) for records without headers.
    pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
    /// Set for a sealed record, whose `key`, `value` and `headers` are then empty: open
    /// it with its subject's key.
    pub sealed: Option<SealedRef<'a>>,
}

fn put_tail(out: &mut Vec<u8>, r: &RecordRef<'_>) {
    put_opt_bytes(out, r.key);
    put_opt_bytes(out, r.value);
    put_uvarint(out, r.headers.len() as u64);
    for (name, value) in &r.headers {
        put_str(out, name);
        put_opt_bytes(out, *value);
    }
}

/// A record's key, value and headers as a chunk encodes them: what sealing encrypts.
pub fn record_tail(r: &RecordRef<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(ChunkEncoder::encoded_len(r));
    put_tail(&mut out, r);
    out
}

type Tail<'a> = (
    Option<&'a [u8]>,
    Option<&'a [u8]>,
    Vec<(&'a str, Option<&'a [u8]>)>,
);

fn read_tail<'a>(r: &mut Reader<'a>) -> Result<Tail<'a>, FormatError> {
    let key = r.opt_bytes()?;
    let value = r.opt_bytes()?;
    let nh = r.len()?;
    let mut headers = Vec::with_capacity(nh);
    for _ in 0..nh {
        let name = std::str::from_utf8(r.bytes()?)
            .map_err(|_| FormatError::invalid("chunk", "header name is not UTF-8"))?;
        headers.push((name, r.opt_bytes()?));
    }
    Ok((key, value, headers))
}

/// What a sealed record's ciphertext holds: the record's tail packed, so that sealed
/// records still compress (ciphertext does not): a method byte, 0 = the tail as is,
/// 1 = uvarint raw length then the tail as one zstd frame (level 3). The shorter is kept.
pub fn pack_tail(tail: &[u8]) -> Vec<u8> {
    if let Ok(z) = compress(tail, 3) {
        let mut out = Vec::with_capacity(z.len() + 11);
        out.push(1);
        put_uvarint(&mut out, tail.len() as u64);
        out.extend_from_slice(&z);
        if out.len() < tail.len() + 1 {
            return out;
        }
    }
    let mut out = Vec::with_capacity(tail.len() + 1);
    out.push(0);
    out.extend_from_slice(tail);
    out
}

/// The tail [`pack_tail`] packed.
pub fn unpack_tail(packed: &[u8]) -> Result<Vec<u8>, FormatError> {
    match packed.split_first() {
        Some((0, rest)) => Ok(rest.to_vec()),
        Some((1, rest)) => {
            let mut r = Reader::new(rest, "sealed record");
            let raw_len = r.uvarint()?;
            let frame = r.take(r.remaining())?;
            decompress(frame, raw_len)
        }
        Some((m, _)) => Err(FormatError::invalid(
            "sealed record",
            format!("packing method {m}"),
        )),
        None => Err(FormatError::invalid("sealed record", "empty")),
    }
}

/// The record a sealed one was, from its opened (and unpacked) tail.
pub fn unsealed(r: &RecordRef<'_>, tail: &[u8]) -> Result<Record, FormatError> {
    let mut rd = Reader::new(tail, "sealed record");
    let (key, value, headers) = read_tail(&mut rd)?;
    if !rd.is_empty() {
        return Err(FormatError::invalid(
            "sealed record",
            "trailing bytes after the headers",
        ));
    }
    Ok(RecordRef {
        offset: r.offset,
        timestamp: r.timestamp,
        timestamp_type: r.timestamp_type,
        key,
        value,
        headers,
        sealed: None,
    }
    .to_owned())
}

impl RecordRef<'_> {
    /// An owned copy. A sealed record stays sealed: no key, no value, and one header
    /// `haven-sealed` (open it first).
    pub fn to_owned(&self) -> Record {
        if self.sealed.is_some() {
            return Record {
                offset: self.offset,
                timestamp: self.timestamp,
                timestamp_type: self.timestamp_type,
                key: None,
                value: None,
                headers: vec![Header {
                    name: "haven-sealed".into(),
                    value: None,
                }],
            };
        }
        Record {
            offset: self.offset,
            timestamp: self.timestamp,
            timestamp_type: self.timestamp_type,
            key: self.key.map(<[u8]>::to_vec),
            value: self.value.map(<[u8]>::to_vec),
            headers: self
                .headers
                .iter()
                .map(|(n, v)| Header {
                    name: (*n).to_string(),
                    value: v.map(<[u8]>::to_vec),
                })
                .collect(),
        }
    }
}

/// Decodes an uncompressed chunk body, calling `f` for each record without copying its
/// bytes. Returns the number of records.
pub fn visit_chunk<'a, F>(body: &'a [u8], mut f: F) -> Result<u64, FormatError>
where
    F: FnMut(RecordRef<'a>) -> Result<(), FormatError>,
{
    let mut r = Reader::new(body, "chunk");
    let count = r.len()?;
    let base_offset = r.offset()?;
    let base_ts = r.svarint()?;
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
        let timestamp_type = TimestampType::from_byte(tt & !SEALED)
            .ok_or_else(|| FormatError::invalid("chunk", format!("timestamp type {tt}")))?;
        let (key, value, headers, sealed) = if tt & SEALED == 0 {
            let (k, v, h) = read_tail(&mut r)?;
            (k, v, h, None)
        } else {
            let sealed = SealedRef {
                subject: r.bytes()?,
                key_id: r.bytes()?,
                nonce: r.bytes()?,
                ciphertext: r.bytes()?,
            };
            if sealed.subject.len() != 32 || sealed.key_id.len() != 8 || sealed.nonce.len() != 12 {
                return Err(FormatError::invalid(
                    "chunk",
                    "a sealed record's subject, key id or nonce has the wrong length",
                ));
            }
            (None, None, Vec::new(), Some(sealed))
        };
        f(RecordRef {
            offset,
            timestamp,
            timestamp_type,
            key,
            value,
            headers,
            sealed,
        })?;
    }
    if !r.is_empty() {
        return Err(FormatError::invalid(
            "chunk",
            "trailing bytes after the last record",
        ));
    }
    Ok(count as u64)
}

/// Decodes an uncompressed chunk body into owned records.
pub fn decode_chunk(body: &[u8]) -> Result<Vec<Record>, FormatError> {
    let mut records = Vec::new();
    visit_chunk(body, |r| {
        records.push(r.to_owned());
        Ok(())
    })?;
    Ok(records)
}

thread_local! {
    // zstd contexts are costly to set up (tables, workspace): one per thread, reused.
    static CCTX: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// Compresses `body` into `out` (replacing its content; its allocation is reused).
pub(crate) fn compress_into(body: &[u8], level: i32, out: &mut Vec<u8>) -> Result<(), FormatError> {
    let err = |e: std::io::Error| FormatError::invalid("chunk", e.to_string());
    out.clear();
    out.reserve(zstd::zstd_safe::compress_bound(body.len()));
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).map_err(err)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress_to_buffer(body, out).map(|_| ()).map_err(err),
            None => Err(FormatError::invalid("chunk", "no compressor")),
        }
    })
}

pub(crate) fn compress(body: &[u8], level: i32) -> Result<Vec<u8>, FormatError> {
    let err = |e: std::io::Error| FormatError::invalid("chunk", e.to_string());
    CCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.as_ref().is_none_or(|(l, _)| *l != level) {
            *slot = Some((level, zstd::bulk::Compressor::new(level).map_err(err)?));
        }
        match slot.as_mut() {
            Some((_, c)) => c.compress(body).map_err(err),
            None => Err(FormatError::invalid("chunk", "no compressor")),
        }
    })
}

pub(crate) fn decompress(data: &[u8], raw_len: u64) -> Result<Vec<u8>, FormatError> {
    if raw_len > MAX_CHUNK_RAW_LEN {
        return Err(FormatError::invalid(
            "chunk",
            format!("declared size {raw_len} exceeds the {MAX_CHUNK_RAW_LEN}-byte limit"),
        ));
    }
    let err = |e: std::io::Error| FormatError::Decompress(e.to_string());
    let out = DCTX.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            *slot = Some(zstd::bulk::Decompressor::new().map_err(err)?);
        }
        match slot.as_mut() {
            Some(d) => d.decompress(data, raw_len as usize).map_err(err),
            None => Err(FormatError::Decompress("no decompressor".into())),
        }
    })?;
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

    proptest! {
        #[test]
        fn encoder_matches_and_cuts_exactly(records in arb_records(), cut in any::<prop::sample::Index>()) {
            let mut enc = ChunkEncoder::new();
            for r in &records {
                enc.push(&r.as_ref()).unwrap();
            }
            let chunk = enc.finish().unwrap();
            prop_assert_eq!(chunk.record_count, records.len() as u64);
            prop_assert_eq!(chunk.first_offset, records[0].offset);
            prop_assert_eq!(decode_chunk(chunk.body()).unwrap(), records.clone());
            let at = records[cut.index(records.len())].offset;
            let tail = chunk.from_offset(at).unwrap().unwrap();
            let expected: Vec<Record> = records.iter().filter(|r| r.offset >= at).cloned().collect();
            prop_assert_eq!(decode_chunk(tail.body()).unwrap(), expected);
            prop_assert!(chunk.from_offset(records.last().unwrap().offset + 1).unwrap().is_none());
        }
    }

    proptest! {
        #[test]
        fn sealed_records_round_trip_and_open_only_with_their_key(
            records in arb_records(),
            which in proptest::collection::vec(any::<bool>(), 40),
        ) {
            let key = crate::SubjectKey::generate();
            let subject = [9u8; 32];
            let id = key.id();
            // Each sealed record's pieces, kept alive while the chunk is encoded.
            let pieces: Vec<Option<([u8; 12], Vec<u8>)>> = records
                .iter()
                .zip(&which)
                .map(|(r, &seal)| seal.then(|| key.seal(&subject, &pack_tail(&record_tail(&r.as_ref())))))
                .collect();
            let mut enc = ChunkEncoder::new();
            for (r, p) in records.iter().zip(&pieces) {
                let mut rr = r.as_ref();
                if let Some((nonce, ct)) = p {
                    rr.key = None;
                    rr.value = None;
                    rr.headers.clear();
                    rr.sealed = Some(SealedRef { subject: &subject, key_id: &id, nonce, ciphertext: ct });
                }
                enc.push(&rr).unwrap();
            }
            let chunk = enc.finish().unwrap();
            let mut back = Vec::new();
            let mut sealed = 0;
            visit_chunk(chunk.body(), |r| {
                match &r.sealed {
                    Some(s) => {
                        sealed += 1;
                        assert!(r.key.is_none() && r.value.is_none() && r.headers.is_empty());
                        assert_eq!(s.key_id, &id[..]);
                        assert!(crate::SubjectKey::generate().open(s.subject, s.nonce, s.ciphertext).is_err());
                        let packed = key.open(s.subject, s.nonce, s.ciphertext).unwrap();
                        back.push(unsealed(&r, &unpack_tail(&packed).unwrap()).unwrap());
                    }
                    None => back.push(r.to_owned()),
                }
                Ok(())
            }).unwrap();
            prop_assert_eq!(sealed, pieces.iter().filter(|p| p.is_some()).count());
            prop_assert_eq!(back, records);
        }
    }

    #[test]
    fn packed_tails_shrink_what_compresses_and_round_trip() {
        let json = br#"{"customer":"c-1","amount":12.5,"note":"refund refund refund refund refund refund"}"#.repeat(8);
        let p = pack_tail(&json);
        assert_eq!(p[0], 1);
        assert!(p.len() < json.len() / 2, "{} of {}", p.len(), json.len());
        assert_eq!(unpack_tail(&p).unwrap(), json);
        let tiny = b"ab";
        assert_eq!(pack_tail(tiny), vec![0, b'a', b'b']);
        assert_eq!(unpack_tail(&pack_tail(tiny)).unwrap(), tiny);
        assert!(unpack_tail(&[7, 1]).is_err() && unpack_tail(&[]).is_err());
        assert!(unpack_tail(&[1, 200, 1, 0]).is_err());
    }

    proptest! {
        #[test]
        fn unpacking_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unpack_tail(&bytes);
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
