//! `haven impact`: what a service's database restore to T0 means for everyone else.

use haven_engine::recovery::impact::{self, Impact};
use haven_engine::recovery::Service;
use haven_engine::timeline::Timeline;

use super::{cluster, instant, load_config, open_repo, ClusterArgs, RepoArgs};
use crate::{output, Ctx};

/// Impact of restoring a service's database to an older point.
///
/// For a service (a [services.NAME] of haven.toml: the topics it produces and consumes,
/// its consumer groups) whose database was restored to --restored-to (T0) at --incident
/// (T1, default now):
///   DOWNSTREAM  the events it produced between T0 and T1 (offset ranges per partition),
///               and for every group reading those topics how many it had processed;
///               groups that processed none are listed as unaffected; a group whose
///               position is unknown is flagged, never guessed.
///   UPSTREAM    the events it consumed between T0 and T1 on each input, and the offsets
///               its groups had committed at T0: where `haven rewind` takes them.
/// Groups' commits at T0 come from the backup's group timeline (`haven backup` samples
/// it); their current commits from the live cluster.
///
/// Examples:
///   haven impact --service machine-management --restored-to 2026-11-22T14:00:00Z \
///       --brokers us --repo main
///   haven impact --service billing --restored-to -2h --markdown > incident.md
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
#[group(id = "impact_args")]
pub struct Args {
    #[command(flatten)]
    pub(crate) repo: RepoArgs,
    #[command(flatten)]
    pub(crate) cluster: ClusterArgs,
    /// A [services.NAME] of haven.toml.
    #[arg(long, value_name = "NAME")]
    pub(crate) service: String,
    /// T0: the point the service's database was restored to.
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    pub(crate) restored_to: String,
    /// T1: when the data was lost (default: now).
    #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
    pub(crate) incident: Option<String>,
    /// Print Markdown for the incident ticket.
    #[arg(long)]
    pub(crate) markdown: bool,
    /// Seconds between the backup's group samples: stretches of the window longer than
    /// three of them without a sample are reported as timeline gaps.
    #[arg(long, default_value_t = 5, value_name = "SECONDS")]
    pub(crate) group_interval: u64,
}

/// An impact and what computing it opened, for commands that act on it.
pub struct Computed {
    pub impact: Impact,
    pub repo: haven_engine::repo::Repository,
    pub cluster: haven_kafka::ClusterConfig,
}

pub async fn compute(ctx: &Ctx, a: &Args) -> anyhow::Result<Computed> {
    let cfg = load_config(ctx)?;
    let service = Service::from_config(&cfg, &a.service)?;
    let t0 = instant("--restored-to", &a.restored_to)?;
    let t1 = match &a.incident {
        Some(t) => instant("--incident", t)?,
        None => chrono::Utc::now().timestamp_millis(),
    };
    let repo = open_repo(&cfg, &a.repo, false).await?;
    let state = super::load_for_reading(&repo, false).await?;
    let cl = cluster(&cfg, &a.cluster)?;
    let impact = impact::analyse(
        &cl,
        &Timeline::new(&state),
        &service,
        Service::consumers(&cfg),
        t0,
        t1,
        3 * 1000 * a.group_interval.max(1) as i64,
    )
    .await?;
    Ok(Computed {
        impact,
        repo,
        cluster: cl,
    })
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let imp = compute(ctx, &a).await?.impact;
    if ctx.json {
        output::json(&imp)?;
    } else if a.markdown {
        out!("{}", markdown(&imp));
    } else {
        print_text(&imp);
    }
    Ok(0)
}

fn ranges(rs: &[impact::Range]) -> String {
    rs.iter()
        .map(|r| format!("p{} {}..{} ({})", r.partition, r.from, r.to, r.records))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_text(i: &Impact) {
    outln!(
        "service {} restored to {}; data lost until {}",
        i.service,
        i.restored_to,
        i.incident
    );
    for (a, b) in &i.timeline_gaps {
        outln!("WARNING: the group timeline has no sample from {a} to {b}");
    }
    for d in &i.downstream {
        outln!(
            "\nDOWNSTREAM {}: {} events produced in the window: {}",
            d.topic,
            d.records,
            ranges(&d.produced)
        );
        let rows: Vec<Vec<String>> = d
            .groups
            .iter()
            .map(|g| {
                vec![
                    g.group.clone(),
                    g.status.to_uppercase(),
                    g.processed.to_string(),
                    ranges(&g.ranges),
                    g.note.clone().unwrap_or_default(),
                ]
            })
            .collect();
        output::table(&["GROUP", "STATUS", "PROCESSED", "RANGES", "NOTE"], &rows);
    }
    for u in &i.upstream {
        outln!(
            "\nUPSTREAM {} (group {}): rewind to the offsets at T0",
            u.topic,
            u.group
        );
        let rows: Vec<Vec<String>> = u
            .partitions
            .iter()
            .map(|p| {
                let o = |x: Option<i64>| x.map_or("unknown".to_string(), |v| v.to_string());
                vec![p.partition.to_string(), o(p.at_t0), o(p.now), o(p.records)]
            })
            .collect();
        output::table(&["PARTITION", "AT-T0", "NOW", "CONSUMED-SINCE-T0"], &rows);
    }
}

pub fn markdown(i: &Impact) -> String {
    let mut s = format!(
        "## Impact: `{}` restored to {}\n\nData lost between **{}** and **{}**.\n\n",
        i.service, i.restored_to, i.restored_to, i.incident
    );
    for (a, b) in &i.timeline_gaps {
        s.push_str(&format!(
            "> **Warning**: the group timeline has no sample from {a} to {b}.\n\n"
        ));
    }
    for d in &i.downstream {
        s.push_str(&format!(
            "### Downstream: `{}`\n\n{} events produced in the window: {}\n\n| group | status | processed | ranges | note |\n|---|---|---|---|---|\n",
            d.topic,
            d.records,
            ranges(&d.produced)
        ));
        for g in &d.groups {
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} |\n",
                g.group,
                g.status,
                g.processed,
                ranges(&g.ranges),
                g.note.clone().unwrap_or_default()
            ));
        }
        s.push('\n');
    }
    for u in &i.upstream {
        s.push_str(&format!(
            "### Upstream: `{}` (group `{}`)\n\n| partition | offset at T0 | now | consumed since T0 |\n|---|---|---|---|\n",
            u.topic, u.group
        ));
        for p in &u.partitions {
            let o = |x: Option<i64>| x.map_or("unknown".to_string(), |v| v.to_string());
            s.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                p.partition,
                o(p.at_t0),
                o(p.now),
                o(p.records)
            ));
        }
        s.push('\n');
    }
    s
}
