//! PodSandboxStats, the agent's half: the pod cgroup's usage (`berth_runtime::cgroups::stats`)
//! and the counters of the interfaces in the pod's network namespace, read from the monitor's
//! `/proc/<pid>/net/dev` (the monitor lives in that namespace).

use berth_runtime::cgroups::stats::{self, CgroupStats};

use super::record::SandboxRecord;
use super::Sandboxes;

/// One interface's counters, as `/proc/net/dev` gives them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InterfaceUsage {
    pub name: String,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub rx_errors: u64,
    pub rx_dropped: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub tx_errors: u64,
    pub tx_dropped: u64,
}

/// One sample of a pod's usage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SandboxUsage {
    /// When it was read, Unix nanoseconds.
    pub timestamp: i64,
    /// The pod cgroup's usage; empty for a pod without a cgroup parent.
    pub cgroup: CgroupStats,
    /// The pod's interfaces but loopback; empty for a pod on the host's network.
    pub interfaces: Vec<InterfaceUsage>,
}

/// The interface kubelet reports as the pod's own (CNI's default).
pub const DEFAULT_INTERFACE: &str = "eth0";

/// `/proc/net/dev`: two header lines, then `name: rx_bytes rx_packets rx_errs rx_drop … tx_bytes
/// tx_packets tx_errs tx_drop …`. Loopback is left out, as containerd and kubelet do.
pub fn parse_net_dev(text: &str) -> Vec<InterfaceUsage> {
    text.lines()
        .filter_map(|line| {
            let (name, counters) = line.split_once(':')?;
            let name = name.trim();
            let n: Vec<u64> = counters
                .split_whitespace()
                .map(|v| v.parse().ok())
                .collect::<Option<_>>()?;
            (name != "lo" && n.len() >= 12).then(|| InterfaceUsage {
                name: name.to_string(),
                rx_bytes: n[0],
                rx_packets: n[1],
                rx_errors: n[2],
                rx_dropped: n[3],
                tx_bytes: n[8],
                tx_packets: n[9],
                tx_errors: n[10],
                tx_dropped: n[11],
            })
        })
        .collect()
}

impl Sandboxes {
    /// A sample of `record`'s usage now. Blocking (a few small reads).
    pub fn usage(&self, record: &SandboxRecord) -> SandboxUsage {
        let timestamp = berth_common::time::now_nanos();
        let cgroup =
            berth_runtime::cgroups::parent_path(self.cgroup_driver, &record.spec.cgroup_parent)
                .ok()
                .filter(|_| !record.spec.cgroup_parent.is_empty())
                .map(|path| stats::read(&path))
                .unwrap_or_default();
        let interfaces = record
            .monitor
            .filter(|m| m.alive() && !record.spec.host_network())
            .and_then(|m| std::fs::read_to_string(format!("/proc/{}/net/dev", m.pid)).ok())
            .map(|text| parse_net_dev(&text))
            .unwrap_or_default();
        SandboxUsage {
            timestamp,
            cgroup,
            interfaces,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn net_dev_gives_each_interface_but_loopback() {
        let text = "\
Inter-|   Receive                                                |  Transmit
 face |bytes    packets errs drop fifo frame compressed multicast|bytes    packets errs drop fifo colls carrier compressed
    lo:     980      10    0    0    0     0          0         0      980      10    0    0    0     0       0          0
  eth0:  1296      16    2    3    0     0          0         0      656       8    1    4    0     0       0          0
  net1:7000000000 5 0 0 0 0 0 0 9 1 0 0 0 0 0 0
";
        assert_eq!(
            parse_net_dev(text),
            [
                InterfaceUsage {
                    name: "eth0".into(),
                    rx_bytes: 1296,
                    rx_packets: 16,
                    rx_errors: 2,
                    rx_dropped: 3,
                    tx_bytes: 656,
                    tx_packets: 8,
                    tx_errors: 1,
                    tx_dropped: 4,
                },
                InterfaceUsage {
                    name: "net1".into(),
                    rx_bytes: 7_000_000_000,
                    rx_packets: 5,
                    rx_errors: 0,
                    rx_dropped: 0,
                    tx_bytes: 9,
                    tx_packets: 1,
                    tx_errors: 0,
                    tx_dropped: 0,
                },
            ]
        );
        assert!(parse_net_dev("").is_empty());
        assert!(parse_net_dev("eth0: 1 2 x\n").is_empty());
    }
}
