//! What a process's `/proc` files say: figures in KiB, and the fields of its `stat`.

/// The KiB figure of a `/proc/<pid>/<file>` line `<field>   N kB` (`status` and `VmRSS:`,
/// `smaps_rollup` and `Pss:`, …); `None` when the process or the line is gone.
pub fn kib(pid: u32, file: &str, field: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name (which may hold spaces
/// and parentheses itself): state, ppid, pgrp, session, …; `None` when the process is gone.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// Whether process `pid` is there and neither a zombie nor dead (`Z`, `X`): one that exited
/// stays listed until its parent reaps it.
pub fn running(pid: u32) -> bool {
    stat_fields(pid)
        .and_then(|fields| fields.into_iter().next())
        .is_some_and(|state| state != "Z" && state != "X")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_not_a_missing_one() {
        let me = std::process::id();
        assert!(kib(me, "status", "VmRSS:").is_some_and(|k| k > 0));
        assert!(kib(me, "smaps_rollup", "Pss:").is_some_and(|k| k > 0));
        assert_eq!(kib(me, "status", "NoSuchField:"), None);
        assert_eq!(kib(u32::MAX, "status", "VmRSS:"), None);
    }

    #[test]
    fn stat_fields_start_at_the_state() {
        let me = std::process::id();
        let fields = stat_fields(me).unwrap();
        // The state (of the main thread, which may be waiting on this test's), then the ppid.
        assert!(["R", "S"].contains(&fields[0].as_str()), "{fields:?}");
        assert_eq!(fields[1], std::os::unix::process::parent_id().to_string());
        assert_eq!(stat_fields(u32::MAX), None);
    }

    #[test]
    fn a_live_process_is_running_and_a_missing_one_is_not() {
        assert!(running(std::process::id()));
        assert!(!running(u32::MAX));
    }
}
