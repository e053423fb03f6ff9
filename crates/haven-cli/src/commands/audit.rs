//! `haven audit [verify|sign]`: the repository's audit log, its chain and signed heads.

use std::path::PathBuf;

use haven_engine::recovery::{audit, audit_verify};

use super::{load_config, open_repo, RepoArgs};
use crate::{output, Ctx};

/// Print the audit log: every action that changed a cluster or produced evidence
/// (rewind, replay to a sink, compensate, recover --apply, failover plans, drills,
/// failback), who ran it, when, where, and the SHA-256 of what it executed.
///
/// Entries are hash-chained: entry N holds the SHA-256 of entry N-1. `audit verify`
/// walks the chain and names the first entry that was edited, deleted or reordered;
/// `audit sign` pins the chain's end with an ed25519 signature (run it from cron, and keep
/// the public key where the repository's writers cannot change it), so that deleting the
/// last entries shows too.
///
/// Examples:
///   haven audit --repo main
///   openssl rand -hex 32 > audit-signing.key
///   haven audit sign --repo main --key-file audit-signing.key     (prints the public key)
///   haven audit sign --repo main --signing-key-file audit-signing.key --copy-to main-eu
///   haven audit sign --repo main --signing-key-file audit-signing.key --every 3600
///   (or [audit] in haven.toml: every agent then signs on schedule)
///   haven audit verify --repo main --public-key audit-signing.pub --heads-from main-eu
#[derive(Debug, clap::Args)]
#[command(
    verbatim_doc_comment,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Repository: a name from haven.toml, a URL (file:///PATH, s3://BUCKET/PREFIX) or a path.
    #[arg(long, env = "HAVEN_REPO", value_name = "NAME|URL")]
    repo: Option<String>,
    /// File holding the repository's keys (64 hex digits each, one per line; the first is current for a new repository). Also: HAVEN_KEY.
    #[arg(long, value_name = "FILE")]
    key_file: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Walk the chain from its first entry and check every signed head: exit 0 when all
    /// holds, 1 naming the first entry that is missing, moved or changed.
    Verify(VerifyArgs),
    /// Sign the chain's end now (its length and last hash) and store the head in the
    /// repository, create-only.
    Sign(SignArgs),
    /// Walk the chain of a state directory's local audit log (switchover and failover
    /// steps, API requests: STATE/audit/): exit 0, or 1 naming the first bad entry.
    VerifyState(VerifyStateArgs),
}

#[derive(Debug, clap::Args)]
struct VerifyStateArgs {
    /// The state directory (of `haven agent`, `switchover`, `failover`, `serve`).
    #[arg(long, value_name = "DIR", env = "HAVEN_STATE_DIR")]
    state_dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct VerifyArgs {
    /// The trusted public key (64 hex digits) heads must be signed with.
    #[arg(long, value_name = "FILE", conflicts_with = "signing_key_file")]
    public_key: Option<PathBuf>,
    /// ... or the signing key itself (its public key is derived).
    #[arg(long = "signing-key-file", value_name = "FILE")]
    signing_key_file: Option<PathBuf>,
    /// Also check the copies of this repository's heads kept in another repository
    /// (`audit sign --copy-to`); repeatable.
    #[arg(long, value_name = "NAME|URL")]
    heads_from: Vec<String>,
    #[command(flatten)]
    repo: RepoArgs,
}

#[derive(Debug, clap::Args)]
struct SignArgs {
    /// The ed25519 signing key: 64 hex digits (a 32-byte seed), e.g. `openssl rand -hex 32`.
    #[arg(long = "signing-key-file", value_name = "FILE")]
    signing_key_file: PathBuf,
    /// Also keep a copy of the head in another repository (the other region's), where
    /// those who can write to this one cannot remove it; repeatable.
    #[arg(long, value_name = "NAME|URL")]
    copy_to: Vec<String>,
    /// Keep signing, every SECONDS, until Ctrl-C or SIGTERM (as an agent does with
    /// [audit] in haven.toml).
    #[arg(long, value_name = "SECONDS")]
    every: Option<u64>,
    #[command(flatten)]
    repo: RepoArgs,
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    match (a.command, a.repo) {
        (Some(Command::Verify(v)), _) => verify(ctx, v).await,
        (Some(Command::Sign(s)), _) => sign(ctx, s).await,
        (Some(Command::VerifyState(v)), _) => verify_state(ctx, v).await,
        (None, Some(repo)) => {
            list(
                ctx,
                RepoArgs {
                    repo,
                    key_file: a.key_file,
                },
            )
            .await
        }
        (None, None) => Err(super::usage(
            "give --repo NAME|URL (or HAVEN_REPO); `haven audit --help` shows the subcommands",
        )),
    }
}

async fn list(ctx: &Ctx, args: RepoArgs) -> anyhow::Result<u8> {
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &args, false).await?;
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
                    e.seq.map_or("-".into(), |s| s.to_string()),
                    haven_engine::time::format_ms(e.at),
                    e.action.clone(),
                    format!("{}@{}", e.user, e.host),
                    e.plan_sha256[..12.min(e.plan_sha256.len())].to_string(),
                ]
            })
            .collect();
        output::table(&["SEQ", "WHEN", "ACTION", "WHO", "SHA256"], &rows);
    }
    Ok(0)
}

