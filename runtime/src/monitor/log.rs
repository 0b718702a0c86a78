//! The CRI container log writer: turns what a container writes on stdout and stderr into the
//! records kubelet reads (`pkg/kubelet/kuberuntime/logs`):
//!
//! ```text
//! <RFC3339Nano timestamp> <stdout|stderr> <P|F> <content>\n
//! ```
//!
//! Line handling follows containerd (`internal/cri/io/logger.go`), the runtime berth is compared
//! against: only `\n` ends a line and a `\r` right before it is dropped with it; content longer
//! than the line limit is cut into `P` records of exactly the limit and a last `F` record; a
//! line cut off by the end of its stream is written as `P` (kubelet then prints it without a
//! newline, exactly as the container wrote it). The writer is synchronous and allocation-light:
//! the monitor is single-threaded and small.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::timestamp::format_rfc3339_nano;

/// The default line limit, containerd's `max_container_log_line_size`.
pub const DEFAULT_MAX_LINE: usize = 16 * 1024;

/// Capacity kept by the batch and pending buffers between calls; a larger one, grown by a big
/// chunk or an unlimited line, is given back so a monitor's RSS stays small.
const KEEP_CAPACITY: usize = 64 * 1024;

const PARTIAL: u8 = b'P';
const FULL: u8 = b'F';

/// Which of the container's output streams a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The name kubelet expects in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// Writes one container's log file. Each stream keeps the bytes of its unfinished line, so
/// stdout and stderr may be fed in any interleaving.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    max_line: usize,
    /// Per stream: the start of a line whose `\n` has not arrived yet. At most `max_line`
    /// bytes, or `max_line + 1` when the last one is a `\r` that may still be a terminator.
    pending: [Vec<u8>; 2],
    /// The records of one call, written with one write(2).
    batch: Vec<u8>,
    /// Bytes written to the log, across reopens (a counter for metrics).
    bytes_written: u64,
}

impl LogWriter {
    /// Opens (appending, creating with mode 0640) the log file at `path`; its directory must
    /// exist (kubelet creates it).
    pub fn open(path: &Path) -> io::Result<LogWriter> {
        Ok(LogWriter {
            path: path.to_path_buf(),
            file: open_log(path)?,
            max_line: DEFAULT_MAX_LINE,
            pending: [Vec::new(), Vec::new()],
            batch: Vec::new(),
            bytes_written: 0,
        })
    }

    /// Sets the line limit. 0 is taken as 1 (every record needs a byte to make progress);
    /// `usize::MAX` means no limit, at the cost of holding a whole unfinished line in memory.
    pub fn with_max_line(mut self, n: usize) -> LogWriter {
        self.max_line = n.max(1);
        self
    }

    /// The log file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written to the log file(s) so far.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Logs `chunk`, read from `stream` at `now`: every line it completes, and `P` records for
    /// an unfinished line that is known to exceed the limit. All records of the chunk share the
    /// timestamp and go out in one write(2) (more only if the kernel writes short). On an error
    /// the chunk's records are lost but the line state stays consistent, so the caller can log
    /// the error and keep draining the pipe, as containerd does.
    pub fn write(&mut self, stream: Stream, chunk: &[u8], now: SystemTime) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let timestamp = format_rfc3339_nano(now);
        self.batch.clear();
        let mut records = Records {
            out: &mut self.batch,
            head: &timestamp,
            stream,
            max_line: self.max_line,
        };
        let pending = &mut self.pending[stream.index()];
        let mut rest = chunk;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            records.line(pending, &rest[..i]);
            pending.clear();
            rest = &rest[i + 1..];
        }
        if !rest.is_empty() {
            records.unfinished(pending, rest);
        }
        shrink(pending);
        self.write_batch()
    }

    /// The stream reached EOF: its unfinished line, if any, is written as a `P` record with the
    /// content as the container left it (containerd does the same; kubelet prints it without
    /// adding a newline).
    pub fn close_stream(&mut self, stream: Stream, now: SystemTime) -> io::Result<()> {
        let pending = std::mem::take(&mut self.pending[stream.index()]);
        if pending.is_empty() {
            return Ok(());
        }
        let timestamp = format_rfc3339_nano(now);
        self.batch.clear();
        Records {
            out: &mut self.batch,
            head: &timestamp,
            stream,
            max_line: self.max_line,
        }
        .emit(&pending, &[], PARTIAL);
        self.write_batch()
    }

    /// Opens the path anew, after kubelet renamed the file to rotate it (ReopenContainerLog).
    /// The renamed file keeps what was written to it; unfinished lines continue in the new one.
    /// If the new file cannot be opened the old one stays in use, so no output is dropped.
    pub fn reopen(&mut self) -> io::Result<()> {
        self.file = open_log(&self.path)?;
        Ok(())
    }

    fn write_batch(&mut self) -> io::Result<()> {
        let mut done = 0;
        let result = loop {
            if done == self.batch.len() {
                break Ok(());
            }
            match self.file.write(&self.batch[done..]) {
                Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    done += n;
                    self.bytes_written += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.batch.clear();
        shrink(&mut self.batch);
        result.map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("write container log {}: {e}", self.path.display()),
            )
        })
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        // A symlink planted at the log path must not have us append (as root) to its target.
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("open container log {}: {e}", path.display()),
            )
        })
}

