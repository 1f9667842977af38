//! Rollup buckets: what a rollup level keeps of each `(end - resolution, end]` bucket of a
//! series ([`Bucket`]: count, first, last, newest including staleness markers, min, max, sum,
//! resets and the reset correction), how they are built from samples, merged, and encoded.
//!
//! The encoding is columnar per chunk: a count, then per bucket the end (delta-of-delta
//! varint), the count and resets (varints), the timestamps of first/last/last_any as offsets
//! from the bucket end (zig-zag varints), and seven floats, each XORed with the same field of
//! the previous bucket (one control byte plus the changed bytes, as in [`super::chunk`]).

use vigil_model::{is_stale_marker, Bucket, Sample};

use super::chunk::{read_varint, unzigzag, write_varint, zigzag, ChunkDecodeError, FloatColumn};

/// Returns the end of the bucket `(end - resolution, end]` holding `timestamp_ms`.
pub fn bucket_end(timestamp_ms: i64, resolution_ms: i64) -> i64 {
    (timestamp_ms + resolution_ms - 1).div_euclid(resolution_ms) * resolution_ms
}

fn empty_bucket(end_ms: i64, sample: Sample) -> Bucket {
    Bucket {
        end_ms,
        count: 0,
        first: sample,
        last: sample,
        last_any: sample,
        min: f64::NAN,
        max: f64::NAN,
        sum: 0.0,
        resets: 0,
        reset_correction: 0.0,
    }
}

/// Adds one sample (newer than every sample already in the bucket) to a bucket.
fn push_sample(bucket: &mut Bucket, sample: Sample) {
    bucket.last_any = sample;
    if is_stale_marker(sample.value) {
        return;
    }
    if bucket.count == 0 {
        bucket.first = sample;
        bucket.min = sample.value;
        bucket.max = sample.value;
    } else {
        if sample.value < bucket.last.value {
            bucket.resets += 1;
            bucket.reset_correction += bucket.last.value;
        }
        bucket.min = bucket.min.min(sample.value);
        bucket.max = bucket.max.max(sample.value);
    }
    bucket.last = sample;
    bucket.sum += sample.value;
    bucket.count += 1;
}

/// Builds buckets from samples sorted by timestamp.
pub fn buckets_from_samples(samples: &[Sample], resolution_ms: i64) -> Vec<Bucket> {
    let mut buckets: Vec<Bucket> = Vec::new();
    for sample in samples {
        let end_ms = bucket_end(sample.timestamp_ms, resolution_ms);
        match buckets.last_mut() {
            Some(bucket) if bucket.end_ms == end_ms => push_sample(bucket, *sample),
            _ => {
                let mut bucket = empty_bucket(end_ms, *sample);
                push_sample(&mut bucket, *sample);
                buckets.push(bucket);
            }
        }
    }
    buckets
}

/// Merges two partial records of one bucket, `older` holding the earlier samples.
pub fn merge_bucket(older: &Bucket, newer: &Bucket) -> Bucket {
    if older.count == 0 {
        let mut merged = *newer;
        if newer.last_any.timestamp_ms < older.last_any.timestamp_ms {
            merged.last_any = older.last_any;
        }
        return merged;
    }
    if newer.count == 0 {
        let mut merged = *older;
        if newer.last_any.timestamp_ms >= older.last_any.timestamp_ms {
            merged.last_any = newer.last_any;
        }
        return merged;
    }
    let boundary_reset = newer.first.value < older.last.value;
    Bucket {
        end_ms: older.end_ms,
        count: older.count + newer.count,
        first: older.first,
        last: newer.last,
        last_any: if newer.last_any.timestamp_ms >= older.last_any.timestamp_ms {
            newer.last_any
        } else {
            older.last_any
        },
        min: older.min.min(newer.min),
        max: older.max.max(newer.max),
        sum: older.sum + newer.sum,
        resets: older.resets + newer.resets + u64::from(boundary_reset),
        reset_correction: older.reset_correction
            + newer.reset_correction
            + if boundary_reset {
                older.last.value
            } else {
                0.0
            },
    }
}

/// Merges `newer` buckets (sorted) into `stored` (sorted), bucket by bucket.
pub fn merge_buckets(stored: Vec<Bucket>, newer: &[Bucket]) -> Vec<Bucket> {
    let mut out = Vec::with_capacity(stored.len() + newer.len());
    let mut newer_iter = newer.iter().peekable();
    for bucket in stored {
        while let Some(next) = newer_iter.next_if(|next| next.end_ms < bucket.end_ms) {
            out.push(*next);
        }
        match newer_iter.next_if(|next| next.end_ms == bucket.end_ms) {
            Some(next) => {
                // Samples normally arrive in time order; when a late write lands in an old
                // bucket the merge still counts it, with first/last approximate.
                if next.first.timestamp_ms >= bucket.last.timestamp_ms || bucket.count == 0 {
                    out.push(merge_bucket(&bucket, next));
                } else {
                    out.push(merge_bucket(next, &bucket));
                }
            }
            None => out.push(bucket),
        }
    }
    out.extend(newer_iter.copied());
    out
}

