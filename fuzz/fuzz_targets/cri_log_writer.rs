//! The CRI log writer, fed what a container writes on stdout and stderr, cut the way a pipe
//! might cut it. The file it leaves must hold kubelet's records
//! (`<RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>`), and per stream exactly the
//! records the module promises whatever the cuts: each line (with one `\r` before its `\n`
//! dropped) as `P` records of exactly the limit and a last `F` record, and a line cut off by
//! the end of the stream as such pieces all tagged `P`.
//!
//! Input: a byte choosing the line limit, 12 bytes of timestamp, then chunks, each a control
//! byte (low bit: the stream; the rest: the length) and that many bytes.
#![no_main]

#[path = "../bodies/cri_log_writer.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::run(data));
