//! Vigil started with both OTLP listeners on free ports, and the attribute builders the OTLP
//! and trace tests share.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

use super::{free_tcp_port, Vigil};

/// A running Vigil with OTLP/gRPC and OTLP/HTTP listening.
pub struct Otlp {
    pub vigil: Vigil,
    /// `http://127.0.0.1:<port>` of the gRPC listener.
    pub grpc_url: String,
    /// `http://127.0.0.1:<port>` of the HTTP listener.
    pub http_url: String,
}

/// Starts Vigil with both OTLP listeners on free ports; `extra` is more YAML for its config.
pub async fn start_otlp(extra: &str) -> anyhow::Result<Otlp> {
    let grpc_port = free_tcp_port();
    let http_port = free_tcp_port();
    let vigil = Vigil::start(&format!(
        "server:\n  self_monitoring: false\n  max_body_bytes: 1MiB\notlp:\n  grpc_listen: 127.0.0.1:{grpc_port}\n  http_listen: 127.0.0.1:{http_port}\n{extra}"
    ))
    .await?;
    Ok(Otlp {
        vigil,
        grpc_url: format!("http://127.0.0.1:{grpc_port}"),
        http_url: format!("http://127.0.0.1:{http_port}"),
    })
}

/// Now, in nanoseconds since the Unix epoch (OTLP's timestamps).
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

pub fn string_kv(key: &str, value: &str) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.to_string()))
}

pub fn int_kv(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}