/// Returns samples standing in for the buckets where a selector reads them: the first, the
/// last and the newest sample (marker or not) of each bucket.
pub fn samples_of_buckets(buckets: &[Bucket]) -> Vec<Sample> {
    let mut out = Vec::with_capacity(buckets.len() * 3);
    for bucket in buckets {
        if bucket.count > 0 {
            out.push(bucket.first);
            if bucket.last.timestamp_ms > bucket.first.timestamp_ms {
                out.push(bucket.last);
            }
        }
        if out
            .last()
            .is_none_or(|last| last.timestamp_ms < bucket.last_any.timestamp_ms)
        {
            out.push(bucket.last_any);
        }
    }
    out
}

const FLOAT_FIELDS: usize = 7;

fn float_fields(bucket: &Bucket) -> [f64; FLOAT_FIELDS] {
    [
        bucket.first.value,
        bucket.last.value,
        bucket.last_any.value,
        bucket.min,
        bucket.max,
        bucket.sum,
        bucket.reset_correction,
    ]
}

/// Encodes buckets (sorted by end).
pub fn encode_buckets(buckets: &[Bucket]) -> Vec<u8> {
    let mut out = Vec::with_capacity(buckets.len() * 16 + 8);
    write_varint(&mut out, buckets.len() as u64);
    let mut previous_end: i64 = 0;
    let mut previous_delta: i64 = 0;
    let mut columns: [FloatColumn; FLOAT_FIELDS] = std::array::from_fn(|_| FloatColumn::default());
    for bucket in buckets {
        let delta = bucket.end_ms.wrapping_sub(previous_end);
        write_varint(&mut out, zigzag(delta.wrapping_sub(previous_delta)));
        previous_delta = delta;
        previous_end = bucket.end_ms;
        write_varint(&mut out, bucket.count);
        write_varint(&mut out, bucket.resets);
        for timestamp in [
            bucket.first.timestamp_ms,
            bucket.last.timestamp_ms,
            bucket.last_any.timestamp_ms,
        ] {
            write_varint(&mut out, zigzag(bucket.end_ms.wrapping_sub(timestamp)));
        }
        for (column, value) in columns.iter_mut().zip(float_fields(bucket)) {
            column.write(&mut out, value);
        }
    }
    out
}

/// Decodes buckets made by [`encode_buckets`], appending them to `out`.
///
/// # Errors
/// [`ChunkDecodeError`] when the blob is truncated or corrupt.
pub fn decode_buckets(blob: &[u8], out: &mut Vec<Bucket>) -> Result<(), ChunkDecodeError> {
    decode::<true>(blob, out)
}

/// Decodes buckets made by [`encode_buckets`] for the range functions computed from buckets,
/// appending them to `out`: everything but `sum` (left NaN) and `last_any` (left equal to
/// `last`), which none of them reads. Skipping the two saves about a quarter of the decoding.
///
/// # Errors
/// [`ChunkDecodeError`] when the blob is truncated or corrupt.
pub fn decode_bucket_statistics(
    blob: &[u8],
    out: &mut Vec<Bucket>,
) -> Result<(), ChunkDecodeError> {
    decode::<false>(blob, out)
}

