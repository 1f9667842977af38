//! `vigil-load demo`: a small fleet's traffic, so a new Vigil has something to show.
//!
//! Three services handle checkout requests: `gateway` calls `orders`, which calls `market`.
//! Each request sends what their clients would: StatsD `requests`, `errors` and
//! `request_duration` tagged with `service` (the conventions the default alert rules watch),
//! one OTLP trace across the three services carrying a `request_id` attribute, and one log
//! line per service with the same request ID and trace ID, exported as OTLP logs. Every
//! `--cycle`, `market` fails 15% of its calls for the second half of the cycle, long enough
//! for the default `HighErrorRate` rule (5% for 5 minutes) to fire and then resolve.
//!
//! Loopback only, and bounded by `--duration`.

use crate::common::{int_kv, parse_duration, require_loopback, string_kv};
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};

/// `vigil-load demo` options.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Vigil's StatsD UDP address (loopback only).
    #[arg(long, default_value = "127.0.0.1:8125")]
    pub statsd: SocketAddr,
    /// Vigil's OTLP/gRPC address (loopback only).
    #[arg(long, default_value = "127.0.0.1:4317")]
    pub otlp: SocketAddr,
    /// Checkout requests per second.
    #[arg(long, default_value_t = 5)]
    pub rate: u32,
    /// How long to run.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub duration: Duration,
    /// One healthy half and one failing half of `market`.
    #[arg(long, default_value = "16m", value_parser = parse_duration)]
    pub cycle: Duration,
}

/// A small xorshift generator: IDs and jitter need no cryptographic quality.
struct Random(u64);

impl Random {
    fn seeded() -> Random {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(1);
        Random(nanos | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            let word = self.next().to_le_bytes();
            chunk.copy_from_slice(&word[..chunk.len()]);
        }
        out
    }

    /// A UUID-shaped request ID.
    fn request_id(&mut self) -> String {
        let hex = vigil_model::hex_id(&self.bytes::<16>());
        format!(
            "{}-{}-{}-{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[12..16],
            &hex[16..20],
            &hex[20..32]
        )
    }
}

fn resource(service: &str) -> Resource {
    Resource {
        attributes: vec![
            string_kv("service.name", service),
            string_kv("service.instance.id", format!("{service}-1")),
            string_kv("host.name", format!("{service}-host-1")),
            string_kv("deployment.environment", "demo"),
        ],
        ..Resource::default()
    }
}

/// What one service did for one request.
struct Hop {
    service: &'static str,
    server_name: &'static str,
    client_name: Option<&'static str>,
    span_id: [u8; 8],
    client_span_id: [u8; 8],
    start_ns: u64,
    duration_ns: u64,
    failed: bool,
    message: String,
}

/// One checkout request through the three services.
struct Request {
    request_id: String,
    trace_id: [u8; 16],
    hops: Vec<Hop>,
}

fn simulate(random: &mut Random, now_ns: u64, market_error_ratio: f64) -> Request {
    let request_id = random.request_id();
    let order = 10_000 + random.next() % 90_000;
    let market_failed = random.unit() < market_error_ratio;
    // Durations in ms, innermost first: market's quote, orders around it, gateway around that.
    let market_ms = if market_failed {
        250.0 + 50.0 * random.unit()
    } else {
        4.0 + 20.0 * random.unit() * random.unit()
    };
    let orders_ms = market_ms + 3.0 + 6.0 * random.unit();
    let gateway_ms = orders_ms + 1.0 + 3.0 * random.unit();
    let ms = |value: f64| (value * 1e6) as u64;
    let hops = vec![
        Hop {
            service: "gateway",
            server_name: "POST /api/checkout",
            client_name: Some("POST orders"),
            span_id: random.bytes(),
            client_span_id: random.bytes(),
            start_ns: now_ns,
            duration_ns: ms(gateway_ms),
            failed: market_failed,
            message: if market_failed {
                format!("checkout of order {order} failed: orders answered 502 for request {request_id}")
            } else {
                format!("checkout of order {order} done for request {request_id}")
            },
        },
        Hop {
            service: "orders",
            server_name: "POST /orders",
            client_name: Some("GET market/quote"),
            span_id: random.bytes(),
            client_span_id: random.bytes(),
            start_ns: now_ns + ms(0.5),
            duration_ns: ms(orders_ms),
            failed: market_failed,
            message: if market_failed {
                format!("order {order}: market quote timed out")
            } else {
                format!("order {order} placed")
            },
        },
        Hop {
            service: "market",
            server_name: "GET /quote",
            client_name: None,
            span_id: random.bytes(),
            client_span_id: [0; 8],
            start_ns: now_ns + ms(1.5),
            duration_ns: ms(market_ms),
            failed: market_failed,
            message: if market_failed {
                format!("quote for order {order} timed out after {market_ms:.0} ms: upstream price feed unavailable")
            } else {
                format!("quoted order {order} in {market_ms:.1} ms")
            },
        },
    ];
    Request {
        request_id,
        trace_id: random.bytes(),
        hops,
    }
}

