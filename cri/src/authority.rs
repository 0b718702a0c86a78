//! Makes older gRPC clients' `:authority` acceptable to our HTTP/2 server.
//!
//! grpc-go before ~1.62 (crictl/critest ≤ 1.29, kubelet of the same age) dials a unix socket with
//! `:authority` set to the percent-encoded socket path (`%2Frun%2Fberth%2Fberth.sock`). The `h2`
//! crate rejects that as a malformed authority and resets the stream with PROTOCOL_ERROR, while
//! Go servers (containerd, CRI-O) accept it. On a unix socket the authority means nothing, so this
//! wrapper rewrites the client's HEADERS blocks on the way in: an `:authority` value that is not a
//! valid authority becomes `x`.
//!
//! HPACK (RFC 7541) is stateful: a literal with incremental indexing enters both sides' dynamic
//! tables, and entries are evicted by size. The replacement is never longer than the original
//! (a non-empty value decodes to at least one octet), so our decoder's table always holds a
//! superset of the client encoder's entries at the same indices, and later indexed references
//! still resolve to the same fields.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The default SETTINGS_MAX_FRAME_SIZE, which our server keeps.
const MAX_FRAME: usize = 16_384;
/// The largest header block gathered from HEADERS + CONTINUATION frames to be rewritten.
const MAX_HEADER_BLOCK: usize = 64 * 1024;
/// Static table index of `:authority` (RFC 7541 Appendix A).
const STATIC_AUTHORITY: u64 = 1;
const REPLACEMENT: &[u8] = b"x";

/// Rewrites the client-to-server byte stream of an HTTP/2 connection. Pure: bytes in, bytes out.
#[derive(Debug, Default)]
pub struct AuthorityRewriter {
    pending: Vec<u8>,
    preface_seen: bool,
    /// Bytes of a non-header frame's payload still to pass through untouched.
    passthrough: usize,
    /// A header block split over HEADERS + CONTINUATION frames, gathered until END_HEADERS.
    split: Option<SplitBlock>,
    /// Once the stream is not what we expect, stop interpreting it and pass everything through.
    gave_up: bool,
}

#[derive(Debug)]
struct SplitBlock {
    /// The frames as received, sent unchanged if the block cannot be rewritten.
    original: Vec<u8>,
    stream_id: [u8; 4],
    flags: u8,
    priority: Vec<u8>,
    block: Vec<u8>,
}

impl AuthorityRewriter {
    /// Consumes `input`, appending what should reach the server to `out`. Incomplete frames are
    /// held back until the rest arrives.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) {
        if self.gave_up {
            out.extend_from_slice(input);
            return;
        }
        self.pending.extend_from_slice(input);
        let mut at = 0;
        loop {
            let rest = &self.pending[at..];
            if !self.preface_seen {
                if rest.len() < PREFACE_LEN {
                    break;
                }
                out.extend_from_slice(&rest[..PREFACE_LEN]);
                at += PREFACE_LEN;
                self.preface_seen = true;
                continue;
            }
            if self.passthrough > 0 {
                let n = self.passthrough.min(rest.len());
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&rest[..n]);
                at += n;
                self.passthrough -= n;
                continue;
            }
            if rest.len() < FRAME_HEADER_LEN {
                break;
            }
            let length = u32::from_be_bytes([0, rest[0], rest[1], rest[2]]) as usize;
            let kind = rest[3];
            if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION && self.split.is_none() {
                out.extend_from_slice(&rest[..FRAME_HEADER_LEN]);
                at += FRAME_HEADER_LEN;
                self.passthrough = length;
                continue;
            }
            if length > MAX_FRAME {
                // Over the frame size our server keeps: a protocol error it answers itself.
                self.give_up(at, out);
                at = self.pending.len();
                break;
            }
            if rest.len() < FRAME_HEADER_LEN + length {
                break;
            }
            let frame = &rest[..FRAME_HEADER_LEN + length];
            at += frame.len();
            let frame = frame.to_vec();
            if !self.header_frame(&frame, out) {
                self.give_up(at, out);
                at = self.pending.len();
                break;
            }
        }
        self.pending.drain(..at);
    }

    /// Stops interpreting the stream: what is held (a split block's frames, then the input
    /// from `at`) goes out unchanged, and so does everything after.
    fn give_up(&mut self, at: usize, out: &mut Vec<u8>) {
        self.gave_up = true;
        if let Some(split) = self.split.take() {
            out.extend_from_slice(&split.original);
        }
        out.extend_from_slice(&self.pending[at..]);
    }

    /// Handles a HEADERS or CONTINUATION frame (or any frame while a block is split). Returns
    /// false when the stream breaks the protocol; the server will reject it on its own then.
    fn header_frame(&mut self, frame: &[u8], out: &mut Vec<u8>) -> bool {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER_LEN..];
        if let Some(split) = self.split.as_mut() {
            // RFC 7540 §6.10: only CONTINUATION of the same stream may follow.
            if kind != TYPE_CONTINUATION || stream_id != split.stream_id {
                let split = self.split.take().unwrap_or_else(|| unreachable!());
                out.extend_from_slice(&split.original);
                out.extend_from_slice(frame);
                return false;
            }
            split.original.extend_from_slice(frame);
            split.block.extend_from_slice(payload);
            if split.original.len() > MAX_HEADER_BLOCK {
                // A block this long is not an old grpc-go's request; the server decides.
                let split = self.split.take().unwrap_or_else(|| unreachable!());
                out.extend_from_slice(&split.original);
                return false;
            }
            if flags & FLAG_END_HEADERS != 0 {
                let split = self.split.take().unwrap_or_else(|| unreachable!());
                emit_block(
                    &split.original,
                    split.stream_id,
                    split.flags,
                    &split.priority,
                    &split.block,
                    out,
                );
            }
            return true;
        }
        if kind == TYPE_CONTINUATION {
            out.extend_from_slice(frame);
            return false;
        }
        let Some((priority, block)) = headers_fragment(flags, payload) else {
            out.extend_from_slice(frame);
            return false;
        };
        if flags & FLAG_END_HEADERS != 0 {
            emit_block(frame, stream_id, flags, priority, block, out);
        } else {
            self.split = Some(SplitBlock {
                original: frame.to_vec(),
                stream_id,
                flags,
                priority: priority.to_vec(),
                block: block.to_vec(),
            });
        }
        true
    }
}

