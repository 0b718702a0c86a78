//! Pods with their own user namespace (CRI `userns_options`, mode POD), against real containers:
//! root inside is the mapped uid outside, the image's files and idmapped volumes show as the
//! pod's root's, what the container writes in its rootfs keeps the mapped owner on the host
//! (and in an idmapped volume the unmapped one, as kubelet's files), the pod's
//! network sysctls and exec work as its root, and what the CRI does not allow is
//! InvalidArgument with nothing made.

use std::os::unix::fs::MetadataExt;

use berth_e2e::container_fixture::*;
use berth_e2e::cri::{try_run_pod, wait_network_ready};
use berth_e2e::network::{mounts_under, Extra, TestNetwork};
use berth_e2e::{AgentPaths, TempDir, TestAgent};
use k8s_cri::v1::*;

/// [`fixture`] with the CRI socket in the state dir, as berthd's defaults have it
/// (`/run/berth/berth.sock`): the pod's root must still reach its namespaces and files there.
async fn fixture_with_the_default_layout() -> Fixture {
    let dir = TempDir::new("berth-e2e");
    let mut paths = AgentPaths::under(dir.path());
    paths.socket = paths.state.join("berth.sock");
    std::fs::write(&paths.config, paths.config_text("")).unwrap();
    fixture_for(TestAgent::start_in(dir, paths).await).await
}

/// A host range of its own for each test process: 65536 ids from a multiple of 65536.
fn host_base() -> u32 {
    (std::process::id() % 4000 + 16) * 65536
}

fn range(container_id: u32, host_id: u32, length: u32) -> IdMapping {
    IdMapping {
        container_id,
        host_id,
        length,
    }
}

fn with_userns(config: &mut PodSandboxConfig, mode: NamespaceMode, uids: Vec<IdMapping>) {
    let options = pod_namespaces(config);
    options.network = NamespaceMode::Pod as i32;
    options.userns_options = Some(UserNamespace {
        mode: mode as i32,
        gids: uids.clone(),
        uids,
    });
}

fn owner(path: &std::path::Path) -> (u32, u32) {
    let m = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.uid(), m.gid())
}

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().mode() & 0o7777
}

