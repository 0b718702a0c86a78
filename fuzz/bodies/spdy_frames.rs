//! The `spdy_frames` fuzz target's body; its input and its checks are described in
//! `fuzz/fuzz_targets/spdy_frames.rs`. libFuzzer runs it there, coverage-guided (`make fuzz`);
//! `e2e/tests/fuzz_targets.rs` runs it over the seeds and seeded mutations of them (`make test`).

use berth_streaming::spdy::frame::{Decoder, Frame, FrameError};
use berth_streaming::spdy::headers::Inflater;
use berth_streaming::spdy::Limits;
use bytes::BytesMut;

/// A session's defaults, then small limits that a fuzzer's frames do reach.
fn limits(pick: u8) -> (usize, usize) {
    let default = Limits::default();
    match pick >> 6 {
        0 | 1 => (default.max_control_frame, default.max_header_block),
        2 => (64, 256),
        _ => (16, 64),
    }
}

/// Decodes `stream` fed in pieces of the given sizes (all at once when there are none).
fn decode_all(
    decoder: &Decoder,
    stream: &[u8],
    sizes: &[usize],
) -> (Vec<Frame>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut sizes = sizes.iter().copied().cycle();
    let mut left = stream;
    while !left.is_empty() {
        let n = sizes.next().unwrap_or(left.len()).min(left.len());
        let (piece, after) = left.split_at(n);
        buf.extend_from_slice(piece);
        left = after;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                // The session answers GOAWAY and reads no further.
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

pub fn run(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (max_control, max_header_block) = limits(head);
    let (cuts, stream) = rest.split_at(usize::from(head & 7).min(rest.len()));
    let sizes: Vec<usize> = cuts.iter().map(|&c| usize::from(c) + 1).collect();

    let decoder = Decoder::new(max_control);
    let whole = decode_all(&decoder, stream, &[]);
    let cut = decode_all(&decoder, stream, &sizes);
    assert!(
        cut == whole,
        "cut at {sizes:?}: decodes differently from one read"
    );

    let (frames, _) = whole;
    let mut inflater = Inflater::new(max_header_block);
    let mut inflating = true;
    for frame in &frames {
        let mut wire = BytesMut::new();
        frame.encode(&mut wire);
        let again = Decoder::new(usize::MAX).decode(&mut wire);
        assert!(
            again.as_ref() == Ok(&Some(frame.clone())) && wire.is_empty(),
            "{frame:?} encodes to something that decodes as {again:?}"
        );
        if let Frame::SynStream { headers, .. } | Frame::Headers { headers, .. } = frame {
            // One zlib stream per direction: after a failed block the session is over.
            if inflating {
                inflating = inflater.decode(headers).is_ok();
            }
        }
    }
}
