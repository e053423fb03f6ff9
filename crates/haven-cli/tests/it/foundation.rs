//! The test bed itself: real brokers and Postgres clusters round-trip data.

use testbed::{Broker, Postgres, Rec};

#[test]
fn two_brokers_round_trip_records_exactly() {
    let us = Broker::start().expect("start broker us");
    let eu = Broker::start().expect("start broker eu");
    assert_ne!(us.port(), eu.port());
    let recs = vec![
        Rec::kv("k1", "v1").to_partition(0).at(1_700_000_000_000),
        Rec {
            partition: Some(0),
            key: None,
            value: Some(vec![]),
            headers: vec![("dup".into(), Some(b"a".to_vec())), ("dup".into(), None)],
            timestamp: Some(1_700_000_000_001),
        },
        Rec {
            partition: Some(1),
            key: Some(vec![]),
            value: None,
            ..Rec::default()
        }
        .at(1_700_000_000_002),
    ];
    for b in [&us, &eu] {
        b.create_topic("t", 2).unwrap();
        let placed = b.produce("t", &recs).unwrap();
        assert_eq!(placed, vec![(0, 0), (0, 1), (1, 0)]);
        let p0 = b.read_partition("t", 0).unwrap();
        assert_eq!(p0.len(), 2);
        assert_eq!(p0[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(p0[0].timestamp, 1_700_000_000_000);
        assert_eq!(p0[1].key, None);
        assert_eq!(p0[1].value.as_deref(), Some(&b""[..]));
        assert_eq!(p0[1].headers, recs[1].headers);
        let p1 = b.read_partition("t", 1).unwrap();
        assert_eq!(p1[0].key.as_deref(), Some(&b""[..]));
        assert_eq!(p1[0].value, None);
    }
}

#[test]
fn broker_restart_keeps_data() {
    let mut b = Broker::start().unwrap();
    b.create_topic("keep", 1).unwrap();
    b.produce("keep", &[Rec::kv("a", "1"), Rec::kv("b", "2")])
        .unwrap();
    b.restart().unwrap();
    let got = b.read_partition("keep", 0).unwrap();
    assert_eq!(got.iter().map(|c| c.offset).collect::<Vec<_>>(), vec![0, 1]);
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_round_trips_rows() {
    let pg = tokio::task::spawn_blocking(Postgres::start)
        .await
        .unwrap()
        .expect("start postgres");
    let c = pg.connect().await.unwrap();
    c.batch_execute("CREATE TABLE machines (id int primary key, name text, data bytea)")
        .await
        .unwrap();
    for i in 0..10 {
        c.execute(
            "INSERT INTO machines VALUES ($1, $2, $3)",
            &[&i, &format!("m{i}"), &vec![i as u8; 3]],
        )
        .await
        .unwrap();
    }
    let rows = c
        .query("SELECT id, name, data FROM machines ORDER BY id", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 10);
    let name: String = rows[7].get(1);
    let data: Vec<u8> = rows[7].get(2);
    assert_eq!((name.as_str(), data), ("m7", vec![7u8; 3]));
}

#[test]
fn demo_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("repo").display().to_string();
    let out = crate::ok(&crate::haven(&[
        "--json", "demo", "--events", "1500", "--repo", &repo,
    ]));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["backup"]["records"], 1500, "{v}");
    assert_eq!(v["mirror"]["records"], 1500, "{v}");
    assert_eq!(v["mirror_at_risk"], 0, "{v}");
    assert_eq!(v["restore"]["records"], 600, "minutes 10 to 20: {v}");
}
