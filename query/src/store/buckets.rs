//! Rollup buckets: what a rollup level keeps of each `(end - resolution, end]` bucket of a
//! series ([`Bucket`]: count, first, last, newest including staleness markers, min, max, sum,
//! resets and the reset correction), how they are built from samples, merged, and encoded.
//!
//! The encoding ([`encode_buckets`]) is columnar per chunk: each field of every bucket in one
//! column, so a reader skips the columns it does not need and decodes the others in tight
//! loops, and the columns of a regularly sampled counter (ends, counts, timestamps, min, max,
//! reset correction) take a few bytes whatever the number of buckets. Blobs of the earlier
//! interleaved layout (all fields of one bucket, then the next) are still read.

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

/// The first byte of a columnar blob. A blob of the interleaved layout starts with its bucket
/// count as a varint, which is at least 1 in every blob the store has written (a count of 0
/// is the whole one-byte blob, which therefore still decodes as the interleaved layout).
const COLUMNAR_TAG: u8 = 0;
/// The second byte of a columnar blob: the version of its layout.
const COLUMNAR_VERSION: u8 = 1;
/// At most this many buckets go in one columnar blob (a rollup chunk holds 120), so a corrupt
/// count cannot make the decoder allocate without bound; more are written interleaved.
const MAX_COLUMNAR_BUCKETS: usize = 1 << 16;

/// Integer column layouts: `first, step` (zig-zag varints) for a column in arithmetic
/// progression, such as the ends of consecutive buckets or a count that never changes...
const INT_ARITHMETIC: u8 = 0;
/// ...or each value's difference from the previous one (from 0), as zig-zag varints.
const INT_DELTAS: u8 = 1;
/// Float column layouts: one value for every bucket (8 bytes, little-endian bits)...
const FLOAT_CONSTANT: u8 = 0;
/// ...each value XORed with the previous one, as in [`super::chunk`]...
const FLOAT_XOR: u8 = 1;
/// ...or bit for bit the bucket's first or last value (a counter's min and max, the newest
/// sample when no staleness marker followed it).
const FLOAT_SAME_AS_FIRST: u8 = 2;
const FLOAT_SAME_AS_LAST: u8 = 3;
/// ...or, when every value is a whole number of at most 2^53 in magnitude (not -0.0), as
/// most counters are, each value's difference from the previous one (from 0) as zig-zag
/// varints: a byte or two per value, read without the XOR's shifts.
const FLOAT_INTEGERS: u8 = 4;

/// Returns the value as an integer when it converts back to the same bits.
fn whole_number(value: f64) -> Option<i64> {
    const LIMIT: f64 = 9_007_199_254_740_992.0;
    (value.trunc() == value && value.abs() <= LIMIT && value.to_bits() != (-0.0f64).to_bits())
        .then_some(value as i64)
}

/// Encodes buckets (sorted by end).
///
/// The layout is columnar: a tag byte, a version byte and the bucket count, then thirteen
/// columns in a fixed order — end, count, resets, the timestamps of first, last and newest
/// sample as offsets back from the end, then first, last, newest, min, max, sum and reset
/// correction values — each one its byte length (varint) followed by a layout byte and the
/// data. A reader jumps over the columns it does not need, and a column that is constant, in
/// arithmetic progression or a copy of the first or last values (most of them, for a counter
/// sampled at a regular interval) decodes without reading a byte per bucket, and whole-number
/// values (a counter's first and last) as varint differences.
pub fn encode_buckets(buckets: &[Bucket]) -> Vec<u8> {
    if buckets.len() > MAX_COLUMNAR_BUCKETS {
        return encode_interleaved(buckets);
    }
    let mut out = Vec::with_capacity(buckets.len() * 12 + 64);
    out.push(COLUMNAR_TAG);
    out.push(COLUMNAR_VERSION);
    write_varint(&mut out, buckets.len() as u64);
    let mut body = Vec::with_capacity(buckets.len() * 4 + 16);
    let mut integers = Vec::with_capacity(buckets.len());
    for field in 0..INT_FIELDS {
        integers.clear();
        integers.extend(buckets.iter().map(|bucket| int_field(bucket, field)));
        body.clear();
        encode_int_column(&mut body, &integers);
        write_column(&mut out, &body);
    }
    let firsts: Vec<f64> = buckets.iter().map(|bucket| bucket.first.value).collect();
    let lasts: Vec<f64> = buckets.iter().map(|bucket| bucket.last.value).collect();
    let mut floats = Vec::with_capacity(buckets.len());
    for field in 0..FLOAT_FIELDS {
        floats.clear();
        floats.extend(buckets.iter().map(|bucket| float_fields(bucket)[field]));
        body.clear();
        let copies = match field {
            0 => [None, None],
            1 => [Some((FLOAT_SAME_AS_FIRST, firsts.as_slice())), None],
            _ => [
                Some((FLOAT_SAME_AS_FIRST, firsts.as_slice())),
                Some((FLOAT_SAME_AS_LAST, lasts.as_slice())),
            ],
        };
        encode_float_column(&mut body, &floats, copies);
        write_column(&mut out, &body);
    }
    out
}

