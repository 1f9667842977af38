//! StatsD load: a generator of multi-line datagrams over a fixed set of series, a sender
//! (batched with `sendmmsg` on Linux, optionally paced), a counting sink for the baseline,
//! and a reader of Vigil's own received counter.

use crate::common::{parse_duration, require_loopback};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Options shared by `statsd` and `statsd-baseline`.
#[derive(clap::Args, Debug, Clone)]
pub struct StatsdArgs {
    /// Where to send (must be a loopback address). Ignored by `statsd-baseline`.
    #[arg(long, default_value = "127.0.0.1:8125")]
    pub target: SocketAddr,
    /// Distinct series (name + tags) cycled through.
    #[arg(long, default_value_t = 10_000)]
    pub series: usize,
    /// Lines per datagram; 0 packs as many as fit in `--datagram-bytes`.
    #[arg(long, default_value_t = 0)]
    pub lines_per_datagram: usize,
    /// Largest datagram when packing lines.
    #[arg(long, default_value_t = 1_400)]
    pub datagram_bytes: usize,
    /// How long to send (Prometheus duration: 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Lines per second to aim at; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Stop after this many lines even if `--duration` has not passed; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    pub max_lines: u64,
    /// Vigil's `/metrics` URL (`http://127.0.0.1:7080/metrics`) to read what Vigil received.
    #[arg(long)]
    pub metrics_url: Option<String>,
    /// After the first send, search (by bisection) the highest `--rate` whose loss stays
    /// within `--max-loss-pct`.
    #[arg(long)]
    pub find_max_rate: bool,
    /// Loss allowed by `--find-max-rate`, in percent.
    #[arg(long, default_value_t = 0.1)]
    pub max_loss_pct: f64,
    /// Sends made by `--find-max-rate` after the first.
    #[arg(long, default_value_t = 5)]
    pub search_steps: u32,
    /// Give each timer and histogram series 8 values in turn, timers in milliseconds with six
    /// decimals as the Python `statsd` client formats them; without it every series repeats
    /// one whole value, which Vigil's sketches take in runs.
    #[arg(long)]
    pub varied_values: bool,
}

/// Values each series takes in turn with `--varied-values`.
const VARIED_PASSES: usize = 8;

/// Pre-built datagrams cycled by the sender.
struct Load {
    datagrams: Vec<Vec<u8>>,
    lines_per_datagram: Vec<u64>,
}

/// Returns the line of series `index`: a mix of counters with a rate, gauges with deltas,
/// timers with DogStatsD tags and histograms, over 20 services.
/// `pass` is `None` for the one whole value a series repeats, else which of its varied values.
fn series_line(index: usize, pass: Option<usize>) -> String {
    let service = index % 20;
    match (index % 4, pass) {
        (0, _) => format!("load.svc{service}.requests.s{index}:1|c|@0.5"),
        (1, _) => format!("load.svc{service}.queue.s{index}:+1|g"),
        (2, None) => format!(
            "load.svc{service}.latency.s{index}:{}|ms|#env:bench",
            index % 997
        ),
        (2, Some(pass)) => format!(
            "load.svc{service}.latency.s{index}:{:.6}|ms|#env:bench",
            ((index * 7 + pass * 131) % 997) as f64 + pass as f64 * 0.123_457
        ),
        (_, None) => format!("load.svc{service}.bytes.s{index}:{}|h", index % 4093),
        (_, Some(pass)) => format!(
            "load.svc{service}.bytes.s{index}:{}|h",
            (index + pass * 509) % 4093
        ),
    }
}

impl Load {
    /// Packs every series (twice, so datagram boundaries shift; with `--varied-values` once
    /// per value) into datagrams.
    fn build(args: &StatsdArgs) -> anyhow::Result<Self> {
        if args.series == 0 {
            bail!("--series must be at least 1");
        }
        let passes = if args.varied_values { VARIED_PASSES } else { 2 };
        let lines: Vec<String> = (0..args.series * passes)
            .map(|index| {
                let pass = args.varied_values.then_some(index / args.series);
                series_line(index % args.series, pass)
            })
            .collect();
        let mut datagrams = Vec::new();
        let mut lines_per_datagram = Vec::new();
        let mut current = Vec::with_capacity(args.datagram_bytes);
        let mut current_lines = 0u64;
        for line in &lines {
            let full = if args.lines_per_datagram > 0 {
                current_lines as usize >= args.lines_per_datagram
            } else {
                current_lines > 0 && current.len() + 1 + line.len() > args.datagram_bytes
            };
            if full {
                datagrams.push(std::mem::take(&mut current));
                lines_per_datagram.push(current_lines);
                current_lines = 0;
            }
            if current_lines > 0 {
                current.push(b'\n');
            }
            current.extend_from_slice(line.as_bytes());
            current_lines += 1;
        }
        if current_lines > 0 {
            datagrams.push(current);
            lines_per_datagram.push(current_lines);
        }
        Ok(Load {
            datagrams,
            lines_per_datagram,
        })
    }

