//! `vigil serve`: opens the stores, starts every listener and background task, serves HTTP,
//! and on SIGTERM/SIGINT stops the listeners, flushes what is buffered and closes the stores.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;
use tower_http::decompression::RequestDecompressionLayer;
use vigil_collector::http::{now_ms, IngestState};
use vigil_model::{MetricSink, Telemetry};
use vigil_query::store::{MetricStore, MetricStoreOptions, RollupLevel};

use crate::config::{listen_address, Config};
use crate::self_monitoring;

/// How often the head is cut into chunks and retention runs.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// How often Vigil records its own metrics.
const SELF_MONITORING_INTERVAL: Duration = Duration::from_secs(15);

#[derive(Clone)]
struct AppState {
    telemetry: Telemetry,
    store: Arc<MetricStore>,
    ready: Arc<AtomicBool>,
}

/// Runs the server until SIGTERM or SIGINT.
///
/// # Errors
/// When a store cannot be opened or a listener cannot bind.
pub async fn serve(config: Config) -> anyhow::Result<()> {
    init_tracing();
    let telemetry = Telemetry::new();
    let store_options = MetricStoreOptions {
        raw_retention: config.storage.raw_retention,
        rollups: config
            .storage
            .rollups
            .iter()
            .map(|rollup| RollupLevel {
                resolution: rollup.resolution,
                retention: rollup.retention,
            })
            .collect(),
        max_series_per_metric: config.storage.limits.series_per_metric,
        max_label_bytes: config.storage.limits.label_bytes as usize,
        ..MetricStoreOptions::default()
    };
    let data_dir = config.server.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || MetricStore::open(&data_dir, store_options))
        .await
        .context("metric store task failed")?
        .context("failed to open the metric store")?;
    let store = Arc::new(store);
    let sink: Arc<dyn MetricSink> = store.clone();
    let shutdown = CancellationToken::new();
    let ready = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();

    // Alerting: rules loaded and alert state restored before /readyz says ready. Ingest writes
    // go through `ingest_sink`, which wakes the rules selecting the written metrics at once.
    let alerting =
        crate::alerting::open(&config, store.clone(), sink.clone(), telemetry.clone()).await?;
    tasks.spawn(alerting.clone().run(shutdown.clone()));
    tasks.spawn(crate::alerting::reload_on_sighup(
        alerting.clone(),
        config.source_path.clone(),
        shutdown.clone(),
    ));
    let ingest_sink = alerting.touching_sink(sink.clone());

    // StatsD. Its listeners bind inside their task; check the addresses first so a port in
    // use stops Vigil at start with a clear error instead of a log line.
    let statsd_udp = listen_address("statsd.udp_listen", &config.statsd.udp_listen)?;
    let statsd_tcp = listen_address("statsd.tcp_listen", &config.statsd.tcp_listen)?;
    if let Some(address) = statsd_udp {
        std::net::UdpSocket::bind(address)
            .with_context(|| format!("failed to bind statsd.udp_listen on {address}"))?;
    }
    if let Some(address) = statsd_tcp {
        std::net::TcpListener::bind(address)
            .with_context(|| format!("failed to bind statsd.tcp_listen on {address}"))?;
    }
    if statsd_udp.is_some() || statsd_tcp.is_some() {
        let statsd = vigil_collector::sources::statsd::run(
            config.statsd.clone(),
            ingest_sink.clone(),
            telemetry.clone(),
            shutdown.clone(),
        );
        tasks.spawn(async move {
            if let Err(error) = statsd.await {
                tracing::error!(%error, "statsd listener stopped");
            }
        });
    }

    // Prometheus scrape.
    if !config.scrape_configs.is_empty() {
        tasks.spawn(vigil_collector::scrape::run(
            config.scrape_configs.clone(),
            config.global.clone(),
            ingest_sink.clone(),
            telemetry.clone(),
            shutdown.clone(),
        ));
    }

    // Logs: the store replays its write-ahead log before /readyz says ready.
    let log_store = crate::logs::open_store(&config).await?;
    let log_ingest = crate::logs::ingest_state(&config, log_store.clone(), telemetry.clone());
    if let Some(forward) = crate::logs::forward_listener(
        &config,
        log_store.clone(),
        telemetry.clone(),
        shutdown.clone(),
    )
    .await?
    {
        tasks.spawn(forward);
    }
    let log_maintenance = tokio::spawn(crate::logs::run_maintenance(
        log_store.clone(),
        sink.clone(),
        telemetry.clone(),
        shutdown.clone(),
    ));

    // Traces: the span store and its retention. OTLP ingest writes through `span_sink`.
    let span_store: Arc<vigil_traces::SpanStore> = crate::traces::open_store(&config).await?;
    let span_sink: Arc<dyn vigil_model::SpanSink> = span_store.clone();
    tasks.spawn(crate::traces::run_maintenance(
        span_store.clone(),
        telemetry.clone(),
        shutdown.clone(),
    ));
    let correlated_logs = Arc::new(crate::traces::LogStoreCorrelation::new(log_store.clone()));

    // OTLP: traces (through span metrics into the span store), logs and metrics.
    let otlp_sinks = crate::otlp::OtlpSinks {
        spans: span_sink,
        logs: log_store.clone(),
        metrics: ingest_sink.clone(),
    };
    if let Some(otlp) =
        crate::otlp::start(&config, otlp_sinks, telemetry.clone(), shutdown.clone()).await?
    {
        tasks.spawn(otlp);
    }

    // HTTP.
    let ingest = IngestState::new(ingest_sink.clone(), telemetry.clone(), 64);
    let max_body_bytes = config.server.max_body_bytes as usize;
    let state = AppState {
        telemetry: telemetry.clone(),
        store: store.clone(),
        ready: ready.clone(),
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
        .merge(vigil_collector::sources::import::router(ingest.clone()))
        .merge(vigil_collector::sources::remote_write::router(
            ingest.clone(),
            max_body_bytes.saturating_mul(8),
        ))
        .merge(vigil_query::api::prometheus_router(store.clone()))
        .merge(vigil_alerting::api::router(alerting.clone()))
        .merge(crate::alerting::reload_router(
            alerting,
            config.source_path.clone(),
        ))
        .merge(vigil_collector::sources::json_logs::router(log_ingest))
        .merge(vigil_logs::api::router(log_store.clone()))
        .merge(vigil_traces::router(span_store.clone(), correlated_logs))
        .layer(axum::middleware::map_response(json_for_plain_errors))
        .layer(RequestDecompressionLayer::new().pass_through_unaccepted(true))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            crate::auth::Authenticator::new(config.auth.clone()),
            crate::auth::require,
        ));

    let http_address = listen_address("server.http_listen", &config.server.http_listen)?;
    if let Some(address) = http_address {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("failed to bind the HTTP listener on {address}"))?;
        tracing::info!(%address, "HTTP listening");
        let http_shutdown = shutdown.clone();
        tasks.spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { http_shutdown.cancelled().await })
                .await;
            if let Err(error) = served {
                tracing::error!(%error, "HTTP server stopped");
            }
        });
    }

    // Maintenance: cut the head into chunks, enforce retention, refresh gauges.
    {
        let store = store.clone();
        let telemetry = telemetry.clone();
        let shutdown = shutdown.clone();
        let self_monitoring = config.server.self_monitoring;
        tasks.spawn(async move {
            let mut maintenance = tokio::time::interval(MAINTENANCE_INTERVAL);
            let mut self_record = tokio::time::interval(SELF_MONITORING_INTERVAL);
            maintenance.tick().await;
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = maintenance.tick() => {
                        let store = store.clone();
                        let outcome = tokio::task::spawn_blocking(move || {
                            store.flush_head()?;
                            store.enforce_retention()
                        }).await;
                        match outcome {
                            Ok(Ok(_)) => {}
                            Ok(Err(error)) => tracing::warn!(%error, "metric store maintenance failed"),
                            Err(error) => tracing::warn!(%error, "metric store maintenance task failed"),
                        }
                    }
                    _ = self_record.tick() => {
                        self_monitoring::refresh_store_gauges(&telemetry, &store);
                        if self_monitoring {
                            let store = store.clone();
                            let telemetry = telemetry.clone();
                            let _ = tokio::task::spawn_blocking(move || {
                                self_monitoring::record_self(&telemetry, &store, now_ms());
                            }).await;
                        }
                    }
                }
            }
        });
    }

    ready.store(true, Ordering::SeqCst);
    tracing::info!(data_dir = %config.server.data_dir.display(), "Vigil is ready");
    wait_for_signal().await;
    tracing::info!("shutting down: flushing buffered data");
    shutdown.cancel();
    while tasks.join_next().await.is_some() {}
    // Its last commit runs after the HTTP server stopped taking lines.
    if let Err(error) = log_maintenance.await {
        tracing::warn!(%error, "log maintenance task failed");
    }
    let store_for_flush = store.clone();
    tokio::task::spawn_blocking(move || store_for_flush.flush_head())
        .await
        .context("final flush task failed")?
        .context("final flush of the metric store failed")?;
    tracing::info!("stopped");
    Ok(())
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env(crate::config::LOG_FILTER_VARIABLE)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn wait_for_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(signal) => signal,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops Vigil");
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "starting\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    self_monitoring::refresh_store_gauges(&state.telemetry, &state.store);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.telemetry.render(),
    )
        .into_response()
}

/// Turns the plain-text errors axum produces itself (413 from the body limit, 415, 405) into
/// the API's JSON error shape.
async fn json_for_plain_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (error_type, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("bad_data", "request body exceeds server.max_body_bytes"),
        StatusCode::NOT_FOUND => ("not_found", "no such endpoint"),
        StatusCode::METHOD_NOT_ALLOWED => ("bad_data", "method not allowed on this endpoint"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("bad_data", "unsupported content type or encoding"),
        _ if status.is_client_error() => ("bad_data", "invalid request"),
        _ => ("internal", "internal error"),
    };
    let mut json = Json(serde_json::json!({
        "status": "error",
        "errorType": error_type,
        "error": message,
    }))
    .into_response();
    *json.status_mut() = status;
    if let Some(retry_after) = response.headers().get(header::RETRY_AFTER) {
        json.headers_mut()
            .insert(header::RETRY_AFTER, retry_after.clone());
    }
    json
}
