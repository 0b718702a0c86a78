//! berthd's configuration: `/etc/berth/config.toml`, every key optional with a default.
//!
//! Sections owned by a lower crate (`[cni]`, `[registry]`, `[runtime]`) are that crate's typed
//! structs; this module composes them, parses the file and validates what serde cannot.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use berth_cni::CniConfig;
use berth_image::RegistryConfig;
use berth_runtime::RuntimeConfig;
use berth_streaming::StreamingConfig;
use serde::{Deserialize, Serialize};

/// Where berthd looks for its configuration when `--config` is not given.
pub const DEFAULT_PATH: &str = "/etc/berth/config.toml";

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Persistent data: content blobs, layer snapshots, metadata.
    pub root: PathBuf,
    /// Volatile state: pods, containers, monitor sockets, the agent's lock.
    pub state: PathBuf,
    pub grpc: GrpcConfig,
    pub metrics: MetricsConfig,
    pub log: LogConfig,
    pub events: EventsConfig,
    pub streaming: StreamingConfig,
    pub cni: CniConfig,
    pub registry: RegistryConfig,
    pub runtime: RuntimeConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/var/lib/berth"),
            state: PathBuf::from("/run/berth"),
            grpc: GrpcConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
            events: EventsConfig::default(),
            streaming: StreamingConfig::default(),
            cni: CniConfig::default(),
            registry: RegistryConfig::default(),
            runtime: RuntimeConfig::default(),
        }
    }
}

/// `[grpc]`: the CRI socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrpcConfig {
    /// Unix socket kubelet and crictl connect to.
    pub address: PathBuf,
    /// On SIGTERM, how long in-flight RPCs may take to finish before berthd exits anyway.
    pub shutdown_timeout_secs: u64,
    /// The group that owns the socket (mode 0660), as containerd's `[grpc] gid`: its members
    /// may use the CRI (crictl as a non-root operator). 0 keeps it root's alone.
    pub gid: u32,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        Self {
            address: PathBuf::from("/run/berth/berth.sock"),
            shutdown_timeout_secs: 10,
            gid: 0,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// `host:port` serving `/metrics`; empty turns the endpoint off.
    pub address: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:9810".to_string(),
        }
    }
}

/// `[log]`: what berthd writes to stderr.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter (`info`, `debug`, `berth_cri=debug,info`); `RUST_LOG` overrides it.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_string(),
            format: LogFormat::Text,
        }
    }
}

/// `[events]`: GetContainerEvents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Events a subscriber may fall behind before its stream is ended (it must subscribe again).
    pub queue: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            queue: berth_podsandbox::events::DEFAULT_QUEUE,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// `berthd config default`: every key, its default and what it does. A unit test keeps this in
/// step with `Config::default()`.
pub const DEFAULT_TOML: &str = r#"# berthd configuration. Every key is optional; these are the defaults.
root = "/var/lib/berth"          # persistent data: content blobs, layer snapshots, metadata
state = "/run/berth"             # volatile state: pods, containers, monitor sockets, the lock file

[grpc]
address = "/run/berth/berth.sock"  # CRI unix socket (0660; a directory made for it 0700, the state dir 0711)
shutdown_timeout_secs = 10         # on SIGTERM, how long in-flight RPCs may run before exit
gid = 0                            # group owning the socket; not 0: that group may use the CRI (the directory is made 0710)

[metrics]
address = "127.0.0.1:9810"       # Prometheus /metrics endpoint; "" turns it off

[log]
level = "info"                   # tracing filter, e.g. "debug" or "berth_cri=debug,info"; RUST_LOG wins
format = "text"                  # "text" or "json"

[events]
queue = 1024                     # GetContainerEvents: events a subscriber may lag before it is cut off

[streaming]
address = "127.0.0.1:0"             # exec/attach/port-forward HTTP server; port 0 picks a free one (URLs carry it)
token_ttl_secs = 60                 # how long an Exec/Attach/PortForward URL waits for its client
stream_creation_timeout_secs = 30   # how long a client has to send its request headers, then to open its streams
idle_timeout_secs = 14400           # a session with nothing received for this long is closed