    fn average_bytes(&self) -> f64 {
        let total: usize = self.datagrams.iter().map(Vec::len).sum();
        total as f64 / self.datagrams.len().max(1) as f64
    }
}

/// What a send produced.
struct SendReport {
    lines: u64,
    datagrams: u64,
    elapsed: Duration,
}

/// Sends datagrams for `args.duration` (or `args.max_lines`), paced to `args.rate` if set.
fn send(load: &Load, target: SocketAddr, args: &StatsdArgs) -> anyhow::Result<SendReport> {
    require_loopback(target)?;
    let socket = UdpSocket::bind("127.0.0.1:0").context("failed to bind the sending socket")?;
    socket
        .connect(target)
        .with_context(|| format!("failed to connect to {target}"))?;
    let started = Instant::now();
    let mut lines = 0u64;
    let mut datagrams = 0u64;
    let mut next = 0usize;
    const BATCH: usize = 32;
    loop {
        let elapsed = started.elapsed();
        if elapsed >= args.duration || (args.max_lines > 0 && lines >= args.max_lines) {
            break;
        }
        if args.rate > 0 {
            let allowed = (elapsed.as_secs_f64() * args.rate as f64) as u64;
            if lines >= allowed {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
        }
        let batch: Vec<&[u8]> = (0..BATCH)
            .map(|offset| {
                load.datagrams
                    .get((next + offset) % load.datagrams.len())
                    .map_or(&[][..], Vec::as_slice)
            })
            .collect();
        let sent = send_batch(&socket, &batch);
        for offset in 0..sent {
            lines += load
                .lines_per_datagram
                .get((next + offset) % load.datagrams.len())
                .copied()
                .unwrap_or(0);
        }
        datagrams += sent as u64;
        next = (next + sent) % load.datagrams.len();
    }
    Ok(SendReport {
        lines,
        datagrams,
        elapsed: started.elapsed(),
    })
}

/// Sends a batch of datagrams; returns how many went out.
#[cfg(target_os = "linux")]
fn send_batch(socket: &UdpSocket, datagrams: &[&[u8]]) -> usize {
    use std::os::fd::AsRawFd;
    let mut iovecs: Vec<libc::iovec> = datagrams
        .iter()
        .map(|datagram| libc::iovec {
            iov_base: datagram.as_ptr() as *mut libc::c_void,
            iov_len: datagram.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iovec| {
            // SAFETY: an all-zero msghdr is valid for a connected socket (no address, no control).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = iovec;
            header.msg_iovlen = 1;
            libc::mmsghdr {
                msg_hdr: header,
                msg_len: 0,
            }
        })
        .collect();
    // SAFETY: the headers and their iovecs point at live buffers for the duration of the call;
    // the kernel only reads them.
    let sent = unsafe {
        libc::sendmmsg(
            socket.as_raw_fd(),
            headers.as_mut_ptr(),
            headers.len() as libc::c_uint,
            0,
        )
    };
    usize::try_from(sent).unwrap_or(0)
}

/// Sends a batch of datagrams; returns how many went out.
#[cfg(not(target_os = "linux"))]
fn send_batch(socket: &UdpSocket, datagrams: &[&[u8]]) -> usize {
    datagrams
        .iter()
        .take_while(|datagram| socket.send(datagram).is_ok())
        .count()
}

/// Reads `vigil_ingest_received_total{protocol="statsd"}` from a Prometheus text endpoint.
fn read_received(metrics_url: &str) -> anyhow::Result<u64> {
    let rest = metrics_url
        .strip_prefix("http://")
        .context("--metrics-url must start with http://")?;
    let (authority, path) = match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/metrics"),
    };
    let address: SocketAddr = authority
        .parse()
        .with_context(|| format!("--metrics-url needs an IP:port, not {authority}"))?;
    require_loopback(address)?;
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(5))
        .with_context(|| format!("failed to connect to {address}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    for line in response.lines() {
        if let Some(value) = line.strip_prefix("vigil_ingest_received_total{protocol=\"statsd\"} ")
        {
            return value
                .trim()
                .parse::<f64>()
                .map(|value| value as u64)
                .context("unreadable received counter");
        }
    }
    Ok(0)
}

/// Waits until `read` stops changing (two equal reads 500 ms apart), at most 15 s.
fn settle(read: &mut dyn FnMut() -> anyhow::Result<u64>) -> anyhow::Result<u64> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = read()?;
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = read()?;
        if now == last || Instant::now() > deadline {
            return Ok(now);
        }
        last = now;
    }
}

