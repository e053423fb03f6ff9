//! Haven's two-region lab on one machine, from the real servers `scripts/setup.sh`
//! installs (started by `testbed`): 3 etcd members (US, EU, witness), two Postgres 15
//! clusters with logical replication (US publishes, EU subscribes through a cuttable
//! link), one HAProxy whose write backend has a US and an EU server, a Knot DNS server
//! taking TSIG-signed updates, a `haven.toml` describing all of it, and an agent per
//! region (the `haven` binary the caller names).
//!
//! Beside it, the traffic that checks it: an application [`writer`] going through the
//! write route (optionally at a fixed rate with a payload, the seed's load), and a
//! [`sampler`] checking every 100 ms that at most one region accepts writes (through its
//! route and directly) and that no agent's epoch goes down.
//!
//! With [`LabOptions::kafka`], a tansu broker per region and a continuous mirror US -> EU.
//! [`control`] keeps a lab running in the background for `haven lab up|down|status`.
//!
//! Used by the integration tests, `haven bench failover` and `haven lab`.

mod agent;
pub mod backups;
pub mod control;
pub mod drill;
mod faults;
pub mod ledger;
mod regions;
mod traffic;

pub use agent::{lease_epoch_of, lease_status, spawn_agent};
pub use faults::Fault;
pub use regions::{
    admin, rt, Lab, LabDir, LabOptions, MirrorProcess, Places, RegionKafka, SCHEMA, SERVERS_DIR,
    TRANSFERS_PARTITIONS, TRANSFERS_TOPIC, TSIG_B64,
};
pub use traffic::{
    owners, sampler, write_via_route, writer, writes_directly, Ack, Load, Sample, Seen, Traffic,
};
