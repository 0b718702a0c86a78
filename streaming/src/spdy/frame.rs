//! SPDY/3.1 frames, server side: what a client may send is parsed, what a server sends is
//! encoded. The header blocks stay compressed here; `headers` owns the zlib streams.
//!
//! Control frame: `1 | version=3 (15) | type (16) | flags (8) | length (24)`, then the body.
//! Data frame: `0 | stream id (31) | flags (8) | length (24)`, then the payload. Big-endian.

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const VERSION: u16 = 3;
/// FIN on a data, SYN_STREAM, SYN_REPLY or HEADERS frame.
pub const FLAG_FIN: u8 = 0x01;
const HEADER_LEN: usize = 8;

/// RST_STREAM status codes (SPDY/3 §2.6.3).
pub mod rst {
    pub const PROTOCOL_ERROR: u32 = 1;
    pub const INVALID_STREAM: u32 = 2;
    pub const REFUSED_STREAM: u32 = 3;
    pub const CANCEL: u32 = 5;
    pub const INTERNAL_ERROR: u32 = 6;
    pub const STREAM_IN_USE: u32 = 8;
    pub const STREAM_ALREADY_CLOSED: u32 = 9;
}

/// GOAWAY status codes.
pub mod goaway {
    pub const OK: u32 = 0;
    pub const PROTOCOL_ERROR: u32 = 1;
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    Data {
        stream: u32,
        fin: bool,
        data: Bytes,
    },
    SynStream {
        stream: u32,
        associated: u32,
        priority: u8,
        fin: bool,
        unidirectional: bool,
        /// Compressed name/value block.
        headers: Bytes,
    },
    SynReply {
        stream: u32,
        fin: bool,
        headers: Bytes,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    /// Settings are read and ignored: berth sends as fast as TCP lets it (the Go client never
    /// sends WINDOW_UPDATE, so honouring windows would stall every stream after 64 KiB).
    Settings,
    Ping {
        id: u32,
    },
    GoAway {
        last_good: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        fin: bool,
        headers: Bytes,
    },
    WindowUpdate {
        stream: u32,
        delta: u32,
    },
    /// A control frame type SPDY/3 reserves or does not know: ignored, as the spec asks.
    Unknown {
        kind: u16,
    },
}

/// Why the byte stream is not SPDY/3.1: the session answers with GOAWAY and closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("unsupported SPDY version {0}")]
    Version(u16),
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLong { len: usize, max: usize },
    #[error("{kind} frame with a {len}-byte body is malformed")]
    Malformed { kind: &'static str, len: usize },
}

/// Parses frames out of a byte buffer as they arrive: a frame split at any byte boundary is
/// waited for, a control frame longer than `max_control` is refused before its body is
/// buffered (data frames may be as long as SPDY allows: the Go client writes whatever its
/// caller hands it as one frame).
#[derive(Debug)]
pub struct Decoder {
    max_control: usize,
}

impl Decoder {
    pub fn new(max_control: usize) -> Self {
        Decoder { max_control }
    }

