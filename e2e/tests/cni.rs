//! berth-cni against Debian's real plugins in /usr/lib/cni (bridge, host-local, portmap,
//! loopback). Needs root.
//!
//! Every test gets its own network namespace `berth-cni-<pid>-<n>`, bridge `bcni<pid%10000><n>`,
//! subnet `10.<200+pid%50>.<n>.0/24`, and a temp dir holding host-local's `dataDir` and the
//! result cache. The fixture's Drop runs DEL (which also removes portmap's per-pod chains),
//! deletes the namespace and the bridge, and removes the temp dir, even when the test panicked.
//! portmap's shared top-level chains (CNI-HOSTPORT-*) and their jumps stay, as with any runtime.

use std::io::Read;
use std::net::{IpAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use berth_cni::{Attachment, CniError, CniInvoker, CniResult, Network, PortMapping, ResultCache};
use berth_e2e::network::{
    is_known_portmap_check_bug, nat_rules_of, require_iptables, serve_once_in_netns,
};
use berth_e2e::{free_port, TempDir};

const PLUGIN_DIR: &str = "/usr/lib/cni";

/// Runs a command; (success, stdout + stderr).
fn run(program: &str, args: &[&str]) -> (bool, String) {
    match Command::new(program).args(args).output() {
        Ok(out) => (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        ),
        Err(e) => (false, format!("cannot run {program}: {e}")),
    }
}

fn must(program: &str, args: &[&str]) -> String {
    let (ok, out) = run(program, args);
    assert!(ok, "{program} {args:?} failed: {out}");
    out
}

/// Which optional plugin the network chains after bridge.
#[derive(Clone, Copy, PartialEq)]
enum Chain {
    BridgeOnly,
    WithPortmap,
}

/// One test's namespace, bridge, subnet, IPAM data and result cache.
struct Fixture {
    netns_name: String,
    netns: PathBuf,
    bridge: String,
    /// The first three octets of the subnet, e.g. "10.213.4".
    net24: String,
    dir: TempDir,
    invoker: CniInvoker,
    network: Network,
    attachment: Attachment,
}

impl Fixture {
    fn new(version: &str, chain: Chain) -> Fixture {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the CNI e2e tests need root (network namespaces, bridges, iptables)"
        );
        assert!(
            Path::new(PLUGIN_DIR).join("bridge").exists(),
            "{PLUGIN_DIR}/bridge is missing: install Debian's containernetworking-plugins"
        );
        static NEXT: AtomicU32 = AtomicU32::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let netns_name = format!("berth-cni-{pid}-{n}");
        let bridge = format!("bcni{}{n}", pid % 10000);
        assert!(bridge.len() <= 15);
        let net24 = format!("10.{}.{n}", 200 + pid % 50);
        let dir = TempDir::new("berth-cni");
        let name = format!("bcni-{pid}-{n}");

        let mut plugins = vec![serde_json::json!({
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": format!("{net24}.0/24")}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": dir.path().join("ipam"),
            }
        })];
        if chain == Chain::WithPortmap {
            plugins.push(
                serde_json::json!({"type": "portmap", "capabilities": {"portMappings": true}}),
            );
        }
        let conflist = serde_json::json!({"cniVersion": version, "name": name, "plugins": plugins});
        let conf_dir = dir.path().join("net.d");
        std::fs::create_dir(&conf_dir).unwrap();
        std::fs::write(conf_dir.join("10-test.conflist"), conflist.to_string()).unwrap();
        let network = berth_cni::load_network(&conf_dir).unwrap();

        must("ip", &["netns", "add", &netns_name]);
        let netns = PathBuf::from("/run/netns").join(&netns_name);
        let invoker = CniInvoker::new(
            vec![PathBuf::from(PLUGIN_DIR)],
            ResultCache::new(dir.path().join("results")),
        )
        .with_timeout(Duration::from_secs(30));
        let attachment = Attachment::new(format!("berthcni{pid}x{n}"), &netns).with_pod(
            "default",
            &format!("pod-{n}"),
            &format!("uid-{n}"),
        );
        Fixture {
            netns_name,
            netns,
            bridge,
            net24,
            dir,
            invoker,
            network,
            attachment,
        }
    }

    /// The host-local lease file of `ip`.
    fn lease(&self, ip: IpAddr) -> PathBuf {
        self.dir
            .path()
            .join("ipam")
            .join(&self.network.name)
            .join(ip.to_string())
    }

    /// Runs `ip ARGS` inside the pod's namespace.
    fn ip_in_pod(&self, args: &[&str]) -> (bool, String) {
        let mut full = vec!["netns", "exec", &self.netns_name, "ip"];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    fn delete_netns(&self) {
        must("ip", &["netns", "del", &self.netns_name]);
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // DEL from a thread with its own runtime: Drop may run inside the test's runtime.
        let (invoker, network, attachment) = (
            self.invoker.clone(),
            self.network.clone(),
            self.attachment.clone(),
        );
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(invoker.del(&network, &attachment)).ok()
        })
        .join();
        if self.netns.exists() {
            let _ = run("ip", &["netns", "del", &self.netns_name]);
        }
        if Path::new("/sys/class/net").join(&self.bridge).exists() {
            let _ = run("ip", &["link", "del", &self.bridge]);
        }
    }
}

