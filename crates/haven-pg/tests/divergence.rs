//! The failback's Postgres side against real clusters: US writes that EU never applied
//! (inserts, updates, a delete, a table without a primary key, one large transaction)
//! are read from US's orphaned slot after US crashed, exactly, cut at the `remote_lsn`
//! EU recorded when it detached; a cut past the slot's position (the slot moved
//! backwards) is honoured; a re-applied transaction lands once, and one whose row EU
//! changed since is refused whole.

use std::time::Duration;

use haven_pg::divergence::{parse_lsn, Op};
use testbed::Postgres;

mod common;
use common::{admin, pair, until};

const SCHEMA: &str =
    "CREATE TABLE accounts (id int PRIMARY KEY, balance bigint NOT NULL, note text);
     ALTER TABLE accounts REPLICA IDENTITY FULL;
     CREATE TABLE notes (a int, b text);";

async fn query(pg: &Postgres, sql: &str) -> Vec<(i32, i64)> {
    let c = pg.connect().await.unwrap();
    c.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_reads_exactly_what_eu_never_applied_and_reapplies_it_once() {
    let (us_pg, eu_pg, us, eu) = pair(SCHEMA).await;
    us.exec("checkpoint", "CHECKPOINT").await.unwrap();
    // Replicated after the checkpoint: the slot's position on disk stays behind them.
    us.exec(
        "seed",
        "INSERT INTO accounts SELECT g, 100, 'seed' FROM generate_series(1, 10) g",
    )
    .await
    .unwrap();
    until("EU has the 10 accounts", async || {
        query(&eu_pg, "SELECT count(*)::int, 0::bigint FROM accounts").await[0].0 == 10
    })
    .await;
    // The link goes: EU applies nothing more.
    eu.exec("cut the link", "ALTER SUBSCRIPTION haven DISABLE")
        .await
        .unwrap();
    let writes = [
        "INSERT INTO accounts VALUES (11, 110, 'us-only')",
        "UPDATE accounts SET balance = 150 WHERE id = 1",
        "UPDATE accounts SET balance = 250 WHERE id = 2",
        "DELETE FROM accounts WHERE id = 3",
        "INSERT INTO notes VALUES (1, 'no key'), (1, 'no key')",
        "INSERT INTO accounts SELECT g, 1, 'bulk' FROM generate_series(1000, 5999) g",
    ];
    for w in writes {
        us.exec("write on US", &format!("SET synchronous_commit = on; {w}"))
            .await
            .unwrap();
    }
    // US crashes; EU detaches without it, recording the cut.
    us_pg.stop().unwrap();
    let d = eu.detach("haven", false, 7).await.unwrap();
    let cut = eu.cut("haven").await.unwrap().expect("the cut is recorded");
    assert_eq!((cut.epoch, &cut.remote_lsn), (7, &d.remote_lsn));
    // EU takes writes: it changes account 2 (a conflict to be), adds account 12.
    tokio::time::sleep(Duration::from_millis(20)).await;
    eu.exec(
        "write on EU",
        "BEGIN READ WRITE; UPDATE accounts SET balance = 999 WHERE id = 2;
         INSERT INTO accounts VALUES (12, 120, 'eu'); COMMIT;",
    )
    .await
    .unwrap();
    drop(us);
    us_pg.restart().unwrap();
    let us = admin(&us_pg, "us").await;

    let div = us
        .divergence("haven", cut.remote_lsn.as_deref())
        .await
        .unwrap();
    assert_eq!(div.transactions.len(), writes.len(), "{div:#?}");
    let ops: Vec<(Op, String, usize)> = div
        .transactions
        .iter()
        .map(|t| (t.changes[0].op, t.changes[0].table.clone(), t.changes.len()))
        .collect();
    assert_eq!(
        ops,
        vec![
            (Op::Insert, "accounts".into(), 1),
            (Op::Update, "accounts".into(), 1),
            (Op::Update, "accounts".into(), 1),
            (Op::Delete, "accounts".into(), 1),
            (Op::Insert, "notes".into(), 2),
            (Op::Insert, "accounts".into(), 5000),
        ]
    );
    let cut_lsn = parse_lsn(cut.remote_lsn.as_deref().unwrap()).unwrap();
    assert!(div
        .transactions
        .iter()
        .all(|t| parse_lsn(&t.commit_lsn).unwrap() > cut_lsn));
    // The update carries the whole old row (REPLICA IDENTITY FULL).
    let u = &div.transactions[1].changes[0];
    assert!(u.full_old_image(), "{u:?}");
    assert_eq!(u.old[1].value.as_deref(), Some("100"));
    assert_eq!(u.new[1].value.as_deref(), Some("150"));
    // The slot was not consumed: a second capture reads the same.
    let again = us
        .divergence("haven", cut.remote_lsn.as_deref())
        .await
        .unwrap();
    assert_eq!(again.transactions, div.transactions);
    // A cut past the slot's position (as after a crash moved it backwards): the copy is
    // advanced, and what came before the cut is not captured.
    let later = div.transactions[1].commit_lsn.clone();
    let past = us.divergence("haven", Some(&later)).await.unwrap();
    assert!(past.advanced);
    assert_eq!(past.transactions, div.transactions[2..].to_vec());

    // How the rows stand on EU: account 1 untouched since the cut, account 2 changed.
    let one = eu
        .row_state("public", "accounts", &u.key(), &u.old)
        .await
        .unwrap();
    assert!(one.found == 1 && one.matches, "{one:?}");
    assert!(one.written_ms.unwrap() <= cut.at_ms, "{one:?} {cut:?}");
    let c2 = &div.transactions[2].changes[0];
    let two = eu
        .row_state("public", "accounts", &c2.key(), &c2.old)
        .await
        .unwrap();
    assert!(two.found == 1 && !two.matches, "{two:?}");
    assert!(two.written_ms.unwrap() > cut.at_ms, "{two:?} {cut:?}");

    // Re-applied once, whatever the re-runs; the conflicting one is refused whole.
    let id = "capture-1";
    assert!(eu.reapply(id, &div.transactions[1]).await.unwrap());
    assert!(!eu.reapply(id, &div.transactions[1]).await.unwrap());
    assert!(eu.reconciled(id, div.transactions[1].xid).await.unwrap());
    let e = eu.reapply(id, &div.transactions[2]).await.unwrap_err();
    assert!(e.to_string().contains("touched 0 rows"), "{e}");
    assert!(!eu.reconciled(id, div.transactions[2].xid).await.unwrap());
    for t in [
        &div.transactions[3],
        &div.transactions[4],
        &div.transactions[5],
    ] {
        assert!(eu.reapply(id, t).await.unwrap());
    }
    assert_eq!(
        query(
            &eu_pg,
            "SELECT id, balance FROM accounts WHERE id IN (1, 2, 3) ORDER BY id"
        )
        .await,
        vec![(1, 150), (2, 999)]
    );
    assert_eq!(
        query(
            &eu_pg,
            "SELECT count(*)::int, sum(balance)::bigint FROM accounts WHERE id >= 1000"
        )
        .await,
        vec![(5000, 5000)]
    );
    assert_eq!(
        query(&eu_pg, "SELECT count(*)::int, 0::bigint FROM notes").await,
        vec![(2, 0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_names_a_missing_slot() {
    let pg = Postgres::start().unwrap();
    let db = admin(&pg, "us").await;
    let e = db.divergence("gone", Some("0/0")).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("no logical replication slot \"gone\""),
        "{e}"
    );
    assert_eq!(db.cut("haven").await.unwrap(), None);
}
