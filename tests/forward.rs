//! The Fluentd forward protocol through the built binary: frames byte-for-byte as Python's
//! fluent-logger, Docker's fluentd log driver (fluent-logger-golang) and Fluent Bit's
//! out_forward send them, in all four modes, with acks; found by level, service, phrase and a
//! request UUID; heartbeats; garbage counted and the connection closed.
//!
//! The bytes are built with rmpv following the Forward Protocol Specification v1; where a
//! client's MessagePack library picks a particular encoding (Go's msgp writes a positive
//! int64 as int32, Python's msgpack as uint32) the test writes those bytes by hand.

mod common;

use std::io::Write;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use common::{free_tcp_port, Vigil};
use rmpv::Value as Msgpack;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const REQUEST_ID: &str = "0b7c6a0e-9d1f-4c2b-8e3a-5f6d7e8f9a01";

fn encode(value: &Msgpack) -> Vec<u8> {
    let mut bytes = Vec::new();
    rmpv::encode::write_value(&mut bytes, value).unwrap();
    bytes
}

fn str_map(pairs: &[(&str, &str)]) -> Msgpack {
    Msgpack::Map(
        pairs
            .iter()
            .map(|(key, value)| (Msgpack::from(*key), Msgpack::from(*value)))
            .collect(),
    )
}

fn now() -> (u32, u32) {
    let elapsed = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    (elapsed.as_secs() as u32, elapsed.subsec_nanos())
}

/// EventTime: extension type 0, seconds and nanoseconds as big-endian u32 (fixext8).
fn event_time(seconds: u32, nanos: u32) -> Msgpack {
    let mut bytes = seconds.to_be_bytes().to_vec();
    bytes.extend_from_slice(&nanos.to_be_bytes());
    Msgpack::Ext(0, bytes)
}

/// Python fluent-logger, `FluentSender("checkout").emit(None, record)`: `msgpack.packb((tag,
/// int(time.time()), record))`, a 3-element array with the time as uint32 (0xce); with
/// `nanosecond_precision=True` the time is an EventTime.
fn python_fluent_logger(record: &[(&str, &str)], nanosecond_precision: bool) -> Vec<u8> {
    let (seconds, nanos) = now();
    let time = if nanosecond_precision {
        event_time(seconds, nanos)
    } else {
        Msgpack::from(seconds)
    };
    let frame = encode(&Msgpack::Array(vec![
        Msgpack::from("checkout"),
        time,
        str_map(record),
    ]));
    if !nanosecond_precision {
        assert_eq!(frame[10], 0xce, "python packs the time as uint32");
    }
    frame
}

const CONTAINER_ID: &str = "3f4e5d6c7b8a99887766554433221100ffeeddccbbaa99887766554433221100";

/// Docker's fluentd log driver (fluent-logger-golang, msgp tuple encoding): `[tag, time,
/// record, option]` with the tag `{{.ID}}` (12 hex digits), the time as msgp's int32 (0xd2)
/// or, with `fluentd-sub-second-precision`, an EventTime; the record holds container_id,
/// container_name, source and log; the option is nil, or `{"chunk": id}` when the driver asks
/// for acks (`fluentd-request-ack`, used with `fluentd-async`).
fn docker_driver(log: &str, sub_second: bool, chunk: Option<&str>) -> Vec<u8> {
    let (seconds, nanos) = now();
    let mut frame = vec![0x94];
    frame.extend(encode(&Msgpack::from(&CONTAINER_ID[..12])));
    if sub_second {
        frame.extend(encode(&event_time(seconds, nanos)));
    } else {
        frame.push(0xd2);
        frame.extend_from_slice(&(seconds as i32).to_be_bytes());
    }
    frame.extend(encode(&str_map(&[
        ("container_id", CONTAINER_ID),
        ("container_name", "/orders-api"),
        ("source", "stdout"),
        ("log", log),
    ])));
    match chunk {
        Some(chunk) => frame.extend(encode(&str_map(&[("chunk", chunk)]))),
        None => frame.push(0xc0),
    }
    frame
}

/// One `[time, record]` entry as Fluent Bit writes it: EventTime and the record map.
fn fluent_bit_entry(record: &[(&str, &str)]) -> Vec<u8> {
    let (seconds, nanos) = now();
    encode(&Msgpack::Array(vec![
        event_time(seconds, nanos),
        str_map(record),
    ]))
}

