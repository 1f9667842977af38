//! Property tests of the parsers of untrusted alerting input: rule files, the `alertmanager:`
//! and `alerting:` sections (YAML written by users, re-read on every reload) and Alertmanager's
//! matcher syntax (also in API v2 query parameters). Strategies lean toward the edges: empty
//! and unicode strings, quotes and backslashes, zero durations, YAML syntax soup. The fuzz
//! targets `rule_file` and `alerting_config` cover the same parsers with coverage guidance.

use std::collections::BTreeMap;
use std::time::Duration;

use proptest::prelude::*;
use vigil_model::{Labels, MatchOp};

use crate::config::{AlertmanagerConfig, ExternalAlertingConfig};
use crate::route::{parse_matchers, Route};
use crate::rule::{parse_rule_file, RuleKind};

/// One generated alerting rule: name, expression, `for` in seconds, labels, annotations.
#[derive(Debug, Clone)]
struct GeneratedRule {
    alert: String,
    expr: &'static str,
    hold_seconds: u64,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

/// Text without template actions (so a label or annotation is taken literally): any
/// printable character, quotes and backslashes included, and empty.
fn literal_text() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[\"'\\\\ :#{}\\[\\],&*!|>%@`-]{1,6}",
        "\\PC{0,24}",
    ]
    .prop_filter("no template actions", |text| !text.contains("{{"))
}

fn label_name() -> impl Strategy<Value = String> {
    "[a-zA-Z_][a-zA-Z0-9_]{0,12}".prop_filter("reserved", |name| {
        !name.starts_with("__") && name != "alertname"
    })
}

fn generated_rule() -> impl Strategy<Value = GeneratedRule> {
    (
        "[A-Z][A-Za-z0-9_]{0,15}",
        prop::sample::select(vec![
            "up == 0",
            "sum by (service) (rate(errors[5m])) / sum by (service) (rate(requests[5m])) > 0.05",
            "histogram_quantile(0.99, sum by (service) (rate(request_duration[5m]))) > 1",
            "absent(up{job=\"vigil\"})",
            "vector(1)",
        ]),
        prop_oneof![Just(0u64), 1u64..100_000],
        prop::collection::btree_map(label_name(), literal_text(), 0..4),
        prop::collection::btree_map(label_name(), literal_text(), 0..3),
    )
        .prop_map(
            |(alert, expr, hold_seconds, labels, annotations)| GeneratedRule {
                alert,
                expr,
                hold_seconds,
                labels,
                annotations,
            },
        )
}

/// Writes groups as a rule file through a YAML serializer, so any text is quoted correctly.
fn rule_file_text(groups: &[(String, Vec<GeneratedRule>)]) -> String {
    let groups: Vec<serde_json::Value> = groups
        .iter()
        .map(|(name, rules)| {
            let rules: Vec<serde_json::Value> = rules
                .iter()
                .map(|rule| {
                    serde_json::json!({
                        "alert": rule.alert,
                        "expr": rule.expr,
                        "for": format!("{}s", rule.hold_seconds),
                        "labels": rule.labels,
                        "annotations": rule.annotations,
                    })
                })
                .collect();
            serde_json::json!({"name": name, "rules": rules})
        })
        .collect();
    serde_yaml_ng::to_string(&serde_json::json!({ "groups": groups })).unwrap_or_default()
}

