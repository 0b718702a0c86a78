//! A CNI network for one test: a conflist with a test-unique bridge, subnet and IPAM data dir,
//! written into an agent's CNI conf dir. On drop the bridge goes; the pods' own veths, leases
//! and portmap rules are the agent's to remove (tests check that it does).

use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::TempDir;

/// Debian's containernetworking-plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";

pub struct TestNetwork {
    pub name: String,
    pub bridge: String,
    /// The first three octets of the /24, e.g. "10.160.3".
    pub net24: String,
    dir: TempDir,
}

/// Which plugins follow bridge + host-local.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extra {
    None,
    Portmap,
    /// A second plugin that always fails ADD (tuning with a sysctl that does not exist), to
    /// prove a failed ADD is rolled back.
    FailingTuning,
    /// `berth-cni-gate` after bridge: ADD holds until this file exists (the agent's
    /// `[cni] bin_dirs` must include the gate's directory).
    Gate(PathBuf),
    /// `berth-cni-gate` after bridge: ADD passes, DEL holds until this file exists.
    DelGate(PathBuf),
}

impl TestNetwork {
    /// Writes `10-<name>.conflist` into `conf_dir`.
    pub fn create(conf_dir: &Path, extra: Extra) -> TestNetwork {
        assert!(
            Path::new(PLUGIN_DIR).join("bridge").exists(),
            "{PLUGIN_DIR}/bridge is missing: install Debian's containernetworking-plugins"
        );
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let bridge = format!("bsbx{}x{n}", pid % 10000);
        assert!(bridge.len() <= 15, "{bridge}");
        let net24 = format!("10.{}.{n}", 150 + pid % 50);
        let name = format!("berth-test-{pid}-{n}");
        let dir = TempDir::new("berth-net");
        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{net24}.0/24")}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.path().join("ipam"),
            }
        })];
        match extra {
            Extra::None => {}
            Extra::Portmap => plugins.push(
                serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            ),
            Extra::FailingTuning => plugins.push(
                serde_json::json!({"type": "tuning", "sysctl": {"net.berth.no_such_key": "1"}}),
            ),
            Extra::Gate(gate) => {
                plugins.push(serde_json::json!({"type": "berth-cni-gate", "gate": gate}))
            }
            Extra::DelGate(gate) => {
                plugins.push(serde_json::json!({"type": "berth-cni-gate", "delGate": gate}))
            }
        }
        let conflist = serde_json::json!({"cniVersion": "1.0.0", "name": name, "plugins": plugins});
        std::fs::create_dir_all(conf_dir).unwrap();
        std::fs::write(
            conf_dir.join(format!("10-{name}.conflist")),
            conflist.to_string(),
        )
        .unwrap();
        TestNetwork {
            name,
            bridge,
            net24,
            dir,
        }
    }

    /// IP leases host-local holds for this network.
    pub fn leases(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("ipam").join(&self.name))
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != "lock" && !n.starts_with("last_reserved_ip"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Interfaces enslaved to the bridge (the pods' host-side veths).
    pub fn veths(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split(':').nth(1).map(|s| s.trim().to_string()))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }
}

impl Drop for TestNetwork {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.bridge])
            .output();
    }
}

/// iptables must work here: portmap drives it, and `make test` installs it. A test that needs
/// it fails without it rather than passing untested.
pub fn require_iptables() {
    let works = Command::new("iptables")
        .args(["-t", "nat", "-S", "PREROUTING"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        works,
        "iptables -t nat does not work here: install Debian's iptables (make test does)"
    );
}

/// The nat rules portmap wrote for `container_id` (its comments name the CNI container id).
pub fn nat_rules_of(container_id: &str) -> Vec<String> {
    let out = Command::new("iptables-save")
        .args(["-t", "nat"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.lines()
        .filter(|l| l.contains(&format!("id: \\\"{container_id}\\\"")))
        .map(str::to_string)
        .collect()
}

/// Whether a failed portmap CHECK is Debian's portmap 1.1.1 bug: it checks an IPv6 chain even
/// for an IPv4-only pod whenever ip6tables works (fixed upstream in "Only check ipv6 when an
/// IPv6 is configured"). Only that exact error from that exact package version counts.
pub fn is_known_portmap_check_bug(error: &str) -> bool {
    let version = Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "containernetworking-plugins"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    version.starts_with("1.1.1")
        && error.starts_with("CNI CHECK via portmap failed: could not check ipv6 dnat")
}

/// Serves one TCP connection on `port` inside `netns` (from a thread that joins it), answering
/// `reply`. Returns once the listener is bound.
pub fn serve_once_in_netns(
    netns: &Path,
    port: u16,
    reply: &'static [u8],
) -> std::thread::JoinHandle<()> {
    let ns = std::fs::File::open(netns).unwrap();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        // setns changes only this thread's namespace.
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let listener = TcpListener::bind(("0.0.0.0", port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        ready_tx.send(()).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    let _ = stream.write_all(reply);
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    handle
}

/// Mount points under `dir` (from /proc/self/mountinfo).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// PIDs of processes whose command line mentions `needle` (e.g. an agent's state dir).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}