/// Splits a HEADERS payload into its priority bytes and header block fragment, dropping padding.
fn headers_fragment(flags: u8, payload: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut p = payload;
    let mut pad = 0;
    if flags & FLAG_PADDED != 0 {
        pad = *p.first()? as usize;
        p = &p[1..];
    }
    let priority_len = if flags & FLAG_PRIORITY != 0 { 5 } else { 0 };
    if p.len() < priority_len + pad {
        return None;
    }
    Some((&p[..priority_len], &p[priority_len..p.len() - pad]))
}

/// Writes one HEADERS frame carrying the rewritten block, or `original` when nothing changed or
/// the block cannot be parsed.
fn emit_block(
    original: &[u8],
    stream_id: [u8; 4],
    flags: u8,
    priority: &[u8],
    block: &[u8],
    out: &mut Vec<u8>,
) {
    match rewrite_block(block) {
        Some(block) if priority.len() + block.len() <= MAX_FRAME => {
            let length = (priority.len() + block.len()) as u32;
            out.extend_from_slice(&length.to_be_bytes()[1..]);
            out.push(TYPE_HEADERS);
            out.push((flags & !FLAG_PADDED) | FLAG_END_HEADERS);
            out.extend_from_slice(&stream_id);
            out.extend_from_slice(priority);
            out.extend_from_slice(&block);
        }
        _ => out.extend_from_slice(original),
    }
}

