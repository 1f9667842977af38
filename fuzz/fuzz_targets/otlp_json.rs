//! Fuzzes OTLP/JSON decoding and conversion of all three signals: no input may panic.
//!
//! Run: `cargo +nightly fuzz run otlp_json` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use vigil_collector::sources::json_logs::NormalizeOptions;
use vigil_collector::sources::otlp::http::{decode_request, Encoding};
use vigil_collector::sources::otlp::metrics::{convert_metrics, MetricsState};
use vigil_collector::sources::otlp::{logs, traces};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request::<ExportTraceServiceRequest>(Encoding::Json, data) {
        let _ = traces::convert_traces(request);
    }
    if let Ok(request) = decode_request::<ExportLogsServiceRequest>(Encoding::Json, data) {
        let _ = logs::convert_logs(&request, 0, &NormalizeOptions::default());
    }
    if let Ok(request) = decode_request::<ExportMetricsServiceRequest>(Encoding::Json, data) {
        let mut state = MetricsState::new(1_000);
        let _ = convert_metrics(&request, &mut state, 0);
    }
});
