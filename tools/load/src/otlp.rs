//! OTLP trace load: exports of batches of realistic spans over OTLP/gRPC to a Vigil
//! (acknowledged spans/s), and the decode-only baseline of the same encoded requests in this
//! process (prost decode + Vigil's conversion to spans, one thread), measured in the same run.
//!
//! A batch is what an SDK's batch span processor exports: one service's resource with 512
//! spans, from whole traces of 8 spans over 3–6 services (gateway → orders → market, payments,
//! inventory, users), 10–20 attributes per span, a `request_id` UUID, exception events on
//! failed spans and cache events on some others. Every export carries fresh trace and span IDs.

use crate::common::{int_kv, parse_duration, require_loopback, string_kv};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use vigil_collector::sources::otlp::traces::convert_traces;

/// Options of `otlp`.
#[derive(clap::Args, Debug, Clone)]
pub struct OtlpArgs {
    /// Vigil's OTLP/gRPC address (must be a loopback address).
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub target: SocketAddr,
    /// Spans per export.
    #[arg(long, default_value_t = 512)]
    pub batch_spans: usize,
    /// Exports in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// How long each run sends (Prometheus duration: 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop a run after this many spans even if `--duration` has not passed.
    #[arg(long, default_value_t = 5_000_000)]
    pub max_spans: u64,
    /// Runs against Vigil (and of the baseline); the medians are reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
}

const SERVICES: [&str; 6] = [
    "gateway",
    "orders",
    "market",
    "payments",
    "inventory",
    "users",
];

/// One step of a trace: service index, parent step, name, kind, duration in µs.
const TRACE_SHAPE: [(usize, Option<usize>, &str, span::SpanKind, u64); 8] = [
    (
        0,
        None,
        "GET /api/checkout/{cart_id}",
        span::SpanKind::Server,
        48_000,
    ),
    (
        0,
        Some(0),
        "POST orders.create",
        span::SpanKind::Client,
        41_000,
    ),
    (1, Some(1), "POST /orders", span::SpanKind::Server, 39_000),
    (1, Some(2), "INSERT orders", span::SpanKind::Client, 6_500),
    (
        2,
        Some(2),
        "GET /quotes/{symbol}",
        span::SpanKind::Server,
        12_000,
    ),
    (3, Some(2), "charge card", span::SpanKind::Internal, 15_000),
    (4, Some(2), "redis GET stock", span::SpanKind::Client, 900),
    (5, Some(0), "GET /users/{id}", span::SpanKind::Server, 3_100),
];

/// A small deterministic generator (xorshift), so runs are comparable.
struct Ids(u64);

