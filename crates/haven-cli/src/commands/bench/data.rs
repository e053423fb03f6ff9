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
