//! `haven demo`: Haven end to end on a local tansu broker.

use std::path::PathBuf;
use std::time::Duration;

use haven_engine::backup::{self, BackupOptions};
use haven_engine::read::{for_each_record, record_json, Bound, Selection};
use haven_engine::repo::Repository;
use haven_engine::restore::RestoreOptions;
use haven_kafka::ClusterConfig;
use haven_storage::Store;
use testbed::{Broker, Rec};
use tokio::sync::watch;

use crate::observer::CliObserver;
use crate::{output, Ctx};

/// Run Haven end to end on a local broker.
///
/// Starts a tansu broker on a free loopback port (installed by scripts/setup.sh), creates
/// the topic demo.orders (3 partitions), produces sample order events with keys, headers
/// and timestamps, backs them up into a local repository, verifies the repository and
/// prints what it holds and a few records read back from it, then restores a 10-minute
/// window of the events into a new topic with its offset map, and mirrors the topic to a
/// second broker behind an 80 ms link (the seed's US-EU distance) and shows what a US
/// failure would lose. The brokers are stopped at the end; the repository stays for you to
/// explore with `haven ls`, `haven verify` and `haven cat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to create the demo repository [default: a new directory under the temp dir].
    #[arg(long, value_name = "DIR")]
    repo: Option<PathBuf>,

    /// Number of events to produce.
    #[arg(long, default_value_t = 3000)]
    events: usize,
}

fn order(i: usize) -> Rec {
    let customer = format!("customer-{:03}", (i * 7919) % 101);
    let amount = ((i * 2654435761) % 100_000) as f64 / 100.0;
    let value = format!(
        r#"{{"order_id":"ord-{i:06}","customer":"{customer}","amount":{amount:.2},"currency":"EUR","status":"created"}}"#
    );
    Rec::kv(&customer, &value)
        .header("source", Some(b"checkout-service"))
        .header("trace-id", Some(format!("{:016x}", i * 31337).as_bytes()))
        .at(1_767_225_600_000 + (i as i64) * 1000)
}

