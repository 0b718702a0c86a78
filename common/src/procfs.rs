//! Figures a process's `/proc` files give in KiB.

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
}
