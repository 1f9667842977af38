//! Starting the built `vigil` binary for black-box tests: free ports, a temporary data
//! directory, a config file, wait for `/readyz`, kill on drop.
//!
//! The config starts from a quiet base (HTTP on a free port, every other listener disabled)
//! and the test's YAML is merged over it, key by key, so a test names only what it needs:
//!
//! ```ignore
//! let vigil = Vigil::start("statsd:\n  udp_listen: 127.0.0.1:0\n").await?;
//! let body = vigil.query("up").await?;
//! ```
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod otlp;
pub mod webhook;

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_yaml_ng::Value;

/// Returns a TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free TCP port")
}

/// Returns a UDP port on 127.0.0.1 that was free a moment ago.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|socket| socket.local_addr())
        .map(|address| address.port())
        .expect("no free UDP port")
}

fn spawn_vigil(config_path: &std::path::Path, log_file: std::fs::File) -> anyhow::Result<Child> {
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .arg("serve")
        .arg("--config")
        .arg(config_path)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .spawn()
        .context("cannot start the vigil binary")
}

/// A running `vigil serve`; killed when dropped.
pub struct Vigil {
    child: Child,
    /// The HTTP listen address.
    pub http_address: SocketAddr,
    /// `http://<http_address>`.
    pub base_url: String,
    /// The config file as written.
    pub config_yaml: String,
    /// The data directory (deleted on drop).
    pub data_dir: tempfile::TempDir,
    log_path: PathBuf,
    config_path: PathBuf,
    /// A client for the API.
    pub client: reqwest::Client,
}

impl Vigil {
    /// Starts Vigil with `overrides` (YAML) merged over the quiet base config and waits until
    /// `/readyz` answers 200.
    ///
    /// # Errors
    /// When the config cannot be written, the binary exits or is not ready within 60 s (the
    /// error then holds its log).
    pub async fn start(overrides: &str) -> anyhow::Result<Vigil> {
        let data_dir = tempfile::tempdir().context("cannot create a data directory")?;
        let default_http_address = format!("127.0.0.1:{}", free_tcp_port());
        let base = format!(
            r#"
server:
  http_listen: '{default_http_address}'
  data_dir: '{data}'
statsd:
  udp_listen: ''
  tcp_listen: ''
otlp:
  grpc_listen: ''
  http_listen: ''
logs:
  forward_listen: ''
"#,
            data = data_dir.path().join("data").display(),
        );
        let mut config: Value = serde_yaml_ng::from_str(&base)?;
        let overrides: Value =
            serde_yaml_ng::from_str(overrides).context("invalid override YAML")?;
        merge(&mut config, overrides);
        let http_address: SocketAddr = config
            .get("server")
            .and_then(|server| server.get("http_listen"))
            .and_then(Value::as_str)
            .context("server.http_listen missing")?
            .parse()
            .context("server.http_listen is not an address")?;
        let config_yaml = serde_yaml_ng::to_string(&config)?;
        let config_path = data_dir.path().join("vigil.yml");
        std::fs::write(&config_path, &config_yaml)?;
        let log_path = data_dir.path().join("vigil.log");
        let log_file = std::fs::File::create(&log_path)?;
        let child = spawn_vigil(&config_path, log_file)?;
        let mut vigil = Vigil {
            child,
            http_address,
            base_url: format!("http://{http_address}"),
            config_yaml,
            data_dir,
            log_path,
            config_path,
            // No pooled connections: after a 413 the server closes a connection whose body it did not
            // read, and a pooled client could pick that connection for the next request.
            client: reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .build()?,
        };
        vigil.wait_ready(Duration::from_secs(60)).await?;
        Ok(vigil)
    }

    async fn wait_ready(&mut self, patience: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + patience;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "vigil exited with {status} before it was ready:\n{}",
                    self.log()
                );
            }
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await {
                if response.status().is_success() {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!("vigil not ready after {patience:?}:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills the process with SIGKILL, as a crash would, and waits for it to exit.
    pub fn kill_hard(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits up to 30 s for a clean exit; returns whether it exited 0.
    pub fn terminate(&mut self) -> anyhow::Result<bool> {
        let pid = i32::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) with a pid of our own child and a valid signal number.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() > deadline {
                bail!("vigil did not stop within 30 s of SIGTERM:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the process again on the same config and data directory (after
    /// [`Vigil::kill_hard`] or [`Vigil::terminate`]) and waits until it is ready.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        let log_file = std::fs::OpenOptions::new()
            .append(true)
            .open(&self.log_path)?;
        self.child = spawn_vigil(&self.config_path, log_file)?;
        self.wait_ready(Duration::from_secs(60)).await
    }

    /// Returns `base_url + path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Returns what the process printed so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Returns true while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Runs an instant query (`GET /api/v1/query`) and returns the whole JSON body.
    ///
    /// # Errors
    /// When the request fails or the answer is not a success.
    pub async fn query(&self, promql: &str) -> anyhow::Result<serde_json::Value> {
        let response = self
            .client
            .get(self.url("/api/v1/query"))
            .query(&[("query", promql)])
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if !status.is_success() || body["status"] != "success" {
            bail!("query {promql:?} failed with {status}: {body}");
        }
        Ok(body)
    }

    /// Returns the `result` array of an instant query.
    ///
    /// # Errors
    /// As [`Vigil::query`].
    pub async fn query_vector(&self, promql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let body = self.query(promql).await?;
        Ok(body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default())
    }

    /// Returns Vigil's own `/metrics` text.
    ///
    /// # Errors
    /// When the request fails.
    pub async fn metrics_text(&self) -> anyhow::Result<String> {
        Ok(self
            .client
            .get(self.url("/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?)
    }
}

impl Drop for Vigil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- vigil log ---\n{}", self.log());
        }
    }
}

/// Merges `overrides` into `base`: mappings key by key, anything else replaced.
fn merge(base: &mut Value, overrides: Value) {
    match (base, overrides) {
        (Value::Mapping(base_map), Value::Mapping(override_map)) => {
            for (key, value) in override_map {
                match base_map.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base_map.insert(key, value);
                    }
                }
            }
        }
        (base, Value::Null) => {
            let _ = base;
        }
        (base, value) => *base = value,
    }
}
