//! `haven offsets translate`: where a source offset landed on a restore's target.

use haven_engine::restore;

use super::{load_config, open_repo, usage, RepoArgs};
use crate::{output, Ctx};

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Translate a source offset through a completed restore's offset map.
    ///
    /// Prints the target offset where a consumer positioned at OFFSET on the source (the
    /// next record it would read) must resume on the target. An offset in a gap translates
    /// to the next restored record.
    Translate(TranslateArgs),
}

#[derive(Debug, clap::Args)]
pub struct TranslateArgs {
    #[command(flatten)]
    repo: RepoArgs,
    /// The restore's id (printed by `haven restore`).
    #[arg(long, value_name = "ID")]
    restore: String,
    /// Source topic.
    #[arg(long)]
    topic: String,
    #[arg(long)]
    partition: i32,
    #[arg(long)]
    offset: i64,
}

pub async fn run(ctx: &Ctx, cmd: Command) -> anyhow::Result<u8> {
    let Command::Translate(a) = cmd;
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let offsets = restore::load_offsets(&repo, &a.restore).await?;
    let Some(p) = offsets
        .partitions
        .iter()
        .find(|p| p.source_topic == a.topic && p.partition == a.partition)
    else {
        let plan = restore::load_plan(&repo, &a.restore).await?;
        let restored = plan
            .partitions
            .iter()
            .any(|p| p.source_topic == a.topic && p.partition == a.partition);
        return Err(usage(if restored {
            format!(
                "restore {} re-hashed {}/{} by key over the target's partitions (--repartition): \
                 its offsets have no one-to-one translation",
                a.restore, a.topic, a.partition
            )
        } else {
            format!(
                "restore {} did not restore {}/{}",
                a.restore, a.topic, a.partition
            )
        }));
    };
    let target = p.map.translate(a.offset);
    if ctx.json {
        output::json(&serde_json::json!({
            "restore": a.restore, "source_topic": a.topic, "partition": a.partition, "source_offset": a.offset,
            "target_topic": p.target_topic, "target_partition": p.target_partition(), "target_offset": target,
        }))?;
    } else {
        match target {
            Some(t) => outln!(
                "{}/{} offset {} -> {}/{} offset {t}",
                a.topic,
                a.partition,
                a.offset,
                p.target_topic,
                p.target_partition()
            ),
            None => outln!(
                "{}/{} offset {} is past everything restored: resume at the end of {}/{}",
                a.topic,
                a.partition,
                a.offset,
                p.target_topic,
                p.target_partition()
            ),
        }
    }
    Ok(0)
}
