//! `<config_path>/<host>/hosts.toml`, written by whoever configures the node. Parsing must not
//! panic, and every host it yields must be usable as a URL prefix.
#![no_main]

#[path = "../bodies/hosts_toml.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
