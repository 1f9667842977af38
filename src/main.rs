//! `vigil`: one process for the metrics, logs, traces and alerts of a microservice fleet.
//!
//! `vigil serve` runs with embedded defaults; `vigil serve --config vigil.yml` reads a config
//! whose sections reuse prometheus.yml, alertmanager.yml and statsd_exporter's mapping format.

mod alerting;
mod auth;
mod cli;
mod config;
mod logs;
mod otlp;
mod self_monitoring;
mod serve;
mod traces;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc's malloc: ingest converts and frees many small strings on several
/// threads at once, which under glibc's allocator took about a fifth of the OTLP trace path's
/// CPU and contended its arena locks (see docs/BENCHMARKS.md, "OTLP/gRPC trace ingest").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("vigil: {error:#}");
            ExitCode::FAILURE
        }
    }
}