fn status(failed: bool) -> Option<Status> {
    Some(Status {
        code: if failed { 2 } else { 1 },
        message: if failed {
            "upstream failed".to_string()
        } else {
            String::new()
        },
    })
}

/// The spans of a tick's requests, one `ResourceSpans` per service.
fn trace_export(requests: &[Request]) -> ExportTraceServiceRequest {
    let mut by_service: Vec<(&'static str, Vec<Span>)> = Vec::new();
    for request in requests {
        for (index, hop) in request.hops.iter().enumerate() {
            // The server span's parent is the caller's client span.
            let parent = index
                .checked_sub(1)
                .map(|caller| request.hops[caller].client_span_id.to_vec())
                .unwrap_or_default();
            let common = vec![
                string_kv("request_id", request.request_id.clone()),
                string_kv(
                    "http.request.method",
                    hop.server_name.split(' ').next().unwrap_or("GET"),
                ),
                int_kv(
                    "http.response.status_code",
                    if hop.failed { 502 } else { 200 },
                ),
            ];
            let mut spans = vec![Span {
                trace_id: request.trace_id.to_vec(),
                span_id: hop.span_id.to_vec(),
                parent_span_id: parent,
                name: hop.server_name.to_string(),
                kind: span::SpanKind::Server as i32,
                start_time_unix_nano: hop.start_ns,
                end_time_unix_nano: hop.start_ns + hop.duration_ns,
                attributes: common.clone(),
                status: status(hop.failed),
                ..Span::default()
            }];
            if let (Some(client_name), Some(callee)) =
                (hop.client_name, request.hops.get(index + 1))
            {
                spans.push(Span {
                    trace_id: request.trace_id.to_vec(),
                    span_id: hop.client_span_id.to_vec(),
                    parent_span_id: hop.span_id.to_vec(),
                    name: client_name.to_string(),
                    kind: span::SpanKind::Client as i32,
                    start_time_unix_nano: callee.start_ns - 200_000,
                    end_time_unix_nano: callee.start_ns + callee.duration_ns + 200_000,
                    attributes: vec![
                        string_kv("request_id", request.request_id.clone()),
                        string_kv("peer.service", callee.service),
                    ],
                    status: status(callee.failed),
                    ..Span::default()
                });
            }
            match by_service
                .iter_mut()
                .find(|(service, _)| *service == hop.service)
            {
                Some((_, list)) => list.extend(spans),
                None => by_service.push((hop.service, spans)),
            }
        }
    }
    ExportTraceServiceRequest {
        resource_spans: by_service
            .into_iter()
            .map(|(service, spans)| ResourceSpans {
                resource: Some(resource(service)),
                scope_spans: vec![ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "vigil-demo".to_string(),
                        ..InstrumentationScope::default()
                    }),
                    spans,
                    ..ScopeSpans::default()
                }],
                ..ResourceSpans::default()
            })
            .collect(),
    }
}

