//! Manifests, indexes and image configs as a registry (or anything posing as one) serves them.
//! The first byte picks the Content-Type the registry claimed; the rest is the document.
#![no_main]

#[path = "../bodies/image_manifest.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
