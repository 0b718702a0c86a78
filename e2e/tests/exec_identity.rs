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
    out.push_str(&std::fs::read_to_string(format!("/proc/{init}/cgroup")).unwrap());
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

        let sync = c
            .exec_sync(ExecSyncRequest {
                container_id: id.clone(),
                cmd: vec!["sh".into(), "-c".into(), PROBE.into()],
                timeout: 20,
            })
            .await
            .unwrap()
            .into_inner();
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
