//! End-to-end latency of a 24 h range query on the SQLite metric store: the query of the
//! dashboards, `sum by (service) (rate(x[5m]))`, over 1,000 counter series (20 services) with
//! one sample every 10 s (StatsD's flush interval), at a 1-minute step. The same query over the
//! same samples held in memory is measured in the same run as the baseline.
//!
//! Run with `cargo bench -p vigil-query --bench range_query`; prints median and p99 of wall
//! and process CPU time over 40 runs each (after 3 warm-ups), and the store's size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil_model::{Labels, MetricBatch, MetricReader, MetricSink, Sample, SeriesSamples};
use vigil_query::promql::{Engine, MemoryReader};
use vigil_query::store::{MetricStore, MetricStoreOptions};

const SERIES: usize = 1_000;
const SERVICES: usize = 20;
const SAMPLE_INTERVAL_MS: i64 = 10_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;
const RUNS: usize = 40;
const QUERY: &str = "sum by (service) (rate(x[5m]))";

fn labels_of(series_index: usize) -> Labels {
    Labels::with_name(
        "x",
        [
            ("service", format!("service-{}", series_index % SERVICES)),
            ("instance", format!("instance-{series_index}")),
        ],
    )
}

fn hour_of_samples(series_index: usize, hour: i64) -> Vec<Sample> {
    let per_hour = HOUR_MS / SAMPLE_INTERVAL_MS;
    (0..per_hour)
        .map(|index| {
            let step = hour * per_hour + index;
            Sample {
                timestamp_ms: step * SAMPLE_INTERVAL_MS,
                value: (step * (series_index as i64 % 7 + 1)) as f64,
            }
        })
        .collect()
}

/// CPU time of this process: only the query runs while it is measured, so this is robust to
/// other load on a shared machine, unlike wall time.
fn process_cpu_time() -> Duration {
    let mut spec = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut spec) };
    Duration::new(spec.tv_sec as u64, spec.tv_nsec as u32)
}

fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    sorted[((sorted.len() as f64 * quantile).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn measure(name: &str, reader: Arc<dyn MetricReader>) -> Duration {
    let engine = Engine::new(reader);
    let run = || {
        let started = Instant::now();
        let cpu_started = process_cpu_time();
        let result = engine
            .range_query(QUERY, 0, DAY_MS, 60_000)
            .unwrap_or_else(|error| panic!("query failed: {error}"));
        std::hint::black_box(result);
        (started.elapsed(), process_cpu_time() - cpu_started)
    };
    for _ in 0..3 {
        run();
    }
    let (mut wall, mut cpu): (Vec<Duration>, Vec<Duration>) = (0..RUNS).map(|_| run()).unzip();
    wall.sort();
    cpu.sort();
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    println!(
        "{name:<10} {QUERY} over 24h at 1m step, {SERIES} series: wall median {:.1} ms, p99 {:.1} ms; cpu median {:.1} ms, p99 {:.1} ms",
        ms(percentile(&wall, 0.5)),
        ms(percentile(&wall, 0.99)),
        ms(percentile(&cpu, 0.5)),
        ms(percentile(&cpu, 0.99)),
    );
    percentile(&cpu, 0.5)
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing and only checks it runs.
    let full = std::env::args().any(|arg| arg == "--bench");
    let directory = tempfile::tempdir().unwrap_or_else(|error| panic!("temp dir: {error}"));
    let store = Arc::new(
        MetricStore::open(directory.path(), MetricStoreOptions::default())
            .unwrap_or_else(|error| panic!("open store: {error}")),
    );
    let memory = Arc::new(MemoryReader::new());
    let hours = if full { 24 } else { 1 };
    let loading = Instant::now();
    for hour in 0..hours {
        let batch = MetricBatch {
            series: (0..SERIES)
                .map(|series_index| SeriesSamples {
                    labels: labels_of(series_index),
                    samples: hour_of_samples(series_index, hour),
                })
                .collect(),
            ..MetricBatch::default()
        };
        for series in &batch.series {
            memory.add_samples(series.labels.clone(), series.samples.clone());
        }
        store
            .write(batch)
            .unwrap_or_else(|error| panic!("write: {error}"));
        store
            .flush_head()
            .unwrap_or_else(|error| panic!("flush: {error}"));
    }
    let samples = SERIES as i64 * hours * HOUR_MS / SAMPLE_INTERVAL_MS;
    println!(
        "loaded {samples} samples in {:.1} s ({:.0} samples/s); store {:.1} MiB on disk",
        loading.elapsed().as_secs_f64(),
        samples as f64 / loading.elapsed().as_secs_f64(),
        store.stats().disk_bytes as f64 / (1 << 20) as f64
    );
    if !full {
        return;
    }
    // `VIGIL_BENCH_ONLY=sqlite` skips the baseline, for profiling the store alone.
    if std::env::var("VIGIL_BENCH_ONLY").is_ok_and(|only| only == "sqlite") {
        measure("sqlite", store);
        return;
    }
    let baseline = measure("in-memory", memory);
    let sqlite = measure("sqlite", store);
    println!(
        "sqlite / in-memory median cpu ratio: {:.2}",
        sqlite.as_secs_f64() / baseline.as_secs_f64()
    );
}
