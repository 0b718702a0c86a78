//! Containers through the CRI: bind mounts and their propagation, privileged containers, and a
//! rootfs that outlives its image.

use berth_e2e::container_fixture::*;
use k8s_cri::v1::*;

#[tokio::test]
async fn bind_mounts_reach_the_host_and_missing_sources_are_created() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "mounts");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let shared = f.logs.path().join("shared-dir");
    let readonly = f.logs.path().join("ro-dir");
    std::fs::create_dir_all(&readonly).unwrap();
    std::fs::write(readonly.join("given"), "from the host\n").unwrap();
    let mut cfg = container_config(
        &f,
        "mounter",
        &["sh", "-c", "echo hi > /data/out; cat /ro/given; touch /ro/x 2>/dev/null && echo ro-writable || echo ro-refused"],
    );
    cfg.mounts = vec![
        Mount {
            container_path: "/data".into(),
            host_path: shared.display().to_string(),
            ..Default::default()
        },
        Mount {
            container_path: "/ro".into(),
            host_path: readonly.display().to_string(),
            readonly: true,
            ..Default::default()
        },
    ];
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let s = wait_exited(&mut c, &id).await;
    assert_eq!(s.exit_code, 0);
    assert_eq!(std::fs::read_to_string(shared.join("out")).unwrap(), "hi\n");
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(
        log.contains(" stdout F from the host\n") && log.contains(" stdout F ro-refused\n"),
        "{log}"
    );
    assert_eq!(s.mounts.len(), 2);
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "mounts");
}

#[tokio::test]
async fn privileged_containers_need_a_privileged_pod() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let plain_cfg = pod_config(&f, "plainpod");
    let plain = run_pod(&mut c, plain_cfg.clone()).await;
    let mut privileged_ctr =
        container_config(&f, "priv", &["sh", "-c", "grep CapEff /proc/self/status"]);
    privileged_ctr
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let err = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: plain.clone(),
            config: Some(privileged_ctr.clone()),
            sandbox_config: Some(plain_cfg),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    let mut priv_cfg = pod_config(&f, "privpod");
    priv_cfg
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = true;
    let privileged_pod = run_pod(&mut c, priv_cfg.clone()).await;
    let id = create(
        &mut c,
        &privileged_pod,
        privileged_ctr.clone(),
        priv_cfg.clone(),
    )
    .await;
    start(&mut c, &id).await;
    let s = wait_exited(&mut c, &id).await;
    assert_eq!(s.exit_code, 0);
    // Every capability this host lets us have, as with runc's privileged containers.
    let cap_eff = |log: &str| {
        log.lines()
            .find_map(|l| l.split("CapEff:").nth(1))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap_or_else(|| panic!("no CapEff in {log:?}"))
    };
    let ours = std::fs::read_to_string("/proc/self/status").unwrap();
    let bounding = ours
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    let privileged_caps = cap_eff(&std::fs::read_to_string(&s.log_path).unwrap());
    assert_eq!(
        privileged_caps, bounding,
        "privileged CapEff {privileged_caps:x}, host's {bounding:x}"
    );
    // The same container unprivileged gets the default set, which is less.
    let mut plain_ctr = privileged_ctr;
    plain_ctr.metadata.as_mut().unwrap().name = "unpriv".into();
    plain_ctr.log_path = "unpriv/0.log".into();
    plain_ctr
        .linux
        .as_mut()
        .unwrap()
        .security_context
        .as_mut()
        .unwrap()
        .privileged = false;
    let id = create(&mut c, &privileged_pod, plain_ctr, priv_cfg).await;
    start(&mut c, &id).await;
    let s = wait_exited(&mut c, &id).await;
    let default_caps = cap_eff(&std::fs::read_to_string(&s.log_path).unwrap());
    assert!(
        default_caps != bounding && default_caps & !bounding == 0,
        "unprivileged CapEff {default_caps:x}"
    );
    for pod in [plain, privileged_pod] {
        remove_pod(&mut c, &pod).await;
    }
    assert_clean(&f, "plainpod");
    assert_clean(&f, "privpod");
}