impl Ids {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Builds one export of `batch_spans` spans of `service_index`'s service (the spans of
/// whole traces that this service recorded, the others' steps filled in by its own spans).
fn build_request(
    ids: &mut Ids,
    service_index: usize,
    batch_spans: usize,
    now_ns: u64,
) -> ExportTraceServiceRequest {
    let service = SERVICES[service_index % SERVICES.len()];
    let mut spans = Vec::with_capacity(batch_spans);
    while spans.len() < batch_spans {
        let trace_id: Vec<u8> = [ids.next().to_be_bytes(), ids.next().to_be_bytes()].concat();
        let span_ids: Vec<[u8; 8]> = TRACE_SHAPE
            .iter()
            .map(|_| (ids.next() | 1).to_be_bytes())
            .collect();
        let request_id = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            ids.next() as u32,
            ids.next() as u16,
            ids.next() & 0xfff,
            ids.next() & 0xfff,
            ids.next() & 0xffff_ffff_ffff
        );
        let trace_start = now_ns - 60_000_000_000 + ids.next() % 50_000_000_000;
        let failed = ids.next().is_multiple_of(20);
        for (step, (_, parent, name, kind, micros)) in TRACE_SHAPE.iter().enumerate() {
            if spans.len() == batch_spans {
                break;
            }
            let jitter = ids.next() % (micros / 4 + 1);
            let start = trace_start + step as u64 * 700_000;
            let duration_ns = (micros + jitter) * 1_000;
            let status_code = if failed && step == 5 { 2 } else { 0 };
            let mut attributes = vec![
                string_kv("request_id", request_id.clone()),
                string_kv(
                    "http.request.method",
                    if step.is_multiple_of(2) {
                        "GET"
                    } else {
                        "POST"
                    },
                ),
                string_kv("http.route", *name),
                int_kv(
                    "http.response.status_code",
                    if status_code == 2 { 502 } else { 200 },
                ),
                string_kv("url.scheme", "http"),
                string_kv(
                    "server.address",
                    format!("{service}.shop.svc.cluster.local"),
                ),
                int_kv("server.port", 8080),
                string_kv("network.protocol.version", "1.1"),
                string_kv(
                    "user_agent.original",
                    "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
                ),
                string_kv(
                    "client.address",
                    format!("10.1.{}.{}", step, ids.next() % 250),
                ),
                int_kv("thread.id", (ids.next() % 64) as i64),
                string_kv("thread.name", "tokio-runtime-worker"),
            ];
            if step == 3 {
                attributes.push(string_kv("db.system", "postgresql"));
                attributes.push(string_kv("db.namespace", "orders"));
                attributes.push(string_kv(
                    "db.query.text",
                    "INSERT INTO orders (id, cart_id, total_cents, currency) VALUES ($1, $2, $3, $4)",
                ));
                attributes.push(string_kv("db.operation.name", "INSERT"));
            }
            if step.is_multiple_of(3) {
                attributes.push(string_kv("customer.tier", "gold"));
                attributes.push(int_kv("cart.items", (ids.next() % 12) as i64));
                attributes.push(string_kv("feature_flag.checkout_v2", "on"));
            }
            let mut events = Vec::new();
            if status_code == 2 {
                events.push(span::Event {
                    time_unix_nano: start + duration_ns / 2,
                    name: "exception".into(),
                    attributes: vec![
                        string_kv("exception.type", "PaymentGatewayTimeout"),
                        string_kv("exception.message", "card issuer did not answer within 10s"),
                        string_kv(
                            "exception.stacktrace",
                            "at payments::charge (src/charge.rs:88)\nat payments::handler (src/http.rs:41)",
                        ),
                    ],
                    dropped_attributes_count: 0,
                });
            } else if step == 6 {
                events.push(span::Event {
                    time_unix_nano: start + 100_000,
                    name: "cache miss".into(),
                    attributes: vec![string_kv(
                        "cache.key",
                        format!("stock:{}", ids.next() % 10_000),
                    )],
                    dropped_attributes_count: 0,
                });
            }
            spans.push(Span {
                trace_id: trace_id.clone(),
                span_id: span_ids[step].to_vec(),
                parent_span_id: parent
                    .map(|parent| span_ids[parent].to_vec())
                    .unwrap_or_default(),
                name: (*name).to_string(),
                kind: *kind as i32,
                start_time_unix_nano: start,
                end_time_unix_nano: start + duration_ns,
                attributes,
                events,
                status: Some(Status {
                    code: status_code,
                    message: if status_code == 2 {
                        "upstream timeout".into()
                    } else {
                        String::new()
                    },
                }),
                ..Span::default()
            });
        }
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    string_kv("service.name", service),
                    string_kv("service.namespace", "shop"),
                    string_kv("service.version", "2.14.1"),
                    string_kv("service.instance.id", format!("{service}-7d9f8b6c5-x2k4p")),
                    string_kv("telemetry.sdk.name", "opentelemetry"),
                    string_kv("telemetry.sdk.language", "rust"),
                    string_kv("telemetry.sdk.version", "0.31.0"),
                    string_kv("host.name", "node-3"),
                    string_kv("k8s.namespace.name", "shop"),
                ],
                ..Resource::default()
            }),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "tracing-opentelemetry".into(),
                    version: "0.32.0".into(),
                    ..InstrumentationScope::default()
                }),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as u64)
        .unwrap_or(0)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// One run against Vigil: returns acknowledged spans per second.
async fn one_run(args: &OtlpArgs, run: usize) -> anyhow::Result<(f64, u64, u64)> {
    let endpoint = format!("http://{}", args.target);
    let acknowledged = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let deadline = started + args.duration;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency.max(1) {
        let mut client = TraceServiceClient::connect(endpoint.clone())
            .await
            .with_context(|| format!("cannot connect to {endpoint}"))?
            .max_decoding_message_size(64 << 20);
        let (acknowledged, failed, sent, stop) = (
            acknowledged.clone(),
            failed.clone(),
            sent.clone(),
            stop.clone(),
        );
        let batch_spans = args.batch_spans;
        let max_spans = args.max_spans;
        let seed = 0x9e37_79b9_7f4a_7c15u64 ^ ((run as u64) << 32) ^ worker as u64;
        workers.spawn(async move {
            let mut ids = Ids(seed | 1);
            let mut export_index = worker;
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                if sent.fetch_add(batch_spans as u64, Ordering::Relaxed) >= max_spans {
                    break;
                }
                let request = build_request(&mut ids, export_index, batch_spans, now_ns());
                export_index += 1;
                match client.export(request).await {
                    Ok(response) => {
                        let rejected = response
                            .into_inner()
                            .partial_success
                            .map_or(0, |partial| partial.rejected_spans.max(0) as u64);
                        acknowledged.fetch_add(batch_spans as u64 - rejected, Ordering::Relaxed);
                    }
                    Err(status) => {
                        failed.fetch_add(batch_spans as u64, Ordering::Relaxed);
                        if status.code() != tonic::Code::ResourceExhausted
                            && status.code() != tonic::Code::Unavailable
                        {
                            eprintln!("export failed: {status}");
                            stop.store(true, Ordering::Relaxed);
                        }
                    }
                }
            }
        });
    }
    while workers.join_next().await.is_some() {}
    let elapsed = started.elapsed().as_secs_f64();
    let acknowledged = acknowledged.load(Ordering::Relaxed);
    Ok((
        acknowledged as f64 / elapsed,
        acknowledged,
        failed.load(Ordering::Relaxed),
    ))
}