    /// The next whole frame in `buf` (consumed), `Ok(None)` if more bytes are needed.
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([0, buf[5], buf[6], buf[7]]) as usize;
        let control = buf[0] & 0x80 != 0;
        if control && len > self.max_control {
            return Err(FrameError::TooLong {
                len,
                max: self.max_control,
            });
        }
        if control {
            let version = u16::from_be_bytes([buf[0], buf[1]]) & 0x7fff;
            if version != VERSION {
                return Err(FrameError::Version(version));
            }
        }
        if buf.len() < HEADER_LEN + len {
            buf.reserve(HEADER_LEN + len - buf.len());
            return Ok(None);
        }
        let mut head = buf.split_to(HEADER_LEN);
        let body = buf.split_to(len).freeze();
        if !control {
            let stream = head.get_u32() & 0x7fff_ffff;
            let flags = head[0];
            return Ok(Some(Frame::Data {
                stream,
                fin: flags & FLAG_FIN != 0,
                data: body,
            }));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let flags = head[4];
        control_frame(kind, flags, body).map(Some)
    }
}

fn control_frame(kind: u16, flags: u8, mut body: Bytes) -> Result<Frame, FrameError> {
    let len = body.len();
    let need = |kind: &'static str, min: usize| {
        if len < min {
            Err(FrameError::Malformed { kind, len })
        } else {
            Ok(())
        }
    };
    let exactly = |kind: &'static str, want: usize| {
        if len != want {
            Err(FrameError::Malformed { kind, len })
        } else {
            Ok(())
        }
    };
    let fin = flags & FLAG_FIN != 0;
    Ok(match kind {
        1 => {
            need("SYN_STREAM", 10)?;
            let stream = body.get_u32() & 0x7fff_ffff;
            let associated = body.get_u32() & 0x7fff_ffff;
            let priority = body.get_u8() >> 5;
            let _slot = body.get_u8();
            Frame::SynStream {
                stream,
                associated,
                priority,
                fin,
                unidirectional: flags & 0x02 != 0,
                headers: body,
            }
        }
        2 => {
            need("SYN_REPLY", 4)?;
            let stream = body.get_u32() & 0x7fff_ffff;
            Frame::SynReply {
                stream,
                fin,
                headers: body,
            }
        }
        3 => {
            exactly("RST_STREAM", 8)?;
            Frame::RstStream {
                stream: body.get_u32() & 0x7fff_ffff,
                status: body.get_u32(),
            }
        }
        4 => {
            need("SETTINGS", 4)?;
            let entries = body.get_u32() as usize;
            if entries.checked_mul(8) != Some(len - 4) {
                return Err(FrameError::Malformed {
                    kind: "SETTINGS",
                    len,
                });
            }
            Frame::Settings
        }
        6 => {
            exactly("PING", 4)?;
            Frame::Ping { id: body.get_u32() }
        }
        7 => {
            exactly("GOAWAY", 8)?;
            Frame::GoAway {
                last_good: body.get_u32() & 0x7fff_ffff,
                status: body.get_u32(),
            }
        }
        8 => {
            need("HEADERS", 4)?;
            let stream = body.get_u32() & 0x7fff_ffff;
            Frame::Headers {
                stream,
                fin,
                headers: body,
            }
        }
        9 => {
            exactly("WINDOW_UPDATE", 8)?;
            Frame::WindowUpdate {
                stream: body.get_u32() & 0x7fff_ffff,
                delta: body.get_u32() & 0x7fff_ffff,
            }
        }
        kind => Frame::Unknown { kind },
    })
}

fn control_head(out: &mut BytesMut, kind: u16, flags: u8, len: usize) {
    out.put_u16(0x8000 | VERSION);
    out.put_u16(kind);
    out.put_u32(((flags as u32) << 24) | len as u32);
}

/// Appends a data frame's 8-byte header; its payload follows on the wire.
pub fn encode_data_head(stream: u32, fin: bool, len: usize, out: &mut BytesMut) {
    out.put_u32(stream & 0x7fff_ffff);
    out.put_u32(((if fin { FLAG_FIN } else { 0 } as u32) << 24) | len as u32);
}

