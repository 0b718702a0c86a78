//! A CNI plugin for the tests: chained after another, its ADD records itself in `<gate>.adds`,
//! creates `<gate>.waiting`, and holds until the file `gate` (from its network config) exists,
//! then passes the previous result through. It lets a test act while a RunPodSandbox is
//! half-way (its record reads `creating`), as a slow real plugin would. DEL and CHECK succeed.

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
            let gate = std::path::PathBuf::from(config["gate"].as_str().unwrap_or("/nonexistent"));
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
            let _ = std::fs::write(gate.with_extension("waiting"), b"");
            let deadline = Instant::now() + Duration::from_secs(120);
            while !gate.exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            config
                .get("prevResult")
                .cloned()
                .unwrap_or_else(|| serde_json::json!({"cniVersion": version}))
        }
        _ => return,
    };
    println!("{out}");
}
