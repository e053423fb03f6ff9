//! A drill's evidence on disk, and what it reads back from the lab.

use std::path::Path;

use anyhow::Context;
use haven_engine::drill::{html, DrillReport, Second};

use super::drills_dir;
use crate::control::LabState;

/// Captures US's divergence into the lab's repository; the stored object and the ids of
/// the transfers it holds.
pub(super) async fn captured_transfers(
    lab: &LabState,
) -> anyhow::Result<(String, std::collections::HashSet<String>)> {
    let (c, object) = super::failback::capture(lab).await?;
    Ok((object, super::failback::transfer_ids(&c)))
}

pub(super) fn read_seconds(path: &Path) -> Vec<Second> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| Second {
            at_ms: v["at_ms"].as_i64().unwrap_or(0),
            acknowledged: v["in_second"].as_u64().unwrap_or(0),
            p99_ms: v["p99_ms"].as_f64().unwrap_or(0.0),
            errors: v["errors"].as_u64().unwrap_or(0),
            region: v["region"].as_str().unwrap_or("").to_string(),
        })
        .collect()
}

/// Writes `DIR/drills/ID.json` and `ID.html`, create-only (evidence is never
/// overwritten).
pub fn write_report(lab_dir: &Path, r: &DrillReport) -> anyhow::Result<()> {
    use std::io::Write;
    let dir = drills_dir(lab_dir);
    std::fs::create_dir_all(&dir)?;
    for (ext, bytes) in [
        ("json", serde_json::to_vec_pretty(r)?),
        ("html", html::render(r).into_bytes()),
    ] {
        let p = dir.join(format!("{}.{ext}", r.id));
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&p)
            .with_context(|| format!("create {} (evidence is never overwritten)", p.display()))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    Ok(())
}
