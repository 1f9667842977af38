//! Fuzzes the StatsD datagram parser and the aggregator behind it: no input may panic, and
//! every line the fast path reads is read as the same one sample by the general parser.
//!
//! Run: `cargo +nightly fuzz run statsd_line` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_collector::sources::statsd::parser::{
    fast_sample, fast_sample_at, for_each_sample, lines, ParseError,
};
use vigil_collector::sources::statsd::{
    parse_datagram, Aggregator, AggregatorSettings, Flusher, Mapper,
};

fuzz_target!(|data: &[u8]| {
    let _ = parse_datagram(data);
    for line in lines(data) {
        let Some(fast) = fast_sample(line) else {
            continue;
        };
        let mut general = Vec::new();
        for_each_sample(line, |sample| general.push(sample));
        match std::str::from_utf8(line) {
            Ok(_) => {
                let [Ok(sample)] = general.as_slice() else {
                    panic!("fast path read {fast:?}, general parser {general:?}");
                };
                assert_eq!(sample.name_section.as_bytes(), fast.name_section);
                assert_eq!(sample.dogstatsd_tags.as_bytes(), fast.dogstatsd_tags);
                assert_eq!(sample.kind, fast.kind);
                assert_eq!(sample.value, fast.value);
            }
            Err(_) => assert_eq!(general, [Err(ParseError::InvalidUtf8)]),
        }
    }
    // Reading a line in place finds the line `lines` splits off, and the same sample.
    let mut rest = data;
    while !rest.is_empty() {
        let next = match fast_sample_at(rest) {
            Some((sample, length)) => {
                assert_eq!(lines(rest).next(), rest.get(..length));
                assert_eq!(fast_sample(&rest[..length]), Some(sample));
                length + 1
            }
            None => memchr_position(rest).map_or(rest.len(), |end| end + 1),
        };
        rest = rest.get(next..).unwrap_or_default();
    }
    let mut aggregator = Aggregator::new(AggregatorSettings::new(Mapper::default(), &[0.5, 0.99]));
    aggregator.ingest_datagram(data, 1);
    let _ = Flusher::new().flush(vec![aggregator.take_interval()], 0);
});

fn memchr_position(text: &[u8]) -> Option<usize> {
    text.iter().position(|byte| *byte == b'\n')
}
