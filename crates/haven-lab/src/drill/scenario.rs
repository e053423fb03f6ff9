//! The drills, their descriptions and their objectives fixed before the start.

use anyhow::bail;
use haven_engine::drill::Objectives;

/// The drills built so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// US lost at once (agent, broker killed -9, Postgres crashed): EU's agent fails over.
    RegionOutage,
    /// A planned switchover to EU under load, and back to US.
    Switchover,
    /// US cut off from EU and the etcd quorum: US must fence itself, EU takes over, then
    /// the links heal.
    Partition,
    /// US's Postgres primary crashes (immediate stop) and is started again after a while:
    /// US stays active, and nothing it acknowledged is lost.
    PgCrash,
    /// US's broker is killed -9 and started again on its data after a while: transfers go
    /// on (their events wait in the outbox), and every event arrives once.
    BrokerCrash,
    /// US's object store is killed -9 and started again after a while: its backup holds
    /// on, its RPO alarm fires, and once the store is back the backup holds every record.
    ObjectStoreOutage,
    /// One object of US's backup damaged at rest: verify names it, a restore refuses it,
    /// `--skip-damaged` works around it, and it is repaired from a good copy.
    CorruptedBackup,
    /// US's backup restored into a segregated cluster under load and reconciled with the
    /// source and the database (non-disruptive: the drill `drill schedule` runs).
    SegregatedRestore,
    /// A region outage (as `RegionOutage`), then the failback under the load: US back
    /// fenced, captured, reconciled by policy, re-seeded from EU (databases and topics),
    /// and a planned switchover back to US.
    Failback,
    /// The database of the ledger's downstream service restored to an earlier point under
    /// the load: impact seen, group rewound by `haven recover`, events read again, and the
    /// database equal to its events afterwards.
    EarlierDatabase,
}

impl Scenario {
    pub fn parse(name: &str) -> anyhow::Result<Scenario> {
        Ok(match name {
            "region-outage" => Scenario::RegionOutage,
            "switchover" => Scenario::Switchover,
            "partition" => Scenario::Partition,
            "pg-crash" => Scenario::PgCrash,
            "broker-crash" => Scenario::BrokerCrash,
            "object-store-outage" => Scenario::ObjectStoreOutage,
            "corrupted-backup" => Scenario::CorruptedBackup,
            "segregated-restore" => Scenario::SegregatedRestore,
            "failback" => Scenario::Failback,
            "earlier-database" => Scenario::EarlierDatabase,
            other => bail!(
                "unknown scenario {other:?}: region-outage, switchover, partition, pg-crash, \
                 broker-crash, object-store-outage, corrupted-backup, segregated-restore, \
                 failback or earlier-database"
            ),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::RegionOutage => "region-outage",
            Scenario::Switchover => "switchover",
            Scenario::Partition => "partition",
            Scenario::PgCrash => "pg-crash",
            Scenario::BrokerCrash => "broker-crash",
            Scenario::ObjectStoreOutage => "object-store-outage",
            Scenario::CorruptedBackup => "corrupted-backup",
            Scenario::SegregatedRestore => "segregated-restore",
            Scenario::Failback => "failback",
            Scenario::EarlierDatabase => "earlier-database",
        }
    }

    /// A fault recovered in place (no failover): US must stay active and lose nothing.
    pub fn in_place(self) -> bool {
        !matches!(
            self,
            Scenario::RegionOutage
                | Scenario::Switchover
                | Scenario::Partition
                | Scenario::Failback
        )
    }

    pub fn description(self) -> &'static str {
        match self {
            Scenario::RegionOutage => {
                "US lost at once under the ledger load (its agent and broker killed -9, its Postgres crashed); EU's agent fails over automatically."
            }
            Scenario::Switchover => {
                "A planned switchover from US to EU under the ledger load, then back to US: no acknowledged transfer may be lost."
            }
            Scenario::Partition => {
                "US cut off from EU and from the etcd quorum under the ledger load: US must fence itself before EU takes writes (never two writable regions); then the links heal, and a failback capture must hold every acknowledged transfer EU lost."
            }
            Scenario::PgCrash => {
                "US's Postgres primary crashes under the ledger load (immediate stop) and is started again: US stays the active region (no failover for a crash it recovers from), transfers resume, no acknowledged transfer is lost, EU's replica catches up."
            }
            Scenario::BrokerCrash => {
                "US's Kafka broker is killed -9 under the ledger load and started again on its data: transfers go on meanwhile (their events wait in the outbox), every transfer's event reaches Kafka exactly once, nothing acknowledged is lost."
            }
            Scenario::ObjectStoreOutage => {
                "US's object store is killed -9 under the ledger load and started again: US's continuous backup holds on (no restart, nothing more read until the store answers), its RPO alarm fires while the store is down, and once it is back the backup holds every record of the topic (restored into a segregated cluster and compared record by record)."
            }
            Scenario::CorruptedBackup => {
                "One segment of US's backup is damaged at rest (a byte flipped) under the ledger load: verify must name it, a restore must refuse it and write nothing, a restore with --skip-damaged must restore everything else equal to the source and say what it left out, and after the object is put back from a good copy verify passes."
            }
            Scenario::Failback => {
                "US lost at once under the ledger load and EU fails over automatically (as in the region outage); then, with EU taking the load, US comes back fenced and is failed back: what it wrote that EU never got is captured (every transfer EU lost must be in it) and reconciled under the [failback] policies, its databases are re-seeded and its topics rebuilt from EU's, and a planned switchover brings the load back to US, losing nothing more. Afterwards both regions' transfer topics hold the same records in the same order."
            }
            Scenario::EarlierDatabase => {
                "The database of the ledger's downstream service (balances, fed by ledger.transfers through its consumer group) is restored to an earlier point under the load, as after a restore from an older backup, and the service carries on from its latest offsets: the transfers it applied since are lost to it (the impact, which must be seen). It is recovered the event-driven way with Haven's commands: `haven recover` plans from US's backup (the group's offsets at that point), `recover --apply` rewinds the group, and the service reads again, skipping what its database holds. Afterwards its database must equal the events it committed past: each applied once, every balance equal. The ledger itself loses nothing."
            }
            Scenario::SegregatedRestore => {
                "US's backup is restored into a segregated cluster (a broker of the drill's own) under the ledger load and reconciled: record by record with the source, and every restored transfer event against the database. Non-disruptive: US stays active and loses nothing; its RTO is the restore and the reconciliation."
            }
        }
    }

    /// The default objectives: the seed's RPO < 1 min, RTO < 15 min, tightened to the
    /// issue's targets (RTO <= 60 s, RPO <= 1 s; a switchover loses nothing). A partition
    /// is different by design: US keeps acknowledging writes until it fences itself, at
    /// most TTL/2 after its last renewal (renewals every TTL/5), and with the replication
    /// link cut those writes never reach EU; its RPO objective is that window,
    /// 0.7 x TTL + 0.5 s, and what it must never do is let two regions take writes.
    pub fn objectives(self, lease_ttl_s: u64) -> Objectives {
        Objectives {
            rto_s: 60.0,
            rpo_s: match self {
                Scenario::Partition => 0.7 * lease_ttl_s as f64 + 0.5,
                _ => 1.0,
            },
            max_lost: match self {
                Scenario::RegionOutage | Scenario::Partition | Scenario::Failback => None,
                _ => Some(0),
            },
            max_two_writable: 0,
            workload: true,
        }
    }
}
