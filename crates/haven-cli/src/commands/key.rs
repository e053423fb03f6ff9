//! `haven key new|rotate|status`: the repository's key-encryption keys.

use std::io::Write as _;
use std::path::PathBuf;

use haven_engine::repo::keys;

use super::{input, load_config, open_repo, usage, RepoArgs};
use crate::{output, Ctx};

/// Key-encryption keys (KEKs). Each segment is sealed with its own data key, wrapped by the
/// KEK current when it was written. `key rotate` wraps every data key again under a new
/// KEK, in one create-only object under keys/ recorded in the audit trail (`key-rotate`),
/// and makes it current; no segment is rewritten. Backups from before a rotation stay
/// readable with the new key alone; the old key may be destroyed once `key status` marks
/// it retirable.
///
/// Steps:
///   haven key new --out /etc/haven/main-2027.key
///   haven key rotate --repo main --key-file /etc/haven/main.key \
///       --new-key-file /etc/haven/main-2027.key --reason "yearly rotation"
///   (give writers the new key: put it first in their key file; a running backup
///    notices the rotation at its next segment)
///   haven key status --repo main --key-file /etc/haven/main-2027.key
#[derive(Debug, clap::Subcommand)]
#[command(verbatim_doc_comment)]
pub enum Command {
    /// Generate a key (64 hex digits) into a new file readable by its owner only.
    New(NewArgs),
    /// Wrap every segment's data key under a new key and make it current.
    Rotate(RotateArgs),
    /// The current key, the rotations, and which keys open how many segments.
    Status(StatusArgs),
}

#[derive(Debug, clap::Args)]
pub struct NewArgs {
    /// The file to create (refused if it exists).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct RotateArgs {
    /// The new key (a file of 64 hex digits; see `haven key new`).
    #[arg(long, value_name = "FILE")]
    new_key_file: PathBuf,
    /// Why (kept in the audit trail).
    #[arg(long)]
    reason: String,
    #[command(flatten)]
    repo: RepoArgs,
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    #[command(flatten)]
    repo: RepoArgs,
}

fn write_new_key(path: &std::path::Path) -> anyhow::Result<haven_format::MasterKey> {
    let key = haven_format::MasterKey::generate();
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            usage(format!(
                "--out {}: the file exists; a key file is never overwritten (choose another name)",
                path.display()
            ))
        } else {
            anyhow::anyhow!("cannot create {}: {e}", path.display())
        }
    })?;
    writeln!(f, "{}", key.to_hex())?;
    f.sync_all()?;
    Ok(key)
}

pub async fn run(ctx: &Ctx, c: Command) -> anyhow::Result<u8> {
    match c {
        Command::New(a) => {
            let key = write_new_key(&a.out)?;
            if ctx.json {
                output::json(&serde_json::json!({"id": key.id().0, "file": a.out}))?;
            } else {
                outln!("key {} written to {}", key.id(), a.out.display());
            }
        }
        Command::Rotate(a) => {
            let cfg = load_config(ctx)?;
            let new = haven_engine::load_keys(Some(&a.new_key_file)).map_err(input)?;
            let ids = new.ids();
            let [id] = ids.as_slice() else {
                return Err(usage(format!(
                    "--new-key-file {}: holds {} keys; give a file with exactly the new key",
                    a.new_key_file.display(),
                    ids.len()
                )));
            };
            let Some(new_key) = new.get(id).cloned() else {
                return Err(usage("--new-key-file: no key"));
            };
            let repo = open_repo(&cfg, &a.repo, false).await?;
            let progress = |done: u64, total: u64| {
                if !ctx.json && (done == total || done.is_multiple_of(100)) {
                    eprintln!("rotate: read {done} of {total} segment indexes");
                }
            };
            let who = haven_engine::recovery::audit::current_user();
            let r = keys::rotate(&repo, &new_key, &who, &a.reason, &progress)
                .await
                .map_err(input)?;
            if ctx.json {
                output::json(&r)?;
            } else if let Some(object) = &r.object {
                outln!(
                    "key {} is current (was {}): {} segment data keys wrapped again ({} already \
                     were) in {object}; no segment was rewritten",
                    r.to,
                    r.from,
                    r.rewrapped_segments,
                    r.already_under_new_key
                );
                outln!(
                    "next: give every writer key {} (first in its key file); check with \
                     `haven key status`",
                    r.to
                );
            } else {
                outln!(
                    "nothing to do: key {} is current and opens every segment",
                    r.to
                );
            }
        }
        Command::Status(a) => {
            let cfg = load_config(ctx)?;
            let repo = open_repo(&cfg, &a.repo, false).await?;
            let s = keys::status(&repo).await?;
            if ctx.json {
                output::json(&s)?;
            } else if !s.encrypted {
                outln!("not encrypted ({} segments)", s.stored_segments);
            } else {
                outln!(
                    "current key {} (created with {}), {} stored segments",
                    s.current.as_deref().unwrap_or("-"),
                    s.created_with.as_deref().unwrap_or("-"),
                    s.stored_segments
                );
                for r in &s.rotations {
                    outln!(
                        "rotation {}  {} -> {}  {} segments  by {}: {}",
                        r.at,
                        r.from,
                        r.to,
                        r.segments,
                        r.by,
                        r.reason
                    );
                }
                for k in &s.keys {
                    outln!(
                        "key {}  opens {} of {} segments{}{}",
                        k.id,
                        k.opens_segments,
                        s.stored_segments,
                        if k.given { "  (given)" } else { "" },
                        if k.retirable {
                            "  retirable: every segment opens without it"
                        } else {
                            ""
                        }
                    );
                }
                if !s.not_under_current.is_empty() {
                    outln!(
                        "{} segments do not open with the current key (first: {}): run \
                         `haven key rotate` again with the current key",
                        s.not_under_current.len(),
                        s.not_under_current[0]
                    );
                }
            }
        }
    }
    Ok(0)
}
