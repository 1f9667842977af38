//! Black-box alerting: samples imported over HTTP make a rule (`for: 2s`, evaluated every
//! second) fire; a real HTTP server in the test receives Alertmanager's webhook payload v4,
//! then the resolved message when the symptom stops; three alerts of one group arrive as one
//! message; a firing alert survives kill -9 without a second notification; failed deliveries
//! are retried from the outbox; a silence made through API v2 mutes its alerts until it is
//! expired; an email receiver (a real SMTP sink in the test) gets FIRING then RESOLVED;
//! a notification queued while the receiver is down survives kill -9 and is delivered after
//! the restart; an inhibit rule mutes a ticket while a page of the same service fires;
//! `POST /-/reload` applies new rules and keeps the old ones when the new file is broken;
//! alerts are also posted to the external Alertmanagers of the `alerting:` section;
//! alerts posted to API v2 (as a Prometheus server posts them) go out through Vigil's routes;
//! `vigil check-rules` behaves like `promtool check rules` and accepts the shipped rules;
//! the issue's acceptance point 1 end to end through StatsD datagrams over UDP; the shipped
//! span-metric rules over imported span metrics.
//!
//! Run: `cargo test --test alerting` (the real Prometheus tools: `tests/alerting_interop.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use axum::http::StatusCode;
use common::webhook::{
    assert_webhook_v4_fields, import_error_ratio, now_ms, wait_for_count, Receiver,
};
use common::Vigil;
use parking_lot::Mutex;
use serde_json::Value;

fn rules_file(directory: &std::path::Path) -> String {
    let path = directory.join("rules.yml");
    std::fs::write(
        &path,
        r#"
groups:
  - name: symptoms
    rules:
      - alert: HighErrorRate
        expr: error_ratio > 0.05
        for: 2s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.service }} fails {{ $value | humanizePercentage }}"
          runbook_url: https://runbooks.example/high-error-rate
      - record: service:error_ratio:max
        expr: max(error_ratio)
"#,
    )
    .unwrap();
    path.display().to_string()
}

fn config(rules: &str, url: &str, repeat: &str) -> String {
    format!(
        r#"
server:
  external_url: http://vigil.example:7080
global:
  evaluation_interval: 1s
rule_files: ['{rules}']
alertmanager:
  route:
    receiver: hook
    group_by: [alertname]
    group_wait: 0s
    group_interval: 1s
    repeat_interval: {repeat}
  receivers:
    - name: hook
      webhook_configs:
        - url: '{url}'
          http_config:
            bearer_token: s3cret
"#
    )
}

async fn import(vigil: &Vigil, ratio: f64) -> anyhow::Result<()> {
    import_error_ratio(vigil, &["a", "b", "c"], ratio).await
}

async fn get_json(vigil: &Vigil, path: &str) -> anyhow::Result<Value> {
    let response = vigil.client.get(vigil.url(path)).send().await?;
    let status = response.status();
    let body: Value = response.json().await.context("not JSON")?;
    if !status.is_success() {
        bail!("GET {path}: {status} {body}");
    }
    Ok(body)
}

