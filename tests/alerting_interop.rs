//! Black-box interoperability of Vigil's alerting with the real Prometheus tools (issue 5,
//! acceptance point 3), run as child processes on 127.0.0.1 with temporary directories:
//!
//! - a real `prometheus` whose `alerting.alertmanagers` points at Vigil delivers its alert
//!   through Vigil's routes to a webhook receiver in the test;
//! - `amtool` pointed at Vigil lists Vigil's alerts, adds, queries and expires a silence, and
//!   the silence really keeps its alert out of the webhook messages until it is expired;
//! - Vigil's `alerting:` section sends Vigil's alerts to a real `prometheus-alertmanager`,
//!   whose own webhook receiver (the test's HTTP server) gets FIRING then RESOLVED.
//!
//! The tools come from Debian's packages `prometheus` (2.42) and `prometheus-alertmanager`
//! (0.25, with `amtool`); `.ci/run` installs them. Without them these tests fail and say so.
//!
//! Run: `cargo test --test alerting_interop`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::webhook::{import_error_ratio, Receiver};
use common::{free_tcp_port, Vigil};
use serde_json::Value;

const INSTALL_HINT: &str = "install Debian's packages `prometheus` and `prometheus-alertmanager` \
     (`apt-get install -y prometheus prometheus-alertmanager`; `.ci/run` does it)";

/// Returns the path of `name` on `PATH`, or an error saying how to install it.
fn require_tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for directory in std::env::split_paths(&path) {
        let candidate = directory.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("`{name}` is not installed, so this interoperability test cannot run: {INSTALL_HINT}")
}

/// A child process (prometheus, prometheus-alertmanager) with its own temporary directory and
/// log; killed when dropped, its log then printed (the test harness shows it only when the
/// test failed).
struct ToolProcess {
    name: String,
    child: Child,
    log_path: PathBuf,
    /// Holds the config and data; deleted after the process is killed.
    _directory: tempfile::TempDir,
}

impl ToolProcess {
    fn spawn(name: &str, directory: tempfile::TempDir, args: &[String]) -> anyhow::Result<Self> {
        let binary = require_tool(name)?;
        let log_path = directory.path().join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log_path)?;
        let child = Command::new(binary)
            .args(args)
            .current_dir(directory.path())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        Ok(ToolProcess {
            name: name.to_string(),
            child,
            log_path,
            _directory: directory,
        })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `GET url` answers 2xx (the tools' `/-/ready`).
    async fn wait_ready(&mut self, url: &str) -> anyhow::Result<()> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}:\n{}", self.name, self.log());
            }
            if let Ok(response) = client.get(url).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("{} not ready after 60 s:\n{}", self.name, self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for ToolProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("--- {} log ---\n{}", self.name, self.log());
    }
}

/// Returns the sorted values of `label` over the alerts of a webhook message.
fn alert_label_values(message: &Value, label: &str) -> Vec<String> {
    let mut values: Vec<String> = message["alerts"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(|alert| alert["labels"][label].as_str().map(str::to_string))
        .collect();
    values.sort();
    values
}

/// Writes a rule file firing `HighErrorRate` (severity page) for `error_ratio > 0.05`.
fn error_ratio_rules(directory: &Path) -> anyhow::Result<String> {
    let path = directory.join("rules.yml");
    std::fs::write(
        &path,
        r#"
groups:
  - name: symptoms
    rules:
      - alert: HighErrorRate
        expr: error_ratio > 0.05
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.service }} fails {{ $value | humanizePercentage }}"
"#,
    )?;
    Ok(path.display().to_string())
}

