//! Span store load: `spans-fill` writes realistic spans straight into a span store directory
//! (the store Vigil opens under `<data_dir>/traces`), and `trace-queries` measures trace
//! query latency through a running Vigil's HTTP API.
//!
//! ```text
//! vigil-load spans-fill --data-dir ./data --spans 10000000 --spread 24h
//! vigil serve --data-dir ./data &
//! vigil-load trace-queries --url http://127.0.0.1:7080 --data-dir ./data --iterations 2000
//! ```
//! `spans-fill` also writes `<data_dir>/trace-samples.txt`: the trace ID, request ID and root
//! service of one trace in 1,000, which `trace-queries` picks its lookups from (so the lookups
//! are not the traces a warm-up query just read).

use crate::common::{parse_duration, percentile};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;
use vigil_model::hex_id;
use vigil_traces::synthetic::{SpanGenerator, SERVICES};
use vigil_traces::{SpanStore, SpanStoreOptions};

/// Options of `spans-fill`.
#[derive(clap::Args, Debug, Clone)]
pub struct FillArgs {
    /// Vigil's data directory; spans go to `<data_dir>/traces`.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Spans to write.
    #[arg(long, default_value_t = 10_000_000)]
    pub spans: u64,
    /// Spans per write call.
    #[arg(long, default_value_t = 512)]
    pub batch_spans: usize,
    /// Threads generating and writing at once.
    #[arg(long, default_value_t = 2)]
    pub writers: usize,
    /// Span start times cover this much time up to now (Prometheus duration).
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub spread: Duration,
}

