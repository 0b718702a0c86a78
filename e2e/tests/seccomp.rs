//! seccomp through the CRI, against real containers: RuntimeDefault (berth's own profile) blocks
//! what an unprivileged container must not do and lets a shell work, a Localhost profile is read
//! from the host, privileged containers and Unconfined get no filter, the agent's configured
//! default applies to containers that ask for nothing, exec'd processes get the container's
//! filter, and a profile that cannot be used is InvalidArgument naming it.

use berth_e2e::container_fixture::*;
use berth_e2e::{RuntimeClient, TempDir};
use k8s_cri::v1::security_profile::ProfileType;
use k8s_cri::v1::*;

fn profile(t: ProfileType, localhost_ref: &str) -> Option<SecurityProfile> {
    Some(SecurityProfile {
        profile_type: t as i32,
        localhost_ref: localhost_ref.into(),
    })
}

fn with_seccomp(cfg: &mut ContainerConfig, seccomp: Option<SecurityProfile>) {
    security(cfg).seccomp = seccomp;
}

/// Runs `script` in a new container of `pod` to its end; its log.
async fn run(
    f: &Fixture,
    c: &mut RuntimeClient,
    pod: &(String, PodSandboxConfig),
    name: &str,
    script: &str,
    tweak: impl FnOnce(&mut ContainerConfig),
) -> String {
    let mut cfg = container_config(f, name, &["sh", "-c", script]);
    tweak(&mut cfg);
    let id = create(c, &pod.0, cfg, pod.1.clone()).await;
    start(c, &id).await;
    let s = wait_exited(c, &id).await;
    std::fs::read_to_string(&s.log_path).unwrap()
}

const PROBE: &str = "grep '^Seccomp:' /proc/self/status; \
    unshare -U true 2>&1 && echo unshare-allowed; \
    touch /tmp/f && chmod 600 /tmp/f 2>&1 && echo chmod-allowed; echo done";

#[tokio::test]
async fn runtime_default_localhost_unconfined_and_privileged() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let mut pod_cfg = pod_config(&f, "seccomp");
    pod_security(&mut pod_cfg).privileged = true;
    let pod = (run_pod(&mut c, pod_cfg.clone()).await, pod_cfg);

    // RuntimeDefault: filtered (mode 2); no user namespace without CAP_SYS_ADMIN; a shell,
    // files and chmod work.
    let log = run(&f, &mut c, &pod, "default", PROBE, |cfg| {
        with_seccomp(cfg, profile(ProfileType::RuntimeDefault, ""))
    })
    .await;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(log.contains("Operation not permitted"), "{log}");
    assert!(!log.contains("unshare-allowed"), "{log}");
    assert!(
        log.contains("chmod-allowed") && log.contains("done"),
        "{log}"
    );

    // A localhost profile that blocks chmod.
    let dir = TempDir::new("berth-e2e-seccomp");
    let block_chmod = dir.path().join("block-chmod.json");
    std::fs::write(
        &block_chmod,
        r#"{"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["chmod", "fchmodat", "fchmodat2"], "action": "SCMP_ACT_ERRNO"}]}"#,
    )
    .unwrap();
    let path = block_chmod.display().to_string();
    let log = run(&f, &mut c, &pod, "localhost", PROBE, |cfg| {
        with_seccomp(cfg, profile(ProfileType::Localhost, &path))
    })
    .await;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    assert!(
        !log.contains("chmod-allowed") && log.contains("done"),
        "{log}"
    );

    // The deprecated path names it too.
    let log = run(&f, &mut c, &pod, "deprecated", PROBE, |cfg| {
        #[allow(deprecated)]
        {
            security(cfg).seccomp_profile_path = format!("localhost/{path}");
        }
    })
    .await;
    assert!(
        !log.contains("chmod-allowed") && log.contains("done"),
        "{log}"
    );

    // Unconfined, no profile at all (this agent's default), and privileged with RuntimeDefault:
    // no filter.
    for (name, seccomp, privileged) in [
        ("unconfined", profile(ProfileType::Unconfined, ""), false),
        ("unset", None, false),
        ("privileged", profile(ProfileType::RuntimeDefault, ""), true),
    ] {
        let log = run(&f, &mut c, &pod, name, PROBE, |cfg| {
            with_seccomp(cfg, seccomp);
            security(cfg).privileged = privileged;
        })
        .await;
        assert!(log.contains("Seccomp:\t0"), "{name}: {log}");
    }

    // An exec'd process gets its container's filter.
    let mut cfg = container_config(&f, "exec", &["sleep", "1000"]);
    with_seccomp(&mut cfg, profile(ProfileType::RuntimeDefault, ""));
    let id = create(&mut c, &pod.0, cfg, pod.1.clone()).await;
    start(&mut c, &id).await;
    let out = exec_sync(&mut c, &id, &["sh", "-c", PROBE]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Seccomp:\t2") && !text.contains("unshare-allowed"),
        "{text}"
    );

    // Profiles that cannot be used: nothing is created, the error names the file.
    let bad_json = dir.path().join("bad.json");
    std::fs::write(&bad_json, "{not json").unwrap();
    let missing = dir.path().join("missing.json");
    for (name, localhost_ref) in [
        ("missing", missing.display().to_string()),
        ("bad-json", bad_json.display().to_string()),
        ("relative", "profiles/block-chmod.json".to_string()),
    ] {
        let mut cfg = container_config(&f, name, &["true"]);
        with_seccomp(&mut cfg, profile(ProfileType::Localhost, &localhost_ref));
        let err = create_refused(&mut c, &pod.0, cfg, pod.1.clone()).await;
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}: {err:?}");
        assert!(
            err.message().contains(&localhost_ref),
            "{name}: {}",
            err.message()
        );
    }
    remove_pod(&mut c, &pod.0).await;
    assert_clean(&f, "seccomp");
}

