//! Log load: sustained NDJSON over HTTP of ~300-byte Logstash-style lines to a running Vigil,
//! counted only once searchable; the same lines indexed in this process by plain tantivy with
//! Vigil's schema (the baseline of the same run); search latency through the HTTP API.
//!
//! ```text
//! vigil-load logs --url http://127.0.0.1:7080 --lines 2000000 --pid $(pidof vigil)
//! vigil-load logs-baseline --lines 2000000
//! vigil-load logs-search --url http://127.0.0.1:7080 --iterations 200
//! ```
//! Each prints one `key=value` summary line.

use crate::common::{parse_duration, percentile};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use serde_json::Value;

const SERVICES: [&str; 20] = [
    "gateway",
    "checkout",
    "payments",
    "orders",
    "inventory",
    "shipping",
    "users",
    "auth",
    "search",
    "catalog",
    "pricing",
    "cart",
    "notifications",
    "billing",
    "reviews",
    "recommendations",
    "media",
    "fraud",
    "ledger",
    "reports",
];

/// Options of `logs` and `logs-baseline`.
#[derive(clap::Args, Debug, Clone)]
pub struct LogsArgs {
    /// Vigil's HTTP base URL (loopback only). Ignored by `logs-baseline`.
    #[arg(long, default_value = "http://127.0.0.1:7080")]
    pub url: String,
    /// Lines to send.
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: u64,
    /// Lines per request.
    #[arg(long, default_value_t = 1_000)]
    pub batch: u64,
    /// Concurrent connections.
    #[arg(long, default_value_t = 4)]
    pub connections: u64,
    /// The lines' timestamps spread evenly over this span ending now (Prometheus duration).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub spread: Duration,
    /// Vigil's process ID, to sample its RSS during the run.
    #[arg(long)]
    pub pid: Option<u32>,
    /// Baseline only: commit every this long (issue 3: 10 s).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub commit_every: Duration,
    /// Print one line per probe to stderr: when it was acknowledged, its lag, how many
    /// searches it took and the slowest of them (where a long lag comes from).
    #[arg(long)]
    pub probe_trace: bool,
}

fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos() as i64)
        .unwrap_or(0)
}

/// A request ID that is unique per line and looks like a UUID.
fn request_id(run: u64, index: u64) -> String {
    let mixed = (index ^ run).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    format!(
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        (mixed >> 32) as u32,
        (mixed >> 16) as u16,
        index & 0xfff,
        (run & 0xfff),
        index
    )
}

/// Returns line `index` of run `run`: a Logstash V1 style JSON document of about 300 bytes.
fn line(run: u64, index: u64, timestamp_ns: i64) -> String {
    let service = SERVICES[(index % 20) as usize];
    let level = match index % 100 {
        0..=2 => "ERROR",
        3..=9 => "WARN",
        10..=19 => "DEBUG",
        _ => "INFO",
    };
    let time = chrono_like(timestamp_ns);
    let order = index % 100_000;
    let message = match index % 4 {
        0 => format!(
            "payment authorized for order {order} amount={}.{:02} EUR",
            order % 500,
            order % 100
        ),
        1 => format!("GET /api/v1/orders/{order} 200 {}ms", order % 900),
        2 => format!("cache miss for key cart:{order}, loading from database"),
        _ => format!(
            "upstream call to {} finished in {}ms",
            SERVICES[(order % 20) as usize],
            order % 300
        ),
    };
    format!(
        concat!(
            r#"{{"@timestamp":"{time}","@version":"1","level":"{level}","service":"{service}","#,
            r#""host":"{service}-7f9c-{pod}","logger_name":"com.shop.{service}.Handler","#,
            r#""thread_name":"http-nio-8080-exec-{thread}","message":"{message}","#,
            r#""request_id":"{request_id}","run":"r{run}"}}"#
        ),
        time = time,
        level = level,
        service = service,
        pod = index % 3,
        thread = index % 16,
        message = message,
        request_id = request_id(run, index),
        run = run,
    )
}