const INT_FIELDS: usize = 6;

/// The integer columns: end, count, resets, and the three timestamps as offsets from the end.
fn int_field(bucket: &Bucket, field: usize) -> i64 {
    match field {
        0 => bucket.end_ms,
        1 => bucket.count as i64,
        2 => bucket.resets as i64,
        3 => bucket.end_ms.wrapping_sub(bucket.first.timestamp_ms),
        4 => bucket.end_ms.wrapping_sub(bucket.last.timestamp_ms),
        _ => bucket.end_ms.wrapping_sub(bucket.last_any.timestamp_ms),
    }
}

fn write_column(out: &mut Vec<u8>, body: &[u8]) {
    write_varint(out, body.len() as u64);
    out.extend_from_slice(body);
}

fn encode_int_column(out: &mut Vec<u8>, values: &[i64]) {
    let first = values.first().copied().unwrap_or(0);
    let step = match values {
        [first, second, ..] => second.wrapping_sub(*first),
        _ => 0,
    };
    if values
        .windows(2)
        .all(|pair| pair[1].wrapping_sub(pair[0]) == step)
    {
        out.push(INT_ARITHMETIC);
        write_varint(out, zigzag(first));
        write_varint(out, zigzag(step));
        return;
    }
    out.push(INT_DELTAS);
    let mut previous: i64 = 0;
    for &value in values {
        write_varint(out, zigzag(value.wrapping_sub(previous)));
        previous = value;
    }
}

fn same_bits(left: &[f64], right: &[f64]) -> bool {
    left.iter()
        .zip(right)
        .all(|(left, right)| left.to_bits() == right.to_bits())
}

fn encode_float_column(out: &mut Vec<u8>, values: &[f64], copies: [Option<(u8, &[f64])>; 2]) {
    if let Some((layout, _)) = copies
        .into_iter()
        .flatten()
        .find(|(_, source)| same_bits(values, source))
    {
        out.push(layout);
        return;
    }
    match values.first() {
        Some(first)
            if values
                .iter()
                .all(|value| value.to_bits() == first.to_bits()) =>
        {
            out.push(FLOAT_CONSTANT);
            out.extend_from_slice(&first.to_bits().to_le_bytes());
        }
        None => {
            out.push(FLOAT_CONSTANT);
            out.extend_from_slice(&0u64.to_le_bytes());
        }
        Some(_) if values.iter().all(|value| whole_number(*value).is_some()) => {
            out.push(FLOAT_INTEGERS);
            let mut previous: i64 = 0;
            for value in values.iter().filter_map(|value| whole_number(*value)) {
                write_varint(out, zigzag(value.wrapping_sub(previous)));
                previous = value;
            }
        }
        Some(_) => {
            out.push(FLOAT_XOR);
            let mut column = FloatColumn::default();
            for &value in values {
                column.write(out, value);
            }
        }
    }
}

