//! Notifications: `[notify.NAME]` webhooks told about failover steps, fencing, RPO
//! breaches (and their end), posture findings and drill verdicts.
//!
//! A [`Notice`] is built from an engine [`Event`] ([`notice_of`]), from a change in the
//! posture's findings ([`findings_changed`]) or from a drill's report ([`drill_notice`]);
//! [`body`] shapes it for the receiver: generic JSON, Slack-compatible (`text`), or a
//! PagerDuty Events v2 `trigger`/`resolve` with the notice's dedup key. [`Notifier`]
//! delivers them in the background with retries.

mod deliver;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub use deliver::Notifier;

use crate::events::Event;
use crate::posture::Finding;

/// What a receiver is told about.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Plan steps of a switchover or failover, automatic failovers and what blocks one,
    /// the lease taken.
    Failover,
    /// A region fenced: its write route closed, its lease lost.
    Fencing,
    /// Lag above the RPO target (mirror, replica, backup) and stalls; resolved when it ends.
    Rpo,
    /// Other posture findings (no standby, no quorum, repository damaged, ...).
    Posture,
    /// A drill's verdict.
    Drill,
}

impl Kind {
    pub const ALL: [Kind; 5] = [
        Kind::Failover,
        Kind::Fencing,
        Kind::Rpo,
        Kind::Posture,
        Kind::Drill,
    ];
}

/// How the receiver wants the body.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// `{"source":"haven","kind","severity","summary","dedup_key","resolved","at","details"}`.
    #[default]
    Generic,
    /// `{"text": ...}` (Slack incoming webhooks and compatible chat tools).
    Slack,
    /// PagerDuty Events API v2 (`routing_key`, `event_action`, `dedup_key`, `payload`).
    Pagerduty,
}

/// `[notify.NAME]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct NotifySection {
    /// Where to POST (http or https).
    pub url: String,
    #[serde(default)]
    pub format: Format,
    /// PagerDuty: the integration's routing key, or the environment variable holding it.
    #[serde(default)]
    pub routing_key: Option<String>,
    #[serde(default)]
    pub routing_key_env: Option<String>,
    /// What to send (default: everything).
    #[serde(default = "all_kinds")]
    pub events: Vec<Kind>,
    /// Attempts after the first failure (5xx, 429, timeouts, refused connections).
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Per attempt.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn all_kinds() -> Vec<Kind> {
    Kind::ALL.to_vec()
}

fn default_retries() -> u32 {
    5
}

fn default_timeout_ms() -> u64 {
    5000
}

impl NotifySection {
    /// Checks one section; the error names the key and the fix.
    pub fn validate(&self, name: &str) -> Result<(), (String, String)> {
        let key = |k: &str| format!("notify.{name}.{k}");
        let parsed = url::Url::parse(&self.url);
        if !matches!(parsed.as_ref().map(|u| u.scheme()), Ok("http" | "https")) {
            return Err((key("url"), format!("{:?} is not an http(s) URL", self.url)));
        }
        if self.format == Format::Pagerduty
            && self.routing_key.is_none()
            && self.routing_key_env.is_none()
        {
            return Err((
                key("routing_key"),
                "PagerDuty needs the integration's routing key: set routing_key_env (the variable holding it) or routing_key".into(),
            ));
        }
        if self.events.is_empty() {
            return Err((
                key("events"),
                "empty: list failover, fencing, rpo, posture, drill (or leave it out for all)"
                    .into(),
            ));
        }
        if self.timeout_ms == 0 {
            return Err((key("timeout_ms"), "must be at least 1".into()));
        }
        Ok(())
    }

    /// The routing key, from the section or its environment variable.
    pub fn routing_key(&self) -> Option<String> {
        self.routing_key.clone().or_else(|| {
            self.routing_key_env
                .as_ref()
                .and_then(|v| std::env::var(v).ok())
        })
    }
}

/// One thing to tell.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Notice {
    pub kind: Kind,
    /// `critical`, `warning` or `info`.
    pub severity: &'static str,
    pub summary: String,
    /// The same condition keeps the same key (a receiver groups and resolves by it).
    pub dedup_key: String,
    /// The condition is over.
    pub resolved: bool,
    /// Unix ms.
    pub at: i64,
    pub details: Value,
}