fn decode<const ALL: bool>(blob: &[u8], out: &mut Vec<Bucket>) -> Result<(), ChunkDecodeError> {
    let mut offset = 0;
    let count = read_varint(blob, &mut offset)?;
    if count > blob.len() as u64 {
        return Err(ChunkDecodeError::Corrupt { offset: 0 });
    }
    out.reserve(count as usize);
    let mut previous_end: i64 = 0;
    let mut previous_delta: i64 = 0;
    let mut columns: [FloatColumn; FLOAT_FIELDS] = std::array::from_fn(|_| FloatColumn::default());
    for _ in 0..count {
        let delta = previous_delta.wrapping_add(unzigzag(read_varint(blob, &mut offset)?));
        previous_delta = delta;
        let end_ms = previous_end.wrapping_add(delta);
        previous_end = end_ms;
        let bucket_count = read_varint(blob, &mut offset)?;
        let resets = read_varint(blob, &mut offset)?;
        let mut timestamps = [0i64; 3];
        for timestamp in &mut timestamps {
            *timestamp = end_ms.wrapping_sub(unzigzag(read_varint(blob, &mut offset)?));
        }
        let mut values = [f64::NAN; FLOAT_FIELDS];
        for (field, (column, value)) in columns.iter_mut().zip(values.iter_mut()).enumerate() {
            // Fields 2 (last_any) and 5 (sum) are skipped unless ALL.
            if ALL || (field != 2 && field != 5) {
                *value = column.read(blob, &mut offset)?;
            } else {
                column.skip(blob, &mut offset)?;
            }
        }
        let last = Sample {
            timestamp_ms: timestamps[1],
            value: values[1],
        };
        out.push(Bucket {
            end_ms,
            count: bucket_count,
            first: Sample {
                timestamp_ms: timestamps[0],
                value: values[0],
            },
            last,
            last_any: if ALL {
                Sample {
                    timestamp_ms: timestamps[2],
                    value: values[2],
                }
            } else {
                last
            },
            min: values[3],
            max: values[4],
            sum: values[5],
            resets,
            reset_correction: values[6],
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples(pairs: &[(i64, f64)]) -> Vec<Sample> {
        pairs
            .iter()
            .map(|&(timestamp_ms, value)| Sample {
                timestamp_ms,
                value,
            })
            .collect()
    }

    #[test]
    fn buckets_are_left_open_and_count_resets() {
        let input = samples(&[(0, 5.0), (10, 7.0), (60, 9.0), (61, 2.0), (90, 1.0)]);
        let buckets = buckets_from_samples(&input, 60);
        assert_eq!(buckets.len(), 3);
        assert_eq!(buckets[0].end_ms, 0);
        assert_eq!(buckets[1].end_ms, 60);
        assert_eq!(buckets[1].count, 2);
        assert_eq!(buckets[2].end_ms, 120);
        assert_eq!(buckets[2].resets, 1);
        assert_eq!(buckets[2].reset_correction, 2.0);
    }

    #[test]
    fn merging_split_parts_equals_building_at_once() {
        let input: Vec<Sample> = (0..200)
            .map(|index| Sample {
                timestamp_ms: index * 7,
                value: ((index * 13) % 17) as f64,
            })
            .collect();
        let whole = buckets_from_samples(&input, 60);
        for split in [1, 50, 111, 199] {
            let merged = merge_buckets(
                buckets_from_samples(&input[..split], 60),
                &buckets_from_samples(&input[split..], 60),
            );
            assert_eq!(merged, whole, "split at {split}");
        }
    }

    #[test]
    fn staleness_markers_end_a_bucket_without_counting() {
        let input = samples(&[(1, 3.0), (2, vigil_model::stale_marker())]);
        let buckets = buckets_from_samples(&input, 60);
        assert_eq!(buckets[0].count, 1);
        assert!(is_stale_marker(buckets[0].last_any.value));
        assert_eq!(samples_of_buckets(&buckets).len(), 2);
        let with_last = buckets_from_samples(
            &samples(&[(1, 1.0), (2, 3.0), (3, vigil_model::stale_marker())]),
            60,
        );
        let stand_ins: Vec<i64> = samples_of_buckets(&with_last)
            .iter()
            .map(|s| s.timestamp_ms)
            .collect();
        assert_eq!(stand_ins, vec![1, 2, 3]);
    }

    proptest! {
        #[test]
        fn encoding_round_trips(
            pairs in proptest::collection::vec((0i64..100_000, prop_oneof![Just(0.0f64), Just(f64::NAN), any::<f64>()]), 0..64)
        ) {
            let mut input = samples(&pairs);
            input.sort_by_key(|sample| sample.timestamp_ms);
            let buckets = buckets_from_samples(&input, 1_000);
            let mut decoded = Vec::new();
            decode_buckets(&encode_buckets(&buckets), &mut decoded).unwrap();
            prop_assert_eq!(decoded.len(), buckets.len());
            for (left, right) in decoded.iter().zip(&buckets) {
                prop_assert_eq!(left.end_ms, right.end_ms);
                prop_assert_eq!(left.count, right.count);
                prop_assert_eq!(left.last_any.timestamp_ms, right.last_any.timestamp_ms);
                prop_assert_eq!(left.sum.to_bits(), right.sum.to_bits());
            }
        }

        #[test]
        fn statistics_decode_equals_the_full_decode_but_for_sum_and_last_any(
            pairs in proptest::collection::vec((0i64..100_000, prop_oneof![Just(0.0f64), Just(f64::NAN), any::<f64>()]), 0..64)
        ) {
            let mut input = samples(&pairs);
            input.sort_by_key(|sample| sample.timestamp_ms);
            let blob = encode_buckets(&buckets_from_samples(&input, 1_000));
            let (mut full, mut statistics) = (Vec::new(), Vec::new());
            decode_buckets(&blob, &mut full).unwrap();
            decode_bucket_statistics(&blob, &mut statistics).unwrap();
            prop_assert_eq!(full.len(), statistics.len());
            for (left, right) in full.iter().zip(&statistics) {
                prop_assert_eq!(left.end_ms, right.end_ms);
                prop_assert_eq!(left.count, right.count);
                prop_assert_eq!(left.resets, right.resets);
                for (a, b) in [
                    (left.first, right.first),
                    (left.last, right.last),
                ] {
                    prop_assert_eq!(a.timestamp_ms, b.timestamp_ms);
                    prop_assert_eq!(a.value.to_bits(), b.value.to_bits());
                }
                prop_assert_eq!(left.min.to_bits(), right.min.to_bits());
                prop_assert_eq!(left.max.to_bits(), right.max.to_bits());
                prop_assert_eq!(left.reset_correction.to_bits(), right.reset_correction.to_bits());
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut decoded = Vec::new();
            let _ = decode_buckets(&blob, &mut decoded);
            let _ = decode_bucket_statistics(&blob, &mut decoded);
        }
    }
}
