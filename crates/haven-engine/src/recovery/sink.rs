//! Where replayed events go: standard output (NDJSON), a Kafka topic (with provenance
//! headers), an HTTP endpoint (POST batches of NDJSON), or a Postgres table (COPY, idempotent
//! on topic, partition and offset).
//!
//! Every sink receives batches in per-partition offset order and returns only when the batch
//! is durable there, so progress can be checkpointed after each batch.

use std::time::Duration;

use haven_format::Record;
use haven_kafka::rdkafka::producer::FutureProducer;
use haven_kafka::ClusterConfig;
use serde_json::Value;

use crate::read::record_json;
use crate::{Error, Result};

/// A replayed event: where it came from and the record.
#[derive(Debug, Clone)]
pub struct Event {
    pub topic: String,
    pub partition: i32,
    pub record: Record,
}

/// A parsed `--sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkSpec {
    Stdout,
    Kafka { topic: String },
    Http { url: String },
    Postgres { url: String, table: String },
}

impl SinkSpec {
    /// `stdout`, `kafka:TOPIC`, `http(s)://...`, `postgres://...?table=NAME`.
    pub fn parse(s: &str) -> Result<SinkSpec> {
        if s == "stdout" || s == "-" {
            return Ok(SinkSpec::Stdout);
        }
        if let Some(t) = s.strip_prefix("kafka:") {
            if t.is_empty() {
                return Err(Error::Input("--sink kafka:TOPIC needs a topic".into()));
            }
            return Ok(SinkSpec::Kafka {
                topic: t.to_string(),
            });
        }
        if s.starts_with("http://") || s.starts_with("https://") {
            return Ok(SinkSpec::Http { url: s.to_string() });
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            let (base, query) = s.split_once('?').unwrap_or((s, ""));
            let mut table = None;
            let mut rest = Vec::new();
            for kv in query.split('&').filter(|x| !x.is_empty()) {
                match kv.split_once('=') {
                    Some(("table", v)) => table = Some(v.to_string()),
                    _ => rest.push(kv),
                }
            }
            let table = table.ok_or_else(|| {
                Error::Input(
                    "--sink postgres://...: add ?table=NAME (the table replayed events go to)"
                        .into(),
                )
            })?;
            if !table
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
            {
                return Err(Error::Input(format!(
                    "--sink: table name {table:?} may only hold letters, digits, _ and ."
                )));
            }
            let url = if rest.is_empty() {
                base.to_string()
            } else {
                format!("{base}?{}", rest.join("&"))
            };
            return Ok(SinkSpec::Postgres { url, table });
        }
        Err(Error::Input(format!(
            "--sink {s:?}: use stdout, kafka:TOPIC, http(s)://HOST/PATH or postgres://USER@HOST/DB?table=NAME"
        )))
    }
}

pub enum Sink {
    Stdout,
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
    Http {
        client: reqwest::Client,
        url: String,
        retries: u32,
    },
    Postgres {
        client: tokio_postgres::Client,
        table: String,
    },
}

