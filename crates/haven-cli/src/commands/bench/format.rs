//! Segment encode/decode against raw zstd (level 3) on the same payload bytes, same run.

use std::time::Instant;

use haven_format::{Record, SegmentBuilder, TimestampType};
use serde_json::json;

use super::{data, print, Ratio};
use crate::Ctx;

/// Segment encode/decode throughput against raw zstd on the same bytes.
///
/// Encodes N MiB of realistic 1 KiB JSON events into a segment (chunking, zstd level 3,
/// CRCs, index, SHA-256 digest) and decodes every chunk back (CRC, decompress, decode),
/// (records borrowed in place, as restore and cat read them) against plain zstd level 3
/// compression and decompression of the same payload bytes cut into chunks of the same
/// size. Best of 3 runs each. Targets: both ratios >= 0.8.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// MiB of payload.
    #[arg(long, default_value_t = 128)]
    mb: usize,
    /// Bytes per event.
    #[arg(long, default_value_t = 1024)]
    event_size: usize,
}

fn best<T>(runs: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut best = f64::INFINITY;
    let mut out = None;
    for _ in 0..runs {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (best, out.expect("at least one run"))
}

pub fn run(ctx: &Ctx, a: Args) -> anyhow::Result<u8> {
    let mut rng = data::rng(7);
    let n = (a.mb * 1024 * 1024 / a.event_size).max(1);
    let records: Vec<Record> = (0..n as u64)
        .map(|i| {
            let (k, v) = data::event(&mut rng, i, a.event_size);
            Record {
                offset: i as i64,
                timestamp: 1_795_000_000_000 + i as i64,
                timestamp_type: TimestampType::CreateTime,
                key: Some(k),
                value: Some(v),
                headers: vec![],
            }
        })
        .collect();
    let payload: usize = records.iter().map(Record::payload_len).sum();
    let mib = payload as f64 / (1024.0 * 1024.0);

    let (enc_t, (bytes, index, _)) = best(3, || {
        let mut b = SegmentBuilder::new(1, 0, "bench", None, None);
        b.add_partition("bench", 0, 0, 0, n as i64, &records, vec![])
            .expect("valid records");
        b.finish()
    });
    // The same payload bytes, cut where the segment cut its chunks.
    let mut raw_chunks: Vec<Vec<u8>> = Vec::new();
    let mut i = 0usize;
    for c in &index.partitions[0].chunks {
        let mut buf = Vec::new();
        for r in &records[i..i + c.record_count as usize] {
            buf.extend_from_slice(r.key.as_deref().unwrap_or_default());
            buf.extend_from_slice(r.value.as_deref().unwrap_or_default());
        }
        i += c.record_count as usize;
        raw_chunks.push(buf);
    }
    // The baseline reuses its zstd contexts too: the strongest plain use of the library.
    let mut cctx = zstd::bulk::Compressor::new(3)?;
    let (zenc_t, compressed) = best(3, || {
        raw_chunks
            .iter()
            .map(|c| cctx.compress(c).expect("zstd"))
            .collect::<Vec<_>>()
    });
    let (dec_t, decoded) = best(3, || {
        let mut n = 0usize;
        for c in &index.partitions[0].chunks {
            let s = &bytes[c.byte_offset as usize..(c.byte_offset + c.byte_len) as usize];
            // Records as restore and cat use them: borrowed from the decompressed chunk.
            n += haven_format::visit_stored_chunk(index.seq, false, c, s, None, |r| {
                std::hint::black_box(&r);
                Ok(())
            })
            .expect("decode") as usize;
        }
        n
    });
    anyhow::ensure!(decoded == n, "decoded {decoded} of {n} records");
    let mut dctx = zstd::bulk::Decompressor::new()?;
    let (zdec_t, _) = best(3, || {
        compressed
            .iter()
            .zip(&raw_chunks)
            .map(|(c, r)| dctx.decompress(c, r.len()).expect("zstd").len())
            .sum::<usize>()
    });
    let zbytes: usize = compressed.iter().map(Vec::len).sum();
    let ratios = [
        Ratio::new(
            "encode throughput",
            mib / enc_t,
            mib / zenc_t,
            "MiB/s",
            ">= 0.8",
            |r| r >= 0.8,
        ),
        Ratio::new(
            "decode throughput",
            mib / dec_t,
            mib / zdec_t,
            "MiB/s",
            ">= 0.8",
            |r| r >= 0.8,
        ),
        Ratio::new(
            "stored size",
            bytes.len() as f64 / 1048576.0,
            zbytes as f64 / 1048576.0,
            "MiB",
            "(info)",
            |_| true,
        ),
    ];
    print(
        ctx,
        &format!(
            "format: {n} events, {mib:.0} MiB of payload, {} chunks",
            index.partitions[0].chunks.len()
        ),
        &ratios,
        json!(null),
    )?;
    Ok(0)
}
