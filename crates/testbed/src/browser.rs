//! A headless Chromium driven through ChromeDriver (W3C WebDriver over HTTP on loopback):
//! open a page, read what its scripts put on screen, wait for a condition, take a
//! screenshot. For tests that check a web page as a person sees it.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine;
use serde_json::{json, Value};

use crate::process::{find_tool, free_port};

pub struct Browser {
    driver: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

const INSTALL: &str = "apt-get install chromium chromium-driver";

impl Browser {
    /// Starts ChromeDriver and a headless Chromium session (window 1280 x 1600).
    pub fn start() -> Result<Browser> {
        let driver_bin = find_tool("chromedriver", INSTALL, &["/usr/lib/chromium"])?;
        let chromium = find_tool("chromium", INSTALL, &[])?;
        let port = free_port()?;
        let profile = tempfile::tempdir()?;
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start chromedriver")?;
        let mut b = Browser {
            driver,
            port,
            session: String::new(),
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("chromedriver did not listen on port {port} within 20 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium.display().to_string(),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1600",
                         format!("--user-data-dir={}", b._profile.path().display())]
            }
        }}});
        let v = b.call("POST", "/session", Some(caps))?;
        b.session = v["sessionId"]
            .as_str()
            .ok_or_else(|| anyhow!("chromedriver gave no session: {v}"))?
            .to_string();
        Ok(b)
    }

    /// One WebDriver command; returns its `value`.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        s.set_read_timeout(Some(Duration::from_secs(60)))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )?;
        // Read the head, then exactly Content-Length bytes (ChromeDriver may keep the
        // connection open).
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let head_end = loop {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("chromedriver closed the connection during {method} {path}");
            }
            raw.extend_from_slice(&buf[..n]);
            if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
        let length = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().ok())?
            })
            .ok_or_else(|| anyhow!("chromedriver's answer to {method} {path} has no length"))?;
        while raw.len() < head_end + length {
            let n = s.read(&mut buf)?;
            if n == 0 {
                bail!("chromedriver closed the connection during {method} {path}");
            }
            raw.extend_from_slice(&buf[..n]);
        }
        let payload = String::from_utf8_lossy(&raw[head_end..head_end + length]).to_string();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let v: Value = serde_json::from_str(&payload)
            .with_context(|| format!("chromedriver's answer to {method} {path}: {payload}"))?;
        if status != 200 {
            bail!("{method} {path}: HTTP {status}: {}", v["value"]);
        }
        Ok(v["value"].clone())
    }

    fn at(&self, what: &str) -> String {
        format!("/session/{}/{what}", self.session)
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) -> Result<()> {
        self.call("POST", &self.at("url"), Some(json!({ "url": url })))?;
        Ok(())
    }

    /// Runs `script` (a function body: `return ...;`) in the page; returns its value.
    pub fn eval(&self, script: &str) -> Result<Value> {
        self.call(
            "POST",
            &self.at("execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// Evaluates `script` every 200 ms until it returns something other than null or
    /// false; fails after `timeout` with the last value.
    pub fn wait_for(&self, what: &str, timeout: Duration, script: &str) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.eval(script)?;
            if !(v.is_null() || v == Value::Bool(false)) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!("timed out after {timeout:?} waiting for {what}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Saves a PNG of the window to `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let v = self.call("GET", &self.at("screenshot"), None)?;
        let b64 = v
            .as_str()
            .ok_or_else(|| anyhow!("the screenshot is not a string"))?;
        let png = base64::engine::general_purpose::STANDARD.decode(b64)?;
        std::fs::write(path, png)?;
        Ok(())
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
