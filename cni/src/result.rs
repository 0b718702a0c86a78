//! ADD results: kept as the plugin printed them (the next plugin and later CHECK/DEL get exactly
//! those bytes as `prevResult`), read through `rscni-types` for interfaces, IPs, routes and DNS.
//! Both layouts parse: 0.3.x/0.4.0 (`ips[].version`) and 1.0.0+.

use std::net::IpAddr;

use rscni_types::types::{CNIResult, Dns, Interface, IpConfig, Route};
use serde_json::Value;

/// A plugin's ADD result.
#[derive(Debug, Clone, PartialEq)]
pub struct CniResult {
    raw: Value,
    parsed: CNIResult,
}

/// The pod's addresses as CRI reports them: `PodSandboxStatus.network.ip` and `additional_ips`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodIps {
    pub primary: Option<IpAddr>,
    pub additional: Vec<IpAddr>,
}

impl CniResult {
    /// Reads a result from a plugin's JSON output.
    pub fn from_json(raw: Value) -> Result<CniResult, String> {
        if !raw.is_object() {
            return Err(format!("expected a JSON object, found {raw}"));
        }
        if let Some(v) = raw.get("cniVersion") {
            if !v.is_string() {
                return Err(format!("cniVersion must be a string, found {v}"));
            }
        }
        // Results before 0.3.0 used `ip4`/`ip6` objects; this layout is not read.
        if raw.get("ip4").is_some() || raw.get("ip6").is_some() {
            return Err("pre-0.3.0 result layout (ip4/ip6) is not supported".to_string());
        }
        let parsed: CNIResult = serde_json::from_value(raw.clone()).map_err(|e| e.to_string())?;
        Ok(CniResult { raw, parsed })
    }

    /// Reads a result from bytes (a plugin's stdout, a cache file's field).
    pub fn from_slice(bytes: &[u8]) -> Result<CniResult, String> {
        let raw: Value = serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        CniResult::from_json(raw)
    }

    /// The result exactly as the plugin printed it.
    pub fn raw(&self) -> &Value {
        &self.raw
    }