fn print_summary(mode: &str, load: &Load, report: &SendReport, received: Option<u64>) {
    let seconds = report.elapsed.as_secs_f64().max(1e-9);
    let mut summary = format!(
        "mode={mode} series_datagram_bytes_avg={:.0} sent_lines={} sent_datagrams={} seconds={:.2} sent_lines_per_s={:.0}",
        load.average_bytes(),
        report.lines,
        report.datagrams,
        seconds,
        report.lines as f64 / seconds,
    );
    if let Some(received) = received {
        let loss = loss_pct(report, received);
        summary.push_str(&format!(
            " received_lines={received} received_lines_per_s={:.0} loss_pct={loss:.3}",
            received as f64 / seconds
        ));
    }
    println!("{summary}");
}

/// Runs one send at `rate` (0 = flood) and returns the report and what the receiver counted.
fn trial(
    load: &Load,
    target: SocketAddr,
    args: &StatsdArgs,
    rate: u64,
    read_received: &mut dyn FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<(SendReport, u64)> {
    let trial_args = StatsdArgs {
        rate,
        ..args.clone()
    };
    let before = read_received()?;
    let report = send(load, target, &trial_args)?;
    let after = settle(&mut *read_received)?;
    Ok((report, after.saturating_sub(before)))
}

fn loss_pct(report: &SendReport, received: u64) -> f64 {
    if report.lines == 0 {
        return 0.0;
    }
    100.0 * report.lines.saturating_sub(received) as f64 / report.lines as f64
}

/// Sends once (or, with `--find-max-rate`, searches the highest paced rate whose loss stays
/// within `--max-loss-pct`) and prints a summary line per send.
fn drive(
    mode: &str,
    load: &Load,
    target: SocketAddr,
    args: &StatsdArgs,
    read_received: &mut dyn FnMut() -> anyhow::Result<u64>,
) -> anyhow::Result<()> {
    let (report, received) = trial(load, target, args, args.rate, read_received)?;
    print_summary(mode, load, &report, Some(received));
    if !args.find_max_rate {
        return Ok(());
    }
    if loss_pct(&report, received) <= args.max_loss_pct {
        // The receiver kept up with everything the generator could send: that is the answer.
        print_summary(&format!("{mode}-best"), load, &report, Some(received));
        return Ok(());
    }
    // Bisection between 0 and the flood's send rate, starting at what the flood delivered.
    let mut lossless_rate = 0u64;
    let mut lossy_rate = (report.lines as f64 / report.elapsed.as_secs_f64().max(1e-9)) as u64;
    let mut candidate = (received as f64 / report.elapsed.as_secs_f64().max(1e-9)) as u64;
    let mut best: Option<(SendReport, u64)> = None;
    for _ in 0..args.search_steps {
        if candidate == 0 {
            break;
        }
        let (report, received) = trial(load, target, args, candidate, read_received)?;
        print_summary(
            &format!("{mode}-at-rate-{candidate}"),
            load,
            &report,
            Some(received),
        );
        if loss_pct(&report, received) <= args.max_loss_pct {
            lossless_rate = candidate;
            best = Some((report, received));
        } else {
            lossy_rate = candidate;
        }
        candidate = (lossless_rate + lossy_rate) / 2;
    }
    match best {
        Some((report, received)) => {
            print_summary(&format!("{mode}-best"), load, &report, Some(received));
        }
        None => println!("mode={mode}-best none within {}% loss", args.max_loss_pct),
    }
    Ok(())
}

/// `vigil-load statsd`: sends to Vigil and reports what its `/metrics` says it received.
pub fn run_against_vigil(args: &StatsdArgs) -> anyhow::Result<()> {
    let load = Load::build(args)?;
    match &args.metrics_url {
        Some(url) => drive("statsd", &load, args.target, args, &mut || {
            read_received(url)
        }),
        None => {
            let report = send(&load, args.target, args)?;
            print_summary("statsd", &load, &report, None);
            Ok(())
        }
    }
}

/// `vigil-load statsd-baseline`: a sink that only counts lines, fed by the same generator.
pub fn run_baseline(args: &StatsdArgs) -> anyhow::Result<()> {
    let load = Load::build(args)?;
    let sink = UdpSocket::bind("127.0.0.1:0").context("failed to bind the baseline sink")?;
    set_receive_buffer(&sink, 32 << 20);
    sink.set_read_timeout(Some(Duration::from_millis(100)))?;
    let sink_address = sink.local_addr()?;
    let counted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let sink_thread = {
        let counted = Arc::clone(&counted);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || count_lines(&sink, &counted, &stop))
    };
    let outcome = drive("statsd-baseline", &load, sink_address, args, &mut || {
        Ok(counted.load(Ordering::Relaxed))
    });
    stop.store(true, Ordering::Relaxed);
    let _ = sink_thread.join();
    outcome
}

