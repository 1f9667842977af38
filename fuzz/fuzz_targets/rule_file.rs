//! Fuzzes the Prometheus rule-file parser (rule files are YAML written by users, and reloads
//! read whatever is on disk): groups, durations, PromQL expressions and the templates of labels
//! and annotations. Parsing must return rules or errors naming file, group and rule, never
//! panic; a template that parses must expand (to text or an error) without panicking.
//!
//! Run: `cargo +nightly fuzz run rule_file` (from `fuzz/`).
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use vigil_alerting::rule::parse_rule_file;
use vigil_alerting::template::{expand_or_error_text, Template, TemplateData};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    match parse_rule_file("fuzz.yml", &text) {
        Ok(groups) => {
            for group in &groups {
                assert!(
                    !group.name.is_empty(),
                    "a group without a name was accepted"
                );
            }
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "a failed parse must say why");
            for error in &errors {
                assert!(error.to_string().starts_with("fuzz.yml"), "{error}");
            }
        }
    }
    // The same bytes as one label or annotation template.
    let template_data = TemplateData {
        labels: BTreeMap::from([("service".to_string(), "gateway".to_string())]),
        external_labels: BTreeMap::new(),
        value: 0.25,
    };
    if let Ok(template) = Template::parse(&text) {
        let _ = template.expand(&template_data);
    }
    let _ = expand_or_error_text(&text, &template_data);
});
