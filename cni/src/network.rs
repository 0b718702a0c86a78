//! Network configuration: which file in `conf_dir` is the network, and what it says.
//!
//! Follows libcni (`libcni/conf.go`): candidate files are `*.conflist`, `*.conf` and `*.json`,
//! sorted by name; a `.conflist` holds `{name, cniVersion, plugins: [...]}`, any other holds one
//! plugin and becomes a one-plugin list. Unlike containerd, which stops at the first file that
//! fails to parse, the first file that parses wins (as CRI-O and the old kubelet did); the files
//! skipped on the way are logged and named in the error when none is usable.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

/// Extensions libcni reads, in the order containerd passes them (order does not matter: files
/// are sorted by name).
const EXTENSIONS: [&str; 3] = ["conf", "conflist", "json"];

/// Spec versions whose results this crate reads (0.3.0 introduced today's result layout).
const SUPPORTED_VERSIONS: [&str; 5] = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// A network: a named, versioned list of plugins, run in order on ADD.
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    /// `name`, injected into every plugin's configuration.
    pub name: String,
    /// `cniVersion`, injected into every plugin's configuration.
    pub cni_version: String,
    /// `disableCheck`: CHECK succeeds without running plugins.
    pub disable_check: bool,
    pub plugins: Vec<PluginConf>,
    /// The file it was read from (empty for a network built in code).
    pub source: PathBuf,
}

/// One plugin of a network, with its configuration exactly as written.
#[derive(Debug, Clone, PartialEq)]
pub struct PluginConf {
    /// `type`: the executable's file name.
    pub plugin_type: String,
    /// The runtime capabilities it asks for (`"capabilities": {"portMappings": true}`).
    pub capabilities: BTreeSet<String>,
    /// The whole object, handed to the plugin with `name`/`cniVersion`/`prevResult`/
    /// `runtimeConfig` injected. Keeping it raw keeps every plugin-specific key intact.
    pub conf: Map<String, Value>,
}

/// Why no network could be loaded from `conf_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// No candidate file at all (or the directory does not exist).
    NotFound { dir: PathBuf },
    /// The directory could not be listed.
    ReadDir { dir: PathBuf, message: String },
    /// Candidates exist but none is usable; each with the reason.
    Invalid {
        dir: PathBuf,
        rejected: Vec<(PathBuf, String)>,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::NotFound { dir } => {
                write!(f, "no network config found in {}", dir.display())
            }
            ConfigError::ReadDir { dir, message } => {
                write!(
                    f,
                    "cannot read network config dir {}: {message}",
                    dir.display()
                )
            }
            ConfigError::Invalid { dir, rejected } => {
                write!(f, "no valid network config in {}: ", dir.display())?;
                for (i, (path, reason)) in rejected.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "{}: {reason}", path.display())?;
                }
                Ok(())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// The candidate files of `dir`, sorted by name: regular files (or symlinks to them) ending in