#[tokio::test]
async fn root_in_a_pod_user_namespace_is_the_mapped_uid_on_the_host() {
    let _top = CgroupTop::new();
    let f = fixture_with_the_default_layout().await;
    let _net = TestNetwork::create(&f.agent.paths.cni_conf_dir, Extra::None);
    let mut c = f.agent.runtime().await;
    wait_network_ready(&mut c).await;
    let runtime = c
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let features = runtime.runtime_handlers[0].features.unwrap();
    assert!(features.user_namespaces, "user namespaces are offered");

    let base = host_base();
    let pod_range = range(0, base, 65536);
    let mut pod_cfg = pod_config(&f, "userns");
    with_userns(&mut pod_cfg, NamespaceMode::Pod, vec![pod_range]);
    pod_cfg.linux.as_mut().unwrap().sysctls = [(
        "net.ipv4.ip_unprivileged_port_start".to_string(),
        "81".to_string(),
    )]
    .into();
    // The pod's monitor is the standby, which made namespaces of its own before the pod came:
    // the pod's are made under its user namespace all the same (its root sets a net sysctl).
    berth_e2e::sandbox_fixture::wait_standby(&f.agent, None);
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    assert_eq!(
        f.agent
            .metric("berth_monitor_starts_total{how=\"standby\"}"),
        1.0
    );
    // The monitor itself went back to the host's: it runs the executor as host root.
    let monitor = monitor_pid(&mut c, &pod).await as u32;
    for kind in ["net", "ipc", "uts"] {
        assert_eq!(
            berth_e2e::sandbox_fixture::namespace_of(monitor, kind),
            berth_e2e::sandbox_fixture::namespace_of(std::process::id(), kind),
            "the monitor's {kind} namespace"
        );
    }

    // Two host volumes owned by host root: one idmapped as kubelet asks, one plain.
    let volumes = TempDir::new("berth-e2e-userns-vol");
    let (mapped, plain) = (volumes.path().join("mapped"), volumes.path().join("plain"));
    for dir in [&mapped, &plain] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("file"), b"x").unwrap();
    }
    let mut cfg = container_config(
        &f,
        "inside",
        &[
            "sh",
            "-c",
            "cat /proc/self/uid_map; echo id=$(id -u):$(id -g); \
             stat -c 'passwd=%u:%g' /etc/passwd; stat -c 'mapped=%u:%g' /mapped/file; \
             stat -c 'plain=%u:%g' /plain/file; touch /written /mapped/new && echo wrote; \
             echo port=$(cat /proc/sys/net/ipv4/ip_unprivileged_port_start); sleep 1000",
        ],
    );
    cfg.mounts = vec![
        Mount {
            container_path: "/mapped".into(),
            host_path: mapped.display().to_string(),
            uid_mappings: vec![pod_range],
            gid_mappings: vec![pod_range],
            ..Default::default()
        },
        Mount {
            container_path: "/plain".into(),
            host_path: plain.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    let leaks = PodLeakCheck::new(&mut c, &pod, "userns").await;
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let log_path = status(&mut c, &id).await.log_path;
    let log = wait_for_text(&log_path, "the container's report", |t| t.contains("port=")).await;

    // CRI log lines: time, stream, tag, then the output.
    let uid_map: Vec<&str> = log
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(3)
        .collect();
    assert_eq!(uid_map, ["0", &base.to_string(), "65536"], "{log}");
    assert!(log.contains("id=0:0"), "{log}");
    assert!(
        log.contains("passwd=0:0"),
        "the image's files are root's: {log}"
    );
    assert!(log.contains("mapped=0:0"), "an idmapped volume: {log}");
    assert!(
        log.contains("plain=65534:65534"),
        "host root is nobody: {log}"
    );
    assert!(log.contains("wrote"), "{log}");
    assert!(log.contains("port=81"), "the pod's sysctl: {log}");

    // Outside: the process and what it wrote belong to the mapped uid.
    let pid = container_pid(&mut c, &id).await;
    let status_text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let uid_line = status_text.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert_eq!(
        uid_line.split_whitespace().nth(1),
        Some(base.to_string().as_str()),
        "{uid_line}"
    );
    let upper = f
        .agent
        .paths
        .root
        .join("containers")
        .join(&id)
        .join("upper");
    assert_eq!(owner(&upper.join("written")), (base, base));
    // Through an idmapped volume it goes the other way: the pod's root writes host root's
    // files, as kubelet's own are, and nothing in the volume is chowned.
    assert_eq!(owner(&mapped.join("new")), (0, 0));
    assert_eq!(owner(&mapped.join("file")), (0, 0));

    // Two idmapped layers (busybox and /etc/passwd), one idmapped and one plain volume.
    let metrics = f.agent.scrape();
    for (kind, n) in [("layer", 2), ("idmapped", 1), ("plain", 1)] {
        let line = format!("berth_container_user_namespace_mounts_total{{kind=\"{kind}\"}} {n}");
        assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
    }

    // The bundle is passed through only by the pod root's group.
    let bundle = f.agent.paths.state.join("containers").join(&id);
    assert_eq!((mode(&bundle), owner(&bundle).1), (0o710, base));
    assert_eq!(mode(&f.agent.paths.state.join("containers")), 0o711);
    let pod_dir = f.agent.paths.state.join("pods").join(&pod);
    assert_eq!((mode(&pod_dir), owner(&pod_dir).1), (0o710, base));
    assert_eq!(
        mode(&f.agent.paths.state),
        0o711,
        "the state dir holding the socket"
    );

    // Exec'd processes join the user namespace as the container's user.
    let out = exec_sync(&mut c, &id, &["sh", "-c", "id -u; cat /proc/self/uid_map"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.starts_with("0\n"), "{stdout}");
    assert!(stdout.contains(&base.to_string()), "{stdout}");

    stop_and_remove(&mut c, &id).await;
    let prepared = mounts_under(&f.agent.paths.state.join("containers"));
    assert!(prepared.is_empty(), "prepared mounts left: {prepared:?}");
    leaks.assert_nothing_left(&f, "after the userns container");
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "userns");
}

#[tokio::test]
async fn a_pod_without_user_namespace_keeps_the_host_mapping_and_a_closed_bundle() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let mut pod_cfg = pod_config(&f, "hostusers");
    pod_namespaces(&mut pod_cfg).userns_options = Some(UserNamespace {
        mode: NamespaceMode::Node as i32,
        ..Default::default()
    });
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let cfg = container_config(
        &f,
        "host",
        &["sh", "-c", "cat /proc/self/uid_map; sleep 1000"],
    );
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    let bundle = f.agent.paths.state.join("containers").join(&id);
    assert_eq!(mode(&bundle), 0o700);
    assert_eq!(mode(&f.agent.paths.state.join("pods").join(&pod)), 0o700);
    start(&mut c, &id).await;
    let log_path = status(&mut c, &id).await.log_path;
    let log = wait_for_text(&log_path, "the uid map", |t| t.contains('\n')).await;
    let host_map = std::fs::read_to_string("/proc/self/uid_map").unwrap();
    assert_eq!(
        log.split_whitespace().skip(3).collect::<Vec<_>>(),
        host_map.split_whitespace().collect::<Vec<_>>()
    );
    // An idmapped mount needs the pod's own user namespace.
    let volume = TempDir::new("berth-e2e-userns-vol");
    let mut mapped = container_config(&f, "mapped", &["true"]);
    mapped.mounts = vec![Mount {
        container_path: "/v".into(),
        host_path: volume.path().display().to_string(),
        uid_mappings: vec![range(0, host_base(), 65536)],
        gid_mappings: vec![range(0, host_base(), 65536)],
        ..Default::default()
    }];
    let refused = create_refused(&mut c, &pod, mapped, pod_cfg.clone()).await;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    assert!(
        refused.message().contains("own user namespace"),
        "{refused}"
    );
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "hostusers");
}