[cni]
conf_dir = "/etc/cni/net.d"                    # network configs, first *.conflist/*.conf by name
bin_dirs = ["/opt/cni/bin", "/usr/lib/cni"]    # where CNI plugin executables are searched, in order

[registry]
config_path = "/etc/berth/certs.d"   # containerd-style <host>/hosts.toml mirrors and TLS settings
max_concurrent_downloads = 3         # layers downloaded at once, across all pulls
pull_progress_timeout_secs = 300     # a pull with no byte received for this long fails
max_layer_bytes = 68719476736       # 64 GiB: file content one layer may unpack to, holes included (a gzip/zstd bomb stops here)
min_free_bytes = 536870912          # 512 MiB: a pull fails cleanly when the snapshot filesystem has less free

[runtime]
cgroup_driver = "cgroupfs"       # as kubelet's cgroupDriver: "cgroupfs", or "systemd" (pods in slices, containers in scopes; needs systemd as init)
default_seccomp = "unconfined"   # a container that names no seccomp profile: "unconfined" or "runtime/default"
monitor_standby = true           # keep one pod monitor started ahead (`berthd monitor-standby`, ~0.4 MiB RSS): RunPodSandbox skips its exec
exec_standby = true              # keep one executor started ahead (`berthd init exec-standby`, ~0.4 MiB RSS): ExecSync skips its spawn and start-up
"#;

/// Why a configuration could not be used. Every message is one line naming the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path}: line {line}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        message: String,
    },
}

impl Config {
    /// Loads the configuration. A missing file at the default path means all defaults; a path
    /// the operator named explicitly must exist.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p, true),
            None => (Path::new(DEFAULT_PATH), false),
        };
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => {
                return Ok(Config::default());
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                })
            }
        };
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let parse_error = |line: usize, message: String| ConfigError::Parse {
            path: path.to_path_buf(),
            line,
            message,
        };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| parse_error(line_of(text, e.span()), e.message().to_string()))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let line = line_of(text, inner.span());
            let message = one_line(inner.message());
            if key.is_empty() || key == "." {
                parse_error(line, message)
            } else {
                parse_error(line, format!("key `{key}`: {message}"))
            }
        })?;
        config.validate(path)?;
        Ok(config)
    }

    /// Checks what the types alone cannot.
    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        for (key, p) in [
            ("root", &self.root),
            ("state", &self.state),
            ("grpc.address", &self.grpc.address),
            ("cni.conf_dir", &self.cni.conf_dir),
            ("registry.config_path", &self.registry.config_path),
        ] {
            if !p.is_absolute() {
                return Err(invalid(
                    key,
                    format!("{} is not an absolute path", p.display()),
                ));
            }
        }
        if self.events.queue == 0 {
            return Err(invalid("events.queue", "must be at least 1".to_string()));
        }
        if self.streaming.address.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "streaming.address",
                format!(
                    "{:?} is not host:port with a numeric IP (e.g. \"127.0.0.1:0\")",
                    self.streaming.address
                ),
            ));
        }
        for (key, secs) in [
            ("streaming.token_ttl_secs", self.streaming.token_ttl_secs),
            (
                "streaming.stream_creation_timeout_secs",
                self.streaming.stream_creation_timeout_secs,
            ),
            (
                "streaming.idle_timeout_secs",
                self.streaming.idle_timeout_secs,
            ),
        ] {
            if secs == 0 {
                return Err(invalid(key, "must be at least 1".to_string()));
            }
        }
        if self.root == self.state {
            return Err(invalid("state", "must differ from root".to_string()));
        }
        // sun_path holds 108 bytes including the terminating NUL.
        if self.grpc.address.as_os_str().len() > 107 {
            return Err(invalid(
                "grpc.address",
                "a unix socket path must be at most 107 bytes".to_string(),
            ));
        }
        if !self.metrics.address.is_empty() && self.metrics.address.parse::<SocketAddr>().is_err() {
            return Err(invalid(
                "metrics.address",
                format!(
                    "{:?} is not host:port with a numeric IP (e.g. \"127.0.0.1:9810\"), nor \"\"",
                    self.metrics.address
                ),
            ));
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            return Err(invalid("log.level", format!("{:?}: {e}", self.log.level)));
        }
        Ok(())
    }

    /// The metrics endpoint's address, or None when it is turned off.
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics.address.parse().ok()
    }
}

