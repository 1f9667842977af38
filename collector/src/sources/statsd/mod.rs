//! StatsD over UDP and TCP: line protocol with DogStatsD and other tag styles, aggregated per
//! flush interval and mapped to Prometheus names as statsd_exporter maps them.
//!
//! Pipeline, top to bottom:
//! 1. [`listener`]: the UDP thread reads batches of datagrams (`recvmmsg`), TCP tasks read
//!    complete lines; both push [`listener::DatagramBatch`]es onto bounded per-worker queues
//!    (UDP drops and counts when all are full, TCP waits).
//! 2. Parser workers (threads) run [`aggregate::Aggregator`]: parse ([`parser`]), map
//!    ([`mapping`]) and accumulate the interval per series.
//! 3. Every `flush_interval`, the flush task takes each worker's interval, merges it in
//!    [`aggregate::Flusher`] and writes one [`MetricBatch`] through the [`MetricSink`] on a
//!    blocking thread, stamped with the flush time. Shutdown flushes once more.

pub mod aggregate;
mod config;
pub mod listener;
pub mod mapping;
pub mod parser;
mod raw_keys;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Receiver;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use vigil_model::telemetry::Counter;
use vigil_model::{MetricBatch, MetricSink, SinkError, Telemetry};

pub use aggregate::{Aggregator, AggregatorSettings, Flusher};
pub use config::StatsdConfig;
pub use mapping::{Mapper, MappingError, MappingRule};
pub use parser::{parse_datagram, ParseError, StatsdMetric};

use listener::{BatchRouter, DatagramBatch, QueuedBytes};

/// The protocol label of StatsD's self-telemetry.
const PROTOCOL: &str = "statsd";
/// Batches each worker's queue holds (each up to 64 datagrams).
const WORKER_QUEUE_BATCHES: usize = 16_384;
/// Bytes of datagrams all queues may hold before UDP drops: about two seconds of 1,000,000
/// lines/s, so a flush or a busy neighbour does not cost lines.
const QUEUED_BYTES_BUDGET: usize = 64 << 20;

