//! A segment: one immutable object of the repository log (FORMAT.md, "Segment").
//!
//! ```text
//! [header 32 B][chunk 0][chunk 1]...[index][trailer 56 B]
//! ```
//! The trailer locates the index; the index lists every chunk with its byte range, so a
//! reader fetches the trailer, then the index, then only the chunks it needs.

use sha2::{Digest as _, Sha256};

use crate::chunk::{
    compress, compress_into, decompress, visit_chunk, ChunkEncoder, EncodedChunk, RecordRef,
};
use crate::crypto::{open_chunk, random_data_key, seal_chunk};
use crate::wire::{put_bytes, put_opt_bytes, put_str, put_svarint, put_uvarint, Reader};
use crate::{Digest, FormatError, KeyId, MasterKey, Record, WrappedKey, FORMAT_VERSION};

pub const SEGMENT_MAGIC: &[u8; 8] = b"HAVENSEG";
const END_MAGIC: &[u8; 8] = b"HAVENEND";
pub const HEADER_LEN: usize = 32;
pub const TRAILER_LEN: usize = 56;
const FLAG_ENCRYPTED: u16 = 1;

/// Where a chunk lives in its segment and what it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkMeta {
    /// Position of the chunk in its segment (0, 1, ...); part of the encryption nonce.
    pub ordinal: u32,
    /// Byte range of the stored (compressed, maybe encrypted) chunk within the object.
    pub byte_offset: u64,
    pub byte_len: u64,
    /// CRC-32C of the stored bytes.
    pub crc32c: u32,
    /// Length of the chunk body after decryption and decompression.
    pub raw_len: u64,
    pub first_offset: i64,
    pub last_offset: i64,
    pub record_count: u64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
}

/// Offsets `[from, to)` that the source no longer held when Haven reached them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loss {
    pub from: i64,
    pub to: i64,
    pub reason: String,
}

/// What a segment adds to one partition: the offset range `[start_offset, end_offset)` it
/// covers (every offset in it is either in a chunk, a legitimate gap, or in a `Loss`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionEntry {
    pub topic: String,
    /// Incremented when the topic is deleted and re-created (a new topic with the same name).
    pub generation: u32,
    pub partition: i32,
    pub start_offset: i64,
    pub end_offset: i64,
    pub chunks: Vec<ChunkMeta>,
    pub losses: Vec<Loss>,
}

impl PartitionEntry {
    pub fn record_count(&self) -> u64 {
        self.chunks.iter().map(|c| c.record_count).sum()
    }
    pub fn stored_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| c.byte_len).sum()
    }
}

/// A topic's shape and configuration as observed at `observed_at` (stored when it changes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMeta {
    pub topic: String,
    pub generation: u32,
    pub partition_count: i32,
    pub observed_at: i64,
    pub configs: Vec<(String, Option<String>)>,
}

/// A change of a consumer group's committed offset, as observed by sampling.
/// `offset` is -1 when the group no longer has a commit for the partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupCommit {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub observed_at: i64,
}

/// The decoded index of a segment: everything but the record bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentIndex {
    pub seq: u64,
    pub created_at: i64,
    pub prev_digest: Option<Digest>,
    pub writer: String,
    pub wrapped_key: Option<WrappedKey>,
    pub partitions: Vec<PartitionEntry>,
    pub topics: Vec<TopicMeta>,
    pub group_commits: Vec<GroupCommit>,
    /// Instants at which the consumer-group commits were sampled in full (even if nothing
    /// changed); a span without samples is a gap in the timeline.
    pub group_samples: Vec<i64>,
}

/// The fixed-size end of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentTrailer {
    pub index_offset: u64,
    pub index_len: u32,
    pub index_crc32c: u32,
    /// SHA-256 of every byte before the trailer.
    pub digest: Digest,
}

impl SegmentTrailer {
    pub fn decode(bytes: &[u8]) -> Result<Self, FormatError> {
        if bytes.len() != TRAILER_LEN {
            return Err(FormatError::Truncated {
                what: "segment trailer",
                needed: TRAILER_LEN.saturating_sub(bytes.len()),
            });
        }
        if &bytes[48..56] != END_MAGIC {
            return Err(FormatError::BadMagic {
                what: "segment trailer",
            });
        }
        let mut r = Reader::new(bytes, "segment trailer");
        let lo = r.u32_le()? as u64;
        let hi = r.u32_le()? as u64;
        let index_offset = lo | (hi << 32);
        let index_len = r.u32_le()?;
        let index_crc32c = r.u32_le()?;
        let digest = r.array32()?;
        Ok(SegmentTrailer {
            index_offset,
            index_len,
            index_crc32c,
            digest,
        })
    }

    fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut t = [0u8; TRAILER_LEN];
        t[0..8].copy_from_slice(&self.index_offset.to_le_bytes());
        t[8..12].copy_from_slice(&self.index_len.to_le_bytes());
        t[12..16].copy_from_slice(&self.index_crc32c.to_le_bytes());
        t[16..48].copy_from_slice(&self.digest);
        t[48..56].copy_from_slice(END_MAGIC);
        t
    }

    /// Byte range of the index within an object of `object_len` bytes, checked.
    pub fn index_range(&self, object_len: u64) -> Result<std::ops::Range<u64>, FormatError> {
        let end = self
            .index_offset
            .checked_add(u64::from(self.index_len))
            .ok_or_else(|| FormatError::invalid("segment trailer", "index range overflows"))?;
        if self.index_offset < HEADER_LEN as u64
            || end.checked_add(TRAILER_LEN as u64) != Some(object_len)
        {
            return Err(FormatError::invalid(
                "segment trailer",
                format!(
                    "index at {}..{end} does not end where the trailer starts in a {object_len}-byte object",
                    self.index_offset
                ),
            ));
        }
        Ok(self.index_offset..end)
    }
}

fn encode_header(seq: u64, created_at: i64, flags: u16) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..10].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[10..12].copy_from_slice(&flags.to_le_bytes());
    h[16..24].copy_from_slice(&seq.to_le_bytes());
    h[24..32].copy_from_slice(&created_at.to_le_bytes());
    h
}

/// Checks a segment header; returns (seq, created_at, flags).
pub fn decode_header(bytes: &[u8]) -> Result<(u64, i64, u16), FormatError> {
    if bytes.len() < HEADER_LEN {
        return Err(FormatError::Truncated {
            what: "segment header",
            needed: HEADER_LEN - bytes.len(),
        });
    }
    if &bytes[0..8] != SEGMENT_MAGIC {
        return Err(FormatError::BadMagic {
            what: "segment header",
        });
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version > FORMAT_VERSION || version == 0 {
        return Err(FormatError::UnsupportedVersion {
            found: version,
            supported: FORMAT_VERSION,
        });
    }
    let flags = u16::from_le_bytes([bytes[10], bytes[11]]);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&bytes[16..24]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&bytes[24..32]);
    Ok((u64::from_le_bytes(seq), i64::from_le_bytes(ts), flags))
}

/// Builds one segment in memory.
pub struct SegmentBuilder {
    index: SegmentIndex,
    level: i32,
    chunk_target: usize,
    data_key: Option<[u8; 32]>,
    buf: Vec<u8>,
    /// Reused compression buffer.
    zbuf: Vec<u8>,
    next_ordinal: u32,
}

impl SegmentBuilder {
    /// `prev_digest` is the digest of segment `seq - 1` (None only for the first segment).
    pub fn new(
        seq: u64,
        created_at: i64,
        writer: &str,
        prev_digest: Option<Digest>,
        master: Option<&MasterKey>,
    ) -> Self {
        let (data_key, wrapped_key) = match master {
            Some(m) => {
                let dk = random_data_key();
                (Some(dk), Some(m.wrap(&dk)))
            }
            None => (None, None),
        };
        let flags = if data_key.is_some() {
            FLAG_ENCRYPTED
        } else {
            0
        };
        SegmentBuilder {
            index: SegmentIndex {
                seq,
                created_at,
                prev_digest,
                writer: writer.to_string(),
                wrapped_key,
                partitions: Vec::new(),
                topics: Vec::new(),
                group_commits: Vec::new(),
                group_samples: Vec::new(),
            },
            level: 3,
            chunk_target: 1024 * 1024,
            data_key,
            buf: encode_header(seq, created_at, flags).to_vec(),
            zbuf: Vec::new(),
            next_ordinal: 0,
        }
    }

    /// zstd level (default 3) and target uncompressed chunk size (default 1 MiB).
    pub fn with_compression(mut self, level: i32, chunk_target: usize) -> Self {
        self.level = level;
        self.chunk_target = chunk_target.max(1);
        self
    }

