use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::place::Place;
use crate::process::{find_tool, kill, tail, wait_for_port};
use anyhow::{bail, Context, Result};

const GARAGE_INSTALL: &str =
    "cargo install garage --version 2.5.0 --locked --no-default-features --features bundled-libs,sqlite";

/// A single-node Garage S3 server (sqlite metadata) on free loopback ports, with one access
/// key allowed on every bucket made through [`S3Server::create_bucket`].
pub struct S3Server {
    child: Option<Child>,
    dir: Place,
    exe: PathBuf,
    port: u16,
    rpc: u16,
    pub key_id: String,
    pub secret: String,
}

impl S3Server {
    /// Starts a server on free ports. A port taken between choosing and binding (tests
    /// run side by side) makes Garage exit: then it is tried again on other ports.
    pub fn start() -> Result<S3Server> {
        Self::start_in(Place::temp("haven-garage-")?)
    }

    /// Starts a server in `place`: on the buckets, key and ports it had there, or new
    /// ones (tried again on other ports when one is taken before Garage binds it).
    pub fn start_in(mut place: Place) -> Result<S3Server> {
        if place.reused() {
            return Self::start_again(place);
        }
        let mut tries = 0;
        loop {
            match Self::start_once(&mut place) {
                Err(e) if tries < 3 && format!("{e:#}").contains("Address already in use") => {
                    tries += 1;
                    place.reset()?;
                }
                Err(e) => return Err(e),
                Ok((child, port, rpc, key_id, secret)) => {
                    return Ok(S3Server {
                        child: Some(child),
                        dir: place,
                        exe: find_tool("garage", GARAGE_INSTALL, &[])?,
                        port,
                        rpc,
                        key_id,
                        secret,
                    })
                }
            }
        }
    }

    /// A kept server started again: its config, key and data are in its place.
    fn start_again(mut place: Place) -> Result<S3Server> {
        let exe = find_tool("garage", GARAGE_INSTALL, &[])?;
        let (port, rpc) = (place.port("s3")?, place.port("rpc")?);
        place.port("admin")?;
        let key_file = place.path().join(KEY_FILE);
        let key: (String, String) = serde_json::from_slice(
            &std::fs::read(&key_file).with_context(|| format!("read {}", key_file.display()))?,
        )
        .with_context(|| format!("{} is not a key", key_file.display()))?;
        let mut s = S3Server {
            child: None,
            dir: place,
            exe,
            port,
            rpc,
            key_id: key.0,
            secret: key.1,
        };
        s.restart()?;
        Ok(s)
    }

    fn start_once(place: &mut Place) -> Result<(Child, u16, u16, String, String)> {
        let exe = find_tool("garage", GARAGE_INSTALL, &[])?;
        let port = place.port("s3")?;
        let rpc = place.port("rpc")?;
        let admin = place.port("admin")?;
        let dir = place.path().to_path_buf();
        let secret = hex32();
        let config = format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "sqlite"
metadata_fsync = false
data_fsync = false
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{secret}"

[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:{port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{admin}"
admin_token = "{token}"
"#,
            d = dir.display(),
            token = hex32(),
        );
        std::fs::write(dir.join("garage.toml"), config)?;
        let log = dir.join("garage.log");
        // A handle on the same directory (kept: dropping it removes nothing) stops the
        // server if its setup fails; the caller's place owns the files.
        let mut s = S3Server {
            child: None,
            dir: Place::kept(&dir)?,
            exe,
            port,
            rpc,
            key_id: format!("GK{}", &hex32()[..24]),
            secret: hex32(),
        };
        s.spawn()?;
        s.setup()
            .map_err(|e| anyhow::anyhow!("{e}\n{}", tail(&log)))?;
        let key = serde_json::to_vec(&(&s.key_id, &s.secret))?;
        std::fs::write(dir.join(KEY_FILE), key)?;
        let child = s.child.take().context("the server stopped")?;
        Ok((child, port, rpc, s.key_id.clone(), s.secret.clone()))
    }

    /// Starts the server process on the config and data in its directory.
    fn spawn(&mut self) -> Result<()> {
        let log = self.dir.path().join("garage.log");
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut child = Command::new(&self.exe)
            .arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .arg("server")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(logf.try_clone()?)
            .stderr(logf)
            .spawn()
            .with_context(|| format!("starting {}", self.exe.display()))?;
        wait_for_port(self.rpc, &mut child, &log, Duration::from_secs(30))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the server (-9): an object store outage. Its data stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
    }

    /// Starts the server again on the same ports and data (buckets and keys kept), and
    /// waits until its S3 port answers.
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn()?;
        if let Some(child) = self.child.as_mut() {
            wait_for_port(
                self.port,
                child,
                &self.dir.path().join("garage.log"),
                Duration::from_secs(30),
            )?;
        }
        Ok(())
    }

    fn garage(&self, args: &[&str]) -> Result<String> {
        let out = Command::new(&self.exe)
            .arg("-c")
            .arg(self.dir.path().join("garage.toml"))
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "garage {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn setup(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let node = loop {
            match self.garage(&["node", "id", "-q"]) {
                Ok(id) => break id,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        };
        let node_id: String = node.trim().chars().take(64).collect();
        self.garage(&["layout", "assign", &node_id, "-c", "1G", "-z", "dc1"])?;
        self.garage(&["layout", "apply", "--version", "1"])?;
        let (k, s) = (self.key_id.clone(), self.secret.clone());
        self.garage(&["key", "import", &k, &s, "-n", "haven-test", "--yes"])?;
        if let Some(child) = self.child.as_mut() {
            wait_for_port(
                self.port,
                child,
                &self.dir.path().join("garage.log"),
                Duration::from_secs(30),
            )?;
        }
        Ok(())
    }

    /// Creates a bucket the test key may read, write and own.
    pub fn create_bucket(&self, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.garage(&["bucket", "create", name]) {
                Ok(_) => break,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
        self.garage(&[
            "bucket",
            "allow",
            "--read",
            "--write",
            "--owner",
            name,
            "--key",
            &self.key_id,
        ])?;
        Ok(())
    }

    /// Whether the server was started on the buckets of an earlier one (a kept place).
    pub fn reused(&self) -> bool {
        self.dir.reused()
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `object_store` options that point an `s3://` URL at this server.
    pub fn options(&self) -> Vec<(&'static str, String)> {
        vec![
            ("aws_endpoint", self.endpoint()),
            ("aws_access_key_id", self.key_id.clone()),
            ("aws_secret_access_key", self.secret.clone()),
            ("aws_region", "garage".to_string()),
            ("aws_allow_http", "true".to_string()),
        ]
    }

    /// The same settings as environment variables, for running `haven` as a process.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", self.key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret.clone()),
            ("AWS_REGION", "garage".to_string()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            kill(&mut c);
        }
        if std::thread::panicking() {
            eprintln!("{}", tail(&self.dir.path().join("garage.log")));
        }
    }
}

/// Where a kept server's access key is (`[key id, secret]`).
const KEY_FILE: &str = "key.json";

fn hex32() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
