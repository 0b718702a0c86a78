//! Container figures: CreateContainer+StartContainer until Running, ExecSync of `true`, and the
//! memory of the agent plus its per-pod helpers with 1, 10 and 30 running pods.

use std::path::Path;
use std::time::{Duration, Instant};

use berth_e2e::connect;
use berth_e2e::cri::run_pod;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::Channel;

use crate::sandboxes::{helpers_pss_kib, helpers_rss_kib, pod_config};
use crate::{percentile, Figures};

const START_RUNS: usize = 50;
/// Creates each after the runtime sat idle, as kubelet's usually come: fewer, they take long.
const IDLE_STARTS: usize = 10;
/// How long the runtime sits idle before each of them.
const IDLE_BEFORE: Duration = Duration::from_millis(1500);

pub(crate) fn container(image: &str, name: &str) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "3600".into()],
        linux: Some(berth_e2e::cri::container_linux(berth_e2e::cri::namespaces(
            NamespaceMode::Pod,
            NamespaceMode::Container,
            NamespaceMode::Pod,
        ))),
        ..Default::default()
    }
}

async fn start_container(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    config: &PodSandboxConfig,
    image: &str,
    name: &str,
) -> String {
    berth_e2e::cri::create_started(c, pod, config, container(image, name)).await
}

