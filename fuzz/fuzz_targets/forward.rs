//! Fuzzes the Fluentd forward decoder: the resumable frame scanner fed the input in two reads,
//! then the frame decoder (all four modes, gzip included) on every complete frame. Neither may
//! panic, and a small limit keeps allocation bounded whatever lengths the bytes declare.
//!
//! Run: `cargo +nightly fuzz run forward` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_collector::sources::forward::scan::ValueScanner;
use vigil_collector::sources::forward::{decode_frame, DecodeLimits};

fuzz_target!(|data: &[u8]| {
    let limits = DecodeLimits {
        max_entry_bytes: 4_096,
        max_decompressed_bytes: 1 << 20,
        ..DecodeLimits::default()
    };
    let split = data
        .first()
        .map_or(0, |byte| usize::from(*byte))
        .min(data.len());
    let mut scanner = ValueScanner::new(64 << 10);
    let mut offset = 0;
    let mut end = split;
    loop {
        match scanner.scan(&data[offset..end]) {
            Ok(Some(length)) => {
                assert!(offset + length <= end);
                if let Ok(decoded) = decode_frame(
                    &data[offset..offset + length],
                    1_700_000_000_000_000_000,
                    &limits,
                ) {
                    assert!(decoded.entry_count() >= decoded.records.len() as u64);
                }
                offset += length;
                scanner.reset();
            }
            Ok(None) if end < data.len() => end = data.len(),
            Ok(None) | Err(_) => break,
        }
    }
});
