//! SPDY/3 name/value header blocks: `u32 count`, then per pair `u32 len, name, u32 len, value`
//! (several values joined by NUL), deflated with zlib. Each direction of a session is one zlib
//! stream primed with the SPDY/3 dictionary, each block ending on a sync flush.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Decoded header pairs, names lowercase, in wire order.
pub type Headers = Vec<(String, String)>;

/// The SPDY/3 header dictionary (draft-mbelshe-httpbis-spdy-00 §2.6.10.1): these words, each
/// preceded by its length as a big-endian u32, then [`DICTIONARY_TAIL`] as it is.
const DICTIONARY_WORDS: &[&str] = &[
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
];
const DICTIONARY_TAIL: &str = concat!(
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505",
    "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request",
    "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented",
    "503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, ",
    "Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,image/jpg,image/gif,",
    "application/xml,application/xhtml+xml,text/plain,text/javascript,publicprivatemax-age=",
    "gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.",
);

pub fn dictionary() -> Vec<u8> {
    let mut dict = Vec::with_capacity(1423);
    for word in DICTIONARY_WORDS {
        dict.extend_from_slice(&(word.len() as u32).to_be_bytes());
        dict.extend_from_slice(word.as_bytes());
    }
    dict.extend_from_slice(DICTIONARY_TAIL.as_bytes());
    dict
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("header block does not inflate: {0}")]
    Inflate(String),
    #[error("header block inflates past the {0}-byte limit")]
    TooLarge(usize),
    #[error("header block is malformed: {0}")]
    Malformed(&'static str),
}

/// The inbound zlib stream of a session.
pub struct Inflater {
    z: Decompress,
    dict: Vec<u8>,
    max: usize,
}

impl Inflater {
    /// `max` caps a block's inflated size (a small frame can inflate to gigabytes).
    pub fn new(max: usize) -> Self {
        Inflater {
            z: Decompress::new(true),
            dict: dictionary(),
            max,
        }
    }

    pub fn decode(&mut self, block: &[u8]) -> Result<Headers, HeaderError> {
        let raw = self.inflate(block)?;
        parse_pairs(&raw)
    }

    fn inflate(&mut self, block: &[u8]) -> Result<Vec<u8>, HeaderError> {
        let mut out = Vec::with_capacity(block.len() * 4 + 64);
        let start = self.z.total_in();
        loop {
            let used = (self.z.total_in() - start) as usize;
            if used >= block.len() && out.len() < out.capacity() {
                return Ok(out);
            }
            if out.len() == out.capacity() {
                if out.len() >= self.max {
                    return Err(HeaderError::TooLarge(self.max));
                }
                // Doubling, at least 64 bytes, never past the cap.
                out.reserve_exact(out.len().max(64).min(self.max - out.len()));
            }
            let before = (self.z.total_in(), self.z.total_out());
            let status = self
                .z
                .decompress_vec(&block[used..], &mut out, FlushDecompress::Sync);
            // The first buffer may have had room past the cap.
            if out.len() > self.max {
                return Err(HeaderError::TooLarge(self.max));
            }
            match status {
                Ok(Status::StreamEnd) => return Ok(out),
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.z
                        .set_dictionary(&self.dict)
                        .map_err(|e| HeaderError::Inflate(e.to_string()))?;
                    continue;
                }
                Err(e) => return Err(HeaderError::Inflate(e.to_string())),
            }
            if (self.z.total_in(), self.z.total_out()) == before && out.len() < out.capacity() {
                // No progress with input and room left: the block ended mid-stream.
                return Ok(out);
            }
        }
    }
}

fn parse_pairs(mut raw: &[u8]) -> Result<Headers, HeaderError> {
    fn take_u32(raw: &mut &[u8]) -> Result<usize, HeaderError> {
        if raw.len() < 4 {
            return Err(HeaderError::Malformed("truncated length"));
        }
        let n = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        *raw = &raw[4..];
        Ok(n)
    }
    fn take_str(raw: &mut &[u8]) -> Result<String, HeaderError> {
        let n = take_u32(raw)?;
        if raw.len() < n {
            return Err(HeaderError::Malformed("truncated string"));
        }
        let s = std::str::from_utf8(&raw[..n]).map_err(|_| HeaderError::Malformed("not UTF-8"))?;
        *raw = &raw[n..];
        Ok(s.to_string())
    }
    let count = take_u32(&mut raw)?;
    // Each pair takes at least 8 bytes: a count larger than that is a lie, not an allocation.
    if count > raw.len() / 8 {
        return Err(HeaderError::Malformed("more pairs than bytes"));
    }
    let mut pairs = Vec::with_capacity(count);
    for _ in 0..count {
        let name = take_str(&mut raw)?;
        if name.is_empty() {
            return Err(HeaderError::Malformed("empty header name"));
        }
        let value = take_str(&mut raw)?;
        pairs.push((name.to_ascii_lowercase(), value));
    }
    Ok(pairs)
}

