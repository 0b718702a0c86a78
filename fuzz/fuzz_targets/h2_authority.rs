//! The HTTP/2 `:authority` rewriter in front of the CRI gRPC server: it reads every byte a
//! client sends on the socket. It must not panic, must give the same bytes however the reads cut
//! the stream (incomplete frames are held back until the rest arrives), and never makes the
//! stream longer (a replaced value is never longer than the original).
//!
//! Input: a byte whose low 3 bits count the cut sizes that follow (each 1 to 256 bytes, used in
//! turn), then the client-to-server stream, starting with the 24-byte preface.
#![no_main]

#[path = "../bodies/h2_authority.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
