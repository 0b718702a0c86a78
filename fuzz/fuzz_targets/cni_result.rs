//! What a CNI plugin prints on ADD (and what the result cache keeps of it): any JSON a plugin
//! binary writes must be read or refused without a panic.
#![no_main]

#[path = "../bodies/cni_result.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
