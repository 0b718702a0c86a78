//! Image references as kubelet sends them in PullImage, ImageStatus and CreateContainer: whatever
//! parses must print back to a reference that parses to the same value, and so must the repo tag
//! and repo digest an image record keeps (kubelet looks images up again by those).
#![no_main]

#[path = "../bodies/image_reference.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