impl Sink {
    /// Connects (and checks the sink is reachable before anything is read).
    pub async fn open(spec: &SinkSpec, cluster: Option<&ClusterConfig>) -> Result<Sink> {
        Ok(match spec {
            SinkSpec::Stdout => Sink::Stdout,
            SinkSpec::Kafka { topic } => {
                let cluster = cluster
                    .ok_or_else(|| Error::Input("--sink kafka:TOPIC needs --brokers".into()))?;
                let c = cluster.clone();
                let (t, topics) = (
                    topic.clone(),
                    crate::blocking(move || {
                        let i = c.inspector("haven-inspector")?;
                        Ok(haven_kafka::list_topics(
                            &i,
                            &c.brokers,
                            Duration::from_secs(10),
                        )?)
                    })
                    .await?,
                );
                if !topics.iter().any(|x| x.name == t) {
                    return Err(Error::Input(format!(
                        "sink topic {t} does not exist on {}: create it first",
                        cluster.brokers
                    )));
                }
                Sink::Kafka {
                    producer: cluster.producer()?,
                    topic: topic.clone(),
                }
            }
            SinkSpec::Http { url } => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .map_err(|e| Error::Task(e.to_string()))?;
                Sink::Http {
                    client,
                    url: url.clone(),
                    retries: 8,
                }
            }
            SinkSpec::Postgres { url, table } => {
                let config: tokio_postgres::Config = url.parse().map_err(|e| {
                    Error::Input(format!("sink {}: not a Postgres URL: {e}", redact(url)))
                })?;
                let (client, conn) = tokio::time::timeout(
                    Duration::from_secs(10),
                    config.connect(tokio_postgres::NoTls),
                )
                .await
                .map_err(|_| {
                    Error::Unreachable(format!("sink {}: no answer within 10 s", redact(url)))
                })?
                .map_err(|e| {
                    if e.as_db_error().is_some() {
                        // The server answered and refused (auth, unknown database).
                        Error::Input(format!("sink {}: {e}", redact(url)))
                    } else {
                        Error::Unreachable(format!("sink {}: cannot connect: {e}", redact(url)))
                    }
                })?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::error!("postgres sink connection: {e}");
                    }
                });
                client
                    .batch_execute(&format!(
                        "CREATE TABLE IF NOT EXISTS {table} (topic text NOT NULL, partition int NOT NULL, \"offset\" bigint NOT NULL, \
                         ts timestamptz, key bytea, value bytea, headers jsonb NOT NULL DEFAULT '[]', \
                         PRIMARY KEY (topic, partition, \"offset\"))"
                    ))
                    .await
                    .map_err(|e| Error::Input(format!("sink table {table}: {e}")))?;
                Sink::Postgres {
                    client,
                    table: table.clone(),
                }
            }
        })
    }

    /// Writes a batch; returns once it is durable at the sink.
    pub async fn write(&mut self, batch: &[Event]) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Stdout => {
                use std::io::Write;
                let stdout_error = |e: std::io::Error| {
                    if e.kind() == std::io::ErrorKind::BrokenPipe {
                        Error::OutputClosed
                    } else {
                        Error::Task(format!("stdout: {e}"))
                    }
                };
                let mut out = std::io::stdout().lock();
                for e in batch {
                    writeln!(out, "{}", record_json(&e.topic, e.partition, &e.record))
                        .map_err(stdout_error)?;
                }
                out.flush().map_err(stdout_error)
            }
            Sink::Kafka { producer, topic } => {
                let sources: Vec<String> = batch
                    .iter()
                    .map(|e| format!("{}/{}/{}", e.topic, e.partition, e.record.offset))
                    .collect();
                let records = batch.iter().zip(&sources).map(|(e, source)| {
                    let r = &e.record;
                    let mut headers: Vec<(&str, Option<&[u8]>)> = r
                        .headers
                        .iter()
                        .map(|h| (h.name.as_str(), h.value.as_deref()))
                        .collect();
                    headers.push(("haven-source", Some(source.as_bytes())));
                    haven_kafka::Outgoing {
                        key: r.key.as_deref(),
                        value: r.value.as_deref(),
                        headers,
                        timestamp: (r.timestamp >= 0).then_some(r.timestamp),
                    }
                });
                haven_kafka::produce_all(producer, topic, records).await?;
                Ok(())
            }
            Sink::Http {
                client,
                url,
                retries,
            } => {
                let mut body = String::new();
                for e in batch {
                    body.push_str(&record_json(&e.topic, e.partition, &e.record).to_string());
                    body.push('\n');
                }
                post_with_retries(client, url, body, *retries).await
            }
            Sink::Postgres { client, table } => copy_rows(client, table, batch).await,
        }
    }
}

/// A connection string without its credentials (for logs and the audit log).
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(a), Some(b)) if b > a => format!("{}***{}", &url[..a + 3], &url[b..]),
        _ => url.to_string(),
    }
}

