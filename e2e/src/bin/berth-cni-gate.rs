//! A CNI plugin for the tests, chained after another. With `gate` in its network config, its
//! ADD records itself in `<gate>.adds`, creates `<gate>.waiting`, and holds until the file
//! `gate` exists, then passes the previous result through: a test acts while a RunPodSandbox is
//! half-way (its record reads `creating`), as a slow real plugin would. With `delGate`, its DEL
//! (the first of the chain's) creates `<delGate>.waiting` and holds until the file `delGate`
//! exists: a test acts while a StopPodSandbox tears the network down. Without them, and for
//! CHECK, it succeeds at once.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn main() {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut input = String::new();
    let _ = std::io::stdin().read_to_string(&mut input);
    let config: serde_json::Value = serde_json::from_str(&input).unwrap_or_default();
    let version = config["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
    let out = match command.as_str() {
        "VERSION" => serde_json::json!({
            "cniVersion": version,
            "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"],
        }),
        "ADD" => {
            if let Some(gate) = config["gate"].as_str() {
                hold_add(std::path::Path::new(gate));
            }
            config
                .get("prevResult")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"cniVersion": version}))
        }
        "DEL" => {
            if let Some(gate) = config["delGate"].as_str() {
                hold(std::path::Path::new(gate));
            }
            return;
        }
        _ => return,
    };
    println!("{out}");
}

/// Records the ADD's container id in `<gate>.adds`, then holds.
fn hold_add(gate: &std::path::Path) {
    let mut adds = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(gate.with_extension("adds"))
        .expect("open the adds log");
    let _ = writeln!(
        adds,
        "{}",
        std::env::var("CNI_CONTAINERID").unwrap_or_default()
    );
    hold(gate);
}

/// Creates `<gate>.waiting`, then waits (up to 120 s) until `gate` exists.
fn hold(gate: &std::path::Path) {
    let _ = std::fs::write(gate.with_extension("waiting"), b"");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !gate.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}
