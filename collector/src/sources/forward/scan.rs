//! Finds where one MessagePack value ends in a byte stream, without allocating: the frame
//! boundary of the forward protocol (a TCP stream of concatenated MessagePack arrays) and the
//! size of each entry before it is decoded.
//!
//! The scanner is resumable: fed a growing buffer, it continues where it stopped, so a frame
//! that arrives in many reads is walked once. A declared length that cannot fit in the frame
//! limit fails at once, so a five-byte header claiming four billion elements allocates nothing.

use rmp::Marker;

/// Why a byte stream is not a usable MessagePack value.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// The value is longer than the limit (or declares more elements than could fit in it).
    #[error("value exceeds the limit of {limit} bytes")]
    TooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// A byte that MessagePack never uses as a type marker (0xc1).
    #[error("invalid MessagePack marker 0x{marker:02x} at byte {offset}")]
    InvalidMarker {
        /// The marker byte.
        marker: u8,
        /// Its offset from the start of the value.
        offset: usize,
    },
}

/// Walks one MessagePack value at the start of a buffer.
#[derive(Clone, Debug)]
pub struct ValueScanner {
    limit: usize,
    /// Bytes of the value walked so far.
    position: usize,
    /// Values still to walk (1 for the value itself, plus the elements of open containers).
    pending: u64,
}

impl ValueScanner {
    /// Returns a scanner refusing values longer than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        ValueScanner {
            limit,
            position: 0,
            pending: 1,
        }
    }

    /// Starts over for the next value.
    pub fn reset(&mut self) {
        self.position = 0;
        self.pending = 1;
    }

    /// Continues walking the value at the start of `buffer` (the same bytes as the previous
    /// call, possibly with more appended). Returns its length once it is complete, `None`
    /// while more bytes are needed.
    ///
    /// # Errors
    /// [`ScanError`] when the value is too large or holds an invalid marker.
    pub fn scan(&mut self, buffer: &[u8]) -> Result<Option<usize>, ScanError> {
        while self.pending > 0 {
            if self.position >= buffer.len() {
                return Ok(None);
            }
            let (header_len, payload_len, elements) = match header(buffer, self.position)? {
                Some(header) => header,
                None => return Ok(None),
            };
            let value_end = self
                .position
                .saturating_add(header_len)
                .saturating_add(payload_len);
            // Every pending element takes at least one byte.
            let minimum_end = (value_end as u64)
                .saturating_add(elements)
                .saturating_add(self.pending - 1);
            if minimum_end > self.limit as u64 {
                return Err(ScanError::TooLarge { limit: self.limit });
            }
            if value_end > buffer.len() {
                return Ok(None);
            }
            self.position = value_end;
            self.pending = self.pending - 1 + elements;
        }
        Ok(Some(self.position))
    }
}

/// Returns the length of the complete MessagePack value at the start of `bytes`, or `None`
/// when it is incomplete, invalid or longer than `bytes`.
pub fn value_length(bytes: &[u8]) -> Option<usize> {
    ValueScanner::new(bytes.len()).scan(bytes).ok().flatten()
}

