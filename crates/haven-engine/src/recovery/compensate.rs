//! Compensating events: for each event of the lost window that downstream services had
//! already processed, emit zero or more events that tell them it no longer holds. The
//! domain logic stays with the user: a JSON template filled from the original event, or an
//! external command / HTTP hook that receives the original event and answers with the
//! compensating ones.
//!
//! Every compensating event carries `haven-compensates: TOPIC/PARTITION/OFFSET` and
//! `haven-compensation-id`, a deterministic id (SHA-256 of the original's coordinates and
//! the event's index among its compensations). Before emitting, Haven reads the target
//! topic back and skips ids already there: running a compensation twice (or after a crash)
//! compensates once.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use haven_format::Record;
use haven_kafka::ClusterConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::read::{json_bytes, record_json};
use crate::{blocking, Error, Result};

pub const ID_HEADER: &str = "haven-compensation-id";
pub const OF_HEADER: &str = "haven-compensates";

/// How compensating events are made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "spec", rename_all = "lowercase")]
pub enum Generator {
    /// JSON with `{{topic}}`, `{{partition}}`, `{{offset}}`, `{{timestamp}}`, `{{key}}`,
    /// `{{value}}` and `{{value.FIELD.SUBFIELD}}` placeholders.
    Template(String),
    /// `sh -c COMMAND`: the original event as one JSON line on stdin; each JSON line on
    /// stdout (`{"key": ..., "value": ..., "headers": [...]}`) is a compensating event.
    Command(String),
    /// POST the original event (JSON) to the URL; the answer holds the compensating events
    /// as JSON lines, as for a command.
    Http(String),
}

/// A compensating event before it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compensation {
    pub id: String,
    pub of: String,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The deterministic id of the `index`-th compensation of an event.
pub fn compensation_id(topic: &str, partition: i32, offset: i64, index: usize) -> String {
    let h = Sha256::digest(format!("{topic}/{partition}/{offset}/{index}").as_bytes());
    hex::encode(&h[..16])
}

fn lookup<'a>(v: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(v, |cur, k| match cur {
        Value::Object(m) => m.get(k),
        Value::Array(a) => k.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// Fills a template from an event. A placeholder that is a whole JSON string (`"{{x}}"`)
/// becomes the JSON value itself (numbers stay numbers); inside a longer string it is
/// inserted as text. The result must be valid JSON.
pub fn render(template: &str, topic: &str, partition: i32, r: &Record) -> Result<Vec<u8>> {
    let value_json: Option<Value> = r
        .value
        .as_deref()
        .and_then(|v| serde_json::from_slice(v).ok());
    let text = |b: &Option<Vec<u8>>| {
        b.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
    };
    let resolve = |name: &str| -> Result<Value> {
        Ok(match name {
            "topic" => Value::from(topic),
            "partition" => Value::from(partition),
            "offset" => Value::from(r.offset),
            "timestamp" => Value::from(r.timestamp),
            "key" => text(&r.key).map_or(Value::Null, Value::from),
            "value" => text(&r.value).map_or(Value::Null, Value::from),
            n => match n.strip_prefix("value.") {
                Some(path) => value_json
                    .as_ref()
                    .and_then(|v| lookup(v, path))
                    .cloned()
                    .ok_or_else(|| {
                        Error::Input(format!(
                            "template placeholder {{{{{n}}}}}: {topic}/{partition}@{} has no field {path} in its value",
                            r.offset
                        ))
                    })?,
                None => {
                    return Err(Error::Input(format!(
                        "unknown template placeholder {{{{{n}}}}}: use topic, partition, offset, timestamp, key, value or value.FIELD"
                    )))
                }
            },
        })
    };
    let mut out = String::new();
    let mut rest = template;
    while let Some(i) = rest.find("{{") {
        let j = rest[i..]
            .find("}}")
            .map(|j| i + j)
            .ok_or_else(|| Error::Input("template: `{{` without a closing `}}`".into()))?;
        let name = rest[i + 2..j].trim();
        let v = resolve(name)?;
        let quoted = out.ends_with('"') && rest[..i].is_empty() || rest[..i].ends_with('"');
        let closes = rest[j + 2..].starts_with('"');
        out.push_str(&rest[..i]);
        if quoted && closes {
            out.pop();
            out.push_str(&v.to_string());
            rest = &rest[j + 3..];
        } else {
            let s = match &v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let escaped = Value::from(s).to_string();
            out.push_str(&escaped[1..escaped.len() - 1]);
            rest = &rest[j + 2..];
        }
    }
    out.push_str(rest);
    serde_json::from_str::<Value>(&out).map_err(|e| {
        Error::Input(format!(
            "the template does not give JSON for {topic}/{partition}@{}: {e}: {out}",
            r.offset
        ))
    })?;
    Ok(out.into_bytes())
}

