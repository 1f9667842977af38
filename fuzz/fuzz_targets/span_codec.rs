//! Fuzzes the span store's decoders of what it reads back from disk (a chunk of span bodies,
//! the packed index entries of a `span_groups` row, the correlation values of a chunk): a
//! damaged or foreign file must give an error, never a panic; and what decodes, encoded again,
//! decodes to the same value.
//!
//! Run: `cargo +nightly fuzz run span_codec` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_traces::codec::{
    decode_chunk, decode_correlation_values, decode_span_index, encode_chunk,
    encode_correlation_values, encode_span_index,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(spans) = decode_chunk(data) {
        if let Some(first) = spans.first() {
            let trace_id = first.trace_id;
            if spans.iter().all(|span| span.trace_id == trace_id) {
                let references: Vec<_> = spans.iter().collect();
                let encoded = encode_chunk(trace_id, &references).expect("chunk encodes");
                assert_eq!(decode_chunk(&encoded).expect("chunk decodes again"), spans);
            }
        }
    }
    if let Ok(entries) = decode_span_index(data) {
        let encoded = encode_span_index(&entries).expect("index entries encode");
        assert_eq!(decode_span_index(&encoded).expect("entries decode again"), entries);
    }
    if let Ok(values) = decode_correlation_values(data) {
        let encoded = encode_correlation_values(&values).expect("values encode");
        assert_eq!(decode_correlation_values(&encoded).expect("values decode again"), values);
    }
});