fn shrink(buf: &mut Vec<u8>) {
    if buf.capacity() > KEEP_CAPACITY {
        buf.shrink_to(KEEP_CAPACITY);
    }
}

/// Appends the records of one call to `out`. Content is passed as two slices, the stream's
/// pending bytes and the new bytes, so a long line is never copied twice.
struct Records<'a> {
    out: &'a mut Vec<u8>,
    head: &'a str,
    stream: Stream,
    max_line: usize,
}

impl Records<'_> {
    fn push(&mut self, tag: u8, a: &[u8], b: &[u8]) {
        self.out.extend_from_slice(self.head.as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(self.stream.as_str().as_bytes());
        self.out.extend_from_slice(&[b' ', tag, b' ']);
        self.out.extend_from_slice(a);
        self.out.extend_from_slice(b);
        self.out.push(b'\n');
    }

    /// Writes the content `a ++ b` as `P` records of `max_line` bytes and a last one tagged
    /// `last` (possibly empty: an empty line is an `F` record with no content).
    fn emit(&mut self, a: &[u8], b: &[u8], last: u8) {
        let total = a.len() + b.len();
        let mut off = 0;
        while total - off > self.max_line {
            let (x, y) = span(a, b, off, off + self.max_line);
            self.push(PARTIAL, x, y);
            off += self.max_line;
        }
        let (x, y) = span(a, b, off, total);
        self.push(last, x, y);
    }

    /// A line ended: `pending ++ line` is its content, `line` without the `\n`. A `\r` before
    /// the `\n` is dropped (containerd's readLine drops "\r\n" as a whole).
    fn line(&mut self, pending: &[u8], line: &[u8]) {
        let (a, b) = match line.strip_suffix(b"\r") {
            Some(l) => (pending, l),
            None if line.is_empty() => (pending.strip_suffix(b"\r").unwrap_or(pending), line),
            None => (pending, line),
        };
        self.emit(a, b, FULL);
    }

    /// `more` continues the line in `pending` without ending it. Whole `max_line` pieces are
    /// written as `P` records once the line is sure to be longer than them; the rest is kept.
    /// A lone trailing `\r` does not make it sure: a `\n` may follow and drop it, and a line of
    /// exactly `max_line` bytes must stay one `F` record however the pipe cut it.
    fn unfinished(&mut self, pending: &mut Vec<u8>, more: &[u8]) {
        let total = pending.len() + more.len();
        let ends_in_cr = more.last() == Some(&b'\r');
        let mut off = 0;
        loop {
            let rest = total - off;
            let sure = rest > self.max_line && (rest - self.max_line > 1 || !ends_in_cr);
            if !sure {
                break;
            }
            let (x, y) = span(pending, more, off, off + self.max_line);
            self.push(PARTIAL, x, y);
            off += self.max_line;
        }
        let from_pending = off.min(pending.len());
        let from_more = off - from_pending;
        pending.drain(..from_pending);
        pending.extend_from_slice(&more[from_more..]);
    }
}

