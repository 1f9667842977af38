//! The scrape loop against a real HTTP server on 127.0.0.1.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use vigil_model::{is_stale_marker, Labels, MetricBatch, MetricSink, SinkError, Telemetry};

use super::*;

/// A sink that keeps every batch.
#[derive(Default)]
struct MemorySink {
    batches: Mutex<Vec<MetricBatch>>,
}

impl MetricSink for MemorySink {
    fn write(&self, batch: MetricBatch) -> Result<(), SinkError> {
        self.batches.lock().push(batch);
        Ok(())
    }
}

impl MemorySink {
    /// Returns every `(labels, value)` written, in write order.
    fn samples(&self) -> Vec<(Labels, f64)> {
        self.batches
            .lock()
            .iter()
            .flat_map(|batch| batch.series.iter())
            .flat_map(|series| {
                series
                    .samples
                    .iter()
                    .map(|sample| (series.labels.clone(), sample.value))
            })
            .collect()
    }

    fn values_of(&self, metric_name: &str) -> Vec<f64> {
        self.samples()
            .into_iter()
            .filter(|(labels, _)| labels.metric_name() == Some(metric_name))
            .map(|(_, value)| value)
            .collect()
    }
}

/// What the test server answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    delay: Duration,
}

impl Reply {
    fn ok(body: &str) -> Self {
        Reply {
            status: 200,
            headers: vec![("Content-Type", "text/plain; version=0.0.4".to_string())],
            body: body.as_bytes().to_vec(),
            delay: Duration::ZERO,
        }
    }
}

/// A minimal HTTP/1.1 server: answers every request with the current [`Reply`] and keeps
/// the request heads it saw.
struct TestServer {
    address: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    requests: Arc<Mutex<Vec<String>>>,
    stop: CancellationToken,
}

impl TestServer {
    async fn start(reply: Reply) -> Self {
        TestServer::start_with_tls(reply, None).await
    }

    /// Serves HTTPS with the test certificate of `testdata/` (signed by `testdata/ca.pem`,
    /// valid for 127.0.0.1).
    async fn start_https(reply: Reply) -> Self {
        let certificates: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(include_bytes!("testdata/server.pem"))
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_slice(include_bytes!("testdata/server-key.pem")).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certificates, key)
        .unwrap();
        TestServer::start_with_tls(reply, Some(TlsAcceptor::from(Arc::new(config)))).await
    }

    async fn start_with_tls(reply: Reply, tls: Option<TlsAcceptor>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let reply = Arc::new(Mutex::new(reply));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = CancellationToken::new();
        let (server_reply, server_requests, server_stop) =
            (Arc::clone(&reply), Arc::clone(&requests), stop.clone());
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = server_stop.cancelled() => return,
                    accepted = listener.accept() => accepted.unwrap(),
                };
                let reply = server_reply.lock().clone();
                let requests = Arc::clone(&server_requests);
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        None => answer(stream, reply, requests).await,
                        Some(acceptor) => {
                            if let Ok(tls_stream) = acceptor.accept(stream).await {
                                answer(tls_stream, reply, requests).await;
                            }
                        }
                    }
                });
            }
        });
        TestServer {
            address,
            reply,
            requests,
            stop,
        }
    }
}

/// Reads one request head and writes `reply`.
async fn answer(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    reply: Reply,
    requests: Arc<Mutex<Vec<String>>>,
) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    requests
        .lock()
        .push(String::from_utf8_lossy(&head).into_owned());
    tokio::time::sleep(reply.delay).await;
    let mut response = format!("HTTP/1.1 {} Whatever\r\n", reply.status);
    for (name, value) in &reply.headers {
        response.push_str(&format!("{name}: {value}\r\n"));
    }
    response.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        reply.body.len()
    ));
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.write_all(&reply.body).await;
    let _ = stream.shutdown().await;
}

fn scrape_config(yaml: &str, address: SocketAddr) -> ScrapeConfig {
    let yaml = yaml.replace("ADDRESS", &address.to_string());
    serde_yaml_ng::from_str(&yaml).unwrap()
}

/// Runs the scraper until `done` holds for the sink (or 10 s pass), then shuts it down.
async fn scrape_until(
    configs: Vec<ScrapeConfig>,
    sink: &Arc<MemorySink>,
    telemetry: &Telemetry,
    done: impl Fn(&MemorySink) -> bool,
) {
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(run(
        configs,
        GlobalConfig::default(),
        Arc::clone(sink) as Arc<dyn MetricSink>,
        telemetry.clone(),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !done(sink) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), runner)
        .await
        .expect("run returns after shutdown")
        .unwrap();
}

