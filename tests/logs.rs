//! Logs end to end through the built binary: JSON lines as Python's logstash_formatter (V1)
//! emits them and an Elasticsearch `_bulk` body as Fluent Bit's es output sends it, found by
//! level, service, phrase and request UUID; per-line errors; kill -9 right after the 200s for
//! 100,000 lines; the live tail.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use common::Vigil;
use serde_json::Value;

const REQUEST_ID: &str = "7d9f2c1e-4b3a-4e8f-9a6b-0c1d2e3f4a5b";

fn now_rfc3339_ms(offset_ms: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + offset_ms;
    let seconds = now / 1000;
    let millis = now % 1000;
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
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
        (second_of_day / 60) % 60,
        second_of_day % 60
    )
}

/// A line as `logstash_formatter.LogstashFormatterV1` writes it (`json.dumps` of the record).
fn logstash_v1_line(level: &str, message: &str, extra: &str, offset_ms: i64) -> String {
    format!(
        concat!(
            r#"{{"@timestamp": "{timestamp}", "@version": 1, "source_host": "checkout-7f9c", "name": "checkout.payments", "#,
            r#""args": [], "levelname": "{level}", "levelno": 40, "pathname": "/srv/checkout/payments.py", "filename": "payments.py", "#,
            r#""module": "payments", "exc_info": null, "exc_text": null, "stack_info": null, "lineno": 88, "funcName": "charge", "#,
            r#""created": 1714564801.123, "msecs": 123.0, "relativeCreated": 5120.4, "thread": 140245, "threadName": "MainThread", "#,
            r#""processName": "MainProcess", "process": 7, "app": "checkout"{extra}, "message": "{message}"}}"#
        ),
        timestamp = now_rfc3339_ms(offset_ms),
        level = level,
        extra = extra,
        message = message,
    )
}

/// A body as Fluent Bit's es output sends it (Logstash_Format on, tail input of Docker logs).
fn fluent_bit_bulk_body() -> String {
    let mut body = String::new();
    let lines = [
        (
            "gateway",
            "error",
            format!("upstream timed out after 30s for request {REQUEST_ID}"),
        ),
        (
            "gateway",
            "info",
            "GET /api/v1/orders/991 200 12ms".to_string(),
        ),
        ("inventory", "warn", "stock low for sku 4411".to_string()),
    ];
    for (index, (service, level, message)) in lines.iter().enumerate() {
        body.push_str("{\"create\":{\"_index\":\"logstash-2024.05.01\"}}\n");
        let document = serde_json::json!({
            "@timestamp": now_rfc3339_ms(-(index as i64)),
            "log": message,
            "stream": "stderr",
            "level": level,
            "kubernetes": {"container_name": service, "namespace_name": "shop"},
            "service": service,
            "host": "node-3",
        });
        body.push_str(&document.to_string());
        body.push('\n');
    }
    body
}