fn notice(kind: Kind, severity: &'static str, summary: String, dedup_key: String) -> Notice {
    Notice {
        kind,
        severity,
        summary,
        dedup_key,
        resolved: false,
        at: chrono::Utc::now().timestamp_millis(),
        details: Value::Null,
    }
}

/// The notice an engine event deserves, if any.
pub fn notice_of(event: &Event) -> Option<Notice> {
    let text = event.to_string();
    Some(match event {
        Event::StepDone { action, step, .. } if action == "failover" || action == "switchover" => {
            notice(
                Kind::Failover,
                "info",
                text,
                format!("haven/{action}/step-{step}"),
            )
        }
        Event::AutomaticFailover { from, to, .. } => notice(
            Kind::Failover,
            "critical",
            text,
            format!("haven/automatic-failover/{from}-{to}"),
        ),
        Event::AutomaticFailoverBlocked { region, .. } => notice(
            Kind::Failover,
            "critical",
            text,
            format!("haven/automatic-failover-blocked/{region}"),
        ),
        Event::LeaseAcquired { region, epoch } => notice(
            Kind::Failover,
            "info",
            text,
            format!("haven/lease/{region}/{epoch}"),
        ),
        Event::RouteClosed { route, region } => notice(
            Kind::Fencing,
            "warning",
            text,
            format!("haven/fenced/{region}/{route}"),
        ),
        Event::LeaseLost { region, epoch } => notice(
            Kind::Fencing,
            "warning",
            text,
            format!("haven/lease-lost/{region}/{epoch}"),
        ),
        _ => return None,
    })
}

/// Alerts that are about lag (sent as `rpo`); other findings are `posture`.
fn is_rpo(alert: &str) -> bool {
    alert.ends_with("RpoAboveTarget") || alert.ends_with("Stalled")
}

/// What changed between two readings' findings: new ones trigger, gone ones resolve (one
/// notice per alert name; the summary is the newest).
pub fn findings_changed(before: &[Finding], now: &[Finding]) -> Vec<Notice> {
    let names = |f: &[Finding]| -> std::collections::BTreeMap<String, Finding> {
        f.iter().map(|x| (x.alert.clone(), x.clone())).collect()
    };
    let (b, n) = (names(before), names(now));
    let mut out = Vec::new();
    for (alert, f) in &n {
        if !b.contains_key(alert) {
            let kind = if is_rpo(alert) {
                Kind::Rpo
            } else {
                Kind::Posture
            };
            out.push(notice(
                kind,
                f.severity,
                f.summary.clone(),
                format!("haven/{alert}"),
            ));
        }
    }
    for (alert, f) in &b {
        if !n.contains_key(alert) {
            let kind = if is_rpo(alert) {
                Kind::Rpo
            } else {
                Kind::Posture
            };
            let mut x = notice(
                kind,
                f.severity,
                format!("resolved: {}", f.summary),
                format!("haven/{alert}"),
            );
            x.resolved = true;
            out.push(x);
        }
    }
    out
}

/// A drill's verdict.
pub fn drill_notice(r: &crate::drill::DrillReport) -> Notice {
    let pass = r.verdict == crate::drill::Verdict::Pass;
    let mut n = notice(
        Kind::Drill,
        if pass { "info" } else { "warning" },
        format!(
            "drill {} ({}): {}{}",
            r.id,
            r.scenario,
            if pass { "PASS" } else { "FAIL" },
            r.failures
                .first()
                .map(|f| format!(": {f}"))
                .unwrap_or_default()
        ),
        format!("haven/drill/{}", r.scenario),
    );
    n.details = json!({"id": r.id, "rto_s": r.measured.rto_s, "lost": r.measured.lost});
    n
}

