//! The forward decoder on frames built as the clients build them, its properties on arbitrary
//! bytes, and the listener on a real socket.

use std::io::Write;

use proptest::prelude::*;
use rmpv::Value as Msgpack;
use vigil_model::MemoryLogSink;

use super::*;

const RECEIVE_NS: i64 = 1_700_000_000_000_000_000;

fn encode(value: &Msgpack) -> Vec<u8> {
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, value).unwrap();
    bytes
}

fn event_time(seconds: u32, nanos: u32) -> Msgpack {
    let mut bytes = seconds.to_be_bytes().to_vec();
    bytes.extend_from_slice(&nanos.to_be_bytes());
    Msgpack::Ext(0, bytes)
}

fn map(pairs: &[(&str, &str)]) -> Msgpack {
    Msgpack::Map(
        pairs
            .iter()
            .map(|(key, value)| (Msgpack::from(*key), Msgpack::from(*value)))
            .collect(),
    )
}

fn decode(frame: &[u8]) -> DecodedFrame {
    decode_frame(frame, RECEIVE_NS, &DecodeLimits::default()).unwrap()
}

#[test]
fn message_mode_with_integer_time_takes_the_tag_as_service() {
    let frame = encode(&Msgpack::Array(vec![
        Msgpack::from("billing"),
        Msgpack::from(1_714_564_800),
        map(&[("message", "invoice sent"), ("level", "WARNING")]),
    ]));
    let decoded = decode(&frame);
    assert_eq!(decoded.records.len(), 1);
    let record = &decoded.records[0];
    assert_eq!(record.service, "billing");
    assert_eq!(record.level, "warn");
    assert_eq!(record.message, "invoice sent");
    assert_eq!(record.timestamp_ns, 1_714_564_800_000_000_000);
    assert_eq!(record.attributes["tag"], "billing");
    assert_eq!(decoded.chunk, None);
}

#[test]
fn event_time_keeps_nanoseconds_and_a_nil_option_is_no_option() {
    let frame = encode(&Msgpack::Array(vec![
        Msgpack::from("docker.abc"),
        event_time(1_714_564_800, 123_456_789),
        map(&[("log", "ready"), ("container_name", "/orders-api")]),
        Msgpack::Nil,
    ]));
    let decoded = decode(&frame);
    let record = &decoded.records[0];
    assert_eq!(record.timestamp_ns, 1_714_564_800_123_456_789);
    assert_eq!(record.service, "orders-api");
    assert_eq!(record.message, "ready");
}

#[test]
fn forward_mode_with_chunk_and_fluent_bit_metadata() {
    let frame = encode(&Msgpack::Array(vec![
        Msgpack::from("app"),
        Msgpack::Array(vec![
            Msgpack::Array(vec![Msgpack::from(1_714_564_800), map(&[("msg", "one")])]),
            Msgpack::Array(vec![
                Msgpack::Array(vec![event_time(1_714_564_801, 5), Msgpack::Map(vec![])]),
                map(&[("msg", "two")]),
            ]),
        ]),
        Msgpack::Map(vec![
            (
                Msgpack::from("chunk"),
                Msgpack::from("p8n9gmxTQVC8/nh2wlKKeQ=="),
            ),
            (Msgpack::from("size"), Msgpack::from(2)),
        ]),
    ]));
    let decoded = decode(&frame);
    let messages: Vec<&str> = decoded.records.iter().map(|r| r.message.as_str()).collect();
    assert_eq!(messages, ["one", "two"]);
    assert_eq!(decoded.records[1].timestamp_ns, 1_714_564_801_000_000_005);
    assert_eq!(decoded.chunk.as_deref(), Some("p8n9gmxTQVC8/nh2wlKKeQ=="));
}

fn packed_entries(count: usize) -> Vec<u8> {
    let mut entries = Vec::new();
    for index in 0..count {
        entries.extend(encode(&Msgpack::Array(vec![
            event_time(1_714_564_800, index as u32),
            map(&[("message", &format!("line {index}"))]),
        ])));
    }
    entries
}

#[test]
fn packed_forward_as_bin_and_as_str() {
    let entries = packed_entries(3);
    // As bin (Fluent Bit), and as str32 holding the same raw bytes (the spec allows both).
    let mut as_str = vec![0xdb];
    as_str.extend_from_slice(&(entries.len() as u32).to_be_bytes());
    as_str.extend_from_slice(&entries);
    for payload in [encode(&Msgpack::Binary(entries.clone())), as_str] {
        let mut frame = vec![0x92];
        frame.extend(encode(&Msgpack::from("packed")));
        frame.extend(payload);
        let decoded = decode(&frame);
        assert_eq!(decoded.records.len(), 3, "{:?}", decoded.rejected_by_reason);
        assert_eq!(decoded.records[2].message, "line 2");
    }
}

