//! `vigil.yml`: the sections of DESIGN.md §5, with their defaults, `VIGIL_<SECTION>_<KEY>`
//! environment overrides and CLI flags. Every key is optional; an unknown key is an error that
//! names it. Sections owned by a component (`statsd:`) are typed next to that component's code.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_yaml_ng::Value;
use vigil_alerting::config::{AlertmanagerConfig, ExternalAlertingConfig};
use vigil_alerting::rule::{load_rule_files, RuleGroup};
use vigil_collector::scrape::{GlobalConfig, ScrapeConfig};
use vigil_collector::sources::statsd::StatsdConfig;
use vigil_model::units;

/// The environment variable holding Vigil's log filter (`VIGIL_LOG=debug`,
/// `VIGIL_LOG=vigil_logs=debug,info`): not a config override.
pub const LOG_FILTER_VARIABLE: &str = "VIGIL_LOG";

/// A config that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file `{path}`: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The YAML is invalid or a key is unknown or mistyped.
    #[error("{0}")]
    Invalid(String),
    /// A value is out of range.
    #[error("`{key}`: {reason}")]
    Value {
        /// Dotted key path.
        key: String,
        /// What is wrong.
        reason: String,
    },
}

/// The whole config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `server:`
    pub server: ServerConfig,
    /// `statsd:`
    pub statsd: StatsdConfig,
    /// `otlp:`
    pub otlp: OtlpConfig,
    /// `logs:`
    pub logs: LogsConfig,
    /// `traces:`
    pub traces: TracesConfig,
    /// `storage:`
    pub storage: StorageConfig,
    /// `global:` as in prometheus.yml.
    pub global: GlobalConfig,
    /// `scrape_configs:` as in prometheus.yml.
    pub scrape_configs: Vec<ScrapeConfig>,
    /// `rule_files:`; absent means the shipped default rules, `[]` none.
    pub rule_files: Option<Vec<String>>,
    /// `alertmanager:` the content of an alertmanager.yml (subset; see docs/ALERTING.md).
    pub alertmanager: AlertmanagerConfig,
    /// `alerting:` as in prometheus.yml: external Alertmanagers Vigil also sends alerts to.
    pub alerting: ExternalAlertingConfig,
    /// `auth:` tokens (see src/auth.rs).
    pub auth: crate::auth::AuthConfig,
    /// The directory of the config file, for relative paths; not a key.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// The config file itself, for reloads; not a key.
    #[serde(skip)]
    pub source_path: Option<PathBuf>,
}

/// `server:`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// HTTP listen address (UI, API, ingest).
    pub http_listen: String,
    /// Where every store keeps its files.
    pub data_dir: PathBuf,
    /// Base URL used in links inside notifications.
    pub external_url: String,
    /// Store Vigil's own /metrics in its metric store.
    pub self_monitoring: bool,
    /// Larger request bodies get 413.
    #[serde(with = "units::size")]
    pub max_body_bytes: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            http_listen: "127.0.0.1:7080".to_string(),
            data_dir: PathBuf::from("./data"),
            external_url: "http://localhost:7080".to_string(),
            self_monitoring: true,
            max_body_bytes: 16 << 20,
        }
    }
}

/// `otlp:`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// OTLP/gRPC listen address.
    pub grpc_listen: String,
    /// OTLP/HTTP listen address.
    pub http_listen: String,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            grpc_listen: "127.0.0.1:4317".to_string(),
            http_listen: "127.0.0.1:4318".to_string(),
        }
    }
}

/// `logs:`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogsConfig {
    /// Fluentd forward protocol listen address.
    pub forward_listen: String,
    /// How long log lines are kept.
    #[serde(with = "units::duration")]
    pub retention: Duration,
    /// The oldest partitions are deleted while all use more than this (`5GiB`); 0 = no limit.
    #[serde(with = "units::size")]
    pub retention_size: u64,
    /// Fields whose value is a correlation ID.
    pub correlation_fields: Vec<String>,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            forward_listen: "127.0.0.1:24224".to_string(),
            retention: Duration::from_secs(7 * 86_400),
            retention_size: 0,
            correlation_fields: vec![
                "correlation_id".to_string(),
                "request_id".to_string(),
                "uuid".to_string(),
            ],
        }
    }
}

/// `traces:`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracesConfig {
    /// How long spans are kept.
    #[serde(with = "units::duration")]
    pub retention: Duration,
    /// Bytes the span store may take on disk before its oldest partitions are dropped; 0 = no
    /// size limit.
    #[serde(with = "units::size")]
    pub retention_size: u64,
    /// Span attributes whose values are correlation IDs (request IDs, order UUIDs).
    pub correlation_attributes: Vec<String>,
}

