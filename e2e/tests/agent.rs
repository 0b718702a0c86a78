//! The agent itself: CRI basics, metrics, configuration, socket and lock handling, shutdown.

use std::os::unix::fs::PermissionsExt;

use berth_e2e::{run_berthd, AgentPaths, TempDir, TestAgent};
use k8s_cri::v1::*;

#[tokio::test]
async fn version_reports_berth_and_cri_v1() {
    let agent = TestAgent::start().await;
    let v = agent
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(v.runtime_name, "berth");
    assert_eq!(v.runtime_api_version, "v1");
    assert_eq!(v.version, "0.1.0");
    assert!(!v.runtime_version.is_empty());
}

#[tokio::test]
async fn status_reports_runtime_ready_and_network_not_ready() {
    let agent = TestAgent::start().await;
    let mut client = agent.runtime().await;
    let s = client
        .status(StatusRequest { verbose: false })
        .await
        .unwrap()
        .into_inner();
    let conditions = s.status.unwrap().conditions;
    let runtime = conditions
        .iter()
        .find(|c| c.r#type == "RuntimeReady")
        .unwrap();
    assert!(runtime.status);
    let network = conditions
        .iter()
        .find(|c| c.r#type == "NetworkReady")
        .unwrap();
    assert!(!network.status);
    assert_eq!(network.reason, "NetworkPluginNotReady");
    assert!(s.info.is_empty(), "info only when verbose");
}

/// RuntimeReady says whether pods can be made: a state dir that takes no file (here remounted
/// read-only) turns it false with the reason, and it is true again once the dir is writable.
#[tokio::test]
async fn runtime_ready_follows_a_writable_state_dir() {
    let agent = TestAgent::start().await;
    let mut client = agent.runtime().await;
    let runtime_ready = |s: StatusResponse| {
        s.status
            .unwrap()
            .conditions
            .into_iter()
            .find(|c| c.r#type == "RuntimeReady")
            .unwrap()
    };
    let ask = |client: &mut berth_e2e::RuntimeClient| {
        let mut client = client.clone();
        async move {
            runtime_ready(
                client
                    .status(StatusRequest { verbose: false })
                    .await
                    .unwrap()
                    .into_inner(),
            )
        }
    };
    assert!(ask(&mut client).await.status);
    let pods = agent.paths.state.join("pods");
    // Undone even if the test fails.
    struct ReadOnly(std::path::PathBuf);
    impl Drop for ReadOnly {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    use nix::mount::{mount, MsFlags};
    mount(
        Some(&pods),
        &pods,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let read_only = ReadOnly(pods.clone());
    mount(
        None::<&str>,
        &pods,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
        None::<&str>,
    )
    .unwrap();
    let c = ask(&mut client).await;
    assert!(!c.status, "{c:?}");
    assert_eq!(c.reason, "BerthNotReady");
    assert!(c.message.contains("Read-only file system"), "{}", c.message);
    drop(read_only);
    assert!(ask(&mut client).await.status);
}

#[tokio::test]
async fn verbose_status_shows_effective_config_and_pod_cidr() {
    let agent = TestAgent::start().await;
    let mut client = agent.runtime().await;
    client
        .update_runtime_config(UpdateRuntimeConfigRequest {
            runtime_config: Some(RuntimeConfig {
                network_config: Some(NetworkConfig {
                    pod_cidr: "10.244.3.0/24".to_string(),
                }),
            }),
        })
        .await
        .unwrap();
    let s = client
        .status(StatusRequest { verbose: true })
        .await
        .unwrap()
        .into_inner();
    let config: serde_json::Value = serde_json::from_str(&s.info["config"]).unwrap();
    assert_eq!(config["root"], agent.paths.root.to_str().unwrap());
    assert_eq!(
        config["grpc"]["address"],
        agent.paths.socket.to_str().unwrap()
    );
    assert_eq!(config["runtime"]["cgroup_driver"], "cgroupfs");
    assert_eq!(s.info["podCIDR"], "\"10.244.3.0/24\"");
}

#[tokio::test]
async fn runtime_config_reports_cgroupfs_driver() {
    let agent = TestAgent::start().await;
    let r = agent
        .runtime()
        .await
        .runtime_config(RuntimeConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.linux.unwrap().cgroup_driver,
        CgroupDriver::Cgroupfs as i32
    );
}

#[tokio::test]
async fn unimplemented_rpcs_say_so_by_name() {
    let agent = TestAgent::start().await;
    let err = agent
        .runtime()
        .await
        .checkpoint_container(CheckpointContainerRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert_eq!(
        err.message(),
        "berth: CheckpointContainer is not implemented yet"
    );
}

#[tokio::test]
async fn metrics_count_the_rpcs_just_made() {
    let agent = TestAgent::start().await;
    let mut client = agent.runtime().await;
    for _ in 0..3 {
        client
            .status(StatusRequest { verbose: false })
            .await
            .unwrap();
    }
    let _ = client
        .container_stats(ContainerStatsRequest::default())
        .await;
    let text = agent.scrape();
    assert!(
        text.contains(r#"berth_cri_operations_total{operation="Status",code="OK"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(
            r#"berth_cri_operations_total{operation="ContainerStats",code="NotFound"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(r#"berth_cri_operation_duration_seconds_count{operation="Status"} 3"#),
        "{text}"
    );
    assert!(text.contains(r#"berth_build_info{version="#), "{text}");
    // The default driver, and this host's layout (hybrid here, v2 on the node lane).
    let layout = berth_runtime::cgroups::layout(&berth_runtime::cgroups::hierarchies());
    assert!(
        text.contains(&format!(
            r#"berth_cgroup_info{{driver="cgroupfs",hierarchy="{layout}"}} 1"#
        )),
        "{text}"
    );
}

#[tokio::test]
async fn two_agents_run_side_by_side() {
    let a = TestAgent::start().await;
    let b = TestAgent::start().await;
    for agent in [&a, &b] {
        let v = agent
            .runtime()
            .await
            .version(VersionRequest::default())
            .await
            .unwrap();
        assert_eq!(v.into_inner().runtime_name, "berth");
        assert!(agent.scrape().contains("berth_build_info"));
    }
}

#[tokio::test]
async fn second_agent_on_the_same_state_dir_is_refused() {
    let first = TestAgent::start().await;
    // Same root and state, but its own socket and metrics port: only the lock can stop it.
    let dir = TempDir::new("berth-e2e-second");
    let mut paths = AgentPaths::under(dir.path());
    paths.root = first.paths.root.clone();
    paths.state = first.paths.state.clone();
    std::fs::write(&paths.config, paths.config_text("")).unwrap();
    let (status, _, stderr) = run_berthd(&["--config", paths.config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains("another berthd"), "{stderr}");
    assert!(stderr.contains(&format!("pid {}", first.pid())), "{stderr}");
    assert!(
        !paths.socket.exists(),
        "the refused agent must not bind its socket"
    );
    // The first agent is unharmed.
    first
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

/// A lock whose named agent is dead but that something still holds (a child the agent had
/// forked and not yet exec'd when it was SIGKILLed: it closes the lock at its exec) is waited
/// for, not taken for a running agent.
#[tokio::test]
async fn a_state_lock_held_on_after_its_agent_died_is_waited_for() {
    let dir = TempDir::new("berth-e2e-lock");
    let paths = AgentPaths::under(dir.path());
    std::fs::write(&paths.config, paths.config_text("")).unwrap();
    std::fs::create_dir_all(&paths.state).unwrap();
    let lock = paths.state.join("berthd.lock");
    // The dead agent: a process that has exited and been reaped.
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    dead.wait().unwrap();
    std::fs::write(&lock, format!("{}\n", dead.id())).unwrap();
    // What it left holding the lock, for a moment (util-linux's flock).
    let mut holder = std::process::Command::new("flock")
        .arg("--exclusive")
        .arg(&lock)
        .args(["sleep", "1"])
        .spawn()
        .unwrap();
    let held = || {
        std::fs::File::open(&lock)
            .unwrap()
            .try_lock()
            .is_err_and(|e| matches!(e, std::fs::TryLockError::WouldBlock))
    };
    while !held() {
        assert!(holder.try_wait().unwrap().is_none(), "flock exited");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let agent = TestAgent::start_in(dir, paths).await;
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        agent.pid().to_string()
    );
    holder.wait().unwrap();
}

/// The systemd driver needs systemd as init (the node lane runs it where it is).
#[tokio::test]
async fn the_systemd_driver_without_systemd_is_refused_at_start() {
    if berth_runtime::cgroups::systemd::booted() {
        berth_e2e::skip(
            "the_systemd_driver_without_systemd_is_refused_at_start",
            "systemd is this host's init",
        );
        return;
    }
    let dir = TempDir::new("berth-e2e-nosystemd");
    let paths = AgentPaths::under(dir.path());
    std::fs::write(
        &paths.config,
        paths.config_text("[runtime]\ncgroup_driver = \"systemd\"\n"),
    )
    .unwrap();
    let (status, _, stderr) = run_berthd(&["--config", paths.config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(
        stderr.contains("runtime.cgroup_driver") && stderr.contains("not this host's init"),
        "{stderr}"
    );
    assert!(!paths.socket.exists(), "{stderr}");
}

#[tokio::test]
async fn a_socket_in_use_is_refused() {
    let first = TestAgent::start().await;
    let dir = TempDir::new("berth-e2e-busy");
    let mut paths = AgentPaths::under(dir.path());
    paths.socket = first.paths.socket.clone();
    std::fs::write(&paths.config, paths.config_text("")).unwrap();
    let (status, _, stderr) = run_berthd(&["--config", paths.config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains("is in use by another process"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    first
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stale_socket_is_replaced() {
    let dir = TempDir::new("berth-e2e-stale");
    let paths = AgentPaths::under(dir.path());
    std::fs::create_dir_all(paths.socket.parent().unwrap()).unwrap();
    // A socket file whose listener is gone, as a killed agent leaves it.
    drop(std::os::unix::net::UnixListener::bind(&paths.socket).unwrap());
    assert!(paths.socket.exists());
    std::fs::write(&paths.config, paths.config_text("")).unwrap();
    let agent = TestAgent::start_in(dir, paths).await;
    agent
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn socket_is_0660_in_a_0700_directory() {
    let agent = TestAgent::start().await;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&agent.paths.socket), 0o660);
    assert_eq!(mode(agent.paths.socket.parent().unwrap()), 0o700);
}

/// Snapshots and containers' writable layers may hold setuid binaries an image or a container
/// wrote: no other host user may reach them (the Docker CVE-2021-41091 pattern), whatever mode
/// the root dir has; directories an older berthd left 0755 are tightened.
#[tokio::test]
async fn data_directories_are_private_to_root_even_when_they_existed() {
    let dir = TempDir::new("berth-e2e");
    let paths = AgentPaths::under(dir.path());
    std::fs::write(&paths.config, paths.config_text("")).unwrap();
    for d in [paths.root.join("snapshots"), paths.root.join("containers")] {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let agent = TestAgent::start_in(dir, paths).await;
    let mode = |p: std::path::PathBuf| std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
    let (root, state) = (&agent.paths.root, &agent.paths.state);
    for private in [root.join("snapshots"), root.join("containers")] {
        assert_eq!(mode(private.clone()), 0o700, "{}", private.display());
    }
    // Bundles are closed one by one (0700; 0710 in a user namespace): their parent is passed
    // through, so a pod's root can reach its own.
    assert_eq!(mode(state.join("containers")), 0o711);
}

#[tokio::test]
async fn sigterm_shuts_down_cleanly() {
    let mut agent = TestAgent::start().await;
    let mut client = agent.runtime().await;
    client.version(VersionRequest::default()).await.unwrap();
    // An idle connection and an open event stream, as kubelet keeps them, must not hold the
    // shutdown up until the grace timeout.
    let _events = agent
        .runtime()
        .await
        .get_container_events(GetEventsRequest {})
        .await
        .unwrap()
        .into_inner();
    let status = agent.stop();
    assert!(status.success(), "exit {status}: {}", agent.log());
    assert!(
        !agent
            .log()
            .contains("RPCs still running after the shutdown timeout"),
        "shutdown waited for idle clients: {}",
        agent.log()
    );
    assert!(!agent.paths.socket.exists(), "socket removed");
    assert!(
        !agent.paths.state.join("berthd.lock").exists(),
        "lock removed"
    );
    assert!(agent.log().contains("berthd stopped"), "{}", agent.log());
    assert!(client.version(VersionRequest::default()).await.is_err());
}

#[tokio::test]
async fn sigint_shuts_down_cleanly() {
    let mut agent = TestAgent::start().await;
    let status = agent.stop_with(nix::sys::signal::Signal::SIGINT);
    assert!(status.success(), "exit {status}");
    assert!(!agent.paths.socket.exists());
}

#[test]
fn bad_config_gives_one_line_naming_the_key() {
    let dir = TempDir::new("berth-e2e-badconf");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, "[grpc]\naddress = \"/tmp/x.sock\"\nport = 5\n").unwrap();
    let (status, stdout, stderr) = run_berthd(&["--config", config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stdout.is_empty());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("line 3"), "{stderr}");
    assert!(stderr.contains("port"), "{stderr}");

    std::fs::write(&config, "[metrics]\naddress = 9810\n").unwrap();
    let (status, _, stderr) = run_berthd(&["config", "check", config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains("metrics.address"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

#[test]
fn missing_config_file_named_explicitly_is_an_error() {
    let dir = TempDir::new("berth-e2e-noconf");
    let config = dir.path().join("absent.toml");
    let (status, _, stderr) = run_berthd(&["--config", config.to_str().unwrap()]);
    assert!(!status.success());
    assert!(stderr.contains("absent.toml: cannot read"), "{stderr}");
}

#[test]
fn state_dir_that_cannot_be_made_gives_one_line() {
    let dir = TempDir::new("berth-e2e-baddir");
    let blocker = dir.path().join("file");
    std::fs::write(&blocker, "").unwrap();
    let mut paths = AgentPaths::under(dir.path());
    paths.state = blocker.join("state");
    std::fs::write(&paths.config, paths.config_text("")).unwrap();
    let (status, _, stderr) = run_berthd(&["--config", paths.config.to_str().unwrap()]);
    assert!(!status.success());
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot create directory"), "{stderr}");
}

#[test]
fn config_default_prints_every_section_and_checks_clean() {
    let (status, stdout, _) = run_berthd(&["config", "default"]);
    assert!(status.success());
    for key in [
        "root =",
        "[grpc]",
        "[metrics]",
        "[log]",
        "[cni]",
        "[registry]",
        "[runtime]",
        "cgroup_driver",
    ] {
        assert!(stdout.contains(key), "missing {key}:\n{stdout}");
    }
    let dir = TempDir::new("berth-e2e-defconf");
    let config = dir.path().join("config.toml");
    std::fs::write(&config, &stdout).unwrap();
    let (status, stdout, stderr) = run_berthd(&["config", "check", config.to_str().unwrap()]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
}

/// `berthd config default | head -1`: a reader that goes before the output is written is no
/// fault of berthd's. It ends quietly, without a panic's message on stderr.
#[test]
fn config_output_into_a_closed_pipe_ends_quietly() {
    let dir = TempDir::new("berth-e2e-epipe");
    let config = dir.path().join("config.toml");
    let (_, text, _) = run_berthd(&["config", "default"]);
    std::fs::write(&config, text).unwrap();
    for args in [
        vec!["config", "default"],
        vec!["config", "check", config.to_str().unwrap()],
        vec!["version"],
    ] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = std::process::Command::new(berth_e2e::berthd_path())
            .args(&args)
            .env_remove("RUST_LOG")
            .stdout(write)
            .stderr(std::process::Stdio::piped())
            .output()
            .expect("run berthd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code().is_some(), "{args:?}: {:?}", out.status);
        assert!(stderr.is_empty(), "{args:?}: {stderr}");
    }
}

#[tokio::test]
async fn metrics_endpoint_can_be_turned_off() {
    let dir = TempDir::new("berth-e2e-nometrics");
    let mut paths = AgentPaths::under(dir.path());
    let port = paths.metrics.clone();
    paths.metrics = String::new();
    std::fs::write(&paths.config, paths.config_text("")).unwrap();
    let agent = TestAgent::start_in(dir, paths).await;
    agent
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
    assert!(
        std::net::TcpStream::connect(&port).is_err(),
        "nothing listens on {port}"
    );
}

/// grpc-go before 1.62 (crictl/critest 1.29, kubelet of that age) sends the percent-encoded
/// socket path as `:authority`, which the h2 crate rejects unless berth rewrites it. This speaks
/// HTTP/2 by hand so that the test does not depend on a Go client being installed.
#[tokio::test]
async fn old_grpc_go_percent_encoded_authority_is_accepted() {
    use std::io::{Read, Write};

    let agent = TestAgent::start().await;
    let socket = agent.paths.socket.clone();
    let reply = tokio::task::spawn_blocking(move || {
        fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
            let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
            f.extend([kind, flags]);
            f.extend(stream.to_be_bytes());
            f.extend(payload);
            f
        }
        fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
            // Literal without indexing, new name, no Huffman.
            out.push(0x00);
            out.push(name.len() as u8);
            out.extend(name);
            out.push(value.len() as u8);
            out.extend(value);
        }
        let mut block = Vec::new();
        literal(&mut block, b":method", b"POST");
        literal(&mut block, b":scheme", b"http");
        literal(&mut block, b":path", b"/runtime.v1.RuntimeService/Version");
        literal(&mut block, b":authority", b"%2Frun%2Fberth%2Fberth.sock");
        literal(&mut block, b"content-type", b"application/grpc");
        literal(&mut block, b"te", b"trailers");
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        out.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
        out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // empty VersionRequest, END_STREAM
        let mut conn = std::os::unix::net::UnixStream::connect(socket).unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        conn.write_all(&out).unwrap();
        // Read frames until the response ends or the stream is reset.
        let mut data = Vec::new();
        loop {
            let mut header = [0u8; 9];
            conn.read_exact(&mut header).unwrap();
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            conn.read_exact(&mut payload).unwrap();
            let stream =
                u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
            match (header[3], stream) {
                (0x3, 1) => panic!("stream reset: error code {payload:?}"),
                (0x7, _) => panic!("GOAWAY: {payload:?}"),
                (0x0, 1) => data.extend(payload),
                (0x1, 1) if header[4] & 0x1 != 0 => return data, // trailers end the stream
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(
        reply.windows(5).any(|w| w == b"berth"),
        "a VersionResponse naming berth, got {reply:?}"
    );
}

/// `berthd health`, for probes and scripts: exit 0 with one line naming the agent and its
/// readiness while the socket from the config answers; exit 1 naming the socket once nothing
/// answers there. `berthd version` prints the version and the CRI API it serves.
#[tokio::test]
async fn health_answers_for_a_serving_agent_and_fails_naming_the_socket_once_it_is_gone() {
    let mut agent = TestAgent::start().await;
    let config = agent.paths.config.clone();
    let health = || {
        std::process::Command::new(berth_e2e::berthd_path())
            .args(["--config"])
            .arg(&config)
            .args(["health", "--timeout-secs", "10"])
            .output()
            .expect("run berthd health")
    };
    let up = health();
    let said = String::from_utf8_lossy(&up.stdout).into_owned();
    assert!(up.status.success(), "{up:?}");
    assert!(
        said.starts_with("berthd: ok: berth 0.1.0 on ") && said.contains("RuntimeReady"),
        "{said:?}"
    );
    // No CNI config: NetworkReady is false, and said, but the agent is healthy.
    assert!(said.contains("NetworkReady false"), "{said:?}");

    agent.stop();
    let down = health();
    let said = String::from_utf8_lossy(&down.stderr).into_owned();
    assert_eq!(down.status.code(), Some(1), "{down:?}");
    assert!(
        said.contains(&agent.paths.socket.display().to_string()),
        "{said:?}"
    );

    let version = std::process::Command::new(berth_e2e::berthd_path())
        .arg("version")
        .output()
        .expect("run berthd version");
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout),
        "berthd 0.1.0 (CRI v1)\n"
    );
}

/// `[grpc] gid`: the socket is root:<gid> 0660 and the directory berth made for it is 0710 with
/// that group, so the group's members can reach it; a directory berth did not make is left as
/// it was.
#[tokio::test]
async fn the_socket_group_is_the_configured_gid_and_only_berths_own_directory_changes() {
    use std::os::unix::fs::MetadataExt;
    let gid = 4242;
    let write_config = |paths: &AgentPaths| {
        let text = paths.config_text("");
        let text = text.replace("[grpc]\n", &format!("[grpc]\ngid = {gid}\n"));
        std::fs::write(&paths.config, text).unwrap();
    };
    let dir = TempDir::new("berth-e2e-gid");
    let paths = AgentPaths::under(dir.path());
    write_config(&paths);
    let agent = TestAgent::start_in(dir, paths).await;
    let meta = |p: &std::path::Path| std::fs::metadata(p).unwrap();
    let socket = &agent.paths.socket;
    assert_eq!(
        (meta(socket).mode() & 0o777, meta(socket).gid()),
        (0o660, gid)
    );
    let made = socket.parent().unwrap();
    assert_eq!((meta(made).mode() & 0o777, meta(made).gid()), (0o710, gid));
    drop(agent);

    let dir = TempDir::new("berth-e2e-gid");
    let mut paths = AgentPaths::under(dir.path());
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o755)).unwrap();
    paths.socket = shared.join("berth.sock");
    write_config(&paths);
    let agent = TestAgent::start_in(dir, paths).await;
    assert_eq!(meta(&agent.paths.socket).gid(), gid);
    assert_eq!(
        (meta(&shared).mode() & 0o777, meta(&shared).gid()),
        (0o755, 0)
    );
}

/// SIGHUP (`systemctl reload berthd`) applies the file's `[log] level` to the running agent; a
/// file that no longer loads changes nothing, is logged, and is counted as an error.
#[tokio::test]
async fn sighup_reloads_the_log_level_and_a_broken_file_changes_nothing() {
    let dir = TempDir::new("berth-e2e-hup");
    let paths = AgentPaths::under(dir.path());
    let debug = paths.config_text("");
    assert!(debug.contains("level = \"debug\""));
    let info = debug.replace("level = \"debug\"", "level = \"info\"");
    std::fs::write(&paths.config, &info).unwrap();
    let agent = TestAgent::start_in(dir, paths).await;
    // The CRI layer logs each finished RPC at debug ("done").
    let version = || async {
        agent
            .runtime()
            .await
            .version(VersionRequest::default())
            .await
            .unwrap();
    };
    let debug_lines = || agent.log().lines().filter(|l| l.contains("DEBUG")).count();
    version().await;
    assert_eq!(debug_lines(), 0, "{}", agent.log());

    let hup = |outcome: &str, count: f64| {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        let series = format!("berth_config_reloads_total{{outcome=\"{outcome}\"}}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while agent.metric(&series) < count {
            assert!(
                std::time::Instant::now() < deadline,
                "{series} never reached {count}"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    std::fs::write(&agent.paths.config, &debug).unwrap();
    hup("success", 1.0);
    version().await;
    assert!(debug_lines() > 0, "{}", agent.log());

    // A broken file: the error is logged, the level stays debug, the agent serves on.
    std::fs::write(&agent.paths.config, "[log]\nlevel = \n").unwrap();
    hup("error", 1.0);
    assert!(
        agent.log().contains("configuration not reloaded"),
        "{}",
        agent.log()
    );
    let before = debug_lines();
    version().await;
    assert!(debug_lines() > before, "{}", agent.log());
    assert_eq!(
        agent.metric("berth_config_reloads_total{outcome=\"success\"}"),
        1.0
    );
}

/// docs/operations.md names every metric family the agent exposes, as it is exposed (counters
/// with `_total`) in its metrics table, so an operator can look up anything /metrics shows. A labelled family shows
/// nothing on /metrics before its first sample, so the names registered in the crates' sources
/// (a `"berth_…"` literal on a line of its own) are looked up too, with or without `_total`.
#[tokio::test]
async fn the_operators_guide_names_every_metric_family() {
    let agent = TestAgent::start().await;
    agent
        .runtime()
        .await
        .version(VersionRequest::default())
        .await
        .unwrap();
    let guide = include_str!("../../docs/operations.md");
    // A row of the metrics reference's table: `| `name` | type | labels | meaning |`.
    let named = |name: &str| guide.contains(&format!("| `{name}` |"));
    let mut missing: Vec<String> = agent
        .scrape()
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .map(|(name, kind)| match kind {
            "counter" => format!("{name}_total"),
            _ => name.to_string(),
        })
        .filter(|name| !named(name))
        .collect();
    let registered = registered_metric_names();
    assert!(
        registered.len() >= 30,
        "the source scan found only {registered:?}"
    );
    missing.extend(
        registered
            .into_iter()
            .filter(|name| !named(name) && !named(&format!("{name}_total"))),
    );
    assert!(missing.is_empty(), "not in docs/operations.md: {missing:?}");
}

/// Every `"berth_<name>"` literal standing alone on a line in the workspace crates' `src/`
/// (the first argument of a metric's registration), tests and the e2e crate left out.
fn registered_metric_names() -> Vec<String> {
    fn walk(dir: &std::path::Path, names: &mut Vec<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                for line in code.lines() {
                    let name = line.trim().trim_end_matches(',');
                    let Some(name) = name.strip_prefix('"').and_then(|n| n.strip_suffix('"'))
                    else {
                        continue;
                    };
                    if name.starts_with("berth_")
                        && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                    {
                        names.push(name.to_string());
                    }
                }
            }
        }
    }
    let top = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut names = Vec::new();
    for krate in [
        "src",
        "cri/src",
        "streaming/src",
        "podsandbox/src",
        "image/src",
        "cni/src",
        "runtime/src",
        "common/src",
    ] {
        walk(&top.join(krate), &mut names);
    }
    names.sort();
    names.dedup();
    names
}
