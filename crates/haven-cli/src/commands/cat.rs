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

    #[command(flatten)]
    damage: super::DamageArgs,

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
    #[arg(long, allow_hyphen_values = true, value_name = "OFFSET|TIME")]
    from: Option<String>,

    /// End of the window (exclusive): OFFSET or TIME.
    #[arg(long, allow_hyphen_values = true, value_name = "OFFSET|TIME")]
    to: Option<String>,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let state = super::load_for_reading(&repo, a.damage.skip_damaged).await?;
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
    let topic = a.topic.clone();
    // A write error stops the reading: a closed pipe ends the command quietly, any other
    // error is reported when it ends (crate::output).
    let stopped = |e: std::io::Error| {
        crate::output::note_write_error(e);
        haven_engine::Error::OutputClosed
    };
    for_each_record(&repo, &state, &sel, |p, r| {
        writeln!(out, "{}", record_json(&topic, p, r)).map_err(stopped)
    })
    .await?;
    out.flush().map_err(stopped)?;
    Ok(0)
}