/// The 1-based line holding byte offset `span.start`.
fn line_of(text: &str, span: Option<std::ops::Range<usize>>) -> usize {
    let offset = span.map(|s| s.start).unwrap_or(0).min(text.len());
    text[..offset].bytes().filter(|&b| b == b'\n').count() + 1
}

fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_runtime::CgroupDriver;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/berth/config.toml"))
    }

    #[test]
    fn default_toml_is_exactly_the_defaults() {
        assert_eq!(parse(DEFAULT_TOML).unwrap(), Config::default());
    }

    #[test]
    fn default_toml_names_every_key() {
        // Every key the serializer knows must be printed by `berthd config default`.
        let defaults = toml::Value::try_from(Config::default()).unwrap();
        let printed: toml::Value = toml::from_str(DEFAULT_TOML).unwrap();
        assert_eq!(defaults, printed);
    }

    #[test]
    fn deploy_example_is_the_default_config() {
        assert_eq!(include_str!("../deploy/config.toml"), DEFAULT_TOML);
    }

    #[test]
    fn the_operators_guide_shows_exactly_what_berthd_config_default_prints() {
        let guide = include_str!("../docs/operations.md");
        let begin = "<!-- berthd config default: begin -->\n```toml\n";
        let end = "```\n<!-- berthd config default: end -->";
        let start = guide.find(begin).expect("the begin marker") + begin.len();
        let stop = start + guide[start..].find(end).expect("the end marker");
        assert_eq!(&guide[start..stop], DEFAULT_TOML);
    }

    #[test]
    fn empty_file_means_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn missing_default_file_means_defaults_but_missing_named_file_is_an_error() {
        let missing = Path::new("/nonexistent/berth-test/config.toml");
        let err = Config::load(Some(missing)).unwrap_err().to_string();
        assert!(
            err.contains("/nonexistent/berth-test/config.toml: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn partial_sections_keep_other_defaults() {
        let c = parse("[grpc]\naddress = \"/tmp/x.sock\"\n").unwrap();
        assert_eq!(c.grpc.address, PathBuf::from("/tmp/x.sock"));
        assert_eq!(c.grpc.shutdown_timeout_secs, 10);
        assert_eq!(c.metrics, MetricsConfig::default());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = parse("root = \"/var/lib/b\"\n[grpc]\nadress = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("adress"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn wrong_type_is_named_with_its_key() {
        let err = parse("[grpc]\nshutdown_timeout_secs = \"ten\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("grpc.shutdown_timeout_secs"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn bad_enum_value_is_named() {
        let err = parse("[log]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(err.contains("log.format"), "{err}");
    }

    #[test]
    fn syntax_error_gives_its_line() {
        let err = parse("root = \"/a\"\nstate = \n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn relative_paths_are_rejected() {
        let err = parse("root = \"var/lib/berth\"\n").unwrap_err().to_string();
        assert!(
            err.contains("root: var/lib/berth is not an absolute path"),
            "{err}"
        );
    }

    #[test]
    fn metrics_address_may_be_empty_but_not_garbage() {
        assert_eq!(
            parse("[metrics]\naddress = \"\"\n")
                .unwrap()
                .metrics_address(),
            None
        );
        let err = parse("[metrics]\naddress = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("metrics.address"), "{err}");
    }

    #[test]
    fn cgroup_drivers_are_cgroupfs_and_systemd() {
        let config = parse("[runtime]\ncgroup_driver = \"systemd\"\n").unwrap();
        assert_eq!(config.runtime.cgroup_driver, CgroupDriver::Systemd);
        let err = parse("[runtime]\ncgroup_driver = \"cgroupv2\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("cgroup_driver"), "{err}");
    }

    #[test]
    fn bad_log_filter_is_refused() {
        let err = parse("[log]\nlevel = \"info,,=[\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("log.level"), "{err}");
    }
}
