//! Giving back what a long-lived helper touched once. The pod monitor's set-up, a container's
//! create and start, a reap or an attach run code of the big `berthd` image (and of libc) that
//! its idle poll loop never runs again, and an exec's waiter (`berthd init wait`) ran the
//! binary's start-up only to block in `waitpid`; the kernel maps a file 64 KiB around each
//! fault, so a monitor that has created a container kept ~2-3 MiB of the binary mapped. `trim`
//! unmaps those file pages (they stay in the page cache, shared with the agent and every other
//! helper; the next fault maps them again) and hands freed heap back with `malloc_trim`.
//!
//! Only pages that are the file's own are dropped: in mappings without write permission, the
//! pages `/proc/self/pagemap` says are present and file pages. A copied-on-write page (the
//! RELRO segment the loader wrote before its `mprotect`, a debugger's breakpoint) is anonymous
//! and stays: dropping it would bring back the file's unrelocated bytes.

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;

const PAGE: usize = 4096;
/// pagemap entry bits: the page is present; it is a file page (or shared anonymous).
const PRESENT: u64 = 1 << 63;
const FILE: u64 = 1 << 61;

/// The mappings of `/proc/self/maps` text whose file pages may be dropped: backed by a file
/// (a path), mapped without write permission.
pub(crate) fn candidates(maps: &str) -> Vec<Range<usize>> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            let perms = fields.next()?;
            let path = fields.nth(3)?;
            (path.starts_with('/') && !perms.contains('w') && end > start).then_some(start..end)
        })
        .collect()
}

/// The runs of pages, of a mapping starting at `start`, that `entries` (its pagemap entries,
/// one per page) say are present file pages.
pub(crate) fn file_page_runs(start: usize, entries: &[u64]) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        if entry & (PRESENT | FILE) != PRESENT | FILE {
            continue;
        }
        let page = start + i * PAGE;
        match runs.last_mut() {
            Some(run) if run.end == page => run.end = page + PAGE,
            _ => runs.push(page..page + PAGE),
        }
    }
    runs
}

/// Returns freed heap, then unmaps the file pages `candidates` and `file_page_runs` name;
/// returns the bytes unmapped. Best effort: what cannot be read or is refused stays.
pub(crate) fn trim() -> usize {
    // SAFETY: malloc_trim takes no pointers; it returns free heap memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    let (Ok(maps), Ok(mut pagemap)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::File::open("/proc/self/pagemap"),
    ) else {
        return 0;
    };
    let mut dropped = 0;
    let mut raw = Vec::new();
    for mapping in candidates(&maps) {
        let pages = (mapping.end - mapping.start) / PAGE;
        raw.resize(pages * 8, 0);
        let read = pagemap
            .seek(SeekFrom::Start((mapping.start / PAGE * 8) as u64))
            .and_then(|_| pagemap.read_exact(&mut raw));
        if read.is_err() {
            continue;
        }
        let entries: Vec<u64> = raw
            .chunks_exact(8)
            .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or_default()))
            .collect();
        for run in file_page_runs(mapping.start, &entries) {
            // SAFETY: the run is pages of a mapping without write permission that pagemap
            // has just shown to be the file's own pages, not copies: MADV_DONTNEED only
            // unmaps them, and the next access faults the same bytes in from the page cache.
            // Nothing can have made them anonymous since (they cannot be written).
            let rc = unsafe {
                libc::madvise(
                    run.start as *mut libc::c_void,
                    run.end - run.start,
                    libc::MADV_DONTNEED,
                )
            };
            if rc == 0 {
                dropped += run.end - run.start;
            }
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
00200000-005c9000 r--p 00000000 fe:00 5509281    /usr/bin/berthd
005c9000-013ed000 r-xp 003c8000 fe:00 5509281    /usr/bin/berthd
013ed000-01494000 r--p 011eb000 fe:00 5509281    /usr/bin/berthd
01494000-0149b000 rw-p 01291000 fe:00 5509281    /usr/bin/berthd
01c00000-01d00000 rw-p 00000000 00:00 0          [heap]
7fea223cd000-7fea22523000 r-xp 00026000 fe:00 326279    /usr/lib/x86_64-linux-gnu/libc.so.6
7fea22600000-7fea22610000 rw-s 00000000 00:05 7  /dev/shm/x (deleted)
7fea22700000-7fea22701000 r--p 00000000 00:00 0
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0  [stack]
7ffc00100000-7ffc00102000 r-xp 00000000 00:00 0  [vdso]
";

    #[test]
    fn only_read_only_file_mappings_are_candidates() {
        assert_eq!(
            candidates(MAPS),
            vec![
                0x200000..0x5c9000,
                0x5c9000..0x13ed000,
                0x13ed000..0x1494000,
                0x7fea223cd000..0x7fea22523000,
            ]
        );
    }

    #[test]
    fn only_present_file_pages_are_dropped_and_neighbours_make_one_run() {
        let file = PRESENT | FILE;
        let anonymous = PRESENT;
        let swapped = 1 << 62;
        let entries = [file, file, anonymous, 0, file, swapped, file, file, file];
        assert_eq!(
            file_page_runs(0x1000, &entries),
            vec![0x1000..0x3000, 0x5000..0x6000, 0x7000..0xa000]
        );
        assert!(file_page_runs(0x1000, &[anonymous, 0, swapped]).is_empty());
    }

    #[test]
    fn trimming_this_process_keeps_its_code_and_data_working() {
        let before = String::from("still here");
        assert!(trim() > 0);
        assert_eq!(before, "still here");
        // Our own code ran again after the trim: the next trim finds pages to drop.
        assert!(trim() > 0);
    }
}
