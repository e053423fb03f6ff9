//! The reference ledger workload (`haven workload ledger`, `haven workload check`): a
//! payment service whose correctness can be checked after any fault.
//!
//! A transfer debits one account and credits another in one Postgres transaction, with
//! a ledger entry per side (each account's entries numbered 1, 2, 3 ... by its version),
//! and an outbox row; a relay publishes the outbox to Kafka (`ledger.transfers` on the
//! active region's cluster, keyed by transfer id). Every acknowledged transfer is
//! appended to an acknowledgement log kept **outside** the regions, so that what a
//! failover lost is measured from what clients were told, not from what servers kept.
//!
//! The invariants ([`check`]), from the research notes' W1-W9:
//! W1 the sum of balances is the initial total; W2 each transfer's entries sum to zero;
//! W3 no flagged (no-overdraft) account is negative; W4 no transfer id twice in Postgres
//! or in the topic; W5 Postgres and the topic hold the same transfers; W6 each account's
//! entries are numbered 1..version without a gap; W7 balances folded from the topic equal
//! the database's; W8 a retried transfer creates nothing; W9 every acknowledged transfer
//! older than the fault minus the RPO target is present.

pub mod check;
pub mod service;
pub mod workload;

/// The ledger's tables, on both regions' databases (created before replication starts).
/// `app` writes through the route; `reader` reads balances on either region (the
/// standby's `app` is fenced; fencing revokes CONNECT from PUBLIC, so `reader` holds its
/// own grant).
pub const SCHEMA: &str = "
    CREATE TABLE ledger_meta (key text PRIMARY KEY, value bigint NOT NULL);
    CREATE TABLE ledger_accounts (id int PRIMARY KEY, balance bigint NOT NULL,
        version bigint NOT NULL DEFAULT 0, no_overdraft bool NOT NULL DEFAULT false);
    CREATE TABLE ledger_transfers (id text PRIMARY KEY, src int NOT NULL, dst int NOT NULL,
        amount bigint NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE ledger_entries (account int NOT NULL, version bigint NOT NULL,
        transfer_id text NOT NULL, amount bigint NOT NULL, PRIMARY KEY (account, version));
    CREATE TABLE ledger_outbox (seq bigserial PRIMARY KEY, transfer_id text NOT NULL UNIQUE,
        payload text NOT NULL, published_at timestamptz);
    GRANT ALL ON ledger_meta, ledger_accounts, ledger_transfers, ledger_entries, ledger_outbox
        TO app;
    GRANT ALL ON SEQUENCE ledger_outbox_seq_seq TO app;
    CREATE ROLE reader LOGIN;
    GRANT CONNECT ON DATABASE postgres TO reader;
    GRANT SELECT ON ledger_accounts TO reader;";

/// Accounts the workload creates, their opening balance, and how many of the first are
/// flagged no-overdraft.
pub const ACCOUNTS: i32 = 1000;
pub const OPENING_BALANCE: i64 = 1_000_000;
pub const FLAGGED: i32 = 10;
pub const FLAGGED_OPENING: i64 = 500;

/// The acknowledgement log, the workload's summary, and its latency per second, in the
/// workload directory.
pub const ACKS_FILE: &str = "acks.ndjson";
pub const SUMMARY_FILE: &str = "summary.json";
pub const LATENCY_FILE: &str = "latency.ndjson";

/// One acknowledged transfer, as the client was told.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Ack {
    pub id: String,
    /// When the client got the answer (ms since the Unix epoch).
    pub at_ms: i64,
    pub latency_ms: f64,
    /// `applied`, `declined` (a flagged account without the funds) or `existing` (a
    /// retry of a transfer an earlier attempt committed).
    pub outcome: String,
    /// The region whose database answered.
    pub region: String,
    pub attempts: u32,
}

/// Reads an acknowledgement log; a torn last line (a killed workload) is left out.
pub fn read_acks(path: &std::path::Path) -> anyhow::Result<Vec<Ack>> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("read the acknowledgement log {}", path.display()))?;
    let mut out = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Ack>(line) {
            Ok(a) => out.push(a),
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => anyhow::bail!("{} line {}: {e}", path.display(), i + 1),
        }
    }
    Ok(out)
}