    /// Reserves room for `additional` more bytes of chunks.
    pub fn reserve(&mut self, additional: usize) {
        self.buf.reserve(additional);
    }

    pub fn is_empty(&self) -> bool {
        self.index.partitions.is_empty()
            && self.index.topics.is_empty()
            && self.index.group_commits.is_empty()
            && self.index.group_samples.is_empty()
    }

    /// Adds the covered range `[start_offset, end_offset)` of a partition with its records
    /// (strictly increasing offsets inside the range) and losses, cut into chunks of about
    /// the target size.
    #[allow(clippy::too_many_arguments)]
    pub fn add_partition(
        &mut self,
        topic: &str,
        generation: u32,
        partition: i32,
        start_offset: i64,
        end_offset: i64,
        records: &[Record],
        losses: Vec<Loss>,
    ) -> Result<(), FormatError> {
        let mut chunks = Vec::new();
        let mut enc = ChunkEncoder::with_capacity(self.chunk_target);
        for r in records {
            let r = r.as_ref();
            if !enc.is_empty() && enc.len() + ChunkEncoder::encoded_len(&r) > self.chunk_target {
                let full =
                    std::mem::replace(&mut enc, ChunkEncoder::with_capacity(self.chunk_target));
                chunks.extend(full.finish());
            }
            enc.push(&r)?;
        }
        chunks.extend(enc.finish());
        self.add_encoded_partition(
            topic,
            generation,
            partition,
            start_offset,
            end_offset,
            &chunks,
            losses,
        )
    }

    /// As [`SegmentBuilder::add_partition`], with records already encoded into chunk bodies
    /// (in offset order).
    #[allow(clippy::too_many_arguments)]
    pub fn add_encoded_partition(
        &mut self,
        topic: &str,
        generation: u32,
        partition: i32,
        start_offset: i64,
        end_offset: i64,
        chunks: &[EncodedChunk],
        losses: Vec<Loss>,
    ) -> Result<(), FormatError> {
        if end_offset < start_offset {
            return Err(FormatError::invalid("partition entry", "end before start"));
        }
        let mut prev = start_offset - 1;
        for c in chunks {
            if c.first_offset <= prev || c.last_offset >= end_offset {
                return Err(FormatError::invalid(
                    "partition entry",
                    format!(
                        "records {}..={} outside the covered range {start_offset}..{end_offset} or out of order",
                        c.first_offset, c.last_offset
                    ),
                ));
            }
            prev = c.last_offset;
        }
        let mut metas = Vec::with_capacity(chunks.len());
        for c in chunks {
            metas.push(self.add_chunk(c)?);
        }
        self.index.partitions.push(PartitionEntry {
            topic: topic.to_string(),
            generation,
            partition,
            start_offset,
            end_offset,
            chunks: metas,
            losses,
        });
        Ok(())
    }

    fn add_chunk(&mut self, chunk: &EncodedChunk) -> Result<ChunkMeta, FormatError> {
        let body = chunk.body();
        let ordinal = self.next_ordinal;
        self.next_ordinal += 1;
        let byte_offset = self.buf.len();
        match &self.data_key {
            Some(dk) => {
                let compressed = compress(body, self.level)?;
                self.buf
                    .extend_from_slice(&seal_chunk(dk, self.index.seq, ordinal, &compressed));
            }
            None => {
                compress_into(body, self.level, &mut self.zbuf)?;
                self.buf.extend_from_slice(&self.zbuf);
            }
        }
        let stored = &self.buf[byte_offset..];
        Ok(ChunkMeta {
            ordinal,
            byte_offset: byte_offset as u64,
            byte_len: stored.len() as u64,
            crc32c: crc32c::crc32c(stored),
            raw_len: body.len() as u64,
            first_offset: chunk.first_offset,
            last_offset: chunk.last_offset,
            record_count: chunk.record_count,
            min_timestamp: chunk.min_timestamp,
            max_timestamp: chunk.max_timestamp,
        })
    }

    pub fn add_topic(&mut self, meta: TopicMeta) {
        self.index.topics.push(meta);
    }

    pub fn add_group_commits(&mut self, commits: impl IntoIterator<Item = GroupCommit>) {
        self.index.group_commits.extend(commits);
    }

    pub fn add_group_sample(&mut self, at: i64) {
        self.index.group_samples.push(at);
    }