/// The body `section` expects for `n`.
pub fn body(section: &NotifySection, n: &Notice, source: &str) -> Value {
    match section.format {
        Format::Generic => json!({
            "source": "haven", "host": source, "kind": n.kind, "severity": n.severity,
            "summary": n.summary, "dedup_key": n.dedup_key, "resolved": n.resolved,
            "at": n.at, "details": n.details,
        }),
        Format::Slack => {
            let mark = match (n.resolved, n.severity) {
                (true, _) => "[resolved]",
                (_, "critical") => "[CRITICAL]",
                (_, "warning") => "[warning]",
                _ => "[info]",
            };
            json!({"text": format!("{mark} Haven ({source}): {}", n.summary)})
        }
        Format::Pagerduty => json!({
            "routing_key": section.routing_key().unwrap_or_default(),
            "event_action": if n.resolved { "resolve" } else { "trigger" },
            "dedup_key": n.dedup_key,
            "payload": {
                "summary": n.summary.chars().take(1024).collect::<String>(),
                "source": source,
                "severity": if n.severity == "info" { "info" } else { n.severity },
                "component": "haven",
                "class": n.kind,
                "custom_details": n.details,
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(alert: &str, severity: &'static str) -> Finding {
        Finding {
            alert: alert.into(),
            severity,
            summary: format!("{alert} summary"),
        }
    }

    #[test]
    fn events_become_notices_with_stable_keys() {
        let n = notice_of(&Event::RouteClosed {
            route: "write-us".into(),
            region: "us".into(),
        })
        .unwrap();
        assert_eq!((n.kind, n.severity), (Kind::Fencing, "warning"));
        assert_eq!(n.dedup_key, "haven/fenced/us/write-us");
        let step = Event::StepDone {
            action: "failover".into(),
            step: 3,
            total: 9,
            what: "promote".into(),
            ms: 12,
        };
        assert_eq!(notice_of(&step).unwrap().kind, Kind::Failover);
        let other = Event::StepDone {
            action: "recover-apply".into(),
            step: 1,
            total: 1,
            what: "x".into(),
            ms: 1,
        };
        assert!(notice_of(&other).is_none());
        assert!(notice_of(&Event::ReadersStarted { readers: 1 }).is_none());
    }

    #[test]
    fn findings_trigger_then_resolve() {
        let a = vec![finding("HavenDrillOverdue", "warning")];
        let b = vec![
            finding("HavenDrillOverdue", "warning"),
            finding("HavenMirrorRpoAboveTarget", "critical"),
        ];
        let up = findings_changed(&a, &b);
        assert_eq!(up.len(), 1);
        assert_eq!(up[0].kind, Kind::Rpo);
        assert!(!up[0].resolved);
        assert!(findings_changed(&b, &b).is_empty());
        let down = findings_changed(&b, &a);
        assert_eq!(down.len(), 1);
        assert!(down[0].resolved);
        assert_eq!(down[0].dedup_key, up[0].dedup_key);
    }

    #[test]
    fn bodies_have_each_receivers_shape() {
        let mut s = NotifySection {
            url: "http://127.0.0.1:1/x".into(),
            format: Format::Pagerduty,
            routing_key: Some("R".into()),
            routing_key_env: None,
            events: all_kinds(),
            retries: 1,
            timeout_ms: 100,
        };
        let mut n = findings_changed(&[], &[finding("HavenNoStandby", "critical")]).remove(0);
        let v = body(&s, &n, "us-1");
        assert_eq!(v["event_action"], "trigger");
        assert_eq!(v["dedup_key"], "haven/HavenNoStandby");
        assert_eq!(v["payload"]["severity"], "critical");
        assert_eq!(v["routing_key"], "R");
        n.resolved = true;
        assert_eq!(body(&s, &n, "us-1")["event_action"], "resolve");
        s.format = Format::Slack;
        assert!(body(&s, &n, "us-1")["text"]
            .as_str()
            .unwrap()
            .starts_with("[resolved] Haven (us-1): "));
        s.format = Format::Generic;
        assert_eq!(body(&s, &n, "us-1")["kind"], "posture");
    }

    #[test]
    fn sections_are_checked() {
        let s: NotifySection = toml::from_str("url = \"ftp://x\"").unwrap();
        assert!(s.validate("ops").unwrap_err().0 == "notify.ops.url");
        let s: NotifySection = toml::from_str(
            "url = \"https://events.pagerduty.com/v2/enqueue\"\nformat = \"pagerduty\"",
        )
        .unwrap();
        assert_eq!(s.validate("pd").unwrap_err().0, "notify.pd.routing_key");
        let s: NotifySection =
            toml::from_str("url = \"http://h/x\"\nevents = [\"drill\"]").unwrap();
        assert!(s.validate("chat").is_ok());
        assert!(
            toml::from_str::<NotifySection>("url = \"http://h\"\nevents = [\"everything\"]")
                .is_err()
        );
    }
}
