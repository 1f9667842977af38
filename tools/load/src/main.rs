//! `vigil-load`: a load generator for Vigil's ingest ports, loopback only, bounded in count
//! and time.
//!
//! ```text
//! vigil-load statsd --target 127.0.0.1:8125 --series 10000 --duration 10s \
//!     --metrics-url http://127.0.0.1:7080/metrics
//! vigil-load statsd-baseline --series 10000 --duration 10s
//! # highest paced rate within 0.1% loss (bisection after a flood):
//! vigil-load statsd --target 127.0.0.1:8125 --series 10000 --duration 10s --find-max-rate \
//!     --metrics-url http://127.0.0.1:7080/metrics
//! ```
//! `statsd` sends to Vigil and, given `--metrics-url`, reads
//! `vigil_ingest_received_total{protocol="statsd"}` before and after to report what Vigil
//! received and the loss. `statsd-baseline` runs a UDP sink in this process that only counts
//! lines and sends to it with the same generator, so the baseline comes from the same run.
//! Both print one `key=value` summary line.

mod common;
mod demo;
mod logs;
mod otlp;
mod spans;
mod statsd;

use clap::{Parser, Subcommand};

/// Load generator for Vigil (loopback only).
#[derive(Parser, Debug)]
#[command(name = "vigil-load", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send StatsD lines over UDP to a Vigil.
    Statsd(statsd::StatsdArgs),
    /// Send the same StatsD load to a counting UDP sink inside this process.
    StatsdBaseline(statsd::StatsdArgs),
    /// Send NDJSON log lines over HTTP to a Vigil; counted once searchable.
    Logs(logs::LogsArgs),
    /// Index the same log lines with plain tantivy and Vigil's schema in this process.
    LogsBaseline(logs::LogsArgs),
    /// Measure log search latency through Vigil's HTTP API.
    LogsSearch(logs::SearchArgs),
    /// Export batches of spans over OTLP/gRPC to a Vigil; then decode the same exports in
    /// this process (the baseline).
    Otlp(otlp::OtlpArgs),
    /// Write realistic spans straight into a span store directory (for query benchmarks).
    SpansFill(spans::FillArgs),
    /// Measure trace query latency through Vigil's HTTP API.
    TraceQueries(spans::QueryArgs),
    /// Send a small fleet's metrics, traces and logs to a local Vigil, for a demo.
    Demo(demo::DemoArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Statsd(args) => statsd::run_against_vigil(&args),
        Command::StatsdBaseline(args) => statsd::run_baseline(&args),
        Command::Logs(args) => logs::run_against_vigil(&args),
        Command::LogsBaseline(args) => logs::run_baseline(&args),
        Command::LogsSearch(args) => logs::run_search(&args),
        Command::Otlp(args) => otlp::run_against_vigil(&args),
        Command::SpansFill(args) => spans::run_fill(&args),
        Command::TraceQueries(args) => spans::run_queries(&args),
        Command::Demo(args) => demo::run(&args),
    }
}
