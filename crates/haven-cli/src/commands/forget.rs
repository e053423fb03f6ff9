//! `haven forget`: erase a data subject from a repository by destroying its key.

use std::path::PathBuf;

use haven_engine::erasure;

use super::{input, load_config, open_repo, usage, RepoArgs};
use crate::{output, Ctx};

/// Erase a data subject (GDPR art. 17) by crypto-shredding: destroy the key its records
/// were sealed with. Needs `erasure_subjects` and `subject_hash_key` in the repository's
/// [repositories.NAME] section of haven.toml (records backed up under those rules are
/// sealed per subject; the subject id is stored only as a keyed hash).
///
/// First a proof is stored (forgotten/..., audited as `forget`, holding the keyed hash
/// and the destroyed key's id, never the subject id), then the key is deleted and checked
/// gone. Afterwards `cat`, `restore` and `replay` return that subject's records redacted:
/// same offset and timestamp, no key, no value, one header `haven-redacted: erased`.
/// Every other record is unchanged, and `verify` and `audit verify` still pass (no segment
/// changes). `repo sync` deletes the key from copies too. Records of the subject backed up
/// later are sealed under a new key.
///
/// Examples:
///   haven forget --repo main --subject-file /tmp/request-4711.txt --reason "GDPR request 4711"
///   haven forget --repo main --subject cust-0042 --reason "GDPR request 4712"
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["subject", "subject_file"])))]
pub struct Args {
    /// The subject id as records carry it (it appears in the process list: prefer
    /// --subject-file).
    #[arg(long, value_name = "ID")]
    subject: Option<String>,
    /// A file holding the subject id (a trailing newline is dropped).
    #[arg(long, value_name = "FILE")]
    subject_file: Option<PathBuf>,
    /// Why (kept in the audit trail; do not put the subject id here).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    repo: RepoArgs,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let subject = match (&a.subject, &a.subject_file) {
        (Some(s), _) => s.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| usage(format!("--subject-file {}: {e}", f.display())))?
            .trim_end_matches(['\n', '\r'])
            .to_string(),
        (None, None) => return Err(usage("give --subject or --subject-file")),
    };
    if subject.is_empty() {
        return Err(usage("the subject id is empty"));
    }
    let section = cfg.repository(&a.repo.repo);
    let Some(rules) = erasure::rules::Rules::of(&section).map_err(input)? else {
        return Err(usage(format!(
            "repository {}: no subject_hash_key in its [repositories.NAME] section of \
             haven.toml, so no record was sealed per subject and there is nothing to forget \
             (set erasure_subjects and subject_hash_key before backing up)",
            a.repo.repo
        )));
    };
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let who = haven_engine::recovery::audit::current_user();
    let r = erasure::forget(&repo, &rules, &subject, &who, &a.reason)
        .await
        .map_err(input)?;
    if ctx.json {
        output::json(&r)?;
    } else {
        match &r.key_destroyed {
            Some(id) => outln!(
                "subject erased: key {id} destroyed; proof {} (audited as forget)",
                r.proof
            ),
            None => outln!(
                "no key for that subject: nothing of it was backed up under the erasure \
                 rules; proof {} (audited as forget)",
                r.proof
            ),
        }
    }
    Ok(0)
}