/// YAML-shaped soup: pieces of rule-file and alertmanager.yml syntax and arbitrary text.
fn yaml_soup() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(vec![
            "groups:",
            "\n",
            "- name: g",
            "  rules:",
            "  - alert: A",
            "    expr: ",
            "up",
            "rate(x[5m]",
            "    for: ",
            "5m",
            "-1s",
            "    labels:",
            "  - record: r",
            "route:",
            "  receiver: r",
            "  routes:",
            "  - matchers: ['a=\"b\"']",
            "  match_re: {a: '('}",
            "receivers:",
            "- name: r",
            "  webhook_configs: [{url: 'http://h/'}]",
            "  email_configs: [{to: a@b}]",
            "inhibit_rules:",
            "  group_by: ['...']",
            "  group_wait: 0s",
            "alertmanagers:",
            "- static_configs: [{targets: ['h:1']}]",
            " ",
            ":",
            "'",
            "\"",
            "{{",
            "[",
            "]",
            "{",
            "}",
            "&a",
            "*a",
            "!!binary",
            "---",
            "\t",
        ])
        .prop_map(str::to_string),
        "\\PC{0,8}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Any rule file written through a YAML serializer loads with exactly its groups, rules,
    /// holds, labels and annotations.
    #[test]
    fn generated_rule_files_load_as_written(
        groups in prop::collection::vec(
            ("[a-z][a-z0-9_-]{0,15}", prop::collection::vec(generated_rule(), 1..5)),
            1..4,
        )
        .prop_filter("unique group names", |groups| {
            let mut names: Vec<&String> = groups.iter().map(|(name, _)| name).collect();
            names.sort();
            names.dedup();
            names.len() == groups.len()
        })
    ) {
        let text = rule_file_text(&groups);
        let loaded = parse_rule_file("generated.yml", &text)
            .map_err(|errors| TestCaseError::fail(format!("{errors:?}\n{text}")))?;
        prop_assert_eq!(loaded.len(), groups.len());
        for (group, (name, rules)) in loaded.iter().zip(&groups) {
            prop_assert_eq!(&group.name, name);
            prop_assert_eq!(&group.file, "generated.yml");
            prop_assert_eq!(group.rules.len(), rules.len());
            for (rule, generated) in group.rules.iter().zip(rules) {
                prop_assert_eq!(&rule.name, &generated.alert);
                prop_assert_eq!(rule.expr.as_str(), generated.expr);
                prop_assert_eq!(&rule.labels, &generated.labels);
                let RuleKind::Alerting { hold, annotations, .. } = &rule.kind else {
                    return Err(TestCaseError::fail("not an alerting rule"));
                };
                prop_assert_eq!(*hold, Duration::from_secs(generated.hold_seconds));
                prop_assert_eq!(annotations, &generated.annotations);
            }
        }
    }

    /// Rule-file-shaped soup never panics the loader, and every error names the file.
    #[test]
    fn rule_file_soup_never_panics(text in yaml_soup()) {
        if let Err(errors) = parse_rule_file("soup.yml", &text) {
            prop_assert!(!errors.is_empty());
            for error in &errors {
                prop_assert!(error.to_string().starts_with("soup.yml"), "{}", error);
            }
        }
    }

    /// Config-shaped soup never panics the `alertmanager:` or `alerting:` readers, and a
    /// config they accept builds its route tree.
    #[test]
    fn alerting_config_soup_never_panics(text in yaml_soup()) {
        if let Ok(config) = AlertmanagerConfig::from_yaml(&text) {
            let route = Route::from_config(&config);
            prop_assert!(route.is_ok(), "{:?}", route.err());
            let labels = Labels::from_pairs([("alertname", "A"), ("service", "gateway")]);
            let _ = route.map(|route| route.matching(&labels).len());
        }
        if let Ok(value) = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text) {
            let _ = ExternalAlertingConfig::from_value(value);
        }
    }

    /// `name="value"` and `name!="value"` with the value quoted as Alertmanager quotes it
    /// (backslash before `"` and `\`, `\n` for a newline) parse back to the same matcher.
    #[test]
    fn quoted_matchers_round_trip(
        name in "[a-zA-Z_][a-zA-Z0-9_]{0,12}",
        value in prop_oneof![Just(String::new()), "[\"\\\\,{}= ]{1,6}", "\\PC{0,24}"],
        negated in any::<bool>(),
        braces in any::<bool>(),
    ) {
        let quoted: String = value
            .chars()
            .flat_map(|character| match character {
                '"' => vec!['\\', '"'],
                '\\' => vec!['\\', '\\'],
                '\n' => vec!['\\', 'n'],
                other => vec![other],
            })
            .collect();
        let op = if negated { "!=" } else { "=" };
        let mut text = format!("{name}{op}\"{quoted}\"");
        if braces {
            text = format!("{{{text}}}");
        }
        let matchers = parse_matchers(&text)
            .map_err(|error| TestCaseError::fail(format!("{text}: {error}")))?;
        prop_assert_eq!(matchers.len(), 1);
        prop_assert_eq!(&matchers[0].name, &name);
        prop_assert_eq!(&matchers[0].value, &value);
        prop_assert_eq!(matches!(matchers[0].op, MatchOp::NotEqual), negated);
    }

    /// Arbitrary text never panics the matcher parser, and what it accepts can be matched.
    #[test]
    fn matcher_text_never_panics(text in "\\PC{0,40}") {
        if let Ok(matchers) = parse_matchers(&text) {
            let labels = Labels::from_pairs([("service", "gateway")]);
            for matcher in &matchers {
                let _ = matcher.matches(&labels);
            }
        }
    }
}