/// Fluent Bit's out_forward (`Require_ack_response on`, `Send_options on`): PackedForward
/// `[tag, bin(entries), {"size": n, "chunk": id}]`, or with `Compress gzip`
/// CompressedPackedForward, the entries gzipped and `"compressed": "gzip"` in the option.
fn fluent_bit_packed(tag: &str, records: &[Vec<(&str, &str)>], chunk: &str, gzip: bool) -> Vec<u8> {
    let mut entries = Vec::new();
    for record in records {
        entries.extend(fluent_bit_entry(record));
    }
    let mut option = vec![
        (Msgpack::from("size"), Msgpack::from(records.len() as u64)),
        (Msgpack::from("chunk"), Msgpack::from(chunk)),
    ];
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(&entries).unwrap();
        entries = encoder.finish().unwrap();
        option.push((Msgpack::from("compressed"), Msgpack::from("gzip")));
    }
    encode(&Msgpack::Array(vec![
        Msgpack::from(tag),
        Msgpack::Binary(entries),
        Msgpack::Map(option),
    ]))
}

/// Forward mode as the spec shows it: `[tag, [[time, record], ...], {"chunk": id}]`.
fn forward_mode(tag: &str, records: &[Vec<(&str, &str)>], chunk: &str) -> Vec<u8> {
    let (seconds, _) = now();
    let entries = records
        .iter()
        .map(|record| Msgpack::Array(vec![Msgpack::from(seconds), str_map(record)]))
        .collect();
    encode(&Msgpack::Array(vec![
        Msgpack::from(tag),
        Msgpack::Array(entries),
        str_map(&[("chunk", chunk)]),
    ]))
}

fn ack(chunk: &str) -> Vec<u8> {
    encode(&str_map(&[("ack", chunk)]))
}

async fn expect_ack(stream: &mut TcpStream, chunk: &str) -> anyhow::Result<()> {
    let expected = ack(chunk);
    let mut answer = vec![0u8; expected.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut answer))
        .await
        .context("no ack within 10 s")??;
    assert_eq!(answer, expected, "ack for chunk {chunk}");
    Ok(())
}

async fn search(vigil: &Vigil, query: &str) -> anyhow::Result<Value> {
    let response = vigil
        .client
        .get(vigil.url("/api/v1/logs/search"))
        .query(&[("q", query), ("limit", "100")])
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("search {query:?} failed with {status}: {body}");
    }
    Ok(body)
}