/// The outbound zlib stream of a session.
pub struct Deflater {
    z: Compress,
}

impl Default for Deflater {
    fn default() -> Self {
        Self::new()
    }
}

impl Deflater {
    pub fn new() -> Self {
        let mut z = Compress::new(Compression::default(), true);
        z.set_dictionary(&dictionary())
            .expect("a fresh zlib stream takes a dictionary");
        Deflater { z }
    }

    pub fn encode(&mut self, headers: &[(&str, &str)]) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            for s in [name.to_ascii_lowercase().as_str(), value] {
                raw.extend_from_slice(&(s.len() as u32).to_be_bytes());
                raw.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let start = self.z.total_in();
        loop {
            let used = (self.z.total_in() - start) as usize;
            if out.len() == out.capacity() {
                out.reserve(64);
            }
            self.z
                .compress_vec(&raw[used..], &mut out, FlushCompress::Sync)
                .expect("deflate into memory does not fail");
            let used = (self.z.total_in() - start) as usize;
            // A sync flush is complete once all input is in and the output did not fill up.
            if used == raw.len() && out.len() < out.capacity() {
                return out;
            }
        }
    }
}

/// The value of `name` (lowercase), the first if repeated.
pub fn get<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dictionary_is_the_spdy3_one() {
        let dict = dictionary();
        assert_eq!(dict.len(), 1423);
        // The Adler-32 a zlib stream names it by (FDICT), as every SPDY/3 peer computes it.
        let (mut a, mut b) = (1u32, 0u32);
        for &byte in &dict {
            a = (a + byte as u32) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!((b << 16) | a, 0xe3c6_a7c2);
    }

    #[test]
    fn blocks_round_trip_over_one_stream_per_direction() {
        let mut out = Deflater::new();
        let mut inp = Inflater::new(1 << 20);
        let blocks: Vec<Vec<(&str, &str)>> = vec![
            vec![("streamtype", "error")],
            vec![("streamtype", "stdout"), ("port", "80"), ("requestid", "0")],
            vec![],
            vec![("X-Mixed-Case", "v1\0v2")],
        ];
        for block in &blocks {
            let wire = out.encode(block);
            let got = inp.decode(&wire).unwrap();
            let want: Headers = block
                .iter()
                .map(|(n, v)| (n.to_ascii_lowercase(), v.to_string()))
                .collect();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn a_block_that_inflates_past_the_cap_is_refused() {
        let big = "x".repeat(100_000);
        let wire = Deflater::new().encode(&[("streamtype", &big)]);
        assert!(wire.len() < 2000, "compresses well: {}", wire.len());
        assert_eq!(
            Inflater::new(16 * 1024).decode(&wire),
            Err(HeaderError::TooLarge(16 * 1024))
        );
        assert!(Inflater::new(1 << 20).decode(&wire).is_ok());
    }

    /// Found by the `spdy_frames` fuzz target: with less than 64 bytes of room left under the
    /// cap when the buffer fills, growing it panicked (`clamp` with min above max), killing the
    /// session's reader; and a block may never come out longer than the cap, whatever room
    /// its first buffer had.
    #[test]
    fn a_block_that_fills_the_buffer_just_under_the_cap_is_refused_not_a_panic() {
        let big = "x".repeat(100_000);
        let wire = Deflater::new().encode(&[("streamtype", &big)]);
        // The first buffer is 4 × the block + 64 bytes; the cap is a few bytes more, or less.
        let first = wire.len() * 4 + 64;
        for cap in [first + 8, first + 63, first + 64, first - 8, 100] {
            assert_eq!(
                Inflater::new(cap).decode(&wire),
                Err(HeaderError::TooLarge(cap)),
                "cap {cap}"
            );
        }
        let small = Deflater::new().encode(&[("a", "b")]);
        assert!(Inflater::new(4).inflate(&small).is_err());
        assert!(Inflater::new(100).decode(&small).is_ok());
    }

    #[test]
    fn garbage_and_lying_counts_are_errors() {
        assert!(matches!(
            Inflater::new(1024).decode(b"not zlib at all"),
            Err(HeaderError::Inflate(_))
        ));
        assert_eq!(
            parse_pairs(&[0, 0, 0, 200, 0, 0]),
            Err(HeaderError::Malformed("more pairs than bytes"))
        );
        assert_eq!(
            parse_pairs(&[0, 0, 0, 1, 0, 0, 0, 9, b'a', 0, 0, 0, 0]),
            Err(HeaderError::Malformed("truncated string"))
        );
    }
}
