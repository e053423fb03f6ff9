//! How long a repository keeps records: `retention` and `retention_topics` of a
//! `[repositories.NAME]` section, parsed once and asked per topic.

use chrono::{DateTime, Months, Utc};
use regex::Regex;
use serde::Serialize;

use crate::config::RepositorySection;
use crate::{Error, Result};

/// A retention period: `7y` (calendar years), `400d`, `36h`, `90m`, `30s`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Keep {
    /// As written.
    pub text: String,
    #[serde(skip)]
    amount: u32,
    #[serde(skip)]
    unit: char,
}

impl Keep {
    pub fn parse(text: &str) -> Result<Keep> {
        let t = text.trim();
        let bad = || {
            Error::Input(format!(
                "retention {text:?} is not a period: write a whole number and a unit, y (calendar \
                 years), d, h, m or s, e.g. \"7y\" or \"400d\""
            ))
        };
        let unit = t.chars().last().ok_or_else(bad)?;
        if !"ydhms".contains(unit) {
            return Err(bad());
        }
        let amount: u32 = t[..t.len() - 1].parse().map_err(|_| bad())?;
        if amount == 0 {
            return Err(Error::Input(format!(
                "retention {text:?} would keep nothing: give a period above zero"
            )));
        }
        Ok(Keep {
            text: t.to_string(),
            amount,
            unit,
        })
    }

    /// The instant before which a record is past this period, at `now_ms`.
    pub fn cutoff(&self, now_ms: i64) -> i64 {
        self.shift(now_ms, false)
    }

    /// When a record written at `ts_ms` is past this period.
    pub fn due_at(&self, ts_ms: i64) -> i64 {
        self.shift(ts_ms, true)
    }

    /// `ms` moved by this period, forward or back (years as calendar years).
    fn shift(&self, ms: i64, forward: bool) -> i64 {
        let secs = match self.unit {
            'y' => {
                let months = Months::new(self.amount.saturating_mul(12));
                let t = DateTime::<Utc>::from_timestamp_millis(ms).and_then(|t| {
                    if forward {
                        t.checked_add_months(months)
                    } else {
                        t.checked_sub_months(months)
                    }
                });
                return t.map_or(if forward { i64::MAX } else { i64::MIN }, |t| {
                    t.timestamp_millis()
                });
            }
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            _ => 1,
        };
        let by = i64::from(self.amount).saturating_mul(secs * 1000);
        if forward {
            ms.saturating_add(by)
        } else {
            ms.saturating_sub(by)
        }
    }
}

/// A repository's retention: a default and rules per topic pattern.
#[derive(Debug, Clone)]
pub struct Policy {
    pub default: Option<Keep>,
    pub rules: Vec<(String, Regex, Keep)>,
}

impl Policy {
    /// From a repository section; `keep` (a command's `--keep`) replaces its default.
    pub fn of(section: &RepositorySection, keep: Option<&str>) -> Result<Policy> {
        let default = match keep.or(section.retention.as_deref()) {
            Some(k) => Some(Keep::parse(k)?),
            None => None,
        };
        let mut rules = Vec::new();
        for (pattern, k) in &section.retention_topics {
            let re = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                Error::Input(format!(
                    "retention_topics: {pattern:?} is not a regular expression: {e}"
                ))
            })?;
            rules.push((pattern.clone(), re, Keep::parse(k)?));
        }
        Ok(Policy { default, rules })
    }

    /// Whether anything can ever be due.
    pub fn is_set(&self) -> bool {
        self.default.is_some() || !self.rules.is_empty()
    }

    /// The period that applies to `topic`: the longest matching rule, else the default;
    /// None keeps it for ever.
    pub fn keep_for(&self, topic: &str, now_ms: i64) -> Option<&Keep> {
        self.rules
            .iter()
            .filter(|(_, re, _)| re.is_match(topic))
            .map(|(_, _, k)| k)
            .min_by_key(|k| k.cutoff(now_ms))
            .or(self.default.as_ref())
    }

    /// The policy in words, for manifests and reports.
    pub fn describe(&self) -> String {
        let mut parts = vec![match &self.default {
            Some(k) => format!("keep {}", k.text),
            None => "keep for ever".to_string(),
        }];
        for (p, _, k) in &self.rules {
            parts.push(format!("{p}: keep {}", k.text));
        }
        parts.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_795_000_000_000; // 2026-11-18

    #[test]
    fn periods_parse_and_cut_off() {
        let y = Keep::parse("7y").unwrap();
        let cut = DateTime::<Utc>::from_timestamp_millis(y.cutoff(NOW)).unwrap();
        assert_eq!(cut.format("%Y-%m-%d").to_string(), "2019-11-18");
        assert_eq!(Keep::parse("2d").unwrap().cutoff(NOW), NOW - 2 * 86_400_000);
        assert_eq!(Keep::parse("3h").unwrap().due_at(0), 3 * 3_600_000);
        for bad in ["", "7", "y", "7w", "-1d", "0d", "1.5y"] {
            assert!(Keep::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_longest_matching_rule_applies_else_the_default() {
        let section = RepositorySection {
            url: "file:///x".into(),
            region: None,
            key_file: None,
            options: Default::default(),
            secret_options: Default::default(),
            retention: Some("7y".into()),
            retention_topics: [
                ("logs\\..*".to_string(), "30d".to_string()),
                ("logs\\.audit".to_string(), "10y".to_string()),
            ]
            .into(),
            erasure_subjects: Default::default(),
            subject_hash_key: None,
        };
        let p = Policy::of(&section, None).unwrap();
        assert_eq!(p.keep_for("payments", NOW).unwrap().text, "7y");
        assert_eq!(p.keep_for("logs.app", NOW).unwrap().text, "30d");
        assert_eq!(p.keep_for("logs.audit", NOW).unwrap().text, "10y");
        let none = Policy::of(
            &RepositorySection {
                retention: None,
                retention_topics: Default::default(),
                erasure_subjects: Default::default(),
                subject_hash_key: None,
                ..section
            },
            None,
        )
        .unwrap();
        assert!(!none.is_set());
        assert!(none.keep_for("payments", NOW).is_none());
    }
}