impl Default for TracesConfig {
    fn default() -> Self {
        TracesConfig {
            retention: Duration::from_secs(7 * 86_400),
            retention_size: 0,
            correlation_attributes: vec![
                "correlation_id".to_string(),
                "request_id".to_string(),
                "uuid".to_string(),
            ],
        }
    }
}

impl TracesConfig {
    /// Checks retention and the correlation attribute names.
    ///
    /// # Errors
    /// [`ConfigError::Value`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retention.is_zero() {
            return Err(ConfigError::Value {
                key: "traces.retention".to_string(),
                reason: "must be positive".to_string(),
            });
        }
        if let Some(empty) = self
            .correlation_attributes
            .iter()
            .find(|attribute| attribute.trim().is_empty())
        {
            return Err(ConfigError::Value {
                key: "traces.correlation_attributes".to_string(),
                reason: format!("{empty:?} is not an attribute name"),
            });
        }
        Ok(())
    }
}

/// One rollup level of `storage.rollups`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RollupConfig {
    /// Bucket width.
    #[serde(with = "units::duration")]
    pub resolution: Duration,
    /// How long the level is kept.
    #[serde(with = "units::duration")]
    pub retention: Duration,
}

/// `storage.limits`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Series per metric name; more are rejected.
    pub series_per_metric: usize,
    /// Bytes per label name or value.
    #[serde(with = "units::size")]
    pub label_bytes: u64,
    /// Bytes per log line.
    #[serde(with = "units::size")]
    pub log_line_bytes: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            series_per_metric: 100_000,
            label_bytes: 4_096,
            log_line_bytes: 256 << 10,
        }
    }
}

/// `storage:`
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// How long raw samples are kept.
    #[serde(with = "units::duration")]
    pub raw_retention: Duration,
    /// Rollup levels, finest first.
    pub rollups: Vec<RollupConfig>,
    /// Limits on series, labels and lines.
    pub limits: LimitsConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            raw_retention: Duration::from_secs(2 * 86_400),
            rollups: vec![
                RollupConfig {
                    resolution: Duration::from_secs(60),
                    retention: Duration::from_secs(30 * 86_400),
                },
                RollupConfig {
                    resolution: Duration::from_secs(3_600),
                    retention: Duration::from_secs(365 * 86_400),
                },
            ],
            limits: LimitsConfig::default(),
        }
    }
}

/// Values given on the command line; they win over the file and the environment.
#[derive(Clone, Debug, Default)]
pub struct CliOverrides {
    /// `--data-dir`
    pub data_dir: Option<PathBuf>,
    /// `--http-listen`
    pub http_listen: Option<String>,
}

const SECTIONS: [&str; 9] = [
    "server", "statsd", "otlp", "logs", "traces", "storage", "global", "auth", "alerting",
];

/// Returns the socket address of a listener, or None when it is disabled (`""` or `"0"`).
///
/// # Errors
/// [`ConfigError::Value`] when the address does not parse.
pub fn listen_address(key: &str, value: &str) -> Result<Option<SocketAddr>, ConfigError> {
    let trimmed = value.trim();
    if trimmed.is_empty() || trimmed == "0" {
        return Ok(None);
    }
    let normalized = if let Some(port) = trimmed.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else {
        trimmed.replace("localhost:", "127.0.0.1:")
    };
    normalized
        .parse::<SocketAddr>()
        .map(Some)
        .map_err(|_| ConfigError::Value {
            key: key.to_string(),
            reason: format!("{value:?} is not a listen address such as 127.0.0.1:7080"),
        })
}