    /// Finishes the object: returns its bytes, its index and its digest.
    pub fn finish(self) -> (Vec<u8>, SegmentIndex, Digest) {
        let mut buf = self.buf;
        let index_offset = buf.len() as u64;
        let index_bytes = encode_index(&self.index);
        buf.extend_from_slice(&index_bytes);
        let digest: Digest = Sha256::digest(&buf).into();
        let trailer = SegmentTrailer {
            index_offset,
            index_len: index_bytes.len() as u32,
            index_crc32c: crc32c::crc32c(&index_bytes),
            digest,
        };
        buf.extend_from_slice(&trailer.encode());
        (buf, self.index, digest)
    }
}

fn encode_index(ix: &SegmentIndex) -> Vec<u8> {
    let mut o = Vec::new();
    put_uvarint(&mut o, ix.seq);
    put_svarint(&mut o, ix.created_at);
    match &ix.prev_digest {
        None => o.push(0),
        Some(d) => {
            o.push(1);
            o.extend_from_slice(d);
        }
    }
    put_str(&mut o, &ix.writer);
    match &ix.wrapped_key {
        None => o.push(0),
        Some(w) => {
            o.push(1);
            put_str(&mut o, &w.key_id.0);
            o.extend_from_slice(&w.nonce);
            put_bytes(&mut o, &w.ciphertext);
        }
    }
    put_uvarint(&mut o, ix.partitions.len() as u64);
    for p in &ix.partitions {
        put_str(&mut o, &p.topic);
        put_uvarint(&mut o, u64::from(p.generation));
        put_svarint(&mut o, i64::from(p.partition));
        put_uvarint(&mut o, p.start_offset as u64);
        put_uvarint(&mut o, p.end_offset as u64);
        put_uvarint(&mut o, p.chunks.len() as u64);
        for c in &p.chunks {
            put_uvarint(&mut o, u64::from(c.ordinal));
            put_uvarint(&mut o, c.byte_offset);
            put_uvarint(&mut o, c.byte_len);
            o.extend_from_slice(&c.crc32c.to_le_bytes());
            put_uvarint(&mut o, c.raw_len);
            put_uvarint(&mut o, c.first_offset as u64);
            put_uvarint(&mut o, c.last_offset as u64);
            put_uvarint(&mut o, c.record_count);
            put_svarint(&mut o, c.min_timestamp);
            put_svarint(&mut o, c.max_timestamp);
        }
        put_uvarint(&mut o, p.losses.len() as u64);
        for l in &p.losses {
            put_uvarint(&mut o, l.from as u64);
            put_uvarint(&mut o, l.to as u64);
            put_str(&mut o, &l.reason);
        }
    }
    put_uvarint(&mut o, ix.topics.len() as u64);
    for t in &ix.topics {
        put_str(&mut o, &t.topic);
        put_uvarint(&mut o, u64::from(t.generation));
        put_svarint(&mut o, i64::from(t.partition_count));
        put_svarint(&mut o, t.observed_at);
        put_uvarint(&mut o, t.configs.len() as u64);
        for (k, v) in &t.configs {
            put_str(&mut o, k);
            put_opt_bytes(&mut o, v.as_deref().map(str::as_bytes));
        }
    }
    put_uvarint(&mut o, ix.group_commits.len() as u64);
    for g in &ix.group_commits {
        put_str(&mut o, &g.group);
        put_str(&mut o, &g.topic);
        put_svarint(&mut o, i64::from(g.partition));
        put_svarint(&mut o, g.offset);
        put_svarint(&mut o, g.observed_at);
    }
    put_uvarint(&mut o, ix.group_samples.len() as u64);
    for s in &ix.group_samples {
        put_svarint(&mut o, *s);
    }
    o
}

impl SegmentIndex {
    /// Decodes and checks an index block against its trailer.
    pub fn decode(bytes: &[u8], trailer: &SegmentTrailer) -> Result<Self, FormatError> {
        let crc = crc32c::crc32c(bytes);
        if crc != trailer.index_crc32c {
            return Err(FormatError::Checksum {
                what: "segment index".into(),
                stored: trailer.index_crc32c,
                computed: crc,
            });
        }
        let ix = decode_index(bytes)?;
        ix.check_layout(trailer.index_offset)?;
        Ok(ix)
    }

