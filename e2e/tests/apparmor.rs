//! AppArmor through the CRI, on the node lane (feature `node-lane`: AppArmor enabled, as this
//! crate's host has not): a container that asks for nothing, or for runtime/default, runs under
//! berth's own profile (loaded by berthd with apparmor_parser), as does what is exec'd in it; a
//! localhost profile loaded on the host is applied and enforced, one not loaded is refused
//! naming it, the new field wins over the deprecated one, and unconfined and privileged
//! containers run unconfined.

use berth_e2e::container_fixture::*;
use berth_e2e::{RuntimeClient, TempDir};
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::*;

/// A profile loaded for the test, unloaded on drop.
struct Loaded {
    file: std::path::PathBuf,
    _dir: TempDir,
}

impl Loaded {
    fn new(name: &str, rules: &str) -> Loaded {
        let dir = TempDir::new("berth-e2e-apparmor");
        let file = dir.path().join(name);
        std::fs::write(
            &file,
            // As abstractions/base does: signals from unconfined processes (the pod's monitor
            // stopping the container) are received; without a signal rule none would be.
            format!(
                "profile {name} flags=(attach_disconnected) {{\n  file,\n  \
                 signal (receive) peer=unconfined,\n{rules}\n}}\n"
            ),
        )
        .unwrap();
        parser(&["-r", file.to_str().unwrap()]);
        Loaded { file, _dir: dir }
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        let _ = std::process::Command::new("apparmor_parser")
            .args(["-R", self.file.to_str().unwrap()])
            .status();
    }
}

fn parser(args: &[&str]) {
    let out = std::process::Command::new("apparmor_parser")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "apparmor_parser {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn with_apparmor(cfg: &mut ContainerConfig, field: Option<(ProfileType, &str)>, deprecated: &str) {
    let s = security(cfg);
    s.apparmor = field.map(|(t, r)| SecurityProfile {
        profile_type: t as i32,
        localhost_ref: r.into(),
    });
    #[allow(deprecated)]
    {
        s.apparmor_profile = deprecated.into();
    }
}

/// Starts a long-running container with `tweak`; its id.
async fn running(
    f: &Fixture,
    c: &mut RuntimeClient,
    pod: &(String, PodSandboxConfig),
    name: &str,
    tweak: impl FnOnce(&mut ContainerConfig),
) -> String {
    let mut cfg = container_config(f, name, &["sleep", "1000"]);
    tweak(&mut cfg);
    let id = create(c, &pod.0, cfg, pod.1.clone()).await;
    start(c, &id).await;
    id
}

/// The AppArmor label of the container's init and of a process exec'd in it.
async fn labels(c: &mut RuntimeClient, id: &str) -> (String, String) {
    let init = container_pid(c, id).await;
    let of_init = std::fs::read_to_string(format!("/proc/{init}/attr/current")).unwrap();
    let exec = exec_sync(c, id, &["cat", "/proc/self/attr/current"]).await;
    (
        of_init.trim().to_string(),
        String::from_utf8_lossy(&exec.stdout).trim().to_string(),
    )
}

#[tokio::test]
async fn profiles_are_applied_to_the_init_and_to_execs_and_enforced() {
    assert!(
        berth_runtime::spec::apparmor::host_enabled(),
        "this suite is the node lane's: it needs AppArmor"
    );
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "apparmor");
    let _cgroups = PodCgroups(vec!["apparmor".into()]);
    let pod = (run_pod(&mut c, pod_cfg.clone()).await, pod_cfg);
    let default = format!(
        "{} (enforce)",
        berth_runtime::spec::apparmor::DEFAULT_PROFILE
    );

    // Nothing asked, and runtime/default: berth's profile, loaded by berthd.
    let unset = running(&f, &mut c, &pod, "unset", |_| {}).await;
    assert_eq!(
        labels(&mut c, &unset).await,
        (default.clone(), default.clone())
    );
    let field = running(&f, &mut c, &pod, "runtime-default", |cfg| {
        with_apparmor(cfg, Some((ProfileType::RuntimeDefault, "")), "")
    })
    .await;
    assert_eq!(labels(&mut c, &field).await, (default.clone(), default));

    // A localhost profile that blocks writes under /tmp: enforced in the init and in an exec.
    let name = format!("berth-e2e-deny-tmp-{}", std::process::id());
    let _loaded = Loaded::new(&name, "  deny /tmp/** w,");
    let denied = running(&f, &mut c, &pod, "localhost", |cfg| {
        with_apparmor(
            cfg,
            Some((ProfileType::Localhost, &format!("localhost/{name}"))),
            "localhost/not-loaded-at-all",
        )
    })
    .await;
    let enforced = format!("{name} (enforce)");
    assert_eq!(labels(&mut c, &denied).await, (enforced.clone(), enforced));
    let touch = exec_sync(&mut c, &denied, &["touch", "/tmp/blocked"]).await;
    assert_ne!(touch.exit_code, 0, "the profile blocks writes to /tmp");

    // Not loaded: refused, naming it, before anything runs.
    let mut cfg = container_config(&f, "unloaded", &["true"]);
    with_apparmor(&mut cfg, None, "localhost/berth-e2e-never-loaded");
    let err = create_refused(&mut c, &pod.0, cfg, pod.1.clone()).await;
    assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("berth-e2e-never-loaded"), "{err:?}");

    // Unconfined, and privileged with nothing asked: no profile.
    let free = running(&f, &mut c, &pod, "unconfined", |cfg| {
        with_apparmor(cfg, None, "unconfined")
    })
    .await;
    assert_eq!(
        labels(&mut c, &free).await,
        ("unconfined".to_string(), "unconfined".to_string())
    );
    remove_pod(&mut c, &pod.0).await;

    let mut privileged_pod = pod_config(&f, "apparmor-priv");
    pod_security(&mut privileged_pod).privileged = true;
    let _cgroups = PodCgroups(vec!["apparmor-priv".into()]);
    let pod = (
        run_pod(&mut c, privileged_pod.clone()).await,
        privileged_pod,
    );
    let privileged = running(&f, &mut c, &pod, "privileged", |cfg| {
        security(cfg).privileged = true;
    })
    .await;
    assert_eq!(
        labels(&mut c, &privileged).await,
        ("unconfined".to_string(), "unconfined".to_string())
    );
    remove_pod(&mut c, &pod.0).await;
    assert_clean(&f, "apparmor");
}