/// /sys/fs/cgroup shows a container its own cgroup, read-only unless privileged: a container
/// that could write there could raise its own limits, or on v1 allow itself any device.
#[tokio::test]
async fn only_a_privileged_container_may_write_its_own_cgroup() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let mut pod_cfg = pod_config(&f, "cgwrite");
    pod_security(&mut pod_cfg).privileged = true;
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let script = "f=/sys/fs/cgroup/pids.max; [ -e $f ] || f=/sys/fs/cgroup/pids/pids.max; \
                  echo 1000 > $f && echo wrote; echo now $(cat $f)";
    for (name, privileged, want) in [
        ("cgplain", false, "now max"),
        ("cgpriv", true, "wrote\nnow 1000"),
    ] {
        let mut cfg = container_config(&f, name, &["sh", "-c", script]);
        security(&mut cfg).privileged = privileged;
        let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
        start(&mut c, &id).await;
        let s = wait_exited(&mut c, &id).await;
        let log = std::fs::read_to_string(&s.log_path).unwrap();
        let said: Vec<&str> = log
            .lines()
            .filter(|l| l.contains(" stdout "))
            .filter_map(|l| l.splitn(4, ' ').nth(3))
            .collect();
        assert_eq!(said.join("\n"), want, "{name}: {log}");
    }
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "cgwrite");
}

fn mount_tmpfs(path: &std::path::Path) {
    nix::mount::mount(
        Some("tmpfs"),
        path,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .unwrap();
}

fn set_propagation(path: &std::path::Path, flag: nix::mount::MsFlags) {
    nix::mount::mount(None::<&str>, path, None::<&str>, flag, None::<&str>).unwrap();
}

/// `source` at /data with host-to-container propagation.
fn host_to_container(source: &std::path::Path) -> Mount {
    Mount {
        container_path: "/data".into(),
        host_path: source.display().to_string(),
        propagation: MountPropagation::PropagationHostToContainer as i32,
        ..Default::default()
    }
}

#[tokio::test]
async fn host_to_container_propagation_needs_a_slave_or_shared_source() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "propagation");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    // A private tmpfs as the source, whatever the host's own propagation is.
    let source = f.logs.path().join("private-source");
    std::fs::create_dir_all(&source).unwrap();
    mount_tmpfs(&source);
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(source.clone());
    set_propagation(&source, nix::mount::MsFlags::MS_PRIVATE);
    let mut cfg = container_config(&f, "rslave", &["true"]);
    cfg.mounts = vec![host_to_container(&source)];
    // Nothing could propagate from a private mount, so (as containerd) it is refused.
    let err = c
        .create_container(CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(cfg),
            sandbox_config: Some(pod_cfg.clone()),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("not a shared or slave mount"),
        "{}",
        err.message()
    );

    // Made shared, the source propagates: a mount the host makes under it after the container
    // started appears in the container, which waits for a file on it and then exits 0.
    set_propagation(&source, nix::mount::MsFlags::MS_SHARED);
    std::fs::create_dir_all(source.join("sub")).unwrap();
    let mut cfg = container_config(
        &f,
        "sees",
        &[
            "sh",
            "-c",
            "echo started; until [ -e /data/sub/marker ]; do sleep 0.02; done; cat /data/sub/marker",
        ],
    );
    cfg.mounts = vec![host_to_container(&source)];
    let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
    start(&mut c, &id).await;
    let log = status(&mut c, &id).await.log_path;
    wait_for_text(&log, "started", |t| t.contains(" F started\n")).await;
    let sub = source.join("sub");
    mount_tmpfs(&sub);
    let _unmount_sub = Unmount(sub.clone());
    std::fs::write(sub.join("marker"), "propagated\n").unwrap();
    let s = wait_exited(&mut c, &id).await;
    assert_eq!(s.exit_code, 0);
    let log = std::fs::read_to_string(&s.log_path).unwrap();
    assert!(log.contains(" F propagated\n"), "{log}");
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "propagation");
}

/// The lowerdirs of the overlay mounted at `mountpoint`, from /proc/self/mountinfo.
fn overlay_lowerdirs(mountpoint: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(&*mountpoint.to_string_lossy()))
        .unwrap_or_else(|| panic!("{} is not mounted", mountpoint.display()));
    let options = line.rsplit(' ').next().unwrap();
    let lower = options
        .split(',')
        .find_map(|o| o.strip_prefix("lowerdir="))
        .unwrap_or_else(|| panic!("no lowerdir in {line}"));
    lower.split(':').map(std::path::PathBuf::from).collect()
}

