//! The `cri_log_writer` fuzz target's body; its input and its checks are described in
//! `fuzz/fuzz_targets/cri_log_writer.rs`. libFuzzer runs it there, coverage-guided (`make fuzz`);
//! `e2e/tests/fuzz_targets.rs` runs it over the seeds and seeded mutations of them (`make test`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use berth_runtime::monitor::log::{LogWriter, Stream, DEFAULT_MAX_LINE};

/// Line limits to try: tiny ones cut nearly every line; 0 is documented to mean 1.
const LIMITS: [usize; 11] = [0, 1, 2, 3, 4, 7, 8, 16, 64, DEFAULT_MAX_LINE, usize::MAX];
/// 0001-01-01T00:00:00Z and 10000-01-01T00:00:00Z in seconds from the epoch: the years RFC 3339
/// can write with its four digits.
const FIRST_SECOND: i64 = -62_135_596_800;
const END_SECOND: i64 = 253_402_300_800;

/// The log file, in a directory made once per thread: each call rewrites the file, and tests call
/// `run` from several threads at once (fuzz/run points TMPDIR at a scratch directory it removes).
fn log_path() -> PathBuf {
    thread_local! {
        static DIR: LogDir = LogDir::create();
    }
    DIR.with(|dir| dir.0.join("0.log"))
}

/// A directory of this process's, removed with what it holds when its thread ends, so that a
/// test process leaves none behind.
struct LogDir(PathBuf);

impl LogDir {
    fn create() -> LogDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("berth-fuzz-log-{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(name);
        std::fs::create_dir_all(&dir).expect("create the log directory");
        LogDir(dir)
    }
}

impl Drop for LogDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Takes `N` bytes off the front of `data`, zero-filled if it is shorter.
fn take<const N: usize>(data: &mut &[u8]) -> [u8; N] {
    let mut out = [0; N];
    let n = N.min(data.len());
    out[..n].copy_from_slice(&data[..n]);
    *data = &data[n..];
    out
}

pub fn run(data: &[u8]) {
    let mut data = data;
    let [pick] = take::<1>(&mut data);
    let limit = LIMITS[usize::from(pick) % LIMITS.len()];
    let secs = FIRST_SECOND
        + (u64::from_le_bytes(take::<8>(&mut data)) % (END_SECOND - FIRST_SECOND) as u64) as i64;
    let nanos = u32::from_le_bytes(take::<4>(&mut data)) % 1_000_000_000;
    let now = instant(secs, nanos);

    let path = &log_path();
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("remove {}: {e}", path.display()),
    }
    let mut writer = LogWriter::open(path)
        .expect("open the log")
        .with_max_line(limit);
    let mut fed: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
    while let Some((&control, rest)) = data.split_first() {
        let (chunk, rest) = rest.split_at(usize::from(control >> 1).min(rest.len()));
        data = rest;
        let stream = if control & 1 == 0 {
            Stream::Stdout
        } else {
            Stream::Stderr
        };
        writer.write(stream, chunk, now).expect("write the log");
        fed[index(stream)].extend_from_slice(chunk);
    }
    writer
        .close_stream(Stream::Stdout, now)
        .expect("close stdout");
    writer
        .close_stream(Stream::Stderr, now)
        .expect("close stderr");

    let file = std::fs::read(path).expect("read the log back");
    assert_eq!(writer.bytes_written(), file.len() as u64, "bytes_written");
    assert!(file.is_empty() || file.ends_with(b"\n"), "torn last record");
    let mut got: [Vec<(u8, &[u8])>; 2] = [Vec::new(), Vec::new()];
    let mut stamp: Option<&[u8]> = None;
    let body = file.strip_suffix(b"\n");
    for record in body.into_iter().flat_map(|b| b.split(|&c| c == b'\n')) {
        let mut fields = record.splitn(4, |&b| b == b' ');
        let (Some(ts), Some(name), Some(tag), Some(content)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            panic!(
                "record {:?} has fewer than 4 fields",
                String::from_utf8_lossy(record)
            );
        };
        match stamp {
            Some(first) => assert_eq!(ts, first, "records of one instant differ in timestamp"),
            None => {
                check_timestamp(ts, secs, nanos);
                stamp = Some(ts);
            }
        }
        let stream = match name {
            b"stdout" => Stream::Stdout,
            b"stderr" => Stream::Stderr,
            _ => panic!("stream {:?}", String::from_utf8_lossy(name)),
        };
        let tag = match tag {
            b"P" | b"F" => tag[0],
            _ => panic!("tag {:?}", String::from_utf8_lossy(tag)),
        };
        got[index(stream)].push((tag, content));
    }
    for stream in [Stream::Stdout, Stream::Stderr] {
        let fed = &fed[index(stream)];
        let want = records(fed, limit.max(1));
        let got = &got[index(stream)];
        assert!(
            *got == want,
            "{} with limit {limit}: fed {:?}\n got {}\nwant {}",
            stream.as_str(),
            String::from_utf8_lossy(fed),
            show(got),
            show(&want),
        );
    }
}

