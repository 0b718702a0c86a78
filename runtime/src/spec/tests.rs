//! `generate` end to end: one realistic container, checked as the JSON libcontainer will read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use oci_spec::runtime::{Capabilities, Spec};
use serde_json::{json, Value};

use super::security::CAPABILITY_BITS;
use super::*;
use crate::CgroupDriver;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n";
const GROUP: &str = "root:x:0:\napp:x:1000:\nvideo:x:44:app\n";

struct Fixture {
    config: ContainerSpec,
    sandbox: SandboxInfo,
    image: ImageConfig,
    host: HostInfo,
    nodes: Vec<DeviceNode>,
}

impl Fixture {
    fn new() -> Fixture {
        let pod = |name: &str| Some(PathBuf::from(format!("/run/berth/pods/p1/{name}")));
        Fixture {
            config: ContainerSpec {
                metadata: ContainerMetadata {
                    name: "web".into(),
                    attempt: 0,
                },
                args: vec!["--port=80".into()],
                envs: vec![EnvVar {
                    key: "MODE".into(),
                    value: "prod".into(),
                }],
                mounts: vec![Mount {
                    container_path: "/data".into(),
                    host_path: "/var/lib/kubelet/pods/u1/volumes/data".into(),
                    readonly: true,
                    ..Mount::default()
                }],
                devices: vec![Device {
                    container_path: "/dev/fuse".into(),
                    host_path: "/dev/fuse".into(),
                    permissions: "rwm".into(),
                }],
                annotations: BTreeMap::from([("team".to_string(), "a".to_string())]),
                resources: Resources {
                    cpu_shares: 256,
                    cpu_quota: 20_000,
                    cpu_period: 100_000,
                    memory_limit_in_bytes: 64 << 20,
                    oom_score_adj: -997,
                    ..Resources::default()
                },
                security: SecurityContext {
                    run_as_user: Some(1000),
                    capabilities: CapabilityChanges {
                        add: vec![],
                        drop: vec!["NET_RAW".into()],
                    },
                    no_new_privs: true,
                    namespace_options: NamespaceOptions {
                        pid: NamespaceMode::Container,
                        ..NamespaceOptions::default()
                    },
                    ..SecurityContext::default()
                },
                ..ContainerSpec::default()
            },
            sandbox: SandboxInfo {
                id: "p1".into(),
                hostname: "web-0".into(),
                resolv_conf: pod("resolv.conf"),
                hosts: pod("hosts"),
                hostname_file: pod("hostname"),
                shm: pod("shm"),
                net_ns: pod("ns/net"),
                ipc_ns: pod("ns/ipc"),
                uts_ns: pod("ns/uts"),
                pid_ns: None,
                cgroup_parent: "/kubepods/burstable/podu1".into(),
                privileged: false,
                userns: None,
                user_ns: None,
            },
            image: ImageConfig {
                entrypoint: vec!["/bin/server".into()],
                cmd: vec!["--port=8080".into()],
                env: vec!["PATH=/usr/bin:/bin".into(), "MODE=dev".into()],
                working_dir: "/srv".into(),
                user: "root".into(),
                stop_signal: "SIGQUIT".into(),
            },
            host: HostInfo {
                hostname: "node-1".into(),
                min_oom_score_adj: 0,
                cgroup_driver: CgroupDriver::Cgroupfs,
                cgroup_v2: false,
                cgroup_v1: ["cpu,cpuacct", "memory", "rdma"]
                    .into_iter()
                    .map(|name| CgroupV1Hierarchy {
                        mountpoint: Path::new("/sys/fs/cgroup").join(name),
                        controllers: name.split(',').map(str::to_string).collect(),
                    })
                    .collect(),
                swap_controller: true,
                hugetlb_controller: false,
                capabilities: CAPABILITY_BITS.into_iter().collect::<Capabilities>(),
                default_seccomp: Default::default(),
            },
            nodes: vec![DeviceNode {
                path: "/dev/fuse".into(),
                kind: DeviceKind::Char,
                major: 10,
                minor: 229,
                file_mode: 0o666,
                uid: 0,
                gid: 0,
            }],
        }
    }

    fn generate(&self) -> Result<Spec, SpecError> {
        generate(&SpecInput {
            container_id: "c1",
            rootfs: Path::new("/var/lib/berth/containers/c1/rootfs"),
            config: &self.config,
            sandbox: &self.sandbox,
            image: &self.image,
            etc_passwd: Some(PASSWD),
            etc_group: Some(GROUP),
            device_nodes: &self.nodes,
            seccomp_localhost: None,
            apparmor_profile: None,
            target_pid_namespace: None,
            host: &self.host,
        })
    }
}