/// Options of `trace-queries`.
#[derive(clap::Args, Debug, Clone)]
pub struct QueryArgs {
    /// Vigil's HTTP address (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:7080")]
    pub url: String,
    /// The data directory `spans-fill` wrote (for `trace-samples.txt`).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Requests per query kind.
    #[arg(long, default_value_t = 1_000)]
    pub iterations: usize,
    /// Width of the window of the service search (Prometheus duration).
    #[arg(long, default_value = "15m", value_parser = parse_duration)]
    pub window: Duration,
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn samples_path(data_dir: &Path) -> PathBuf {
    data_dir.join("trace-samples.txt")
}

/// `vigil-load spans-fill`.
pub fn run_fill(args: &FillArgs) -> anyhow::Result<()> {
    let store = SpanStore::open(&args.data_dir.join("traces"), SpanStoreOptions::default())
        .context("cannot open the span store")?;
    let writers = args.writers.max(1) as u64;
    let batch_spans = args.batch_spans.max(1);
    let batches_per_writer = args.spans.div_ceil(batch_spans as u64).div_ceil(writers);
    let spread_ns = i64::try_from(args.spread.as_nanos()).unwrap_or(i64::MAX);
    // About 8 spans per trace: spread the traces evenly over the window.
    let traces_per_writer = (batches_per_writer * batch_spans as u64 / 8).max(1);
    let step_ns = (spread_ns / i64::try_from(traces_per_writer).unwrap_or(i64::MAX)).max(1);
    let start_ns = now_ns() - spread_ns;
    let started = Instant::now();
    let samples: Vec<String> = std::thread::scope(|scope| -> anyhow::Result<Vec<String>> {
        let mut handles = Vec::new();
        for writer in 0..writers {
            let store = &store;
            handles.push(scope.spawn(move || -> anyhow::Result<Vec<String>> {
                let mut generator = SpanGenerator::new(
                    writer + 1,
                    start_ns + writer as i64 * step_ns / writers as i64,
                    step_ns,
                );
                let mut samples = Vec::new();
                let mut traces_seen = 0u64;
                for _ in 0..batches_per_writer {
                    let (batch, _request_ids) = generator.batch(batch_spans);
                    for span in batch.iter().filter(|span| span.parent_span_id.is_none()) {
                        traces_seen += 1;
                        if traces_seen.is_multiple_of(1_000) {
                            if let Some(request_id) =
                                span.attributes.get("request_id").and_then(Value::as_str)
                            {
                                samples.push(format!(
                                    "{} {} {} {}",
                                    hex_id(&span.trace_id),
                                    request_id,
                                    span.service,
                                    span.start_unix_nano
                                ));
                            }
                        }
                    }
                    store
                        .write_grouped(batch)
                        .map_err(|error| anyhow::anyhow!("write failed: {error}"))?;
                }
                Ok(samples)
            }));
        }
        let mut samples = Vec::new();
        for handle in handles {
            match handle.join() {
                Ok(result) => samples.extend(result?),
                Err(_) => bail!("a writer thread panicked"),
            }
        }
        Ok(samples)
    })?;
    let elapsed = started.elapsed();
    let written = batches_per_writer * writers * batch_spans as u64;
    std::fs::write(samples_path(&args.data_dir), samples.join("\n") + "\n")
        .context("cannot write trace-samples.txt")?;
    let (partitions, bytes) = store.disk_usage();
    println!(
        "spans={written} seconds={:.1} spans_per_second={:.0} partitions={partitions} bytes={bytes} bytes_per_span={:.0} samples={}",
        elapsed.as_secs_f64(),
        written as f64 / elapsed.as_secs_f64(),
        bytes as f64 / written.max(1) as f64,
        samples.len()
    );
    Ok(())
}

/// A keep-alive HTTP/1.1 connection to a loopback address.
struct HttpConnection {
    host: String,
    reader: BufReader<TcpStream>,
}

impl HttpConnection {
    fn open(url: &str) -> anyhow::Result<Self> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!("only http:// URLs are supported: {url}");
        };
        let host = rest.trim_end_matches('/').to_string();
        let address: SocketAddr = host
            .to_socket_addrs()
            .with_context(|| format!("cannot resolve {host}"))?
            .next()
            .with_context(|| format!("{host} resolves to nothing"))?;
        if !address.ip().is_loopback() {
            bail!("refusing to query {address}: only loopback addresses are allowed");
        }
        let stream = TcpStream::connect(address).with_context(|| format!("connect {address}"))?;
        stream.set_nodelay(true)?;
        Ok(HttpConnection {
            host,
            reader: BufReader::new(stream),
        })
    }

    fn get_json(&mut self, path: &str) -> anyhow::Result<Value> {
        let head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n", self.host);
        self.reader.get_mut().write_all(head.as_bytes())?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            bail!("the server closed the connection");
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut content_length = 0usize;
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    content_length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; content_length];
        self.reader.read_exact(&mut body)?;
        if status != 200 {
            bail!(
                "GET {path}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

struct Sample {
    trace_id: String,
    request_id: String,
    start_ns: i64,
}

fn read_samples(data_dir: &Path) -> anyhow::Result<Vec<Sample>> {
    let text = std::fs::read_to_string(samples_path(data_dir))
        .context("cannot read trace-samples.txt (run spans-fill first)")?;
    let mut samples = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        if let [trace_id, request_id, _service, start_ns] = fields.as_slice() {
            samples.push(Sample {
                trace_id: trace_id.to_string(),
                request_id: request_id.to_string(),
                start_ns: start_ns.parse().unwrap_or(0),
            });
        }
    }
    if samples.is_empty() {
        bail!("trace-samples.txt holds no samples");
    }
    Ok(samples)
}

/// `vigil-load trace-queries`: median and p99 of trace by ID, correlate by request ID and
/// search by service + time window, each `iterations` times, one request at a time.
pub fn run_queries(args: &QueryArgs) -> anyhow::Result<()> {
    let samples = read_samples(&args.data_dir)?;
    let mut connection = HttpConnection::open(&args.url)?;
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut random = move |below: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % below.max(1) as u64) as usize
    };
    let window_ns = i64::try_from(args.window.as_nanos()).unwrap_or(i64::MAX);
    let first_start = samples
        .iter()
        .map(|sample| sample.start_ns)
        .min()
        .unwrap_or(0);
    let last_start = samples
        .iter()
        .map(|sample| sample.start_ns)
        .max()
        .unwrap_or(0);
    let mut summary = format!("samples={}", samples.len());
    for kind in [
        "trace_by_id",
        "correlate_request_id",
        "search_service_window",
    ] {
        let mut millis = Vec::with_capacity(args.iterations);
        let mut empty_answers = 0usize;
        for _ in 0..args.iterations {
            let sample = &samples[random(samples.len())];
            let path = match kind {
                "trace_by_id" => format!("/api/v1/traces/{}", sample.trace_id),
                "correlate_request_id" => format!("/api/v1/correlate/{}", sample.request_id),
                _ => {
                    let service = SERVICES[random(SERVICES.len())];
                    let span_ns = (last_start - first_start - window_ns).max(1);
                    let window_start =
                        first_start + (random(usize::MAX) as i64).rem_euclid(span_ns);
                    format!(
                        "/api/v1/traces?service={service}&start={:.3}&end={:.3}&limit=20",
                        window_start as f64 / 1e9,
                        (window_start + window_ns) as f64 / 1e9
                    )
                }
            };
            let started = Instant::now();
            let answer = connection.get_json(&path)?;
            millis.push(started.elapsed().as_secs_f64() * 1e3);
            let empty = match kind {
                "trace_by_id" => answer["data"]["spans"].as_array().is_none_or(Vec::is_empty),
                "correlate_request_id" => answer["data"]["trace_ids"]
                    .as_array()
                    .is_none_or(|ids| !ids.iter().any(|id| id == sample.trace_id.as_str())),
                _ => answer["data"].as_array().is_none_or(Vec::is_empty),
            };
            if empty {
                empty_answers += 1;
            }
        }
        millis.sort_by(f64::total_cmp);
        summary.push_str(&format!(
            " {kind}_median_ms={:.2} {kind}_p99_ms={:.2} {kind}_max_ms={:.2} {kind}_empty={empty_answers}",
            percentile(&millis, 0.5),
            percentile(&millis, 0.99),
            millis.last().copied().unwrap_or(0.0),
        ));
    }
    println!("{summary}");
    Ok(())
}
