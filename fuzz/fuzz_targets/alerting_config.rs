//! Fuzzes the alertmanager.yml subset under `alertmanager:` and the prometheus.yml
//! `alerting:` section (YAML written by users, re-read on every reload), and Alertmanager's
//! matcher syntax (`service="a"`, `{alertname=~"High.*"}`), which also arrives in API v2
//! query parameters. Parsing must give a config or an error, never panic; a valid config
//! must build its route tree and route an alert.
//!
//! Run: `cargo +nightly fuzz run alerting_config` (from `fuzz/`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_alerting::config::{AlertmanagerConfig, ExternalAlertingConfig};
use vigil_alerting::route::{parse_matchers, Route};
use vigil_model::Labels;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(config) = AlertmanagerConfig::from_yaml(&text) {
        let route = Route::from_config(&config).expect("a validated config builds its routes");
        let labels = Labels::from_pairs([
            ("alertname", "HighErrorRate"),
            ("service", "gateway"),
            ("severity", "page"),
        ]);
        let _ = route.matching(&labels);
        let _ = config.effective_receivers();
    }
    if let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
        if let Ok(external) = ExternalAlertingConfig::from_value(value) {
            let _ = external.endpoints();
        }
    }
    if let Ok(matchers) = parse_matchers(&text) {
        let labels = Labels::from_pairs([("service", "gateway")]);
        for matcher in &matchers {
            let _ = matcher.matches(&labels);
        }
    }
});
