//! Any bytes as a `haven-mirror-source` / `haven-origin` header value: errors allowed
//! (None), panics not; what decodes must encode back to the same text.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(s) = haven_format::provenance::decode(data) {
        let again = haven_format::provenance::encode(s.cluster, s.topic, s.partition, s.offset);
        let back = haven_format::provenance::decode(again.as_bytes()).expect("re-decodes");
        assert_eq!(back, s);
    }
    let _ = haven_format::provenance::origin(Some(data), Some(data));
    let _ = haven_format::provenance::origin(None, Some(data));
});