/// Why the StatsD source could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum StatsdError {
    /// A listener could not bind its address.
    #[error("failed to bind statsd {protocol} listener on `{address}`: {source}")]
    Bind {
        /// `udp` or `tcp`.
        protocol: &'static str,
        /// The configured address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The mapping rules do not compile.
    #[error("invalid statsd mapping: {0}")]
    Mapping(#[from] MappingError),
    /// A percentile is outside [0, 1].
    #[error("statsd percentile {0} is not between 0 and 1")]
    Percentile(f64),
    /// A worker thread could not be started.
    #[error("failed to start statsd worker thread: {0}")]
    Thread(std::io::Error),
}

/// Returns true when a listen address disables its listener (empty or `0`).
pub fn listener_disabled(address: &str) -> bool {
    let trimmed = address.trim();
    trimmed.is_empty() || trimmed == "0"
}

/// Checks a StatsD config without binding anything.
///
/// # Errors
/// [`StatsdError::Mapping`] or [`StatsdError::Percentile`].
pub fn validate(config: &StatsdConfig) -> Result<(), StatsdError> {
    for percentile in &config.percentiles {
        if !(0.0..=1.0).contains(percentile) {
            return Err(StatsdError::Percentile(*percentile));
        }
    }
    Mapper::new(&config.mappings)?;
    Ok(())
}

/// Telemetry handles of the StatsD source, registered once.
#[derive(Clone)]
struct StatsdTelemetry {
    registry: Telemetry,
    received: Counter,
    skipped_tags: Counter,
    dropped_by_mapping: Counter,
}

impl StatsdTelemetry {
    fn new(registry: Telemetry) -> Self {
        StatsdTelemetry {
            received: registry.ingest_received(PROTOCOL),
            skipped_tags: registry.ingest_dropped(PROTOCOL, "bad_tag"),
            dropped_by_mapping: registry.ingest_dropped(PROTOCOL, "mapping_drop"),
            registry,
        }
    }

    fn publish(&self, stats: aggregate::LineStats) {
        self.received.add(stats.received);
        self.skipped_tags.add(stats.skipped_tags);
        self.dropped_by_mapping.add(stats.dropped_by_mapping);
        for (reason, count) in stats.rejected {
            self.registry.ingest_rejected(PROTOCOL, reason).add(count);
        }
    }
}

/// Runs the StatsD source until `shutdown`: binds the listeners (an empty or `0` address
/// disables one), flushes aggregated series every `flush_interval` through `sink` with the
/// flush time as timestamp, and flushes once more before returning.
///
/// # Errors
/// [`StatsdError::Bind`] naming the address when a listener cannot bind; a mapping or
/// percentile error when the config is invalid.
pub async fn run(
    config: StatsdConfig,
    sink: Arc<dyn MetricSink>,
    telemetry: Telemetry,
    shutdown: CancellationToken,
) -> Result<(), StatsdError> {
    validate(&config)?;
    let settings = AggregatorSettings::new(Mapper::new(&config.mappings)?, &config.percentiles);
    let statsd_telemetry = StatsdTelemetry::new(telemetry.clone());

    let udp_socket = if listener_disabled(&config.udp_listen) {
        None
    } else {
        Some(
            listener::bind_udp(&config.udp_listen).map_err(|source| StatsdError::Bind {
                protocol: "udp",
                address: config.udp_listen.clone(),
                source,
            })?,
        )
    };
    let tcp_listener = if listener_disabled(&config.tcp_listen) {
        None
    } else {
        Some(
            tokio::net::TcpListener::bind(&config.tcp_listen)
                .await
                .map_err(|source| StatsdError::Bind {
                    protocol: "tcp",
                    address: config.tcp_listen.clone(),
                    source,
                })?,
        )
    };

    // One core goes to the UDP receive thread; the others parse, but never fewer than two
    // parsers on two cores: the receive thread leaves part of its core idle, and on 2 cores a
    // second parser took 14-19% more lines without loss (docs/BENCHMARKS.md).
    let cores = std::thread::available_parallelism()
        .map(|count| count.get())
        .unwrap_or(2);
    let worker_count = cores.saturating_sub(1).max(cores.min(2)).clamp(1, 4);
    let queued_bytes = QueuedBytes::new(QUEUED_BYTES_BUDGET);
    let mut aggregators = Vec::with_capacity(worker_count);
    let mut worker_threads = Vec::with_capacity(worker_count);
    let mut queues = Vec::with_capacity(worker_count);
    for index in 0..worker_count {
        let aggregator = Arc::new(Mutex::new(Aggregator::new(settings.clone())));
        let (sender, receiver) = std::sync::mpsc::sync_channel(WORKER_QUEUE_BATCHES);
        let thread_aggregator = Arc::clone(&aggregator);
        let thread_telemetry = statsd_telemetry.clone();
        let thread_queued_bytes = queued_bytes.clone();
        let thread = std::thread::Builder::new()
            .name(format!("statsd-parse-{index}"))
            .spawn(move || {
                run_worker(
                    receiver,
                    thread_aggregator,
                    thread_queued_bytes,
                    thread_telemetry,
                )
            })
            .map_err(StatsdError::Thread)?;
        aggregators.push(aggregator);
        worker_threads.push(thread);
        queues.push(sender);
    }
    let router = BatchRouter::new(
        queues,
        queued_bytes.clone(),
        telemetry.ingest_dropped(PROTOCOL, "queue_full"),
    );

    let stop_udp = Arc::new(AtomicBool::new(false));
    let udp_thread = match udp_socket {
        Some(socket) => {
            if let Ok(address) = socket.local_addr() {
                tracing::info!(%address, source = "statsd", "listening on udp");
            }
            let thread_router = router.clone();
            let thread_stop = Arc::clone(&stop_udp);
            Some(
                std::thread::Builder::new()
                    .name("statsd-udp".to_string())
                    .spawn(move || listener::receive_udp(socket, thread_router, thread_stop))
                    .map_err(StatsdError::Thread)?,
            )
        }
        None => None,
    };
    let tcp_task = tcp_listener.map(|tcp_listener| {
        if let Ok(address) = tcp_listener.local_addr() {
            tracing::info!(%address, source = "statsd", "listening on tcp");
        }
        tokio::spawn(listener::serve_tcp(
            tcp_listener,
            router.clone(),
            telemetry.ingest_rejected(PROTOCOL, "line_too_long"),
            shutdown.clone(),
        ))
    });

    let queue_bytes_gauge = telemetry.gauge(
        "vigil_statsd_queue_bytes",
        "Bytes of StatsD datagrams waiting for a parser worker, sampled at each flush.",
        &[],
    );
    let mut flusher = Flusher::new();
    let flush_period = config.flush_interval.max(Duration::from_millis(100));
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + flush_period, flush_period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {
                queue_bytes_gauge.set(i64::try_from(queued_bytes.get()).unwrap_or(i64::MAX));
                flush(&aggregators, &mut flusher, &sink, &telemetry).await;
            }
        }
    }

    // Stop the receivers, let the workers drain their queues, then flush what they hold.
    stop_udp.store(true, Ordering::Relaxed);
    if let Some(task) = tcp_task {
        let _ = task.await;
    }
    drop(router);
    let _ = tokio::task::spawn_blocking(move || {
        if let Some(thread) = udp_thread {
            let _ = thread.join();
        }
        for thread in worker_threads {
            let _ = thread.join();
        }
    })
    .await;
    flush(&aggregators, &mut flusher, &sink, &telemetry).await;
    Ok(())
}