pub(crate) async fn remove_pod(c: &mut RuntimeServiceClient<Channel>, pod: &str) {
    let _ = c
        .stop_pod_sandbox(StopPodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await;
    let _ = c
        .remove_pod_sandbox(RemovePodSandboxRequest {
            pod_sandbox_id: pod.into(),
        })
        .await;
}

fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Exit → STOPPED event: a container that exits at once, its event awaited on a
/// GetContainerEvents stream; the latency is the event's arrival here minus the exit time the
/// runtime recorded (`finished_at` in the event's container status). Median and p99.
async fn exit_event_latency(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    config: &PodSandboxConfig,
    image: &str,
) -> (String, String) {
    const EXITS: usize = 30;
    let name = "exit → STOPPED event, median / p99".to_string();
    let mut events = match c.get_container_events(GetEventsRequest {}).await {
        Ok(r) => r.into_inner(),
        Err(e) => return (name, format!("{:?}", e.code())),
    };
    let mut latencies = Vec::new();
    for i in 0..EXITS {
        let mut cfg = container(image, &format!("exits{i}"));
        cfg.command = vec!["sh".into(), "-c".into(), "exit 0".into()];
        let id = berth_e2e::cri::create_started(c, pod, config, cfg).await;
        let latency = loop {
            let next = tokio::time::timeout(Duration::from_secs(10), events.message()).await;
            let Ok(Ok(Some(event))) = next else {
                return (name, "no STOPPED event within 10 s".into());
            };
            let arrived = now_nanos();
            if event.container_id != id
                || event.container_event_type != ContainerEventType::ContainerStoppedEvent as i32
            {
                continue;
            }
            let finished = event
                .containers_statuses
                .iter()
                .find(|s| s.id == id)
                .map(|s| s.finished_at)
                .unwrap_or(arrived);
            break Duration::from_nanos((arrived - finished).max(0) as u64);
        };
        latencies.push(latency);
        let _ = c
            .remove_container(RemoveContainerRequest { container_id: id })
            .await;
    }
    latencies.sort();
    (
        name,
        format!(
            "{:.2} ms / {:.2} ms",
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        ),
    )
}

/// CPU time (user + system) a process has used, in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

pub async fn measure(
    socket: &Path,
    tag: &str,
    image: &str,
    agent_pid: u32,
    is_helper: &dyn Fn(&str, &str) -> bool,
    figures: &mut Figures,
) {
    let mut c = RuntimeServiceClient::new(connect(socket).await.expect("connect"));
    let config = pod_config(&format!("{tag}-ctr"), 0);
    let pod = run_pod(&mut c, config.clone()).await;
    let runtime_default = Some(SecurityProfile {
        profile_type: security_profile::ProfileType::RuntimeDefault as i32,
        localhost_ref: String::new(),
    });
    // A pod with its own user namespace, where the runtime offers them (containerd 1.6 does
    // not: it would ignore the field and measure a plain pod).
    let offers_userns = c
        .status(StatusRequest { verbose: false })
        .await
        .map(|s| {
            s.into_inner()
                .runtime_handlers
                .iter()
                .any(|h| h.features.is_some_and(|f| f.user_namespaces))
        })
        .unwrap_or(false);
    let userns_pod = if offers_userns {
        let mut cfg = pod_config(&format!("{tag}-userns"), 0);
        let range = IdMapping {
            container_id: 0,
            host_id: (std::process::id() % 4000 + 4096) * 65536,
            length: 65536,
        };
        if let Some(options) = cfg
            .linux
            .as_mut()
            .and_then(|l| l.security_context.as_mut())
            .and_then(|s| s.namespace_options.as_mut())
        {
            options.userns_options = Some(UserNamespace {
                mode: NamespaceMode::Pod as i32,
                uids: vec![range],
                gids: vec![range],
            });
        }
        let id = run_pod(&mut c, cfg.clone()).await;
        Some((id, cfg))
    } else {
        None
    };
    // Interleaved, so that the machine's drift over the runs weighs on all alike: the
    // difference from the plain figure is the profile's cost (under 1 ms is #11's goal), or
    // the user namespace's (idmapped layers, prepared mounts).
    // A variant without a pod is one the runtime does not offer: its rows say so, in their
    // place, since the table pairs berth's rows with the peer's by position.
    let variants = [
        ("", None, Some((pod.clone(), config.clone()))),
        (
            " with seccomp RuntimeDefault",
            runtime_default,
            Some((pod.clone(), config.clone())),
        ),
        (" in a pod user namespace", None, userns_pod.clone()),
    ];
    let mut starts = vec![Vec::new(); variants.len()];
    // CPU of the whole lifecycle, the daemon's and its helpers' (children they waited for
    // included): robust where wall time is not.
    let mut cpu = vec![0u64; variants.len()];
    let family_ticks = || {
        let helpers: u64 = crate::sandboxes::helper_pids(is_helper)
            .filter_map(|p| crate::burst::cpu_ticks_with_children(&p.to_string()))
            .sum();
        crate::burst::cpu_ticks_with_children(&agent_pid.to_string()).unwrap_or(0) + helpers
    };
    // More runs than elsewhere: a create's cgroup migration waits for an RCU grace period
    // (~6 ms here) unless another migration ran just before, which spreads single figures
    // from 9 to 30 ms.
    for i in 0..START_RUNS + 2 {
        for (v, (_, seccomp, on)) in variants.iter().enumerate() {
            let Some((on_pod, on_config)) = on else {
                continue;
            };
            let mut cfg = container(image, &format!("c{i}-{v}"));
            if let Some(s) = cfg.linux.as_mut().and_then(|l| l.security_context.as_mut()) {
                s.seccomp = seccomp.clone();
            }
            let ticks = family_ticks();
            let took = timed_start(&mut c, on_pod, on_config, cfg).await;
            if i >= 2 {
                starts[v].push(took);
                cpu[v] += family_ticks().saturating_sub(ticks);
            }
        }
    }
    if let Some((userns_pod, _)) = &userns_pod {
        remove_pod(&mut c, userns_pod).await;
    }
    // The runs above come back to back, which keeps warm what a lone create finds cold (a
    // cgroup migration's grace period, caches, idle CPUs).
    let mut idle_starts = Vec::new();
    for i in 0..IDLE_STARTS {
        tokio::time::sleep(IDLE_BEFORE).await;
        let cfg = container(image, &format!("idle{i}"));
        idle_starts.push(timed_start(&mut c, &pod, &config, cfg).await);
    }
    idle_starts.sort();
    let offered = |on: &Option<(String, PodSandboxConfig)>, figure: String| {
        if on.is_some() {
            figure
        } else {
            "not offered".to_string()
        }
    };
    for ((label, _, on), mut starts) in variants.iter().zip(starts) {
        starts.sort();
        let median = if starts.is_empty() {
            0.0
        } else {
            percentile(&starts, 0.5).as_secs_f64() * 1e3
        };
        figures.rows.push((
            format!("Create+Start container{label}, median"),
            offered(on, format!("{median:.1} ms")),
        ));
    }
    figures.rows.push((
        format!(
            "Create+Start container after {:.1} s idle, median",
            IDLE_BEFORE.as_secs_f64()
        ),
        format!(
            "{:.1} ms",
            percentile(&idle_starts, 0.5).as_secs_f64() * 1e3
        ),
    ));
    for ((label, _, on), ticks) in variants.iter().zip(cpu) {
        let per = ticks as f64 * 10.0 / START_RUNS as f64;
        figures.rows.push((
            format!("CPU per container lifecycle{label} (daemon + helpers)"),
            offered(on, format!("{per:.1} ms")),
        ));
    }

    let id = start_container(&mut c, &pod, &config, image, "exec").await;
    // Back to back, then each after an idle spell, as kubelet's exec probes come: alone, every
    // few seconds, finding cold what the loop keeps warm.
    for (label, runs, idle) in [
        ("ExecSync of true, median".to_string(), 50, None),
        (
            format!(
                "ExecSync of true after {:.1} s idle, median",
                IDLE_BEFORE.as_secs_f64()
            ),
            IDLE_STARTS,
            Some(IDLE_BEFORE),
        ),
    ] {
        let mut execs = Vec::new();
        let mut failed = None;
        for _ in 0..runs {
            if let Some(idle) = idle {
                tokio::time::sleep(idle).await;
            }
            let t = Instant::now();
            match c
                .exec_sync(ExecSyncRequest {
                    container_id: id.clone(),
                    cmd: vec!["true".into()],
                    timeout: 10,
                })
                .await
            {
                Ok(_) => execs.push(t.elapsed()),
                Err(e) => {
                    failed = Some(e.code());
                    break;
                }
            }
        }
        execs.sort();
        figures.rows.push((
            label,
            match failed {
                None => format!("{:.1} ms", percentile(&execs, 0.5).as_secs_f64() * 1e3),
                Some(code) => format!("{code:?}"),
            },
        ));
    }
    figures
        .rows
        .push(exit_event_latency(&mut c, &pod, &config, image).await);
    remove_pod(&mut c, &pod).await;

    // Memory: the agent plus every per-pod helper, with N pods each running one container.
    let mut pods = Vec::new();
    for target in [1usize, 10, 30] {
        while pods.len() < target {
            let cfg = pod_config(&format!("{tag}-mem"), pods.len());
            let p = run_pod(&mut c, cfg.clone()).await;
            start_container(&mut c, &p, &cfg, image, "sleeper").await;
            pods.push(p);
        }
        tokio::time::sleep(crate::SETTLE).await;
        let total = crate::rss_kib(agent_pid).unwrap_or(0) + helpers_rss_kib(is_helper);
        figures.rows.push((
            format!("agent + helpers RSS, {target} pods"),
            format!("{:.1} MiB", total as f64 / 1024.0),
        ));
        let helpers = helpers_pss_kib(is_helper);
        let total = crate::pss_kib(agent_pid).unwrap_or(0) + helpers;
        figures.rows.push((
            format!("agent + helpers PSS, {target} pods"),
            format!("{:.1} MiB", total as f64 / 1024.0),
        ));
        figures.rows.push((
            format!("helpers PSS per pod, {target} pods"),
            format!("{:.2} MiB", helpers as f64 / 1024.0 / target as f64),
        ));
    }
    // What kubelet's stats poll costs with those 30 containers running.
    const POLLS: u32 = 20;
    let ticks_before = cpu_ticks(agent_pid);
    let mut polls = Vec::new();
    let mut listed = 0;
    for _ in 0..POLLS {
        let t = Instant::now();
        match c
            .list_container_stats(ListContainerStatsRequest::default())
            .await
        {
            Ok(r) => listed = r.into_inner().stats.len(),
            Err(e) => {
                listed = 0;
                eprintln!("ListContainerStats: {e}");
                break;
            }
        }
        polls.push(t.elapsed());
    }
    let ticks = ticks_before.zip(cpu_ticks(agent_pid)).map(|(a, b)| b - a);
    polls.sort();
    figures.rows.push((
        format!("ListContainerStats, {listed} containers, median"),
        match polls.is_empty() {
            true => "failed".to_string(),
            false => format!("{:.1} ms", percentile(&polls, 0.5).as_secs_f64() * 1e3),
        },
    ));
    figures.rows.push((
        "agent CPU per stats poll (30 containers)".into(),
        match ticks {
            // Clock ticks are 10 ms.
            Some(t) if !polls.is_empty() => {
                format!("{:.1} ms", t as f64 * 10.0 / polls.len() as f64)
            }
            _ => "-".to_string(),
        },
    ));
    for p in &pods {
        remove_pod(&mut c, p).await;
    }
}

/// Creates and starts a container in `pod`, then stops (no grace) and removes it; returns how
/// long the create and start took. Stop and remove are best effort: the figure is the start's.
async fn timed_start(
    c: &mut RuntimeServiceClient<Channel>,
    pod: &str,
    sandbox_config: &PodSandboxConfig,
    config: ContainerConfig,
) -> Duration {
    let t = Instant::now();
    let id = berth_e2e::cri::create_started(c, pod, sandbox_config, config).await;
    let took = t.elapsed();
    let _ = c
        .stop_container(StopContainerRequest {
            container_id: id.clone(),
            timeout: 0,
        })
        .await;
    let _ = c
        .remove_container(RemoveContainerRequest { container_id: id })
        .await;
    took
}
