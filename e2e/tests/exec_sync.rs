//! ExecSync below the CRI layer: `berth_runtime::exec_sync` running commands through
//! `berthd init exec` in a real container (a pod, a busybox image, `sleep 1000` started through
//! the pod monitor, as in monitor_containers.rs).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use berth_e2e::container_fixture::zombie_children;
use berth_e2e::monitor_fixture::{
    bundle, create, pod_with_image, request, wait_exit, Bundle, CgroupCleanup, Pod,
};
use berth_e2e::network::{mounts_under, processes_mentioning};
use berth_e2e::registry::TestRegistry;
use berth_e2e::{berthd_path, TestAgent};
use berth_podsandbox::container::{exec_sync, ExecError, ExecOutput, OUTPUT_CAP};
use berth_runtime::monitor::protocol::Request;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A pod the test did not get to remove through the agent (it failed): its monitor is killed and
/// everything mounted under the agent's directory is detached.
struct PodCleanup {
    pod_dir: PathBuf,
    agent_dir: PathBuf,
    removed: bool,
}

impl Drop for PodCleanup {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Killed until none is left (a dying monitor may still be there for an instant).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = processes_mentioning(&self.pod_dir.to_string_lossy());
            if left.is_empty() || Instant::now() > deadline {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for mount in mounts_under(&self.agent_dir).iter().rev() {
            let _ = nix::mount::umount2(mount.as_str(), nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn cgroup_parent() -> String {
    format!("/berth-e2e-exec-{}", std::process::id())
}

/// Creates and starts the container; returns its init's pid and its exit file.
fn create_and_start(pod: &Pod, bundle: &Bundle, id: &str) -> (i32, PathBuf) {
    let (pid, exit_file) = create(pod, bundle, id, &cgroup_parent());
    assert!(request(&pod.dir, &Request::Start { id: id.into() }).ok);
    (pid, exit_file)
}

/// `(state, ppid)` from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = text.rsplit_once(')')?;
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

/// Live (not zombie) processes running `cmdline` (NUL-separated, as in /proc) in `cgroup`.
fn live_in_cgroup(cgroup: &str, cmdline: &str) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|&pid| {
            let in_cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.rsplit(':').next() == Some(cgroup));
            in_cgroup
                && std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()
                    == cmdline.as_bytes()
                && stat(pid).is_some_and(|(state, _)| state != 'Z')
        })
        .collect()
}

/// Report or process files of ours (`<id>.exec-…`) in libcontainer's state root.
fn exec_leftovers(state_root: &Path) -> Vec<String> {
    std::fs::read_dir(state_root)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".exec-"))
        .collect()
}

/// The names in a directory, sorted.
fn state_listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `sleep 60` as /proc/<pid>/cmdline has it.
const SLEEP_60: &str = "sleep\x0060\x00";

