//! Choosing a partition for a record the way Kafka's Java client does, so that records of
//! one key stay together (and in order) when a topic is restored or mirrored onto another
//! partition count.

/// Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), seed 0x9747b28c.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() == 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner gives a keyed record:
/// `toPositive(murmur2(key)) % partitions`. Records without a key keep a deterministic
/// place: their source partition modulo the new count.
pub fn java_partition(key: Option<&[u8]>, source_partition: i32, partitions: i32) -> i32 {
    let n = partitions.max(1);
    match key {
        Some(k) => (murmur2(k) & 0x7fff_ffff) % n,
        None => source_partition.rem_euclid(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_kafkas_reference_values() {
        // From librdkafka's murmur2 unit test (itself checked against the Java client).
        let cases: [(&str, u32); 6] = [
            ("kafka", 0xd067cf64),
            ("giberish123456789", 0x8f552b0c),
            ("1234", 0x9fc97b14),
            ("234", 0xe7c009ca),
            ("34", 0x873930da),
            ("4", 0x5a4b5ca1),
        ];
        for (k, want) in cases {
            assert_eq!(murmur2(k.as_bytes()) as u32, want, "{k}");
        }
    }
}