const EXPOSITION: &str = "# HELP requests_total Requests served.\n\
# TYPE requests_total counter\n\
requests_total{method=\"GET\",job=\"inner\"} 7\n\
# TYPE latency_seconds histogram\n\
latency_seconds_bucket{le=\"0.1\"} 1\n\
latency_seconds_bucket{le=\"+Inf\"} 2\n\
latency_seconds_sum 0.3\n\
latency_seconds_count 2\n";

#[tokio::test]
async fn scrapes_a_target_with_target_labels_and_report_series() {
    let server = TestServer::start(Reply::ok(EXPOSITION)).await;
    let config = scrape_config(
        "job_name: api\nscrape_interval: 100ms\nstatic_configs: [{targets: [ADDRESS], labels: {env: test}}]\nbasic_auth: {username: vigil, password: secret}\nparams: {module: [http_2xx, 'a b']}\n",
        server.address,
    );
    let sink = Arc::new(MemorySink::default());
    let telemetry = Telemetry::new();
    scrape_until(vec![config], &sink, &telemetry, |sink| {
        sink.values_of("up").len() >= 2
    })
    .await;

    let instance = server.address.to_string();
    let up = Labels::from_pairs([
        ("__name__", "up"),
        ("job", "api"),
        ("instance", instance.as_str()),
        ("env", "test"),
    ]);
    let samples = sink.samples();
    assert!(samples.contains(&(up, 1.0)));
    let requests = Labels::from_pairs([
        ("__name__", "requests_total"),
        ("method", "GET"),
        ("job", "api"),
        ("exported_job", "inner"),
        ("instance", instance.as_str()),
        ("env", "test"),
    ]);
    assert!(samples.contains(&(requests, 7.0)), "{samples:?}");
    assert_eq!(sink.values_of("scrape_samples_scraped")[0], 5.0);
    assert!(sink.values_of("scrape_duration_seconds")[0] > 0.0);
    let metadata = sink.batches.lock()[0].metadata.clone();
    assert_eq!(metadata.len(), 2);
    assert_eq!(metadata[0].help, "Requests served.");

    let request_head = server.requests.lock()[0].to_lowercase();
    assert!(
        request_head.starts_with("get /metrics?module=http_2xx&module=a+b http/1.1"),
        "{request_head}"
    );
    assert!(request_head.contains("authorization: basic dmlnaww6c2vjcmv0"));
    assert!(request_head.contains("accept: text/plain;version=0.0.4"));
    assert!(request_head.contains("x-prometheus-scrape-timeout-seconds: 0.1"));
    assert!(request_head.contains("user-agent: vigil/"));
    let rendered = telemetry.render();
    assert!(rendered.contains("vigil_scrapes_total{job=\"api\",result=\"success\"}"));
    assert!(rendered.contains("vigil_scrape_targets{job=\"api\"} 1"));
    server.stop.cancel();
}

#[tokio::test]
async fn target_going_down_reports_up_zero_and_marks_series_stale() {
    let server = TestServer::start(Reply::ok("a 1\nb{x=\"y\"} 2\n")).await;
    let config = scrape_config(
        "job_name: flaky\nscrape_interval: 100ms\nstatic_configs: [{targets: [ADDRESS]}]\n",
        server.address,
    );
    let sink = Arc::new(MemorySink::default());
    let telemetry = Telemetry::new();
    let stopped = Arc::new(Mutex::new(false));
    let stop_server = server.stop.clone();
    scrape_until(vec![config], &sink, &telemetry, move |sink| {
        let up_values = sink.values_of("up");
        if up_values.first() == Some(&1.0) && !*stopped.lock() {
            *stopped.lock() = true;
            stop_server.cancel();
        }
        up_values.contains(&0.0)
    })
    .await;
    let up_values = sink.values_of("up");
    assert_eq!(up_values.first(), Some(&1.0));
    assert_eq!(up_values.last(), Some(&0.0));
    let a_values = sink.values_of("a");
    assert_eq!(a_values.len(), 2, "{a_values:?}");
    assert!(is_stale_marker(a_values[1]));
    assert!(is_stale_marker(sink.values_of("b")[1]));
    assert!(telemetry
        .render()
        .contains("vigil_scrape_failures_total{job=\"flaky\",reason=\"connection_error\"}"));
}