fn args(cmd: &[&str]) -> Vec<String> {
    cmd.iter().map(|s| s.to_string()).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn exec_sync_runs_in_the_container_caps_output_and_kills_on_timeout() {
    let registry = TestRegistry::start();
    let agent = TestAgent::start().await;
    let pod = pod_with_image(&agent, &registry, "exec").await;
    let mut pod_cleanup = PodCleanup {
        pod_dir: pod.dir.clone(),
        agent_dir: agent.dir().to_path_buf(),
        removed: false,
    };
    let id = format!("exec-{}", std::process::id());
    let b = bundle(&agent, &pod, &id, &["sleep", "1000"], 0, &cgroup_parent());
    let _cgroups = CgroupCleanup {
        top: cgroup_parent().trim_start_matches('/').to_string(),
    };
    let (init_pid, exit_file) = create_and_start(&pod, &b, &id);
    let container_state = state_listing(&pod.dir.join("runc").join(&id));
    let monitor_pid = stat(init_pid).map(|(_, ppid)| ppid).unwrap();
    let berthd = berthd_path();
    let state_root = pod.dir.join("runc");
    let cgroup = format!("{}/{id}", cgroup_parent());
    let me = std::process::id() as i32;
    let exec = |cmd: Vec<String>, timeout: Duration| {
        let (berthd, state_root, id) = (berthd.clone(), state_root.clone(), id.clone());
        async move { exec_sync(&berthd, &state_root, &id, &cmd, timeout).await }
    };

    // Both streams and the exit code.
    let out = exec(
        args(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(
        out,
        ExecOutput {
            stdout: b"out\n".to_vec(),
            stderr: b"err\n".to_vec(),
            exit_code: 3
        }
    );

    // The container's rootfs (a file written lands in its overlay upper dir), its /etc/hostname,
    // its PID namespace (PID 1 is the container's sleep), its env.
    let out = exec(
        args(&[
            "sh",
            "-c",
            "echo hi > /exec-marker; cat /etc/hostname; tr '\\0' ' ' < /proc/1/cmdline; echo; echo $PATH",
        ]),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(b.dir.join("upper/exec-marker")).unwrap(),
        "hi\n"
    );
    let hostname = std::fs::read_to_string(pod.dir.join("hostname")).unwrap();
    assert_eq!(
        text(&out.stdout),
        format!("{hostname}sleep 1000 \n/bin\n"),
        "{}",
        text(&out.stderr)
    );
    let out = exec(args(&["ls", "/bin/busybox"]), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        (text(&out.stdout).as_str(), out.exit_code),
        ("/bin/busybox\n", 0)
    );

    // A command that cannot be run, and a container that does not exist, are errors.
    match exec(args(&["/no/such/binary"]), Duration::from_secs(10)).await {
        Err(ExecError::Failed(_)) => {}
        other => panic!("{other:?}"),
    }
    match exec_sync(
        &berthd,
        &state_root,
        "no-such-container",
        &args(&["true"]),
        Duration::from_secs(10),
    )
    .await
    {
        Err(ExecError::Failed(e)) => assert!(e.contains("no-such-container"), "{e}"),
        other => panic!("{other:?}"),
    }

    // More than 16 MiB on each stream: together they are cut at the cap, the rest drained, the
    // exit code kept.
    let out = exec(
        args(&[
            "sh",
            "-c",
            "head -c 20000000 /dev/zero; head -c 17000000 /dev/zero >&2; echo late; exit 4",
        ]),
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(
        (out.stdout.len() + out.stderr.len(), out.exit_code),
        (OUTPUT_CAP, 4)
    );
    assert!(out.stdout.iter().all(|&b| b == 0));

    // Many execs in a row leave no zombie behind, in the monitor or here, nor a file apiece: a
    // leak of one per exec shows in 500 as it would in the 8640 a day of a 10 s probe (their
    // time is `make bench`'s).
    for _ in 0..500 {
        let out = exec(args(&["true"]), Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
    }
    assert_eq!(zombie_children(me), Vec::<i32>::new());
    assert_eq!(zombie_children(monitor_pid), Vec::<i32>::new());
    assert_eq!(zombie_children(init_pid), Vec::<i32>::new());
    // Nor a file in the container's state directory.
    assert_eq!(
        state_listing(&state_root.join(&id)),
        container_state,
        "the container's state directory after 500 execs"
    );
    // A timeout kills the process (it ran in the container's cgroup) before it returns.
    let task = tokio::spawn(exec(args(&["sleep", "60"]), Duration::from_secs(2)));
    let deadline = Instant::now() + Duration::from_secs(20);
    while live_in_cgroup(&cgroup, SLEEP_60).len() != 1 && !task.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the exec never ran in the container's cgroup"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        live_in_cgroup(&cgroup, SLEEP_60).len(),
        1,
        "seen running first"
    );
    let result = task.await.unwrap();
    assert_eq!(result, Err(ExecError::TimedOut(Duration::from_secs(2))));
    assert_eq!(live_in_cgroup(&cgroup, SLEEP_60), Vec::<i32>::new());

    // The whole tree: a shell with a background child and a foreground one.
    let result = exec(
        args(&["sh", "-c", "sleep 60 & sleep 60; echo never"]),
        Duration::from_secs(1),
    )
    .await;
    assert_eq!(result, Err(ExecError::TimedOut(Duration::from_secs(1))));
    assert_eq!(live_in_cgroup(&cgroup, SLEEP_60), Vec::<i32>::new());

    // An executor that cannot act on SIGTERM (stopped here) is killed with its process by us.
    let task = tokio::spawn(exec(args(&["sleep", "60"]), Duration::from_secs(5)));
    let executors = |me: i32| -> Vec<u32> {
        processes_mentioning("init\0exec\0")
            .into_iter()
            .filter(|&pid| stat(pid as i32).is_some_and(|(_, ppid)| ppid == me))
            .collect()
    };
    // Stopped once its process runs, so that it cannot be SIGTERMed out of its work.
    let deadline = Instant::now() + Duration::from_secs(20);
    while live_in_cgroup(&cgroup, SLEEP_60).len() != 1 {
        assert!(Instant::now() < deadline, "the exec never ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let found = executors(me);
    assert_eq!(found.len(), 1, "{found:?}");
    kill(Pid::from_raw(found[0] as i32), Signal::SIGSTOP).unwrap();
    let result = task.await.unwrap();
    assert_eq!(result, Err(ExecError::TimedOut(Duration::from_secs(5))));
    assert_eq!(live_in_cgroup(&cgroup, SLEEP_60), Vec::<i32>::new());

    // A call dropped halfway (a cancelled RPC) kills its process too, in the background.
    let dropped = tokio::time::timeout(
        Duration::from_millis(700),
        exec(args(&["sleep", "60"]), Duration::ZERO),
    )
    .await;
    assert!(dropped.is_err());
    let deadline = Instant::now() + Duration::from_secs(5);
    while !live_in_cgroup(&cgroup, SLEEP_60).is_empty() || !exec_leftovers(&state_root).is_empty() {
        assert!(Instant::now() < deadline, "dropped exec still running");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The killed shell's children may outlive it for an instant and end up zombies of the
    // container's init (sleep never reaps, as with any runtime); nothing is left with us.
    assert_eq!(zombie_children(me), Vec::<i32>::new());
    assert_eq!(zombie_children(monitor_pid), Vec::<i32>::new());
    // Nothing of ours is left in the state dir but libcontainer's own.
    assert_eq!(exec_leftovers(&state_root), Vec::<String>::new());

    // Stop and remove the container, then the pod.
    assert!(
        request(
            &pod.dir,
            &Request::Signal {
                id: id.clone(),
                signal: 9
            }
        )
        .ok
    );
    wait_exit(&exit_file);
    assert!(request(&pod.dir, &Request::Delete { id: id.clone() }).ok);
    drop(b);
    berth_e2e::cri::remove_pod(&mut agent.runtime().await, &pod.id).await;
    pod_cleanup.removed = true;
    assert!(
        mounts_under(agent.dir()).is_empty(),
        "{:?}",
        mounts_under(agent.dir())
    );
}