/// Reads the header at `offset`: (header bytes including the marker, payload bytes, child
/// values). `None` when the header itself is not complete yet.
fn header(buffer: &[u8], offset: usize) -> Result<Option<(usize, usize, u64)>, ScanError> {
    let marker_byte = buffer[offset];
    let rest = &buffer[offset + 1..];
    let be = |width: usize| -> Option<usize> {
        let bytes = rest.get(..width)?;
        Some(
            bytes
                .iter()
                .fold(0usize, |acc, &byte| (acc << 8) | usize::from(byte)),
        )
    };
    let scalar = |len: usize| Ok(Some((1 + len, 0, 0)));
    let sized = |width: usize, extra: usize| match be(width) {
        Some(len) => Ok(Some((1 + width + extra, len, 0))),
        None => Ok(None),
    };
    let container = |width: usize, per_entry: u64| match be(width) {
        Some(len) => Ok(Some((1 + width, 0, len as u64 * per_entry))),
        None => Ok(None),
    };
    match Marker::from_u8(marker_byte) {
        Marker::FixPos(_) | Marker::FixNeg(_) | Marker::Null | Marker::True | Marker::False => {
            scalar(0)
        }
        Marker::U8 | Marker::I8 => scalar(1),
        Marker::U16 | Marker::I16 => scalar(2),
        Marker::U32 | Marker::I32 | Marker::F32 => scalar(4),
        Marker::U64 | Marker::I64 | Marker::F64 => scalar(8),
        Marker::FixStr(len) => Ok(Some((1, usize::from(len), 0))),
        Marker::Str8 | Marker::Bin8 => sized(1, 0),
        Marker::Str16 | Marker::Bin16 => sized(2, 0),
        Marker::Str32 | Marker::Bin32 => sized(4, 0),
        Marker::FixArray(len) => Ok(Some((1, 0, u64::from(len)))),
        Marker::Array16 => container(2, 1),
        Marker::Array32 => container(4, 1),
        Marker::FixMap(len) => Ok(Some((1, 0, u64::from(len) * 2))),
        Marker::Map16 => container(2, 2),
        Marker::Map32 => container(4, 2),
        // Fixed extensions: marker, type byte, data.
        Marker::FixExt1 => scalar(2),
        Marker::FixExt2 => scalar(3),
        Marker::FixExt4 => scalar(5),
        Marker::FixExt8 => scalar(9),
        Marker::FixExt16 => scalar(17),
        // Extensions: marker, length, type byte, data.
        Marker::Ext8 => sized(1, 1),
        Marker::Ext16 => sized(2, 1),
        Marker::Ext32 => sized(4, 1),
        Marker::Reserved => Err(ScanError::InvalidMarker {
            marker: marker_byte,
            offset,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &rmpv::Value) -> Vec<u8> {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, value).unwrap();
        bytes
    }

    #[test]
    fn finds_the_end_of_nested_values() {
        let value = rmpv::Value::Array(vec![
            rmpv::Value::from("app.web"),
            rmpv::Value::Ext(0, vec![0, 0, 0, 1, 0, 0, 0, 2]),
            rmpv::Value::Map(vec![(
                rmpv::Value::from("log"),
                rmpv::Value::from("x".repeat(300)),
            )]),
        ]);
        let mut bytes = encoded(&value);
        let length = bytes.len();
        bytes.extend_from_slice(&[0x93, 0x01]);
        assert_eq!(value_length(&bytes), Some(length));
    }

    #[test]
    fn resumes_across_partial_reads() {
        let value = rmpv::Value::Array(vec![rmpv::Value::from("tag"); 40]);
        let bytes = encoded(&value);
        let mut scanner = ValueScanner::new(1 << 20);
        for end in 0..bytes.len() {
            assert_eq!(scanner.scan(&bytes[..end]), Ok(None), "at {end}");
        }
        assert_eq!(scanner.scan(&bytes), Ok(Some(bytes.len())));
    }

    #[test]
    fn a_huge_declared_length_fails_at_once() {
        // array32 claiming 2^32 - 1 elements, then nothing.
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff];
        let mut scanner = ValueScanner::new(8 << 20);
        assert_eq!(
            scanner.scan(&bytes),
            Err(ScanError::TooLarge { limit: 8 << 20 })
        );
        let bytes = [0xdb, 0xff, 0xff, 0xff, 0xf0];
        assert_eq!(
            ValueScanner::new(1024).scan(&bytes),
            Err(ScanError::TooLarge { limit: 1024 })
        );
    }

    #[test]
    fn the_reserved_marker_is_invalid() {
        assert_eq!(
            ValueScanner::new(1024).scan(&[0x92, 0x01, 0xc1]),
            Err(ScanError::InvalidMarker {
                marker: 0xc1,
                offset: 2
            })
        );
    }
}
