//! The soak's short run (`make soak` runs 1,000 lifecycles): 100 pod lifecycles with kill -9
//! injection, nothing lost and nothing left. `BERTH_SOAK_SEED` replays a run.

use std::time::Duration;

use berth_e2e::soak::{run, SoakConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_lifecycles_under_kill_9_lose_no_container_or_log_line_and_leak_nothing() {
    let seed = std::env::var("BERTH_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| berth_common::time::now_nanos() as u64);
    let report = run(SoakConfig {
        lifecycles: 100,
        in_flight: 8,
        seed,
        fault_every: Duration::from_millis(700),
    })
    .await;
    eprintln!("{report}");
    assert!(
        report.agent_kills > 0,
        "no fault was injected: the run proves nothing"
    );
    assert!(
        report.clean(),
        "replay with BERTH_SOAK_SEED={seed}:\n{report}"
    );
}