/// POSTs NDJSON; retries connection errors and 5xx `retries` times with back-off (200 ms
/// doubling, at most 15 s; the default 8 waits about a minute), stops at once on a 4xx
/// with the endpoint's reason.
pub async fn post_with_retries(
    client: &reqwest::Client,
    url: &str,
    body: String,
    retries: u32,
) -> Result<()> {
    let mut delay = Duration::from_millis(200);
    let mut last = String::new();
    for attempt in 0..=retries {
        if attempt > 0 {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(15));
        }
        match client
            .post(url)
            .header("content-type", "application/x-ndjson")
            .body(body.clone())
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) if r.status().is_client_error() => {
                let status = r.status();
                let reason = r.text().await.unwrap_or_default();
                return Err(Error::Input(format!(
                    "{url} refused the batch with {status}: {}",
                    reason.chars().take(500).collect::<String>()
                )));
            }
            Ok(r) => last = format!("{}", r.status()),
            Err(e) => last = format!("{e:?}"),
        }
    }
    Err(Error::Task(format!(
        "sink {url} unreachable after {} attempts: {last}",
        retries + 1
    )))
}

/// COPY into a temporary table, then insert what is not there yet: a batch replayed twice
/// leaves one row per (topic, partition, offset).
async fn copy_rows(
    client: &mut tokio_postgres::Client,
    table: &str,
    batch: &[Event],
) -> Result<()> {
    use futures::SinkExt;
    let pg = |e: tokio_postgres::Error| Error::Task(format!("postgres sink {table}: {e}"));
    let tx = client.transaction().await.map_err(pg)?;
    tx.batch_execute(&format!(
        "CREATE TEMP TABLE IF NOT EXISTS haven_replay_in (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
    ))
    .await
    .map_err(pg)?;
    let sink = tx
        .copy_in("COPY haven_replay_in (topic, partition, \"offset\", ts, key, value, headers) FROM STDIN")
        .await
        .map_err(pg)?;
    let mut text = String::new();
    for e in batch {
        let r = &e.record;
        let headers: Vec<Value> = r
            .headers
            .iter()
            .map(|h| serde_json::json!([h.name, crate::read::bytes_json(h.value.as_deref())]))
            .collect();
        let ts = if r.timestamp >= 0 {
            chrono::DateTime::from_timestamp_millis(r.timestamp)
                .map(|d| d.format("%Y-%m-%d %H:%M:%S%.3f+00").to_string())
                .unwrap_or_else(|| "\\N".into())
        } else {
            "\\N".into()
        };
        let bytea = |b: &Option<Vec<u8>>| match b {
            None => "\\N".to_string(),
            Some(b) => format!("\\\\x{}", hex::encode(b)),
        };
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            copy_escape(&e.topic),
            e.partition,
            r.offset,
            ts,
            bytea(&r.key),
            bytea(&r.value),
            copy_escape(&Value::Array(headers).to_string())
        ));
    }
    let mut sink = Box::pin(sink);
    sink.send(bytes::Bytes::from(text)).await.map_err(pg)?;
    sink.as_mut().finish().await.map_err(pg)?;
    tx.batch_execute(&format!(
        "INSERT INTO {table} SELECT * FROM haven_replay_in ON CONFLICT (topic, partition, \"offset\") DO NOTHING"
    ))
    .await
    .map_err(pg)?;
    tx.commit().await.map_err(pg)
}

/// Escapes a value for COPY's text format.
fn copy_escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\t', "\\t")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sink_specs() {
        assert_eq!(SinkSpec::parse("stdout").unwrap(), SinkSpec::Stdout);
        assert_eq!(
            SinkSpec::parse("kafka:rebuild").unwrap(),
            SinkSpec::Kafka {
                topic: "rebuild".into()
            }
        );
        assert_eq!(
            SinkSpec::parse("postgres://u@h:5432/db?table=replayed&sslmode=disable").unwrap(),
            SinkSpec::Postgres {
                url: "postgres://u@h:5432/db?sslmode=disable".into(),
                table: "replayed".into()
            }
        );
        assert!(SinkSpec::parse("postgres://u@h/db")
            .unwrap_err()
            .to_string()
            .contains("table="));
        assert!(SinkSpec::parse("postgres://u@h/db?table=x;drop").is_err());
        assert!(SinkSpec::parse("ftp://x").is_err());
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://***@h/db");
    }
}
