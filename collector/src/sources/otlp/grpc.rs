//! OTLP/gRPC: the TraceService, MetricsService and LogsService of `opentelemetry-proto`,
//! served by tonic with gzip in both directions and `server.max_body_bytes` as the largest
//! message.
//!
//! The services are routed here rather than through the generated servers so that a message
//! that is not valid protobuf answers INVALID_ARGUMENT (the generated code's codec answers
//! INTERNAL, which OTLP clients would retry forever). Status codes:
//! INVALID_ARGUMENT for undecodable messages, RESOURCE_EXHAUSTED when too many exports are in
//! progress, UNAVAILABLE when the store is overloaded or failed (both retryable), OUT_OF_RANGE
//! past the message size limit (tonic's own answer).

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use opentelemetry_proto::tonic::collector::logs::v1::{
    ExportLogsPartialSuccess, ExportLogsServiceRequest, ExportLogsServiceResponse,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsPartialSuccess, ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use tokio_util::sync::CancellationToken;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, Body, Service, StdError};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Code, Status};

use super::{ExportError, ExportOutcome, OtlpIngest, PROTOCOL_GRPC};

/// One OTLP signal's gRPC service: its name, messages and export call.
pub trait Signal: Send + Sync + 'static {
    /// The request message.
    type Request: prost::Message + Default + Send + 'static;
    /// The response message.
    type Response: prost::Message + Send + 'static;
    /// The fully qualified service name.
    const SERVICE: &'static str;
    /// Exports a request through `ingest`.
    fn export(
        ingest: OtlpIngest,
        request: Self::Request,
    ) -> impl Future<Output = Result<Self::Response, ExportError>> + Send;
}

/// The trace signal.
pub struct Traces;
/// The metrics signal.
pub struct Metrics;
/// The logs signal.
pub struct Logs;

impl Signal for Traces {
    type Request = ExportTraceServiceRequest;
    type Response = ExportTraceServiceResponse;
    const SERVICE: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
    async fn export(
        ingest: OtlpIngest,
        request: Self::Request,
    ) -> Result<Self::Response, ExportError> {
        let outcome = ingest.export_traces(PROTOCOL_GRPC, request).await?;
        Ok(ExportTraceServiceResponse {
            partial_success: partial(&outcome).map(|(rejected, message)| {
                ExportTracePartialSuccess {
                    rejected_spans: rejected,
                    error_message: message,
                }
            }),
        })
    }
}

impl Signal for Metrics {
    type Request = ExportMetricsServiceRequest;
    type Response = ExportMetricsServiceResponse;
    const SERVICE: &'static str = "opentelemetry.proto.collector.metrics.v1.MetricsService";
    async fn export(
        ingest: OtlpIngest,
        request: Self::Request,
    ) -> Result<Self::Response, ExportError> {
        let outcome = ingest.export_metrics(PROTOCOL_GRPC, request).await?;
        Ok(ExportMetricsServiceResponse {
            partial_success: partial(&outcome).map(|(rejected, message)| {
                ExportMetricsPartialSuccess {
                    rejected_data_points: rejected,
                    error_message: message,
                }
            }),
        })
    }
}

impl Signal for Logs {
    type Request = ExportLogsServiceRequest;
    type Response = ExportLogsServiceResponse;
    const SERVICE: &'static str = "opentelemetry.proto.collector.logs.v1.LogsService";
    async fn export(
        ingest: OtlpIngest,
        request: Self::Request,
    ) -> Result<Self::Response, ExportError> {
        let outcome = ingest.export_logs(PROTOCOL_GRPC, request).await?;
        Ok(ExportLogsServiceResponse {
            partial_success: partial(&outcome).map(|(rejected, message)| {
                ExportLogsPartialSuccess {
                    rejected_log_records: rejected,
                    error_message: message,
                }
            }),
        })
    }
}

/// `partial_success` is left out when nothing was rejected.
fn partial(outcome: &ExportOutcome) -> Option<(i64, String)> {
    (outcome.rejected > 0 || !outcome.error_message.is_empty())
        .then(|| (outcome.rejected, outcome.error_message.clone()))
}

/// The one place an [`ExportError`] becomes a gRPC status.
fn status_of(error: ExportError) -> Status {
    match error {
        ExportError::InvalidArgument(message) => Status::invalid_argument(message),
        ExportError::TooManyRequests => Status::resource_exhausted(error.to_string()),
        ExportError::Unavailable(message) => Status::unavailable(message),
    }
}

/// Prost encoding whose decode errors are INVALID_ARGUMENT.
struct OtlpCodec<Request, Response>(PhantomData<fn(Request) -> Response>);

impl<Request, Response> Default for OtlpCodec<Request, Response> {
    fn default() -> Self {
        OtlpCodec(PhantomData)
    }
}

