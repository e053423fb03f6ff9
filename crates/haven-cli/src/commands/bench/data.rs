//! Realistic event payloads: JSON with random ids and amounts, never repeated bytes.

use rand::{Rng, SeedableRng};

/// A payment event of about `size` bytes.
pub fn event(rng: &mut impl Rng, i: u64, size: usize) -> (Vec<u8>, Vec<u8>) {
    let customer = format!("cust-{:08x}", rng.gen::<u32>() % 50_000);
    let mut v = format!(
        r#"{{"event_id":"{:016x}{:016x}","seq":{i},"type":"payment.captured","customer":"{customer}","amount":{}.{:02},"currency":"{}","merchant":"m-{:06}","card":"**** {:04}","ts":"2026-11-{:02}T{:02}:{:02}:{:02}.{:03}Z","note":""#,
        rng.gen::<u64>(),
        rng.gen::<u64>(),
        rng.gen_range(1..100_000),
        rng.gen_range(0..100),
        ["EUR", "USD", "GBP", "CHF"][rng.gen_range(0..4)],
        rng.gen_range(0..1_000_000),
        rng.gen_range(0..10_000),
        rng.gen_range(1..29),
        rng.gen_range(0..24),
        rng.gen_range(0..60),
        rng.gen_range(0..60),
        rng.gen_range(0..1000),
    );
    const WORDS: [&str; 16] = [
        "refund",
        "pending",
        "approved",
        "risk",
        "score",
        "retry",
        "batch",
        "settled",
        "fx",
        "fee",
        "gateway",
        "token",
        "3ds",
        "issuer",
        "acquirer",
        "chargeback",
    ];
    while v.len() + 3 < size {
        v.push_str(WORDS[rng.gen_range(0..WORDS.len())]);
        v.push(' ');
        if rng.gen_bool(0.3) {
            v.push_str(&rng.gen::<u32>().to_string());
            v.push(' ');
        }
    }
    v.truncate(size.saturating_sub(2));
    v.push_str("\"}");
    (customer.into_bytes(), v.into_bytes())
}

pub fn rng(seed: u64) -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(seed)
}

/// Events `from..to` of about `size` bytes, spread round-robin over `partitions`; with
/// `stamped`, each carries the current time as its timestamp (delay measurements).
pub fn batch(
    rng: &mut impl Rng,
    from: u64,
    to: u64,
    size: usize,
    partitions: i32,
    stamped: bool,
) -> Vec<testbed::Rec> {
    (from..to)
        .map(|j| {
            let (k, v) = event(rng, j, size);
            testbed::Rec {
                partition: Some((j % partitions as u64) as i32),
                key: Some(k),
                value: Some(v),
                timestamp: stamped.then(|| chrono::Utc::now().timestamp_millis()),
                ..testbed::Rec::default()
            }
        })
        .collect()
}

/// A steady load: `rate` events a minute of `event_size` bytes for `seconds`, over
/// `partitions` (the seed's peak by default: 10,000 records of 5 KB a minute).
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct SteadyLoad {
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Records per minute.
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    #[arg(long, default_value_t = 5120)]
    pub event_size: usize,
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,
}

impl SteadyLoad {
    /// The number of events the load produces.
    pub fn events(&self) -> u64 {
        self.seconds * self.rate / 60
    }

    /// Produces the load to `topic` (blocking), paced every 100 ms, each event stamped
    /// with the time it was sent. Returns the number of events.
    pub fn produce(&self, broker: &testbed::Broker, topic: &str, seed: u64) -> anyhow::Result<u64> {
        let mut rng = rng(seed);
        let producer = broker.producer()?;
        let start = std::time::Instant::now();
        let total = self.events();
        let mut sent = 0u64;
        while sent < total {
            let due = ((start.elapsed().as_secs_f64() * self.rate as f64 / 60.0) as u64).min(total);
            let batch = batch(&mut rng, sent, due, self.event_size, self.partitions, true);
            if !batch.is_empty() {
                producer.send(topic, &batch)?;
            }
            sent = due;
            std::thread::sleep(std::time::Duration::from_millis(100));
            anyhow::ensure!(
                start.elapsed() < std::time::Duration::from_secs(self.seconds * 3 + 60),
                "the producer fell behind the load"
            );
        }
        Ok(sent)
    }
}

/// Produces events `0..n` (seed 11, as every benchmark) of about `size` bytes over
/// `partitions` partitions of `topic`, in batches of 20,000 (blocking).
pub fn produce(
    broker: &testbed::Broker,
    topic: &str,
    n: u64,
    size: usize,
    partitions: i32,
) -> anyhow::Result<()> {
    let mut rng = rng(11);
    let producer = broker.producer()?;
    let mut i = 0u64;
    while i < n {
        let events = batch(&mut rng, i, (i + 20_000).min(n), size, partitions, false);
        producer.send(topic, &events)?;
        i += events.len() as u64;
    }
    Ok(())
}
