//! The DNS route against a real Knot DNS server accepting TSIG-signed RFC 2136 updates.

use std::net::IpAddr;
use std::time::Duration;

use haven_routes::dns::DnsRoute;
use haven_routes::Action;
use testbed::Knot;

// 32 bytes, base64.
const SECRET_B64: &str = "aGF2ZW4tdGVzdC1rZXktMzItYnl0ZXMtbG9uZy4uLi4=";
const SECRET: &[u8] = b"haven-test-key-32-bytes-long....";

fn route(knot: &Knot, address: &str) -> DnsRoute {
    DnsRoute {
        route: format!("dns-{address}"),
        server: format!("127.0.0.1:{}", knot.port()).parse().unwrap(),
        zone: "dr.example.".into(),
        name: "kafka.dr.example.".into(),
        address: address.parse().unwrap(),
        ttl: 5,
        key_name: "haven".into(),
        key: SECRET.to_vec(),
        timeout: Duration::from_secs(5),
    }
}

#[tokio::test]
async fn updates_carry_the_epoch_and_the_server_refuses_a_stale_writer() {
    let knot = Knot::start("dr.example.", &["kafka A 10.0.0.1"], "haven", SECRET_B64).unwrap();
    let (us, eu) = (route(&knot, "10.0.0.1"), route(&knot, "10.0.1.1"));
    assert_eq!(us.epoch().await.unwrap(), None);
    assert_eq!(
        us.addresses().await.unwrap(),
        vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
    );

    // Epoch 1 for US (the first write: "no epoch yet" is the prerequisite).
    us.apply(Action::Open, 1).await.unwrap();
    assert_eq!(us.epoch().await.unwrap(), Some(1));
    // A failover to EU with epoch 2: US's address is closed, EU's opened.
    us.apply(Action::Close, 2).await.unwrap();
    eu.apply(Action::Open, 2).await.unwrap();
    assert_eq!(
        eu.addresses().await.unwrap(),
        vec!["10.0.1.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(eu.epoch().await.unwrap(), Some(2));

    // The old writer (epoch 1) is refused before it sends anything...
    let e = us.apply(Action::Open, 1).await.unwrap_err().to_string();
    assert!(e.contains("newer than this change's 1"), "{e}");
    // ... and by the server itself when it raced (it read epoch 1 before EU wrote 2).
    let e = us
        .update(Action::Open, 3, Some(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("epoch changed since it was read"), "{e}");
    assert_eq!(
        eu.addresses().await.unwrap(),
        vec!["10.0.1.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(eu.epoch().await.unwrap(), Some(2));

    // A wrong key is refused (NOTAUTH) and changes nothing.
    let bad = DnsRoute {
        key: b"another-key-of-thirty-two-bytes!".to_vec(),
        ..route(&knot, "10.0.9.9")
    };
    let e = bad.apply(Action::Open, 5).await.unwrap_err().to_string();
    assert!(e.contains("dns-10.0.9.9"), "{e}");
    assert_eq!(eu.epoch().await.unwrap(), Some(2));
    // Nothing answering: a bounded wait naming the server.
    let silent = DnsRoute {
        server: "127.0.0.1:9".parse().unwrap(),
        timeout: Duration::from_millis(300),
        ..route(&knot, "10.0.1.1")
    };
    let e = silent.epoch().await.unwrap_err().to_string();
    assert!(e.contains("127.0.0.1:9"), "{e}");
}
