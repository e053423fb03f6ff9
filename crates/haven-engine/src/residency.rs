//! Data residency: `[residency.NAME]` rules pin topics (by regular expression) to regions.
//!
//! A job that would put a pinned topic's records somewhere else (a mirror's target cluster,
//! a backup's repository) is refused twice: by `haven config check` when the job's topic
//! pattern visibly overlaps a rule (patterns are compared through sample names, so the
//! check is a best effort), and always at run time against the real topic names, before
//! the first record moves. A destination without a region cannot prove where it is, so a
//! pinned topic is refused there too.

use std::collections::BTreeMap;
use std::fmt;

use regex::Regex;

use crate::config::ResidencyRule;

/// A broken rule: which, and where the data may live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: String,
    pub topic: String,
    pub allowed: Vec<String>,
    pub region: Option<String>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "residency rule {:?} (topic {:?} may only live in {}; the destination is {})",
            self.rule,
            self.topic,
            self.allowed.join(", "),
            match &self.region {
                Some(r) => format!("in region {r:?}"),
                None => "in no declared region".to_string(),
            }
        )
    }
}

/// Compiled rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<(String, Regex, Vec<String>)>,
}

impl Rules {
    pub fn new(rules: &BTreeMap<String, ResidencyRule>) -> Rules {
        Rules {
            rules: rules
                .iter()
                .filter_map(|(name, r)| {
                    Regex::new(&format!("^(?:{})$", r.topics))
                        .ok()
                        .map(|re| (name.clone(), re, r.regions.clone()))
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The first rule that forbids `topic` in `region`.
    pub fn check(&self, topic: &str, region: Option<&str>) -> Option<Violation> {
        self.rules
            .iter()
            .find(|(_, re, allowed)| {
                re.is_match(topic) && !region.is_some_and(|r| allowed.iter().any(|a| a == r))
            })
            .map(|(name, _, allowed)| Violation {
                rule: name.clone(),
                topic: topic.to_string(),
                allowed: allowed.clone(),
                region: region.map(str::to_string),
            })
    }

    /// Checks real topic names; the error names the rule, the topic and `destination`.
    pub fn check_topics<'a>(
        &self,
        topics: impl IntoIterator<Item = &'a str>,
        region: Option<&str>,
        destination: &str,
    ) -> crate::Result<()> {
        for t in topics {
            if let Some(v) = self.check(t, region) {
                return Err(crate::Error::Input(format!(
                    "refused by {v}: {destination} would hold its data; fix: leave the topic out of the selection or use a destination in an allowed region"
                )));
            }
        }
        Ok(())
    }

    /// Best-effort static check: a rule forbidding `region` whose topics the job `pattern`
    /// may select (compared through sample names drawn from both patterns).
    pub fn overlap(&self, pattern: &str, region: Option<&str>) -> Option<Violation> {
        let job = Regex::new(&format!("^(?:{pattern})$")).ok()?;
        let job_samples = samples(pattern);
        self.rules.iter().find_map(|(name, re, allowed)| {
            if region.is_some_and(|r| allowed.iter().any(|a| a == r)) {
                return None;
            }
            let hit = samples(
                re.as_str()
                    .trim_start_matches("^(?:")
                    .trim_end_matches(")$"),
            )
            .into_iter()
            .find(|s| job.is_match(s))
            .or_else(|| job_samples.iter().find(|s| re.is_match(s)).cloned())?;
            Some(Violation {
                rule: name.clone(),
                topic: hit,
                allowed: allowed.clone(),
                region: region.map(str::to_string),
            })
        })
    }
}

/// Names a simple pattern matches: `\.` becomes `.`, `.*`/`.+` become `x`, and each
/// top-level alternative gives one sample.
fn samples(pattern: &str) -> Vec<String> {
    pattern
        .split('|')
        .map(|alt| {
            let mut out = String::new();
            let mut chars = alt.chars().peekable();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            out.push(n);
                        }
                    }
                    '.' if matches!(chars.peek(), Some('*') | Some('+')) => {
                        chars.next();
                        out.push('x');
                    }
                    '.' => out.push('x'),
                    '^' | '$' | '(' | ')' | '?' | '*' | '+' => {}
                    c => out.push(c),
                }
            }
            out
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        let mut m = BTreeMap::new();
        m.insert(
            "eu-customers".to_string(),
            ResidencyRule {
                topics: r"customers\.eu\..*".into(),
                regions: vec!["eu".into()],
            },
        );
        Rules::new(&m)
    }

    #[test]
    fn pinned_topics_stay_in_their_regions() {
        let r = rules();
        assert!(r.check("customers.eu.profiles", Some("eu")).is_none());
        let v = r.check("customers.eu.profiles", Some("us")).unwrap();
        assert_eq!(v.rule, "eu-customers");
        assert!(v.to_string().contains("\"us\""), "{v}");
        assert!(r.check("customers.eu.profiles", None).is_some());
        assert!(r.check("orders", Some("us")).is_none());
        assert!(r
            .check_topics(["orders", "customers.eu.x"], Some("us"), "cluster us")
            .unwrap_err()
            .to_string()
            .contains("eu-customers"));
    }

    #[test]
    fn static_overlap_through_samples() {
        let r = rules();
        assert!(r.overlap(".*", Some("us")).is_some());
        assert!(r.overlap(r"customers\..*", Some("us")).is_some());
        assert!(r.overlap(r"customers\.eu\.profiles", Some("us")).is_some());
        assert!(r.overlap(r"orders\..*", Some("us")).is_none());
        assert!(r.overlap(".*", Some("eu")).is_none());
    }
}