async fn post_logs(vigil: &Vigil, body: String, gzip: bool) -> anyhow::Result<(u16, Value)> {
    let mut request = vigil
        .client
        .post(vigil.url("/api/v1/logs"))
        .header("Content-Type", "application/x-ndjson");
    if gzip {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(body.as_bytes())?;
        request = request
            .header("Content-Encoding", "gzip")
            .body(encoder.finish()?);
    } else {
        request = request.body(body);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

/// Searches the last hour, counting every match (`track_total_hits=true`).
async fn search(vigil: &Vigil, query: &str, limit: usize) -> anyhow::Result<Value> {
    let response = vigil
        .client
        .get(vigil.url("/api/v1/logs/search"))
        .query(&[
            ("q", query),
            ("limit", &limit.to_string()),
            ("track_total_hits", "true"),
        ])
        .send()
        .await?;
    let status = response.status();
    let body: Value = response.json().await?;
    if !status.is_success() {
        bail!("search {query:?} failed with {status}: {body}");
    }
    Ok(body)
}

/// Waits until `query` has `expected` hits (lines are searchable within about a second).
async fn wait_for_total(vigil: &Vigil, query: &str, expected: u64) -> anyhow::Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body = search(vigil, query, 100).await?;
        if body["total"].as_u64() == Some(expected) {
            return Ok(body);
        }
        if Instant::now() > deadline {
            bail!("{query:?}: expected {expected} hits, got {body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn logstash_lines_and_fluent_bit_bulk_are_found_by_level_service_phrase_and_request_id(
) -> anyhow::Result<()> {
    let vigil = Vigil::start("server:\n  self_monitoring: false\n").await?;
    let body = [
        logstash_v1_line(
            "ERROR",
            &format!("card declined for request {REQUEST_ID}"),
            "",
            0,
        ),
        logstash_v1_line(
            "INFO",
            "payment accepted",
            &format!(r#", "request_id": "{REQUEST_ID}""#),
            -1,
        ),
        logstash_v1_line("WARNING", "retrying charge: gateway timed out", "", -2),
    ]
    .join("\n");
    let sent = Instant::now();
    let (status, answer) = post_logs(&vigil, body, true).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 3, "{answer}");
    assert_eq!(answer["rejected"], 0, "{answer}");

    let response = vigil
        .client
        .post(vigil.url("/_bulk"))
        .header("Content-Type", "application/x-ndjson")
        .body(fluent_bit_bulk_body())
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let bulk: Value = response.json().await?;
    assert_eq!(bulk["errors"], false, "{bulk}");
    assert_eq!(bulk["items"].as_array().map(Vec::len), Some(3), "{bulk}");
    assert_eq!(bulk["items"][0]["create"]["status"], 201, "{bulk}");
    assert_eq!(bulk["items"][0]["create"]["_index"], "logstash-2024.05.01");
    assert!(bulk["took"].is_u64());

    // Searchable within about a second of the acknowledgement.
    wait_for_total(&vigil, "*", 6).await?;
    let searchable_after = sent.elapsed();
    eprintln!("6 lines searchable {searchable_after:?} after the first request was sent");
    assert!(
        searchable_after < Duration::from_secs(3),
        "searchable after {searchable_after:?}"
    );

    let errors = wait_for_total(&vigil, "level:error", 2).await?;
    let services: Vec<&str> = errors["hits"]
        .as_array()
        .context("hits")?
        .iter()
        .filter_map(|hit| hit["service"].as_str())
        .collect();
    assert!(
        services.contains(&"checkout") && services.contains(&"gateway"),
        "{errors}"
    );
    let checkout = wait_for_total(&vigil, "service:checkout", 3).await?;
    let hit = &checkout["hits"][0];
    assert_eq!(hit["host"], "checkout-7f9c");
    assert_eq!(hit["attributes"]["funcName"], "charge");
    assert!(hit["timestamp"].as_str().unwrap_or("").len() >= 30, "{hit}");
    wait_for_total(&vigil, "service:gateway", 2).await?;
    wait_for_total(&vigil, "\"timed out\"", 2).await?;
    wait_for_total(&vigil, "level:warn AND service:checkout \"timed out\"", 1).await?;
    // The UUID inside two messages and in one line's request_id field.
    let by_id = wait_for_total(&vigil, REQUEST_ID, 3).await?;
    let correlated = by_id["hits"]
        .as_array()
        .context("hits")?
        .iter()
        .filter(|hit| hit["correlation_id"] == REQUEST_ID)
        .count();
    assert_eq!(correlated, 1, "{by_id}");
    wait_for_total(&vigil, "attributes.lineno:88", 3).await?;
    wait_for_total(&vigil, "attributes.kubernetes.namespace_name:shop", 3).await?;

    // Pages: newest first, a cursor, null on the last page.
    let first = search(&vigil, "*", 4).await?;
    let cursor = first["next_cursor"]
        .as_str()
        .context("next_cursor")?
        .to_string();
    let second: Value = vigil
        .client
        .get(vigil.url("/api/v1/logs/search"))
        .query(&[("q", "*"), ("limit", "4"), ("cursor", cursor.as_str())])
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(second["hits"].as_array().map(Vec::len), Some(2), "{second}");
    assert!(second["next_cursor"].is_null());
    assert_eq!(first["total_relation"], "eq");

    // An invalid query is a 400 that says where.
    let response = vigil
        .client
        .get(vigil.url("/api/v1/logs/search"))
        .query(&[("q", "level:error AND (service:x")])
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await?;
    assert_eq!(error["status"], "error");
    assert!(
        error["error"].as_str().unwrap_or("").contains("character"),
        "{error}"
    );

    // Histogram and fields.
    let histogram: Value = vigil
        .client
        .get(vigil.url("/api/v1/logs/histogram"))
        .query(&[("q", "*"), ("step", "1m")])
        .send()
        .await?
        .json()
        .await?;
    let counted: u64 = histogram["buckets"]
        .as_array()
        .context("buckets")?
        .iter()
        .filter_map(|bucket| bucket["count"].as_u64())
        .sum();
    assert_eq!(counted, 6, "{histogram}");
    let fields: Value = vigil
        .client
        .get(vigil.url("/api/v1/logs/fields"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        fields["fields"]["service"][0]["value"], "checkout",
        "{fields}"
    );
    assert_eq!(fields["fields"]["service"][0]["count"], 3, "{fields}");

    let metrics = vigil.metrics_text().await?;
    assert!(
        metrics.contains("vigil_ingest_received_total{protocol=\"logs\"} 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("vigil_ingest_received_total{protocol=\"es_bulk\"} 3"),
        "{metrics}"
    );

    // Log-derived metrics reach PromQL (written every 10 s).
    let deadline = Instant::now() + Duration::from_secs(25);
    loop {
        let result = vigil
            .query_vector("vigil_log_records_total{service=\"checkout\",level=\"error\"}")
            .await?;
        if let Some(value) = result
            .first()
            .and_then(|sample| sample["value"][1].as_str())
        {
            assert_eq!(value, "1");
            break;
        }
        if Instant::now() > deadline {
            bail!("vigil_log_records_total never appeared");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(())
}

#[tokio::test]
async fn one_malformed_line_among_good_ones_is_reported_by_number() -> anyhow::Result<()> {
    let vigil = Vigil::start(
        "server:\n  self_monitoring: false\n  max_body_bytes: 64KiB\nstorage:\n  limits:\n    log_line_bytes: 2000\n",
    )
    .await?;
    let long_line = format!("{{\"message\":\"{}\"}}", "x".repeat(3000));
    let body = format!(
        "{}\n{{\"message\": \"broken\",\n{}\n{long_line}\n",
        logstash_v1_line("INFO", "first good line", "", 0),
        logstash_v1_line("INFO", "second good line", "", 0),
    );
    let (status, answer) = post_logs(&vigil, body, false).await?;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["accepted"], 2, "{answer}");
    assert_eq!(answer["rejected"], 2, "{answer}");
    assert_eq!(answer["errors"][0]["line"], 2, "{answer}");
    assert!(
        answer["errors"][0]["error"]
            .as_str()
            .unwrap_or("")
            .contains("invalid JSON"),
        "{answer}"
    );
    assert_eq!(answer["errors"][1]["line"], 4, "{answer}");
    assert!(
        answer["errors"][1]["error"]
            .as_str()
            .unwrap_or("")
            .contains("log_line_bytes"),
        "{answer}"
    );
    wait_for_total(&vigil, "\"good line\"", 2).await?;
    let (status, answer) = post_logs(&vigil, "not json\n".to_string(), false).await?;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["errors"][0]["line"], 1);
    // A body over server.max_body_bytes is a 413 in the API's error shape.
    let huge: String = (0..1_000)
        .map(|index| format!("{{\"message\":\"line {index} {}\"}}\n", "y".repeat(100)))
        .collect();
    let (status, answer) = post_logs(&vigil, huge, false).await?;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["status"], "error", "{answer}");
    let metrics = vigil.metrics_text().await?;
    assert!(
        metrics
            .contains("vigil_ingest_rejected_total{protocol=\"logs\",reason=\"body_too_large\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("vigil_ingest_rejected_total{protocol=\"logs\",reason=\"line_too_large\"} 1"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test]
async fn acknowledged_lines_survive_kill_9() -> anyhow::Result<()> {
    let mut vigil = Vigil::start("server:\n  self_monitoring: false\n").await?;
    // 100,000 lines in 50 requests, as issue 3's acceptance asks.
    let requests = 50;
    let lines_per_request = 2_000;
    for request in 0..requests {
        let now_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let body: String = (0..lines_per_request)
            .map(|line| {
                format!(
                    "{{\"ts\":{},\"level\":\"info\",\"service\":\"durable\",\"msg\":\"batch {request} line {line}\",\"request_id\":\"r-{request}-{line}\"}}\n",
                    now_ns + line as u128
                )
            })
            .collect();
        let (status, answer) = post_logs(&vigil, body, false).await?;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["accepted"], lines_per_request);
    }
    // Right after the last 200: no time for a commit.
    vigil.kill_hard();
    vigil.restart().await?;
    let expected = (requests * lines_per_request) as u64;
    let body = search(&vigil, "service:durable", 10).await?;
    assert_eq!(body["total"].as_u64(), Some(expected), "{body}");
    let one = search(&vigil, "r-49-1999", 10).await?;
    assert_eq!(one["total"], 1, "{one}");
    // Without `track_total_hits`, counting stops at 10,000 and says so.
    let counted: Value = vigil
        .client
        .get(vigil.url("/api/v1/logs/search"))
        .query(&[("q", "service:durable"), ("limit", "3")])
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(counted["total"], 10_000, "{counted}");
    assert_eq!(counted["total_relation"], "gte", "{counted}");
    assert_eq!(counted["hits"][0]["message"], "batch 49 line 1999");
    let response = vigil
        .client
        .get(vigil.url("/api/v1/logs/search"))
        .query(&[("q", "service:durable"), ("track_total_hits", "many")])
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    let error: Value = response.json().await?;
    assert!(
        error["error"]
            .as_str()
            .unwrap_or("")
            .contains("track_total_hits"),
        "{error}"
    );
    // And nothing is doubled by a second replay.
    vigil.kill_hard();
    vigil.restart().await?;
    let body = search(&vigil, "service:durable", 10).await?;
    assert_eq!(body["total"].as_u64(), Some(expected), "{body}");
    Ok(())
}

#[tokio::test]
async fn live_tail_streams_new_matching_lines() -> anyhow::Result<()> {
    let vigil = Vigil::start("server:\n  self_monitoring: false\n").await?;
    let response = vigil
        .client
        .get(vigil.url("/api/v1/logs/tail"))
        .query(&[("q", "level:error")])
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let mut response = response;
    let body = format!(
        "{}\n{}\n",
        logstash_v1_line("INFO", "quiet line", "", 0),
        logstash_v1_line("ERROR", "tailed failure", "", 0)
    );
    let (status, _) = post_logs(&vigil, body, false).await?;
    assert_eq!(status, 200);
    let mut received = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !received.contains("tailed failure") {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(remaining, response.chunk())
            .await
            .context("no tailed line within 10 s")??
            .context("tail stream ended")?;
        received.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(received.contains("event: log"), "{received}");
    assert!(!received.contains("quiet line"), "{received}");
    let response = vigil
        .client
        .get(vigil.url("/api/v1/logs/tail"))
        .query(&[("q", "level:(")])
        .send()
        .await?;
    assert_eq!(response.status(), 400);
    Ok(())
}

/// Sustained NDJSON ingest over HTTP of ~300-byte Logstash-style lines, counted once
/// searchable. A debug build on a shared machine: a rough figure, not the release benchmark.
/// Run with `cargo test --test logs measure -- --ignored --nocapture`.
#[tokio::test]
#[ignore]
async fn measure_http_ingest_until_searchable() -> anyhow::Result<()> {
    let vigil = Vigil::start("server:\n  self_monitoring: false\n").await?;
    let clients = 4;
    let requests_per_client = 25;
    let lines_per_request = 1_000;
    let body_for = |client: usize, request: usize| -> String {
        (0..lines_per_request)
            .map(|line| {
                logstash_v1_line(
                    "INFO",
                    &format!("GET /api/v1/orders/{client}-{request}-{line} answered 200 in 12ms"),
                    "",
                    0,
                ) + "\n"
            })
            .collect()
    };
    let bodies: Vec<Vec<String>> = (0..clients)
        .map(|client| {
            (0..requests_per_client)
                .map(|request| body_for(client, request))
                .collect()
        })
        .collect();
    let bytes: usize = bodies.iter().flatten().map(String::len).sum();
    let started = Instant::now();
    let mut handles = Vec::new();
    for client_bodies in bodies {
        let client = vigil.client.clone();
        let url = vigil.url("/api/v1/logs");
        handles.push(tokio::spawn(async move {
            for body in client_bodies {
                let response = client.post(&url).body(body).send().await?;
                anyhow::ensure!(response.status() == 200, "status {}", response.status());
            }
            anyhow::Ok(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    let acknowledged = started.elapsed();
    let total = (clients * requests_per_client * lines_per_request) as u64;
    wait_for_total(&vigil, "service:checkout", total).await?;
    let searchable = started.elapsed();
    eprintln!(
        "{total} lines ({:.1} MB): acknowledged in {acknowledged:?} ({:.0} lines/s), all searchable after {searchable:?} ({:.0} lines/s, {:.1} MB/s)",
        bytes as f64 / 1e6,
        total as f64 / acknowledged.as_secs_f64(),
        total as f64 / searchable.as_secs_f64(),
        bytes as f64 / 1e6 / searchable.as_secs_f64(),
    );
    Ok(())
}