impl<Request, Response> Codec for OtlpCodec<Request, Response>
where
    Request: prost::Message + Default + Send + 'static,
    Response: prost::Message + Send + 'static,
{
    type Encode = Response;
    type Decode = Request;
    type Encoder = MessageEncoder<Response>;
    type Decoder = MessageDecoder<Request>;

    fn encoder(&mut self) -> Self::Encoder {
        MessageEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(PhantomData)
    }
}

struct MessageEncoder<Message>(PhantomData<fn(Message)>);

impl<Message: prost::Message> Encoder for MessageEncoder<Message> {
    type Item = Message;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, buffer: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode(buffer)
            .map_err(|error| Status::internal(format!("cannot encode the response: {error}")))
    }
}

struct MessageDecoder<Message>(PhantomData<fn() -> Message>);

impl<Message: prost::Message + Default> Decoder for MessageDecoder<Message> {
    type Item = Message;
    type Error = Status;

    fn decode(&mut self, buffer: &mut DecodeBuf<'_>) -> Result<Option<Message>, Status> {
        Message::decode(buffer).map(Some).map_err(|error| {
            Status::invalid_argument(format!("the message is not valid protobuf: {error}"))
        })
    }
}

/// The gRPC service of one signal.
pub struct SignalService<S> {
    ingest: OtlpIngest,
    signal: PhantomData<fn() -> S>,
}

impl<S> Clone for SignalService<S> {
    fn clone(&self) -> Self {
        SignalService {
            ingest: self.ingest.clone(),
            signal: PhantomData,
        }
    }
}

impl<S: Signal> SignalService<S> {
    /// Returns the service exporting through `ingest`.
    pub fn new(ingest: OtlpIngest) -> Self {
        SignalService {
            ingest,
            signal: PhantomData,
        }
    }
}

impl<S: Signal> NamedService for SignalService<S> {
    const NAME: &'static str = S::SERVICE;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

struct ExportCall<S> {
    ingest: OtlpIngest,
    signal: PhantomData<fn() -> S>,
}

impl<S: Signal> UnaryService<S::Request> for ExportCall<S> {
    type Response = S::Response;
    type Future = BoxFuture<Result<tonic::Response<S::Response>, Status>>;

    fn call(&mut self, request: tonic::Request<S::Request>) -> Self::Future {
        let ingest = self.ingest.clone();
        Box::pin(async move {
            let response = S::export(ingest, request.into_inner())
                .await
                .map_err(status_of)?;
            Ok(tonic::Response::new(response))
        })
    }
}

impl<S, RequestBody> Service<http::Request<RequestBody>> for SignalService<S>
where
    S: Signal,
    RequestBody: Body + Send + 'static,
    RequestBody::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _context: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        let is_export = request
            .uri()
            .path()
            .strip_prefix('/')
            .and_then(|path| path.strip_prefix(S::SERVICE))
            == Some("/Export");
        let ingest = self.ingest.clone();
        let authorized = ingest.options().tokens.allow(request.headers());
        Box::pin(async move {
            if !is_export {
                return Ok(Status::new(Code::Unimplemented, "no such method").into_http());
            }
            if !authorized {
                return Ok(Status::new(
                    Code::Unauthenticated,
                    "an ingest token is required: send `authorization: Bearer <token>` metadata",
                )
                .into_http());
            }
            let max_message_bytes = ingest.options().max_message_bytes;
            let codec = OtlpCodec::<S::Request, S::Response>::default();
            let mut grpc = Grpc::new(codec)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(max_message_bytes);
            let call = ExportCall::<S> {
                ingest,
                signal: PhantomData,
            };
            Ok(grpc.unary(call, request).await)
        })
    }
}

/// HTTP/2 flow-control window of one export stream.
const GRPC_STREAM_WINDOW_BYTES: u32 = 4 << 20;
/// HTTP/2 flow-control window of one connection (all its streams).
const GRPC_CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// Serves the three services on `listener` until `shutdown`.
///
/// # Errors
/// When the server fails.
pub async fn serve(
    ingest: OtlpIngest,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    // An export of a few hundred kilobytes takes several HTTP/2 flow-control windows of the
    // default 64 KiB; larger windows and TCP_NODELAY keep the small WINDOW_UPDATE and response
    // frames from waiting for the peer's delayed ACK (Nagle), which stalled each export ~40 ms.
    tonic::transport::Server::builder()
        .initial_stream_window_size(Some(GRPC_STREAM_WINDOW_BYTES))
        .initial_connection_window_size(Some(GRPC_CONNECTION_WINDOW_BYTES))
        .add_service(SignalService::<Traces>::new(ingest.clone()))
        .add_service(SignalService::<Metrics>::new(ingest.clone()))
        .add_service(SignalService::<Logs>::new(ingest))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move { shutdown.cancelled().await },
        )
        .await
}