/// Waits until `query` has `expected` hits and returns their messages.
async fn messages(vigil: &Vigil, query: &str, expected: usize) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = search(vigil, query).await?;
        if body["total"].as_u64() == Some(expected as u64) {
            let mut found: Vec<String> = body["hits"]
                .as_array()
                .unwrap()
                .iter()
                .map(|hit| hit["message"].as_str().unwrap_or_default().to_string())
                .collect();
            found.sort();
            return Ok(found);
        }
        if Instant::now() > deadline {
            bail!("{query:?}: expected {expected} hits, got {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start() -> anyhow::Result<(Vigil, String)> {
    let address = format!("127.0.0.1:{}", free_tcp_port());
    let vigil = Vigil::start(&format!(
        "server:\n  self_monitoring: false\nlogs:\n  forward_listen: '{address}'\n"
    ))
    .await?;
    Ok((vigil, address))
}

#[tokio::test]
async fn frames_of_fluent_logger_docker_and_fluent_bit_in_all_four_modes_are_acked_and_found(
) -> anyhow::Result<()> {
    let (vigil, address) = start().await?;
    let mut stream = TcpStream::connect(&address).await?;

    // Message mode, no ack asked: Python's fluent-logger, int time and EventTime.
    stream
        .write_all(&python_fluent_logger(
            &[
                ("level", "ERROR"),
                ("message", "card declined by issuer"),
                ("request_id", REQUEST_ID),
                ("host", "checkout-7f9c"),
            ],
            false,
        ))
        .await?;
    stream
        .write_all(&python_fluent_logger(
            &[("level", "INFO"), ("message", "cart recalculated")],
            true,
        ))
        .await?;

    // Message mode with and without ack, and one frame split across writes: Docker's driver.
    let message = format!("payment failed for request {REQUEST_ID}");
    let docker_frame = docker_driver(&message, true, Some("Zm9yd2FyZC1hY2stMQ=="));
    let (head, tail) = docker_frame.split_at(docker_frame.len() / 2);
    stream.write_all(head).await?;
    stream.flush().await?;
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(tail).await?;
    expect_ack(&mut stream, "Zm9yd2FyZC1hY2stMQ==").await?;
    stream
        .write_all(&docker_driver("listening on :8080", false, None))
        .await?;

    // Forward mode with ack.
    stream
        .write_all(&forward_mode(
            "inventory",
            &[
                vec![("severity", "warning"), ("msg", "stock low for sku 991")],
                vec![("severity", "info"), ("msg", "stock refreshed")],
            ],
            "chunk-forward-1",
        ))
        .await?;
    expect_ack(&mut stream, "chunk-forward-1").await?;

    // PackedForward and CompressedPackedForward with ack, on a second connection: Fluent Bit.
    let mut fluent_bit = TcpStream::connect(&address).await?;
    let gateway_error = vec![
        ("level", "error"),
        ("service", "gateway"),
        ("message", "upstream timed out"),
        ("request_id", REQUEST_ID),
    ];
    let gateway_info = vec![
        ("level", "info"),
        ("service", "gateway"),
        ("message", "GET /api/v1/orders 200"),
    ];
    fluent_bit
        .write_all(&fluent_bit_packed(
            "kube.gateway",
            &[gateway_error.clone(), gateway_info.clone()],
            "fb-chunk-packed",
            false,
        ))
        .await?;
    expect_ack(&mut fluent_bit, "fb-chunk-packed").await?;
    fluent_bit
        .write_all(&fluent_bit_packed(
            "kube.gateway",
            &[vec![
                ("level", "error"),
                ("service", "gateway"),
                (
                    "message",
                    &format!("retry budget exhausted for {REQUEST_ID}"),
                ),
            ]],
            "fb-chunk-gzip",
            true,
        ))
        .await?;
    expect_ack(&mut fluent_bit, "fb-chunk-gzip").await?;

    // The acked frames are searchable within a second or so.
    assert_eq!(
        messages(&vigil, "service:gateway", 3).await?,
        [
            "GET /api/v1/orders 200",
            &format!("retry budget exhausted for {REQUEST_ID}"),
            "upstream timed out"
        ]
    );
    assert_eq!(
        messages(&vigil, "level:error", 3).await?,
        [
            "card declined by issuer",
            &format!("retry budget exhausted for {REQUEST_ID}"),
            "upstream timed out"
        ]
    );
    // The tag is the service when the record names none; Docker's container_name otherwise.
    assert_eq!(
        messages(&vigil, "service:checkout", 2).await?,
        ["card declined by issuer", "cart recalculated"]
    );
    assert_eq!(
        messages(&vigil, "service:orders-api", 2).await?,
        ["listening on :8080", &message]
    );
    assert_eq!(
        messages(&vigil, "service:inventory AND level:warn", 1).await?,
        ["stock low for sku 991"]
    );
    assert_eq!(
        messages(&vigil, "\"payment failed for request\"", 1).await?,
        [message.as_str()]
    );
    // The request ID: in a field (Python, Fluent Bit) and inside messages (Docker, gzip).
    assert_eq!(
        messages(&vigil, REQUEST_ID, 4).await?,
        [
            "card declined by issuer",
            &message,
            &format!("retry budget exhausted for {REQUEST_ID}"),
            "upstream timed out",
        ]
    );
    // Docker's fields are kept as attributes, and the line's own nanoseconds as its time.
    let docker = search(&vigil, "\"payment failed\"").await?;
    let hit = &docker["hits"][0];
    assert_eq!(hit["attributes"]["container_id"], CONTAINER_ID);
    assert_eq!(hit["attributes"]["source"], "stdout");
    assert_eq!(hit["attributes"]["tag"], &CONTAINER_ID[..12]);

    let metrics = vigil.metrics_text().await?;
    assert!(
        metrics.contains("vigil_ingest_received_total{protocol=\"forward\"} 9"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn heartbeats_and_garbage() -> anyhow::Result<()> {
    let (vigil, address) = start().await?;
    // TCP heartbeat: connect and close with nothing sent.
    drop(TcpStream::connect(&address).await?);
    // UDP heartbeat on the same port.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    socket.send_to(b"\0", &address).await?;
    let mut reply = [0u8; 4];
    let (length, _) =
        tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut reply)).await??;
    assert_eq!(&reply[..length], b"\0");

    // Garbage: counted, the connection closed; a frame that is MessagePack but no forward
    // message is counted and skipped, and the connection goes on.
    let mut stream = TcpStream::connect(&address).await?;
    stream
        .write_all(&encode(&Msgpack::from("just a string")))
        .await?;
    stream
        .write_all(&forward_mode(
            "after",
            &[vec![("message", "still served")]],
            "c9",
        ))
        .await?;
    expect_ack(&mut stream, "c9").await?;
    stream.write_all(&[0xc1, 0x00, 0x01]).await?;
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
    assert!(closed.is_ok(), "the connection stays open after garbage");
    assert_eq!(messages(&vigil, "\"still served\"", 1).await?.len(), 1);

    let metrics = vigil.metrics_text().await?;
    for expected in [
        "vigil_ingest_rejected_total{protocol=\"forward\",reason=\"malformed_frame\"} 2",
        "vigil_ingest_received_total{protocol=\"forward\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected}\n{metrics}");
    }
    assert!(!metrics.contains("truncated_frame"), "{metrics}");
    Ok(())
}
