//! Real servers for Haven's tests (and the local lab behind `haven demo`).
//!
//! One call starts a server on a free loopback port in a temporary directory and waits
//! until it answers: [`Broker::start`] (tansu), [`Postgres::start`] (initdb + pg_ctl),
//! [`S3Server::start`] (Garage), [`EtcdCluster::start`] (etcd 3.4 members),
//! [`Haproxy::start`] (HAProxy 2.6 with its runtime API), [`Knot::start`] (Knot DNS with TSIG
//! updates), [`Browser::start`] (headless Chromium through ChromeDriver). Dropping the handle stops the server and removes its
//! directory, also when a test panics; if the test is panicking, the server's log is printed.
//! Each also starts in a kept [`Place`] (`start_in`): its data and ports stay for the next
//! start, which is how `haven lab down` / `haven lab up` keep a lab's data.
//! A missing server binary is an error that names the command installing it.

mod broker;
mod browser;
mod etcd;
mod haproxy;
mod independent;
mod knot;
mod place;
mod postgres;
mod process;
mod proxy;
mod s3;

pub use broker::{Broker, Consumed, Producer, Rec};
pub use browser::Browser;
pub use etcd::EtcdCluster;
pub use haproxy::{Haproxy, HaproxyBackend};
pub use independent::independent_read;
pub use knot::Knot;
pub use place::{Place, PORTS_FILE};
pub use postgres::Postgres;
pub use process::{find_tool, free_port};
pub use proxy::DelayProxy;
pub use s3::S3Server;

/// The command that installs everything the test bed needs.
pub const SETUP_HINT: &str = "run `bash scripts/setup.sh` from the repository root";