#[tokio::test]
async fn rule_fires_webhook_gets_v4_payload_then_resolved_and_a_group_is_one_message(
) -> anyhow::Result<()> {
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let directory = tempfile::tempdir()?;
    let rules = rules_file(directory.path());
    let vigil = Vigil::start(&config(&rules, &url, "1h")).await?;

    let rules_body = get_json(&vigil, "/api/v1/rules").await?;
    let rule = &rules_body["data"]["groups"][0]["rules"][0];
    assert_eq!(rule["name"], "HighErrorRate");
    assert_eq!(rule["type"], "alerting");
    assert_eq!(rule["duration"], 2.0);

    let onset = Instant::now();
    import(&vigil, 0.5).await?;
    let messages = receiver.wait_for(1, Duration::from_secs(20)).await?;
    let fired_after = onset.elapsed();
    assert!(
        fired_after >= Duration::from_secs(2),
        "fired before for: 2s ({fired_after:?})"
    );
    assert_eq!(
        messages.len(),
        1,
        "three alerts of one group must arrive as one message: {messages:#?}"
    );
    let message = &messages[0];
    assert_webhook_v4_fields(message);
    assert_eq!(message["version"], "4");
    assert_eq!(message["receiver"], "hook");
    assert_eq!(message["status"], "firing");
    assert_eq!(message["groupKey"], "{}:{alertname=\"HighErrorRate\"}");
    assert_eq!(
        message["groupLabels"],
        serde_json::json!({"alertname": "HighErrorRate"})
    );
    assert_eq!(message["commonLabels"]["severity"], "page");
    assert_eq!(
        message["commonAnnotations"]["runbook_url"],
        "https://runbooks.example/high-error-rate"
    );
    assert_eq!(message["externalURL"], "http://vigil.example:7080");
    assert_eq!(message["truncatedAlerts"], 0);
    let alerts = message["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 3);
    for alert in alerts {
        for field in [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint",
        ] {
            assert!(
                alert.get(field).is_some(),
                "missing alerts[].{field}: {alert:#}"
            );
        }
        assert_eq!(alert["status"], "firing");
        assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(alert["fingerprint"].as_str().unwrap().len(), 16);
        assert!(alert["generatorURL"]
            .as_str()
            .unwrap()
            .starts_with("http://vigil.example:7080/graph?g0.expr="));
        let service = alert["labels"]["service"].as_str().unwrap();
        assert_eq!(
            alert["annotations"]["summary"],
            format!("{service} fails 50%")
        );
    }
    let headers = receiver.received.lock()[0].0.clone();
    assert_eq!(headers["authorization"], "Bearer s3cret");
    assert_eq!(headers["content-type"], "application/json");

    let active = get_json(&vigil, "/api/v1/alerts").await?;
    let active = active["data"]["alerts"].as_array().unwrap().clone();
    assert_eq!(active.len(), 3);
    assert!(active.iter().all(|alert| alert["state"] == "firing"));
    let alerts_series = vigil.query_vector("ALERTS{alertstate=\"firing\"}").await?;
    assert_eq!(alerts_series.len(), 3, "{alerts_series:?}");
    let recorded = vigil.query_vector("service:error_ratio:max").await?;
    assert_eq!(recorded[0]["value"][1], "0.5");

    // The symptom stops: one resolved message for the group.
    import(&vigil, 0.0).await?;
    let messages = receiver.wait_for(2, Duration::from_secs(20)).await?;
    let resolved = &messages[1];
    assert_eq!(resolved["status"], "resolved");
    let resolved_alerts = resolved["alerts"].as_array().unwrap();
    assert_eq!(resolved_alerts.len(), 3);
    assert!(resolved_alerts
        .iter()
        .all(|alert| alert["status"] == "resolved" && alert["endsAt"] != "0001-01-01T00:00:00Z"));
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        receiver.messages().len(),
        2,
        "no more messages after resolved"
    );

    let history = get_json(&vigil, "/api/v1/alerts/history?alertname=HighErrorRate").await?;
    let states: Vec<&str> = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["labels"]["service"] == "a")
        .map(|entry| entry["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["pending", "firing", "resolved"]);

    let notifications = get_json(&vigil, "/api/v1/notifications?status=delivered").await?;
    let rows = notifications["data"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for row in rows {
        assert_eq!(row["integration"], "webhook");
        assert_eq!(row["receiver"], "hook");
        assert_eq!(row["attempts"], 1);
        assert!(row["delivered_at"].is_string());
    }
    let metrics = vigil.metrics_text().await?;
    assert!(
        metrics
            .contains("vigil_notifications_total{integration=\"webhook\",status=\"delivered\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vigil_notifications_total{integration=\"email\",status=\"failed\"} 0")
    );
    Ok(())
}

#[tokio::test]
async fn a_firing_alert_survives_kill_9_and_is_not_notified_again() -> anyhow::Result<()> {
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let directory = tempfile::tempdir()?;
    let rules = rules_file(directory.path());
    let mut vigil = Vigil::start(&config(&rules, &url, "1h")).await?;
    import(&vigil, 0.5).await?;
    receiver.wait_for(1, Duration::from_secs(20)).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    while get_json(&vigil, "/api/v1/notifications?status=delivered").await?["data"]
        .as_array()
        .is_none_or(Vec::is_empty)
    {
        if Instant::now() > deadline {
            bail!("the delivery was not recorded");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let before = get_json(&vigil, "/api/v1/alerts").await?;
    let active_at: Vec<Value> = before["data"]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| alert["activeAt"].clone())
        .collect();
    vigil.kill_hard();
    vigil.restart().await?;
    // Ready means state restored: the alerts are firing with their original start time.
    let after = get_json(&vigil, "/api/v1/alerts").await?;
    let alerts = after["data"]["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 3, "{after:#}");
    assert!(alerts.iter().all(|alert| alert["state"] == "firing"));
    let restored: Vec<Value> = alerts
        .iter()
        .map(|alert| alert["activeAt"].clone())
        .collect();
    assert_eq!(restored, active_at);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        receiver.messages().len(),
        1,
        "no second firing message inside repeat_interval"
    );
    let history = get_json(&vigil, "/api/v1/alerts/history").await?;
    let firing = history["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["state"] == "firing")
        .count();
    assert_eq!(firing, 3);
    Ok(())
}

#[tokio::test]
async fn a_failing_receiver_gets_the_message_after_retries() -> anyhow::Result<()> {
    let (receiver, url) = Receiver::start(vec![
        StatusCode::SERVICE_UNAVAILABLE,
        StatusCode::SERVICE_UNAVAILABLE,
    ])
    .await;
    let directory = tempfile::tempdir()?;
    let rules = rules_file(directory.path());
    let vigil = Vigil::start(&config(&rules, &url, "1h")).await?;
    import(&vigil, 0.5).await?;
    receiver.wait_for(1, Duration::from_secs(30)).await?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let notifications = get_json(&vigil, "/api/v1/notifications").await?;
        let row = notifications["data"][0].clone();
        if row["status"] == "delivered" {
            assert_eq!(row["attempts"], 3, "{row:#}");
            assert!(
                row["last_error"].as_str().unwrap().contains("503"),
                "{row:#}"
            );
            break;
        }
        if Instant::now() > deadline {
            bail!("not delivered: {notifications:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = vigil.metrics_text().await?;
    assert!(
        metrics.contains("vigil_notifications_total{integration=\"webhook\",status=\"retried\"} 2"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn a_silence_mutes_its_alerts_until_expired() -> anyhow::Result<()> {
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let directory = tempfile::tempdir()?;
    let rules = rules_file(directory.path());
    let vigil = Vigil::start(&config(&rules, &url, "1h")).await?;
    let starts = chrono_like(now_ms() - 1_000);
    let ends = chrono_like(now_ms() + 3_600_000);
    let response = vigil
        .client
        .post(vigil.url("/api/v2/silences"))
        .json(&serde_json::json!({
            "matchers": [{"name": "service", "value": "a", "isRegex": false, "isEqual": true}],
            "startsAt": starts, "endsAt": ends, "createdBy": "alice", "comment": "deploying a",
        }))
        .send()
        .await?;
    assert!(response.status().is_success(), "{}", response.text().await?);
    let id = response.json::<Value>().await?["silenceID"]
        .as_str()
        .unwrap()
        .to_string();
    let listed = get_json(&vigil, "/api/v2/silences").await?;
    assert_eq!(listed[0]["id"], id.as_str());
    assert_eq!(listed[0]["status"]["state"], "active");
    assert_eq!(listed[0]["createdBy"], "alice");

    import(&vigil, 0.5).await?;
    let messages = receiver.wait_for(1, Duration::from_secs(20)).await?;
    let mut services: Vec<&str> = messages[0]["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|alert| alert["labels"]["service"].as_str().unwrap())
        .collect();
    services.sort_unstable();
    assert_eq!(services, ["b", "c"], "the silenced alert is not sent");

    let expired = vigil
        .client
        .delete(vigil.url(&format!("/api/v2/silence/{id}")))
        .send()
        .await?;
    assert!(expired.status().is_success());
    let silence = get_json(&vigil, &format!("/api/v2/silence/{id}")).await?;
    assert_eq!(silence["status"]["state"], "expired");
    let messages = receiver.wait_for(2, Duration::from_secs(20)).await?;
    assert_eq!(
        messages[1]["alerts"].as_array().unwrap().len(),
        3,
        "{:#}",
        messages[1]
    );
    Ok(())
}

/// Formats ms since the epoch as RFC 3339 (UTC, milliseconds).
fn chrono_like(ms: i64) -> String {
    let seconds = ms.div_euclid(1000);
    let millis = ms.rem_euclid(1000);
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        second_of_day / 3600,
        second_of_day / 60 % 60,
        second_of_day % 60
    )
}

/// A minimal SMTP server on 127.0.0.1 that accepts every message (with AUTH PLAIN) and keeps
/// the DATA of each.
#[derive(Clone, Default)]
struct SmtpSink {
    messages: Arc<Mutex<Vec<String>>>,
    auth_lines: Arc<Mutex<Vec<String>>>,
}

impl SmtpSink {
    async fn start() -> (SmtpSink, String) {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let sink = SmtpSink::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let accepting = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sink = accepting.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 sink ESMTP\r\n").await;
                    let mut in_data = false;
                    let mut data = String::new();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if in_data {
                            if line == "." {
                                in_data = false;
                                sink.messages.lock().push(std::mem::take(&mut data));
                                let _ = write.write_all(b"250 queued\r\n").await;
                            } else {
                                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                                data.push('\n');
                            }
                            continue;
                        }
                        let upper = line.to_ascii_uppercase();
                        let reply: &[u8] = if upper.starts_with("EHLO") {
                            b"250-sink\r\n250-AUTH PLAIN LOGIN\r\n250 8BITMIME\r\n"
                        } else if upper.starts_with("AUTH") {
                            sink.auth_lines.lock().push(line.clone());
                            b"235 2.7.0 authenticated\r\n"
                        } else if upper.starts_with("DATA") {
                            in_data = true;
                            b"354 go ahead\r\n"
                        } else if upper.starts_with("QUIT") {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            b"250 ok\r\n"
                        };
                        let _ = write.write_all(reply).await;
                    }
                });
            }
        });
        (sink, address.to_string())
    }

    async fn wait_for(&self, count: usize, patience: Duration) -> anyhow::Result<Vec<String>> {
        wait_for_count("emails", count, patience, || self.messages.lock().clone()).await
    }
}

fn header<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|line| {
        line.split_once(':')
            .filter(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.trim())
    })
}

#[tokio::test]
async fn webhook_and_email_receivers_both_get_firing_then_resolved() -> anyhow::Result<()> {
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let (smtp, smarthost) = SmtpSink::start().await;
    let directory = tempfile::tempdir()?;
    let rules = rules_file(directory.path());
    let overrides = format!(
        r#"
server:
  external_url: http://vigil.example:7080
global:
  evaluation_interval: 1s
rule_files: ['{rules}']
alertmanager:
  global:
    smtp_from: vigil@example.com
    smtp_smarthost: '{smarthost}'
    smtp_require_tls: false
  route:
    receiver: oncall
    group_by: [alertname]
    group_wait: 0s
    group_interval: 1s
  receivers:
    - name: oncall
      webhook_configs:
        - url: '{url}'
      email_configs:
        - to: oncall@example.com
          auth_username: vigil
          auth_password: s3cret
          send_resolved: true
          headers:
            X-Vigil-Test: 'yes'
"#
    );
    let vigil = Vigil::start(&overrides).await?;
    import(&vigil, 0.5).await?;
    let emails = smtp.wait_for(1, Duration::from_secs(20)).await?;
    receiver.wait_for(1, Duration::from_secs(5)).await?;
    let firing = &emails[0];
    assert_eq!(
        header(firing, "Subject"),
        Some("[FIRING:3] HighErrorRate severity=page"),
        "{firing}"
    );
    assert_eq!(header(firing, "From"), Some("vigil@example.com"));
    assert_eq!(header(firing, "To"), Some("oncall@example.com"));
    assert_eq!(header(firing, "X-Vigil-Test"), Some("yes"));
    assert!(
        firing.contains("text/plain") && firing.contains("text/html"),
        "{firing}"
    );
    assert!(firing.contains("a fails 50%"), "{firing}");
    assert!(firing.contains("runbook_url"), "{firing}");
    assert!(firing.contains("value: 0.5"), "{firing}");
    assert!(
        firing.contains("http://vigil.example:7080/alerts?fingerprint="),
        "{firing}"
    );
    assert!(smtp.auth_lines.lock()[0].starts_with("AUTH PLAIN"));

    import(&vigil, 0.0).await?;
    let emails = smtp.wait_for(2, Duration::from_secs(20)).await?;
    assert_eq!(
        header(&emails[1], "Subject"),
        Some("[RESOLVED] HighErrorRate severity=page"),
        "{}",
        emails[1]
    );
    let messages = receiver.wait_for(2, Duration::from_secs(5)).await?;
    assert_eq!(messages[1]["status"], "resolved");
    let notifications = get_json(&vigil, "/api/v1/notifications?status=delivered").await?;
    let emails_delivered = notifications["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|row| row["integration"] == "email")
        .count();
    assert_eq!(emails_delivered, 2);
    Ok(())
}

#[tokio::test]
async fn alerts_posted_to_api_v2_are_routed_like_vigils_own() -> anyhow::Result<()> {
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let vigil = Vigil::start(&format!(
        r#"
rule_files: []
alertmanager:
  route:
    receiver: hook
    group_by: [alertname]
    group_wait: 0s
    group_interval: 1s
  receivers:
    - name: hook
      webhook_configs:
        - url: '{url}'
"#
    ))
    .await?;
    let starts = chrono_like(now_ms() - 60_000);
    let ends = chrono_like(now_ms() + 3_600_000);
    let response = vigil
        .client
        .post(vigil.url("/api/v2/alerts"))
        .json(&serde_json::json!([{
            "labels": {"alertname": "InstanceDown", "instance": "db-1:9100", "severity": "page"},
            "annotations": {"summary": "db-1 is down"},
            "startsAt": starts, "endsAt": ends,
            "generatorURL": "http://prometheus.example:9090/graph?g0.expr=up+%3D%3D+0",
        }]))
        .send()
        .await?;
    assert!(response.status().is_success(), "{}", response.text().await?);
    let messages = receiver.wait_for(1, Duration::from_secs(10)).await?;
    assert_eq!(messages[0]["status"], "firing");
    assert_eq!(messages[0]["alerts"][0]["labels"]["instance"], "db-1:9100");
    assert_eq!(
        messages[0]["alerts"][0]["generatorURL"],
        "http://prometheus.example:9090/graph?g0.expr=up+%3D%3D+0"
    );
    let listed = get_json(&vigil, "/api/v2/alerts").await?;
    assert_eq!(listed[0]["labels"]["alertname"], "InstanceDown");
    assert_eq!(listed[0]["status"]["state"], "active");
    assert_eq!(listed[0]["receivers"][0]["name"], "hook");
    let groups = get_json(&vigil, "/api/v2/alerts/groups").await?;
    assert_eq!(groups[0]["labels"]["alertname"], "InstanceDown");
    let status = get_json(&vigil, "/api/v2/status").await?;
    assert_eq!(status["cluster"]["status"], "disabled");
    Ok(())
}

/// Acceptance 2 of the alerting issue: the receiver is down for 60 s, Vigil is killed with -9
/// during the outage and restarted; the notification is delivered once the receiver is back,
/// with its attempts visible.
#[tokio::test]
async fn a_notification_queued_while_the_receiver_is_down_survives_kill_9() -> anyhow::Result<()> {
    const OUTAGE: Duration = Duration::from_secs(60);
    // The receiver's port is bound but not listening for the outage: connections are refused,
    // and no other process can take the port meanwhile.
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind("127.0.0.1:0".parse()?)?;
    let url = format!("http://{}/hook", socket.local_addr()?);
    let directory = tempfile::tempdir()?;
    let rules = rules_file(directory.path());
    let mut vigil = Vigil::start(&config(&rules, &url, "1h")).await?;
    let outage_started = Instant::now();
    import(&vigil, 0.5).await?;
    // Nobody listens: the message waits in the outbox, retried.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let pending = get_json(&vigil, "/api/v1/notifications?status=pending").await?;
        if pending["data"][0]["attempts"].as_u64().unwrap_or(0) >= 2 {
            assert!(pending["data"][0]["last_error"].is_string());
            break;
        }
        if Instant::now() > deadline {
            bail!("no failed attempts recorded: {pending:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    vigil.kill_hard();
    vigil.restart().await?;
    // The outage goes on after the restart; the restarted Vigil keeps retrying.
    tokio::time::sleep(OUTAGE.saturating_sub(outage_started.elapsed())).await;
    let pending = get_json(&vigil, "/api/v1/notifications?status=pending").await?;
    let attempts_in_outage = pending["data"][0]["attempts"].as_u64().unwrap_or(0);
    assert!(attempts_in_outage >= 3, "{pending:#}");
    let back = Instant::now();
    let (receiver, _) = Receiver::start_with(socket.listen(64)?, Vec::new());
    // Retries back off up to 30 s (with jitter), so the next attempt comes within that.
    let messages = receiver.wait_for(1, Duration::from_secs(60)).await?;
    println!(
        "delivered {:.1} s after the receiver came back, after {attempts_in_outage}+ attempts",
        back.elapsed().as_secs_f64()
    );
    assert_eq!(messages[0]["status"], "firing");
    assert_eq!(messages[0]["alerts"].as_array().unwrap().len(), 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let delivered = get_json(&vigil, "/api/v1/notifications?status=delivered").await?;
        if let Some(row) = delivered["data"].as_array().and_then(|rows| rows.first()) {
            assert!(
                row["attempts"].as_u64().unwrap() > attempts_in_outage,
                "{row:#}"
            );
            assert!(row["delivered_at"].is_string(), "{row:#}");
            break;
        }
        if Instant::now() > deadline {
            bail!("delivery not recorded: {delivered:#}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        receiver.messages().len(),
        1,
        "delivered once, not re-notified"
    );
    Ok(())
}

#[tokio::test]
async fn an_inhibit_rule_mutes_a_ticket_while_a_page_of_the_same_service_fires(
) -> anyhow::Result<()> {
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let directory = tempfile::tempdir()?;
    let rules = directory.path().join("rules.yml");
    std::fs::write(
        &rules,
        r#"
groups:
  - name: symptoms
    rules:
      - alert: ErrorsPage
        expr: error_ratio > 0.05
        labels: {severity: page}
      - alert: ErrorsTicket
        expr: error_ratio > 0.01
        labels: {severity: ticket}
"#,
    )?;
    let vigil = Vigil::start(&format!(
        r#"
global:
  evaluation_interval: 1s
rule_files: ['{rules}']
alertmanager:
  route:
    receiver: hook
    group_by: [alertname]
    group_wait: 1s
    group_interval: 1s
  receivers:
    - name: hook
      webhook_configs: [{{url: '{url}'}}]
  inhibit_rules:
    - source_matchers: ['severity="page"']
      target_matchers: ['severity="ticket"']
      equal: [service]
"#,
        rules = rules.display()
    ))
    .await?;
    let now = now_ms();
    let body = format!(
        "error_ratio{{service=\"a\"}} 0.5 {now}\nerror_ratio{{service=\"d\"}} 0.02 {now}\n"
    );
    let response = vigil
        .client
        .post(vigil.url("/api/v1/import"))
        .body(body)
        .send()
        .await?;
    assert!(response.status().is_success());
    receiver.wait_for(2, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut sent: Vec<(String, String)> = receiver
        .messages()
        .iter()
        .flat_map(|message| message["alerts"].as_array().cloned().unwrap_or_default())
        .map(|alert| {
            (
                alert["labels"]["alertname"].as_str().unwrap().to_string(),
                alert["labels"]["service"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    sent.sort();
    sent.dedup();
    assert_eq!(
        sent,
        [
            ("ErrorsPage".to_string(), "a".to_string()),
            ("ErrorsTicket".to_string(), "d".to_string())
        ]
    );
    Ok(())
}

/// The latency benchmark of docs/ALERTING.md: time from the symptom's first sample
/// acknowledged by Vigil to the webhook received, 20 runs, `evaluation_interval: 1s`,
/// `group_wait: 0s`, `for: 0s`. Run with
/// `cargo test --test alerting -- --ignored --nocapture symptom_to_webhook_latency`.
#[tokio::test]
#[ignore = "benchmark; prints median and p99"]
async fn symptom_to_webhook_latency() -> anyhow::Result<()> {
    let (receiver, url) = Receiver::start(Vec::new()).await;
    let directory = tempfile::tempdir()?;
    let rules = directory.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n- name: bench\n  rules:\n  - alert: Symptom\n    expr: symptom > 0.05\n",
    )?;
    let vigil = Vigil::start(&format!(
        r#"
global:
  evaluation_interval: 1s
rule_files: ['{rules}']
alertmanager:
  route:
    receiver: hook
    group_by: ['...']
    group_wait: 0s
    group_interval: 1s
  receivers:
    - name: hook
      webhook_configs: [{{url: '{url}'}}]
"#,
        rules = rules.display()
    ))
    .await?;
    let mut latencies = Vec::new();
    for run in 0..20 {
        // Start each run at a different phase of the evaluation timer.
        tokio::time::sleep(Duration::from_millis(1_000 + 137 * run)).await;
        let before = receiver.messages().len();
        let body = format!("symptom{{run=\"{run}\"}} 1 {}\n", now_ms());
        // Measured from before the request: an upper bound of "from acknowledgement".
        let acknowledged = Instant::now();
        let response = vigil
            .client
            .post(vigil.url("/api/v1/import"))
            .body(body)
            .send()
            .await?;
        assert!(response.status().is_success());
        receiver
            .wait_for(before + 1, Duration::from_secs(10))
            .await?;
        let received = receiver.received_at.lock()[before];
        latencies.push(received.saturating_duration_since(acknowledged));
        let stop = format!("symptom{{run=\"{run}\"}} stale {}\n", now_ms());
        vigil
            .client
            .post(vigil.url("/api/v1/import"))
            .body(stop)
            .send()
            .await?;
    }
    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let p99 = latencies[latencies.len() - 1];
    println!(
        "symptom to webhook over {} runs: median {:.0} ms, p99 (max of 20) {:.0} ms, min {:.0} ms",
        latencies.len(),
        median.as_secs_f64() * 1000.0,
        p99.as_secs_f64() * 1000.0,
        latencies[0].as_secs_f64() * 1000.0
    );
    Ok(())
}

#[tokio::test]
async fn alerts_also_go_to_external_alertmanagers_of_the_alerting_section() -> anyhow::Result<()> {
    let (alertmanager, url) = Receiver::start(Vec::new()).await;
    let target = url
        .trim_start_matches("http://")
        .trim_end_matches("/hook")
        .to_string();
    let directory = tempfile::tempdir()?;
    let rules = rules_file(directory.path());
    let vigil = Vigil::start(&format!(
        r#"
global:
  evaluation_interval: 1s
rule_files: ['{rules}']
alerting:
  alertmanagers:
    - static_configs:
        - targets: ['{target}']
"#
    ))
    .await?;
    import(&vigil, 0.5).await?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let firing = loop {
        let posted: Vec<Value> = alertmanager
            .messages()
            .into_iter()
            .flat_map(|body| body.as_array().cloned().unwrap_or_default())
            .collect();
        if posted.len() >= 3 {
            break posted;
        }
        if Instant::now() > deadline {
            bail!("external Alertmanager got {posted:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let alert = &firing[0];
    assert_eq!(alert["labels"]["alertname"], "HighErrorRate");
    for field in [
        "labels",
        "annotations",
        "startsAt",
        "endsAt",
        "generatorURL",
    ] {
        assert!(alert.get(field).is_some(), "{field}: {alert:#}");
    }
    assert!(alert["endsAt"].as_str().unwrap() > alert["startsAt"].as_str().unwrap());
    Ok(())
}

#[tokio::test]
async fn reload_applies_new_rules_and_keeps_the_old_ones_when_the_new_file_is_broken(
) -> anyhow::Result<()> {
    let directory = tempfile::tempdir()?;
    let rules = rules_file(directory.path());
    let vigil = Vigil::start(&format!("rule_files: ['{rules}']\n")).await?;
    let count = |body: &Value| {
        body["data"]["groups"]
            .as_array()
            .map(|groups| {
                groups
                    .iter()
                    .map(|group| group["rules"].as_array().map_or(0, Vec::len))
                    .sum::<usize>()
            })
            .unwrap_or(0)
    };
    assert_eq!(count(&get_json(&vigil, "/api/v1/rules").await?), 2);
    let mut text = std::fs::read_to_string(&rules)?;
    text.push_str("      - record: extra:error_ratio\n        expr: error_ratio * 2\n");
    std::fs::write(&rules, &text)?;
    let response = vigil.client.post(vigil.url("/-/reload")).send().await?;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "{}",
        response.text().await?
    );
    assert_eq!(count(&get_json(&vigil, "/api/v1/rules").await?), 3);

    std::fs::write(
        &rules,
        "groups:\n- name: broken\n  rules:\n  - alert: Bad\n    expr: rate(x[5m]\n",
    )?;
    let response = vigil.client.post(vigil.url("/-/reload")).send().await?;
    assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let body: Value = response.json().await?;
    let reason = body["error"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains("group \"broken\", rule 1, \"Bad\""),
        "{reason}"
    );
    assert_eq!(
        count(&get_json(&vigil, "/api/v1/rules").await?),
        3,
        "old rules keep running"
    );
    Ok(())
}

#[test]
fn check_rules_accepts_good_files_and_names_the_broken_rule() {
    let directory = tempfile::tempdir().unwrap();
    let good = rules_file(directory.path());
    let bad = directory.path().join("bad.yml");
    std::fs::write(
        &bad,
        "groups:\n- name: slo\n  rules:\n  - record: ok\n    expr: up\n  - alert: Broken\n    expr: sum(rate(x[5m])\n",
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check-rules", &good])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains(&format!("Checking {good}")), "{stdout}");
    assert!(stdout.contains("SUCCESS: 2 rules found"), "{stdout}");

    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["check-rules", &good, bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("FAILED"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "{}: group \"slo\", rule 2, \"Broken\": could not parse expression",
            bad.display()
        )),
        "{stderr}"
    );
}

#[test]
fn check_rules_accepts_the_examples_of_prometheus_documentation() {
    let testdata = concat!(env!("CARGO_MANIFEST_DIR"), "/alerting/testdata");
    let recording = format!("{testdata}/prometheus-docs-recording.yml");
    let alerting = format!("{testdata}/prometheus-docs-alerting.yml");
    let stdout = check_rules_succeeds(&[&recording, &alerting]);
    assert!(
        stdout.contains(&format!("Checking {recording}\n  SUCCESS: 2 rules found")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("Checking {alerting}\n  SUCCESS: 3 rules found")),
        "{stdout}"
    );
}

/// Per service and tick: (service, requests, errors).
type TrafficMix = Vec<(&'static str, usize, usize)>;

/// Sends DogStatsD datagrams over UDP every 100 ms, as a service's client would, until
/// dropped: per service and tick, `requests` lines (`requests:1|c|#service:NAME`) and
/// `errors` lines (`errors:1|c|#service:NAME`) in the counts of the current traffic mix.
struct StatsdTraffic {
    mix: Arc<Mutex<TrafficMix>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl StatsdTraffic {
    /// Starts sending to `port` on 127.0.0.1; `mix` holds (service, requests, errors) per tick.
    fn start(port: u16, mix: TrafficMix) -> StatsdTraffic {
        let mix = Arc::new(Mutex::new(mix));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.connect(("127.0.0.1", port)).unwrap();
        let thread = {
            let mix = mix.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // One datagram per service and tick, lines joined by '\n' as buffering
                    // DogStatsD clients send them.
                    for (service, requests, errors) in mix.lock().clone() {
                        let mut lines = Vec::new();
                        lines.extend(std::iter::repeat_n(
                            format!("requests:1|c|#service:{service}"),
                            requests,
                        ));
                        lines.extend(std::iter::repeat_n(
                            format!("errors:1|c|#service:{service}"),
                            errors,
                        ));
                        socket.send(lines.join("\n").as_bytes()).unwrap();
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            })
        };
        StatsdTraffic {
            mix,
            stop,
            thread: Some(thread),
        }
    }

    /// Replaces the traffic mix from the next tick on.
    fn set_mix(&self, mix: TrafficMix) {
        *self.mix.lock() = mix;
    }
}

impl Drop for StatsdTraffic {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Issue 5, acceptance point 1, end to end through StatsD: services send `requests` and
/// `errors` counters over UDP (flushed every 250 ms); a `for: 2s` error-ratio rule with
/// severity page fires for the three failing services and reaches a webhook receiver and an
/// email receiver (a real HTTP server and a real SMTP sink in the test) as one notification
/// each, with every field of the v4 payload; a fourth failing service is silenced and never
/// notified; a `ticket` rule over the same ratio is inhibited for the paged services while
/// their page fires, and still reaches the ticket receiver for a service with only a ticket;
/// when the errors stop, both receivers get RESOLVED.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statsd_error_ratio_pages_by_webhook_and_email_then_resolves_with_silence_inhibition_and_grouping(
) -> anyhow::Result<()> {
    let (pager, pager_url) = Receiver::start(Vec::new()).await;
    let (tickets, tickets_url) = Receiver::start(Vec::new()).await;
    let (smtp, smarthost) = SmtpSink::start().await;
    let directory = tempfile::tempdir()?;
    let rules = directory.path().join("rules.yml");
    std::fs::write(
        &rules,
        r#"
groups:
  - name: statsd-symptoms
    rules:
      - alert: HighErrorRate
        expr: sum by (service) (rate(errors[5s])) / sum by (service) (rate(requests[5s])) > 0.05
        for: 2s
        labels:
          severity: page
        annotations:
          summary: "{{ $labels.service }}: {{ $value | humanizePercentage }} of requests fail"
          description: "More than 5% of the requests of {{ $labels.service }} fail."
          runbook_url: https://runbooks.example/high-error-rate
      - alert: ElevatedErrorRate
        expr: sum by (service) (rate(errors[5s])) / sum by (service) (rate(requests[5s])) > 0.01
        for: 2s
        labels:
          severity: ticket
        annotations:
          summary: "{{ $labels.service }}: {{ $value | humanizePercentage }} of requests fail"
"#,
    )?;
    let statsd_port = common::free_udp_port();
    let vigil = Vigil::start(&format!(
        r#"
server:
  external_url: http://vigil.example:7080
statsd:
  udp_listen: '127.0.0.1:{statsd_port}'
  flush_interval: 250ms
global:
  evaluation_interval: 1s
rule_files: ['{rules}']
alertmanager:
  global:
    smtp_from: vigil@example.com
    smtp_smarthost: '{smarthost}'
    smtp_require_tls: false
  route:
    receiver: tickets
    group_by: [alertname]
    group_wait: 1s
    group_interval: 1s
    repeat_interval: 1h
    routes:
      - matchers: ['severity="page"']
        receiver: pager
  receivers:
    - name: pager
      webhook_configs:
        - url: '{pager_url}'
      email_configs:
        - to: oncall@example.com
          send_resolved: true
    - name: tickets
      webhook_configs:
        - url: '{tickets_url}'
  inhibit_rules:
    - source_matchers: ['severity="page"']
      target_matchers: ['severity="ticket"']
      equal: [service]
"#,
        rules = rules.display()
    ))
    .await?;

    // checkout's deploy is silenced through API v2 before anything fails.
    let silence = vigil
        .client
        .post(vigil.url("/api/v2/silences"))
        .json(&serde_json::json!({
            "matchers": [{"name": "service", "value": "checkout", "isRegex": false, "isEqual": true}],
            "startsAt": chrono_like(now_ms() - 1_000), "endsAt": chrono_like(now_ms() + 3_600_000),
            "createdBy": "alice", "comment": "deploying checkout",
        }))
        .send()
        .await?;
    assert!(silence.status().is_success(), "{}", silence.text().await?);
    let silence_id = silence.json::<Value>().await?["silenceID"]
        .as_str()
        .unwrap()
        .to_string();

    // Half of the requests of gateway, api, web and checkout fail; 2% of search's.
    let onset = Instant::now();
    let traffic = StatsdTraffic::start(
        statsd_port,
        vec![
            ("gateway", 2, 1),
            ("api", 2, 1),
            ("web", 2, 1),
            ("checkout", 2, 1),
            ("search", 50, 1),
        ],
    );

    let firing = pager.wait_for(1, Duration::from_secs(30)).await?;
    let fired_after = onset.elapsed();
    assert!(
        fired_after >= Duration::from_secs(2),
        "fired before for: 2s ({fired_after:?})"
    );
    let message = &firing[0];
    assert_webhook_v4_fields(message);
    assert_eq!(message.as_object().unwrap().len(), 10, "{message:#}");
    assert_eq!(message["version"], "4");
    assert_eq!(message["receiver"], "pager");
    assert_eq!(message["status"], "firing");
    assert_eq!(
        message["groupKey"],
        "{}/{severity=\"page\"}:{alertname=\"HighErrorRate\"}"
    );
    assert_eq!(
        message["groupLabels"],
        serde_json::json!({"alertname": "HighErrorRate"})
    );
    assert_eq!(
        message["commonLabels"],
        serde_json::json!({"alertname": "HighErrorRate", "severity": "page"})
    );
    assert_eq!(
        message["commonAnnotations"],
        serde_json::json!({"runbook_url": "https://runbooks.example/high-error-rate"}),
        "summary and description differ per service: {message:#}"
    );
    assert_eq!(message["externalURL"], "http://vigil.example:7080");
    assert_eq!(message["truncatedAlerts"], 0);
    let alerts = message["alerts"].as_array().unwrap();
    let mut services: Vec<&str> = alerts
        .iter()
        .map(|alert| alert["labels"]["service"].as_str().unwrap())
        .collect();
    services.sort_unstable();
    assert_eq!(
        services,
        ["api", "gateway", "web"],
        "three alerts of one group in one message, the silenced checkout left out: {message:#}"
    );
    for alert in alerts {
        for field in [
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "generatorURL",
            "fingerprint",
        ] {
            assert!(
                alert.get(field).is_some(),
                "missing alerts[].{field}: {alert:#}"
            );
        }
        assert_eq!(alert.as_object().unwrap().len(), 7, "{alert:#}");
        assert_eq!(alert["status"], "firing");
        assert_eq!(alert["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(alert["fingerprint"].as_str().unwrap().len(), 16);
        assert!(alert["generatorURL"]
            .as_str()
            .unwrap()
            .starts_with("http://vigil.example:7080/graph?g0.expr="));
        let service = alert["labels"]["service"].as_str().unwrap();
        assert_eq!(
            alert["annotations"]["summary"],
            format!("{service}: 50% of requests fail")
        );
    }

    let emails = smtp.wait_for(1, Duration::from_secs(20)).await?;
    let email = &emails[0];
    assert_eq!(
        header(email, "Subject"),
        Some("[FIRING:3] HighErrorRate severity=page"),
        "{email}"
    );
    assert_eq!(header(email, "To"), Some("oncall@example.com"));
    assert!(email.contains("gateway: 50% of requests fail"), "{email}");
    assert!(!email.contains("checkout"), "{email}");

    // The silence: checkout's page is known but suppressed, with the silence's ID.
    let listed = get_json(&vigil, "/api/v2/alerts").await?;
    let checkout = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|alert| {
            alert["labels"]["service"] == "checkout" && alert["labels"]["severity"] == "page"
        })
        .cloned()
        .context("checkout's page is not listed")?;
    assert_eq!(checkout["status"]["state"], "suppressed");
    assert_eq!(checkout["status"]["silencedBy"][0], silence_id.as_str());

    // Inhibition: while the pages fire, tickets hears only of search, whose ratio pages
    // nobody; the tickets of the paged (and of the silenced) services are held back.
    let ticket = tickets.wait_for(1, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ticket_services: Vec<String> = tickets
        .messages()
        .iter()
        .flat_map(|message| message["alerts"].as_array().cloned().unwrap_or_default())
        .map(|alert| alert["labels"]["service"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ticket_services, ["search"], "{ticket:#?}");
    assert_eq!(ticket[0]["receiver"], "tickets");
    assert_eq!(ticket[0]["commonLabels"]["severity"], "ticket");
    assert_eq!(
        pager.messages().len(),
        1,
        "no second page inside repeat_interval"
    );

    // The errors stop (traffic goes on): RESOLVED by webhook and by email.
    traffic.set_mix(vec![
        ("gateway", 2, 0),
        ("api", 2, 0),
        ("web", 2, 0),
        ("checkout", 2, 0),
        ("search", 50, 0),
    ]);
    let messages = pager.wait_for(2, Duration::from_secs(30)).await?;
    let resolved = &messages[1];
    assert_eq!(resolved["status"], "resolved", "{resolved:#}");
    let resolved_alerts = resolved["alerts"].as_array().unwrap();
    assert_eq!(resolved_alerts.len(), 3, "{resolved:#}");
    assert!(resolved_alerts
        .iter()
        .all(|alert| alert["status"] == "resolved" && alert["endsAt"] != "0001-01-01T00:00:00Z"));
    let emails = smtp.wait_for(2, Duration::from_secs(20)).await?;
    assert_eq!(
        header(&emails[1], "Subject"),
        Some("[RESOLVED] HighErrorRate severity=page"),
        "{}",
        emails[1]
    );
    drop(traffic);
    Ok(())
}

/// The shipped span-metric rules (`builtin:golden-signals`, loaded when `rule_files` is absent)
/// over data imported under the names the OTLP ingest derives from spans: orders' server spans
/// fail 20% of the time over the last 10 minutes, payments had consumer spans one to two hours
/// ago and none since, catalog is healthy. HighSpanErrorRate (page) and SpanTrafficGone
/// (ticket) become pending with their rendered annotations, and nothing else. (Their `for`
/// holds of 5 and 10 minutes are stepped through in the engine test in `src/alerting.rs`,
/// as is HighSpanLatencyP99, which needs duration sketches the text import cannot write.)
#[tokio::test]
async fn shipped_span_metric_rules_watch_span_metrics() -> anyhow::Result<()> {
    let vigil = Vigil::start("global:\n  evaluation_interval: 1s\n").await?;
    let now = now_ms();
    let mut body = String::new();
    for step in 0..=20 {
        let time = now - 600_000 + step * 30_000;
        let calls = |service: &str, operation: &str, status: &str, value: i64| {
            format!(
                "vigil_span_calls_total{{service=\"{service}\",operation=\"{operation}\",kind=\"server\",status=\"{status}\"}} {value} {time}\n"
            )
        };
        body.push_str(&calls("orders", "POST /orders", "ok", 80 * step));
        body.push_str(&calls("orders", "POST /orders", "error", 20 * step));
        body.push_str(&calls("catalog", "GET /items", "ok", 100 * step));
        body.push_str(&calls("catalog", "GET /items", "error", 0));
    }
    for step in 0..=90 {
        let time = now - 7_200_000 + 300_000 + step * 30_000;
        body.push_str(&format!(
            "vigil_span_calls_total{{service=\"payments\",operation=\"charge\",kind=\"consumer\",status=\"unset\"}} {} {time}\n",
            50 * step
        ));
    }
    let response = vigil
        .client
        .post(vigil.url("/api/v1/import"))
        .body(body)
        .send()
        .await?;
    assert!(response.status().is_success(), "{}", response.text().await?);

    let deadline = Instant::now() + Duration::from_secs(20);
    let alerts = loop {
        let body = get_json(&vigil, "/api/v1/alerts").await?;
        let alerts = body["data"]["alerts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if alerts.len() >= 2 {
            break alerts;
        }
        if Instant::now() > deadline {
            bail!("the span rules did not become pending: {body:#}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut seen: Vec<(String, String, String, String)> = alerts
        .iter()
        .map(|alert| {
            let label = |name: &str| {
                alert["labels"][name]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            };
            (
                label("alertname"),
                label("service"),
                label("severity"),
                alert["state"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, String, String, String)> = [
        ("HighSpanErrorRate", "orders", "page", "pending"),
        ("SpanTrafficGone", "payments", "ticket", "pending"),
    ]
    .iter()
    .map(|(a, b, c, d)| (a.to_string(), b.to_string(), c.to_string(), d.to_string()))
    .collect();
    assert_eq!(seen, expected, "{alerts:#?}");
    let error_rate = alerts
        .iter()
        .find(|alert| alert["labels"]["alertname"] == "HighSpanErrorRate")
        .unwrap();
    assert_eq!(
        error_rate["annotations"]["summary"],
        "orders: 20% of traced requests fail"
    );
    assert_eq!(
        error_rate["annotations"]["runbook_url"],
        "https://vigil.invalid/runbooks/high-error-rate"
    );
    let gone = alerts
        .iter()
        .find(|alert| alert["labels"]["alertname"] == "SpanTrafficGone")
        .unwrap();
    assert_eq!(
        gone["annotations"]["summary"],
        "payments serves no traced requests"
    );
    let rules = get_json(&vigil, "/api/v1/rules").await?;
    let span_group = rules["data"]["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|group| group["name"] == "vigil-span-golden-signals")
        .context("no span rule group")?;
    for rule in span_group["rules"].as_array().unwrap() {
        assert_eq!(rule["health"], "ok", "{rule:#}");
    }
    Ok(())
}

#[test]
fn check_rules_accepts_the_shipped_default_rules() {
    let shipped = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/alerting/rules/golden-signals.yml"
    );
    let stdout = check_rules_succeeds(&[shipped]);
    assert!(stdout.contains("SUCCESS: 8 rules found"), "{stdout}");
}

/// Runs `vigil check-rules files...`, asserts that it succeeds and returns its stdout.
fn check_rules_succeeds(files: &[&str]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("check-rules")
        .args(files)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}