/// Whether a host interface exists.
fn host_link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The host-side veth of a bridge result: the interface without a sandbox that is not the bridge.
fn host_veth(result: &CniResult, bridge: &str) -> String {
    result
        .interfaces()
        .iter()
        .find(|i| i.sandbox.is_none() && i.name != bridge)
        .map(|i| i.name.clone())
        .expect("bridge result names the host veth")
}

async fn add_check_del_cycle(version: &str) {
    let fx = Fixture::new(version, Chain::BridgeOnly);
    let result = fx.invoker.add(&fx.network, &fx.attachment).await.unwrap();
    assert_eq!(result.cni_version(), version);

    // The IP is in the subnet, on eth0 in the namespace, leased and cached.
    let ip = result.pod_ips("eth0").primary.expect("a pod IP");
    assert!(
        ip.to_string().starts_with(&format!("{}.", fx.net24)),
        "{ip}"
    );
    let (ok, addr) = fx.ip_in_pod(&["-4", "addr", "show", "dev", "eth0"]);
    assert!(ok && addr.contains(&format!("inet {ip}/24")), "{addr}");
    assert!(
        fx.lease(ip).exists(),
        "no lease file {}",
        fx.lease(ip).display()
    );
    assert_eq!(
        fx.invoker
            .cache()
            .load(&fx.attachment.container_id, "eth0")
            .unwrap(),
        Some(result.clone())
    );
    let veth = host_veth(&result, &fx.bridge);
    assert!(host_link_exists(&veth));

    fx.invoker.check(&fx.network, &fx.attachment).await.unwrap();

    fx.invoker.del(&fx.network, &fx.attachment).await.unwrap();
    let (ok, out) = fx.ip_in_pod(&["link", "show", "eth0"]);
    assert!(!ok, "eth0 still in the namespace: {out}");
    assert!(!host_link_exists(&veth), "host veth {veth} left behind");
    assert!(!fx.lease(ip).exists(), "lease of {ip} left behind");
    assert_eq!(
        fx.invoker
            .cache()
            .load(&fx.attachment.container_id, "eth0")
            .unwrap(),
        None
    );

    // DEL is idempotent.
    fx.invoker.del(&fx.network, &fx.attachment).await.unwrap();
}

#[tokio::test]
async fn add_check_del_with_bridge_and_host_local_spec_1_0_0() {
    add_check_del_cycle("1.0.0").await;
}

#[tokio::test]
async fn add_check_del_with_bridge_and_host_local_spec_0_4_0() {
    add_check_del_cycle("0.4.0").await;
}

#[tokio::test]
async fn del_after_the_netns_is_deleted_releases_the_lease() {
    let fx = Fixture::new("1.0.0", Chain::BridgeOnly);
    let result = fx.invoker.add(&fx.network, &fx.attachment).await.unwrap();
    let ip = result.pod_ips("eth0").primary.unwrap();
    let veth = host_veth(&result, &fx.bridge);
    fx.delete_netns();

    fx.invoker.del(&fx.network, &fx.attachment).await.unwrap();
    assert!(!fx.lease(ip).exists(), "lease of {ip} left behind");
    // The kernel destroys the namespace, and the veth pair with it, asynchronously.
    let deadline = Instant::now() + Duration::from_secs(10);
    while host_link_exists(&veth) {
        assert!(Instant::now() < deadline, "host veth {veth} left behind");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fx.invoker.del(&fx.network, &fx.attachment).await.unwrap();
}

#[tokio::test]
async fn del_without_any_add_succeeds() {
    require_iptables();
    let fx = Fixture::new("1.0.0", Chain::WithPortmap);
    fx.invoker.del(&fx.network, &fx.attachment).await.unwrap();
    // And leaves nothing: no lease, no cached result, no portmap rule, no interface in the pod.
    let ipam = fx.dir.path().join("ipam").join(&fx.network.name);
    let leases: Vec<_> = std::fs::read_dir(&ipam)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().parse::<IpAddr>().is_ok())
                .map(|e| e.file_name())
                .collect()
        })
        .unwrap_or_default();
    assert!(leases.is_empty(), "{leases:?}");
    assert_eq!(
        fx.invoker
            .cache()
            .load(&fx.attachment.container_id, "eth0")
            .unwrap(),
        None
    );
    assert_eq!(
        nat_rules_of(&fx.attachment.container_id),
        Vec::<String>::new()
    );
    let (_, links) = fx.ip_in_pod(&["-o", "link", "show"]);
    assert_eq!(links.lines().count(), 1, "only lo: {links}");
}