    /// Every chunk lies between the header and the index, without overlap, in ordinal order.
    fn check_layout(&self, index_offset: u64) -> Result<(), FormatError> {
        let mut chunks: Vec<&ChunkMeta> = self.partitions.iter().flat_map(|p| &p.chunks).collect();
        chunks.sort_by_key(|c| c.ordinal);
        let mut pos = HEADER_LEN as u64;
        for (i, c) in chunks.iter().enumerate() {
            if c.ordinal as usize != i || c.byte_offset != pos {
                return Err(FormatError::invalid(
                    "segment index",
                    format!("chunk {} is not where the layout puts it", c.ordinal),
                ));
            }
            pos = c
                .byte_offset
                .checked_add(c.byte_len)
                .ok_or_else(|| FormatError::invalid("segment index", "chunk range overflows"))?;
        }
        if pos != index_offset {
            return Err(FormatError::invalid(
                "segment index",
                "chunks do not end where the index starts",
            ));
        }
        for p in &self.partitions {
            if p.end_offset < p.start_offset {
                return Err(FormatError::invalid(
                    "segment index",
                    "partition range ends before it starts",
                ));
            }
            for c in &p.chunks {
                if c.first_offset < p.start_offset
                    || c.last_offset >= p.end_offset
                    || c.last_offset < c.first_offset
                    || c.record_count == 0
                {
                    return Err(FormatError::invalid(
                        "segment index",
                        format!("chunk {} lies outside its partition's range", c.ordinal),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Unwraps this segment's data key (None when the segment is not encrypted).
    pub fn data_key(&self, master: Option<&MasterKey>) -> Result<Option<[u8; 32]>, FormatError> {
        match (&self.wrapped_key, master) {
            (None, _) => Ok(None),
            (Some(_), None) => Err(FormatError::KeyRequired),
            (Some(w), Some(m)) => m.unwrap_key(w).map(Some),
        }
    }

    /// Checks the CRC of a stored chunk.
    pub fn check_chunk(&self, meta: &ChunkMeta, stored: &[u8]) -> Result<(), FormatError> {
        check_crc(self.seq, meta, stored)
    }

    /// Checks, decrypts, decompresses and decodes a stored chunk, and checks that what it
    /// holds matches the index.
    pub fn read_chunk(
        &self,
        meta: &ChunkMeta,
        stored: &[u8],
        data_key: Option<&[u8; 32]>,
    ) -> Result<Vec<Record>, FormatError> {
        read_stored_chunk(self.seq, self.wrapped_key.is_some(), meta, stored, data_key)
    }
}

/// Checks, decrypts (when `encrypted`), decompresses and decodes a chunk of segment `seq`
/// read on its own (a ranged read), and checks it holds what `meta` says.
pub fn read_stored_chunk(
    seq: u64,
    encrypted: bool,
    meta: &ChunkMeta,
    stored: &[u8],
    data_key: Option<&[u8; 32]>,
) -> Result<Vec<Record>, FormatError> {
    let mut out = Vec::with_capacity(meta.record_count.min(1 << 20) as usize);
    visit_stored_chunk(seq, encrypted, meta, stored, data_key, |r| {
        out.push(r.to_owned());
        Ok(())
    })?;
    Ok(out)
}

/// Checks, decrypts and decompresses a stored chunk, then checks by decoding it that it
/// holds what `meta` says. Returns the body, to decode with [`crate::visit_chunk`].
pub fn open_stored_chunk(
    seq: u64,
    encrypted: bool,
    meta: &ChunkMeta,
    stored: &[u8],
    data_key: Option<&[u8; 32]>,
) -> Result<Vec<u8>, FormatError> {
    let body = open_body(seq, encrypted, meta, stored, data_key)?;
    check_body(seq, meta, &body, |_| Ok(()))?;
    Ok(body)
}

/// Checks a stored chunk without decoding it: its CRC-32C and length against the index
/// entry, and, when encrypted, its authentication (the cheap check a restore makes of
/// every chunk before it writes anything; decoding checks the rest as it reads).
pub fn check_stored_chunk(
    seq: u64,
    encrypted: bool,
    meta: &ChunkMeta,
    stored: &[u8],
    data_key: Option<&[u8; 32]>,
) -> Result<(), FormatError> {
    check_crc(seq, meta, stored)?;
    match (encrypted, data_key) {
        (true, Some(dk)) => open_chunk(dk, seq, meta.ordinal, stored).map(|_| ()),
        (true, None) => Err(FormatError::KeyRequired),
        (false, _) => Ok(()),
    }
}

/// The CRC-32C (and length) of a stored chunk against its index entry.
fn check_crc(seq: u64, meta: &ChunkMeta, stored: &[u8]) -> Result<(), FormatError> {
    let crc = crc32c::crc32c(stored);
    if crc != meta.crc32c || stored.len() as u64 != meta.byte_len {
        return Err(FormatError::Checksum {
            what: format!("chunk {} of segment {seq}", meta.ordinal),
            stored: meta.crc32c,
            computed: crc,
        });
    }
    Ok(())
}

fn open_body(
    seq: u64,
    encrypted: bool,
    meta: &ChunkMeta,
    stored: &[u8],
    data_key: Option<&[u8; 32]>,
) -> Result<Vec<u8>, FormatError> {
    check_crc(seq, meta, stored)?;
    match (encrypted, data_key) {
        (true, Some(dk)) => decompress(&open_chunk(dk, seq, meta.ordinal, stored)?, meta.raw_len),
        (true, None) => Err(FormatError::KeyRequired),
        (false, _) => decompress(stored, meta.raw_len),
    }
}

/// Decodes `body`, calling `f` for each record, and checks it against `meta`.
fn check_body<F>(seq: u64, meta: &ChunkMeta, body: &[u8], mut f: F) -> Result<u64, FormatError>
where
    F: FnMut(RecordRef<'_>) -> Result<(), FormatError>,
{
    let mismatch = || {
        FormatError::invalid(
            "chunk",
            format!(
                "chunk {} of segment {seq} does not hold what the index says",
                meta.ordinal
            ),
        )
    };
    let mut first = None;
    let mut last = None;
    let n = visit_chunk(body, |r| {
        if first.is_none() {
            first = Some(r.offset);
            if r.offset != meta.first_offset {
                return Err(mismatch());
            }
        }
        last = Some(r.offset);
        if r.offset > meta.last_offset {
            return Err(mismatch());
        }
        f(r)
    })?;
    if n != meta.record_count || last != Some(meta.last_offset) {
        return Err(mismatch());
    }
    Ok(n)
}

/// As [`read_stored_chunk`], but calls `f` with each record borrowed from the decompressed
/// chunk instead of copying it. Every check runs before the first call, except the final
/// count check; an error means the records seen so far must be discarded.
pub fn visit_stored_chunk<F>(
    seq: u64,
    encrypted: bool,
    meta: &ChunkMeta,
    stored: &[u8],
    data_key: Option<&[u8; 32]>,
    f: F,
) -> Result<u64, FormatError>
where
    F: FnMut(RecordRef<'_>) -> Result<(), FormatError>,
{
    let body = open_body(seq, encrypted, meta, stored, data_key)?;
    check_body(seq, meta, &body, f)
}

fn decode_index(bytes: &[u8]) -> Result<SegmentIndex, FormatError> {
    let mut r = Reader::new(bytes, "segment index");
    let seq = r.uvarint()?;
    let created_at = r.svarint()?;
    let prev_digest = match r.u8()? {
        0 => None,
        1 => Some(r.array32()?),
        t => {
            return Err(FormatError::invalid(
                "segment index",
                format!("prev tag {t}"),
            ))
        }
    };
    let writer = r.string()?;
    let wrapped_key = match r.u8()? {
        0 => None,
        1 => {
            let key_id = KeyId(r.string()?);
            let mut nonce = [0u8; 12];
            nonce.copy_from_slice(r.take(12)?);
            let ciphertext = r.bytes()?.to_vec();
            Some(WrappedKey {
                key_id,
                nonce,
                ciphertext,
            })
        }
        t => {
            return Err(FormatError::invalid(
                "segment index",
                format!("key tag {t}"),
            ))
        }
    };
    let np = r.len()?;
    let mut partitions = Vec::with_capacity(np);
    for _ in 0..np {
        let topic = r.string()?;
        let generation = u32::try_from(r.uvarint()?)
            .map_err(|_| FormatError::invalid("segment index", "generation out of range"))?;
        let partition = r.i32_varint()?;
        let start_offset = r.offset()?;
        let end_offset = r.offset()?;
        let nc = r.len()?;
        let mut chunks = Vec::with_capacity(nc);
        for _ in 0..nc {
            chunks.push(ChunkMeta {
                ordinal: u32::try_from(r.uvarint()?)
                    .map_err(|_| FormatError::invalid("segment index", "ordinal out of range"))?,
                byte_offset: r.uvarint()?,
                byte_len: r.uvarint()?,
                crc32c: r.u32_le()?,
                raw_len: r.uvarint()?,
                first_offset: r.offset()?,
                last_offset: r.offset()?,
                record_count: r.uvarint()?,
                min_timestamp: r.svarint()?,
                max_timestamp: r.svarint()?,
            });
        }
        let nl = r.len()?;
        let mut losses = Vec::with_capacity(nl);
        for _ in 0..nl {
            losses.push(Loss {
                from: r.offset()?,
                to: r.offset()?,
                reason: r.string()?,
            });
        }
        partitions.push(PartitionEntry {
            topic,
            generation,
            partition,
            start_offset,
            end_offset,
            chunks,
            losses,
        });
    }
    let nt = r.len()?;
    let mut topics = Vec::with_capacity(nt);
    for _ in 0..nt {
        let topic = r.string()?;
        let generation = u32::try_from(r.uvarint()?)
            .map_err(|_| FormatError::invalid("segment index", "generation out of range"))?;
        let partition_count = r.i32_varint()?;
        let observed_at = r.svarint()?;
        let n = r.len()?;
        let mut configs = Vec::with_capacity(n);
        for _ in 0..n {
            let k = r.string()?;
            let v = match r.opt_bytes()? {
                None => None,
                Some(b) => Some(String::from_utf8(b.to_vec()).map_err(|_| {
                    FormatError::invalid("segment index", "config value is not UTF-8")
                })?),
            };
            configs.push((k, v));
        }
        topics.push(TopicMeta {
            topic,
            generation,
            partition_count,
            observed_at,
            configs,
        });
    }
    let ng = r.len()?;
    let mut group_commits = Vec::with_capacity(ng);
    for _ in 0..ng {
        group_commits.push(GroupCommit {
            group: r.string()?,
            topic: r.string()?,
            partition: r.i32_varint()?,
            offset: r.svarint()?,
            observed_at: r.svarint()?,
        });
    }
    let ns = r.len()?;
    let mut group_samples = Vec::with_capacity(ns);
    for _ in 0..ns {
        group_samples.push(r.svarint()?);
    }
    if !r.is_empty() {
        return Err(FormatError::invalid("segment index", "trailing bytes"));
    }
    Ok(SegmentIndex {
        seq,
        created_at,
        prev_digest,
        writer,
        wrapped_key,
        partitions,
        topics,
        group_commits,
        group_samples,
    })
}

/// Checks a whole segment object: header, digest, index and every chunk's CRC. Returns the
/// index and the digest. Does not decompress (see [`SegmentIndex::read_chunk`]).
pub fn verify_object(bytes: &[u8]) -> Result<(SegmentIndex, Digest), FormatError> {
    let (seq, created_at, flags) = decode_header(bytes)?;
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(FormatError::Truncated {
            what: "segment",
            needed: HEADER_LEN + TRAILER_LEN - bytes.len(),
        });
    }
    let trailer = SegmentTrailer::decode(&bytes[bytes.len() - TRAILER_LEN..])?;
    let range = trailer.index_range(bytes.len() as u64)?;
    let digest: Digest = Sha256::digest(&bytes[..range.end as usize]).into();
    if digest != trailer.digest {
        return Err(FormatError::Digest);
    }
    let ix = SegmentIndex::decode(&bytes[range.start as usize..range.end as usize], &trailer)?;
    if ix.seq != seq
        || ix.created_at != created_at
        || ix.wrapped_key.is_some() != (flags & FLAG_ENCRYPTED != 0)
    {
        return Err(FormatError::invalid("segment", "header and index disagree"));
    }
    for p in &ix.partitions {
        for c in &p.chunks {
            let s = &bytes[c.byte_offset as usize..(c.byte_offset + c.byte_len) as usize];
            ix.check_chunk(c, s)?;
        }
    }
    Ok((ix, digest))
}

/// Reads the index of a whole segment held in memory, checking only what locating it needs.
pub fn index_of(bytes: &[u8]) -> Result<SegmentIndex, FormatError> {
    decode_header(bytes)?;
    if bytes.len() < HEADER_LEN + TRAILER_LEN {
        return Err(FormatError::Truncated {
            what: "segment",
            needed: HEADER_LEN + TRAILER_LEN - bytes.len(),
        });
    }
    let trailer = SegmentTrailer::decode(&bytes[bytes.len() - TRAILER_LEN..])?;
    let range = trailer.index_range(bytes.len() as u64)?;
    SegmentIndex::decode(&bytes[range.start as usize..range.end as usize], &trailer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::arb_records;
    use proptest::prelude::*;

    fn build(records: &[Record], key: Option<&MasterKey>) -> (Vec<u8>, SegmentIndex, Digest) {
        let mut b = SegmentBuilder::new(3, 1_700_000_000_000, "w", Some([7u8; 32]), key)
            .with_compression(3, 200);
        let start = records[0].offset;
        let end = records.last().unwrap().offset + 5;
        b.add_partition("t", 0, 2, start, end, records, vec![])
            .unwrap();
        b.add_topic(TopicMeta {
            topic: "t".into(),
            generation: 0,
            partition_count: 3,
            observed_at: 1,
            configs: vec![
                ("cleanup.policy".into(), Some("compact".into())),
                ("x".into(), None),
            ],
        });
        b.add_group_commits([GroupCommit {
            group: "g".into(),
            topic: "t".into(),
            partition: 2,
            offset: 10,
            observed_at: 5,
        }]);
        b.add_group_sample(5);
        b.finish()
    }

    fn read_all(bytes: &[u8], key: Option<&MasterKey>) -> Result<Vec<Record>, FormatError> {
        let (ix, _) = verify_object(bytes)?;
        let dk = ix.data_key(key)?;
        let mut out = Vec::new();
        for c in &ix.partitions[0].chunks {
            let s = &bytes[c.byte_offset as usize..(c.byte_offset + c.byte_len) as usize];
            out.extend(ix.read_chunk(c, s, dk.as_ref())?);
        }
        Ok(out)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn segment_round_trips(records in arb_records(), encrypt in any::<bool>()) {
            let key = MasterKey::generate();
            let k = encrypt.then_some(&key);
            let (bytes, ix, digest) = build(&records, k);
            let (ix2, d2) = verify_object(&bytes).unwrap();
            prop_assert_eq!(&ix, &ix2);
            prop_assert_eq!(digest, d2);
            prop_assert_eq!(read_all(&bytes, k).unwrap(), records);
        }

        #[test]
        fn any_flipped_byte_is_detected(records in arb_records(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let (mut bytes, _, _) = build(&records, None);
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            prop_assert!(read_all(&bytes, None).is_err());
        }

        #[test]
        fn a_flipped_byte_of_a_chunk_fails_its_check(records in arb_records(), encrypt in any::<bool>(), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let key = MasterKey::generate();
            let k = encrypt.then_some(&key);
            let (bytes, ix, _) = build(&records, k);
            let dk = ix.data_key(k).unwrap();
            let c = &ix.partitions[0].chunks[0];
            let mut s = bytes[c.byte_offset as usize..(c.byte_offset + c.byte_len) as usize].to_vec();
            prop_assert!(check_stored_chunk(ix.seq, encrypt, c, &s, dk.as_ref()).is_ok());
            let i = pos.index(s.len());
            s[i] ^= 1 << bit;
            prop_assert!(check_stored_chunk(ix.seq, encrypt, c, &s, dk.as_ref()).is_err());
        }

        #[test]
        fn index_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_index(&bytes);
            let _ = index_of(&bytes);
            let _ = verify_object(&bytes);
        }
    }

    #[test]
    fn trailer_ranges_that_overflow_are_errors() {
        // Found by the `segment` fuzz target: index_offset + index_len + 56 overflowed.
        let t = SegmentTrailer {
            index_offset: u64::MAX - 60,
            index_len: 10,
            index_crc32c: 0,
            digest: [0; 32],
        };
        assert!(t.index_range(100).is_err());
        let t = SegmentTrailer {
            index_offset: u64::MAX,
            index_len: u32::MAX,
            ..t
        };
        assert!(t.index_range(100).is_err());
    }

    #[test]
    fn encrypted_segment_needs_the_right_key() {
        let records = vec![Record {
            offset: 0,
            timestamp: 0,
            timestamp_type: crate::TimestampType::CreateTime,
            key: None,
            value: Some(b"secret".to_vec()),
            headers: vec![],
        }];
        let key = MasterKey::generate();
        let (bytes, _, _) = build(&records, Some(&key));
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        assert_eq!(read_all(&bytes, None), Err(FormatError::KeyRequired));
        assert!(matches!(
            read_all(&bytes, Some(&MasterKey::generate())),
            Err(FormatError::WrongKey { .. })
        ));
        assert_eq!(read_all(&bytes, Some(&key)).unwrap(), records);
    }
}
