//! Any bytes handed to the segment decoders: errors allowed, panics not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = haven_format::verify_object(data);
    let _ = haven_format::index_of(data);
    let _ = haven_format::decode_header(data);
    if data.len() >= haven_format::TRAILER_LEN {
        let _ = haven_format::SegmentTrailer::decode(&data[data.len() - haven_format::TRAILER_LEN..]);
    }
});
