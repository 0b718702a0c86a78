//! The soak's short runs (`make soak` runs 1,000 lifecycles): pod lifecycles with kill -9 and
//! reboot injection, and on a root the containers fill; nothing lost and nothing left.
//! `BERTH_SOAK_SEED` replays a run.

use std::time::Duration;

use berth_e2e::soak::{run, SoakConfig};

fn seed() -> u64 {
    std::env::var("BERTH_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| berth_common::time::now_nanos() as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_lifecycles_under_kill_9_and_reboots_lose_no_container_or_log_line_and_leak_nothing(
) {
    let seed = seed();
    let report = run(SoakConfig {
        lifecycles: 100,
        in_flight: 8,
        seed,
        fault_every: Duration::from_millis(700),
        reboot_every: 8,
        small_root_mib: 0,
    })
    .await;
    eprintln!("{report}");
    assert!(
        report.agent_kills > 0 && report.reboots > 0,
        "no kill or no reboot was injected: the run proves nothing"
    );
    assert!(
        report.clean(),
        "replay with BERTH_SOAK_SEED={seed}:\n{report}"
    );
}

/// The agent's root on a 16 MiB ext4 that the containers' writes fill: RPCs fail on the full
/// disk and are retried, and still nothing is lost or left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_lifecycles_on_a_root_the_containers_fill_lose_nothing_and_leak_nothing() {
    let seed = seed();
    let report = run(SoakConfig {
        lifecycles: 40,
        in_flight: 8,
        seed,
        fault_every: Duration::from_millis(700),
        reboot_every: 0,
        small_root_mib: 16,
    })
    .await;
    eprintln!("{report}");
    assert!(
        report.disk_full_rpcs > 0,
        "no RPC met the full disk: the run proves nothing"
    );
    assert!(
        report.clean(),
        "replay with BERTH_SOAK_SEED={seed}:\n{report}"
    );
}