#[tokio::test]
async fn removing_the_image_of_a_running_container_keeps_its_rootfs() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "imagegone");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let id = create(
        &mut c,
        &pod,
        container_config(&f, "keeps", &["sleep", "1000"]),
        pod_cfg.clone(),
    )
    .await;
    start(&mut c, &id).await;
    // The layers the rootfs is made of, as the kernel has them: the overlay's lowerdirs.
    let rootfs = f
        .agent
        .paths
        .state
        .join("containers")
        .join(&id)
        .join("rootfs");
    let lowers = overlay_lowerdirs(&rootfs);
    assert!(lowers.len() >= 2, "{lowers:?}");
    let all_there = |when: &str| {
        for dir in &lowers {
            let entries = std::fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
            assert!(entries > 0, "{when}: layer {} is gone", dir.display());
        }
    };
    all_there("before");
    f.agent
        .image()
        .await
        .remove_image(RemoveImageRequest {
            image: Some(ImageSpec {
                image: f.image.clone(),
                ..Default::default()
            }),
        })
        .await
        .unwrap();
    all_there("after RemoveImage");
    // A killed agent restores the container's leases before its start-up GC runs.
    let mut f = f;
    f.agent
        .restart_with(nix::sys::signal::Signal::SIGKILL)
        .await;
    let mut c = f.agent.runtime().await;
    all_there("after a SIGKILL restart");
    let snapshots = f.agent.paths.root.join("snapshots");
    let r = c
        .exec_sync(ExecSyncRequest {
            container_id: id.clone(),
            cmd: vec!["cat".into(), "/etc/passwd".into()],
            timeout: 10,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.exit_code, 0);
    assert!(String::from_utf8_lossy(&r.stdout).contains("tester"));
    // Once the container goes, so do the layers nothing else uses.
    remove_pod(&mut c, &pod).await;
    assert_eq!(
        std::fs::read_dir(&snapshots).unwrap().count(),
        0,
        "released layers are collected"
    );
    assert_clean(&f, "imagegone");
}

/// A host directory with a tmpfs mounted inside it, mounted read-only at /mnt: plainly, only the
/// top is read-only (the tmpfs stays writable, as with runc); recursive read-only reaches the
/// tmpfs too. Recursive read-only without readonly, or with propagation, is refused; Status
/// says the default handler has the feature.
#[tokio::test]
async fn recursive_read_only_mounts_reach_submounts_and_bad_ones_are_refused() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let features = c
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner()
        .runtime_handlers[0]
        .features
        .unwrap();
    assert!(features.recursive_read_only_mounts);
    let pod_cfg = pod_config(&f, "rro");
    let pod = run_pod(&mut c, pod_cfg.clone()).await;
    let source = f.logs.path().join("rro-source");
    std::fs::create_dir_all(source.join("tmpfs")).unwrap();
    mount_tmpfs(&source.join("tmpfs"));
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _unmount = Unmount(source.join("tmpfs"));
    let mount = |readonly: bool, rro: bool, propagation: MountPropagation| Mount {
        container_path: "/mnt".into(),
        host_path: source.display().to_string(),
        readonly,
        recursive_read_only: rro,
        propagation: propagation as i32,
        ..Default::default()
    };
    let script = "touch /mnt/top 2>&1; touch /mnt/tmpfs/sub 2>&1 && echo sub-written; echo done";
    for (rro, sub_written) in [(false, true), (true, false)] {
        let name = if rro { "recursive" } else { "plain" };
        let mut cfg = container_config(&f, name, &["sh", "-c", script]);
        cfg.mounts = vec![mount(true, rro, MountPropagation::PropagationPrivate)];
        let id = create(&mut c, &pod, cfg, pod_cfg.clone()).await;
        start(&mut c, &id).await;
        let s = wait_exited(&mut c, &id).await;
        let log = std::fs::read_to_string(&s.log_path).unwrap();
        assert!(
            log.contains("Read-only file system") && log.contains("done"),
            "{name}: {log}"
        );
        assert_eq!(log.contains("sub-written"), sub_written, "{name}: {log}");
        let status = status(&mut c, &id).await;
        assert_eq!(status.mounts[0].recursive_read_only, rro, "{name}");
    }
    for (readonly, propagation) in [
        (false, MountPropagation::PropagationPrivate),
        (true, MountPropagation::PropagationHostToContainer),
        (true, MountPropagation::PropagationBidirectional),
    ] {
        let mut cfg = container_config(&f, "bad-rro", &["true"]);
        cfg.mounts = vec![mount(readonly, true, propagation)];
        let err = c
            .create_container(CreateContainerRequest {
                pod_sandbox_id: pod.clone(),
                config: Some(cfg),
                sandbox_config: Some(pod_cfg.clone()),
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{propagation:?}: {err:?}"
        );
        assert!(
            err.message().contains("recursive read-only"),
            "{}",
            err.message()
        );
    }
    remove_pod(&mut c, &pod).await;
    assert_clean(&f, "rro");
}