pub async fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let say = |s: String| {
        if !ctx.json {
            outln!("{s}");
        }
    };
    let dir = match a.repo {
        Some(d) => d,
        None => tempfile::Builder::new()
            .prefix("haven-demo-")
            .tempdir()?
            .keep(),
    };
    say("1. starting a local tansu broker ...".into());
    let broker = tokio::task::spawn_blocking(Broker::start).await??;
    say(format!("   broker at {}", broker.bootstrap()));
    let events = a.events;
    let broker = std::sync::Arc::new(broker);
    let b = broker.clone();
    say(format!(
        "2. producing {events} order events to demo.orders (3 partitions) ..."
    ));
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        b.create_topic("demo.orders", 3)?;
        let recs: Vec<Rec> = (0..events).map(order).collect();
        b.produce("demo.orders", &recs)?;
        Ok(())
    })
    .await??;

    say(format!("3. backing up into {} ...", dir.display()));
    let store = Store::open(&dir.display().to_string())?;
    let repo = Repository::open_or_create(store, Default::default()).await?;
    let mut opts = BackupOptions::new(
        ClusterConfig::new(broker.bootstrap()),
        backup::topic_regex("demo\\..*")?,
    );
    opts.once = true;
    opts.group_interval = Some(Duration::from_secs(5));
    let (_tx, rx) = watch::channel(false);
    let observer = CliObserver::new(ctx.json);
    let report = backup::run(&repo, &opts, &observer, rx).await;
    observer.finish();
    let report = report?;
    say(format!(
        "   {} records in {} segment(s), {} in {:.1}s",
        report.records,
        report.segments,
        output::bytes(report.bytes),
        report.seconds
    ));

    say("4. verifying the repository (checksums, hash chain, continuity, every chunk) ...".into());
    let v = haven_engine::verify::verify(&repo, true).await?;
    say(format!(
        "   {}: {} segment(s), {} records decoded",
        if v.intact() { "intact" } else { "DAMAGED" },
        v.segments,
        v.records_decoded
    ));

    say("5. what the repository holds:".into());
    let state = repo.load_state().await?;
    let rows: Vec<Vec<String>> = state
        .partitions
        .iter()
        .map(|((t, _, p), s)| {
            vec![
                t.clone(),
                p.to_string(),
                format!("{}..{}", s.first_offset, s.next_offset),
                s.records.to_string(),
                output::bytes(s.stored_bytes),
            ]
        })
        .collect();
    if !ctx.json {
        output::table(&["TOPIC", "PART", "OFFSETS", "RECORDS", "STORED"], &rows);
    }
    say("6. the first 3 records of partition 0, read back from the repository:".into());
    let mut shown = Vec::new();
    let sel = Selection {
        topic: "demo.orders".into(),
        partitions: Some(vec![0]),
        generation: None,
        from: Bound::Offset(0),
        to: Bound::Offset(3),
    };
    for_each_record(&repo, &state, &sel, |p, r| {
        shown.push(record_json("demo.orders", p, r));
        Ok(())
    })
    .await?;
    for r in &shown {
        say(format!("   {r}"));
    }
    say("7. restoring the events of minutes 10 to 20 into demo.orders.restored ...".into());
    let t0 = 1_767_225_600_000i64;
    let opts = RestoreOptions {
        from: Bound::Time(t0 + 600_000),
        to: Bound::Time(t0 + 1_200_000),
        renames: [(
            "demo.orders".to_string(),
            "demo.orders.restored".to_string(),
        )]
        .into(),
        provenance_headers: true,
        ..RestoreOptions::new(
            ClusterConfig::new(broker.bootstrap()),
            backup::topic_regex("demo\\.orders")?,
        )
    };
    let plan = haven_engine::restore::plan(&repo, &state, &opts).await?;
    let observer = CliObserver::new(ctx.json);
    let restored =
        haven_engine::restore::run(&repo, &state, &plan, &opts.cluster, &observer, &[]).await;
    observer.finish();
    let restored = restored?;
    let offsets = haven_engine::restore::load_offsets(&repo, &plan.id).await?;
    for p in &offsets.partitions {
        let first = p.map.runs.first().map(|r| r.source).unwrap_or(0);
        say(format!(
            "   {}/{}: {} records; source offset {first} is now offset {} of {}",
            p.source_topic,
            p.partition,
            p.map.records(),
            p.map.translate(first).unwrap_or(0),
            p.target_topic
        ));
    }
    say(format!(
        "   restore {}: {} records in {:.1}s",
        restored.id, restored.records, restored.seconds
    ));
    say("8. mirroring demo.orders to a second broker 80 ms away (the \"EU region\") ...".into());
    let eu =
        tokio::task::spawn_blocking(|| Broker::start_remote(Duration::from_millis(80))).await??;
    let mut mopts = haven_engine::mirror::MirrorOptions::new(
        (ClusterConfig::new(broker.bootstrap()), "us".into()),
        (ClusterConfig::new(eu.bootstrap()), "eu".into()),
        backup::topic_regex("demo\\.orders")?,
    );
    mopts.once = true;
    let (_stop_tx, stop) = watch::channel(false);
    let mirrored =
        haven_engine::mirror::run(&mopts, &haven_engine::events::LogObserver, stop).await?;
    let status = haven_engine::mirror::status::status(&mopts).await?;
    let at_risk: i64 = status.iter().map(|p| p.lag_records).sum();
    say(format!(
        "   {} records copied exactly once in {:.1}s; records the EU side would lose if the US died now: {at_risk}",
        mirrored.records, mirrored.seconds
    ));
    drop(eu);
    drop(broker);
    if ctx.json {
        output::json(&serde_json::json!({
            "repository": dir, "backup": report, "verify": v, "records_shown": shown, "restore": restored,
            "mirror": mirrored, "mirror_at_risk": at_risk,
        }))?;
    } else {
        let haven = command_name();
        outln!("\nThe broker is stopped; the repository stays. Explore it:");
        outln!("  {haven} ls --repo {}", dir.display());
        outln!("  {haven} verify --repo {} --deep", dir.display());
        outln!(
            "  {haven} cat --repo {} --topic demo.orders --partition 1 --from 0 --to 5",
            dir.display()
        );
        outln!(
            "  {haven} offsets translate --repo {} --restore {} --topic demo.orders --partition 0 --offset 250",
            dir.display(),
            restored.id
        );
        if haven != "haven" {
            outln!("(or install it on your PATH: cargo install --path crates/haven-cli)");
        }
    }
    Ok(
        if v.intact()
            && report.records as usize == events
            && mirrored.records as usize == events
            && at_risk == 0
        {
            0
        } else {
            1
        },
    )
}

/// How to call this very binary in a hint: `haven` when that is what the PATH finds,
/// else its path (after `cargo run`, `target/release/haven`).
fn command_name() -> String {
    let me = std::env::current_exe().ok();
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("haven"))
            .find(|p| p.is_file())
    });
    match (me, on_path) {
        (Some(me), Some(found))
            if std::fs::canonicalize(&me).ok() == std::fs::canonicalize(&found).ok() =>
        {
            "haven".into()
        }
        (Some(me), _) => {
            let cwd = std::env::current_dir().ok();
            cwd.and_then(|d| me.strip_prefix(&d).ok().map(|p| p.display().to_string()))
                .unwrap_or_else(|| me.display().to_string())
        }
        (None, _) => "haven".into(),
    }
}
