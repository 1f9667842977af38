//! Prometheus names for OTLP metrics and attributes, as the OpenTelemetry Collector's
//! Prometheus exporter builds them (`pkg/translator/prometheus`, name normalisation on):
//!
//! - the name is split into tokens at every character that is not a letter or digit;
//! - the unit's main part is appended through the unit map (`s` → `seconds`, `By` → `bytes`,
//!   …; other units as they are, cleaned), unless it holds `{…}` or is already a token; a
//!   `/x` part appends `per_<x>` (`s` → `second`, `m` → `minute`, …);
//! - monotonic sums end in `_total` (moved to the end if present elsewhere); gauges with unit
//!   `1` end in `_ratio`;
//! - a name starting with a digit gets a leading `_`.
//!
//! Label names: every character that is not a letter, digit or `_` becomes `_`; a leading
//! digit gets `key_`, a single leading `_` gets `key`.

/// What kind of point a name is built for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A monotonic sum (a counter).
    MonotonicSum,
    /// A gauge.
    Gauge,
    /// Anything else (non-monotonic sums, histograms, summaries).
    Other,
}

/// Returns the Prometheus metric name of an OTLP metric.
pub fn metric_name(name: &str, unit: &str, kind: NameKind) -> String {
    let mut tokens: Vec<String> = split_tokens(name);
    let mut unit_parts = unit.splitn(2, '/');
    let main_unit = unit_parts.next().unwrap_or_default().trim();
    if !main_unit.is_empty() && !main_unit.contains(['{', '}']) {
        let prometheus_unit = clean_up(main_unit_name(main_unit));
        if !prometheus_unit.is_empty() && !tokens.contains(&prometheus_unit) {
            tokens.push(prometheus_unit);
        }
    }
    if let Some(per_unit) = unit_parts.next() {
        let per_unit = per_unit.trim();
        if !per_unit.is_empty() && !per_unit.contains(['{', '}']) {
            let prometheus_per_unit = clean_up(per_unit_name(per_unit));
            if !prometheus_per_unit.is_empty() && !tokens.contains(&prometheus_per_unit) {
                tokens.push("per".to_string());
                tokens.push(prometheus_per_unit);
            }
        }
    }
    if kind == NameKind::MonotonicSum {
        tokens.retain(|token| token != "total");
        tokens.push("total".to_string());
    }
    if unit == "1" && kind == NameKind::Gauge {
        tokens.retain(|token| token != "ratio");
        tokens.push("ratio".to_string());
    }
    let mut joined = tokens.join("_");
    if joined.starts_with(|character: char| character.is_ascii_digit()) {
        joined.insert(0, '_');
    }
    joined
}

/// Returns the Prometheus label name of an attribute key (empty for an empty key).
pub fn label_name(key: &str) -> String {
    if key.is_empty() {
        return String::new();
    }
    let mut sanitized: String = key
        .chars()
        .map(|character| {
            if character.is_alphanumeric() || character == '_' {
                character
            } else {
                '_'
            }
        })
        .collect();
    if sanitized.starts_with(|character: char| character.is_ascii_digit()) {
        sanitized.insert_str(0, "key_");
    } else if sanitized.starts_with('_') && !sanitized.starts_with("__") {
        sanitized.insert_str(0, "key");
    }
    sanitized
}

fn split_tokens(text: &str) -> Vec<String> {
    text.split(|character: char| !character.is_alphanumeric())
        .filter(|token| !token.is_empty())
        .map(str::to_string)
        .collect()
}

fn clean_up(text: &str) -> String {
    split_tokens(text).join("_")
}

fn main_unit_name(unit: &str) -> &str {
    match unit {
        "d" => "days",
        "h" => "hours",
        "min" => "minutes",
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "KiBy" => "kibibytes",
        "MiBy" => "mebibytes",
        "GiBy" => "gibibytes",
        "TiBy" => "tibibytes",
        "KBy" => "kilobytes",
        "MBy" => "megabytes",
        "GBy" => "gigabytes",
        "TBy" => "terabytes",
        "m" => "meters",
        "V" => "volts",
        "A" => "amperes",
        "J" => "joules",
        "W" => "watts",
        "g" => "grams",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "1" => "",
        "%" => "percent",
        other => other,
    }
}

fn per_unit_name(unit: &str) -> &str {
    match unit {
        "s" => "second",
        "m" => "minute",
        "h" => "hour",
        "d" => "day",
        "w" => "week",
        "mo" => "month",
        "y" => "year",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_the_collector_exporter_builds_them() {
        // Cases from the collector's normalize_name_test.go and the semantic conventions.
        let cases = [
            (
                "http.server.request.duration",
                "s",
                NameKind::Other,
                "http_server_request_duration_seconds",
            ),
            (
                "system.io",
                "By",
                NameKind::MonotonicSum,
                "system_io_bytes_total",
            ),
            (
                "requests",
                "{request}",
                NameKind::MonotonicSum,
                "requests_total",
            ),
            (
                "requests.total",
                "1",
                NameKind::MonotonicSum,
                "requests_total",
            ),
            (
                "total.requests",
                "",
                NameKind::MonotonicSum,
                "requests_total",
            ),
            (
                "cpu.utilization",
                "1",
                NameKind::Gauge,
                "cpu_utilization_ratio",
            ),
            (
                "cpu.utilization",
                "1",
                NameKind::MonotonicSum,
                "cpu_utilization_total",
            ),
            (
                "throughput",
                "By/s",
                NameKind::Gauge,
                "throughput_bytes_per_second",
            ),
            ("speed", "m/h", NameKind::Gauge, "speed_meters_per_hour"),
            ("disk.usage", "%", NameKind::Gauge, "disk_usage_percent"),
            ("latency_seconds", "s", NameKind::Other, "latency_seconds"),
            ("2xx.responses", "", NameKind::Gauge, "_2xx_responses"),
            ("temperature", "Cel", NameKind::Gauge, "temperature_celsius"),
            (
                "queue.depth",
                "{items}/s",
                NameKind::Gauge,
                "queue_depth_per_second",
            ),
            ("odd", "foo-bar", NameKind::Gauge, "odd_foo_bar"),
        ];
        for (name, unit, kind, expected) in cases {
            assert_eq!(
                metric_name(name, unit, kind),
                expected,
                "{name} {unit} {kind:?}"
            );
        }
    }

    #[test]
    fn label_names_are_sanitised() {
        assert_eq!(label_name("service.name"), "service_name");
        assert_eq!(
            label_name("http.response.status_code"),
            "http_response_status_code"
        );
        assert_eq!(label_name("0day"), "key_0day");
        assert_eq!(label_name("_private"), "key_private");
        assert_eq!(label_name("__reserved"), "__reserved");
        assert_eq!(label_name("a-b c"), "a_b_c");
        assert_eq!(label_name(""), "");
    }
}