#[test]
fn compressed_packed_forward_with_two_gzip_members() {
    let entries = packed_entries(4);
    let (first, second) = entries.split_at(entries.len() / 2);
    // Split at an arbitrary byte: members are concatenated, their contents too.
    let mut payload = Vec::new();
    for part in [first, second] {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(part).unwrap();
        payload.extend(encoder.finish().unwrap());
    }
    let frame = encode(&Msgpack::Array(vec![
        Msgpack::from("packed"),
        Msgpack::Binary(payload),
        Msgpack::Map(vec![
            (Msgpack::from("size"), Msgpack::from(4)),
            (Msgpack::from("compressed"), Msgpack::from("gzip")),
        ]),
    ]));
    let decoded = decode(&frame);
    assert_eq!(decoded.records.len(), 4);
    assert_eq!(decoded.records[3].message, "line 3");
}

#[test]
fn a_gzip_bomb_is_refused() {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(&vec![0x90; 1 << 20]).unwrap();
    let frame = encode(&Msgpack::Array(vec![
        Msgpack::from("packed"),
        Msgpack::Binary(encoder.finish().unwrap()),
        Msgpack::Map(vec![(Msgpack::from("compressed"), Msgpack::from("gzip"))]),
    ]));
    let limits = DecodeLimits {
        max_decompressed_bytes: 1 << 16,
        ..DecodeLimits::default()
    };
    let error = decode_frame(&frame, RECEIVE_NS, &limits).unwrap_err();
    assert_eq!(error.reason(), "bad_compression");
}

#[test]
fn bad_entries_are_counted_and_good_ones_kept() {
    let frame = encode(&Msgpack::Array(vec![
        Msgpack::from("app"),
        Msgpack::Array(vec![
            Msgpack::Array(vec![Msgpack::from(1_714_564_800), map(&[("msg", "good")])]),
            Msgpack::Array(vec![
                Msgpack::from(1_714_564_800),
                Msgpack::from("not a map"),
            ]),
            Msgpack::Array(vec![Msgpack::from("noon"), map(&[("msg", "bad time")])]),
            Msgpack::Array(vec![
                Msgpack::from(1_714_564_800),
                map(&[("msg", &"x".repeat(2_000))]),
            ]),
            Msgpack::from(7),
        ]),
    ]));
    let limits = DecodeLimits {
        max_entry_bytes: 1_000,
        ..DecodeLimits::default()
    };
    let decoded = decode_frame(&frame, RECEIVE_NS, &limits).unwrap();
    assert_eq!(decoded.records.len(), 1);
    assert_eq!(decoded.rejected_by_reason["not_an_object"], 1);
    assert_eq!(decoded.rejected_by_reason["invalid_time"], 1);
    assert_eq!(decoded.rejected_by_reason["line_too_large"], 1);
    assert_eq!(decoded.rejected_by_reason["malformed_entry"], 1);
    assert_eq!(decoded.entry_count(), 5);
}

#[test]
fn frames_that_are_no_forward_message_are_refused() {
    for value in [
        Msgpack::from(1),
        Msgpack::Array(vec![Msgpack::from("only a tag")]),
        Msgpack::Array(vec![Msgpack::from(1), Msgpack::from(2), map(&[])]),
        Msgpack::Array(vec![Msgpack::from("t"), Msgpack::Boolean(true), map(&[])]),
        Msgpack::Array(vec![
            Msgpack::from("t"),
            Msgpack::Array(vec![]),
            Msgpack::from(3),
        ]),
    ] {
        assert!(
            decode_frame(&encode(&value), RECEIVE_NS, &DecodeLimits::default()).is_err(),
            "{value}"
        );
    }
}