/// RFC 3339 with milliseconds, UTC.
fn chrono_like(timestamp_ns: i64) -> String {
    let seconds = timestamp_ns.div_euclid(1_000_000_000);
    let millis = timestamp_ns.rem_euclid(1_000_000_000) / 1_000_000;
    let days = seconds.div_euclid(86_400);
    let second_of_day = seconds.rem_euclid(86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
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

/// The lines of a run: timestamps evenly spread over `spread` ending at `end_ns`.
struct Generator {
    run: u64,
    lines: u64,
    start_ns: i64,
    step_ns: i64,
}

impl Generator {
    fn new(run: u64, lines: u64, spread: Duration, end_ns: i64) -> Self {
        let spread_ns = spread.as_nanos() as i64;
        Generator {
            run,
            lines,
            start_ns: end_ns - spread_ns,
            step_ns: (spread_ns / lines.max(1) as i64).max(1),
        }
    }

    /// NDJSON of lines `[first, first + count)`.
    fn body(&self, first: u64, count: u64) -> Vec<u8> {
        let mut body = Vec::with_capacity(count as usize * 340);
        for index in first..(first + count).min(self.lines) {
            let timestamp_ns = self.start_ns + index as i64 * self.step_ns;
            body.extend_from_slice(line(self.run, index, timestamp_ns).as_bytes());
            body.push(b'\n');
        }
        body
    }
}

/// A keep-alive HTTP/1.1 connection to a loopback address.
struct HttpConnection {
    address: SocketAddr,
    host: String,
    reader: BufReader<TcpStream>,
}

/// Splits `http://host:port` into a loopback socket address and the Host header.
fn loopback_address(url: &str) -> anyhow::Result<(SocketAddr, String)> {
    let Some(rest) = url.strip_prefix("http://") else {
        bail!("only http:// URLs are supported: {url}");
    };
    let host = rest.trim_end_matches('/').to_string();
    let address = host
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} resolves to nothing"))?;
    if !address.ip().is_loopback() {
        bail!("refusing to send load to {address}: only loopback addresses are allowed");
    }
    Ok((address, host))
}

impl HttpConnection {
    fn open(url: &str) -> anyhow::Result<Self> {
        let (address, host) = loopback_address(url)?;
        let stream = TcpStream::connect(address).with_context(|| format!("connect {address}"))?;
        stream.set_nodelay(true)?;
        Ok(HttpConnection {
            address,
            host,
            reader: BufReader::new(stream),
        })
    }

    /// Sends a request and returns (status, Retry-After seconds, body).
    fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> anyhow::Result<(u16, Option<u64>, Vec<u8>)> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        let stream = self.reader.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            bail!("{} closed the connection", self.address);
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut content_length = 0usize;
        let mut retry_after = None;
        let mut chunked = false;
        loop {
            let mut header = String::new();
            self.reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            let Some((name, value)) = header.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                "content-length" => content_length = value.parse().unwrap_or(0),
                "retry-after" => retry_after = value.parse().ok(),
                "transfer-encoding" => chunked = value.eq_ignore_ascii_case("chunked"),
                _ => {}
            }
        }
        let mut response = Vec::new();
        if chunked {
            loop {
                let mut size_line = String::new();
                self.reader.read_line(&mut size_line)?;
                let size = usize::from_str_radix(size_line.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0u8; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                response.extend_from_slice(&chunk[..size]);
            }
        } else {
            response.resize(content_length, 0);
            self.reader.read_exact(&mut response)?;
        }
        Ok((status, retry_after, response))
    }

    fn get_json(&mut self, path_and_query: &str) -> anyhow::Result<Value> {
        let (status, _, body) = self.request("GET", path_and_query, &[])?;
        if status != 200 {
            bail!(
                "GET {path_and_query}: {status} {}",
                String::from_utf8_lossy(&body)
            );
        }
        Ok(serde_json::from_slice(&body)?)
    }
}

fn percent_encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.' | b'~') {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

fn search_path(query: &str, start_ns: i64, end_ns: i64, limit: u32) -> String {
    format!(
        "/api/v1/logs/search?q={}&start={:.3}&end={:.3}&limit={limit}",
        percent_encode(query),
        start_ns as f64 / 1e9,
        end_ns as f64 / 1e9,
    )
}

