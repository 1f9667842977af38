//! What every `vigil-load` subcommand shares: duration arguments, the loopback-only rule, and
//! OTLP attribute builders.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::bail;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};

/// Parses a Prometheus-style duration argument (`10s`, `1h30m`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    vigil_model::units::parse_duration(text).map_err(|error| error.to_string())
}

/// Refuses every target that is not a loopback address: load stays on this machine.
pub fn require_loopback(target: SocketAddr) -> anyhow::Result<()> {
    if !target.ip().is_loopback() {
        bail!("vigil-load only sends to loopback addresses, not {target}");
    }
    Ok(())
}

/// A string attribute.
pub fn string_kv(key: &str, value: impl Into<String>) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.into())),
        }),
        ..KeyValue::default()
    }
}

/// An integer attribute.
pub fn int_kv(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::IntValue(value)),
        }),
        ..KeyValue::default()
    }
}

/// Returns the nearest-rank `fraction` percentile of sorted latencies: the smallest value with
/// at least that fraction of the samples at or below it (the p99 of 100 samples is the 99th,
/// not the largest).
pub fn percentile(sorted_millis: &[f64], fraction: f64) -> f64 {
    if sorted_millis.is_empty() {
        return 0.0;
    }
    let index = ((sorted_millis.len() as f64 * fraction).ceil() as usize).saturating_sub(1);
    sorted_millis[index.min(sorted_millis.len() - 1)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_targets() {
        assert!(require_loopback("127.0.0.1:8125".parse().unwrap()).is_ok());
        assert!(require_loopback("[::1]:8125".parse().unwrap()).is_ok());
        assert!(require_loopback("10.0.0.1:8125".parse().unwrap()).is_err());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let millis: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&millis, 0.5), 50.0);
        assert_eq!(percentile(&millis, 0.99), 99.0);
        assert_eq!(percentile(&millis, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.99), 7.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }
}
