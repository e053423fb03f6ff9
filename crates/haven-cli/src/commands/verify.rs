//! `haven verify`: integrity of a repository.

use super::{load_config, open_repo, RepoArgs};
use crate::{output, Ctx};

/// Check a repository's integrity.
///
/// Reads every byte of every segment and checks the object digests, the index and chunk
/// checksums, the hash chain that links each segment to its predecessor (a deleted,
/// reordered, replaced or edited segment breaks it) and the offset continuity of every
/// partition. --deep also decrypts and decompresses every chunk.
///
/// Exit code 0 when intact, 1 when anything is damaged (each damaged object is named).
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    repo: RepoArgs,

    /// Also decrypt, decompress and decode every chunk.
    #[arg(long)]
    deep: bool,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let report = haven_engine::verify::verify(&repo, a.deep).await?;
    if ctx.json {
        output::json(&serde_json::json!({"intact": report.intact(), "report": report}))?;
    } else {
        for p in &report.problems {
            outln!("DAMAGED {}: {}", p.object, p.what);
        }
        outln!(
            "{}: {} segments, {} checked{}; head {}",
            if report.intact() { "intact" } else { "DAMAGED" },
            report.segments,
            output::bytes(report.bytes),
            if a.deep {
                format!(
                    ", {} chunks / {} records decoded",
                    report.chunks_decoded, report.records_decoded
                )
            } else {
                String::new()
            },
            report.head.as_deref().unwrap_or("(empty log)")
        );
    }
    Ok(if report.intact() { 0 } else { 1 })
}