/// A generated event: key, value, headers.
type Made = (
    Option<Vec<u8>>,
    Option<Vec<u8>>,
    Vec<(String, Option<Vec<u8>>)>,
);

/// Parses a hook's answer: one JSON object per line.
fn parse_answer(text: &str, what: &str) -> Result<Vec<Made>> {
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line)
            .map_err(|e| Error::Input(format!("{what}: line {} is not JSON: {e}", n + 1)))?;
        let bad = |f: &str| {
            Error::Input(format!(
                "{what}: line {}: `{f}` must be a string, {{\"base64\": ...}} or null",
                n + 1
            ))
        };
        let key = json_bytes(v.get("key").unwrap_or(&Value::Null)).map_err(|_| bad("key"))?;
        let value = json_bytes(v.get("value").unwrap_or(&Value::Null)).map_err(|_| bad("value"))?;
        let mut headers = Vec::new();
        if let Some(hs) = v.get("headers").and_then(Value::as_array) {
            for h in hs {
                let name = h
                    .get(0)
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("headers"))?;
                headers.push((
                    name.to_string(),
                    json_bytes(h.get(1).unwrap_or(&Value::Null)).map_err(|_| bad("headers"))?,
                ));
            }
        }
        out.push((key, value, headers));
    }
    Ok(out)
}

/// The compensating events for one original event.
pub async fn generate(
    gen: &Generator,
    topic: &str,
    partition: i32,
    r: &Record,
) -> Result<Vec<Compensation>> {
    let of = format!("{topic}/{partition}/{}", r.offset);
    let made = match gen {
        Generator::Template(t) => vec![(
            r.key.clone(),
            Some(render(t, topic, partition, r)?),
            Vec::new(),
        )],
        Generator::Command(cmd) => {
            let input = format!("{}\n", record_json(topic, partition, r));
            let cmd = cmd.clone();
            let out = blocking(move || {
                let mut child = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(&cmd)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::inherit())
                    .spawn()
                    .map_err(|e| {
                        Error::Input(format!("cannot run compensation command {cmd:?}: {e}"))
                    })?;
                if let Some(mut stdin) = child.stdin.take() {
                    stdin
                        .write_all(input.as_bytes())
                        .map_err(|e| Error::Task(e.to_string()))?;
                }
                let out = child
                    .wait_with_output()
                    .map_err(|e| Error::Task(e.to_string()))?;
                if !out.status.success() {
                    return Err(Error::Input(format!(
                        "compensation command {cmd:?} failed ({})",
                        out.status
                    )));
                }
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            })
            .await?;
            parse_answer(&out, "compensation command")?
        }
        Generator::Http(url) => {
            let client = reqwest::Client::new();
            let resp = client
                .post(url)
                .header("content-type", "application/json")
                .body(record_json(topic, partition, r).to_string())
                .timeout(Duration::from_secs(30))
                .send()
                .await
                .map_err(|e| Error::Task(format!("compensation hook {url}: {e}")))?;
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if !status.is_success() {
                return Err(Error::Input(format!(
                    "compensation hook {url} answered {status}: {}",
                    body.chars().take(300).collect::<String>()
                )));
            }
            parse_answer(&body, "compensation hook")?
        }
    };
    Ok(made
        .into_iter()
        .enumerate()
        .map(|(i, (key, value, headers))| Compensation {
            id: compensation_id(topic, partition, r.offset, i),
            of: of.clone(),
            key,
            value,
            headers,
        })
        .collect())
}

