//! Any bytes handed to the segment decoders: errors allowed, panics not.
//!
//! Random bytes rarely pass the magic and checksum checks, so the index decoder is also fed
//! directly with a trailer whose CRC matches the input.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = haven_format::verify_object(data);
    let _ = haven_format::index_of(data);
    let _ = haven_format::decode_header(data);
    if data.len() >= haven_format::TRAILER_LEN {
        let _ = haven_format::SegmentTrailer::decode(&data[data.len() - haven_format::TRAILER_LEN..]);
    }
    let trailer = haven_format::SegmentTrailer {
        index_offset: haven_format::HEADER_LEN as u64,
        index_len: data.len() as u32,
        index_crc32c: crc32c::crc32c(data),
        digest: [0; 32],
    };
    let _ = haven_format::SegmentIndex::decode(data, &trailer);
});