/// `.conflist`, `.conf` or `.json`. A missing directory has none.
pub(crate) fn candidate_files(dir: &Path) -> Result<Vec<PathBuf>, ConfigError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(ConfigError::ReadDir {
                dir: dir.to_path_buf(),
                message: e.to_string(),
            })
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path())
        .filter(|path| {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            EXTENSIONS.contains(&ext) && !path.is_dir()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Loads the network of `dir`: the first candidate file by name that parses and validates.
pub fn load_network(dir: &Path) -> Result<Network, ConfigError> {
    let files = candidate_files(dir)?;
    if files.is_empty() {
        return Err(ConfigError::NotFound {
            dir: dir.to_path_buf(),
        });
    }
    let mut rejected: Vec<(PathBuf, String)> = Vec::new();
    for path in files {
        match Network::from_file(&path) {
            Ok(network) => {
                for (skipped, reason) in &rejected {
                    tracing::warn!(
                        file = %skipped.display(),
                        using = %path.display(),
                        "skipping invalid CNI network config: {reason}"
                    );
                }
                return Ok(network);
            }
            Err(reason) => rejected.push((path, reason)),
        }
    }
    Err(ConfigError::Invalid {
        dir: dir.to_path_buf(),
        rejected,
    })
}

impl Network {
    /// Reads one file: a `.conflist` as a list, anything else as a single plugin. The error is
    /// the reason only; callers prefix the file name.
    pub fn from_file(path: &Path) -> Result<Network, String> {
        let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
        let mut network = if path.extension().and_then(|e| e.to_str()) == Some("conflist") {
            Network::from_conflist_bytes(&bytes)?
        } else {
            Network::from_conf_bytes(&bytes)?
        };
        network.source = path.to_path_buf();
        Ok(network)
    }

    /// The network as a configuration list that [`Network::from_conflist_bytes`] reads back
    /// (a network read from a single `.conf` becomes a list of its one plugin).
    pub fn to_conflist(&self) -> Value {
        let mut list = Map::new();
        list.insert("cniVersion".into(), Value::String(self.cni_version.clone()));
        list.insert("name".into(), Value::String(self.name.clone()));
        if self.disable_check {
            list.insert("disableCheck".into(), Value::Bool(true));
        }
        let plugins = self
            .plugins
            .iter()
            .map(|p| Value::Object(p.conf.clone()))
            .collect();
        list.insert("plugins".into(), Value::Array(plugins));
        Value::Object(list)
    }

    /// Parses a configuration list (`.conflist`).
    pub fn from_conflist_bytes(bytes: &[u8]) -> Result<Network, String> {
        let obj = parse_object(bytes)?;
        let name = required_string(&obj, "name")?;
        let cni_version = required_string(&obj, "cniVersion")?;
        let disable_check = optional_bool(&obj, "disableCheck")?;
        let plugins = match obj.get("plugins") {
            None => return Err("no \"plugins\" list".to_string()),
            Some(Value::Array(plugins)) if plugins.is_empty() => {
                return Err("\"plugins\" is empty".to_string())
            }
            Some(Value::Array(plugins)) => plugins
                .iter()
                .enumerate()
                .map(|(i, p)| match p {
                    Value::Object(conf) => PluginConf::from_object(conf.clone())
                        .map_err(|e| format!("plugins[{i}]: {e}")),
                    other => Err(format!(
                        "plugins[{i}]: expected an object, found {}",
                        kind(other)
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?,
            Some(other) => {
                return Err(format!("\"plugins\" must be a list, found {}", kind(other)))
            }
        };
        Network::validated(name, cni_version, disable_check, plugins)
    }

    /// Parses a single plugin configuration (`.conf`, `.json`) as a one-plugin list.
    pub fn from_conf_bytes(bytes: &[u8]) -> Result<Network, String> {
        let obj = parse_object(bytes)?;
        if !obj.contains_key("type") && obj.contains_key("plugins") {
            return Err(
                "no \"type\": this holds a plugin list; name the file *.conflist".to_string(),
            );
        }
        let name = required_string(&obj, "name")?;
        let cni_version = required_string(&obj, "cniVersion")?;
        let plugin = PluginConf::from_object(obj)?;
        Network::validated(name, cni_version, false, vec![plugin])
    }

    fn validated(
        name: String,
        cni_version: String,
        disable_check: bool,
        plugins: Vec<PluginConf>,
    ) -> Result<Network, String> {
        // libcni's ValidateNetworkName: the name becomes part of file and chain names.
        if !is_valid_name(&name) {
            return Err(format!(
                "invalid network name {name:?}: use letters, digits, '_', '.', '-', starting with a letter or digit"
            ));
        }
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(format!(
                "cniVersion {cni_version:?} is not supported (berth speaks {})",
                SUPPORTED_VERSIONS.join(", ")
            ));
        }
        Ok(Network {
            name,
            cni_version,
            disable_check,
            plugins,
            source: PathBuf::new(),
        })
    }

    /// The version as (major, minor, patch); validated at load, so parsing cannot fail here.
    pub(crate) fn version(&self) -> (u32, u32, u32) {
        parse_version(&self.cni_version).unwrap_or((0, 0, 0))
    }

    /// Whether the network speaks 0.4.0 or later: CHECK exists and DEL receives the cached
    /// result (libcni's `DelNetworkList`, `CheckNetworkList`).
    pub(crate) fn has_check_and_cached_del(&self) -> bool {
        self.version() >= (0, 4, 0)
    }
}

impl PluginConf {
    /// Validates one plugin object: a `type` naming an executable, `capabilities` of booleans.
    pub fn from_object(conf: Map<String, Value>) -> Result<PluginConf, String> {
        let plugin_type = required_string(&conf, "type")?;
        // libcni's FindInPath refuses a type with a path separator: it names a file in bin_dirs.
        if plugin_type.contains('/') || plugin_type == "." || plugin_type == ".." {
            return Err(format!("invalid plugin type {plugin_type:?}"));
        }
        let capabilities = match conf.get("capabilities") {
            None | Some(Value::Null) => BTreeSet::new(),
            Some(Value::Object(caps)) => {
                let mut enabled = BTreeSet::new();
                for (cap, on) in caps {
                    match on {
                        Value::Bool(true) => {
                            enabled.insert(cap.clone());
                        }
                        Value::Bool(false) => {}
                        other => {
                            return Err(format!(
                                "capabilities.{cap} must be true or false, found {}",
                                kind(other)
                            ))
                        }
                    }
                }
                enabled
            }
            Some(other) => {
                return Err(format!(
                    "\"capabilities\" must be an object, found {}",
                    kind(other)
                ))
            }
        };
        Ok(PluginConf {
            plugin_type,
            capabilities,
            conf,
        })
    }
}

fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(obj)) => Ok(obj),
        Ok(other) => Err(format!("expected a JSON object, found {}", kind(&other))),
        Err(e) => Err(format!("invalid JSON: {e}")),
    }
}

fn required_string(obj: &Map<String, Value>, key: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(format!("\"{key}\" is empty")),
        None | Some(Value::Null) => Err(format!("no \"{key}\"")),
        Some(other) => Err(format!("\"{key}\" must be a string, found {}", kind(other))),
    }
}

/// libcni accepts a JSON boolean or the strings "true"/"false" in any case.
fn optional_bool(obj: &Map<String, Value>, key: &str) -> Result<bool, String> {
    match obj.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("true") => Ok(true),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("false") => Ok(false),
        Some(other) => Err(format!("\"{key}\" must be true or false, found {other}")),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The CNI rule for network names and container ids: `^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$`.
pub(crate) fn is_valid_name(value: &str) -> bool {
    let mut chars = value.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

pub(crate) fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    let version = (parts.next()??, parts.next()??, parts.next()??);
    parts.next().is_none().then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE_CONFLIST: &str = r#"{
      "cniVersion": "1.0.0", "name": "podnet",
      "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": true,
         "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.22.0.0/16"}]]}},
        {"type": "portmap", "capabilities": {"portMappings": true, "other": false}}
      ]
    }"#;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn conflist_keeps_plugins_in_order_with_their_raw_config() {
        let net = Network::from_conflist_bytes(BRIDGE_CONFLIST.as_bytes()).unwrap();
        assert_eq!(net.name, "podnet");
        assert_eq!(net.cni_version, "1.0.0");
        assert!(!net.disable_check);
        let types: Vec<_> = net.plugins.iter().map(|p| p.plugin_type.as_str()).collect();
        assert_eq!(types, ["bridge", "portmap"]);
        assert_eq!(net.plugins[0].conf["bridge"], "cni0");
        assert!(net.plugins[0].capabilities.is_empty());
        assert_eq!(
            net.plugins[1].capabilities.iter().collect::<Vec<_>>(),
            ["portMappings"]
        );
    }

    #[test]
    fn single_conf_becomes_a_one_plugin_list() {
        let net = Network::from_conf_bytes(
            br#"{"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}"#,
        )
        .unwrap();
        assert_eq!(net.name, "lo");
        assert_eq!(net.plugins.len(), 1);
        assert_eq!(net.plugins[0].plugin_type, "loopback");
    }

    #[test]
    fn invalid_configs_are_rejected_with_the_reason() {
        let cases: &[(&str, &str)] = &[
            ("not json", "invalid JSON"),
            ("[]", "expected a JSON object"),
            (
                r#"{"cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                "no \"name\"",
            ),
            (
                r#"{"name":"n","plugins":[{"type":"bridge"}]}"#,
                "no \"cniVersion\"",
            ),
            (
                r#"{"name":"n","cniVersion":"9.9.9","plugins":[{"type":"bridge"}]}"#,
                "cniVersion \"9.9.9\" is not supported",
            ),
            (
                r#"{"name":"n","cniVersion":"0.2.0","plugins":[{"type":"bridge"}]}"#,
                "not supported",
            ),
            (
                r#"{"name":"bad name","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
                "invalid network name",
            ),
            (r#"{"name":"n","cniVersion":"1.0.0"}"#, "no \"plugins\""),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[]}"#,
                "\"plugins\" is empty",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":{}}"#,
                "must be a list",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"bridge":"x"}]}"#,
                "plugins[0]: no \"type\"",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"bridge"},3]}"#,
                "plugins[1]: expected an object",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"../bin/sh"}]}"#,
                "invalid plugin type",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","plugins":[{"type":"p","capabilities":{"portMappings":"yes"}}]}"#,
                "capabilities.portMappings must be true or false",
            ),
            (
                r#"{"name":"n","cniVersion":"1.0.0","disableCheck":"maybe","plugins":[{"type":"p"}]}"#,
                "\"disableCheck\" must be true or false",
            ),
        ];
        for (text, want) in cases {
            let err = Network::from_conflist_bytes(text.as_bytes()).unwrap_err();
            assert!(err.contains(want), "{text}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn disable_check_accepts_a_string_like_libcni() {
        let net = Network::from_conflist_bytes(
            br#"{"name":"n","cniVersion":"1.0.0","disableCheck":"TRUE","plugins":[{"type":"p"}]}"#,
        )
        .unwrap();
        assert!(net.disable_check);
    }

    #[test]
    fn conflist_in_a_conf_file_gets_a_hint() {
        let err = Network::from_conf_bytes(BRIDGE_CONFLIST.as_bytes()).unwrap_err();
        assert!(err.contains("*.conflist"), "{err}");
    }

    #[test]
    fn load_picks_the_first_file_by_name() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "20-second.conflist",
            &BRIDGE_CONFLIST.replace("podnet", "second"),
        );
        write(
            dir.path(),
            "10-first.conf",
            r#"{"cniVersion":"1.0.0","name":"first","type":"bridge"}"#,
        );
        write(dir.path(), "00-ignored.txt", "not a config");
        std::fs::create_dir(dir.path().join("05-dir.conf")).unwrap();
        let net = load_network(dir.path()).unwrap();
        assert_eq!(net.name, "first");
        assert_eq!(net.source, dir.path().join("10-first.conf"));
    }

    #[test]
    fn load_skips_invalid_files_for_a_later_valid_one() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "10-broken.conflist", "{");
        write(
            dir.path(),
            "20-good.json",
            r#"{"cniVersion":"0.4.0","name":"good","type":"bridge"}"#,
        );
        assert_eq!(load_network(dir.path()).unwrap().name, "good");
    }

    #[test]
    fn load_reports_an_empty_or_missing_dir() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_network(dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("no network config found in {}", dir.path().display())
        );
        let missing = dir.path().join("nope");
        assert!(matches!(
            load_network(&missing),
            Err(ConfigError::NotFound { .. })
        ));
    }

    #[test]
    fn load_names_every_rejected_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "10-a.conflist", "{");
        write(
            dir.path(),
            "20-b.conf",
            r#"{"cniVersion":"1.0.0","name":"b"}"#,
        );
        let msg = load_network(dir.path()).unwrap_err().to_string();
        assert!(msg.starts_with("no valid network config in "), "{msg}");
        assert!(msg.contains("10-a.conflist: invalid JSON"), "{msg}");
        assert!(msg.contains("20-b.conf: no \"type\""), "{msg}");
    }

    #[test]
    fn versions_parse_strictly() {
        assert_eq!(parse_version("1.0.0"), Some((1, 0, 0)));
        assert_eq!(parse_version("0.4"), None);
        assert_eq!(parse_version("1.0.0.1"), None);
        assert_eq!(parse_version("a.b.c"), None);
    }
}