/// The bytes `start..end` of the concatenation `a ++ b`, as a piece of each.
fn span<'a>(a: &'a [u8], b: &'a [u8], start: usize, end: usize) -> (&'a [u8], &'a [u8]) {
    let cut = |i: usize| i.min(a.len());
    (
        &a[cut(start)..cut(end)],
        &b[start - cut(start)..end - cut(end)],
    )
}

/// How often a run of failing log writes is told again in the monitor's own log.
const FAILURE_NOTE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

/// What the monitor tells of a container's failing log writes (a full disk fails every one):
/// the first failure, then how many more at most once a minute, and the recovery. One line per
/// failed write filled the monitor's log on /run at the rate the container wrote.
#[derive(Debug, Default)]
pub(super) struct FailureNotes {
    /// Failures since the last note, and when that note was.
    unsaid: u64,
    failing_since_note: Option<std::time::Instant>,
}

impl FailureNotes {
    /// A write failed at `now`: the line to print, if one is due.
    pub(super) fn failed(&mut self, now: std::time::Instant, error: &io::Error) -> Option<String> {
        match self.failing_since_note {
            None => {
                self.failing_since_note = Some(now);
                Some(format!(
                    "{error} (further failures are counted, told once a minute)"
                ))
            }
            Some(last) if now.duration_since(last) >= FAILURE_NOTE_INTERVAL => {
                let n = self.unsaid + 1;
                self.unsaid = 0;
                self.failing_since_note = Some(now);
                Some(format!(
                    "{n} more writes failed in the last minute, the latest: {error}"
                ))
            }
            Some(_) => {
                self.unsaid += 1;
                None
            }
        }
    }

    /// A write succeeded: the line to print if writes had been failing.
    pub(super) fn succeeded(&mut self) -> Option<String> {
        self.failing_since_note.take()?;
        let n = std::mem::take(&mut self.unsaid);
        Some(format!("writes succeed again ({n} more had failed)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, UNIX_EPOCH};

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "berth-log-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn log(&self) -> PathBuf {
            self.0.join("0.log")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// 2023-11-14T22:13:20.5Z, the instant every writer test logs at.
    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::new(1_700_000_000, 500_000_000)
    }

    const TS: &str = "2023-11-14T22:13:20.5Z";

    /// The file's records as (stream, tag, content), checking each one's timestamp.
    fn records(path: &Path) -> Vec<(String, String, Vec<u8>)> {
        let data = std::fs::read(path).unwrap();
        assert!(data.is_empty() || data.ends_with(b"\n"), "torn record");
        data.split(|&b| b == b'\n')
            .filter(|r| !r.is_empty())
            .map(|r| {
                let mut parts = r.splitn(4, |&b| b == b' ');
                let ts = parts.next().unwrap();
                assert_eq!(ts, TS.as_bytes());
                let stream = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                let tag = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                (stream, tag, parts.next().unwrap_or_default().to_vec())
            })
            .collect()
    }

    fn rec(stream: &str, tag: &str, content: &[u8]) -> (String, String, Vec<u8>) {
        (stream.to_string(), tag.to_string(), content.to_vec())
    }

    #[test]
    fn single_line_is_one_full_record() {
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stdout, b"hello world\n", now()).unwrap();
        let expected = format!("{TS} stdout F hello world\n");
        assert_eq!(std::fs::read_to_string(dir.log()).unwrap(), expected);
        assert_eq!(w.bytes_written(), expected.len() as u64);
    }

    #[test]
    fn several_lines_in_one_chunk_are_separate_records() {
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stdout, b"a\n\nbc\nd", now()).unwrap();
        assert_eq!(
            records(&dir.log()),
            vec![
                rec("stdout", "F", b"a"),
                rec("stdout", "F", b""),
                rec("stdout", "F", b"bc"),
            ]
        );
    }

