//! Where a server keeps its files and which ports it listens on.
//!
//! A test's server lives in a temporary [`Place`]: fresh ports, removed on drop. A lab's
//! server lives in a kept place (`haven lab up --dir DIR`): its ports are recorded in
//! `ports.json` the first time and reused after, so that a server started again on its
//! data has the addresses its data and its peers remember (an etcd member's peer URL, a
//! subscription's connection string, a `haven.toml`).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tempfile::TempDir;

use crate::process::free_port;

/// The file a kept place records its ports in.
pub const PORTS_FILE: &str = "ports.json";

enum Home {
    Temp(TempDir),
    Kept(PathBuf),
}

/// A server's directory and its named ports.
pub struct Place {
    home: Home,
    ports: BTreeMap<String, u16>,
    reused: bool,
}

impl Place {
    /// A temporary directory (prefix `prefix`), removed when the place is dropped.
    pub fn temp(prefix: &str) -> Result<Place> {
        Ok(Place {
            home: Home::Temp(tempfile::Builder::new().prefix(prefix).tempdir()?),
            ports: BTreeMap::new(),
            reused: false,
        })
    }

    /// A directory that outlives the server; the ports it recorded before, if any, are
    /// the ports the server gets again.
    pub fn kept(dir: impl Into<PathBuf>) -> Result<Place> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let file = dir.join(PORTS_FILE);
        let (ports, reused) = match std::fs::read(&file) {
            Ok(bytes) => (
                serde_json::from_slice(&bytes).with_context(|| {
                    format!(
                        "{} is not a record of ports: remove the directory {} to start afresh",
                        file.display(),
                        dir.display()
                    )
                })?,
                true,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (BTreeMap::new(), false),
            Err(e) => return Err(e).with_context(|| format!("read {}", file.display())),
        };
        Ok(Place {
            home: Home::Kept(dir),
            ports,
            reused,
        })
    }

    pub fn path(&self) -> &Path {
        match &self.home {
            Home::Temp(t) => t.path(),
            Home::Kept(p) => p,
        }
    }

    /// Whether the directory is kept after the server stops.
    pub fn is_kept(&self) -> bool {
        matches!(self.home, Home::Kept(_))
    }

    /// Whether a server lived here before (a kept place with recorded ports): its data
    /// is there to be used, not made.
    pub fn reused(&self) -> bool {
        self.reused
    }

    /// The port named `name`: the one recorded for it, which must be free again, or a
    /// free one (recorded at once in a kept place).
    pub fn port(&mut self, name: &str) -> Result<u16> {
        if let Some(&port) = self.ports.get(name) {
            if TcpListener::bind(("127.0.0.1", port)).is_err() {
                bail!(
                    "port {port} of {name} (recorded in {}) is taken by another process: \
                     stop that process, or start afresh in another directory",
                    self.path().join(PORTS_FILE).display()
                );
            }
            return Ok(port);
        }
        let port = free_port()?;
        self.ports.insert(name.to_string(), port);
        self.save()?;
        Ok(port)
    }

    /// Forgets every port and file of a place that had no server before (a first start
    /// that failed, to be tried again on other ports). A reused place is left alone.
    pub fn reset(&mut self) -> Result<()> {
        if self.reused {
            return Ok(());
        }
        self.ports.clear();
        let dir = self.path().to_path_buf();
        for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                std::fs::remove_dir_all(&p)
            } else {
                std::fs::remove_file(&p)
            }
            .with_context(|| format!("remove {}", p.display()))?;
        }
        Ok(())
    }

    fn save(&self) -> Result<()> {
        if let Home::Kept(dir) = &self.home {
            let tmp = dir.join(format!("{PORTS_FILE}.tmp"));
            std::fs::write(&tmp, serde_json::to_vec_pretty(&self.ports)?)
                .with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, dir.join(PORTS_FILE))
                .with_context(|| format!("write {}", dir.join(PORTS_FILE).display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_place_gives_its_ports_again_and_a_temporary_one_does_not_record() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pg");
        let mut p = Place::kept(&dir).unwrap();
        assert!(!p.reused());
        let (a, b) = (p.port("a").unwrap(), p.port("b").unwrap());
        assert_eq!(p.port("a").unwrap(), a);
        drop(p);
        let mut again = Place::kept(&dir).unwrap();
        assert!(again.reused());
        assert_eq!((again.port("a").unwrap(), again.port("b").unwrap()), (a, b));
        // A recorded port someone else holds is named, not silently replaced.
        let held = TcpListener::bind(("127.0.0.1", a)).unwrap();
        let err = format!("{:#}", again.port("a").unwrap_err());
        assert!(
            err.contains(&a.to_string()) && err.contains("ports.json"),
            "{err}"
        );
        drop(held);
        let mut t = Place::temp("haven-place-").unwrap();
        t.port("x").unwrap();
        assert!(!t.path().join(PORTS_FILE).exists());
    }

    #[test]
    fn a_reset_forgets_a_first_start_but_never_a_reused_place() {
        let root = tempfile::tempdir().unwrap();
        let mut p = Place::kept(root.path().join("m")).unwrap();
        p.port("a").unwrap();
        std::fs::create_dir_all(p.path().join("data")).unwrap();
        p.reset().unwrap();
        assert!(std::fs::read_dir(p.path()).unwrap().next().is_none());
        p.port("a").unwrap();
        let mut again = Place::kept(root.path().join("m")).unwrap();
        std::fs::create_dir_all(again.path().join("data")).unwrap();
        again.reset().unwrap();
        assert!(again.path().join("data").exists() && again.path().join(PORTS_FILE).exists());
    }

    #[test]
    fn a_damaged_record_names_the_file() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join(PORTS_FILE), b"{not json").unwrap();
        let err = format!("{:#}", Place::kept(root.path()).err().unwrap());
        assert!(err.contains("ports.json"), "{err}");
    }
}
