//! The `hosts_toml` fuzz target's body; its input and its checks are described in
//! `fuzz/fuzz_targets/hosts_toml.rs`. libFuzzer runs it there, coverage-guided (`make fuzz`);
//! `e2e/tests/fuzz_targets.rs` runs it over the seeds and seeded mutations of them (`make test`).

use std::path::Path;

use berth_image::hosts::parse_hosts;

/// Registries of the shapes `hosts_for` is called with: Docker Hub, a host with a port, a
/// loopback one (plain HTTP by default) and an IPv6 literal.
const REGISTRIES: [&str; 4] = [
    "docker.io",
    "registry.example:5000",
    "localhost",
    "[::1]:5000",
];

pub fn run(data: &[u8]) {
    let Some((&pick, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let registry = REGISTRIES[usize::from(pick) % REGISTRIES.len()];
    let path = Path::new("/etc/berth/certs.d/fuzz/hosts.toml");
    let Ok(hosts) = parse_hosts(text, registry, path) else {
        return;
    };
    // The server always comes last, after the mirrors, and stands in for no other registry.
    let server = hosts.last().expect("parse_hosts always yields the server");
    assert_eq!(server.namespace, None, "server from {text:?}");
    for host in &hosts {
        assert!(
            host.origin.starts_with("http://") || host.origin.starts_with("https://"),
            "origin {:?} from {text:?}",
            host.origin
        );
        let url = host.url("/library/busybox/manifests/latest");
        assert!(url.starts_with(&host.origin), "url {url:?} from {text:?}");
    }
}
