//! What the haven-pg tests share: a superuser connection and polling.

use std::time::Duration;

use haven_pg::Pg;
use testbed::Postgres;

/// Haven's connection to `pg` as the superuser, named `name` in errors.
pub async fn admin(pg: &Postgres, name: &str) -> Pg {
    Pg::connect(name, &pg.url("postgres"), None, Duration::from_secs(30))
        .await
        .expect("connect as superuser")
}

/// Polls `f` every 100 ms until it holds; fails the test after 30 s naming `what`.
pub async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Two clusters with `schema` and Haven's tables on both, US publishing every table to
/// EU, EU subscribed and synchronised. Connections are named `ledger-us`, `ledger-eu`.
pub async fn pair(schema: &str) -> (Postgres, Postgres, Pg, Pg) {
    let (us_pg, eu_pg) = (Postgres::start().unwrap(), Postgres::start().unwrap());
    let (us, eu) = (
        admin(&us_pg, "ledger-us").await,
        admin(&eu_pg, "ledger-eu").await,
    );
    for db in [&us, &eu] {
        db.exec("schema", schema).await.unwrap();
        db.ensure_tables().await.unwrap();
    }
    us.ensure_publication("haven").await.unwrap();
    eu.ensure_subscription("haven", &us_pg.conninfo("postgres"), "haven", true)
        .await
        .unwrap();
    eu.wait_synced("haven", Duration::from_secs(30))
        .await
        .unwrap();
    (us_pg, eu_pg, us, eu)
}
