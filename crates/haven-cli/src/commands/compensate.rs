//! `haven compensate`: compensating events for what downstream services processed.

use haven_engine::recovery::compensate::{self, Generator};
use haven_engine::recovery::{audit, plan};

use super::{confirm, usage};
use crate::commands::impact;
use crate::{output, Ctx};

/// Emit compensating events for the lost window's events that downstream groups processed.
///
/// Runs the impact analysis (same flags as `haven impact`), takes the events of the
/// service's topics between T0 and T1 that at least one downstream group had processed,
/// and for each emits the events your rule makes to --to-topic:
///   --template JSON   filled from the original: {{topic}} {{partition}} {{offset}}
///                     {{timestamp}} {{key}} {{value}} {{value.FIELD.SUB}}; a placeholder
///                     that is a whole JSON string keeps the value's JSON type
///   --command CMD     run with the original as one JSON line on stdin; every JSON line it
///                     prints ({"key":..., "value":..., "headers":[[name, value]]}) is one
///                     compensating event (none: nothing to compensate)
///   --hook URL        the same over HTTP: POST the original, answer JSON lines
/// Each compensating event carries haven-compensates (TOPIC/PARTITION/OFFSET) and a
/// deterministic haven-compensation-id; ids already on --to-topic are skipped, so running
/// it twice compensates once. Asks for confirmation unless --yes; --dry-run prints them.
///
/// Example:
///   haven compensate --service machine-management --restored-to 2026-11-22T14:00:00Z \
///       --brokers us --repo main --to-topic machine-compensations \
///       --template '{"type":"machine.revoked","machine":"{{value.machine_id}}","of":"{{offset}}"}'
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(flatten)]
    impact: impact::Args,
    /// Topic the compensating events go to (it must exist).
    #[arg(long, value_name = "TOPIC")]
    to_topic: String,
    #[arg(long, value_name = "JSON", group = "generator")]
    template: Option<String>,
    #[arg(long, value_name = "CMD", group = "generator")]
    command: Option<String>,
    #[arg(long, value_name = "URL", group = "generator")]
    hook: Option<String>,
    #[arg(long)]
    dry_run: bool,
    #[arg(long)]
    yes: bool,
}

pub fn generator(
    template: Option<String>,
    command: Option<String>,
    hook: Option<String>,
) -> anyhow::Result<Generator> {
    match (template, command, hook) {
        (Some(t), None, None) => Ok(Generator::Template(t)),
        (None, Some(c), None) => Ok(Generator::Command(c)),
        (None, None, Some(h)) => Ok(Generator::Http(h)),
        _ => Err(usage(
            "give one of --template JSON, --command CMD or --hook URL",
        )),
    }
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let gen = generator(a.template.clone(), a.command.clone(), a.hook.clone())?;
    let impact::Computed {
        impact: imp,
        repo,
        cluster: cl,
    } = impact::compute(ctx, &a.impact).await?;
    let p = plan::build(&imp, None, Some((a.to_topic.clone(), gen.clone())));
    let Some(plan::Step::Compensate { ranges, .. }) = p.steps.last() else {
        return Err(anyhow::anyhow!("no compensation step planned"));
    };
    let (mut report, comps) = compensate::prepare(&cl, ranges, &a.to_topic, &gen).await?;
    if a.dry_run || comps.is_empty() {
        if ctx.json {
            output::json(
                &serde_json::json!({"dry_run": a.dry_run, "report": report, "pending": comps.len()}),
            )?;
        } else {
            for c in &comps {
                outln!(
                    "{} for {}: {}",
                    c.id,
                    c.of,
                    String::from_utf8_lossy(c.value.as_deref().unwrap_or_default())
                );
            }
            outln!(
                "{} compensating events to emit for {} original events ({} already emitted){}",
                comps.len(),
                report.originals,
                report.already_emitted,
                if a.dry_run { " (dry run)" } else { "" }
            );
        }
        return Ok(0);
    }
    confirm(
        a.yes,
        &format!("Emit {} compensating events to {}", comps.len(), a.to_topic),
    )?;
    compensate::emit(&cl, &a.to_topic, &comps, &mut report).await?;
    let details = serde_json::json!({"service": imp.service, "restored_to": imp.restored_to, "to_topic": a.to_topic, "generator": gen, "report": report});
    let key = audit::record(&repo, "compensate", &audit::sha256_of(&details), details).await?;
    if ctx.json {
        output::json(&serde_json::json!({"report": report, "audit": key}))?;
    } else {
        outln!(
            "emitted {} compensating events to {} ({} were already there); recorded as {key}",
            report.emitted,
            a.to_topic,
            report.already_emitted
        );
    }
    Ok(0)
}