/// Decodes an HPACK integer with an `prefix`-bit prefix (RFC 7541 §5.1): (value, bytes used).
fn decode_int(bytes: &[u8], prefix: u8) -> Option<(u64, usize)> {
    let mask = (1u16 << prefix) as u8 - 1;
    let first = *bytes.first()? & mask;
    if first < mask {
        return Some((first as u64, 1));
    }
    let mut value = mask as u64;
    let mut shift = 0u32;
    for (i, &b) in bytes.iter().enumerate().skip(1) {
        if shift > 56 {
            return None;
        }
        value += ((b & 0x7f) as u64) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// A string literal at the start of `bytes`: (huffman, octets, total length of the literal).
fn string_literal(bytes: &[u8]) -> Option<(bool, &[u8], usize)> {
    let huffman = *bytes.first()? & 0x80 != 0;
    let (len, n) = decode_int(bytes, 7)?;
    let end = n.checked_add(usize::try_from(len).ok()?)?;
    Some((huffman, bytes.get(n..end)?, end))
}

/// Returns the block with invalid `:authority` values replaced, or None if nothing changed or
/// the block does not parse.
fn rewrite_block(block: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(block.len());
    let mut changed = false;
    let mut i = 0;
    while i < block.len() {
        let b = block[i];
        let prefix = if b & 0x80 != 0 {
            // Indexed field.
            let (_, n) = decode_int(&block[i..], 7)?;
            out.extend_from_slice(&block[i..i + n]);
            i += n;
            continue;
        } else if b & 0xc0 == 0x40 {
            6 // literal with incremental indexing
        } else if b & 0xe0 == 0x20 {
            // Dynamic table size update.
            let (_, n) = decode_int(&block[i..], 5)?;
            out.extend_from_slice(&block[i..i + n]);
            i += n;
            continue;
        } else {
            4 // literal without indexing / never indexed
        };
        let start = i;
        let (index, n) = decode_int(&block[i..], prefix)?;
        i += n;
        let is_authority = match index {
            0 => {
                let (huffman, name, len) = string_literal(&block[i..])?;
                i += len;
                !huffman && name == b":authority"
            }
            STATIC_AUTHORITY => true,
            _ => false,
        };
        let (huffman, value, len) = string_literal(&block[i..])?;
        let valid = !huffman && http::uri::Authority::try_from(value).is_ok();
        if is_authority && !value.is_empty() && !valid {
            out.extend_from_slice(&block[start..i]);
            out.push(REPLACEMENT.len() as u8);
            out.extend_from_slice(REPLACEMENT);
            changed = true;
        } else {
            out.extend_from_slice(&block[start..i + len]);
        }
        i += len;
    }
    changed.then_some(out)
}

/// A connection whose client-to-server bytes pass through an [`AuthorityRewriter`].
#[derive(Debug)]
pub struct AuthorityFix<T> {
    inner: T,
    rewriter: AuthorityRewriter,
    ready: Vec<u8>,
    offset: usize,
}

impl<T> AuthorityFix<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            rewriter: AuthorityRewriter::default(),
            ready: Vec::new(),
            offset: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.offset < this.ready.len() {
                let n = buf.remaining().min(this.ready.len() - this.offset);
                buf.put_slice(&this.ready[this.offset..this.offset + n]);
                this.offset += n;
                if this.offset == this.ready.len() {
                    this.ready.clear();
                    this.offset = 0;
                }
                return Poll::Ready(Ok(()));
            }
            let mut raw = [0u8; 8192];
            let mut raw_buf = ReadBuf::new(&mut raw);
            match Pin::new(&mut this.inner).poll_read(cx, &mut raw_buf) {
                Poll::Ready(Ok(())) => {
                    let filled = raw_buf.filled();
                    if filled.is_empty() {
                        return Poll::Ready(Ok(())); // EOF
                    }
                    this.rewriter.feed(filled, &mut this.ready);
                    // A partial frame produces nothing yet: read again rather than signal EOF.
                }
                other => return other,
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<T: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityFix<T>
{
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn literal(prefix_byte: u8, value: &[u8]) -> Vec<u8> {
        let mut b = vec![prefix_byte, value.len() as u8];
        b.extend_from_slice(value);
        b
    }

    /// `:method POST` (static 3), `:path` literal, `:authority` literal with indexing.
    fn block_with_authority(value: &[u8]) -> Vec<u8> {
        let mut b = vec![0x83];
        b.extend(literal(0x44, b"/runtime.v1.RuntimeService/Version"));
        b.extend(literal(0x41, value));
        b
    }

    fn run(input: &[u8], chunk: usize) -> Vec<u8> {
        let mut r = AuthorityRewriter::default();
        let mut out = Vec::new();
        for piece in input.chunks(chunk) {
            r.feed(piece, &mut out);
        }
        out
    }

    #[test]
    fn percent_encoded_socket_path_becomes_x() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[])); // SETTINGS
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &block_with_authority(b"%2Frun%2Fberth.sock"),
        ));
        input.extend(frame(0x0, 0x1, 1, b"\0\0\0\0\0")); // DATA
        let mut expected = PREFACE.to_vec();
        expected.extend(frame(0x4, 0, 0, &[]));
        expected.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &block_with_authority(b"x"),
        ));
        expected.extend(frame(0x0, 0x1, 1, b"\0\0\0\0\0"));
        for chunk in [1, 2, 7, 9, 1000] {
            assert_eq!(run(&input, chunk), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn valid_authority_is_left_alone() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            1,
            &block_with_authority(b"localhost"),
        ));
        assert_eq!(run(&input, 5), input);
    }

    #[test]
    fn huffman_coded_authority_is_replaced_and_indexed_fields_kept() {
        // An indexed field referring to the dynamic table (62), then a Huffman literal value.
        let mut block = vec![0xbe];
        block.extend([0x41, 0x83, 0xaa, 0xbb, 0xcc]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 3, &block));
        let mut expected = PREFACE.to_vec();
        expected.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS,
            3,
            &[0xbe, 0x41, 0x01, b'x'],
        ));
        assert_eq!(run(&input, 3), expected);
    }

    #[test]
    fn literal_name_authority_without_indexing_is_replaced() {
        let mut block = vec![0x00];
        block.extend(literal(0x0a, b":authority")[1..].to_vec());
        block.extend([0x05]);
        block.extend(b"%2Fab");
        let mut expected_block = vec![0x00, 0x0a];
        expected_block.extend(b":authority");
        expected_block.extend([0x01, b'x']);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let mut expected = PREFACE.to_vec();
        expected.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &expected_block));
        assert_eq!(run(&input, 4), expected);
    }

    #[test]
    fn padded_priority_headers_lose_padding_keep_priority() {
        let block = block_with_authority(b"%2Fs");
        let mut payload = vec![3u8]; // pad length
        payload.extend([0, 0, 0, 0, 16]); // priority
        payload.extend(&block);
        payload.extend([0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY,
            1,
            &payload,
        ));
        let mut expected_payload = vec![0, 0, 0, 0, 16];
        expected_payload.extend(block_with_authority(b"x"));
        let mut expected = PREFACE.to_vec();
        expected.extend(frame(
            TYPE_HEADERS,
            FLAG_END_HEADERS | FLAG_PRIORITY,
            1,
            &expected_payload,
        ));
        assert_eq!(run(&input, 6), expected);
    }

    #[test]
    fn continuation_frames_are_joined_and_rewritten() {
        let block = block_with_authority(b"%2Frun%2Fb.sock");
        let (a, b) = block.split_at(10);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, 0x1, 5, a)); // END_STREAM, no END_HEADERS
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 5, b));
        let mut expected = PREFACE.to_vec();
        expected.extend(frame(
            TYPE_HEADERS,
            0x1 | FLAG_END_HEADERS,
            5,
            &block_with_authority(b"x"),
        ));
        assert_eq!(run(&input, 3), expected);
    }

    /// A client that never ends its header block (CONTINUATION after CONTINUATION), or sends
    /// one frame far over the frame size, is not buffered: past the cap the rewriter passes the
    /// bytes on as they came, for the server to refuse.
    #[test]
    fn endless_header_blocks_and_huge_frames_are_not_buffered() {
        let mut r = AuthorityRewriter::default();
        let mut out = Vec::new();
        let mut fed = PREFACE.len();
        r.feed(PREFACE, &mut out);
        r.feed(&frame(TYPE_HEADERS, 0, 1, &[0x83; 100]), &mut out);
        fed += FRAME_HEADER_LEN + 100;
        for _ in 0..1000 {
            let f = frame(TYPE_CONTINUATION, 0, 1, &[0x83; MAX_FRAME]);
            fed += f.len();
            r.feed(&f, &mut out);
            assert!(
                fed - out.len() <= MAX_HEADER_BLOCK + 2 * MAX_FRAME,
                "{} bytes held",
                fed - out.len()
            );
        }
        let mut r = AuthorityRewriter::default();
        let mut out = Vec::new();
        r.feed(PREFACE, &mut out);
        let mut huge = frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[]);
        huge[..3].copy_from_slice(&[0xff, 0xff, 0xff]);
        r.feed(&huge, &mut out);
        r.feed(&[0x83; 1 << 20], &mut out);
        assert_eq!(out.len(), PREFACE.len() + huge.len() + (1 << 20));
    }

    #[test]
    fn garbage_passes_through_unchanged() {
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0x41, 0x7f])); // truncated integer
        input.extend(b"trailing junk");
        assert_eq!(run(&input, 2), input);
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b"??"));
        input.extend(frame(0x0, 0, 1, b"data"));
        assert_eq!(run(&input, 2), input);
    }

    #[test]
    fn hpack_integers_decode_per_rfc7541() {
        // C.1.1: 10 with a 5-bit prefix; C.1.2: 1337 with a 5-bit prefix.
        assert_eq!(decode_int(&[0x0a], 5), Some((10, 1)));
        assert_eq!(decode_int(&[0x1f, 0x9a, 0x0a], 5), Some((1337, 3)));
        assert_eq!(decode_int(&[0x1f, 0x9a], 5), None);
    }
}
