//! Fuzzes the metric store's decoders of what it reads back from disk (a chunk of raw samples,
//! a chunk of rollup buckets in either layout): a damaged or foreign blob must give an error,
//! never a panic; and what decodes, encoded again, decodes to the same bits.
//!
//! Run: `cargo +nightly fuzz run metric_chunk` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_model::Bucket;
use vigil_query::store::buckets::{decode_bucket_statistics, decode_buckets, encode_buckets};
use vigil_query::store::chunk::{decode_chunk, encode_chunk};

fn bucket_bits(bucket: &Bucket) -> [u64; 13] {
    [
        bucket.end_ms as u64,
        bucket.count,
        bucket.resets,
        bucket.first.timestamp_ms as u64,
        bucket.first.value.to_bits(),
        bucket.last.timestamp_ms as u64,
        bucket.last.value.to_bits(),
        bucket.last_any.timestamp_ms as u64,
        bucket.last_any.value.to_bits(),
        bucket.min.to_bits(),
        bucket.max.to_bits(),
        bucket.sum.to_bits(),
        bucket.reset_correction.to_bits(),
    ]
}

fuzz_target!(|data: &[u8]| {
    let mut samples = Vec::new();
    if decode_chunk(data, &mut samples).is_ok() {
        let mut again = Vec::new();
        decode_chunk(&encode_chunk(&samples), &mut again).expect("a re-encoded chunk decodes");
        let bits = |samples: &[vigil_model::Sample]| -> Vec<(i64, u64)> {
            samples
                .iter()
                .map(|sample| (sample.timestamp_ms, sample.value.to_bits()))
                .collect()
        };
        assert_eq!(bits(&samples), bits(&again));
    }
    let mut statistics = Vec::new();
    let statistics_decoded = decode_bucket_statistics(data, &mut statistics).is_ok();
    let mut buckets = Vec::new();
    if decode_buckets(data, &mut buckets).is_ok() {
        assert!(
            statistics_decoded,
            "a blob the full decode reads, the statistics decode reads"
        );
        let mut again = Vec::new();
        decode_buckets(&encode_buckets(&buckets), &mut again).expect("re-encoded buckets decode");
        let all: Vec<_> = buckets.iter().map(bucket_bits).collect();
        let all_again: Vec<_> = again.iter().map(bucket_bits).collect();
        assert_eq!(all, all_again);
    } else {
        assert!(buckets.is_empty(), "a failed decode leaves nothing behind");
    }
});
