//! `haven cat`: backed-up records as NDJSON.

use std::io::Write;

use haven_engine::read::{for_each_record, record_json, Selection};

use super::{load_config, open_repo, RepoArgs};
use crate::Ctx;

/// Print backed-up records as NDJSON, one object per line:
///
///   {"topic","partition","offset","timestamp","timestamp_type","key","value","headers"}
///
/// key, value and header values are a JSON string when the bytes are UTF-8, an object
/// {"base64": "..."} otherwise, and null for a Kafka null (distinct from ""). Headers are
/// [name, value] pairs in their original order. The bytes round-trip exactly.
///
/// --from / --to take an offset (a plain number below 10^12), a time (RFC 3339, or relative
/// like -15m), and select [from, to). Only the chunks the window needs are read.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    repo: RepoArgs,

    /// Topic to print.
    #[arg(long)]
    topic: String,

    /// Only these partitions (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    partition: Vec<i32>,

    /// Generation of a topic that was deleted and re-created (default: the latest).
    #[arg(long)]
    generation: Option<u32>,

    /// Start of the window (inclusive): OFFSET or TIME.
    #[arg(long, value_name = "OFFSET|TIME")]
    from: Option<String>,

    /// End of the window (exclusive): OFFSET or TIME.
    #[arg(long, value_name = "OFFSET|TIME")]
    to: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let state = repo.load_state().await?;
    let now = chrono::Utc::now().timestamp_millis();
    let sel = Selection {
        topic: a.topic.clone(),
        partitions: (!a.partition.is_empty()).then(|| a.partition.clone()),
        generation: a.generation,
        from: super::parse_bound(a.from.as_deref(), now)?,
        to: super::parse_bound(a.to.as_deref(), now)?,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut io_err = None;
    let topic = a.topic.clone();
    for_each_record(&repo, &state, &sel, |p, r| {
        if io_err.is_none() {
            if let Err(e) = writeln!(out, "{}", record_json(&topic, p, r)) {
                io_err = Some(e);
            }
        }
        Ok(())
    })
    .await?;
    out.flush()?;
    if let Some(e) = io_err {
        if e.kind() != std::io::ErrorKind::BrokenPipe {
            return Err(e.into());
        }
    }
    Ok(0)
}