/// Runs `amtool --alertmanager.url=<url> args...` and returns its stdout; an error holds its
/// stderr when it exits non-zero.
async fn amtool(alertmanager_url: &str, args: &[&str]) -> anyhow::Result<String> {
    let binary = require_tool("amtool")?;
    let mut command = Command::new(binary);
    command
        .arg(format!("--alertmanager.url={alertmanager_url}"))
        .args(args)
        // No user or system amtool config may change the flags under test.
        .env("HOME", std::env::temp_dir())
        .stdin(Stdio::null());
    let shown = format!("amtool {}", args.join(" "));
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| format!("cannot run {shown}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "{shown} exited with {}:\nstdout: {stdout}\nstderr: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// Runs `amtool ... -o json` and parses its output.
async fn amtool_json(alertmanager_url: &str, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let mut with_output = args.to_vec();
    with_output.extend(["-o", "json"]);
    let stdout = amtool(alertmanager_url, &with_output).await?;
    let parsed: Value = serde_json::from_str(stdout.trim())
        .with_context(|| format!("amtool printed no JSON: {stdout}"))?;
    Ok(parsed.as_array().cloned().unwrap_or_default())
}

/// Polls `amtool alert query args...` until `wanted` holds for the listed alerts.
async fn wait_for_amtool_alerts(
    alertmanager_url: &str,
    args: &[&str],
    wanted: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut query = vec!["alert", "query"];
        query.extend_from_slice(args);
        let alerts = amtool_json(alertmanager_url, &query).await?;
        if wanted(&alerts) {
            return Ok(alerts);
        }
        if Instant::now() > deadline {
            bail!("amtool alert query {args:?} listed {alerts:#?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn services_of(alerts: &[Value]) -> Vec<String> {
    let mut services: Vec<String> = alerts
        .iter()
        .filter_map(|alert| alert["labels"]["service"].as_str().map(str::to_string))
        .collect();
    services.sort();
    services
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_delivers_its_alert_through_vigils_webhook_route() -> anyhow::Result<()> {
    require_tool("prometheus")?;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let vigil = Vigil::start(&format!(
        r#"
rule_files: []
alertmanager:
  route:
    receiver: nobody
    group_by: [alertname, service]
    group_wait: 0s
    group_interval: 1s
    routes:
      - matchers: ['severity="page"']
        receiver: oncall
  receivers:
    - name: nobody
    - name: oncall
      webhook_configs:
        - url: '{url}'
"#
    ))
    .await?;

    let directory = tempfile::tempdir()?;
    std::fs::write(
        directory.path().join("rules.yml"),
        r#"
groups:
  - name: from-prometheus
    rules:
      - alert: CheckoutBroken
        expr: vector(1)
        labels:
          severity: page
          service: checkout
        annotations:
          summary: "checkout is broken ({{ $value }})"
          runbook_url: https://runbooks.example/checkout
"#,
    )?;
    std::fs::write(
        directory.path().join("prometheus.yml"),
        format!(
            r#"
global:
  evaluation_interval: 1s
rule_files: [rules.yml]
alerting:
  alertmanagers:
    - api_version: v2
      static_configs:
        - targets: ['{vigil_address}']
"#,
            vigil_address = vigil.http_address
        ),
    )?;
    let port = free_tcp_port();
    let prometheus_url = format!("http://127.0.0.1:{port}");
    let data = directory.path().join("data").display().to_string();
    let config = directory
        .path()
        .join("prometheus.yml")
        .display()
        .to_string();
    let mut prometheus = ToolProcess::spawn(
        "prometheus",
        directory,
        &[
            format!("--config.file={config}"),
            format!("--storage.tsdb.path={data}"),
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--web.external-url={prometheus_url}"),
            // Prometheus sends a firing alert again every resend delay (1m by default); its
            // first send can come before it has discovered Vigil, so resend every second.
            "--rules.alert.resend-delay=1s".to_string(),
        ],
    )?;
    prometheus
        .wait_ready(&format!("{prometheus_url}/-/ready"))
        .await?;

    let message = receiver
        .wait_for_message(
            "with Prometheus' CheckoutBroken",
            Duration::from_secs(60),
            |message| message["groupLabels"]["alertname"] == "CheckoutBroken",
        )
        .await?;
    assert_eq!(message["version"], "4");
    assert_eq!(message["receiver"], "oncall");
    assert_eq!(message["status"], "firing");
    assert_eq!(
        message["groupKey"],
        "{}/{severity=\"page\"}:{alertname=\"CheckoutBroken\", service=\"checkout\"}"
    );
    let alert = &message["alerts"][0];
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["annotations"]["summary"], "checkout is broken (1)");
    assert_eq!(
        alert["annotations"]["runbook_url"],
        "https://runbooks.example/checkout"
    );
    assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
    assert!(
        alert["generatorURL"]
            .as_str()
            .unwrap_or_default()
            .starts_with(&format!("{prometheus_url}/graph?g0.expr=vector")),
        "{alert:#}"
    );
    // Vigil lists it as an Alertmanager would.
    let listed: Value = vigil
        .client
        .get(vigil.url("/api/v2/alerts"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(listed[0]["labels"]["alertname"], "CheckoutBroken");
    assert_eq!(listed[0]["receivers"][0]["name"], "oncall");

    // Prometheus' own account: notifications sent to Vigil, none failed.
    let metrics = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(format!("{prometheus_url}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let value_of = |name: &str| -> f64 {
        metrics
            .lines()
            .filter(|line| line.starts_with(name))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert!(value_of("prometheus_notifications_sent_total") >= 1.0);
    // (`prometheus_notifications_dropped_total` may count a send before discovery.)
    assert_eq!(value_of("prometheus_notifications_errors_total"), 0.0);
    assert_eq!(
        value_of("prometheus_notifications_alertmanagers_discovered"),
        1.0
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amtool_lists_vigils_alerts_and_adds_queries_and_expires_a_silence_that_mutes(
) -> anyhow::Result<()> {
    require_tool("amtool")?;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let directory = tempfile::tempdir()?;
    let rules = error_ratio_rules(directory.path())?;
    let vigil = Vigil::start(&format!(
        r#"
global:
  evaluation_interval: 1s
rule_files: ['{rules}']
alertmanager:
  route:
    receiver: oncall
    group_by: [alertname]
    group_wait: 0s
    group_interval: 1s
  receivers:
    - name: oncall
      webhook_configs:
        - url: '{url}'
"#
    ))
    .await?;
    let vigil_url = vigil.base_url.clone();

    // A silence for service a, before anything fires.
    let added = amtool(
        &vigil_url,
        &[
            "silence",
            "add",
            "service=a",
            "alertname=~High.*",
            "--comment=deploying a",
            "--author=alice",
            "--duration=1h",
        ],
    )
    .await?;
    let silence_id = added.trim().to_string();
    assert!(!silence_id.is_empty(), "amtool silence add printed nothing");
    let queried = amtool(&vigil_url, &["silence", "query", "-q"]).await?;
    assert_eq!(queried.trim(), silence_id);
    let silences = amtool_json(&vigil_url, &["silence", "query", "service=a"]).await?;
    assert_eq!(silences.len(), 1, "{silences:#?}");
    assert_eq!(silences[0]["id"], silence_id.as_str());
    assert_eq!(silences[0]["createdBy"], "alice");
    assert_eq!(silences[0]["comment"], "deploying a");
    assert_eq!(silences[0]["status"]["state"], "active");
    let matchers = silences[0]["matchers"].as_array().unwrap();
    assert!(matchers.iter().any(|matcher| matcher["name"] == "alertname"
        && matcher["value"] == "High.*"
        && matcher["isRegex"] == true));
    let other = amtool_json(&vigil_url, &["silence", "query", "service=b"]).await?;
    assert!(other.is_empty(), "a filter on service=b lists {other:#?}");

    import_error_ratio(&vigil, &["a", "b", "c"], 0.5).await?;
    let first = receiver
        .wait_for_message("firing", Duration::from_secs(20), |message| {
            message["status"] == "firing"
        })
        .await?;
    assert_eq!(
        alert_label_values(&first, "service"),
        ["b", "c"],
        "the silenced alert is not sent: {first:#}"
    );

    // amtool lists Vigil's alerts: active ones by default, silenced ones with --silenced.
    let active = wait_for_amtool_alerts(&vigil_url, &[], |alerts| alerts.len() == 2).await?;
    assert_eq!(services_of(&active), ["b", "c"]);
    for alert in &active {
        assert_eq!(alert["labels"]["alertname"], "HighErrorRate");
        assert_eq!(alert["status"]["state"], "active");
        assert_eq!(alert["receivers"][0]["name"], "oncall");
    }
    let silenced = amtool_json(&vigil_url, &["alert", "query", "--silenced"]).await?;
    assert_eq!(services_of(&silenced), ["a"]);
    let silenced = &silenced[0];
    assert_eq!(silenced["status"]["state"], "suppressed");
    assert_eq!(silenced["status"]["silencedBy"][0], silence_id.as_str());
    let both = amtool_json(&vigil_url, &["alert", "query", "--active", "--silenced"]).await?;
    assert_eq!(services_of(&both), ["a", "b", "c"]);
    let only_b = amtool_json(&vigil_url, &["alert", "query", "service=b"]).await?;
    assert_eq!(services_of(&only_b), ["b"]);
    let simple = amtool(&vigil_url, &["alert", "query"]).await?;
    assert!(simple.contains("HighErrorRate"), "{simple}");
    assert!(simple.contains("b fails 50%"), "{simple}");

    // Expire it: amtool no longer lists it as active, and alert a reaches the receiver.
    amtool(&vigil_url, &["silence", "expire", &silence_id]).await?;
    let queried = amtool(&vigil_url, &["silence", "query", "-q"]).await?;
    assert_eq!(queried.trim(), "", "an expired silence is not listed");
    let expired = amtool(&vigil_url, &["silence", "query", "--expired", "-q"]).await?;
    assert_eq!(expired.trim(), silence_id);
    let after = receiver
        .wait_for_message("with service a", Duration::from_secs(20), |message| {
            alert_label_values(message, "service").contains(&"a".to_string())
        })
        .await?;
    assert_eq!(alert_label_values(&after, "service"), ["a", "b", "c"]);
    let active = wait_for_amtool_alerts(&vigil_url, &[], |alerts| alerts.len() == 3).await?;
    assert_eq!(services_of(&active), ["a", "b", "c"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vigils_alerting_section_sends_its_alerts_to_a_real_alertmanager() -> anyhow::Result<()> {
    require_tool("prometheus-alertmanager")?;
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let directory = tempfile::tempdir()?;
    std::fs::write(
        directory.path().join("alertmanager.yml"),
        format!(
            r#"
route:
  receiver: test
  group_by: [alertname]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1h
receivers:
  - name: test
    webhook_configs:
      - url: '{url}'
"#
        ),
    )?;
    let port = free_tcp_port();
    let alertmanager_url = format!("http://127.0.0.1:{port}");
    let config = directory
        .path()
        .join("alertmanager.yml")
        .display()
        .to_string();
    let storage = directory.path().join("data").display().to_string();
    let mut alertmanager = ToolProcess::spawn(
        "prometheus-alertmanager",
        directory,
        &[
            format!("--config.file={config}"),
            format!("--storage.path={storage}"),
            format!("--web.listen-address=127.0.0.1:{port}"),
            // One instance, no gossip port.
            "--cluster.listen-address=".to_string(),
        ],
    )?;
    alertmanager
        .wait_ready(&format!("{alertmanager_url}/-/ready"))
        .await?;

    let rules_directory = tempfile::tempdir()?;
    let rules = error_ratio_rules(rules_directory.path())?;
    let vigil = Vigil::start(&format!(
        r#"
server:
  external_url: http://vigil.example:7080
global:
  evaluation_interval: 1s
rule_files: ['{rules}']
alerting:
  alertmanagers:
    - static_configs:
        - targets: ['127.0.0.1:{port}']
"#
    ))
    .await?;
    import_error_ratio(&vigil, &["a", "b", "c"], 0.5).await?;
    let firing = receiver
        .wait_for_message(
            "firing with three alerts",
            Duration::from_secs(30),
            |message| {
                message["status"] == "firing"
                    && message["alerts"]
                        .as_array()
                        .is_some_and(|alerts| alerts.len() == 3)
            },
        )
        .await?;
    assert_eq!(firing["version"], "4");
    assert_eq!(firing["groupLabels"]["alertname"], "HighErrorRate");
    assert_eq!(firing["commonLabels"]["severity"], "page");
    assert_eq!(alert_label_values(&firing, "service"), ["a", "b", "c"]);
    for alert in firing["alerts"].as_array().unwrap() {
        let service = alert["labels"]["service"].as_str().unwrap();
        assert_eq!(
            alert["annotations"]["summary"],
            format!("{service} fails 50%")
        );
        assert!(
            alert["generatorURL"]
                .as_str()
                .unwrap_or_default()
                .starts_with("http://vigil.example:7080/graph?g0.expr="),
            "{alert:#}"
        );
    }
    // The real Alertmanager lists them too.
    let listed = amtool_json(&alertmanager_url, &["alert", "query"]).await?;
    assert_eq!(services_of(&listed), ["a", "b", "c"]);

    // The symptom stops: Vigil posts the resolved alerts, Alertmanager sends RESOLVED.
    import_error_ratio(&vigil, &["a", "b", "c"], 0.0).await?;
    let resolved = receiver
        .wait_for_message("resolved", Duration::from_secs(30), |message| {
            message["status"] == "resolved"
        })
        .await?;
    assert_eq!(alert_label_values(&resolved, "service"), ["a", "b", "c"]);
    assert!(resolved["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|alert| alert["status"] == "resolved"));
    Ok(())
}