impl Config {
    /// Loads the config: embedded defaults, then the file (if any), then `VIGIL_*` variables
    /// from `environment`, then CLI flags; then validates it.
    ///
    /// # Errors
    /// [`ConfigError`] naming the file, key and reason.
    pub fn load(
        path: Option<&Path>,
        cli: &CliOverrides,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let text = match path {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let mut config = Config::parse(&text, environment)?;
        if let Some(path) = path {
            config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
            config.source_path = Some(path.to_path_buf());
        }
        // Relative paths in the file are relative to the file, as in Prometheus.
        let base_dir = config.base_dir.clone();
        for scrape_config in &mut config.scrape_configs {
            scrape_config.tls_config.resolve_paths(&base_dir);
        }
        if let Some(data_dir) = &cli.data_dir {
            config.server.data_dir = data_dir.clone();
        }
        if let Some(http_listen) = &cli.http_listen {
            config.server.http_listen = http_listen.clone();
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses YAML text and applies `VIGIL_<SECTION>_<KEY>` overrides.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with serde's message (key and location) on bad YAML or keys.
    pub fn parse(
        text: &str,
        environment: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut document: Value = if text.trim().is_empty() {
            Value::Mapping(Default::default())
        } else {
            serde_yaml_ng::from_str(text)
                .map_err(|error| ConfigError::Invalid(error.to_string()))?
        };
        if document.is_null() {
            document = Value::Mapping(Default::default());
        }
        let overrides: BTreeMap<String, String> = environment
            .into_iter()
            .filter(|(name, _)| name.starts_with("VIGIL_") && name != LOG_FILTER_VARIABLE)
            .collect();
        if overrides.is_empty() {
            // Parse from the text so errors carry line and column.
            if text.trim().is_empty() {
                return Ok(Config::default());
            }
            return serde_yaml_ng::from_str(text)
                .map_err(|error| ConfigError::Invalid(error.to_string()));
        }
        let Value::Mapping(root) = &mut document else {
            return Err(ConfigError::Invalid(
                "the config must be a YAML mapping".to_string(),
            ));
        };
        for (name, value) in overrides {
            let rest = name.trim_start_matches("VIGIL_").to_ascii_lowercase();
            let Some(section) = SECTIONS
                .iter()
                .find(|section| rest.starts_with(&format!("{section}_")))
            else {
                return Err(ConfigError::Invalid(format!(
                    "environment variable {name} names no config section (expected VIGIL_<SECTION>_<KEY> with SECTION one of {})",
                    SECTIONS.join(", ").to_ascii_uppercase()
                )));
            };
            let key = rest[section.len() + 1..].to_string();
            let entry = root
                .entry(Value::String(section.to_string()))
                .or_insert_with(|| Value::Mapping(Default::default()));
            let Value::Mapping(section_map) = entry else {
                return Err(ConfigError::Invalid(format!(
                    "`{section}` must be a mapping"
                )));
            };
            section_map.insert(Value::String(key.clone()), override_value(&key, &value));
        }
        serde_yaml_ng::from_value(document).map_err(|error| ConfigError::Invalid(error.to_string()))
    }

    /// Refuses to serve the HTTP API or OTLP on a non-loopback address without tokens, unless
    /// `auth.disabled` says so (DESIGN.md §5).
    fn check_auth_on_open_addresses(&self) -> Result<(), ConfigError> {
        if self.auth.enabled() || self.auth.disabled {
            return Ok(());
        }
        for (key, value) in [
            ("server.http_listen", &self.server.http_listen),
            ("otlp.grpc_listen", &self.otlp.grpc_listen),
            ("otlp.http_listen", &self.otlp.http_listen),
        ] {
            if let Some(address) = listen_address(key, value)? {
                if !address.ip().is_loopback() {
                    return Err(ConfigError::Value {
                        key: key.to_string(),
                        reason: format!(
                            "{address} is not a loopback address: set tokens under `auth:` \
                             (ingest_tokens, read_tokens, admin_tokens) or `auth.disabled: true`"
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks values that types alone cannot.
    ///
    /// # Errors
    /// [`ConfigError::Value`] naming the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        listen_address("server.http_listen", &self.server.http_listen)?;
        listen_address("statsd.udp_listen", &self.statsd.udp_listen)?;
        listen_address("statsd.tcp_listen", &self.statsd.tcp_listen)?;
        listen_address("otlp.grpc_listen", &self.otlp.grpc_listen)?;
        listen_address("otlp.http_listen", &self.otlp.http_listen)?;
        listen_address("logs.forward_listen", &self.logs.forward_listen)?;
        if self.logs.retention.is_zero() {
            return Err(ConfigError::Value {
                key: "logs.retention".to_string(),
                reason: "must be positive".to_string(),
            });
        }
        if let Some(empty) = self
            .logs
            .correlation_fields
            .iter()
            .find(|field| field.trim().is_empty())
        {
            return Err(ConfigError::Value {
                key: "logs.correlation_fields".to_string(),
                reason: format!("{empty:?} is not a field name"),
            });
        }
        self.traces.validate()?;
        self.check_auth_on_open_addresses()?;
        if self.storage.limits.log_line_bytes == 0 {
            return Err(ConfigError::Value {
                key: "storage.limits.log_line_bytes".to_string(),
                reason: "must be positive".to_string(),
            });
        }
        if self.statsd.flush_interval.is_zero() {
            return Err(ConfigError::Value {
                key: "statsd.flush_interval".to_string(),
                reason: "must be positive".to_string(),
            });
        }
        if let Some(bad) = self
            .statsd
            .percentiles
            .iter()
            .find(|quantile| !(0.0..=1.0).contains(*quantile))
        {
            return Err(ConfigError::Value {
                key: "statsd.percentiles".to_string(),
                reason: format!("{bad} is not a quantile between 0 and 1"),
            });
        }
        let mut previous = Duration::ZERO;
        for rollup in &self.storage.rollups {
            if rollup.resolution <= previous {
                return Err(ConfigError::Value {
                    key: "storage.rollups".to_string(),
                    reason: "levels must be listed finest first, each coarser than the one before"
                        .to_string(),
                });
            }
            previous = rollup.resolution;
        }
        vigil_collector::scrape::config::validate(&self.scrape_configs, &self.global).map_err(
            |error| ConfigError::Value {
                key: "scrape_configs".to_string(),
                reason: error.to_string(),
            },
        )?;
        if self.server.max_body_bytes == 0 {
            return Err(ConfigError::Value {
                key: "server.max_body_bytes".to_string(),
                reason: "must be positive".to_string(),
            });
        }
        self.alertmanager
            .validate()
            .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        self.alerting
            .validate()
            .map_err(|error| ConfigError::Invalid(error.to_string()))?;
        self.rule_groups()?;
        Ok(())
    }

    /// Loads and validates the rule files of `rule_files` (globs relative to the config file;
    /// absent = the shipped default rules, `[]` = none).
    ///
    /// # Errors
    /// [`ConfigError::Value`] listing every problem with its file, group and rule.
    pub fn rule_groups(&self) -> Result<Vec<RuleGroup>, ConfigError> {
        load_rule_files(self.rule_files.as_deref(), &self.base_dir).map_err(|errors| {
            ConfigError::Value {
                key: "rule_files".to_string(),
                reason: errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            }
        })
    }
}

/// Environment values are YAML scalars, except listen addresses, URLs and paths, which stay
/// strings (so `VIGIL_STATSD_UDP_LISTEN=0` disables the listener rather than being a number).
fn override_value(key: &str, value: &str) -> Value {
    let keeps_text = key.ends_with("_listen") || key.ends_with("_url") || key.ends_with("_dir");
    if keeps_text {
        return Value::String(value.to_string());
    }
    serde_yaml_ng::from_str::<Value>(value).unwrap_or_else(|_| Value::String(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn empty_config_gives_the_documented_defaults() {
        let config = Config::parse("", no_env()).unwrap();
        assert_eq!(config.server.http_listen, "127.0.0.1:7080");
        assert_eq!(config.statsd.flush_interval, Duration::from_secs(10));
        assert_eq!(config.storage.rollups.len(), 2);
        assert_eq!(config.server.max_body_bytes, 16 << 20);
        assert!(config.rule_files.is_none());
    }

    #[test]
    fn traces_section_keys_and_validation() {
        let config = Config::parse("", no_env()).unwrap();
        assert_eq!(config.traces.retention_size, 0);
        assert_eq!(
            config.traces.correlation_attributes,
            ["correlation_id", "request_id", "uuid"]
        );
        let text = "traces:\n  retention: 2d\n  retention_size: 10GiB\n  correlation_attributes: [order_id]\n";
        let config = Config::parse(text, no_env()).unwrap();
        assert_eq!(config.traces.retention, Duration::from_secs(2 * 86_400));
        assert_eq!(config.traces.retention_size, 10 << 30);
        assert_eq!(config.traces.correlation_attributes, ["order_id"]);
        let config = Config::parse("traces:\n  retention: 0s\n", no_env()).unwrap();
        let error = config.validate().unwrap_err();
        assert!(error.to_string().contains("traces.retention"), "{error}");
        let config = Config::parse("traces:\n  correlation_attributes: ['']\n", no_env()).unwrap();
        let error = config.validate().unwrap_err();
        assert!(
            error.to_string().contains("traces.correlation_attributes"),
            "{error}"
        );
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        let error = Config::parse("server:\n  http_listn: 1\n", no_env()).unwrap_err();
        assert!(error.to_string().contains("http_listn"), "{error}");
        let error = Config::parse("servr: {}\n", no_env()).unwrap_err();
        assert!(error.to_string().contains("servr"), "{error}");
    }

    #[test]
    fn environment_overrides_single_values() {
        let env = vec![
            (
                "VIGIL_SERVER_HTTP_LISTEN".to_string(),
                "127.0.0.1:9999".to_string(),
            ),
            ("VIGIL_STATSD_FLUSH_INTERVAL".to_string(), "2s".to_string()),
            ("VIGIL_STATSD_UDP_LISTEN".to_string(), "0".to_string()),
            (
                "VIGIL_SERVER_SELF_MONITORING".to_string(),
                "false".to_string(),
            ),
            ("PATH".to_string(), "/bin".to_string()),
            // The log filter, not a config key.
            ("VIGIL_LOG".to_string(), "debug".to_string()),
        ];
        let config = Config::parse("server:\n  http_listen: 127.0.0.1:1\n", env).unwrap();
        assert_eq!(config.server.http_listen, "127.0.0.1:9999");
        assert_eq!(config.statsd.flush_interval, Duration::from_secs(2));
        assert_eq!(
            listen_address("statsd.udp_listen", &config.statsd.udp_listen).unwrap(),
            None
        );
        assert!(!config.server.self_monitoring);
    }

    #[test]
    fn cli_flags_win_over_file_and_environment() {
        let directory = tempfile::tempdir().unwrap();
        let file = directory.path().join("vigil.yml");
        std::fs::write(&file, "server:\n  http_listen: 127.0.0.1:1\n").unwrap();
        let cli = CliOverrides {
            data_dir: Some(PathBuf::from("elsewhere")),
            http_listen: Some("127.0.0.1:2".to_string()),
        };
        let env = vec![(
            "VIGIL_SERVER_HTTP_LISTEN".to_string(),
            "127.0.0.1:3".to_string(),
        )];
        let config = Config::load(Some(&file), &cli, env).unwrap();
        assert_eq!(config.server.http_listen, "127.0.0.1:2");
        assert_eq!(config.server.data_dir, PathBuf::from("elsewhere"));
        assert_eq!(config.base_dir, directory.path());
    }

    #[test]
    fn empty_listen_address_disables_the_listener() {
        assert_eq!(listen_address("k", "").unwrap(), None);
        assert!(listen_address("k", "nonsense").is_err());
        assert!(listen_address("k", ":8125").unwrap().is_some());
    }

    #[test]
    fn rollups_must_grow_coarser() {
        let text = "storage:\n  rollups: [{resolution: 1h, retention: 1y}, {resolution: 1m, retention: 30d}]\n";
        let config = Config::parse(text, no_env()).unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn alerting_sections_are_typed_and_validated() {
        let config = Config::parse("rule_files: []\n", no_env()).unwrap();
        assert!(config.rule_groups().unwrap().is_empty());
        let defaults = Config::parse("", no_env()).unwrap();
        assert!(!defaults.rule_groups().unwrap().is_empty());
        let error = Config::parse(
            "alertmanager:\n  route: {receiver: x, group_wiat: 1s}\n",
            no_env(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("group_wiat"), "{error}");
        let config = Config::parse(
            "alertmanager:\n  route: {receiver: nobody}\n  receivers: [{name: x}]\n",
            no_env(),
        )
        .unwrap();
        let error = config.validate().unwrap_err();
        assert!(error.to_string().contains("route.receiver"), "{error}");
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(
            directory.path().join("bad.yml"),
            "groups:\n- name: g\n  rules:\n  - alert: A\n    expr: rate(x[5m]\n",
        )
        .unwrap();
        let file = directory.path().join("vigil.yml");
        std::fs::write(&file, "rule_files: ['b*.yml']\n").unwrap();
        let error = Config::load(Some(&file), &CliOverrides::default(), no_env()).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("bad.yml") && text.contains("group \"g\", rule 1, \"A\""),
            "{text}"
        );
    }

    #[test]
    fn logs_section_is_validated() {
        let config = Config::parse(
            "logs:\n  retention: 3d\n  correlation_fields: [order_id]\nstorage:\n  limits:\n    log_line_bytes: 64KiB\n",
            no_env(),
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.logs.retention, Duration::from_secs(3 * 86_400));
        assert_eq!(config.storage.limits.log_line_bytes, 64 << 10);
        assert_eq!(config.logs.retention_size, 0);
        let config = Config::parse("logs:\n  retention_size: 5GiB\n", no_env()).unwrap();
        assert_eq!(config.logs.retention_size, 5 << 30);
        let config = Config::parse("logs:\n  retention: 0s\n", no_env()).unwrap();
        let error = config.validate().unwrap_err();
        assert!(error.to_string().contains("logs.retention"), "{error}");
        let config = Config::parse("logs:\n  correlation_fields: ['']\n", no_env()).unwrap();
        assert!(config.validate().is_err());
    }

    #[test]
    fn the_example_config_in_the_docs_is_valid() {
        let example = include_str!("../docs/vigil.example.yml");
        let config = Config::parse(example, no_env()).unwrap();
        config.validate().unwrap();
    }
}
