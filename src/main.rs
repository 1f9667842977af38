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
