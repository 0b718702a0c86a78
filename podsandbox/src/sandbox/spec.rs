//! What a pod sandbox is asked to be: the CRI layer translates `PodSandboxConfig` into this,
//! so nothing here knows CRI message types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How a pod uses one kind of namespace (CRI `NamespaceMode`): the same type containers use.
pub use berth_runtime::spec::{IdMapping, NamespaceMode, UserNamespace};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NamespaceModes {
    pub network: NamespaceMode,
    pub pid: NamespaceMode,
    pub ipc: NamespaceMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DnsSpec {
    pub servers: Vec<String>,
    pub searches: Vec<String>,
    pub options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// `tcp`, `udp` or `sctp`.
    pub protocol: String,
    pub container_port: i32,
    pub host_port: i32,
    pub host_ip: String,
}

/// The pod's identity: kubelet retries with the same one and expects the same sandbox back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
pub struct PodMetadata {
    pub name: String,
    pub uid: String,
    pub namespace: String,
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxSpec {
    pub metadata: PodMetadata,
    pub hostname: String,
    pub log_directory: String,
    pub dns: Option<DnsSpec>,
    pub port_mappings: Vec<PortMapping>,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub cgroup_parent: String,
    pub namespaces: NamespaceModes,
    pub sysctls: BTreeMap<String, String>,
    pub runtime_handler: String,
    /// Whether the pod may run privileged containers (its security context's `privileged`).
    #[serde(default)]
    pub privileged: bool,
    /// The pod's own user namespace (CRI `userns_options` mode POD); `None`: the host's.
    #[serde(default)]
    pub userns: Option<UserNamespace>,
}

impl SandboxSpec {
    pub fn host_network(&self) -> bool {
        self.namespaces.network == NamespaceMode::Node
    }

    pub fn host_ipc(&self) -> bool {
        self.namespaces.ipc == NamespaceMode::Node
    }
}

/// `/etc/resolv.conf` for the pod: from its DNS config, or the host's file as is.
pub fn resolv_conf(dns: Option<&DnsSpec>, host: &str) -> String {
    match dns {
        Some(d) if !(d.servers.is_empty() && d.searches.is_empty() && d.options.is_empty()) => {
            let mut out = String::new();
            if !d.searches.is_empty() {
                out.push_str(&format!("search {}\n", d.searches.join(" ")));
            }
            for s in &d.servers {
                out.push_str(&format!("nameserver {s}\n"));
            }
            if !d.options.is_empty() {
                out.push_str(&format!("options {}\n", d.options.join(" ")));
            }
            out
        }
        _ => host.to_string(),
    }
}

/// `/etc/hosts` for the pod, as containerd writes it.
pub fn hosts_file(hostname: &str, ip: Option<&str>) -> String {
    let mut out = String::from(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\n\
         fe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n",
    );
    if let (Some(ip), false) = (ip, hostname.is_empty()) {
        out.push_str(&format!("{ip}\t{hostname}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_from_dns_config_or_host() {
        let dns = DnsSpec {
            servers: vec!["10.96.0.10".into()],
            searches: vec![
                "default.svc.cluster.local".into(),
                "svc.cluster.local".into(),
            ],
            options: vec!["ndots:5".into()],
        };
        assert_eq!(
            resolv_conf(Some(&dns), "nameserver 1.1.1.1\n"),
            "search default.svc.cluster.local svc.cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
        );
        assert_eq!(
            resolv_conf(None, "nameserver 1.1.1.1\n"),
            "nameserver 1.1.1.1\n"
        );
        assert_eq!(resolv_conf(Some(&DnsSpec::default()), "host\n"), "host\n");
    }

    #[test]
    fn hosts_file_names_the_pod() {
        let h = hosts_file("web-0", Some("10.88.0.5"));
        assert!(h.starts_with("127.0.0.1\tlocalhost\n"));
        assert!(h.ends_with("10.88.0.5\tweb-0\n"));
        assert!(!hosts_file("web-0", None).contains("web-0"));
    }
}
