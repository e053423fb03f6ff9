//! Any bytes handed to the chunk decoder: errors allowed, panics not.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = haven_format::decode_chunk(data);
});
