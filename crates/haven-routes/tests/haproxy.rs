//! haven-routes against a real HAProxy 2.6: a write backend with a US and an EU server
//! (each a TCP server that names itself), starting in maintenance (fail closed).

use std::time::Duration;

use haven_routes::{run_hook, Action, Haproxy, Hook, HookCall};
use testbed::HaproxyBackend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A server that writes its name to every connection, then keeps it open.
async fn named_server(name: &'static str) -> String {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let _ = s.write_all(name.as_bytes()).await;
                let mut buf = [0u8; 16];
                let _ = s.read(&mut buf).await;
            });
        }
    });
    addr
}

/// Which server a new connection through the proxy reaches (None: refused or cut).
async fn reach(port: u16) -> Option<(String, TcpStream)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let mut buf = [0u8; 2];
    match tokio::time::timeout(Duration::from_secs(3), s.read_exact(&mut buf)).await {
        Ok(Ok(_)) => Some((String::from_utf8_lossy(&buf).into(), s)),
        _ => None,
    }
}

fn route(hp: &testbed::Haproxy, server: &str) -> Haproxy {
    Haproxy {
        route: format!("write-{server}"),
        socket: hp.socket(),
        backend: "be_write".into(),
        server: server.into(),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_and_closes_servers_and_cuts_open_sessions() {
    let (us_addr, eu_addr) = (named_server("us").await, named_server("eu").await);
    let hp = testbed::Haproxy::start(&[HaproxyBackend {
        name: "be_write".into(),
        servers: vec![("us".into(), us_addr), ("eu".into(), eu_addr)],
        disabled: true,
    }])
    .unwrap();
    let port = hp.port("be_write");
    let (us, eu) = (route(&hp, "us"), route(&hp, "eu"));
    assert!(us.state().await.unwrap().in_maintenance());
    assert!(
        reach(port).await.is_none(),
        "fail closed: nothing is open yet"
    );

    let st = us.apply(Action::Open).await.unwrap();
    assert!(!st.in_maintenance());
    let (who, mut held) = reach(port).await.expect("US is open");
    assert_eq!(who, "us");

    // Closing US cuts the session held through it and refuses new ones.
    us.apply(Action::Close).await.unwrap();
    let mut buf = [0u8; 1];
    let cut = tokio::time::timeout(Duration::from_secs(5), held.read(&mut buf)).await;
    assert!(
        matches!(cut, Ok(Ok(0)) | Ok(Err(_))),
        "the open session must be cut: {cut:?}"
    );
    assert!(reach(port).await.is_none());
    us.apply(Action::Close).await.unwrap();

    eu.apply(Action::Open).await.unwrap();
    assert_eq!(reach(port).await.unwrap().0, "eu");

    // Bad names and a missing socket are errors naming the route.
    let ghost = Haproxy {
        server: "ghost".into(),
        ..route(&hp, "us")
    };
    let e = ghost.apply(Action::Open).await.unwrap_err().to_string();
    assert!(e.contains("route write-us"), "{e}");
    let nowhere = Haproxy {
        socket: hp.dir().join("missing.sock"),
        ..route(&hp, "us")
    };
    let e = nowhere.state().await.unwrap_err().to_string();
    assert!(
        e.contains("missing.sock") && e.contains("cannot connect"),
        "{e}"
    );
}

#[tokio::test]
async fn hooks_are_told_the_epoch() {
    let dir = tempfile_dir();
    let out = dir.join("called");
    let call = HookCall {
        route: "dns-hook".into(),
        action: Action::Open,
        region: "eu".into(),
        active: "eu".into(),
        epoch: 7,
        idempotency_key: "k1".into(),
    };
    let hook = Hook::Command(format!(
        "echo \"$HAVEN_ACTION $HAVEN_REGION $HAVEN_ACTIVE $HAVEN_EPOCH $HAVEN_IDEMPOTENCY_KEY\" > {}",
        out.display()
    ));
    run_hook(&hook, &call, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(&out).unwrap().trim(),
        "open eu eu 7 k1"
    );
    let e = run_hook(
        &Hook::Command("echo stale >&2; exit 3".into()),
        &call,
        Duration::from_secs(5),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("dns-hook") && e.contains("stale"), "{e}");
    let e = run_hook(
        &Hook::Command("sleep 5".into()),
        &call,
        Duration::from_millis(300),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("did not finish"), "{e}");

    // HTTP: a receiver that refuses epochs it considers stale.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/route", l.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).to_lowercase();
            let status = if req.contains("haven-epoch: 7") && req.contains("\"epoch\":7") {
                "200 OK"
            } else {
                "409 Conflict"
            };
            let _ = s
                .write_all(
                    format!(
                        "HTTP/1.1 {status}\r\ncontent-length: 5\r\nconnection: close\r\n\r\nstale"
                    )
                    .as_bytes(),
                )
                .await;
        }
    });
    run_hook(&Hook::Http(url.clone()), &call, Duration::from_secs(5))
        .await
        .unwrap();
    let old = HookCall { epoch: 6, ..call };
    let e = run_hook(&Hook::Http(url), &old, Duration::from_secs(5))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("409"), "{e}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("haven-hook-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