/// Returns VmRSS of `pid` in bytes.
fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// A line sent alone every second and searched for until found: its lag from the
/// acknowledgement to the first search that finds it.
struct Probe {
    url: String,
    /// Prefix of the probe lines' request IDs.
    name: String,
    sending: Arc<std::sync::atomic::AtomicBool>,
    lags: Arc<Mutex<Vec<f64>>>,
    /// Print each probe's details to stderr.
    trace: bool,
}

impl Probe {
    /// Probes until sending stops; `timestamp` gives each line's `@timestamp` (None: the
    /// receive time). A line not found within 30 s counts as an infinite lag.
    fn run(self, timestamp: impl Fn() -> Option<i64>) -> anyhow::Result<()> {
        let mut connection = HttpConnection::open(&self.url)?;
        let mut probe = 0u64;
        while self.sending.load(Ordering::Relaxed) {
            probe += 1;
            let probe_id = format!("{}-{probe}", self.name);
            let timestamp_ns = timestamp();
            let timestamp_field = timestamp_ns
                .map(|ns| format!("\"@timestamp\":\"{}\",", chrono_like(ns)))
                .unwrap_or_default();
            let body = format!(
                "{{{timestamp_field}\"level\":\"info\",\"service\":\"probe\",\"message\":\"probe line\",\"request_id\":\"{probe_id}\"}}\n"
            );
            let (status, _, _) = connection.request("POST", "/api/v1/logs", body.as_bytes())?;
            let acknowledged = Instant::now();
            if status != 200 {
                std::thread::sleep(Duration::from_secs(1));
                continue;
            }
            let around_ns = timestamp_ns.unwrap_or_else(now_ns);
            let path = search_path(
                &probe_id,
                around_ns - 3_600_000_000_000,
                around_ns + 60_000_000_000,
                1,
            );
            let mut searches = 0u32;
            let mut slowest_search = Duration::ZERO;
            let lag = loop {
                let search_started = Instant::now();
                let answer = connection.get_json(&path)?;
                searches += 1;
                slowest_search = slowest_search.max(search_started.elapsed());
                if answer["total"].as_u64().unwrap_or(0) >= 1 {
                    break acknowledged.elapsed().as_secs_f64();
                }
                if acknowledged.elapsed() > Duration::from_secs(30) {
                    break f64::INFINITY;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            if self.trace {
                let acknowledged_ms =
                    now_ns() / 1_000_000 - acknowledged.elapsed().as_millis() as i64;
                eprintln!(
                    "probe={} acknowledged_unix_ms={acknowledged_ms} lag_s={lag:.3} searches={searches} slowest_search_ms={}",
                    self.name,
                    slowest_search.as_millis()
                );
            }
            self.lags
                .lock()
                .map_err(|_| anyhow::anyhow!("poisoned"))?
                .push(lag);
            std::thread::sleep(Duration::from_secs(1));
        }
        Ok(())
    }
}

/// Returns the median, the maximum and the number of the lags.
fn median_and_max(lags: &Mutex<Vec<f64>>) -> anyhow::Result<(f64, f64, usize)> {
    let mut lags = lags
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    lags.sort_by(f64::total_cmp);
    let median = lags.get(lags.len() / 2).copied().unwrap_or(f64::NAN);
    let max = lags.last().copied().unwrap_or(f64::NAN);
    Ok((median, max, lags.len()))
}

/// `vigil-load logs`: sends the lines, waits until all are searchable, and reports.
pub fn run_against_vigil(args: &LogsArgs) -> anyhow::Result<()> {
    let run = (now_ns() as u64 / 1_000_000) % 1_000_000_000;
    let end_ns = now_ns();
    let generator = Arc::new(Generator::new(run, args.lines, args.spread, end_ns));
    let next_batch = Arc::new(AtomicU64::new(0));
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let max_rss = Arc::new(AtomicU64::new(0));
    let sending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    // Samples Vigil's RSS every 500 ms.
    let sampler = args.pid.map(|pid| {
        let max_rss = max_rss.clone();
        let sending = sending.clone();
        std::thread::spawn(move || {
            while sending.load(Ordering::Relaxed) {
                if let Some(rss) = rss_bytes(pid) {
                    max_rss.fetch_max(rss, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        })
    });
    // Two probes, each a line sent alone every second and then searched every 20 ms until
    // found: one stamped with the receive time (today's partition, as live logs are), one
    // stamped like the bulk lines being sent at that moment (the partition taking the load).
    let now_probe_lags: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let bulk_probe_lags: Arc<Mutex<Vec<f64>>> = Arc::new(Mutex::new(Vec::new()));
    let now_prober = {
        let probe = Probe {
            url: args.url.clone(),
            name: format!("probe-{run}-now"),
            sending: sending.clone(),
            lags: now_probe_lags.clone(),
            trace: args.probe_trace,
        };
        std::thread::spawn(move || probe.run(|| None))
    };
    let bulk_prober = {
        let probe = Probe {
            url: args.url.clone(),
            name: format!("probe-{run}-bulk"),
            sending: sending.clone(),
            lags: bulk_probe_lags.clone(),
            trace: args.probe_trace,
        };
        let generator = generator.clone();
        let next_batch = next_batch.clone();
        std::thread::spawn(move || {
            probe.run(|| {
                let position = next_batch.load(Ordering::Relaxed).min(generator.lines);
                Some(generator.start_ns + position as i64 * generator.step_ns)
            })
        })
    };
    let started = Instant::now();
    let mut senders = Vec::new();
    for _ in 0..args.connections.max(1) {
        let generator = generator.clone();
        let next_batch = next_batch.clone();
        let sent_bytes = sent_bytes.clone();
        let retries = retries.clone();
        let url = args.url.clone();
        let batch = args.batch.max(1);
        senders.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut connection = HttpConnection::open(&url)?;
            loop {
                let first = next_batch.fetch_add(batch, Ordering::Relaxed);
                if first >= generator.lines {
                    return Ok(());
                }
                let body = generator.body(first, batch);
                loop {
                    let (status, retry_after, answer) =
                        connection.request("POST", "/api/v1/logs", &body)?;
                    match status {
                        200 => break,
                        429 | 503 => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            std::thread::sleep(Duration::from_secs(retry_after.unwrap_or(1)));
                        }
                        other => bail!(
                            "POST /api/v1/logs: {other} {}",
                            String::from_utf8_lossy(&answer)
                        ),
                    }
                }
                sent_bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
            }
        }));
    }
    for sender in senders {
        sender
            .join()
            .map_err(|_| anyhow::anyhow!("sender panicked"))??;
    }
    let acknowledged_after = started.elapsed();
    // Searchable: every line of the run counted by a search over its whole span (counting
    // all matches, not up to the default threshold).
    let mut connection = HttpConnection::open(&args.url)?;
    let path = search_path(
        &format!("attributes.run:r{run}"),
        generator.start_ns - 1_000_000_000,
        end_ns + 60_000_000_000,
        1,
    ) + "&track_total_hits=true";
    let searchable_after = loop {
        let answer = connection.get_json(&path)?;
        if answer["total"].as_u64() == Some(args.lines) {
            break started.elapsed();
        }
        if started.elapsed() > acknowledged_after + Duration::from_secs(120) {
            bail!("not all lines searchable 120 s after the last acknowledgement: {answer}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    sending.store(false, Ordering::Relaxed);
    let _ = now_prober.join();
    let _ = bulk_prober.join();
    if let Some(sampler) = sampler {
        let _ = sampler.join();
    }
    let bytes = sent_bytes.load(Ordering::Relaxed);
    let seconds = searchable_after.as_secs_f64();
    let (lag_median, lag_max, probes) = median_and_max(&now_probe_lags)?;
    let (bulk_lag_median, bulk_lag_max, bulk_probes) = median_and_max(&bulk_probe_lags)?;
    println!(
        "mode=vigil lines={} bytes={} avg_line_bytes={} connections={} batch={} acknowledged_s={:.2} searchable_s={:.2} lines_per_s={:.0} mb_per_s={:.1} probes={} probe_lag_median_s={:.3} probe_lag_max_s={:.3} bulk_probes={} bulk_probe_lag_median_s={:.3} bulk_probe_lag_max_s={:.3} retries={} max_rss_mib={}",
        args.lines,
        bytes,
        bytes / args.lines.max(1),
        args.connections,
        args.batch,
        acknowledged_after.as_secs_f64(),
        seconds,
        args.lines as f64 / seconds,
        bytes as f64 / seconds / 1e6,
        probes,
        lag_median,
        lag_max,
        bulk_probes,
        bulk_lag_median,
        bulk_lag_max,
        retries.load(Ordering::Relaxed),
        max_rss.load(Ordering::Relaxed) >> 20,
    );
    Ok(())
}

/// `vigil-load logs-baseline`: the same lines parsed and normalised as Vigil does, indexed by
/// plain tantivy with Vigil's schema into one index (a temporary directory), committed every
/// `commit_every`; counted once a final commit made every line searchable.
pub fn run_baseline(args: &LogsArgs) -> anyhow::Result<()> {
    use vigil_collector::sources::json_logs::{decode_logs_body, JsonLogsOptions};
    use vigil_logs::schema::LogSchema;

    let directory = tempfile::tempdir()?;
    let schema = LogSchema::new();
    let index = tantivy::Index::create_in_dir(directory.path(), schema.schema.clone())?;
    LogSchema::register_tokenizers(&index);
    let threads = std::thread::available_parallelism().map_or(2, |count| count.get());
    let mut writer: tantivy::IndexWriter = index.writer_with_num_threads(threads, 256 << 20)?;
    let generator = Generator::new(1, args.lines, args.spread, now_ns());
    let options = JsonLogsOptions::default();
    let started = Instant::now();
    let mut last_commit = Instant::now();
    let mut bytes = 0u64;
    let mut seq = 0u64;
    let mut first = 0;
    while first < args.lines {
        let body = generator.body(first, args.batch.max(1));
        bytes += body.len() as u64;
        let decoded = decode_logs_body(&body, now_ns(), &options);
        for record in &decoded.records {
            seq += 1;
            writer.add_document(schema.document(record, seq))?;
        }
        first += args.batch.max(1);
        if last_commit.elapsed() >= args.commit_every {
            writer.commit()?;
            last_commit = Instant::now();
        }
    }
    writer.commit()?;
    let reader = index.reader()?;
    let searchable = reader.searcher().num_docs();
    let seconds = started.elapsed().as_secs_f64();
    if searchable != args.lines {
        bail!("baseline indexed {searchable} of {} lines", args.lines);
    }
    println!(
        "mode=tantivy_baseline lines={} bytes={} threads={threads} commit_every_s={} searchable_s={:.2} lines_per_s={:.0} mb_per_s={:.1}",
        args.lines,
        bytes,
        args.commit_every.as_secs(),
        seconds,
        args.lines as f64 / seconds,
        bytes as f64 / seconds / 1e6,
    );
    Ok(())
}

/// Options of `logs-search`.
#[derive(clap::Args, Debug, Clone)]
pub struct SearchArgs {
    /// Vigil's HTTP base URL (loopback only).
    #[arg(long, default_value = "http://127.0.0.1:7080")]
    pub url: String,
    /// Requests per query.
    #[arg(long, default_value_t = 200)]
    pub iterations: usize,
    /// The span holding the stored lines, ending now (as given to `logs --spread`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub spread: Duration,
    /// The run whose request IDs are looked up (`run` attribute without the `r`); the newest
    /// run is found by a search when absent.
    #[arg(long)]
    pub run: Option<u64>,
    /// Lines of that run (request IDs are looked up among them).
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: u64,
}

/// `vigil-load logs-search`: median and p99 of several queries through the HTTP API.
pub fn run_search(args: &SearchArgs) -> anyhow::Result<()> {
    let mut connection = HttpConnection::open(&args.url)?;
    let end_ns = now_ns() + 60_000_000_000;
    let start_ns = end_ns - args.spread.as_nanos() as i64 - 120_000_000_000;
    let run = match args.run {
        Some(run) => run,
        None => {
            let answer =
                connection.get_json(&search_path("service:gateway", start_ns, end_ns, 1))?;
            answer["hits"][0]["attributes"]["run"]
                .as_str()
                .and_then(|run| run.trim_start_matches('r').parse().ok())
                .context("no line of a `vigil-load logs` run found")?
        }
    };
    let everything = search_path("", start_ns, end_ns, 1) + "&track_total_hits=true";
    let total = connection.get_json(&everything)?["total"]
        .as_u64()
        .unwrap_or(0);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut random = move |below: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % below.max(1)
    };
    let span_ns = end_ns - start_ns;
    type PathFn<'a> = Box<dyn FnMut() -> String + 'a>;
    let lines = args.lines;
    let mut queries: Vec<(&str, PathFn)> = Vec::new();
    queries.push((
        "request_id",
        Box::new(|| {
            let index = random(lines);
            search_path(&request_id(run, index), start_ns, end_ns, 100)
        }),
    ));
    let mut random2 = {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        move |below: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % below.max(1)
        }
    };
    let window_ns = 600_000_000_000i64;
    queries.push((
        "term_10m",
        Box::new(move || {
            let window_start = start_ns + random2((span_ns - window_ns).max(1) as u64) as i64;
            search_path("database", window_start, window_start + window_ns, 100)
        }),
    ));
    queries.push((
        "phrase_all",
        Box::new(move || search_path("\"cache miss for key\"", start_ns, end_ns, 100)),
    ));
    queries.push((
        "level_and_service",
        Box::new(move || search_path("level:error AND service:payments", start_ns, end_ns, 100)),
    ));
    queries.push((
        "histogram_all",
        Box::new(move || {
            format!(
                "/api/v1/logs/histogram?q=&start={:.3}&end={:.3}&step=60",
                start_ns as f64 / 1e9,
                end_ns as f64 / 1e9
            )
        }),
    ));
    let mut summary = format!("stored_lines={total}");
    for (name, mut path) in queries {
        let mut millis = Vec::with_capacity(args.iterations);
        let mut last = Value::Null;
        for _ in 0..args.iterations {
            let path = path();
            let started = Instant::now();
            last = connection.get_json(&path)?;
            millis.push(started.elapsed().as_secs_f64() * 1e3);
        }
        millis.sort_by(f64::total_cmp);
        let median = percentile(&millis, 0.5);
        let p99 = percentile(&millis, 0.99);
        let max = millis.last().copied().unwrap_or(0.0);
        let hits = last["total"]
            .as_u64()
            .map_or(String::from("-"), |t| t.to_string());
        let relation = last["total_relation"].as_str().unwrap_or("-").to_string();
        summary.push_str(&format!(
            " {name}_median_ms={median:.1} {name}_p99_ms={p99:.1} {name}_max_ms={max:.1} {name}_total={hits}{}",
            if relation == "-" {
                String::new()
            } else {
                format!("({relation})")
            }
        ));
    }
    println!("{summary}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_logstash_json_of_about_300_bytes() {
        let generator = Generator::new(
            7,
            1_000,
            Duration::from_secs(3_600),
            1_714_564_800_000_000_000,
        );
        let body = generator.body(0, 1_000);
        let lines: Vec<&[u8]> = body
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
            .collect();
        assert_eq!(lines.len(), 1_000);
        let average = body.len() / lines.len();
        assert!((280..=360).contains(&average), "{average}");
        let first: Value = serde_json::from_slice(lines[0]).unwrap();
        assert_eq!(first["@timestamp"], "2024-05-01T11:00:00.000Z");
        assert_eq!(first["run"], "r7");
    }

    #[test]
    fn only_loopback_targets() {
        assert!(loopback_address("http://127.0.0.1:7080").is_ok());
        assert!(loopback_address("http://10.1.2.3:7080").is_err());
        assert!(loopback_address("https://127.0.0.1:7080").is_err());
    }
}
