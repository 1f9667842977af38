//! The compressed encoding of a run of float samples: one blob per series per time block.
//!
//! Layout: `count` (varint), then per sample a timestamp and a value. Timestamps are
//! delta-of-delta encoded as zig-zag varints (regular intervals cost one byte). Values are XORed
//! with the previous value and written as a control byte (leading and trailing zero bytes of the
//! XOR) followed by the remaining bytes, so an unchanged value costs one byte and a slowly
//! changing counter about three to five. Byte-aligned rather than bit-aligned like Gorilla:
//! slightly larger, much simpler and faster to decode.

use vigil_model::Sample;

/// A blob that is not a valid chunk.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChunkDecodeError {
    /// The blob ends in the middle of a sample.
    #[error("chunk truncated at byte {offset}")]
    Truncated {
        /// Where the data ran out.
        offset: usize,
    },
    /// A control byte or varint is out of range.
    #[error("chunk corrupt at byte {offset}")]
    Corrupt {
        /// Where the bad byte is.
        offset: usize,
    },
}

/// Encodes samples (in timestamp order) into a chunk.
pub fn encode_chunk(samples: &[Sample]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 4 + 16);
    write_varint(&mut out, samples.len() as u64);
    let mut previous_timestamp: i64 = 0;
    let mut previous_delta: i64 = 0;
    let mut values = FloatColumn::default();
    for sample in samples {
        let delta = sample.timestamp_ms.wrapping_sub(previous_timestamp);
        write_varint(&mut out, zigzag(delta.wrapping_sub(previous_delta)));
        previous_delta = delta;
        previous_timestamp = sample.timestamp_ms;

        values.write(&mut out, sample.value);
    }
    out
}

/// Decodes a chunk, appending its samples to `out`.
///
/// # Errors
/// [`ChunkDecodeError`] when the blob is truncated or corrupt; `out` may then hold a prefix.
pub fn decode_chunk(blob: &[u8], out: &mut Vec<Sample>) -> Result<(), ChunkDecodeError> {
    let mut offset = 0;
    let count = read_varint(blob, &mut offset)?;
    if count > blob.len() as u64 {
        return Err(ChunkDecodeError::Corrupt { offset: 0 });
    }
    out.reserve(count as usize);
    let mut previous_timestamp: i64 = 0;
    let mut previous_delta: i64 = 0;
    let mut values = FloatColumn::default();
    for _ in 0..count {
        let delta = previous_delta.wrapping_add(unzigzag(read_varint(blob, &mut offset)?));
        previous_delta = delta;
        previous_timestamp = previous_timestamp.wrapping_add(delta);

        out.push(Sample {
            timestamp_ms: previous_timestamp,
            value: values.read(blob, &mut offset)?,
        });
    }
    Ok(())
}

/// A run of floats, each XORed with the previous one and written as a control byte (the XOR's
/// leading zero bytes in the high nibble, trailing ones in the low nibble; `0xff` for an
/// unchanged value) followed by the bytes between them.
#[derive(Default)]
pub struct FloatColumn {
    previous_bits: u64,
}

impl FloatColumn {
    /// Appends the next value.
    pub fn write(&mut self, out: &mut Vec<u8>, value: f64) {
        let bits = value.to_bits();
        let xor = bits ^ self.previous_bits;
        self.previous_bits = bits;
        if xor == 0 {
            out.push(0xff);
            return;
        }
        let leading_bytes = (xor.leading_zeros() / 8) as usize;
        let trailing_bytes = (xor.trailing_zeros() / 8) as usize;
        out.push(((leading_bytes as u8) << 4) | trailing_bytes as u8);
        out.extend_from_slice(&xor.to_be_bytes()[leading_bytes..8 - trailing_bytes]);
    }

    /// Reads the next value at `offset` and moves past it.
    ///
    /// # Errors
    /// [`ChunkDecodeError`] when the blob is truncated or the control byte is out of range.
    #[inline]
    pub fn read(&mut self, blob: &[u8], offset: &mut usize) -> Result<f64, ChunkDecodeError> {
        let control = *blob
            .get(*offset)
            .ok_or(ChunkDecodeError::Truncated { offset: *offset })?;
        *offset += 1;
        if control != 0xff {
            let leading_bytes = usize::from(control >> 4);
            let trailing_bytes = usize::from(control & 0x0f);
            if leading_bytes + trailing_bytes > 8 {
                return Err(ChunkDecodeError::Corrupt {
                    offset: *offset - 1,
                });
            }
            let width = 8 - leading_bytes - trailing_bytes;
            self.previous_bits ^= read_xor_bytes(blob, *offset, width, trailing_bytes)?;
            *offset += width;
        }
        Ok(f64::from_bits(self.previous_bits))
    }
}

impl FloatColumn {
    /// Moves past the next value without computing it. The column can no longer be read
    /// afterwards (the XOR chain is broken): skip a column throughout or not at all.
    ///
    /// # Errors
    /// [`ChunkDecodeError`] when the blob is truncated or the control byte is out of range.
    #[inline]
    pub fn skip(&mut self, blob: &[u8], offset: &mut usize) -> Result<(), ChunkDecodeError> {
        let control = *blob
            .get(*offset)
            .ok_or(ChunkDecodeError::Truncated { offset: *offset })?;
        *offset += 1;
        if control != 0xff {
            let width = 8usize
                .checked_sub(usize::from(control >> 4) + usize::from(control & 0x0f))
                .filter(|width| *width > 0)
                .ok_or(ChunkDecodeError::Corrupt {
                    offset: *offset - 1,
                })?;
            if *offset + width > blob.len() {
                return Err(ChunkDecodeError::Truncated { offset: *offset });
            }
            *offset += width;
        }
        Ok(())
    }
}

