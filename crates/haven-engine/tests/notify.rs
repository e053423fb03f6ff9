//! Notifications delivered to a real local HTTP server: each receiver gets the kinds it
//! asked for in its own shape, 5xx answers are retried until delivered, a 4xx is given
//! up at once, the same condition is not sent twice within a minute.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use haven_engine::events::{Event, Observer};
use haven_engine::notify::{findings_changed, Format, Kind, Notifier, NotifySection};
use haven_engine::posture::Finding;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Requests the server saw: (path, body).
type Seen = Arc<Mutex<Vec<(String, Value)>>>;

/// Answers `/flaky` with 500 the first `fail_first` times, `/gone` always with 404, the
/// rest with 200.
async fn server(fail_first: usize) -> (u16, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let flaky = Arc::new(Mutex::new(0usize));
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let s = s.clone();
            let flaky = flaky.clone();
            tokio::spawn(async move {
                let mut raw = Vec::new();
                let mut buf = [0u8; 4096];
                let (head_end, len) = loop {
                    let n = sock.read(&mut buf).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    raw.extend_from_slice(&buf[..n]);
                    if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&raw[..i]).to_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while raw.len() < head_end + len {
                    let n = sock.read(&mut buf).await.unwrap();
                    raw.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let body: Value =
                    serde_json::from_slice(&raw[head_end..head_end + len]).unwrap_or(Value::Null);
                let status = match path.as_str() {
                    "/gone" => "404 Not Found",
                    "/flaky" => {
                        let mut n = flaky.lock().unwrap();
                        *n += 1;
                        if *n <= fail_first {
                            "500 Internal Server Error"
                        } else {
                            "200 OK"
                        }
                    }
                    _ => "200 OK",
                };
                s.lock().unwrap().push((path, body));
                let resp =
                    format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = sock.write_all(resp.as_bytes()).await;
            });
        }
    });
    (port, seen)
}

fn section(port: u16, path: &str, format: Format, events: Vec<Kind>) -> NotifySection {
    NotifySection {
        url: format!("http://127.0.0.1:{port}{path}"),
        format,
        routing_key: Some("ROUTING".into()),
        routing_key_env: None,
        events,
        retries: 4,
        timeout_ms: 2000,
    }
}

fn to(seen: &Seen, path: &str) -> Vec<Value> {
    seen.lock()
        .unwrap()
        .iter()
        .filter(|(p, _)| p == path)
        .map(|(_, b)| b.clone())
        .collect()
}

#[tokio::test]
async fn each_receiver_gets_its_kinds_in_its_shape_with_retries_and_dedup() {
    let (port, seen) = server(2).await;
    let mut sections = BTreeMap::new();
    sections.insert(
        "all".to_string(),
        section(port, "/all", Format::Generic, Kind::ALL.to_vec()),
    );
    sections.insert(
        "pager".to_string(),
        section(port, "/flaky", Format::Pagerduty, vec![Kind::Rpo]),
    );
    sections.insert(
        "chat".to_string(),
        section(port, "/chat", Format::Slack, vec![Kind::Fencing]),
    );
    sections.insert(
        "wrong".to_string(),
        section(port, "/gone", Format::Generic, vec![Kind::Rpo]),
    );
    let n = Notifier::start(&sections, "us-1");

    // Fencing, from the agent's events: the generic receiver and the chat one.
    n.event(&Event::RouteClosed {
        route: "write-us".into(),
        region: "us".into(),
    });
    n.event(&Event::ReadersStarted { readers: 2 }); // not worth a notice
                                                    // An RPO breach appears, then ends.
    let breach = Finding {
        alert: "HavenMirrorRpoAboveTarget".into(),
        severity: "critical",
        summary: "1 mirrored partition(s) behind the RPO target of 60 s".into(),
    };
    for x in findings_changed(&[], std::slice::from_ref(&breach)) {
        n.send(x);
    }
    // The same breach again within a minute (a second reader, a restart of the loop).
    for x in findings_changed(&[], std::slice::from_ref(&breach)) {
        n.send(x);
    }
    for x in findings_changed(std::slice::from_ref(&breach), &[]) {
        n.send(x);
    }
    assert!(
        n.flush(Duration::from_secs(30)).await,
        "not delivered in 30 s"
    );

    let all = to(&seen, "/all");
    let kinds: Vec<(&str, bool)> = all
        .iter()
        .map(|b| {
            (
                b["kind"].as_str().unwrap(),
                b["resolved"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        vec![("fencing", false), ("rpo", false), ("rpo", true)],
        "{all:?}"
    );
    assert_eq!(all[0]["dedup_key"], "haven/fenced/us/write-us");
    assert_eq!(all[0]["host"], "us-1");

    let chat = to(&seen, "/chat");
    assert_eq!(chat.len(), 1, "{chat:?}");
    assert!(
        chat[0]["text"]
            .as_str()
            .unwrap()
            .starts_with("[warning] Haven (us-1): "),
        "{chat:?}"
    );

    // PagerDuty: two 500s, then the trigger is delivered; the resolve follows with the same
    // dedup key. 2 failed attempts + 2 deliveries = 4 requests, in order.
    let pd = to(&seen, "/flaky");
    assert_eq!(pd.len(), 4, "{pd:?}");
    assert!(
        pd[..3].iter().all(|b| b["event_action"] == "trigger"),
        "{pd:?}"
    );
    assert_eq!(pd[3]["event_action"], "resolve");
    assert_eq!(pd[0]["dedup_key"], pd[3]["dedup_key"]);
    assert_eq!(pd[0]["routing_key"], "ROUTING");
    assert_eq!(pd[0]["payload"]["severity"], "critical");
    let c = n.counts("pager").unwrap();
    assert_eq!(c.delivered.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(c.attempts.load(std::sync::atomic::Ordering::Relaxed), 4);

    // A 404 is not retried: one attempt per notice, both counted as failed.
    let gone = to(&seen, "/gone");
    assert_eq!(gone.len(), 2, "{gone:?}");
    let c = n.counts("wrong").unwrap();
    assert_eq!(c.failed.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(c.attempts.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_receiver_that_never_answers_is_given_up_after_its_retries() {
    // A port nobody listens on: connection refused on every attempt.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut s = section(port, "/x", Format::Generic, Kind::ALL.to_vec());
    s.retries = 2;
    let mut sections = BTreeMap::new();
    sections.insert("dead".to_string(), s);
    let n = Notifier::start(&sections, "eu-1");
    n.event(&Event::LeaseLost {
        region: "eu".into(),
        epoch: 7,
    });
    assert!(n.flush(Duration::from_secs(30)).await);
    let c = n.counts("dead").unwrap();
    assert_eq!(c.attempts.load(std::sync::atomic::Ordering::Relaxed), 3);
    assert_eq!(c.failed.load(std::sync::atomic::Ordering::Relaxed), 1);
}