async fn verify_state(ctx: &Ctx, a: VerifyStateArgs) -> anyhow::Result<u8> {
    if !a.state_dir.join("audit").is_dir() {
        return Err(super::usage(format!(
            "{}: no audit/ in it; give the state directory of an agent or a switchover",
            a.state_dir.display()
        )));
    }
    let r = audit_verify::verify_state_dir(&a.state_dir).await?;
    report(ctx, &r, "local audit chain", |_| Ok(()))
}

/// Prints a chain's report (`--json`: `{"ok", "report"}`), `heads` adding its lines
/// before the problems; exit 0 when it holds, 1 otherwise.
fn report(
    ctx: &Ctx,
    r: &audit_verify::ChainReport,
    title: &str,
    heads: impl Fn(&audit_verify::ChainReport) -> anyhow::Result<()>,
) -> anyhow::Result<u8> {
    let ok = r.problems.is_empty();
    if ctx.json {
        output::json(&serde_json::json!({"ok": ok, "report": r}))?;
    } else {
        outln!(
            "{title}: {} entries check out, last SHA-256 {}{}",
            r.entries,
            &r.last_sha256[..16.min(r.last_sha256.len())],
            if r.unchained > 0 {
                format!("; {} older entries written before the chain", r.unchained)
            } else {
                String::new()
            }
        );
        heads(r)?;
        for p in &r.problems {
            outln!("  BROKEN: {p}");
        }
        outln!("{}", if ok { "OK" } else { "FAILED" });
    }
    Ok(if ok { 0 } else { 1 })
}

async fn verify(ctx: &Ctx, a: VerifyArgs) -> anyhow::Result<u8> {
    let trusted = match (&a.public_key, &a.signing_key_file) {
        (Some(p), _) => Some(audit_verify::verifying_key(p)?),
        (None, Some(k)) => Some(audit_verify::signing_key(k)?.verifying_key()),
        (None, None) => None,
    };
    let cfg = load_config(ctx)?;
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let others = open_others(&cfg, &a.heads_from).await?;
    let others: Vec<&haven_engine::repo::Repository> = others.iter().collect();
    let r = audit_verify::verify_chain(&repo, trusted.as_ref(), &others).await?;
    report(ctx, &r, "audit chain", |r| {
        outln!(
            "signed heads: {} ({})",
            r.heads,
            if trusted.is_some() {
                format!(
                    "{} authenticated with the trusted key",
                    r.heads_authenticated
                )
            } else {
                "not authenticated: give --public-key".into()
            }
        );
        Ok(())
    })
}

async fn sign(ctx: &Ctx, a: SignArgs) -> anyhow::Result<u8> {
    let key = audit_verify::signing_key(&a.signing_key_file)?;
    let cfg = load_config(ctx)?;
    if let Some(every) = a.every {
        if every == 0 {
            return Err(super::usage("--every 0: give a number of seconds above 0"));
        }
        // Fail at once on a repository that cannot be opened, then sign on schedule.
        open_repo(&cfg, &a.repo, false).await?;
        let observer = crate::observer::CliObserver::new(ctx.json);
        haven_engine::recovery::audit_heads::sign_every(
            &cfg,
            std::slice::from_ref(&a.repo.repo),
            &a.copy_to,
            &key,
            std::time::Duration::from_secs(every),
            &observer,
            super::stop_on_signal(),
        )
        .await;
        return Ok(0);
    }
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let others = open_others(&cfg, &a.copy_to).await?;
    let others: Vec<&haven_engine::repo::Repository> = others.iter().collect();
    let (object, h) = audit_verify::sign_head(&repo, &key, &others).await?;
    if ctx.json {
        output::json(&serde_json::json!({"object": object, "head": h}))?;
    } else {
        outln!(
            "signed the chain's end: entry {}, SHA-256 {} ({object})",
            h.seq,
            &h.sha256[..16]
        );
        outln!(
            "public key (give it to `audit verify --public-key`): {}",
            h.public_key
        );
    }
    Ok(0)
}

/// Other repositories (names from haven.toml or URLs), which must exist.
async fn open_others(
    cfg: &haven_engine::config::Config,
    names: &[String],
) -> anyhow::Result<Vec<haven_engine::repo::Repository>> {
    let mut out = Vec::new();
    for n in names {
        let args = RepoArgs {
            repo: n.clone(),
            key_file: None,
        };
        out.push(open_repo(cfg, &args, false).await?);
    }
    Ok(out)
}