/// Compensation ids already on `topic` (blocking read of the whole topic).
pub fn emitted_ids(cluster: &ClusterConfig, topic: &str) -> Result<BTreeSet<String>> {
    let i = cluster.inspector("haven-inspector")?;
    let n = haven_kafka::list_topics(&i, &cluster.brokers, Duration::from_secs(10))?
        .into_iter()
        .find(|t| t.name == topic)
        .map(|t| t.partitions)
        .ok_or_else(|| {
            Error::Input(format!(
                "compensation topic {topic} does not exist on {}: create it first",
                cluster.brokers
            ))
        })?;
    let mut ids = BTreeSet::new();
    for p in 0..n {
        let (low, high) = haven_kafka::watermarks(&i, topic, p, Duration::from_secs(10))?;
        haven_kafka::scan(cluster, topic, p, low, high, Duration::from_secs(30), |m| {
            if let Some(v) = crate::mirror::position::header(m, ID_HEADER) {
                ids.insert(String::from_utf8_lossy(v).into_owned());
            }
            true
        })?;
    }
    Ok(ids)
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CompensateReport {
    pub originals: u64,
    pub emitted: u64,
    pub already_emitted: u64,
    pub ids: Vec<String>,
}

/// Reads the originals (live cluster, offsets `from..to` per partition) and generates
/// their compensations, leaving out those already on `to_topic`. Runs the generator
/// (template, command or hook) once per original; nothing is emitted.
pub async fn prepare(
    cluster: &ClusterConfig,
    ranges: &[(String, i32, i64, i64)],
    to_topic: &str,
    gen: &Generator,
) -> Result<(CompensateReport, Vec<Compensation>)> {
    let (c, t) = (cluster.clone(), to_topic.to_string());
    let done = blocking(move || emitted_ids(&c, &t)).await?;
    let mut report = CompensateReport::default();
    let mut pending = Vec::new();
    for (topic, p, from, to) in ranges {
        let (c, t, p, a, b) = (cluster.clone(), topic.clone(), *p, *from, *to);
        let originals = blocking(move || {
            let mut v = Vec::new();
            haven_kafka::scan(&c, &t, p, a, b, Duration::from_secs(30), |m| {
                v.push(haven_kafka::record_ref(m).to_owned());
                true
            })?;
            Ok(v)
        })
        .await?;
        for r in originals {
            report.originals += 1;
            for comp in generate(gen, topic, p, &r).await? {
                if done.contains(&comp.id) {
                    report.already_emitted += 1;
                } else {
                    pending.push(comp);
                }
            }
        }
    }
    Ok((report, pending))
}

/// Emits prepared compensations to `to_topic` and counts them in `report`.
pub async fn emit(
    cluster: &ClusterConfig,
    to_topic: &str,
    pending: &[Compensation],
    report: &mut CompensateReport,
) -> Result<()> {
    let producer = cluster.producer()?;
    let records = pending.iter().map(|comp| {
        let mut headers: Vec<(&str, Option<&[u8]>)> = comp
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_deref()))
            .collect();
        headers.push((ID_HEADER, Some(comp.id.as_bytes())));
        headers.push((OF_HEADER, Some(comp.of.as_bytes())));
        haven_kafka::Outgoing {
            key: comp.key.as_deref(),
            value: comp.value.as_deref(),
            headers,
            timestamp: None,
        }
    });
    report.emitted += haven_kafka::produce_all(&producer, to_topic, records).await?;
    report.ids = pending.iter().map(|c| c.id.clone()).collect();
    Ok(())
}

/// [`prepare`] then [`emit`].
pub async fn compensate(
    cluster: &ClusterConfig,
    ranges: &[(String, i32, i64, i64)],
    to_topic: &str,
    gen: &Generator,
) -> Result<CompensateReport> {
    let (mut report, pending) = prepare(cluster, ranges, to_topic, gen).await?;
    emit(cluster, to_topic, &pending, &mut report).await?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use haven_format::TimestampType;

    fn rec(value: &str) -> Record {
        Record {
            offset: 7,
            timestamp: 1_700_000_000_000,
            timestamp_type: TimestampType::CreateTime,
            key: Some(b"m-1".to_vec()),
            value: Some(value.as_bytes().to_vec()),
            headers: vec![],
        }
    }

    #[test]
    fn templates_fill_fields_and_keep_types() {
        let r = rec(r#"{"machine":{"id":"m-1"},"hours":12,"note":"a \"quoted\" one"}"#);
        let out = render(
            r#"{"type":"undo","machine":"{{value.machine.id}}","hours":"{{value.hours}}","of":"{{topic}}/{{partition}}/{{offset}}","why":"lost {{value.note}}"}"#,
            "machine-events",
            2,
            &r,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["machine"], "m-1");
        assert_eq!(
            v["hours"], 12,
            "a whole-string placeholder keeps the JSON type"
        );
        assert_eq!(v["of"], "machine-events/2/7");
        assert_eq!(v["why"], "lost a \"quoted\" one");
        assert!(render(r#"{"x":"{{value.nope}}"}"#, "t", 0, &r)
            .unwrap_err()
            .to_string()
            .contains("nope"));
        assert!(render(r#"{"x":"{{bogus}}"}"#, "t", 0, &r).is_err());
        assert!(
            render(r#"{"x": {{value.machine.id}}"#, "t", 0, &r).is_err(),
            "not JSON"
        );
    }

    #[test]
    fn ids_are_deterministic_and_distinct() {
        assert_eq!(compensation_id("t", 0, 5, 0), compensation_id("t", 0, 5, 0));
        assert_ne!(compensation_id("t", 0, 5, 0), compensation_id("t", 0, 5, 1));
        assert_ne!(compensation_id("t", 0, 5, 0), compensation_id("t", 1, 5, 0));
        assert_eq!(compensation_id("t", 0, 5, 0).len(), 32);
    }

    #[test]
    fn hook_answers() {
        let got = parse_answer("{\"key\":\"k\",\"value\":{\"base64\":\"AAE=\"}}\n\n{\"value\":null,\"headers\":[[\"h\",\"v\"]]}\n", "hook").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].1, Some(vec![0, 1]));
        assert_eq!(got[1].2, vec![("h".to_string(), Some(b"v".to_vec()))]);
        assert!(parse_answer("not json", "hook").is_err());
    }
}