fn sorted_strings(value: &Value) -> Vec<String> {
    let mut v: Vec<String> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn generated_spec_serializes_to_the_config_json_libcontainer_reads() {
    let spec = Fixture::new().generate().unwrap();
    let text = serde_json::to_string_pretty(&spec).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();

    assert_eq!(json["ociVersion"], "1.2.0");
    assert_eq!(
        json["root"],
        json!({"path": "/var/lib/berth/containers/c1/rootfs", "readonly": false})
    );
    assert!(json.get("hostname").is_none());

    let process = &json["process"];
    assert_eq!(process["args"], json!(["/bin/server", "--port=80"]));
    assert_eq!(
        process["env"],
        json!(["PATH=/usr/bin:/bin", "HOSTNAME=web-0", "MODE=prod"])
    );
    assert_eq!(process["cwd"], "/srv");
    assert_eq!(process["terminal"], false);
    assert_eq!(
        process["user"],
        json!({"uid": 1000, "gid": 1000, "additionalGids": [44, 1000]})
    );
    assert_eq!(process["noNewPrivileges"], true);
    assert_eq!(process["oomScoreAdj"], 0);
    assert!(process.get("rlimits").is_none());
    let bounding = sorted_strings(&process["capabilities"]["bounding"]);
    assert_eq!(bounding.len(), 13);
    assert!(bounding.contains(&"CAP_CHOWN".to_string()));
    assert!(!bounding.contains(&"CAP_NET_RAW".to_string()));
    assert_eq!(process["capabilities"]["inheritable"], json!([]));

    let linux = &json["linux"];
    assert_eq!(linux["cgroupsPath"], "/kubepods/burstable/podu1/c1");
    assert_eq!(
        linux["namespaces"],
        json!([
            {"type": "pid"},
            {"type": "network", "path": "/run/berth/pods/p1/ns/net"},
            {"type": "ipc", "path": "/run/berth/pods/p1/ns/ipc"},
            {"type": "uts", "path": "/run/berth/pods/p1/ns/uts"},
            {"type": "mount"},
        ])
    );
    let resources = &linux["resources"];
    assert_eq!(
        resources["cpu"],
        json!({"shares": 256, "quota": 20000, "period": 100000})
    );
    assert_eq!(
        resources["memory"],
        json!({"limit": 64 << 20, "swap": 64 << 20})
    );
    assert_eq!(
        resources["devices"],
        json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 229, "access": "rwm"},
        ])
    );
    assert_eq!(linux["devices"][0]["path"], "/dev/fuse");
    assert_eq!(linux["maskedPaths"].as_array().unwrap().len(), 11);
    assert_eq!(linux["readonlyPaths"].as_array().unwrap().len(), 5);
    assert!(linux.get("rootfsPropagation").is_none());
    assert!(linux.get("seccomp").is_none());

    let mounts = json["mounts"].as_array().unwrap();
    let find = |dst: &str| mounts.iter().find(|m| m["destination"] == dst).unwrap();
    assert_eq!(
        find("/data"),
        &json!({"destination": "/data", "type": "bind",
                "source": "/var/lib/kubelet/pods/u1/volumes/data",
                "options": ["rbind", "rprivate", "ro"]})
    );
    assert_eq!(
        find("/etc/resolv.conf")["source"],
        "/run/berth/pods/p1/resolv.conf"
    );
    assert_eq!(find("/dev/shm")["source"], "/run/berth/pods/p1/shm");

    assert_eq!(json["annotations"]["team"], "a");
    assert_eq!(json["annotations"]["io.kubernetes.cri.sandbox-id"], "p1");
    assert_eq!(
        json["annotations"]["io.kubernetes.cri.container-name"],
        "web"
    );

    // libcontainer 0.7 loads config.json with this same oci-spec type.
    let loaded: Spec = serde_json::from_str(&text).unwrap();
    assert_eq!(loaded, spec);
}

#[test]
fn tty_and_read_only_rootfs_show_in_the_spec() {
    let mut fixture = Fixture::new();
    fixture.config.tty = true;
    fixture.config.security.readonly_rootfs = true;
    let spec = fixture.generate().unwrap();
    let process = spec.process().as_ref().unwrap();
    assert_eq!(process.terminal(), Some(true));
    assert!(process
        .env()
        .as_ref()
        .unwrap()
        .contains(&"TERM=xterm".to_string()));
    assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
}

#[test]
fn pod_without_hostname_uses_the_nodes() {
    let mut fixture = Fixture::new();
    fixture.sandbox.hostname.clear();
    let spec = fixture.generate().unwrap();
    let env = spec.process().as_ref().unwrap().env().clone().unwrap();
    assert!(env.contains(&"HOSTNAME=node-1".to_string()), "{env:?}");
}

