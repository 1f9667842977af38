//! The listeners over real sockets on 127.0.0.1: backpressure and store failures map to the
//! status codes OTLP clients retry on, and the gRPC message limit holds.

use std::sync::{Arc, Barrier};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan};
use prost::Message;
use tokio_util::sync::CancellationToken;
use vigil_model::{
    MemoryLogSink, MetricBatch, MetricSink, SinkError, Span, SpanSink, SpanSinkError, Telemetry,
};

use super::{run, OtlpIngest, OtlpOptions};

struct NoMetrics;

impl MetricSink for NoMetrics {
    fn write(&self, _batch: MetricBatch) -> Result<(), SinkError> {
        Ok(())
    }
}

struct Overloaded;

impl SpanSink for Overloaded {
    fn write(&self, _spans: Vec<Span>) -> Result<(), SpanSinkError> {
        Err(SpanSinkError::Overloaded)
    }
}

/// Holds each write until the test releases it.
/// A store that holds each write: it meets the test once on entering and
/// again before it returns, so the test knows when a write slot is taken.
struct Held(Arc<Barrier>);

impl SpanSink for Held {
    fn write(&self, _spans: Vec<Span>) -> Result<(), SpanSinkError> {
        self.0.wait();
        self.0.wait();
        Ok(())
    }
}

fn request(spans: usize, name_bytes: usize) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|index| OtlpSpan {
                        trace_id: vec![1; 16],
                        span_id: vec![u8::try_from(index % 250).unwrap() + 1; 8],
                        name: "x".repeat(name_bytes),
                        ..OtlpSpan::default()
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

struct Running {
    grpc: String,
    http: String,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(spans: Arc<dyn SpanSink>, options: OtlpOptions) -> Running {
    let grpc_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let http_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = format!("http://{}", grpc_listener.local_addr().unwrap());
    let http = format!("http://{}", http_listener.local_addr().unwrap());
    let ingest = OtlpIngest::new(
        spans,
        Arc::new(MemoryLogSink::new()),
        Arc::new(NoMetrics),
        Telemetry::new(),
        options,
    );
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(run(
        ingest,
        Some(grpc_listener),
        Some(http_listener),
        shutdown.clone(),
    ));
    Running {
        grpc,
        http,
        shutdown,
        task,
    }
}

async fn post_protobuf(url: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{url}/v1/traces"))
        .header("Content-Type", "application/x-protobuf")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overloaded_store_answers_unavailable_and_503_with_retry_after() {
    let running = start(Arc::new(Overloaded), OtlpOptions::default()).await;
    let mut client = TraceServiceClient::connect(running.grpc.clone())
        .await
        .unwrap();
    let status = client.export(request(3, 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let response = post_protobuf(&running.http, request(3, 1).encode_to_vec()).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "1");
    running.shutdown.cancel();
    running.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_write_slots_answer_resource_exhausted_and_429() {
    let barrier = Arc::new(Barrier::new(2));
    let options = OtlpOptions {
        max_pending_writes: 1,
        ..OtlpOptions::default()
    };
    let running = start(Arc::new(Held(barrier.clone())), options).await;
    // The first export takes the only slot and waits in the store.
    let grpc = running.grpc.clone();
    let first = tokio::spawn(async move {
        let mut client = TraceServiceClient::connect(grpc).await.unwrap();
        client.export(request(1, 1)).await
    });
    let entered = barrier.clone();
    tokio::task::spawn_blocking(move || entered.wait())
        .await
        .unwrap();
    let mut client = TraceServiceClient::connect(running.grpc.clone())
        .await
        .unwrap();
    let status = client.export(request(1, 1)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    let response = post_protobuf(&running.http, request(1, 1).encode_to_vec()).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let release = barrier.clone();
    tokio::task::spawn_blocking(move || release.wait())
        .await
        .unwrap();
    assert!(first.await.unwrap().is_ok(), "the held export completes");
    running.shutdown.cancel();
    running.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_messages_over_the_limit_are_refused() {
    let options = OtlpOptions {
        max_message_bytes: 64 << 10,
        ..OtlpOptions::default()
    };
    let sink = Arc::new(vigil_model::MemorySpanSink::new());
    let running = start(sink.clone(), options).await;
    let mut client = TraceServiceClient::connect(running.grpc.clone())
        .await
        .unwrap();
    let status = client.export(request(100, 1_000)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::OutOfRange, "{status:?}");
    assert!(sink.spans().is_empty());
    client.export(request(10, 10)).await.unwrap();
    assert_eq!(sink.spans().len(), 10);
    running.shutdown.cancel();
    running.task.await.unwrap();
}