/// A parser worker: takes batches until every sender is gone.
fn run_worker(
    queue: Receiver<DatagramBatch>,
    aggregator: Arc<Mutex<Aggregator>>,
    queued_bytes: QueuedBytes,
    telemetry: StatsdTelemetry,
) {
    while let Ok(batch) = queue.recv() {
        queued_bytes.release(batch.bytes.len());
        let stats = {
            let mut aggregator = aggregator.lock();
            for datagram in batch.datagrams() {
                aggregator.ingest_datagram(datagram, batch.sequence);
            }
            aggregator.take_stats()
        };
        telemetry.publish(stats);
    }
}

async fn flush(
    aggregators: &[Arc<Mutex<Aggregator>>],
    flusher: &mut Flusher,
    sink: &Arc<dyn MetricSink>,
    telemetry: &Telemetry,
) {
    let intervals: Vec<_> = aggregators
        .iter()
        .map(|aggregator| aggregator.lock().take_interval())
        .collect();
    let timestamp_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        });
    let batch: MetricBatch = flusher.flush(intervals, timestamp_ms);
    telemetry
        .gauge(
            "vigil_statsd_series",
            "StatsD series aggregated in memory.",
            &[],
        )
        .set(i64::try_from(flusher.series_count()).unwrap_or(i64::MAX));
    if batch.is_empty() {
        return;
    }
    let samples = batch.sample_count() as u64;
    let writer = Arc::clone(sink);
    let outcome = tokio::task::spawn_blocking(move || writer.write(batch)).await;
    let reason = match outcome {
        Ok(Ok(())) => return,
        Ok(Err(SinkError::Overloaded)) => "store_overloaded",
        Ok(Err(SinkError::LimitExceeded { .. })) => "limit_exceeded",
        Ok(Err(SinkError::Storage(_))) | Err(_) => "store_failed",
    };
    tracing::warn!(
        source = "statsd",
        reason,
        samples,
        "statsd flush was not fully written"
    );
    telemetry.ingest_dropped(PROTOCOL, reason).add(samples);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct MemorySink {
        batches: parking_lot::Mutex<Vec<MetricBatch>>,
    }

    impl MetricSink for MemorySink {
        fn write(&self, batch: MetricBatch) -> Result<(), SinkError> {
            self.batches.lock().push(batch);
            Ok(())
        }
    }

    fn free_port() -> u16 {
        std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn disabled_addresses() {
        assert!(listener_disabled(""));
        assert!(listener_disabled("0"));
        assert!(!listener_disabled("127.0.0.1:8125"));
    }

    #[tokio::test]
    async fn bind_failure_names_the_address() {
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let address = taken.local_addr().unwrap().to_string();
        let config = StatsdConfig {
            udp_listen: address.clone(),
            tcp_listen: String::new(),
            ..StatsdConfig::default()
        };
        let error = run(
            config,
            Arc::new(MemorySink::default()),
            Telemetry::new(),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
        assert!(error.to_string().contains(&address), "{error}");
    }

    #[tokio::test]
    async fn udp_and_tcp_lines_reach_the_sink_with_a_final_flush() {
        use tokio::io::AsyncWriteExt;
        let port = free_port();
        let address = format!("127.0.0.1:{port}");
        let config = StatsdConfig {
            udp_listen: address.clone(),
            tcp_listen: address.clone(),
            flush_interval: Duration::from_secs(3600),
            ..StatsdConfig::default()
        };
        let sink = Arc::new(MemorySink::default());
        let telemetry = Telemetry::new();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(
            config,
            sink.clone(),
            telemetry.clone(),
            shutdown.clone(),
        ));
        // The UDP socket is bound before the TCP listener, so once a TCP
        // connection is accepted both are listening.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut stream = loop {
            match tokio::net::TcpStream::connect(&address).await {
                Ok(stream) => break stream,
                Err(_) if std::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(error) => panic!("the StatsD TCP listener never came up: {error}"),
            }
        };
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        sender
            .send_to(b"hits:1|c\nhits:2|c\nbroken", &address)
            .unwrap();
        stream.write_all(b"hits:4|c\nlatency:250|ms").await.unwrap();
        drop(stream);
        // Every line is parsed (5 received) before the shutdown flush.
        let received = "vigil_ingest_received_total{protocol=\"statsd\"} 5";
        while !telemetry.render().contains(received) {
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                telemetry.render()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shutdown.cancel();
        task.await.unwrap().unwrap();
        let batches = sink.batches.lock();
        let last = batches.last().unwrap();
        let hits = last
            .series
            .iter()
            .find(|series| series.labels.metric_name() == Some("hits"))
            .unwrap();
        assert_eq!(hits.samples[0].value, 7.0);
        assert_eq!(last.sketches.len(), 1);
        let text = telemetry.render();
        assert!(
            text.contains("vigil_ingest_received_total{protocol=\"statsd\"} 5"),
            "{text}"
        );
        assert!(
            text.contains(
                "vigil_ingest_rejected_total{protocol=\"statsd\",reason=\"malformed_line\"} 1"
            ),
            "{text}"
        );
    }
}
