//! `haven audit`: the repository's audit log.

use haven_engine::recovery::audit;

use super::{load_config, open_repo, RepoArgs};
use crate::{output, Ctx};

/// Print the audit log: every action that changed a cluster (rewind, replay to a sink,
/// compensate, recover --apply), who ran it, when, and the SHA-256 of what it executed.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    repo: RepoArgs,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let entries = audit::list(&repo).await?;
    if ctx.json {
        let v: Vec<_> = entries
            .iter()
            .map(|(k, e)| serde_json::json!({"key": k, "entry": e}))
            .collect();
        output::json(&v)?;
    } else {
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|(_, e)| {
                vec![
                    haven_engine::time::format_ms(e.at),
                    e.action.clone(),
                    format!("{}@{}", e.user, e.host),
                    e.plan_sha256[..12.min(e.plan_sha256.len())].to_string(),
                ]
            })
            .collect();
        output::table(&["WHEN", "ACTION", "WHO", "SHA256"], &rows);
    }
    Ok(0)
}