#[tokio::test]
async fn disappearing_series_get_a_staleness_marker() {
    let server = TestServer::start(Reply::ok("a 1\nb 2\n")).await;
    let config = scrape_config(
        "job_name: shrinking\nscrape_interval: 100ms\nstatic_configs: [{targets: [ADDRESS]}]\n",
        server.address,
    );
    let sink = Arc::new(MemorySink::default());
    let reply = Arc::clone(&server.reply);
    scrape_until(vec![config], &sink, &Telemetry::new(), move |sink| {
        if sink.values_of("b").len() == 1 {
            *reply.lock() = Reply::ok("a 1\n");
        }
        sink.values_of("b").len() >= 2 && sink.values_of("up").len() >= 3
    })
    .await;
    let b_values = sink.values_of("b");
    // The reply may change while a second scrape is on its way; the last one is the marker.
    assert!(b_values.len() <= 3);
    assert!(is_stale_marker(*b_values.last().unwrap()));
    assert!(sink.values_of("up").iter().all(|up| *up == 1.0));
    server.stop.cancel();
}

#[tokio::test]
async fn gzip_bodies_are_decompressed() {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(b"zipped 42\n").unwrap();
    let reply = Reply {
        headers: vec![("Content-Encoding", "gzip".to_string())],
        body: encoder.finish().unwrap(),
        ..Reply::ok("")
    };
    let server = TestServer::start(reply).await;
    let config = scrape_config(
        "job_name: zipped\nscrape_interval: 100ms\nstatic_configs: [{targets: [ADDRESS]}]\n",
        server.address,
    );
    let sink = Arc::new(MemorySink::default());
    scrape_until(vec![config], &sink, &Telemetry::new(), |sink| {
        !sink.values_of("up").is_empty()
    })
    .await;
    assert_eq!(sink.values_of("zipped"), vec![42.0]);
    assert!(server.requests.lock()[0]
        .to_lowercase()
        .contains("accept-encoding: gzip"));
    server.stop.cancel();
}

/// Each failing reply gives `up == 0` and the failure reason in telemetry.
#[tokio::test]
async fn failing_scrapes_are_down_with_a_reason() {
    let slow = Reply {
        delay: Duration::from_millis(400),
        ..Reply::ok("slow 1\n")
    };
    let cases = [
        ("timeout", slow, "scrape_timeout: 50ms\n"),
        (
            "http_status",
            Reply {
                status: 500,
                ..Reply::ok("oops")
            },
            "",
        ),
        (
            "body_too_large",
            Reply::ok(&"x 1\n".repeat(100)),
            "body_size_limit: 100\n",
        ),
        ("parse_error", Reply::ok("good 1\nbad{ 1\n"), ""),
    ];
    for (reason, reply, extra) in cases {
        let server = TestServer::start(reply).await;
        let config = scrape_config(
            &format!("job_name: {reason}\nscrape_interval: 100ms\n{extra}static_configs: [{{targets: [ADDRESS]}}]\n"),
            server.address,
        );
        let sink = Arc::new(MemorySink::default());
        let telemetry = Telemetry::new();
        scrape_until(vec![config], &sink, &telemetry, |sink| {
            !sink.values_of("up").is_empty()
        })
        .await;
        assert_eq!(sink.values_of("up")[0], 0.0, "{reason}");
        assert!(sink.values_of("good").is_empty());
        let rendered = telemetry.render();
        assert!(
            rendered.contains(&format!(
                "vigil_scrape_failures_total{{job=\"{reason}\",reason=\"{reason}\"}} "
            )),
            "{reason}: {rendered}"
        );
        server.stop.cancel();
    }
}

#[tokio::test]
async fn targets_of_a_job_are_spread_and_all_scraped() {
    let first = TestServer::start(Reply::ok("one 1\n")).await;
    let second = TestServer::start(Reply::ok("two 2\n")).await;
    let yaml = format!(
        "job_name: pair\nscrape_interval: 200ms\nstatic_configs: [{{targets: ['{}', '{}']}}]\n",
        first.address, second.address
    );
    let config: ScrapeConfig = serde_yaml_ng::from_str(&yaml).unwrap();
    let sink = Arc::new(MemorySink::default());
    scrape_until(vec![config], &sink, &Telemetry::new(), |sink| {
        !sink.values_of("one").is_empty() && !sink.values_of("two").is_empty()
    })
    .await;
    assert_eq!(sink.values_of("one")[0], 1.0);
    assert_eq!(sink.values_of("two")[0], 2.0);
    first.stop.cancel();
    second.stop.cancel();
}

#[tokio::test]
async fn no_jobs_waits_for_shutdown() {
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(run(
        Vec::new(),
        GlobalConfig::default(),
        Arc::new(MemorySink::default()) as Arc<dyn MetricSink>,
        Telemetry::new(),
        shutdown.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!runner.is_finished());
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(1), runner)
        .await
        .unwrap()
        .unwrap();
}

