//! The region lease and the fencing epoch against real etcd 3.4 members (Debian's
//! etcd-server), sampled by an independent client while faults happen.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use haven_etcd::{Acquired, Coordinator, Tenure};
use testbed::EtcdCluster;

const TIMEOUT: Duration = Duration::from_millis(1500);
const TTL: Duration = Duration::from_secs(3);

async fn coordinator(c: &EtcdCluster) -> Coordinator {
    Coordinator::connect(&c.endpoints(), "prod", TIMEOUT)
        .await
        .expect("connect to etcd")
}

fn won(a: Acquired) -> Tenure {
    match a {
        Acquired::Won(t) => *t,
        Acquired::Held(h) => panic!("expected to win, held by {h:?}"),
    }
}

/// (epoch, holder region and its epoch) per sample.
type Samples = Arc<Mutex<Vec<(u64, Option<(String, u64)>)>>>;

/// Samples the leader key and the epoch every 100 ms from its own client until stopped:
/// (epoch, holder region) per sample.
fn sampler(
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
) -> (tokio::task::JoinHandle<()>, Samples) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = samples.clone();
    let task = tokio::spawn(async move {
        let mut c = Coordinator::connect(&endpoints, "prod", TIMEOUT)
            .await
            .expect("sampler connects");
        while !stop.load(Ordering::SeqCst) {
            if let Ok((e, h)) = c.snapshot().await {
                out.lock()
                    .unwrap()
                    .push((e, h.map(|h| (h.region, h.epoch))));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (task, samples)
}

#[tokio::test(flavor = "multi_thread")]
async fn one_holder_epochs_only_go_up_and_a_stale_holder_is_refused() {
    let mut cluster = tokio::task::spawn_blocking(|| EtcdCluster::start(3))
        .await
        .unwrap()
        .expect("start 3 etcd members");
    let stop = Arc::new(AtomicBool::new(false));
    let (task, samples) = sampler(cluster.endpoints(), stop.clone());
    let mut us = coordinator(&cluster).await;
    let mut eu = coordinator(&cluster).await;

    // US takes the lease: epoch 1. EU sees it held.
    let mut us_tenure = won(us.acquire("us", "agent-us", TTL, 0).await.unwrap());
    assert_eq!(us_tenure.epoch, 1);
    match eu.acquire("eu", "agent-eu", TTL, 0).await.unwrap() {
        Acquired::Held(h) => assert_eq!((h.region.as_str(), h.epoch), ("us", 1)),
        Acquired::Won(t) => panic!("two holders: eu won epoch {}", t.epoch),
    }
    // Renewals hold it past several TTLs.
    let until = Instant::now() + TTL * 2;
    while Instant::now() < until {
        assert!(us.renew(&mut us_tenure).await.unwrap(), "renewal refused");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A member dies (quorum stays): the holder keeps its tenure through it. A renewal may
    // time out during the election (a second or so), none is refused, and they succeed
    // again well within the TTL.
    tokio::task::block_in_place(|| cluster.kill(0));
    let killed = Instant::now();
    let mut first_ok = None;
    let mut outcomes = Vec::new();
    while killed.elapsed() < Duration::from_secs(4) {
        let r = us.renew(&mut us_tenure).await;
        assert!(!matches!(r, Ok(false)), "tenure lost to a member loss");
        if matches!(r, Ok(true)) && first_ok.is_none() {
            first_ok = Some(killed.elapsed());
        }
        outcomes.push(r.is_ok());
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let first_ok = first_ok.expect("no renewal succeeded after a member loss");
    assert!(first_ok < TTL, "renewed again only after {first_ok:?}");
    assert!(outcomes.last() == Some(&true), "{outcomes:?}");
    assert_eq!(eu.holder().await.unwrap().unwrap().epoch, 1);
    tokio::task::block_in_place(|| cluster.restart(0)).unwrap();

    // The holder freezes (stops renewing) past its TTL: the key expires, EU takes epoch 2,
    // and the woken holder's next renewal is refused.
    let t0 = Instant::now();
    let eu_tenure = loop {
        match eu.acquire("eu", "agent-eu", TTL, 0).await.unwrap() {
            Acquired::Won(t) => break *t,
            Acquired::Held(_) => {
                assert!(
                    t0.elapsed() < TTL * 4,
                    "the frozen holder's lease never expired"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(eu_tenure.epoch, 2);
    assert!(
        t0.elapsed() >= TTL - Duration::from_millis(500),
        "taken before expiry"
    );
    assert!(
        !us.renew(&mut us_tenure).await.unwrap_or(false),
        "a stale holder renewed"
    );
    assert!(matches!(
        us.acquire("us", "agent-us", TTL, 0).await.unwrap(),
        Acquired::Held(h) if h.region == "eu"
    ));

    // A resignation hands over at once; a floor from elsewhere lifts the epoch.
    eu.resign(eu_tenure).await.unwrap();
    let t = won(us.acquire("us", "agent-us", TTL, 10).await.unwrap());
    assert_eq!(t.epoch, 11);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Without quorum nothing is renewed: an error or a refusal, never a success.
    tokio::task::block_in_place(|| {
        cluster.kill(1);
        cluster.kill(2);
    });
    let mut t = t;
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..3 {
        let r = us.renew(&mut t).await;
        assert!(!matches!(r, Ok(true)), "renewed without quorum: {r:?}");
    }

    stop.store(true, Ordering::SeqCst);
    task.await.unwrap();
    let samples = samples.lock().unwrap().clone();
    assert!(samples.len() > 50, "{} samples", samples.len());
    let mut last = 0;
    for (epoch, holder) in &samples {
        assert!(*epoch >= last, "epoch went down: {last} -> {epoch}");
        last = *epoch;
        if let Some((_, e)) = holder {
            assert_eq!(e, epoch, "the holder's epoch is the current epoch");
        }
    }
    assert_eq!(last, 11);
}