    #[test]
    fn line_split_across_chunks_is_joined() {
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stdout, b"hel", now()).unwrap();
        assert_eq!(w.bytes_written(), 0);
        w.write(Stream::Stdout, b"lo wo", now()).unwrap();
        w.write(Stream::Stdout, b"rld\nnext\n", now()).unwrap();
        assert_eq!(
            records(&dir.log()),
            vec![
                rec("stdout", "F", b"hello world"),
                rec("stdout", "F", b"next")
            ]
        );
    }

    #[test]
    fn crlf_terminator_drops_the_cr_like_containerd() {
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        // Only the `\r` right before `\n` goes; others are content. "\r\n" may straddle chunks.
        w.write(Stream::Stdout, b"a\r\nb\r\r\nc\rd\n", now())
            .unwrap();
        w.write(Stream::Stdout, b"e\r", now()).unwrap();
        w.write(Stream::Stdout, b"\n\r", now()).unwrap();
        w.close_stream(Stream::Stdout, now()).unwrap();
        assert_eq!(
            records(&dir.log()),
            vec![
                rec("stdout", "F", b"a"),
                rec("stdout", "F", b"b\r"),
                rec("stdout", "F", b"c\rd"),
                rec("stdout", "F", b"e"),
                // Cut off by EOF: no `\n` follows, so the `\r` is content.
                rec("stdout", "P", b"\r"),
            ]
        );
    }

    #[test]
    fn forty_kib_line_is_partial_partial_full() {
        let line: Vec<u8> = (0..40 * 1024).map(|i| b'a' + (i % 26) as u8).collect();
        let expected = vec![
            rec("stdout", "P", &line[..16384]),
            rec("stdout", "P", &line[16384..32768]),
            rec("stdout", "F", &line[32768..]),
        ];
        // In one chunk, and as a pipe would deliver it (4 KiB reads, then the newline).
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stdout, &[line.as_slice(), b"\n"].concat(), now())
            .unwrap();
        assert_eq!(records(&dir.log()), expected);
        assert_eq!(expected[2].2.len(), 8192);

        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        for piece in line.chunks(4096) {
            w.write(Stream::Stdout, piece, now()).unwrap();
        }
        assert_eq!(records(&dir.log()).len(), 2, "P records flushed early");
        w.write(Stream::Stdout, b"\n", now()).unwrap();
        assert_eq!(records(&dir.log()), expected);
    }

    #[test]
    fn line_of_exactly_max_is_one_full_record() {
        let line = vec![b'x'; 16384];
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stdout, &line, now()).unwrap();
        w.write(Stream::Stdout, b"\n", now()).unwrap();
        w.write(Stream::Stdout, &[line.as_slice(), b"\r\n"].concat(), now())
            .unwrap();
        assert_eq!(
            records(&dir.log()),
            vec![rec("stdout", "F", &line), rec("stdout", "F", &line)]
        );
    }

    #[test]
    fn cr_at_the_limit_waits_for_the_next_byte() {
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap().with_max_line(4);
        w.write(Stream::Stdout, b"abcd\r", now()).unwrap();
        assert_eq!(w.bytes_written(), 0);
        w.write(Stream::Stdout, b"\n", now()).unwrap();
        w.write(Stream::Stdout, b"efgh\r", now()).unwrap();
        w.write(Stream::Stdout, b"i\n", now()).unwrap();
        w.write(Stream::Stdout, b"abcdefghij\n", now()).unwrap();
        assert_eq!(
            records(&dir.log()),
            vec![
                rec("stdout", "F", b"abcd"),
                rec("stdout", "P", b"efgh"),
                rec("stdout", "F", b"\ri"),
                rec("stdout", "P", b"abcd"),
                rec("stdout", "P", b"efgh"),
                rec("stdout", "F", b"ij"),
            ]
        );
    }

    #[test]
    fn stdout_and_stderr_keep_their_own_pending_bytes() {
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stdout, b"out-", now()).unwrap();
        w.write(Stream::Stderr, b"err-", now()).unwrap();
        w.write(Stream::Stdout, b"one\nout-", now()).unwrap();
        w.write(Stream::Stderr, b"one\n", now()).unwrap();
        w.write(Stream::Stdout, b"two\n", now()).unwrap();
        assert_eq!(
            records(&dir.log()),
            vec![
                rec("stdout", "F", b"out-one"),
                rec("stderr", "F", b"err-one"),
                rec("stdout", "F", b"out-two"),
            ]
        );
    }

    #[test]
    fn eof_writes_pending_partial_line_as_p() {
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stderr, b"done\nno newline", now()).unwrap();
        w.close_stream(Stream::Stderr, now()).unwrap();
        // Nothing pending: closing again or closing the other stream writes nothing.
        w.close_stream(Stream::Stderr, now()).unwrap();
        w.close_stream(Stream::Stdout, now()).unwrap();
        assert_eq!(
            records(&dir.log()),
            vec![
                rec("stderr", "F", b"done"),
                rec("stderr", "P", b"no newline")
            ]
        );
    }

    #[test]
    fn reopen_after_rename_writes_to_a_new_file() {
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stdout, b"before\nhalf ", now()).unwrap();
        let rotated = dir.0.join("0.log.20231114-221320");
        std::fs::rename(dir.log(), &rotated).unwrap();
        w.write(Stream::Stdout, b"still old\n", now()).unwrap();
        w.reopen().unwrap();
        w.write(Stream::Stdout, b"after\n", now()).unwrap();
        assert_eq!(
            records(&rotated),
            vec![
                rec("stdout", "F", b"before"),
                rec("stdout", "F", b"half still old")
            ]
        );
        assert_eq!(records(&dir.log()), vec![rec("stdout", "F", b"after")]);
        let total = std::fs::metadata(&rotated).unwrap().len()
            + std::fs::metadata(dir.log()).unwrap().len();
        assert_eq!(w.bytes_written(), total);
    }

    #[test]
    fn open_creates_0640_and_appends() {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new();
        std::fs::write(dir.log(), format!("{TS} stdout F earlier\n")).unwrap();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stdout, b"later\n", now()).unwrap();
        assert_eq!(
            records(&dir.log()),
            vec![rec("stdout", "F", b"earlier"), rec("stdout", "F", b"later")]
        );

        let fresh = dir.0.join("1.log");
        LogWriter::open(&fresh).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        // The process umask can only remove bits.
        assert_eq!(mode & 0o777 & !0o640, 0);
        assert!(LogWriter::open(&dir.0.join("missing/0.log")).is_err());
    }

    #[test]
    fn empty_chunks_are_no_ops() {
        let dir = TempDir::new();
        let mut w = LogWriter::open(&dir.log()).unwrap();
        w.write(Stream::Stdout, b"", now()).unwrap();
        w.write(Stream::Stdout, b"x", now()).unwrap();
        w.write(Stream::Stdout, b"", now()).unwrap();
        assert_eq!(w.bytes_written(), 0);
        assert_eq!(std::fs::metadata(dir.log()).unwrap().len(), 0);
        w.write(Stream::Stdout, b"\n", now()).unwrap();
        assert_eq!(records(&dir.log()), vec![rec("stdout", "F", b"x")]);
    }

    #[test]
    fn failing_writes_are_told_once_then_once_a_minute_then_their_end() {
        let t0 = std::time::Instant::now();
        let full = io::Error::from_raw_os_error(28);
        let mut notes = FailureNotes::default();
        assert_eq!(notes.succeeded(), None);
        assert!(notes.failed(t0, &full).unwrap().contains("No space left"));
        for i in 1..1000u64 {
            let at = t0 + std::time::Duration::from_millis(i * 10);
            assert_eq!(notes.failed(at, &full), None, "write {i}");
        }
        let minute = t0 + FAILURE_NOTE_INTERVAL;
        assert!(notes
            .failed(minute, &full)
            .unwrap()
            .starts_with("1000 more"));
        assert_eq!(notes.failed(minute, &full), None);
        assert_eq!(
            notes.succeeded().unwrap(),
            "writes succeed again (1 more had failed)"
        );
        assert_eq!(notes.succeeded(), None);
    }
}