/// `scheme: https` with the test CA in `tls_config.ca_file` scrapes; without it the unknown
/// issuer fails the scrape; `insecure_skip_verify` accepts it.
#[tokio::test]
async fn https_targets_verify_against_the_configured_ca() {
    let ca_file = concat!(env!("CARGO_MANIFEST_DIR"), "/src/scrape/testdata/ca.pem");
    let cases = [
        (format!("tls_config: {{ca_file: '{ca_file}'}}\n"), 1.0),
        (String::new(), 0.0),
        (
            "tls_config: {insecure_skip_verify: true}\n".to_string(),
            1.0,
        ),
    ];
    for (tls_config, expected_up) in cases {
        let server = TestServer::start_https(Reply::ok("secure 1\n")).await;
        let config = scrape_config(
            &format!("job_name: tls\nscheme: https\nscrape_interval: 100ms\n{tls_config}static_configs: [{{targets: [ADDRESS]}}]\n"),
            server.address,
        );
        let sink = Arc::new(MemorySink::default());
        scrape_until(vec![config], &sink, &Telemetry::new(), |sink| {
            !sink.values_of("up").is_empty()
        })
        .await;
        assert_eq!(sink.values_of("up")[0], expected_up, "{tls_config:?}");
        assert_eq!(
            sink.values_of("secure").first() == Some(&1.0),
            expected_up == 1.0
        );
        server.stop.cancel();
    }
}

/// A store slower than the interval makes cycles skip, counted, never queued.
#[tokio::test]
async fn slow_store_skips_cycles_and_counts_them() {
    struct SlowSink(MemorySink);
    impl MetricSink for SlowSink {
        fn write(&self, batch: MetricBatch) -> Result<(), SinkError> {
            std::thread::sleep(Duration::from_millis(350));
            self.0.write(batch)
        }
    }
    let server = TestServer::start(Reply::ok("a 1\n")).await;
    let config = scrape_config(
        "job_name: slow\nscrape_interval: 100ms\nstatic_configs: [{targets: [ADDRESS]}]\n",
        server.address,
    );
    let sink = Arc::new(SlowSink(MemorySink::default()));
    let telemetry = Telemetry::new();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(run(
        vec![config],
        GlobalConfig::default(),
        Arc::clone(&sink) as Arc<dyn MetricSink>,
        telemetry.clone(),
        shutdown.clone(),
    ));
    let skipped = telemetry.counter(
        "vigil_scrapes_total",
        "Scrape cycles per job and result (success, failed, skipped).",
        &[("job", "slow"), ("result", "skipped")],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while skipped.get() < 2 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shutdown.cancel();
    runner.await.unwrap();
    assert!(skipped.get() >= 2, "skipped {}", skipped.get());
    // Every written cycle is whole: one `up` per batch.
    assert!(sink.0.values_of("up").iter().all(|up| *up == 1.0));
    server.stop.cancel();
}

/// A store that refuses a batch: the samples are counted as dropped, and the metadata is
/// written again with the next batch.
#[tokio::test]
async fn refused_writes_are_counted_and_metadata_resent() {
    #[derive(Default)]
    struct RefuseFirst {
        inner: MemorySink,
        calls: Mutex<usize>,
    }
    impl MetricSink for RefuseFirst {
        fn write(&self, batch: MetricBatch) -> Result<(), SinkError> {
            let mut calls = self.calls.lock();
            *calls += 1;
            if *calls == 1 {
                return Err(SinkError::Overloaded);
            }
            self.inner.write(batch)
        }
    }
    let server = TestServer::start(Reply::ok("# TYPE a gauge\na 1\n")).await;
    let config = scrape_config(
        "job_name: refused\nscrape_interval: 1s\nscrape_timeout: 1s\nstatic_configs: [{targets: [ADDRESS]}]\n",
        server.address,
    );
    let sink = Arc::new(RefuseFirst::default());
    let telemetry = Telemetry::new();
    let shutdown = CancellationToken::new();
    let runner = tokio::spawn(run(
        vec![config],
        GlobalConfig::default(),
        Arc::clone(&sink) as Arc<dyn MetricSink>,
        telemetry.clone(),
        shutdown.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while sink.inner.batches.lock().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    runner.await.unwrap();
    let batches = sink.inner.batches.lock();
    assert_eq!(batches[0].metadata.len(), 1);
    // One sample and five report series were refused.
    assert_eq!(
        telemetry.ingest_dropped("scrape", "store_overloaded").get(),
        6
    );
    server.stop.cancel();
}
