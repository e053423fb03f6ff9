//! haven-pg against two real Postgres clusters with logical replication (US publishes, EU
//! subscribes): fencing that stops an application role, a barrier, sequences, a
//! switchover's detach and reverse subscription, and a failover's detach with the source
//! down, keeping `remote_lsn`.

use std::time::Duration;

use haven_pg::Pg;
use testbed::Postgres;

mod common;
use common::{admin, pair, until};

const T: Duration = Duration::from_secs(10);

async fn app(pg: &Postgres) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (c, conn) =
        tokio_postgres::connect(&pg.url_as("app", "postgres"), tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(c)
}

const SCHEMA: &str = "CREATE TABLE accounts (id bigserial PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL);
     DO $$ BEGIN CREATE ROLE app LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;
     GRANT ALL ON accounts TO app; GRANT ALL ON SEQUENCE accounts_id_seq TO app;";

async fn rows(pg: &Postgres) -> Vec<(i64, String, i64)> {
    let c = pg.connect().await.unwrap();
    c.query("SELECT id, owner, balance FROM accounts ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_fences_waits_for_the_barrier_and_reverses() {
    let (us_pg, eu_pg, us, eu) = pair(SCHEMA).await;
    let writer = app(&us_pg).await.unwrap();
    for i in 0..50 {
        writer
            .execute(
                "INSERT INTO accounts (owner, balance) VALUES ($1, $2)",
                &[&format!("owner-{i}"), &(i as i64 * 10)],
            )
            .await
            .unwrap();
    }
    us.beat().await.unwrap();
    until("the heartbeat reaches EU", async || {
        eu.replica_lag("haven").await.unwrap().seconds.is_some()
    })
    .await;
    let lag = eu.replica_lag("haven").await.unwrap();
    assert!(lag.seconds.unwrap() < 30.0, "{lag:?}");
    assert!(lag.subscription.as_ref().unwrap().enabled, "{lag:?}");
    assert!(us.slot_lag("haven").await.unwrap().is_some());

    // A session open in a transaction while the fence goes up is cut off.
    writer.batch_execute("BEGIN").await.unwrap();
    writer
        .execute(
            "INSERT INTO accounts (owner, balance) VALUES ('in-flight', 1)",
            &[],
        )
        .await
        .unwrap();
    assert!(!us.fenced(&["app".into()]).await.unwrap());
    let killed = us.fence(&["app".into()]).await.unwrap();
    assert_eq!(killed, 1);
    assert!(
        writer.batch_execute("COMMIT").await.is_err(),
        "the open transaction must not commit"
    );
    let Err(refused) = app(&us_pg).await else {
        panic!("a fenced role cannot log in");
    };
    let why = refused.as_db_error().map(|d| d.message().to_string());
    assert!(
        why.as_deref()
            .is_some_and(|m| m.contains("not permitted to log in")),
        "{why:?}"
    );
    assert!(us.fenced(&["app".into()]).await.unwrap());
    assert_eq!(
        us.fence(&["app".into()]).await.unwrap(),
        0,
        "fencing twice is harmless"
    );

    // Barrier: once EU has it, EU has every row US committed, row for row.
    us.write_barrier("sw-1").await.unwrap();
    until("the barrier reaches EU", async || {
        eu.has_barrier("sw-1").await.unwrap()
    })
    .await;
    let us_rows = rows(&us_pg).await;
    assert_eq!(us_rows.len(), 50);
    assert_eq!(rows(&eu_pg).await, us_rows);

    // Sequences: EU's was never moved by replication.
    let known = us.sequences().await.unwrap();
    assert_eq!(known, vec![("public.accounts_id_seq".to_string(), 51)]);
    let set = eu.advance_sequences(&known, 0).await.unwrap();
    assert_eq!(set, vec![("public.accounts_id_seq".to_string(), 51)]);

    // Detach with the source alive drops US's slot; reverse replication before EU opens.
    let d = eu.detach("haven", true, 2).await.unwrap();
    assert!(d.dropped && d.remote_lsn.is_some(), "{d:?}");
    assert!(
        us.slot_lag("haven").await.unwrap().is_none(),
        "US's slot is dropped"
    );
    assert!(
        !eu.detach("haven", true, 2).await.unwrap().dropped,
        "detaching twice is harmless"
    );
    eu.ensure_publication("haven").await.unwrap();
    us.ensure_subscription("haven", &eu_pg.conninfo("postgres"), "haven", false)
        .await
        .unwrap();
    eu.unfence(&["app".into()]).await.unwrap();
    let eu_writer = app(&eu_pg).await.unwrap();
    let id: i64 = eu_writer
        .query_one(
            "INSERT INTO accounts (owner, balance) VALUES ('eu-1', 7) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(id, 52, "EU's ids continue after US's");
    until("EU's write reaches US", async || {
        rows(&us_pg).await.len() == 51
    })
    .await;
    assert_eq!(rows(&us_pg).await, rows(&eu_pg).await);
    assert!(
        app(&us_pg).await.is_err(),
        "US stays fenced as a subscriber"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_detaches_without_the_source_and_keeps_the_evidence() {
    let (us_pg, eu_pg, us, eu) = pair(SCHEMA).await;
    let writer = app(&us_pg).await.unwrap();
    for i in 0..20 {
        writer
            .execute(
                "INSERT INTO accounts (owner, balance) VALUES ($1, 1)",
                &[&format!("o{i}")],
            )
            .await
            .unwrap();
    }
    us.beat().await.unwrap();
    until("EU has the 20 rows", async || {
        rows(&eu_pg).await.len() == 20
    })
    .await;
    let before = eu.subscription("haven").await.unwrap().unwrap();
    assert!(before.remote_lsn.is_some());
    // US dies (sequences pre-log values: it may have used ids EU never saw).
    us_pg.stop().unwrap();
    let d = eu.detach("haven", false, 2).await.unwrap();
    assert!(d.dropped);
    assert_eq!(
        d.remote_lsn, before.remote_lsn,
        "remote_lsn is kept as evidence"
    );
    assert!(eu.subscription("haven").await.unwrap().is_none());
    // With no source to ask: the replicated snapshot (20) and the data, plus the gap.
    let set = eu.advance_sequences(&[], 1000).await.unwrap();
    assert_eq!(set, vec![("public.accounts_id_seq".to_string(), 1020)]);
    drop(us);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_database() {
    let pg = Postgres::start().unwrap();
    let db = admin(&pg, "ledger-us").await;
    assert_eq!(db.published_tables("nope").await.unwrap(), None);
    assert!(!db.has_tables().await.unwrap());
    db.ensure_tables().await.unwrap();
    db.ensure_tables().await.unwrap();
    assert!(db.has_tables().await.unwrap());
    assert_eq!(
        db.missing_roles(&["postgres".into(), "ghost".into()])
            .await
            .unwrap(),
        vec!["ghost".to_string()]
    );
    pg.stop().unwrap();
    let e = Pg::connect(
        "ledger-us",
        &pg.url("postgres"),
        Some("pw"),
        Duration::from_secs(2),
    )
    .await
    .err()
    .unwrap();
    let text = e.to_string();
    assert!(text.contains("ledger-us") && !text.contains("pw"), "{text}");
    let e = Pg::connect("x", "not a url", None, T).await.err().unwrap();
    assert!(e.to_string().contains("database x"), "{e}");
}

/// A standby keeps replicating through a restart of its source (a crash, a maintenance
/// restart, a dropped link): the subscription Haven makes retries instead of disabling
/// itself. With `disable_on_error = true` (which the lab measured), the first dropped
/// connection disabled it for good, and the standby silently fell behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_resumes_after_the_source_restarts() {
    let (us_pg, eu_pg, us, _eu) = pair(SCHEMA).await;
    us.exec(
        "before",
        "INSERT INTO accounts (owner, balance) VALUES ('before', 1)",
    )
    .await
    .unwrap();
    until("EU has the row written before the restart", async || {
        rows(&eu_pg).await.len() == 1
    })
    .await;
    us_pg.stop().unwrap();
    // The subscriber notices the lost connection before the source is back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    us_pg.restart().unwrap();
    let us = admin(&us_pg, "ledger-us").await;
    us.exec(
        "after",
        "INSERT INTO accounts (owner, balance) VALUES ('after', 2)",
    )
    .await
    .unwrap();
    until("EU has the row written after the restart", async || {
        rows(&eu_pg).await.iter().any(|r| r.1 == "after")
    })
    .await;
    let eu = admin(&eu_pg, "ledger-eu").await;
    let sub = eu
        .subscription("haven")
        .await
        .unwrap()
        .expect("the subscription");
    assert!(sub.enabled, "{sub:?}");
}
