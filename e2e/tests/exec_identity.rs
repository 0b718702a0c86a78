//! An exec'd process is the container's own process with other arguments: whether it comes
//! through ExecSync or the streaming server, with or without a terminal, it has the init's user,
//! groups, capability sets, no_new_privs and seccomp mode (RuntimeDefault in one of them), its
//! cgroups, namespaces and oom_score_adj, and the container's working directory and environment. The init is read from
//! the host; the exec'd process reads itself.

use berth_e2e::container_fixture::*;
use berth_e2e::spdy::Session;
use berth_e2e::streaming_fixture::*;
use k8s_cri::v1::*;

/// What the exec'd process prints about itself, in the order `expected` reads the init.
const PROBE: &str = "grep -E '^(Uid|Gid|Groups|CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status; \
    cat /proc/self/cgroup; \
    for n in cgroup ipc mnt net pid user uts; do readlink /proc/self/ns/$n; done; \
    cat /proc/self/oom_score_adj; pwd; echo FOO=$FOO";

const STATUS_KEYS: [&str; 10] = [
    "Uid",
    "Gid",
    "Groups",
    "CapInh",
    "CapPrm",
    "CapEff",
    "CapBnd",
    "CapAmb",
    "NoNewPrivs",
    "Seccomp",
];

/// The same facts about the container's init, from the host.
fn expected(init: i32, cwd: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{init}/status")).unwrap();
    let mut out = String::new();
    for line in status.lines() {
        if STATUS_KEYS
            .iter()
            .any(|k| line.split(':').next() == Some(k))
        {
            out.push_str(line);
            out.push('\n');
        }
    }
    // The init's cgroups as a process in its cgroup namespace sees them: in a namespace of its
    // own (cgroup v2 gives unprivileged containers one) that is the namespace's root, "/".
    let cgroups = std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap();
    let own_cgroupns = std::fs::read_link(format!("/proc/{init}/ns/cgroup")).unwrap()
        != std::fs::read_link("/proc/self/ns/cgroup").unwrap();
    if own_cgroupns {
        for line in cgroups.lines() {
            let (hierarchy, _) = line.rsplit_once(':').unwrap();
            out.push_str(&format!("{hierarchy}:/\n"));
        }
    } else {
        out.push_str(&cgroups);
    }
    for ns in ["cgroup", "ipc", "mnt", "net", "pid", "user", "uts"] {
        let link = std::fs::read_link(format!("/proc/{init}/ns/{ns}")).unwrap();
        out.push_str(&format!("{}\n", link.display()));
    }
    out.push_str(&std::fs::read_to_string(format!("/proc/{init}/oom_score_adj")).unwrap());
    out.push_str(&format!("{cwd}\nFOO=bar\n"));
    out
}

fn security(cfg: &mut ContainerConfig) -> &mut LinuxContainerSecurityContext {
    cfg.linux
        .as_mut()
        .unwrap()
        .security_context
        .get_or_insert_with(Default::default)
}