/// Reads the `width` significant bytes of an XOR written by the encoders here and shifts them
/// into place above `trailing_bytes` zero bytes. One unaligned 8-byte load when the blob has
/// room, rather than a variable-length copy per value.
#[inline]
pub fn read_xor_bytes(
    blob: &[u8],
    offset: usize,
    width: usize,
    trailing_bytes: usize,
) -> Result<u64, ChunkDecodeError> {
    if width == 0 || width + trailing_bytes > 8 {
        return Err(ChunkDecodeError::Corrupt { offset });
    }
    let significant = if let Some(word) = blob.get(offset..offset + 8) {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(word);
        u64::from_be_bytes(bytes) >> (64 - 8 * width)
    } else {
        let payload = blob
            .get(offset..offset + width)
            .ok_or(ChunkDecodeError::Truncated { offset })?;
        payload
            .iter()
            .fold(0u64, |value, byte| (value << 8) | u64::from(*byte))
    };
    Ok(significant << (8 * trailing_bytes))
}

/// Appends an unsigned LEB128 varint.
pub fn write_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads an unsigned LEB128 varint at `offset`, advancing it.
///
/// # Errors
/// [`ChunkDecodeError`] when the varint is truncated or longer than 64 bits.
#[inline]
pub fn read_varint(blob: &[u8], offset: &mut usize) -> Result<u64, ChunkDecodeError> {
    // Most varints here are one byte (regular intervals, small counts).
    if let Some(&byte) = blob.get(*offset) {
        if byte < 0x80 {
            *offset += 1;
            return Ok(u64::from(byte));
        }
    }
    read_varint_slow(blob, offset)
}

#[inline(never)]
fn read_varint_slow(blob: &[u8], offset: &mut usize) -> Result<u64, ChunkDecodeError> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let byte = *blob
            .get(*offset)
            .ok_or(ChunkDecodeError::Truncated { offset: *offset })?;
        *offset += 1;
        if shift == 63 && byte > 1 {
            return Err(ChunkDecodeError::Corrupt {
                offset: *offset - 1,
            });
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 63 {
            return Err(ChunkDecodeError::Corrupt {
                offset: *offset - 1,
            });
        }
    }
}

/// Maps a signed integer to an unsigned one so small magnitudes stay small.
pub fn zigzag(value: i64) -> u64 {
    ((value << 1) ^ (value >> 63)) as u64
}

/// Inverts [`zigzag`].
pub fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
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
    fn regular_counter_costs_few_bytes_per_sample() {
        let input: Vec<Sample> = (0..1000)
            .map(|index| Sample {
                timestamp_ms: 1_700_000_000_000 + index * 10_000,
                value: (index * 7) as f64,
            })
            .collect();
        let blob = encode_chunk(&input);
        assert!(blob.len() < input.len() * 5, "{} bytes", blob.len());
        let mut decoded = Vec::new();
        decode_chunk(&blob, &mut decoded).unwrap();
        assert_eq!(decoded, input);
    }

    #[test]
    fn special_values_survive_bit_for_bit() {
        let input = samples(&[
            (0, f64::NAN),
            (1, vigil_model::stale_marker()),
            (2, f64::INFINITY),
            (3, f64::NEG_INFINITY),
            (-5, -0.0),
        ]);
        let mut decoded = Vec::new();
        decode_chunk(&encode_chunk(&input), &mut decoded).unwrap();
        let bits: Vec<u64> = decoded
            .iter()
            .map(|sample| sample.value.to_bits())
            .collect();
        let expected: Vec<u64> = input.iter().map(|sample| sample.value.to_bits()).collect();
        assert_eq!(bits, expected);
        assert_eq!(decoded[4].timestamp_ms, -5);
    }

    #[test]
    fn truncated_chunk_is_an_error() {
        let blob = encode_chunk(&samples(&[(1, 1.5), (2, 2.5)]));
        let mut decoded = Vec::new();
        assert!(decode_chunk(&blob[..blob.len() - 1], &mut decoded).is_err());
    }

    proptest! {
        #[test]
        fn encode_decode_round_trips(
            pairs in proptest::collection::vec(
                (prop_oneof![Just(0i64), Just(i64::MIN), Just(i64::MAX), any::<i64>()],
                 prop_oneof![Just(0.0f64), Just(f64::MAX), Just(f64::MIN_POSITIVE), any::<f64>()]),
                0..64)
        ) {
            let input = samples(&pairs);
            let mut decoded = Vec::new();
            decode_chunk(&encode_chunk(&input), &mut decoded).unwrap();
            prop_assert_eq!(decoded.len(), input.len());
            for (left, right) in decoded.iter().zip(&input) {
                prop_assert_eq!(left.timestamp_ms, right.timestamp_ms);
                prop_assert_eq!(left.value.to_bits(), right.value.to_bits());
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(blob in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut decoded = Vec::new();
            let _ = decode_chunk(&blob, &mut decoded);
        }
    }
}