/// `vigil-load otlp`: runs against Vigil, then the decode-only baseline, and prints both.
///
/// # Errors
/// When the target is not loopback or cannot be reached.
pub fn run_against_vigil(args: &OtlpArgs) -> anyhow::Result<()> {
    require_loopback(args.target)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut rates = Vec::new();
    for run in 0..args.runs.max(1) {
        let (rate, acknowledged, failed) = runtime.block_on(one_run(args, run))?;
        println!(
            "run={run} acknowledged_spans={acknowledged} refused_spans={failed} spans_per_s={rate:.0}"
        );
        rates.push(rate);
    }
    let ingest_median = median(&mut rates);
    let mut baseline = Vec::new();
    let mut prost_only = Vec::new();
    for run in 0..args.runs.max(1) {
        let (decode_and_convert, decode) = decode_only(args, run);
        println!(
            "baseline_run={run} decode_convert_spans_per_s={decode_and_convert:.0} prost_decode_spans_per_s={decode:.0}"
        );
        baseline.push(decode_and_convert);
        prost_only.push(decode);
    }
    let baseline_median = median(&mut baseline);
    let prost_median = median(&mut prost_only);
    println!(
        "otlp_grpc_ingest_spans_per_s_median={ingest_median:.0} decode_only_spans_per_s_median={baseline_median:.0} prost_decode_spans_per_s_median={prost_median:.0} ratio={:.3} runs={} batch_spans={} concurrency={}",
        ingest_median / baseline_median.max(1.0),
        args.runs,
        args.batch_spans,
        args.concurrency
    );
    Ok(())
}

/// The decode-only baseline: the same encoded exports decoded with prost and converted to
/// Vigil's spans on this thread; returns spans per second of decode + conversion, and of the
/// prost decode alone.
fn decode_only(args: &OtlpArgs, run: usize) -> (f64, f64) {
    let mut ids = Ids(0x2545_f491_4f6c_dd1d ^ ((run as u64) << 32) | 1);
    let encoded: Vec<Vec<u8>> = (0..32)
        .map(|index| build_request(&mut ids, index, args.batch_spans, now_ns()).encode_to_vec())
        .collect();
    let budget = args.duration.min(Duration::from_secs(10)) / 2;
    let measure = |convert: bool| {
        let started = Instant::now();
        let mut spans = 0u64;
        let mut index = 0;
        while started.elapsed() < budget && spans < args.max_spans {
            let Ok(request) =
                ExportTraceServiceRequest::decode(encoded[index % encoded.len()].as_slice())
            else {
                break;
            };
            if convert {
                let converted = convert_traces(request);
                spans += converted.spans.len() as u64;
                std::hint::black_box(converted);
            } else {
                spans += request.resource_spans[0].scope_spans[0].spans.len() as u64;
                std::hint::black_box(request);
            }
            index += 1;
        }
        spans as f64 / started.elapsed().as_secs_f64()
    };
    (measure(true), measure(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_non_loopback_targets() {
        let error = require_loopback("10.0.0.1:4317".parse().unwrap()).unwrap_err();
        assert!(error.to_string().contains("loopback"));
        assert!(require_loopback("127.0.0.1:4317".parse().unwrap()).is_ok());
    }

    #[test]
    fn a_batch_is_realistic_and_converts_whole() {
        let mut ids = Ids(7);
        let request = build_request(&mut ids, 1, 512, 2_000_000_000_000_000_000);
        let spans = &request.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 512);
        assert!(spans
            .iter()
            .all(|span| (12..=20).contains(&span.attributes.len())));
        assert!(spans.iter().any(|span| !span.events.is_empty()));
        let converted = convert_traces(request);
        assert_eq!(converted.spans.len(), 512);
        assert_eq!(converted.rejections.count, 0);
        assert_eq!(converted.spans[0].service, "orders");
    }
}