#[tokio::test]
async fn loopback_up_brings_lo_up_in_the_pod() {
    let fx = Fixture::new("1.0.0", Chain::BridgeOnly);
    let (_, before) = fx.ip_in_pod(&["link", "show", "lo"]);
    assert!(!before.contains(",UP"), "lo already up: {before}");
    berth_cni::loopback_up(&fx.netns).await.unwrap();
    let (ok, after) = fx.ip_in_pod(&["-4", "addr", "show", "lo"]);
    assert!(
        ok && after.contains(",UP") && after.contains("inet 127.0.0.1/8"),
        "{after}"
    );
}

#[tokio::test]
async fn plugin_error_comes_back_with_the_plugins_message() {
    let mut fx = Fixture::new("1.0.0", Chain::BridgeOnly);
    // host-local refuses a prefix longer than 32 bits; bridge passes its error on.
    let bridge = &mut fx.network.plugins[0].conf;
    bridge["ipam"]["ranges"][0][0]["subnet"] = serde_json::json!(format!("{}.0/33", fx.net24));
    let err = fx
        .invoker
        .add(&fx.network, &fx.attachment)
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, CniError::Plugin { .. }), "{text}");
    assert!(text.starts_with("CNI ADD via bridge failed: "), "{text}");
    assert!(
        text.contains("/33"),
        "the plugin's message is missing: {text}"
    );
    assert_eq!(
        fx.invoker
            .cache()
            .load(&fx.attachment.container_id, "eth0")
            .unwrap(),
        None
    );
}

#[tokio::test]
async fn portmap_forwards_a_loopback_host_port_into_the_pod() {
    require_iptables();
    let mut fx = Fixture::new("1.0.0", Chain::WithPortmap);
    let host_port = free_port();
    fx.attachment.capabilities.port_mappings.push(PortMapping {
        host_port,
        container_port: 8080,
        protocol: "tcp".to_string(),
        host_ip: "127.0.0.1".to_string(),
    });
    let id = fx.attachment.container_id.clone();

    let result = fx.invoker.add(&fx.network, &fx.attachment).await.unwrap();
    // portmap passes bridge's result through.
    assert!(result.pod_ips("eth0").primary.is_some());
    let rules = nat_rules_of(&id);
    assert!(
        rules
            .iter()
            .any(|r| r.contains(&format!("--dports {host_port} "))),
        "no DNAT rule for port {host_port}: {rules:?}"
    );
    match fx.invoker.check(&fx.network, &fx.attachment).await {
        Ok(()) => {}
        // The rules are there (asserted above); only this plugin version's CHECK is wrong.
        Err(e) if is_known_portmap_check_bug(&e.to_string()) => {}
        Err(e) => panic!("CHECK failed: {e}"),
    }

    let server = serve_once_in_netns(&fx.netns, 8080, b"hello from the pod");
    let reply = tokio::task::spawn_blocking(move || {
        let mut stream =
            TcpStream::connect_timeout(&([127, 0, 0, 1], host_port).into(), Duration::from_secs(5))
                .map_err(|e| format!("connect 127.0.0.1:{host_port}: {e}"))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .map_err(|e| format!("read: {e}"))?;
        Ok::<_, String>(reply)
    })
    .await
    .unwrap();
    let _ = server.join();
    assert_eq!(reply.unwrap(), "hello from the pod");

    fx.invoker.del(&fx.network, &fx.attachment).await.unwrap();
    assert_eq!(
        nat_rules_of(&id),
        Vec::<String>::new(),
        "portmap rules left behind"
    );
}
