//! `make soak`: pod lifecycles against a real berthd while it is killed at seeded random
//! moments (`berth_e2e::soak`). Prints the seed and the leak table; exits 1 unless all is
//! clean. `berth-soak [--lifecycles N] [--in-flight N] [--seed N] [--fault-every-ms N]
//! [--reboot-every N] [--small-root-mib N]`: every Nth fault a reboot; the agent's root on a
//! loop-mounted ext4 of N MiB that the containers fill.

use std::time::Duration;

use berth_e2e::soak::{run, SoakConfig};

fn main() {
    let mut config = SoakConfig {
        lifecycles: 1000,
        in_flight: 8,
        seed: berth_common::time::now_nanos() as u64,
        fault_every: Duration::from_millis(700),
        reboot_every: 0,
        small_root_mib: 0,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok());
        let Some(value) = value else {
            eprintln!("berth-soak: {flag} needs a number");
            std::process::exit(2);
        };
        match flag.as_str() {
            "--lifecycles" => config.lifecycles = value as usize,
            "--in-flight" => config.in_flight = value as usize,
            "--seed" => config.seed = value,
            "--fault-every-ms" => config.fault_every = Duration::from_millis(value),
            "--reboot-every" => config.reboot_every = value as usize,
            "--small-root-mib" => config.small_root_mib = value,
            _ => {
                eprintln!("berth-soak: unknown flag {flag}");
                std::process::exit(2);
            }
        }
    }
    eprintln!(
        "berth-soak: seed {} (replay with --seed {})",
        config.seed, config.seed
    );
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let report = runtime.block_on(run(config));
    println!("{report}");
    std::process::exit(if report.clean() { 0 } else { 1 });
}