#[tokio::test]
async fn an_exec_gets_the_init_s_identity_limits_and_namespaces() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    // A root container with capabilities changed both ways, and a non-root one with groups of
    // its own; both with no_new_privs, a working directory and an environment variable.
    let root = |cfg: &mut ContainerConfig| {
        let s = security(cfg);
        s.capabilities = Some(Capability {
            add_capabilities: vec!["NET_ADMIN".into(), "SYS_PTRACE".into()],
            drop_capabilities: vec!["KILL".into(), "CHOWN".into()],
            ..Default::default()
        });
        s.seccomp = Some(SecurityProfile {
            profile_type: security_profile::ProfileType::RuntimeDefault as i32,
            localhost_ref: String::new(),
        });
    };
    let tester = |cfg: &mut ContainerConfig| {
        let s = security(cfg);
        s.run_as_username = "tester".into();
        s.run_as_group = Some(Int64Value { value: 2000 });
    };
    for (name, tweak) in [
        ("exec-id-root", &root as &dyn Fn(&mut ContainerConfig)),
        ("exec-id-user", &tester),
    ] {
        let (pod, id) = running(&f, &mut c, name, &["sleep", "1000"], |cfg| {
            tweak(cfg);
            let s = security(cfg);
            s.supplemental_groups = vec![4242, 4343];
            s.no_new_privs = true;
            cfg.working_dir = "/tmp".into();
            cfg.envs = vec![KeyValue {
                key: "FOO".into(),
                value: "bar".into(),
            }];
        })
        .await;
        let init = container_pid(&mut c, &id).await;
        let want = expected(init, "/tmp");
        assert!(want.contains("NoNewPrivs:\t1"), "{want}");

        let sync = exec_sync(&mut c, &id, &["sh", "-c", PROBE]).await;
        assert_eq!(
            sync.exit_code,
            0,
            "{}",
            String::from_utf8_lossy(&sync.stderr)
        );
        assert_eq!(
            String::from_utf8_lossy(&sync.stdout),
            want,
            "{name}: ExecSync"
        );

        let piped = exec(&mut c, &id, &["sh", "-c", PROBE], &out_err()).await;
        assert_eq!(piped.exit_code(), 0, "{}", piped.status);
        assert_eq!(String::from_utf8_lossy(&piped.stdout), want, "{name}: exec");

        let tty = Session {
            stdout: true,
            tty: true,
            ..Default::default()
        };
        let terminal = exec(&mut c, &id, &["sh", "-c", PROBE], &tty).await;
        assert_eq!(terminal.exit_code(), 0, "{}", terminal.status);
        assert_eq!(
            String::from_utf8_lossy(&terminal.stdout).replace('\r', ""),
            want,
            "{name}: exec with a terminal"
        );
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, name);
    }
}

/// SupplementalGroupsPolicy: Merge (the default) adds the groups the image's /etc/group lists
/// the user in; Strict gives only the primary group and `supplemental_groups`. The container's
/// first process, an exec'd one and ContainerStatus.user agree; Status advertises the feature.
#[tokio::test]
async fn supplemental_groups_policy_merge_and_strict() {
    let _top = CgroupTop::new();
    let f = fixture().await;
    let mut c = f.agent.runtime().await;
    let runtime = c
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    assert!(runtime.features.unwrap().supplemental_groups_policy);
    // tester is 1000:1000 and listed in group extra (2000) by the image.
    for (name, policy, groups) in [
        (
            "groups-merge",
            SupplementalGroupsPolicy::Merge,
            vec![1000, 1234, 2000],
        ),
        (
            "groups-strict",
            SupplementalGroupsPolicy::Strict,
            vec![1000, 1234],
        ),
    ] {
        let (pod, id) = running(
            &f,
            &mut c,
            name,
            &["sh", "-c", "id -G; sleep 1000"],
            |cfg| {
                let s = security(cfg);
                s.run_as_user = Some(Int64Value { value: 1000 });
                s.supplemental_groups = vec![1234];
                s.supplemental_groups_policy = policy as i32;
            },
        )
        .await;
        let want: Vec<String> = groups.iter().map(|g: &i64| g.to_string()).collect();
        let want = format!("{}\n", want.join(" "));
        let out = exec_sync(&mut c, &id, &["id", "-G"]).await;
        assert_eq!(String::from_utf8_lossy(&out.stdout), want, "{name}: exec");
        let s = status(&mut c, &id).await;
        let log = wait_for_text(&s.log_path, "id -G output", |l| l.contains(" stdout F ")).await;
        assert!(
            log.contains(&format!(" stdout F {}", want)),
            "{name}: {log}"
        );
        let user = s.user.unwrap().linux.unwrap();
        let mut supplemental = user.supplemental_groups.clone();
        supplemental.sort();
        assert_eq!(
            (user.uid, user.gid, supplemental),
            (1000, 1000, groups),
            "{name}"
        );
        remove_pod(&mut c, &pod).await;
        assert_clean(&f, name);
    }
}
