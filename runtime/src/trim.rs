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
    unmap_then_wait(&present_file_pages(), &mut []).0
}

/// `trim`, then a wait on `fds` as poll(2) without a timeout waits (ppoll with the signal mask
/// as it is): the number of descriptors with events, now in `fds`, or the error. Whatever code
/// runs after the unmapping faults its pages back, and the kernel maps 64 KiB around each
/// fault: here nothing runs between the unmapping and the wait but one small function that
/// makes its system calls itself, not through libc's wrappers. An idle monitor keeps only
/// that mapped, not the pages of its poll loop, nix and libc.
pub(crate) fn trim_then_wait(fds: &mut [nix::poll::PollFd]) -> Result<usize, nix::errno::Errno> {
    // SAFETY: as in `trim`.
    unsafe { libc::malloc_trim(0) };
    let runs = present_file_pages();
    // SAFETY: PollFd is a transparent libc::pollfd (nix passes its slices to poll(2) so too).
    let fds = unsafe {
        std::slice::from_raw_parts_mut(fds.as_mut_ptr().cast::<libc::pollfd>(), fds.len())
    };
    match unmap_then_wait(&runs, fds).1 {
        n if n >= 0 => Ok(n as usize),
        e => Err(nix::errno::Errno::from_raw(-e as i32)),
    }
}

/// MADV_DONTNEED of each run, then, with descriptors, ppoll on them: (bytes unmapped, what
/// ppoll returned, a negative errno on failure; 0 without descriptors).
#[inline(never)]
fn unmap_then_wait(runs: &[Range<usize>], fds: &mut [libc::pollfd]) -> (usize, isize) {
    let mut dropped = 0;
    for run in runs {
        // SAFETY: the run is pages of a mapping without write permission that pagemap has
        // shown to be the file's own pages, not copies: MADV_DONTNEED only unmaps them, and
        // the next access faults the same bytes in from the page cache. Nothing can have made
        // them anonymous since (they cannot be written).
        let rc = unsafe {
            syscall5(
                libc::SYS_madvise,
                [
                    run.start,
                    run.end - run.start,
                    libc::MADV_DONTNEED as usize,
                    0,
                    0,
                ],
            )
        };
        if rc == 0 {
            dropped += run.end - run.start;
        }
    }
    if fds.is_empty() {
        return (dropped, 0);
    }
    // SAFETY: ppoll(fds, nfds, no timeout, no signal mask change): the kernel writes only the
    // revents of those `nfds` pollfds, which `fds` lends mutably.
    let ready = unsafe {
        syscall5(
            libc::SYS_ppoll,
            [fds.as_mut_ptr() as usize, fds.len(), 0, 0, 8],
        )
    };
    (dropped, ready)
}

/// A system call made here, not through libc (whose wrapper's pages `trim` may just have
/// unmapped): its return value, a negative errno on failure.
#[cfg(target_arch = "x86_64")]
unsafe fn syscall5(number: libc::c_long, args: [usize; 5]) -> isize {
    let ret: isize;
    // SAFETY: the caller's; the x86-64 system call convention, which clobbers rcx and r11. No
    // `nomem`: the kernel may write memory the arguments point to.
    unsafe {
        std::arch::asm!(
            "syscall",
            inlateout("rax") number as isize => ret,
            in("rdi") args[0],
            in("rsi") args[1],
            in("rdx") args[2],
            in("r10") args[3],
            in("r8") args[4],
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        )
    };
    ret
}

#[cfg(target_arch = "aarch64")]
unsafe fn syscall5(number: libc::c_long, args: [usize; 5]) -> isize {
    let ret: isize;
    // SAFETY: the caller's; the arm64 system call convention (number in x8, result in x0).
    unsafe {
        std::arch::asm!(
            "svc 0",
            in("x8") number,
            inlateout("x0") args[0] as isize => ret,
            in("x1") args[1],
            in("x2") args[2],
            in("x3") args[3],
            in("x4") args[4],
            options(nostack),
        )
    };
    ret
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn syscall5(number: libc::c_long, args: [usize; 5]) -> isize {
    // SAFETY: the caller's.
    let rc = unsafe { libc::syscall(number, args[0], args[1], args[2], args[3], args[4]) };
    match rc {
        -1 => {
            -(std::io::Error::last_os_error()
                .raw_os_error()
                .unwrap_or(libc::EIO) as isize)
        }
        rc => rc as isize,
    }
}

/// The runs of present file pages in every candidate mapping, by `/proc/self/pagemap`.
fn present_file_pages() -> Vec<Range<usize>> {
    let (Ok(maps), Ok(mut pagemap)) = (
        std::fs::read_to_string("/proc/self/maps"),
        std::fs::File::open("/proc/self/pagemap"),
    ) else {
        return Vec::new();
    };
    let mut runs = Vec::new();
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
        runs.extend(file_page_runs(mapping.start, &entries));
    }
    runs
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

    /// The wait after the trim is poll's: it returns the ready descriptors with their events.
    #[test]
    fn trim_then_wait_reports_a_readable_pipe() {
        use std::os::fd::AsFd;
        let (read, write) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&write, b"x").unwrap();
        let mut fds = [
            nix::poll::PollFd::new(read.as_fd(), nix::poll::PollFlags::POLLIN),
            nix::poll::PollFd::new(write.as_fd(), nix::poll::PollFlags::empty()),
        ];
        assert_eq!(trim_then_wait(&mut fds), Ok(1));
        assert_eq!(fds[0].revents(), Some(nix::poll::PollFlags::POLLIN));
        assert_eq!(fds[1].revents(), Some(nix::poll::PollFlags::empty()));
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