/// One log line per service and request, with the request and trace IDs.
fn log_export(requests: &[Request]) -> ExportLogsServiceRequest {
    let mut by_service: Vec<(&'static str, Vec<LogRecord>)> = Vec::new();
    for request in requests {
        for hop in &request.hops {
            let (severity, severity_text) = if hop.failed {
                (SeverityNumber::Error, "ERROR")
            } else {
                (SeverityNumber::Info, "INFO")
            };
            let record = LogRecord {
                time_unix_nano: hop.start_ns + hop.duration_ns,
                observed_time_unix_nano: hop.start_ns + hop.duration_ns,
                severity_number: severity as i32,
                severity_text: severity_text.to_string(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(hop.message.clone())),
                }),
                attributes: vec![
                    string_kv("request_id", request.request_id.clone()),
                    string_kv("http.route", hop.server_name),
                ],
                trace_id: request.trace_id.to_vec(),
                span_id: hop.span_id.to_vec(),
                ..LogRecord::default()
            };
            match by_service
                .iter_mut()
                .find(|(service, _)| *service == hop.service)
            {
                Some((_, list)) => list.push(record),
                None => by_service.push((hop.service, vec![record])),
            }
        }
    }
    ExportLogsServiceRequest {
        resource_logs: by_service
            .into_iter()
            .map(|(service, log_records)| ResourceLogs {
                resource: Some(resource(service)),
                scope_logs: vec![ScopeLogs {
                    log_records,
                    ..ScopeLogs::default()
                }],
                ..ResourceLogs::default()
            })
            .collect(),
    }
}

/// The StatsD lines of a tick's requests, packed into datagrams of at most 1,400 bytes.
fn statsd_datagrams(requests: &[Request]) -> Vec<String> {
    let mut datagrams = Vec::new();
    let mut current = String::new();
    for request in requests {
        for hop in &request.hops {
            let mut lines = vec![
                format!("requests:1|c|#service:{}", hop.service),
                format!(
                    "request_duration:{:.3}|ms|#service:{}",
                    hop.duration_ns as f64 / 1e6,
                    hop.service
                ),
            ];
            if hop.failed {
                lines.push(format!("errors:1|c|#service:{}", hop.service));
            }
            for line in lines {
                if !current.is_empty() && current.len() + line.len() + 1 > 1_400 {
                    datagrams.push(std::mem::take(&mut current));
                }
                if !current.is_empty() {
                    current.push('\n');
                }
                current.push_str(&line);
            }
        }
    }
    if !current.is_empty() {
        datagrams.push(current);
    }
    datagrams
}

