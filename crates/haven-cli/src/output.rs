//! Printing results: JSON with `--json`, aligned text tables otherwise.
//!
//! Everything a command prints on stdout goes through [`write`] (the `outln!` and `out!`
//! macros): a closed stdout (`haven ls | head -1`) drops the rest of the output quietly and
//! the command ends with its own exit code; any other write error (a full disk) is reported
//! when the command ends, with exit code 1 (see [`failure`]).

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Prints a line on stdout (see the module documentation).
macro_rules! outln {
    () => {
        $crate::output::write(format_args!("\n"))
    };
    ($($t:tt)*) => {
        $crate::output::write(format_args!("{}\n", format_args!($($t)*)))
    };
}

/// Prints on stdout without a newline.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::output::write(format_args!($($t)*))
    };
}

static CLOSED: AtomicBool = AtomicBool::new(false);
static FAILED: Mutex<Option<String>> = Mutex::new(None);

/// Writes to stdout; see the module documentation for what happens when that fails.
pub fn write(args: std::fmt::Arguments<'_>) {
    if CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args) {
        note_write_error(e);
    }
}

/// Records a failed write to stdout: a closed pipe silences the output, anything else is
/// remembered for [`failure`].
pub fn note_write_error(e: std::io::Error) {
    CLOSED.store(true, Ordering::Relaxed);
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        if let Ok(mut f) = FAILED.lock() {
            f.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Whether stdout was closed by its reader (later output is dropped).
pub fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// Flushes stdout; returns the first write error other than a closed pipe, if any.
pub fn failure() -> Option<String> {
    if !closed() {
        if let Err(e) = std::io::stdout().lock().flush() {
            note_write_error(e);
        }
    }
    FAILED.lock().ok().and_then(|f| f.clone())
}

/// One JSON document on stdout.
pub fn json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints rows as a left-aligned table with a header.
pub fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{:<w$}", c, w = widths[i]))
            .collect();
        outln!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Human-readable byte counts.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