#[tokio::test]
async fn user_namespace_options_the_cri_does_not_allow_are_invalid_argument() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let good = range(0, host_base(), 65536);
    type Tweak = Box<dyn Fn(&mut PodSandboxConfig)>;
    let cases: Vec<(&str, Tweak, &str)> = vec![
        (
            "two mappings",
            Box::new(move |p| with_userns(p, NamespaceMode::Pod, vec![good, range(0, 2000, 100)])),
            "exactly one uid mapping",
        ),
        (
            "container id 0 unmapped",
            Box::new(move |p| with_userns(p, NamespaceMode::Pod, vec![range(1, 1000, 100000)])),
            "container id 0 unmapped",
        ),
        (
            "mode CONTAINER",
            Box::new(|p| with_userns(p, NamespaceMode::Container, vec![])),
            "mode CONTAINER",
        ),
        (
            "mode TARGET",
            Box::new(|p| with_userns(p, NamespaceMode::Target, vec![])),
            "mode TARGET",
        ),
        (
            "the host's network",
            Box::new(move |p| {
                with_userns(p, NamespaceMode::Pod, vec![good]);
                pod_namespaces(p).network = NamespaceMode::Node as i32;
            }),
            "host's network namespace",
        ),
    ];
    for (what, tweak, message) in cases {
        let mut pod_cfg = pod_config(&f, "userns-bad");
        tweak(&mut pod_cfg);
        let err = try_run_pod(&mut c, pod_cfg).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{what}: {err}");
        assert!(err.message().contains(message), "{what}: {err}");
    }
    let pods = c
        .list_pod_sandbox(ListPodSandboxRequest::default())
        .await
        .unwrap()
        .into_inner()
        .items;
    assert!(pods.is_empty(), "no pod was made: {pods:?}");
    assert_clean(&f, "userns-bad");
}
