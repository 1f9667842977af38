//! Fuzzes OTLP/protobuf decoding and conversion of all three signals: no input may panic;
//! a message that decodes re-encodes to bytes that decode to the same message.
//!
//! Run: `cargo +nightly fuzz run otlp_proto` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message as _;
use vigil_collector::sources::json_logs::NormalizeOptions;
use vigil_collector::sources::otlp::http::{decode_request, Encoding};
use vigil_collector::sources::otlp::metrics::{convert_metrics, MetricsState};
use vigil_collector::sources::otlp::{logs, traces};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request::<ExportTraceServiceRequest>(Encoding::Protobuf, data) {
        let again = ExportTraceServiceRequest::decode(request.encode_to_vec().as_slice())
            .expect("re-encoded request decodes");
        assert_eq!(again, request);
        let converted = traces::convert_traces(request);
        assert!(converted.spans.iter().all(|span| span.duration_ns >= 0));
    }
    if let Ok(request) = decode_request::<ExportLogsServiceRequest>(Encoding::Protobuf, data) {
        let _ = logs::convert_logs(&request, 0, &NormalizeOptions::default());
    }
    if let Ok(request) = decode_request::<ExportMetricsServiceRequest>(Encoding::Protobuf, data) {
        let mut state = MetricsState::new(1_000);
        let _ = convert_metrics(&request, &mut state, 0);
        state.commit();
        let _ = convert_metrics(&request, &mut state, 0);
        state.rollback();
    }
});