#[test]
fn the_ack_is_a_msgpack_map() {
    assert_eq!(
        ack_response("abc"),
        [0x81, 0xa3, b'a', b'c', b'k', 0xa3, b'a', b'b', b'c']
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut scanner = ValueScanner::new(256);
        if let Ok(Some(length)) = scanner.scan(&bytes) {
            prop_assert!(length <= bytes.len());
            let _ = decode_frame(&bytes[..length], RECEIVE_NS, &DecodeLimits::default());
        }
        let _ = decode_frame(&bytes, RECEIVE_NS, &DecodeLimits::default());
    }

    #[test]
    fn frames_with_a_mutated_byte_never_panic(
        messages in proptest::collection::vec("[a-z ]{0,40}", 1..6),
        position in any::<prop::sample::Index>(),
        byte in prop_oneof![Just(0x00u8), Just(0xc1), Just(0xdd), Just(0xff), any::<u8>()],
    ) {
        let entries: Vec<Msgpack> = messages
            .iter()
            .map(|message| Msgpack::Array(vec![event_time(1_714_564_800, 1), map(&[("message", message)])]))
            .collect();
        let mut frame = encode(&Msgpack::Array(vec![Msgpack::from("t"), Msgpack::Array(entries)]));
        let decoded = decode_frame(&frame, RECEIVE_NS, &DecodeLimits::default()).unwrap();
        prop_assert_eq!(decoded.records.len(), messages.len());
        let index = position.index(frame.len());
        frame[index] = byte;
        if let Ok(Some(length)) = ValueScanner::new(1 << 16).scan(&frame) {
            let _ = decode_frame(&frame[..length], RECEIVE_NS, &DecodeLimits::default());
        }
    }

    #[test]
    fn any_split_of_a_stream_yields_the_same_frames(cut in 1usize..200) {
        let mut stream = Vec::new();
        for index in 0..3 {
            stream.extend(encode(&Msgpack::Array(vec![
                Msgpack::from("t"),
                Msgpack::from(1_714_564_800 + index),
                map(&[("message", "split")]),
            ])));
        }
        let cut = cut.min(stream.len());
        let mut scanner = ValueScanner::new(1 << 16);
        let mut buffer = stream[..cut].to_vec();
        let mut frames = 0;
        let mut rest = &stream[cut..];
        loop {
            match scanner.scan(&buffer).unwrap() {
                Some(length) => {
                    let decoded = decode_frame(&buffer[..length], RECEIVE_NS, &DecodeLimits::default()).unwrap();
                    prop_assert_eq!(decoded.records.len(), 1);
                    buffer.drain(..length);
                    scanner.reset();
                    frames += 1;
                }
                None if rest.is_empty() => break,
                None => {
                    let take = rest.len().min(7);
                    buffer.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                }
            }
        }
        prop_assert_eq!(frames, 3);
        prop_assert!(buffer.is_empty());
    }
}

async fn start_listener(
    options: ForwardOptions,
) -> (SocketAddr, Arc<MemoryLogSink>, Telemetry, CancellationToken) {
    let (listener, heartbeat) = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let address = listener.local_addr().unwrap();
    let sink = Arc::new(MemoryLogSink::new());
    let telemetry = Telemetry::new();
    let shutdown = CancellationToken::new();
    tokio::spawn(run(
        listener,
        heartbeat,
        sink.clone(),
        telemetry.clone(),
        options,
        shutdown.clone(),
    ));
    (address, sink, telemetry, shutdown)
}

#[tokio::test]
async fn a_frame_split_across_writes_is_acked_after_the_write() {
    let (address, sink, telemetry, shutdown) = start_listener(ForwardOptions::default()).await;
    let frame = encode(&Msgpack::Array(vec![
        Msgpack::from("app"),
        Msgpack::from(1_714_564_800),
        map(&[("message", "split across writes")]),
        Msgpack::Map(vec![(Msgpack::from("chunk"), Msgpack::from("c1"))]),
    ]));
    let mut stream = TcpStream::connect(address).await.unwrap();
    for byte in &frame {
        stream.write_all(&[*byte]).await.unwrap();
        stream.flush().await.unwrap();
    }
    let mut answer = vec![0u8; ack_response("c1").len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, ack_response("c1"));
    assert_eq!(sink.records().len(), 1);
    assert!(telemetry
        .render()
        .contains("vigil_ingest_received_total{protocol=\"forward\"} 1"));
    shutdown.cancel();
}

#[tokio::test]
async fn garbage_closes_the_connection_and_is_counted() {
    let (address, sink, telemetry, shutdown) = start_listener(ForwardOptions::default()).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    stream.write_all(&[0xc1, 0xc1, 0xc1]).await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(read.is_ok_and(|bytes| bytes == 0) || rest.is_empty());
    assert!(sink.records().is_empty());
    let metrics = telemetry.render();
    assert!(
        metrics.contains(
            "vigil_ingest_rejected_total{protocol=\"forward\",reason=\"malformed_frame\"} 1"
        ),
        "{metrics}"
    );
    shutdown.cancel();
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_the_connection() {
    let options = ForwardOptions {
        max_frame_bytes: 1_024,
        ..ForwardOptions::default()
    };
    let (address, _, telemetry, shutdown) = start_listener(options).await;
    let mut stream = TcpStream::connect(address).await.unwrap();
    let frame = encode(&Msgpack::Array(vec![
        Msgpack::from("app"),
        Msgpack::from(1_714_564_800),
        map(&[("message", &"y".repeat(4_000))]),
    ]));
    let _ = stream.write_all(&frame).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(telemetry.render().contains("reason=\"frame_too_large\"} 1"));
    shutdown.cancel();
}

#[tokio::test]
async fn udp_heartbeats_are_answered() {
    let (address, _, _, shutdown) = start_listener(ForwardOptions::default()).await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(b"\0", address).await.unwrap();
    let mut reply = [0u8; 8];
    let (length, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&reply[..length], HEARTBEAT_REPLY);
    shutdown.cancel();
}