#[tokio::test]
async fn the_configured_default_applies_to_containers_that_ask_for_none() {
    let _top = CgroupTop::new();
    let f = fixture_with("[runtime]\ndefault_seccomp = \"runtime/default\"\n").await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "seccomp-default");
    let pod = (run_pod(&mut c, pod_cfg.clone()).await, pod_cfg);
    let log = run(&f, &mut c, &pod, "unset", PROBE, |_| {}).await;
    assert!(log.contains("Seccomp:\t2"), "{log}");
    let log = run(&f, &mut c, &pod, "unconfined", PROBE, |cfg| {
        with_seccomp(cfg, profile(ProfileType::Unconfined, ""))
    })
    .await;
    assert!(log.contains("Seccomp:\t0"), "{log}");
    remove_pod(&mut c, &pod.0).await;
    assert_clean(&f, "seccomp-default");
}

const IDENTITY: &str =
    "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Seccomp_filters):' /proc/self/status";

/// The capability and no_new_privs lines of `status` (a CRI log's or an exec's output).
fn capabilities(status: &str) -> Vec<&str> {
    status
        .lines()
        .map(|l| l.split_once(" F ").map_or(l, |(_, text)| text))
        .filter(|l| l.starts_with("Cap") || l.starts_with("NoNewPrivs"))
        .collect()
}

fn outcome_count(metrics: &str, outcome: &str) -> u64 {
    let prefix = format!("berth_container_seccomp_programs_total{{outcome=\"{outcome}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().unwrap())
}

/// The agent compiles RuntimeDefault once and the executor loads the program itself: to load it
/// without no_new_privs the init is lent CAP_SYS_ADMIN, which it must give back. Root and a
/// plain user, with and without no_new_privs, end with the capability sets an unconfined twin
/// gets, and exactly one filter; so do exec'd processes.
#[tokio::test]
async fn a_compiled_filter_is_loaded_once_and_leaves_the_capabilities_as_they_were() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let pod_cfg = pod_config(&f, "seccomp-caps");
    let pod = (run_pod(&mut c, pod_cfg.clone()).await, pod_cfg);
    let as_user = |cfg: &mut ContainerConfig, user: Option<i64>, no_new_privs: bool| {
        let s = security(cfg);
        s.run_as_user = user.map(|value| Int64Value { value });
        s.no_new_privs = no_new_privs;
    };
    let cases = [
        (None, false),
        (Some(1000), false),
        (None, true),
        (Some(1000), true),
    ];
    let mut root_plain = String::new();
    for (i, (user, no_new_privs)) in cases.into_iter().enumerate() {
        let filtered = run(
            &f,
            &mut c,
            &pod,
            &format!("filtered-{i}"),
            IDENTITY,
            |cfg| {
                with_seccomp(cfg, profile(ProfileType::RuntimeDefault, ""));
                as_user(cfg, user, no_new_privs);
            },
        )
        .await;
        let plain = run(&f, &mut c, &pod, &format!("plain-{i}"), IDENTITY, |cfg| {
            with_seccomp(cfg, profile(ProfileType::Unconfined, ""));
            as_user(cfg, user, no_new_privs);
        })
        .await;
        let case = format!("user {user:?}, no_new_privs {no_new_privs}");
        assert!(
            filtered.contains("Seccomp:\t2") && filtered.contains("Seccomp_filters:\t1"),
            "{case}: {filtered}"
        );
        assert!(plain.contains("Seccomp:\t0"), "{case}: {plain}");
        assert_eq!(capabilities(&filtered), capabilities(&plain), "{case}");
        assert_eq!(capabilities(&filtered).len(), 6, "{case}: {filtered}");
        if i == 0 {
            root_plain = plain;
        }
    }
    // All four asked for one profile: compiled once. The executor ran from its copy of the
    // spec, which has no profile for libcontainer to compile again.
    let metrics = f.agent.scrape();
    assert_eq!(outcome_count(&metrics, "compiled"), 1, "{metrics}");
    assert_eq!(outcome_count(&metrics, "cached"), 3, "{metrics}");

    let mut cfg = container_config(&f, "exec", &["sleep", "1000"]);
    with_seccomp(&mut cfg, profile(ProfileType::RuntimeDefault, ""));
    let id = create(&mut c, &pod.0, cfg, pod.1.clone()).await;
    start(&mut c, &id).await;
    let copy = std::fs::read_to_string(
        f.agent
            .paths
            .state
            .join("containers")
            .join(&id)
            .join("executor/config.json"),
    )
    .unwrap();
    assert!(!copy.contains("\"seccomp\""), "{copy}");
    let exec = exec_sync(&mut c, &id, &["sh", "-c", IDENTITY]).await;
    let exec = String::from_utf8_lossy(&exec.stdout).into_owned();
    assert!(
        exec.contains("Seccomp:\t2") && exec.contains("Seccomp_filters:\t1"),
        "{exec}"
    );
    assert_eq!(capabilities(&exec), capabilities(&root_plain), "{exec}");
    remove_pod(&mut c, &pod.0).await;
    assert_clean(&f, "seccomp-caps");
}