impl Frame {
    /// Appends the frame's wire form. Bodies over 2^24 - 1 bytes are the caller's bug: data is
    /// chunked before it gets here.
    pub fn encode(&self, out: &mut BytesMut) {
        let fin = |f: bool| if f { FLAG_FIN } else { 0 };
        match self {
            Frame::Data {
                stream,
                fin: f,
                data,
            } => {
                out.put_u32(stream & 0x7fff_ffff);
                out.put_u32(((fin(*f) as u32) << 24) | data.len() as u32);
                out.put_slice(data);
            }
            Frame::SynStream {
                stream,
                associated,
                priority,
                fin: f,
                unidirectional,
                headers,
            } => {
                let flags = fin(*f) | if *unidirectional { 0x02 } else { 0 };
                control_head(out, 1, flags, 10 + headers.len());
                out.put_u32(*stream);
                out.put_u32(*associated);
                out.put_u8(priority << 5);
                out.put_u8(0);
                out.put_slice(headers);
            }
            Frame::SynReply {
                stream,
                fin: f,
                headers,
            } => {
                control_head(out, 2, fin(*f), 4 + headers.len());
                out.put_u32(*stream);
                out.put_slice(headers);
            }
            Frame::RstStream { stream, status } => {
                control_head(out, 3, 0, 8);
                out.put_u32(*stream);
                out.put_u32(*status);
            }
            Frame::Settings => {
                control_head(out, 4, 0, 4);
                out.put_u32(0);
            }
            Frame::Ping { id } => {
                control_head(out, 6, 0, 4);
                out.put_u32(*id);
            }
            Frame::GoAway { last_good, status } => {
                control_head(out, 7, 0, 8);
                out.put_u32(*last_good);
                out.put_u32(*status);
            }
            Frame::Headers {
                stream,
                fin: f,
                headers,
            } => {
                control_head(out, 8, fin(*f), 4 + headers.len());
                out.put_u32(*stream);
                out.put_slice(headers);
            }
            Frame::WindowUpdate { stream, delta } => {
                control_head(out, 9, 0, 8);
                out.put_u32(*stream);
                out.put_u32(*delta);
            }
            Frame::Unknown { kind } => control_head(out, *kind, 0, 0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_kinds() -> Vec<Frame> {
        vec![
            Frame::Data {
                stream: 1,
                fin: false,
                data: Bytes::from_static(b"hello"),
            },
            Frame::Data {
                stream: 0x7fff_ffff,
                fin: true,
                data: Bytes::new(),
            },
            Frame::SynStream {
                stream: 3,
                associated: 0,
                priority: 7,
                fin: false,
                unidirectional: true,
                headers: Bytes::from_static(b"\x78\x9c compressed"),
            },
            Frame::SynReply {
                stream: 3,
                fin: true,
                headers: Bytes::from_static(b"nv"),
            },
            Frame::RstStream {
                stream: 5,
                status: rst::CANCEL,
            },
            Frame::Settings,
            Frame::Ping { id: 0xdead_beef },
            Frame::GoAway {
                last_good: 9,
                status: goaway::OK,
            },
            Frame::Headers {
                stream: 7,
                fin: false,
                headers: Bytes::from_static(b"h"),
            },
            Frame::WindowUpdate {
                stream: 7,
                delta: 65536,
            },
        ]
    }

    #[test]
    fn every_frame_kind_round_trips() {
        for frame in all_kinds() {
            let mut buf = BytesMut::new();
            frame.encode(&mut buf);
            let decoded = Decoder::new(1 << 24).decode(&mut buf).unwrap();
            assert_eq!(decoded.as_ref(), Some(&frame));
            assert!(buf.is_empty(), "{frame:?} left bytes behind");
        }
    }

    #[test]
    fn frames_split_at_every_byte_boundary_decode_the_same() {
        let mut wire = BytesMut::new();
        for frame in all_kinds() {
            frame.encode(&mut wire);
        }
        let wire = wire.freeze();
        let decoder = Decoder::new(1 << 24);
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for part in [&wire[..cut], &wire[cut..]] {
                buf.extend_from_slice(part);
                while let Some(f) = decoder.decode(&mut buf).unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, all_kinds(), "split at {cut}");
        }
    }

    #[test]
    fn a_control_frame_over_the_limit_is_refused_before_its_body_arrives() {
        let mut buf = BytesMut::new();
        Frame::SynReply {
            stream: 1,
            fin: false,
            headers: Bytes::from(vec![0u8; 96]),
        }
        .encode(&mut buf);
        buf.truncate(HEADER_LEN);
        assert_eq!(
            Decoder::new(64).decode(&mut buf),
            Err(FrameError::TooLong { len: 100, max: 64 })
        );
        // Data frames are bounded only by the 24-bit length.
        let mut buf = BytesMut::new();
        Frame::Data {
            stream: 1,
            fin: false,
            data: Bytes::from(vec![0u8; 100]),
        }
        .encode(&mut buf);
        assert!(Decoder::new(64).decode(&mut buf).unwrap().is_some());
    }

    #[test]
    fn wrong_version_and_short_bodies_are_errors() {
        let mut buf = BytesMut::from(&[0x80, 0x02, 0, 6, 0, 0, 0, 4, 0, 0, 0, 1][..]);
        assert_eq!(
            Decoder::new(1024).decode(&mut buf),
            Err(FrameError::Version(2))
        );
        // A PING with a 2-byte body, an RST_STREAM with 4, a SETTINGS whose count lies.
        for raw in [
            &[0x80, 0x03, 0, 6, 0, 0, 0, 2, 0, 1][..],
            &[0x80, 0x03, 0, 3, 0, 0, 0, 4, 0, 0, 0, 1][..],
            &[0x80, 0x03, 0, 4, 0, 0, 0, 4, 0, 0, 0, 2][..],
            &[0x80, 0x03, 0, 1, 0, 0, 0, 2, 0, 1][..],
        ] {
            let mut buf = BytesMut::from(raw);
            assert!(
                matches!(
                    Decoder::new(1024).decode(&mut buf),
                    Err(FrameError::Malformed { .. })
                ),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn unknown_control_types_are_skipped() {
        let mut buf = BytesMut::from(&[0x80, 0x03, 0, 42, 0, 0, 0, 2, 9, 9, 0x80][..]);
        let decoder = Decoder::new(1024);
        assert_eq!(
            decoder.decode(&mut buf).unwrap(),
            Some(Frame::Unknown { kind: 42 })
        );
        assert_eq!(buf.len(), 1);
    }
}
