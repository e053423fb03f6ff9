//! Any text as wal2json (format 2) rows, one row per line, folded into transactions:
//! errors allowed, panics not; whatever folds gives statements that can be built.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let rows: Vec<String> = text.lines().map(str::to_string).collect();
    let mut out = Vec::new();
    if haven_pg::divergence::fold(&rows, &mut out).is_ok() {
        for t in &out {
            for c in &t.changes {
                let _ = haven_pg::divergence::statement(c);
                let _ = c.key();
                let _ = c.full_old_image();
            }
        }
    }
});