#[test]
fn privileged_container_in_an_unprivileged_pod_is_rejected() {
    let mut fixture = Fixture::new();
    fixture.config.security.privileged = true;
    let err = fixture.generate().unwrap_err();
    assert!(
        matches!(err, SpecError::PrivilegedNotAllowed(ref pod) if pod == "p1"),
        "{err}"
    );
}

#[test]
fn privileged_container_gets_all_caps_devices_and_no_masked_paths() {
    let mut fixture = Fixture::new();
    fixture.config.security.privileged = true;
    fixture.sandbox.privileged = true;
    let spec = fixture.generate().unwrap();
    let process = spec.process().as_ref().unwrap();
    let caps = process.capabilities().as_ref().unwrap();
    assert_eq!(caps.effective().as_ref().unwrap().len(), 41);
    let linux = spec.linux().as_ref().unwrap();
    assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
    assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
    let rules = linux
        .resources()
        .as_ref()
        .unwrap()
        .devices()
        .clone()
        .unwrap();
    assert_eq!(rules.len(), 1);
    assert!(rules[0].allow());
}

#[test]
fn first_broken_rule_is_reported() {
    let mut fixture = Fixture::new();
    fixture.config.security.run_as_username = Some("ghost".into());
    let err = fixture.generate().unwrap_err();
    assert!(err.to_string().contains("ghost"), "{err}");

    let mut fixture = Fixture::new();
    fixture.image.entrypoint.clear();
    fixture.config.args.clear();
    fixture.image.cmd.clear();
    assert!(matches!(fixture.generate(), Err(SpecError::NoCommand)));

    let mut fixture = Fixture::new();
    // The fixture's parent is a cgroupfs path, which the systemd driver cannot place.
    fixture.host.cgroup_driver = CgroupDriver::Systemd;
    assert!(matches!(
        fixture.generate(),
        Err(SpecError::InvalidResource(m)) if m.contains("slice")
    ));
}

/// On a v1 host /sys/fs/cgroup is berth's layout, not libcontainer's `cgroup` mount: a tmpfs and
/// the container's own cgroups bound read-only, a comounted hierarchy under each name, and no
/// hierarchy libcontainer makes no directory in. Privileged binds are writable; on a v2 host the
/// `cgroup` mount stays (the container has a cgroup namespace).
#[test]
fn v1_cgroupfs_is_the_containers_own_cgroups_bound_read_only() {
    let mounts = |spec: &Spec| -> Vec<(String, String, String, Vec<String>)> {
        spec.mounts()
            .as_ref()
            .unwrap()
            .iter()
            .filter(|m| m.destination().starts_with("/sys/fs/cgroup"))
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap_or_default(),
                    m.source().as_ref().unwrap().display().to_string(),
                    m.options().clone().unwrap_or_default(),
                )
            })
            .collect()
    };
    let ro = |s: &[&str]| s.iter().map(|o| o.to_string()).collect::<Vec<_>>();
    let bind = ["rbind", "rprivate", "nosuid", "noexec", "nodev", "ro"];
    let own = "/kubepods/burstable/podu1/c1";
    let mut fixture = Fixture::new();
    assert_eq!(
        mounts(&fixture.generate().unwrap()),
        [
            (
                "/sys/fs/cgroup".into(),
                "tmpfs".into(),
                "tmpfs".into(),
                ro(&["nosuid", "noexec", "nodev", "mode=755"])
            ),
            (
                "/sys/fs/cgroup/cpu,cpuacct".into(),
                "bind".into(),
                format!("/sys/fs/cgroup/cpu,cpuacct{own}"),
                ro(&bind)
            ),
            (
                "/sys/fs/cgroup/cpu".into(),
                "bind".into(),
                format!("/sys/fs/cgroup/cpu,cpuacct{own}"),
                ro(&bind)
            ),
            (
                "/sys/fs/cgroup/cpuacct".into(),
                "bind".into(),
                format!("/sys/fs/cgroup/cpu,cpuacct{own}"),
                ro(&bind)
            ),
            (
                "/sys/fs/cgroup/memory".into(),
                "bind".into(),
                format!("/sys/fs/cgroup/memory{own}"),
                ro(&bind)
            ),
        ]
    );

    fixture.config.security.privileged = true;
    fixture.sandbox.privileged = true;
    let privileged = mounts(&fixture.generate().unwrap());
    assert_eq!(privileged.len(), 5);
    assert!(privileged[1..].iter().all(|m| m.3.last().unwrap() == "rw"));

    let mut fixture = Fixture::new();
    fixture.host.cgroup_v2 = true;
    fixture.host.cgroup_v1.clear();
    let v2 = mounts(&fixture.generate().unwrap());
    assert_eq!(v2.len(), 1);
    assert_eq!((v2[0].1.as_str(), v2[0].2.as_str()), ("cgroup", "cgroup"));
}
