//! Delivery: one background task per receiver (a slow one delays no other), notices in
//! order, each retried with exponential backoff on 5xx, 429, timeouts and refused
//! connections, given up on other 4xx (a wrong URL or key does not get better). The same
//! condition (dedup key and state) is sent at most once a minute.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;

use super::{body, notice_of, Notice, NotifySection};
use crate::events::{Event, Observer};

/// What was delivered, per receiver.
#[derive(Debug, Default)]
pub struct Counts {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub attempts: AtomicU64,
}

struct Sink {
    name: String,
    section: NotifySection,
    tx: mpsc::UnboundedSender<Notice>,
    counts: Arc<Counts>,
}

/// Sends notices to every `[notify.*]` receiver that wants their kind.
#[derive(Clone, Default)]
pub struct Notifier {
    sinks: Arc<Vec<Sink>>,
    recent: Arc<Mutex<HashMap<(String, bool), std::time::Instant>>>,
    pending: Arc<AtomicU64>,
}

const DEDUP_WINDOW: Duration = Duration::from_secs(60);

impl Notifier {
    /// Starts a delivery task per receiver (needs a Tokio runtime). `source` names this
    /// process in the bodies (region and host).
    pub fn start(sections: &BTreeMap<String, NotifySection>, source: &str) -> Notifier {
        let pending = Arc::new(AtomicU64::new(0));
        let client = reqwest::Client::new();
        let sinks = sections
            .iter()
            .map(|(name, section)| {
                let (tx, rx) = mpsc::unbounded_channel();
                let counts = Arc::new(Counts::default());
                tokio::spawn(run(
                    name.clone(),
                    section.clone(),
                    source.to_string(),
                    client.clone(),
                    rx,
                    counts.clone(),
                    pending.clone(),
                ));
                Sink {
                    name: name.clone(),
                    section: section.clone(),
                    tx,
                    counts,
                }
            })
            .collect();
        Notifier {
            sinks: Arc::new(sinks),
            recent: Arc::default(),
            pending,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.sinks.is_empty()
    }

    /// Queues `n` for every receiver that wants its kind (unless the same condition was
    /// sent in the last minute).
    pub fn send(&self, n: Notice) {
        if self.sinks.is_empty() {
            return;
        }
        if let Ok(mut recent) = self.recent.lock() {
            let now = std::time::Instant::now();
            recent.retain(|_, t| now.duration_since(*t) < DEDUP_WINDOW);
            if recent
                .insert((n.dedup_key.clone(), n.resolved), now)
                .is_some()
            {
                return;
            }
        }
        for s in self.sinks.iter() {
            if s.section.events.contains(&n.kind) {
                self.pending.fetch_add(1, Ordering::SeqCst);
                if s.tx.send(n.clone()).is_err() {
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }

    /// Waits until every queued notice was delivered or given up, at most `limit` (a
    /// command that ends sends its notices first).
    pub async fn flush(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        while self.pending.load(Ordering::SeqCst) > 0 {
            if tokio::time::Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Delivery counts per receiver.
    pub fn counts(&self, name: &str) -> Option<Arc<Counts>> {
        self.sinks
            .iter()
            .find(|s| s.name == name)
            .map(|s| s.counts.clone())
    }
}

impl Observer for Notifier {
    fn event(&self, event: &Event) {
        if let Some(n) = notice_of(event) {
            self.send(n);
        }
    }
}

async fn run(
    name: String,
    section: NotifySection,
    source: String,
    client: reqwest::Client,
    mut rx: mpsc::UnboundedReceiver<Notice>,
    counts: Arc<Counts>,
    pending: Arc<AtomicU64>,
) {
    while let Some(n) = rx.recv().await {
        let payload = body(&section, &n, &source);
        let mut delay = Duration::from_millis(200);
        let mut outcome = Err(String::new());
        for attempt in 0..=section.retries {
            counts.attempts.fetch_add(1, Ordering::Relaxed);
            let res = client
                .post(&section.url)
                .timeout(Duration::from_millis(section.timeout_ms))
                .json(&payload)
                .send()
                .await;
            let retry = match res {
                Ok(r) if r.status().is_success() => {
                    outcome = Ok(());
                    break;
                }
                Ok(r) => {
                    let st = r.status();
                    outcome = Err(format!("HTTP {st}"));
                    st.is_server_error() || st.as_u16() == 429
                }
                Err(e) => {
                    outcome = Err(e.to_string());
                    true
                }
            };
            if !retry || attempt == section.retries {
                break;
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        match outcome {
            Ok(()) => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                counts.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(receiver = %name, dedup_key = %n.dedup_key, error = %e, "notification not delivered");
            }
        }
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}
