//! What Vigil acknowledged survives a crash: samples of remote_write and import requests that got
//! a 2xx, and StatsD aggregates after their flush, are all there after kill -9 and a restart.
//! SIGTERM flushes what StatsD aggregated but had not flushed yet.

mod common;

use std::time::Duration;

use anyhow::Context;
use common::{free_udp_port, Vigil};
use prost::Message;
use vigil_collector::sources::remote_write::proto;

fn remote_write_body(series: usize, samples_per_series: i64, start_ms: i64) -> Vec<u8> {
    let request = proto::WriteRequest {
        timeseries: (0..series)
            .map(|index| proto::TimeSeries {
                labels: vec![
                    proto::Label {
                        name: "__name__".to_string(),
                        value: "written_total".to_string(),
                    },
                    proto::Label {
                        name: "instance".to_string(),
                        value: format!("i{index}"),
                    },
                ],
                samples: (0..samples_per_series)
                    .map(|step| proto::Sample {
                        value: (step + 1) as f64,
                        timestamp: start_ms + step * 1_000,
                    })
                    .collect(),
                ..Default::default()
            })
            .collect(),
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&request.encode_to_vec())
        .expect("snappy")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as i64)
        .unwrap_or(0)
}

async fn scalar(vigil: &Vigil, promql: &str) -> anyhow::Result<f64> {
    let result = vigil.query_vector(promql).await?;
    let value = result
        .first()
        .and_then(|sample| sample["value"][1].as_str())
        .with_context(|| format!("{promql} returned {result:?}"))?;
    Ok(value.parse()?)
}

#[tokio::test]
async fn acknowledged_remote_write_and_import_survive_kill_9() -> anyhow::Result<()> {
    let mut vigil = Vigil::start("server:\n  self_monitoring: false\n").await?;
    let start_ms = now_ms() - 300_000;
    // 20 requests of 100 series × 10 samples, each acknowledged before the next.
    for request in 0..20 {
        let response = vigil
            .client
            .post(vigil.url("/api/v1/write"))
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .body(remote_write_body(100, 10, start_ms + request * 10_000))
            .send()
            .await?;
        assert_eq!(response.status(), 204, "{}", response.text().await?);
    }
    let import: String = (0..500)
        .map(|index| format!("imported{{n=\"{index}\"}} {index} {}\n", start_ms + 30_000))
        .collect();
    let response = vigil
        .client
        .post(vigil.url("/api/v1/import"))
        .body(import)
        .send()
        .await?;
    assert_eq!(response.status(), 200);

    vigil.kill_hard();
    vigil.restart().await?;

    assert_eq!(
        scalar(&vigil, "count(count_over_time(written_total[10m]))").await?,
        100.0
    );
    assert_eq!(
        scalar(&vigil, "sum(count_over_time(written_total[10m]))").await?,
        20_000.0,
        "every acknowledged sample is back: 100 series × 20 requests × 10 samples"
    );
    assert_eq!(scalar(&vigil, "count(imported)").await?, 500.0);
    assert_eq!(
        scalar(&vigil, "sum(imported)").await?,
        (0..500).sum::<i32>() as f64
    );
    Ok(())
}

#[tokio::test]
async fn statsd_data_is_durable_after_its_flush_and_sigterm_flushes() -> anyhow::Result<()> {
    let port = free_udp_port();
    let mut vigil = Vigil::start(&format!(
        "server:\n  self_monitoring: false\nstatsd:\n  udp_listen: 127.0.0.1:{port}\n  flush_interval: 1s\n"
    ))
    .await?;
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    socket.send_to(
        b"checkout.orders:5|c\ncheckout.orders:2|c",
        ("127.0.0.1", port),
    )?;
    // After a flush (1 s) the aggregate is durable.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while vigil.query_vector("checkout_orders").await?.is_empty() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "no flush within 10 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    vigil.kill_hard();
    vigil.restart().await?;
    assert_eq!(scalar(&vigil, "checkout_orders").await?, 7.0);

    // A long flush interval: only SIGTERM's final flush can write this line.
    vigil.terminate()?;
    let config = vigil
        .config_yaml
        .replace("flush_interval: 1s", "flush_interval: 1h");
    std::fs::write(vigil.data_dir.path().join("vigil.yml"), config)?;
    vigil.restart().await?;
    socket.send_to(b"checkout.refunds:3|c", ("127.0.0.1", port))?;
    // SIGTERM once the line is parsed and waits in the aggregator.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !vigil
        .metrics_text()
        .await?
        .contains("vigil_ingest_received_total{protocol=\"statsd\"} 1")
    {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the line was not received within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(vigil.terminate()?, "clean exit on SIGTERM");
    vigil.restart().await?;
    assert_eq!(scalar(&vigil, "checkout_refunds").await?, 3.0);
    Ok(())
}