    /// The `cniVersion` the plugin reported ("" if none).
    pub fn cni_version(&self) -> &str {
        self.raw
            .get("cniVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn interfaces(&self) -> &[Interface] {
        &self.parsed.interfaces
    }

    pub fn ips(&self) -> &[IpConfig] {
        &self.parsed.ips
    }

    pub fn routes(&self) -> &[Route] {
        &self.parsed.routes
    }

    pub fn dns(&self) -> Option<&Dns> {
        self.parsed.dns.as_ref()
    }

    /// The pod's IPs on `ifname` (the sandbox interface, usually "eth0"), chosen like containerd:
    /// IPs whose `interface` index names a sandbox interface called `ifname`; the primary is the
    /// first IPv4 of them, else the first; the rest are additional. When no IP names such an
    /// interface (IPAM-only results omit `interface`), all IPs count.
    pub fn pod_ips(&self, ifname: &str) -> PodIps {
        let interfaces = &self.parsed.interfaces;
        let on_sandbox_if = |ip: &&IpConfig| {
            ip.interface
                .and_then(|i| interfaces.get(i as usize))
                .is_some_and(|iface| {
                    iface.name == ifname && iface.sandbox.as_deref().is_some_and(|s| !s.is_empty())
                })
        };
        let mut ips: Vec<IpAddr> = self
            .parsed
            .ips
            .iter()
            .filter(on_sandbox_if)
            .map(|ip| ip.address.addr())
            .collect();
        if ips.is_empty() {
            ips = self.parsed.ips.iter().map(|ip| ip.address.addr()).collect();
        }
        if ips.is_empty() {
            return PodIps::default();
        }
        let primary = ips.remove(ips.iter().position(IpAddr::is_ipv4).unwrap_or(0));
        PodIps {
            primary: Some(primary),
            additional: ips,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Output of Debian's bridge 1.1.1 with host-local, captured on this machine (cniVersion
    /// 1.0.0, CNI_IFNAME=eth1100).
    pub(crate) const BRIDGE_100: &str = r#"{
    "cniVersion": "1.0.0",
    "interfaces": [
        {"name": "bcap0", "mac": "ba:66:04:6d:3a:69"},
        {"name": "veth5372233e", "mac": "c2:14:40:f2:6e:51"},
        {"name": "eth1100", "mac": "ba:13:d4:7e:42:72", "sandbox": "/var/run/netns/berthcap1"}
    ],
    "ips": [{"interface": 2, "address": "10.251.7.2/24", "gateway": "10.251.7.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {}
}"#;

    /// The same plugin asked for 0.4.0 (CNI_IFNAME=eth0040): `version` on every IP.
    pub(crate) const BRIDGE_040: &str = r#"{
    "cniVersion": "0.4.0",
    "interfaces": [
        {"name": "bcap0", "mac": "ba:66:04:6d:3a:69"},
        {"name": "veth2562fccf", "mac": "de:57:3f:2f:19:2a"},
        {"name": "eth0040", "mac": "86:9f:63:e4:04:44", "sandbox": "/var/run/netns/berthcap1"}
    ],
    "ips": [{"version": "4", "interface": 2, "address": "10.251.7.3/24", "gateway": "10.251.7.1"}],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {}
}"#;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn bridge_results_parse_in_both_layouts() {
        for (text, version, ifname, addr) in [
            (BRIDGE_100, "1.0.0", "eth1100", "10.251.7.2"),
            (BRIDGE_040, "0.4.0", "eth0040", "10.251.7.3"),
        ] {
            let r = CniResult::from_slice(text.as_bytes()).unwrap();
            assert_eq!(r.cni_version(), version);
            assert_eq!(r.interfaces().len(), 3);
            assert_eq!(r.interfaces()[0].name, "bcap0");
            assert_eq!(r.interfaces()[0].sandbox, None);
            assert_eq!(
                r.interfaces()[2].sandbox.as_deref(),
                Some("/var/run/netns/berthcap1")
            );
            assert_eq!(r.ips()[0].interface, Some(2));
            assert_eq!(r.ips()[0].address.to_string(), format!("{addr}/24"));
            assert_eq!(r.ips()[0].gateway, Some(ip("10.251.7.1")));
            assert_eq!(r.routes()[0].dst.to_string(), "0.0.0.0/0");
            assert_eq!(
                r.pod_ips(ifname),
                PodIps {
                    primary: Some(ip(addr)),
                    additional: vec![]
                }
            );
        }
    }

    #[test]
    fn raw_result_is_kept_byte_for_byte_in_meaning() {
        // 0.4.0 plugins need `ips[].version` in prevResult: the raw value keeps it.
        let r = CniResult::from_slice(BRIDGE_040.as_bytes()).unwrap();
        assert_eq!(r.raw()["ips"][0]["version"], "4");
    }

    #[test]
    fn dual_stack_primary_is_the_first_ipv4() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"1.0.0",
                "interfaces":[{"name":"br0"},{"name":"eth0","sandbox":"/run/netns/x"}],
                "ips":[{"interface":1,"address":"fd00::5/64"},
                       {"interface":0,"address":"10.0.0.1/24"},
                       {"interface":1,"address":"10.1.0.5/24"},
                       {"interface":1,"address":"fd00:1::5/64"}]}"#,
        )
        .unwrap();
        assert_eq!(
            r.pod_ips("eth0"),
            PodIps {
                primary: Some(ip("10.1.0.5")),
                additional: vec![ip("fd00::5"), ip("fd00:1::5")]
            }
        );
    }

    #[test]
    fn ipv6_only_primary_is_the_first() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","sandbox":"/n"}],
                "ips":[{"interface":0,"address":"fd00::5/64"},{"interface":0,"address":"fd00::6/64"}]}"#,
        )
        .unwrap();
        assert_eq!(r.pod_ips("eth0").primary, Some(ip("fd00::5")));
        assert_eq!(r.pod_ips("eth0").additional, vec![ip("fd00::6")]);
    }

    #[test]
    fn ips_without_interface_index_all_count() {
        let r = CniResult::from_slice(
            br#"{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.9.0.3/16"}]}"#,
        )
        .unwrap();
        assert_eq!(r.pod_ips("eth0").primary, Some(ip("10.9.0.3")));
        assert_eq!(
            CniResult::from_slice(br#"{"cniVersion":"1.0.0"}"#)
                .unwrap()
                .pod_ips("eth0"),
            PodIps::default()
        );
    }

    #[test]
    fn invalid_results_are_rejected() {
        assert!(CniResult::from_slice(b"").is_err());
        assert!(CniResult::from_slice(b"[]").is_err());
        assert!(CniResult::from_slice(br#"{"cniVersion":1}"#).is_err());
        assert!(
            CniResult::from_slice(br#"{"cniVersion":"0.2.0","ip4":{"ip":"10.0.0.2/24"}}"#)
                .unwrap_err()
                .contains("pre-0.3.0")
        );
        assert!(CniResult::from_slice(br#"{"ips":[{"address":"nope"}]}"#).is_err());
    }
}
