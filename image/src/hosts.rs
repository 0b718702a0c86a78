//! Per-registry host configuration, compatible with containerd's `hosts.toml`
//! (`<config_path>/<host>/hosts.toml`, falling back to `<config_path>/_default/hosts.toml`):
//! mirrors tried in order, then the server; plain HTTP, `skip_verify`, `ca`, `override_path`,
//! extra headers and `capabilities`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::reference::DOCKER_HUB;

/// What a host may be used for. Resolving a tag needs `resolve`; fetching by digest needs `pull`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    pub pull: bool,
    pub resolve: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
    };
}

/// One place to fetch from: a mirror or the registry itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryHost {
    /// `scheme://host[:port]`.
    pub origin: String,
    /// The API root path: `<path>/v2`, or `<path>` itself with `override_path`.
    pub api_path: String,
    pub capabilities: Capabilities,
    pub skip_verify: bool,
    /// PEM files with extra roots to trust.
    pub ca: Vec<PathBuf>,
    pub headers: Vec<(String, String)>,
    /// The registry host this serves when it is a mirror (containerd's `?ns=` query).
    pub namespace: Option<String>,
}

impl RegistryHost {
    /// `origin + api_path + suffix` with the mirror's `ns` query when there is one.
    pub fn url(&self, suffix: &str) -> String {
        match &self.namespace {
            Some(ns) => format!("{}{}{suffix}?ns={ns}", self.origin, self.api_path),
            None => format!("{}{}{suffix}", self.origin, self.api_path),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error("registry host config {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Default, Deserialize)]
struct HostsFile {
    server: Option<String>,
    #[serde(flatten)]
    settings: HostSettings,
    #[serde(default)]
    host: toml::Table,
}

#[derive(Debug, Default, Deserialize)]
struct HostSettings {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<StringOrList>,
    #[allow(dead_code)]
    client: Option<toml::Value>,
    override_path: Option<bool>,
    header: Option<BTreeMap<String, StringOrList>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum StringOrList {
    One(String),
    Many(Vec<String>),
}

impl StringOrList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringOrList::One(s) => vec![s],
            StringOrList::Many(v) => v,
        }
    }
}

/// The default upstream of a registry with no configuration.
fn default_server(registry: &str) -> String {
    if registry == DOCKER_HUB {
        return "https://registry-1.docker.io".to_string();
    }
    let host = registry
        .rsplit_once(':')
        .map(|(h, _)| h)
        .unwrap_or(registry);
    // As containerd: loopback registries speak plain HTTP unless told otherwise.
    if host == "localhost" || host == "127.0.0.1" || host == "[::1]" {
        format!("http://{registry}")
    } else {
        format!("https://{registry}")
    }
}

/// The hosts to try for `registry`, in order: the configured mirrors, then the server.
pub fn hosts_for(config_path: &Path, registry: &str) -> Result<Vec<RegistryHost>, HostsError> {
    let candidates = [
        config_path.join(registry).join("hosts.toml"),
        config_path.join("_default").join("hosts.toml"),
    ];
    for path in candidates {
        match std::fs::read_to_string(&path) {
            Ok(text) => return parse_hosts(&text, registry, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => continue,
            Err(e) => {
                return Err(HostsError::Invalid {
                    path,
                    message: format!("cannot read: {e}"),
                })
            }
        }
    }
    Ok(vec![host(
        &default_server(registry),
        registry,
        HostSettings::default(),
        false,
    )
    .unwrap_or_else(|_| {
        unreachable!("the default server URL is well formed")
    })])
}

/// Parses a hosts.toml for `registry`; `path` only names it in errors.
pub fn parse_hosts(
    text: &str,
    registry: &str,
    path: &Path,
) -> Result<Vec<RegistryHost>, HostsError> {
    let invalid = |message: String| HostsError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let file: HostsFile = toml::from_str(text).map_err(|e| invalid(e.message().to_string()))?;
    let mut hosts = Vec::new();
    // Mirrors keep the order they are written in (toml::Table preserves it with
    // `preserve_order`; without it, keys are sorted, so order is recovered from the text).
    let mut mirrors: Vec<(usize, String, toml::Value)> = file
        .host
        .into_iter()
        .map(|(k, v)| (text.find(&format!("\"{k}\"")).unwrap_or(usize::MAX), k, v))
        .collect();
    mirrors.sort_by_key(|(pos, _, _)| *pos);
    for (_, url, value) in mirrors {
        let settings: HostSettings = value
            .try_into()
            .map_err(|e: toml::de::Error| invalid(format!("host {url:?}: {}", e.message())))?;
        hosts.push(
            host(&url, registry, settings, true)
                .map_err(|m| invalid(format!("host {url:?}: {m}")))?,
        );
    }
    let server = file.server.unwrap_or_else(|| default_server(registry));
    hosts.push(
        host(&server, registry, file.settings, false)
            .map_err(|m| invalid(format!("server {server:?}: {m}")))?,
    );
    Ok(hosts)
}

fn host(
    url: &str,
    registry: &str,
    settings: HostSettings,
    mirror: bool,
) -> Result<RegistryHost, String> {
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("https", url),
    };
    if scheme != "http" && scheme != "https" {
        return Err(format!("scheme {scheme:?} is not http or https"));
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
        None => (rest, ""),
    };
    if authority.is_empty() {
        return Err("no host".to_string());
    }
    let api_path = if settings.override_path.unwrap_or(false) {
        path.to_string()
    } else {
        format!("{path}/v2")
    };
    let capabilities = match settings.capabilities {
        None => Capabilities::ALL,
        Some(list) => Capabilities {
            pull: list.iter().any(|c| c == "pull"),
            resolve: list.iter().any(|c| c == "resolve"),
        },
    };
    let mut headers = Vec::new();
    for (name, values) in settings.header.unwrap_or_default() {
        for v in values.into_vec() {
            headers.push((name.clone(), v));
        }
    }
    let origin = format!("{scheme}://{authority}");
    // A mirror on another host is told which registry it stands in for, as containerd does.
    let namespace = (mirror && authority != registry).then(|| registry.to_string());
    Ok(RegistryHost {
        origin,
        api_path,
        capabilities,
        skip_verify: settings.skip_verify.unwrap_or(false),
        ca: settings
            .ca
            .map(|c| c.into_vec().into_iter().map(PathBuf::from).collect())
            .unwrap_or_default(),
        headers,
        namespace,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, registry: &str) -> Vec<RegistryHost> {
        parse_hosts(text, registry, Path::new("/etc/berth/certs.d/x/hosts.toml")).unwrap()
    }

    #[test]
    fn server_only_gets_v2_and_all_capabilities() {
        let h = parse("server = \"http://127.0.0.1:5000\"\n", "docker.io");
        assert_eq!(h.len(), 1);
        assert_eq!(h[0].origin, "http://127.0.0.1:5000");
        assert_eq!(h[0].api_path, "/v2");
        assert_eq!(h[0].capabilities, Capabilities::ALL);
        assert_eq!(h[0].namespace, None);
        assert_eq!(
            h[0].url("/library/busybox/manifests/latest"),
            "http://127.0.0.1:5000/v2/library/busybox/manifests/latest"
        );
    }

    #[test]
    fn mirrors_come_first_in_file_order_then_the_server() {
        let text = r#"
server = "https://registry-1.docker.io"

[host."https://zzz-mirror.example"]
  capabilities = ["pull"]

[host."http://aaa-mirror.example:5000/base"]
  capabilities = ["pull", "resolve"]
  skip_verify = true
  ca = ["/etc/ca1.pem", "/etc/ca2.pem"]
  [host."http://aaa-mirror.example:5000/base".header]
    x-token = "abc"
    x-multi = ["1", "2"]

[host."https://override.example/custom/api"]
  override_path = true
"#;
        let h = parse(text, "docker.io");
        let origins: Vec<_> = h.iter().map(|h| h.origin.as_str()).collect();
        assert_eq!(
            origins,
            [
                "https://zzz-mirror.example",
                "http://aaa-mirror.example:5000",
                "https://override.example",
                "https://registry-1.docker.io"
            ]
        );
        assert_eq!(
            h[0].capabilities,
            Capabilities {
                pull: true,
                resolve: false
            }
        );
        assert_eq!(h[1].api_path, "/base/v2");
        assert!(h[1].skip_verify);
        assert_eq!(
            h[1].ca,
            [PathBuf::from("/etc/ca1.pem"), PathBuf::from("/etc/ca2.pem")]
        );
        assert!(h[1]
            .headers
            .contains(&("x-token".to_string(), "abc".to_string())));
        assert!(h[1]
            .headers
            .contains(&("x-multi".to_string(), "2".to_string())));
        assert_eq!(h[1].namespace.as_deref(), Some("docker.io"));
        assert_eq!(
            h[1].url("/x/manifests/1"),
            "http://aaa-mirror.example:5000/base/v2/x/manifests/1?ns=docker.io"
        );
        assert_eq!(h[2].api_path, "/custom/api");
        assert_eq!(h[3].namespace, None);
    }

    #[test]
    fn no_server_means_the_registry_itself() {
        let h = parse("[host.\"http://m.example\"]\n", "quay.io");
        assert_eq!(h.last().unwrap().origin, "https://quay.io");
    }

    #[test]
    fn missing_config_uses_defaults() {
        let dir = Path::new("/nonexistent/berth-hosts");
        assert_eq!(
            hosts_for(dir, "docker.io").unwrap()[0].origin,
            "https://registry-1.docker.io"
        );
        assert_eq!(
            hosts_for(dir, "localhost:5000").unwrap()[0].origin,
            "http://localhost:5000"
        );
        assert_eq!(
            hosts_for(dir, "127.0.0.1:5000").unwrap()[0].origin,
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            hosts_for(dir, "ghcr.io").unwrap()[0].origin,
            "https://ghcr.io"
        );
    }

    #[test]
    fn bad_files_name_the_problem() {
        let err =
            parse_hosts("server = \"ftp://x\"\n", "docker.io", Path::new("/h.toml")).unwrap_err();
        assert!(err.to_string().contains("ftp"), "{err}");
        let err = parse_hosts("server = 5\n", "docker.io", Path::new("/h.toml")).unwrap_err();
        assert!(err.to_string().contains("/h.toml"), "{err}");
    }
}
