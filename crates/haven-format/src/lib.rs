//! The bytes of a Haven backup repository.
//!
//! This crate owns the on-storage format described in `FORMAT.md` and nothing
//! else: it never touches the network or a file system. Everything that reads
//! bytes from storage hands them to a decoder in this crate, and every decoder
//! returns a typed [`FormatError`] on any input, never panics (see the fuzz
//! targets in `fuzz/`).

mod chunk;
mod crypto;
mod error;
pub mod provenance;
mod record;
mod segment;
mod wire;

pub use chunk::{
    decode_chunk, encode_chunk, pack_tail, record_tail, unpack_tail, unsealed, visit_chunk,
    ChunkEncoder, EncodedChunk, RecordRef, SealedRef,
};
pub use crypto::{subject_hash, KeyId, MasterKey, SubjectKey, WrappedKey};
pub use error::FormatError;
pub use record::{Header, Record, TimestampType};
pub use segment::{
    check_stored_chunk, decode_header, index_of, open_stored_chunk, read_stored_chunk,
    verify_object, visit_stored_chunk, ChunkMeta, GroupCommit, Loss, PartitionEntry,
    SegmentBuilder, SegmentIndex, SegmentTrailer, TopicMeta, HEADER_LEN, SEGMENT_MAGIC,
    TRAILER_LEN,
};

/// Version of the segment format this crate writes (2: records may be sealed for a data
/// subject). Readers read every version up to it and refuse newer ones.
pub const FORMAT_VERSION: u16 = 2;

/// SHA-256 digest of an object's content, as used by the hash chain.
pub type Digest = [u8; 32];