/// The baseline sink: receives datagrams and counts their lines, nothing else.
fn count_lines(socket: &UdpSocket, counted: &AtomicU64, stop: &AtomicBool) {
    let mut buffer = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        if let Ok(length) = socket.recv(&mut buffer) {
            let datagram = buffer.get(..length).unwrap_or_default();
            let lines = datagram
                .split(|byte| *byte == b'\n')
                .filter(|line| !line.is_empty())
                .count();
            counted.fetch_add(lines as u64, Ordering::Relaxed);
        }
    }
}

#[cfg(unix)]
fn set_receive_buffer(socket: &UdpSocket, bytes: libc::c_int) {
    use std::os::fd::AsRawFd;
    for option in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: a live socket fd and a c_int option value that outlives the call.
        let status = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                option,
                (&bytes as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if status == 0 {
            return;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn args(lines_per_datagram: usize) -> StatsdArgs {
        StatsdArgs {
            target: "127.0.0.1:8125".parse().unwrap(),
            series: 1_000,
            lines_per_datagram,
            datagram_bytes: 1_400,
            duration: Duration::from_millis(200),
            rate: 0,
            max_lines: 5_000,
            metrics_url: None,
            find_max_rate: false,
            max_loss_pct: 0.1,
            search_steps: 5,
            varied_values: false,
        }
    }

    #[test]
    fn packed_datagrams_stay_under_the_size() {
        let load = Load::build(&args(0)).unwrap();
        assert!(load
            .datagrams
            .iter()
            .all(|datagram| datagram.len() <= 1_400));
        let total: u64 = load.lines_per_datagram.iter().sum();
        assert_eq!(total, 2_000);
    }

    #[test]
    fn varied_values_give_each_timer_eight_values() {
        let load = Load::build(&StatsdArgs {
            varied_values: true,
            ..args(0)
        })
        .unwrap();
        let text: Vec<String> = load
            .datagrams
            .iter()
            .map(|datagram| String::from_utf8(datagram.clone()).unwrap())
            .collect();
        let timer_values: std::collections::HashSet<&str> = text
            .iter()
            .flat_map(|datagram| datagram.lines())
            .filter_map(|line| line.strip_prefix("load.svc2.latency.s2:"))
            .collect();
        assert_eq!(timer_values.len(), VARIED_PASSES, "{timer_values:?}");
        assert!(timer_values.iter().all(|value| value.contains('.')));
        let total: u64 = load.lines_per_datagram.iter().sum();
        assert_eq!(total, 8_000);
    }

    #[test]
    fn one_line_per_datagram() {
        let load = Load::build(&args(1)).unwrap();
        assert_eq!(load.datagrams.len(), 2_000);
    }

    #[test]
    fn refuses_non_loopback_targets() {
        assert!(require_loopback("10.0.0.1:8125".parse().unwrap()).is_err());
        assert!(require_loopback("127.0.0.1:8125".parse().unwrap()).is_ok());
    }

    #[test]
    fn baseline_counts_what_it_was_sent() {
        run_baseline(&args(0)).unwrap();
    }
}