fn index(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
    }
}

/// The records one stream's bytes must become, worked out from the whole stream at once.
fn records(fed: &[u8], limit: usize) -> Vec<(u8, &[u8])> {
    let mut out = Vec::new();
    let mut lines: Vec<&[u8]> = fed.split(|&b| b == b'\n').collect();
    // What follows the last `\n`: cut off by the end of the stream (empty if it ended a line).
    let cut_off = lines.pop().unwrap_or_default();
    for line in lines {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            out.push((b'F', line));
        }
        let mut pieces = line.chunks(limit).peekable();
        while let Some(piece) = pieces.next() {
            let tag = if pieces.peek().is_some() { b'P' } else { b'F' };
            out.push((tag, piece));
        }
    }
    out.extend(cut_off.chunks(limit).map(|piece| (b'P', piece)));
    out
}

fn show(records: &[(u8, &[u8])]) -> String {
    let shown: Vec<String> = records
        .iter()
        .map(|(tag, content)| format!("{} {:?}", *tag as char, String::from_utf8_lossy(content)))
        .collect();
    shown.join(", ")
}

/// `secs` seconds (possibly negative) and `nanos` after the epoch.
fn instant(secs: i64, nanos: u32) -> SystemTime {
    let whole = if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    };
    whole + Duration::from_nanos(u64::from(nanos))
}

/// Checks `ts` is Go's RFC3339Nano in UTC for the instant (`secs`, `nanos`): four-digit year,
/// the fraction without trailing zeros and absent on a whole second, `Z`.
fn check_timestamp(ts: &[u8], secs: i64, nanos: u32) {
    let text = std::str::from_utf8(ts).expect("timestamp is ASCII");
    let fail = |why: &str| -> ! { panic!("timestamp {text:?} for {secs}s {nanos}ns: {why}") };
    let Some(text_no_z) = text.strip_suffix('Z') else {
        fail("no Z");
    };
    let (civil, fraction) = match text_no_z.split_once('.') {
        Some((c, f)) => (c, Some(f)),
        None => (text_no_z, None),
    };
    let b = civil.as_bytes();
    let shape_ok = b.len() == 19
        && b.iter().enumerate().all(|(i, &c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape_ok {
        fail("not YYYY-MM-DDTHH:MM:SS");
    }
    let num = |from: usize, to: usize| {
        civil[from..to]
            .parse::<i64>()
            .unwrap_or_else(|_| fail("digits"))
    };
    let (year, month, day) = (num(0, 4), num(5, 7), num(8, 10));
    let (hour, minute, second) = (num(11, 13), num(14, 16), num(17, 19));
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        fail("no such date");
    }
    if hour > 23 || minute > 59 || second > 59 {
        fail("no such time of day");
    }
    let got_nanos = match fraction {
        None => 0,
        Some(f) => {
            if f.is_empty()
                || f.len() > 9
                || f.ends_with('0')
                || !f.bytes().all(|c| c.is_ascii_digit())
            {
                fail("fraction is not 1 to 9 digits without trailing zeros");
            }
            format!("{f:0<9}")
                .parse::<u32>()
                .unwrap_or_else(|_| fail("fraction"))
        }
    };
    let got_secs = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    if (got_secs, got_nanos) != (secs, nanos) {
        fail(&format!("reads back as {got_secs}s {got_nanos}ns"));
    }
}

fn days_in_month(year: i64, month: i64) -> i64 {
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    match month {
        2 if leap => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the given proleptic Gregorian date, counted through March-based
/// years (the leap day last) in 400-year eras of 146097 days.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}
