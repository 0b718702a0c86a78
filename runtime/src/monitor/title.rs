//! A standby monitor's command line, rewritten in place once it has its pod, so that it reads
//! as a monitor started for that pod would (`berthd monitor <config>`): `ps`, the agent's
//! `kill_unreported` and anyone looking for a pod's monitor by its pod dir find it. This is what
//! setproctitle(3) does; the standby is started with room for the longer line.

/// Replaces this process's arguments, as `/proc/self/cmdline` shows them, with `args`. False,
/// and nothing written, when they do not fit the memory the kernel laid the arguments out in.
pub(super) fn retitle(args: &[&[u8]]) -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return false;
    };
    let Some((start, end)) = argument_area(&stat) else {
        return false;
    };
    let Some(line) = cmdline(args, end - start) else {
        return false;
    };
    // SAFETY: [start, end) is this process's argument memory, as the kernel reports it: mapped,
    // writable (it is on the initial stack) and ours. Nothing holds a Rust reference into it;
    // std only keeps the C argv pointers, which would read the new arguments.
    unsafe { std::ptr::copy_nonoverlapping(line.as_ptr(), start as *mut u8, line.len()) };
    true
}

/// `arg_start` and `arg_end` from a `/proc/<pid>/stat` line (fields 48 and 49; counted after the
/// command name, which may hold spaces and parentheses, from its last `)`).
fn argument_area(stat: &str) -> Option<(usize, usize)> {
    let (_, rest) = stat.rsplit_once(')')?;
    let mut fields = rest.split_whitespace().skip(45);
    let start: usize = fields.next()?.parse().ok()?;
    let end: usize = fields.next()?.parse().ok()?;
    (start < end).then_some((start, end))
}

/// `args` as the kernel lays them out (each ended by a NUL), padded with NULs to `room`
/// bytes, or None when they need more.
fn cmdline(args: &[&[u8]], room: usize) -> Option<Vec<u8>> {
    let mut line = Vec::with_capacity(room);
    for arg in args {
        if arg.contains(&0) {
            return None;
        }
        line.extend_from_slice(arg);
        line.push(0);
    }
    (line.len() <= room).then(|| {
        line.resize(room, 0);
        line
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_argument_area_is_read_past_a_command_name_with_spaces_and_parentheses() {
        let mut fields: Vec<String> = (3..=52).map(|n| n.to_string()).collect();
        fields[48 - 3] = "140737000".to_string();
        fields[49 - 3] = "140737100".to_string();
        let stat = format!("4242 (a) b (c) {}", fields.join(" "));
        assert_eq!(argument_area(&stat), Some((140737000, 140737100)));
        assert_eq!(argument_area("4242 (short) S 1"), None);
    }

    #[test]
    fn a_new_line_is_nul_separated_and_padded_and_refused_when_it_does_not_fit() {
        assert_eq!(
            cmdline(&[b"berthd", b"monitor"], 20).unwrap(),
            b"berthd\0monitor\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"[..20].to_vec()
        );
        assert_eq!(cmdline(&[b"berthd", b"monitor"], 15).unwrap().len(), 15);
        assert_eq!(cmdline(&[b"berthd", b"monitor"], 14), None);
        assert_eq!(cmdline(&[b"a\0b"], 64), None);
    }

    /// The real thing, on this test process: what /proc shows is the new line.
    #[test]
    fn our_own_cmdline_reads_as_rewritten() {
        let before = std::fs::read("/proc/self/cmdline").unwrap();
        let first = before.split(|&b| b == 0).next().unwrap().to_vec();
        assert!(retitle(&[&first]));
        let after = std::fs::read("/proc/self/cmdline").unwrap();
        assert_eq!(after.len(), before.len());
        assert_eq!(&after[..first.len() + 1], [&first[..], b"\0"].concat());
        assert!(after[first.len()..].iter().all(|&b| b == 0), "{after:?}");
        assert!(!retitle(&[&vec![b'x'; before.len()]]));
    }
}