/// Runs the demo fleet until `--duration` has passed.
pub fn run(args: &DemoArgs) -> anyhow::Result<()> {
    require_loopback(args.statsd)?;
    require_loopback(args.otlp)?;
    if args.rate == 0 {
        bail!("--rate must be at least 1");
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(run_async(args))
}

async fn run_async(args: &DemoArgs) -> anyhow::Result<()> {
    let endpoint = format!("http://{}", args.otlp);
    let target =
        tonic::transport::Endpoint::from_shared(endpoint.clone()).context("bad OTLP address")?;
    // Vigil may still be starting (the README starts both at once): wait for its port.
    let patience = Instant::now();
    let channel = loop {
        match target.connect().await {
            Ok(channel) => break channel,
            Err(_) if patience.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => {
                bail!("cannot reach Vigil's OTLP/gRPC port at {endpoint}: {error}")
            }
        }
    };
    let mut traces = TraceServiceClient::new(channel.clone());
    let mut logs = LogsServiceClient::new(channel);
    let statsd = UdpSocket::bind("127.0.0.1:0").context("cannot open a UDP socket")?;
    let mut random = Random::seeded();
    let started = Instant::now();
    let tick = Duration::from_millis(500);
    let mut interval = tokio::time::interval(tick);
    let mut sent_requests: u64 = 0;
    let mut last_report = Instant::now();
    let mut carry = 0.0;
    println!(
        "vigil-load demo: {} checkout requests/s through gateway → orders → market for {:?}; \
         market fails 15% of its calls in the second half of every {:?}",
        args.rate, args.duration, args.cycle
    );
    let mut failed_ticks = 0u32;
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    while started.elapsed() < args.duration {
        tokio::select! {
            _ = &mut interrupted => break,
            _ = interval.tick() => {}
        }
        let cycle_position = started.elapsed().as_secs_f64() % args.cycle.as_secs_f64().max(1.0);
        let failing = cycle_position >= args.cycle.as_secs_f64() / 2.0;
        let market_error_ratio = if failing { 0.15 } else { 0.005 };
        carry += f64::from(args.rate) * tick.as_secs_f64();
        let count = carry.floor() as usize;
        carry -= count as f64;
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|elapsed| elapsed.as_nanos() as u64)
            .unwrap_or(0);
        let requests: Vec<Request> = (0..count)
            .map(|index| {
                simulate(
                    &mut random,
                    now_ns + index as u64 * 1_000_000,
                    market_error_ratio,
                )
            })
            .collect();
        if requests.is_empty() {
            continue;
        }
        for datagram in statsd_datagrams(&requests) {
            // UDP to a loopback port that may not listen yet: a lost datagram is fine here.
            let _ = statsd.send_to(datagram.as_bytes(), args.statsd);
        }
        let traced = traces.export(trace_export(&requests)).await;
        let logged = logs.export(log_export(&requests)).await;
        match traced.and(logged) {
            Ok(_) => failed_ticks = 0,
            Err(status) => {
                failed_ticks += 1;
                if failed_ticks == 1 {
                    eprintln!("vigil-load demo: export refused: {}", status.message());
                }
                // Ten seconds of refusals: Vigil has stopped.
                if failed_ticks >= 20 {
                    bail!("Vigil refused every export for 10 s: {}", status.message());
                }
                continue;
            }
        }
        sent_requests += requests.len() as u64;
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            let example = &requests[0];
            println!(
                "{sent_requests} requests sent{}; paste a request ID into \
                 /api/v1/correlate/{} or a trace ID into /api/v1/traces/{}",
                if failing { ", market failing" } else { "" },
                example.request_id,
                vigil_model::hex_id(&example.trace_id),
            );
        }
    }
    println!("vigil-load demo: done, {sent_requests} requests sent");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_one_trace_with_linked_spans_and_matching_logs() {
        let mut random = Random(42);
        let request = simulate(&mut random, 1_700_000_000_000_000_000, 1.0);
        let export = trace_export(std::slice::from_ref(&request));
        let spans: Vec<&Span> = export
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| &scope.spans)
            .collect();
        assert_eq!(export.resource_spans.len(), 3);
        assert_eq!(spans.len(), 5, "three server spans and two client spans");
        let roots: Vec<_> = spans
            .iter()
            .filter(|span| span.parent_span_id.is_empty())
            .collect();
        assert_eq!(roots.len(), 1);
        for span in &spans {
            assert_eq!(span.trace_id, request.trace_id.to_vec());
            if !span.parent_span_id.is_empty() {
                assert!(spans
                    .iter()
                    .any(|parent| parent.span_id == span.parent_span_id));
            }
        }
        let logs = log_export(std::slice::from_ref(&request));
        let records: Vec<_> = logs
            .resource_logs
            .iter()
            .flat_map(|resource| &resource.scope_logs)
            .flat_map(|scope| &scope.log_records)
            .collect();
        assert_eq!(records.len(), 3);
        assert!(records
            .iter()
            .all(|record| record.trace_id == request.trace_id.to_vec()));
        assert!(records
            .iter()
            .all(|record| record.severity_number == SeverityNumber::Error as i32));
    }

    #[test]
    fn statsd_lines_follow_the_default_rules_conventions() {
        let mut random = Random(7);
        let requests: Vec<Request> = (0..200).map(|_| simulate(&mut random, 0, 1.0)).collect();
        let datagrams = statsd_datagrams(&requests);
        assert!(datagrams.iter().all(|datagram| datagram.len() <= 1_400));
        let lines: Vec<&str> = datagrams
            .iter()
            .flat_map(|datagram| datagram.lines())
            .collect();
        assert_eq!(lines.len(), 200 * 3 * 3);
        assert!(lines.contains(&"errors:1|c|#service:market"));
        assert!(lines
            .iter()
            .any(|line| line.starts_with("request_duration:")
                && line.ends_with("|ms|#service:gateway")));
    }
}
