use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::place::Place;
use crate::process::{is_root, tail};
use anyhow::{bail, Context, Result};

const PG_INSTALL: &str = "apt-get install -y postgresql";

/// A throwaway Postgres cluster (initdb + pg_ctl) on a free loopback port, trust auth,
/// superuser `postgres`, `wal_level = logical` (it can publish). Stopped and deleted on drop
/// ([`Postgres::start_in`] a kept [`Place`]: stopped, kept, and started again on its data).
///
/// fsync and full-page writes are off (only an operating-system crash would need them, and
/// none is simulated), but `synchronous_commit` is on: a commit's WAL reaches the kernel
/// before it is acknowledged, so a killed or crashed server (`pg_ctl stop -m immediate`,
/// kill -9) keeps every acknowledged transaction, as a bank's would. With it off, the
/// pg-crash drill measured an acknowledged transfer lost.
pub struct Postgres {
    dir: Place,
    port: u16,
    /// The data was there before this start.
    reused: bool,
    bin: PathBuf,
    as_postgres_user: bool,
}

fn pg_bin_dir() -> Result<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").is_file() {
            return Ok(p);
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some(p) = versions
        .into_iter()
        .rev()
        .find(|p| p.join("initdb").is_file())
    {
        return Ok(p);
    }
    bail!(
        "Postgres server binaries (initdb, pg_ctl) not found: install them with `{PG_INSTALL}` (or {})",
        crate::SETUP_HINT
    )
}

/// Lets the `postgres` user reach a kept cluster under `dir` (run as root, a lab directory
/// may sit under a private one, as a test's temporary directory does): every ancestor
/// without search permission for others gets it (`o+x`: entering, not listing), and the
/// change is said on stderr.
fn traversable(dir: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    for a in dir.ancestors().skip(1) {
        let meta = std::fs::metadata(a)?;
        let mode = meta.permissions().mode();
        if mode & 0o001 == 0 {
            std::fs::set_permissions(a, std::fs::Permissions::from_mode(mode | 0o001))?;
            eprintln!(
                "testbed: {} made enterable by others (o+x) so that the postgres user reaches its cluster",
                a.display()
            );
        }
    }
    Ok(())
}

impl Postgres {
    pub fn start() -> Result<Postgres> {
        Postgres::start_in(Place::temp("haven-pg-")?)
    }

    /// Starts a cluster in `place`: on the data already there (and its recorded port), or
    /// a new one.
    pub fn start_in(mut place: Place) -> Result<Postgres> {
        let bin = pg_bin_dir()?;
        let port = place.port("postgres")?;
        let dir = place;
        let as_postgres_user = is_root();
        if as_postgres_user {
            if dir.is_kept() {
                let _ = traversable(dir.path());
            }
            // initdb refuses to run as root: the cluster belongs to the `postgres` user.
            let st = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()?;
            if !st.success() {
                bail!(
                    "chown of {} to postgres failed (is the postgres user missing? {PG_INSTALL})",
                    dir.path().display()
                );
            }
        }
        let mut pg = Postgres {
            dir,
            port,
            reused: false,
            bin,
            as_postgres_user,
        };
        let data = pg.data_dir();
        if std::path::Path::new(&data).join("PG_VERSION").is_file() {
            pg.reused = true;
            pg.serve()?;
            return Ok(pg);
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )?;
        pg.serve()?;
        Ok(pg)
    }

    /// Starts the server on its data directory and port.
    fn serve(&self) -> Result<()> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=on -c full_page_writes=off -c wal_level=logical -c track_commit_timestamp=on -c max_wal_senders=10 -c max_replication_slots=10",
            self.port,
            self.dir.path().display()
        );
        let (data, log) = (self.data_dir(), self.log_path());
        self.run(
            "pg_ctl",
            &[
                "-D", &data, "-l", &log, "-o", &opts, "-w", "-t", "60", "start",
            ],
        )
        .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(std::path::Path::new(&log))))
    }

    /// Starts a stopped cluster again, on the same data and port (crash recovery after
    /// [`Postgres::stop`]).
    pub fn restart(&self) -> Result<()> {
        self.serve()
    }

    /// Starts a stopped cluster again with every login but the superuser's refused over
    /// TCP (pg_hba), as an old primary is brought back: nothing of the application can
    /// write to it before its agent has decided whether to fence it. [`Postgres::admit`]
    /// lifts the refusal.
    pub fn restart_refusing(&self) -> Result<()> {
        self.set_refusing(true)?;
        self.serve()
    }

    /// Lifts [`Postgres::restart_refusing`]'s refusal (a reload, no restart).
    pub fn admit(&self) -> Result<()> {
        self.set_refusing(false)?;
        let data = self.data_dir();
        self.run("pg_ctl", &["-D", &data, "reload"])
    }

    fn set_refusing(&self, refuse: bool) -> Result<()> {
        const TAG: &str = "# testbed: refusing";
        let path = std::path::Path::new(&self.data_dir()).join("pg_hba.conf");
        let text = std::fs::read_to_string(&path)?;
        let mut out: String = text
            .lines()
            .filter(|l| !l.ends_with(TAG))
            .map(|l| format!("{l}\n"))
            .collect();
        if refuse {
            out = format!(
                "host all postgres 127.0.0.1/32 trust {TAG}\nhost all all 127.0.0.1/32 reject {TAG}\n{out}"
            );
        }
        // Written in place: the file keeps its owner.
        std::fs::write(&path, out)?;
        Ok(())
    }

    /// Whether the cluster's data was there before this start (a kept place): its
    /// schemas, roles and subscriptions are the ones it had.
    pub fn reused(&self) -> bool {
        self.reused
    }

    fn data_dir(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    fn log_path(&self) -> String {
        self.dir.path().join("postgres.log").display().to_string()
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres_user {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client program of this Postgres installation (`pg_dump`, `psql`, ...).
    pub fn tool(&self, name: &str) -> PathBuf {
        let p = self.bin.join(name);
        if p.is_file() {
            p
        } else {
            PathBuf::from(name)
        }
    }

    /// A libpq / tokio-postgres connection string for database `db`.
    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection string for database `db` as `role` (trust auth: no password).
    pub fn url_as(&self, role: &str, db: &str) -> String {
        format!("postgresql://{role}@127.0.0.1:{}/{db}", self.port)
    }

    /// A libpq conninfo for database `db` (what a subscription connects with).
    pub fn conninfo(&self, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user=postgres dbname={db}",
            self.port
        )
    }

    /// Connects to database `postgres` and drives the connection on the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Stops the cluster at once.
    pub fn stop(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &["-D", &self.data_dir(), "-m", "immediate", "-w", "stop"],
        )
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", tail(std::path::Path::new(&self.log_path())));
        }
        let _ = self.stop();
    }
}
