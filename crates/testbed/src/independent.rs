//! A second Kafka client that shares none of Haven's code or librdkafka: kafka-python
//! (pure Python). Tests read what Haven wrote with it, so a bug in Haven's or librdkafka's
//! encoding cannot hide behind the same bug on the reading side.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::Consumed;

const READER: &str = r#"
import json, sys
from kafka import KafkaConsumer, TopicPartition
bootstrap, topic, partition = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                  consumer_timeout_ms=20000, fetch_max_wait_ms=10)
tp = TopicPartition(topic, partition)
c.assign([tp])
c.seek_to_beginning(tp)
end = c.end_offsets([tp])[tp]
b = lambda x: None if x is None else x.hex()
for m in c:
    print(json.dumps({"partition": m.partition, "offset": m.offset, "timestamp": m.timestamp,
                      "key": b(m.key), "value": b(m.value),
                      "headers": [[k, b(v)] for k, v in (m.headers or [])]}))
    if m.offset + 1 >= end:
        break
"#;

/// The Python with kafka-python: `$HAVEN_PYTHON`, `python3`, or the setup script's venv.
fn python() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os("HAVEN_PYTHON") {
        candidates.push(p.into());
    }
    candidates.push("python3".into());
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cache/haven/venv/bin/python"));
    }
    for c in candidates {
        let ok = Command::new(&c)
            .args(["-c", "import kafka"])
            .output()
            .is_ok_and(|o| o.status.success());
        if ok {
            return Ok(c);
        }
    }
    bail!(
        "kafka-python (the independent Kafka client) was not found: install it with \
         `pip install kafka-python==3.0.12` (or {})",
        crate::SETUP_HINT
    )
}

/// Reads a whole partition with kafka-python (blocking).
pub fn independent_read(bootstrap: &str, topic: &str, partition: i32) -> Result<Vec<Consumed>> {
    let py = python()?;
    let out = Command::new(&py)
        .args(["-c", READER, bootstrap, topic, &partition.to_string()])
        .output()
        .with_context(|| format!("running {}", py.display()))?;
    if !out.status.success() {
        bail!(
            "kafka-python reader failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    text.lines().map(parse_line).collect()
}

/// Parses one line of the reader's JSON (bytes as hex, null kept).
fn parse_line(line: &str) -> Result<Consumed> {
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("reader line {line}"))?;
    let bytes = |x: &serde_json::Value| -> Result<Option<Vec<u8>>> {
        match x.as_str() {
            None => Ok(None),
            Some(h) => Ok(Some(hex::decode(h)?)),
        }
    };
    let int = |k: &str| v[k].as_i64().with_context(|| format!("{k} in {line}"));
    let mut headers = Vec::new();
    for h in v["headers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        let name = h[0].as_str().context("header name")?.to_string();
        headers.push((name, bytes(&h[1])?));
    }
    Ok(Consumed {
        partition: int("partition")? as i32,
        offset: int("offset")?,
        timestamp: int("timestamp")?,
        key: bytes(&v["key"])?,
        value: bytes(&v["value"])?,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        let c = parse_line(r#"{"partition": 1, "offset": 42, "timestamp": 1700000000000, "key": null, "value": "0001ff", "headers": [["h", "31"], ["n", null]]}"#).unwrap();
        assert_eq!(
            (c.partition, c.offset, c.timestamp),
            (1, 42, 1_700_000_000_000)
        );
        assert_eq!(c.key, None);
        assert_eq!(c.value, Some(vec![0, 1, 255]));
        assert_eq!(
            c.headers,
            vec![
                ("h".to_string(), Some(b"1".to_vec())),
                ("n".to_string(), None)
            ]
        );
        let e = parse_line(r#"{"partition": 0, "offset": 0, "timestamp": -1, "key": "", "value": "", "headers": []}"#).unwrap();
        assert_eq!(e.key, Some(vec![]));
        assert!(e.headers.is_empty());
    }
}
