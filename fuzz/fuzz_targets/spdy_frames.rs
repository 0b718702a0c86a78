//! The SPDY/3.1 side of the streaming server (exec, attach, port-forward): frames and their
//! zlib header blocks, as any client reaching the streaming port may send them. The decoder
//! must not panic, must decode the same frames (and stop at the same error) however the reads
//! cut the stream, and every frame it returns must encode back to itself. Header blocks of
//! SYN_STREAM and HEADERS frames go through one inflater, as in a session, until one fails.
//!
//! Input: a byte choosing the control frame limit and, in its low 3 bits, how many cut sizes
//! follow (each 1 to 256 bytes, used in turn), then the stream.
#![no_main]

#[path = "../bodies/spdy_frames.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