/// Encodes buckets in the interleaved layout of earlier versions, which [`decode_buckets`]
/// still reads: the count, then per bucket the end (delta-of-delta varint), the count and
/// resets (varints), the timestamps of first/last/last_any as offsets from the bucket end
/// (zig-zag varints), and the seven floats, each XORed with the same field of the previous
/// bucket. Used for blobs of more buckets than a columnar blob may hold.
pub(crate) fn encode_interleaved(buckets: &[Bucket]) -> Vec<u8> {
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

/// Decodes buckets made by [`encode_buckets`] (either layout), appending them to `out`.
///
/// # Errors
/// [`ChunkDecodeError`] when the blob is truncated or corrupt; `out` is then as it was.
pub fn decode_buckets(blob: &[u8], out: &mut Vec<Bucket>) -> Result<(), ChunkDecodeError> {
    decode::<true>(blob, out)
}

/// Decodes buckets made by [`encode_buckets`] for the range functions computed from buckets,
/// appending them to `out`: everything but `sum` (left NaN) and `last_any` (left equal to
/// `last`), which none of them reads.
///
/// # Errors
/// [`ChunkDecodeError`] when the blob is truncated or corrupt; `out` is then as it was.
pub fn decode_bucket_statistics(
    blob: &[u8],
    out: &mut Vec<Bucket>,
) -> Result<(), ChunkDecodeError> {
    decode::<false>(blob, out)
}

fn decode<const ALL: bool>(blob: &[u8], out: &mut Vec<Bucket>) -> Result<(), ChunkDecodeError> {
    let start = out.len();
    let result = match blob {
        [COLUMNAR_TAG, _, ..] => decode_columnar::<ALL>(blob, out),
        _ => decode_interleaved::<ALL>(blob, out),
    };
    if result.is_err() {
        out.truncate(start);
    }
    result
}

/// A bucket whose every field a columnar decode overwrites (but `sum` and `last_any` when it
/// skips them).
const UNDECODED: Bucket = Bucket {
    end_ms: 0,
    count: 0,
    first: Sample {
        timestamp_ms: 0,
        value: f64::NAN,
    },
    last: Sample {
        timestamp_ms: 0,
        value: f64::NAN,
    },
    last_any: Sample {
        timestamp_ms: 0,
        value: f64::NAN,
    },
    min: f64::NAN,
    max: f64::NAN,
    sum: f64::NAN,
    resets: 0,
    reset_correction: f64::NAN,
};

fn decode_columnar<const ALL: bool>(
    blob: &[u8],
    out: &mut Vec<Bucket>,
) -> Result<(), ChunkDecodeError> {
    if blob.get(1) != Some(&COLUMNAR_VERSION) {
        return Err(ChunkDecodeError::Corrupt { offset: 1 });
    }
    let mut offset = 2;
    let count = read_varint(blob, &mut offset)?;
    if count > MAX_COLUMNAR_BUCKETS as u64 {
        return Err(ChunkDecodeError::Corrupt { offset: 2 });
    }
    let start = out.len();
    out.resize(start + count as usize, UNDECODED);
    let buckets = &mut out[start..];
    let column = next_column(blob, &mut offset)?;
    decode_int_column(blob, column, buckets, |bucket, end| bucket.end_ms = end)?;
    let column = next_column(blob, &mut offset)?;
    decode_int_column(blob, column, buckets, |bucket, count| {
        bucket.count = count as u64;
    })?;
    let column = next_column(blob, &mut offset)?;
    decode_int_column(blob, column, buckets, |bucket, resets| {
        bucket.resets = resets as u64;
    })?;
    let column = next_column(blob, &mut offset)?;
    decode_int_column(blob, column, buckets, |bucket, back| {
        bucket.first.timestamp_ms = bucket.end_ms.wrapping_sub(back);
    })?;
    let column = next_column(blob, &mut offset)?;
    decode_int_column(blob, column, buckets, |bucket, back| {
        bucket.last.timestamp_ms = bucket.end_ms.wrapping_sub(back);
    })?;
    let column = next_column(blob, &mut offset)?;
    if ALL {
        decode_int_column(blob, column, buckets, |bucket, back| {
            bucket.last_any.timestamp_ms = bucket.end_ms.wrapping_sub(back);
        })?;
    }
    let column = next_column(blob, &mut offset)?;
    decode_float_column(blob, column, 0, buckets, |bucket, value| {
        bucket.first.value = value;
    })?;
    let column = next_column(blob, &mut offset)?;
    decode_float_column(blob, column, 1, buckets, |bucket, value| {
        bucket.last.value = value;
    })?;
    // The newest sample and the sum are skipped unless ALL.
    let column = next_column(blob, &mut offset)?;
    if ALL {
        decode_float_column(blob, column, 2, buckets, |bucket, value| {
            bucket.last_any.value = value;
        })?;
    }
    let column = next_column(blob, &mut offset)?;
    decode_float_column(blob, column, 3, buckets, |bucket, value| bucket.min = value)?;
    let column = next_column(blob, &mut offset)?;
    decode_float_column(blob, column, 4, buckets, |bucket, value| bucket.max = value)?;
    let column = next_column(blob, &mut offset)?;
    if ALL {
        decode_float_column(blob, column, 5, buckets, |bucket, value| bucket.sum = value)?;
    }
    let column = next_column(blob, &mut offset)?;
    decode_float_column(blob, column, 6, buckets, |bucket, value| {
        bucket.reset_correction = value;
    })?;
    if offset != blob.len() {
        return Err(ChunkDecodeError::Corrupt { offset });
    }
    if !ALL {
        for bucket in buckets {
            bucket.last_any = bucket.last;
        }
    }
    Ok(())
}

/// Reads a column's length and returns its byte range, moving `offset` past it.
fn next_column(
    blob: &[u8],
    offset: &mut usize,
) -> Result<std::ops::Range<usize>, ChunkDecodeError> {
    let length = read_varint(blob, offset)?;
    let begin = *offset;
    let end = usize::try_from(length)
        .ok()
        .and_then(|length| begin.checked_add(length))
        .filter(|end| *end <= blob.len())
        .ok_or(ChunkDecodeError::Truncated { offset: begin })?;
    *offset = end;
    Ok(begin..end)
}

/// Reads the layout byte at the start of a column.
fn column_layout(blob: &[u8], column: &std::ops::Range<usize>) -> Result<u8, ChunkDecodeError> {
    blob.get(column.clone())
        .and_then(|body| body.first().copied())
        .ok_or(ChunkDecodeError::Truncated {
            offset: column.start,
        })
}

#[inline(always)]
fn decode_int_column(
    blob: &[u8],
    column: std::ops::Range<usize>,
    buckets: &mut [Bucket],
    set: impl Fn(&mut Bucket, i64),
) -> Result<(), ChunkDecodeError> {
    let layout = column_layout(blob, &column)?;
    // Reads stay inside the column.
    let body = &blob[..column.end];
    let mut offset = column.start + 1;
    match layout {
        INT_ARITHMETIC => {
            let mut value = unzigzag(read_varint(body, &mut offset)?);
            let step = unzigzag(read_varint(body, &mut offset)?);
            for bucket in buckets.iter_mut() {
                set(bucket, value);
                value = value.wrapping_add(step);
            }
        }
        INT_DELTAS => {
            let mut value: i64 = 0;
            for bucket in buckets.iter_mut() {
                value = value.wrapping_add(unzigzag(read_varint(body, &mut offset)?));
                set(bucket, value);
            }
        }
        _ => {
            return Err(ChunkDecodeError::Corrupt {
                offset: column.start,
            })
        }
    }
    if offset != column.end {
        return Err(ChunkDecodeError::Corrupt { offset });
    }
    Ok(())
}

#[inline(always)]
fn decode_float_column(
    blob: &[u8],
    column: std::ops::Range<usize>,
    field: usize,
    buckets: &mut [Bucket],
    set: impl Fn(&mut Bucket, f64),
) -> Result<(), ChunkDecodeError> {
    let layout = column_layout(blob, &column)?;
    let body = &blob[..column.end];
    let mut offset = column.start + 1;
    match layout {
        FLOAT_CONSTANT => {
            let bytes = body
                .get(offset..offset + 8)
                .ok_or(ChunkDecodeError::Truncated { offset })?;
            let mut bits = [0u8; 8];
            bits.copy_from_slice(bytes);
            offset += 8;
            let value = f64::from_bits(u64::from_le_bytes(bits));
            for bucket in buckets.iter_mut() {
                set(bucket, value);
            }
        }
        FLOAT_INTEGERS => {
            let mut value: i64 = 0;
            for bucket in buckets.iter_mut() {
                value = value.wrapping_add(unzigzag(read_varint(body, &mut offset)?));
                set(bucket, value as f64);
            }
        }
        FLOAT_XOR => {
            let mut values = FloatColumn::default();
            for bucket in buckets.iter_mut() {
                set(bucket, values.read(body, &mut offset)?);
            }
        }
        // A copy of the first values, for any column after them; of the last values, for
        // any column after those.
        FLOAT_SAME_AS_FIRST if field > 0 => {
            for bucket in buckets.iter_mut() {
                let value = bucket.first.value;
                set(bucket, value);
            }
        }
        FLOAT_SAME_AS_LAST if field > 1 => {
            for bucket in buckets.iter_mut() {
                let value = bucket.last.value;
                set(bucket, value);
            }
        }
        _ => {
            return Err(ChunkDecodeError::Corrupt {
                offset: column.start,
            })
        }
    }
    if offset != column.end {
        return Err(ChunkDecodeError::Corrupt { offset });
    }
    Ok(())
}

fn decode_interleaved<const ALL: bool>(
    blob: &[u8],
    out: &mut Vec<Bucket>,
) -> Result<(), ChunkDecodeError> {
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

    /// Every field, floats bit for bit.
    fn bits(bucket: &Bucket) -> (i64, u64, u64, [(i64, u64); 3], [u64; FLOAT_FIELDS - 3]) {
        (
            bucket.end_ms,
            bucket.count,
            bucket.resets,
            [bucket.first, bucket.last, bucket.last_any]
                .map(|sample| (sample.timestamp_ms, sample.value.to_bits())),
            [bucket.min, bucket.max, bucket.sum, bucket.reset_correction].map(f64::to_bits),
        )
    }

    fn regular_counter(buckets: i64) -> Vec<Bucket> {
        let input: Vec<Sample> = (1..=buckets * 6)
            .map(|index| Sample {
                timestamp_ms: 1_700_000_040_000 + index * 10_000,
                value: (index * 7) as f64,
            })
            .collect();
        buckets_from_samples(&input, 60_000)
    }

    #[test]
    fn a_regular_counter_takes_about_half_the_bytes_of_the_interleaved_layout() {
        let buckets = regular_counter(120);
        assert_eq!(buckets.len(), 120);
        let (columnar, interleaved) = (encode_buckets(&buckets), encode_interleaved(&buckets));
        assert!(
            columnar.len() * 2 <= interleaved.len(),
            "{} columnar bytes, {} interleaved",
            columnar.len(),
            interleaved.len()
        );
        let mut decoded = Vec::new();
        decode_buckets(&columnar, &mut decoded).unwrap();
        assert_eq!(decoded, buckets);
    }

    #[test]
    fn only_values_that_convert_back_bit_for_bit_are_whole_numbers() {
        assert_eq!(whole_number(3.0), Some(3));
        assert_eq!(whole_number(-9_007_199_254_740_992.0), Some(-(1 << 53)));
        for value in [-0.0, 0.5, f64::NAN, f64::INFINITY, 18_014_398_509_481_984.0] {
            assert_eq!(whole_number(value), None, "{value}");
        }
    }

    #[test]
    fn a_bad_blob_is_an_error_and_leaves_the_buckets_decoded_before_it() {
        let blob = encode_buckets(&regular_counter(3));
        let mut decoded = Vec::new();
        decode_buckets(&blob, &mut decoded).unwrap();
        for bad in [
            &blob[..blob.len() - 1],
            &[COLUMNAR_TAG, COLUMNAR_VERSION + 1, 1][..],
            // A count over the columnar limit, with columns that would fill any count.
            &[COLUMNAR_TAG, COLUMNAR_VERSION, 0x81, 0x80, 0x04][..],
        ] {
            assert!(decode_buckets(bad, &mut decoded).is_err());
            assert!(decode_bucket_statistics(bad, &mut decoded).is_err());
            assert_eq!(decoded.len(), 3);
        }
        let mut trailing = blob.clone();
        trailing.push(0);
        assert_eq!(
            decode_buckets(&trailing, &mut decoded),
            Err(ChunkDecodeError::Corrupt { offset: blob.len() })
        );
    }

    proptest! {
        #[test]
        fn encoding_round_trips(
            pairs in proptest::collection::vec((0i64..100_000, prop_oneof![Just(0.0f64), Just(-0.0f64), Just(f64::NAN), Just(vigil_model::stale_marker()), any::<f64>()]), 0..64)
        ) {
            let mut input = samples(&pairs);
            input.sort_by_key(|sample| sample.timestamp_ms);
            let buckets = buckets_from_samples(&input, 1_000);
            let mut decoded = Vec::new();
            decode_buckets(&encode_buckets(&buckets), &mut decoded).unwrap();
            prop_assert_eq!(decoded.len(), buckets.len());
            for (left, right) in decoded.iter().zip(&buckets) {
                prop_assert_eq!(bits(left), bits(right));
            }
        }

        #[test]
        fn whole_numbers_round_trip(
            pairs in proptest::collection::vec((0i64..100_000, prop_oneof![
                -1_000i64..1_000,
                Just(1i64 << 53),
                Just(-(1i64 << 53)),
                -(1i64 << 53)..(1i64 << 53),
            ]), 0..64)
        ) {
            let mut input: Vec<Sample> = pairs
                .iter()
                .map(|&(timestamp_ms, value)| Sample { timestamp_ms, value: value as f64 })
                .collect();
            input.sort_by_key(|sample| sample.timestamp_ms);
            let buckets = buckets_from_samples(&input, 1_000);
            let mut decoded = Vec::new();
            decode_buckets(&encode_buckets(&buckets), &mut decoded).unwrap();
            prop_assert_eq!(decoded.len(), buckets.len());
            for (left, right) in decoded.iter().zip(&buckets) {
                prop_assert_eq!(bits(left), bits(right));
            }
        }

        #[test]
        fn blobs_of_the_earlier_interleaved_layout_decode_to_the_same_buckets(
            pairs in proptest::collection::vec((0i64..100_000, prop_oneof![Just(0.0f64), Just(f64::NAN), any::<f64>()]), 0..64)
        ) {
            let mut input = samples(&pairs);
            input.sort_by_key(|sample| sample.timestamp_ms);
            let buckets = buckets_from_samples(&input, 1_000);
            let (columnar, interleaved) = (encode_buckets(&buckets), encode_interleaved(&buckets));
            for decode in [decode_buckets, decode_bucket_statistics] {
                let (mut left, mut right) = (Vec::new(), Vec::new());
                decode(&columnar, &mut left).unwrap();
                decode(&interleaved, &mut right).unwrap();
                prop_assert_eq!(left.len(), buckets.len());
                prop_assert_eq!(right.len(), buckets.len());
                for (left, right) in left.iter().zip(&right) {
                    prop_assert_eq!(bits(left), bits(right));
                }
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
            // The same bytes behind the columnar header, to reach its column decoders.
            let columnar = [&[COLUMNAR_TAG, COLUMNAR_VERSION][..], &blob].concat();
            let _ = decode_buckets(&columnar, &mut decoded);
            let _ = decode_bucket_statistics(&columnar, &mut decoded);
        }

        #[test]
        fn decoding_damaged_columnar_blobs_never_panics(
            pairs in proptest::collection::vec((0i64..100_000, any::<f64>()), 1..32),
            damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut input = samples(&pairs);
            input.sort_by_key(|sample| sample.timestamp_ms);
            let mut blob = encode_buckets(&buckets_from_samples(&input, 1_000));
            for (at, byte) in damage {
                let at = at.index(blob.len());
                blob[at] = byte;
            }
            blob.truncate(cut.index(blob.len() + 1));
            let mut decoded = Vec::new();
            let _ = decode_buckets(&blob, &mut decoded);
            let _ = decode_bucket_statistics(&blob, &mut decoded);
        }
    }
}
