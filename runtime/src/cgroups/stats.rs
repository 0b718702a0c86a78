//! cgroup statistics of a container or a pod, on v1, v2 and hybrid hosts: pure parsers over the
//! files' contents (tested below with fixtures from both hierarchies), and [`read`], which takes
//! each controller's files from the hierarchy that carries it (as `update::Layout` decides).
//! The computations follow containerd's CRI stats (`container_stats_list.go`): working set is
//! usage minus inactive file, clamped at 0; v2 CPU time is `usage_usec` × 1000.

use std::collections::BTreeMap;
use std::path::Path;

use super::update::{Layout, Place};

/// What a cgroup's files say. A value its file did not give (no such controller, or the cgroup
/// vanished mid-read because the container just exited) is `None`, never an error.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupStats {
    /// CPU time used by the cgroup's tasks, in nanoseconds.
    pub cpu_usage_ns: Option<u64>,
    pub memory: Option<MemoryStats>,
    /// Swap in use, in bytes.
    pub swap_usage_bytes: Option<u64>,
    /// Processes (tasks) in the cgroup.
    pub pids: Option<u64>,
    /// Pressure stall information, where the kernel has it (cgroup v2 directories).
    pub cpu_pressure: Option<Pressure>,
    pub memory_pressure: Option<Pressure>,
    pub io_pressure: Option<Pressure>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub usage_bytes: u64,
    /// Usage minus inactive file pages: what the kernel cannot simply drop.
    pub working_set_bytes: u64,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub rss_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// The limit, if one is set (`None` for unlimited).
    pub limit_bytes: Option<u64>,
}

impl MemoryStats {
    /// The limit minus the working set, as kubelet's eviction reads it; `None` without a limit.
    pub fn available_bytes(&self) -> Option<u64> {
        self.limit_bytes
            .map(|l| l.saturating_sub(self.working_set_bytes))
    }
}

/// One `*.pressure` file: the `some` line and, if present, the `full` line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pressure {
    pub some: PressureLine,
    pub full: Option<PressureLine>,
}

/// Averages in hundredths of a percent (the kernel prints two decimals), total stall time in µs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PressureLine {
    pub avg10: u32,
    pub avg60: u32,
    pub avg300: u32,
    pub total_us: u64,
}

/// Limits above this mean "no limit": v1 reports unlimited as a page-rounded i64::MAX.
const UNLIMITED: u64 = 1 << 62;

/// `key value` lines (`memory.stat`, `cpu.stat`); lines that are not a key and a number are
/// skipped.
pub fn parse_keyed(text: &str) -> BTreeMap<&str, u64> {
    text.lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            let key = parts.next()?;
            let value = parts.next()?.parse().ok()?;
            Some((key, value))
        })
        .collect()
}

/// A file holding one number (`cpuacct.usage`, `memory.current`, `pids.current`).
pub fn parse_number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// A limit file: a number, or v2's `max`. Unlimited is `None`.
pub fn parse_limit(text: &str) -> Option<u64> {
    match text.trim() {
        "max" => None,
        t => t.parse().ok().filter(|l| *l < UNLIMITED),
    }
}

/// v1 `cpuacct.usage`: nanoseconds.
pub fn v1_cpu(cpuacct_usage: &str) -> Option<u64> {
    parse_number(cpuacct_usage)
}

/// v2 `cpu.stat`: `usage_usec` in microseconds, returned in nanoseconds.
pub fn v2_cpu(cpu_stat: &str) -> Option<u64> {
    parse_keyed(cpu_stat)
        .get("usage_usec")
        .map(|us| us.saturating_mul(1000))
}

/// v1: `memory.usage_in_bytes`, `memory.limit_in_bytes` and the hierarchical `total_*` lines of
/// `memory.stat`.
pub fn v1_memory(usage: &str, limit: &str, stat: &str) -> Option<MemoryStats> {
    let usage = parse_number(usage)?;
    let stat = parse_keyed(stat);
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    Some(MemoryStats {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(get("total_inactive_file")),
        rss_bytes: get("total_rss"),
        page_faults: get("total_pgfault"),
        major_page_faults: get("total_pgmajfault"),
        limit_bytes: parse_limit(limit),
    })
}

/// v2: `memory.current`, `memory.max` and `memory.stat`.
pub fn v2_memory(current: &str, max: &str, stat: &str) -> Option<MemoryStats> {
    let usage = parse_number(current)?;
    let stat = parse_keyed(stat);
    let get = |k: &str| stat.get(k).copied().unwrap_or(0);
    Some(MemoryStats {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(get("inactive_file")),
        rss_bytes: get("anon"),
        page_faults: get("pgfault"),
        major_page_faults: get("pgmajfault"),
        limit_bytes: parse_limit(max),
    })
}

/// v1 swap in use: `memory.memsw.usage_in_bytes` (memory + swap) minus `memory.usage_in_bytes`.
pub fn v1_swap(memsw_usage: &str, usage: &str) -> Option<u64> {
    Some(parse_number(memsw_usage)?.saturating_sub(parse_number(usage)?))
}

/// A `*.pressure` file.
pub fn parse_pressure(text: &str) -> Option<Pressure> {
    let line = |kind: &str| -> Option<PressureLine> {
        let l = text.lines().find(|l| l.starts_with(kind))?;
        let mut out = PressureLine::default();
        for field in l.split_whitespace().skip(1) {
            let (key, value) = field.split_once('=')?;
            match key {
                "avg10" => out.avg10 = hundredths(value)?,
                "avg60" => out.avg60 = hundredths(value)?,
                "avg300" => out.avg300 = hundredths(value)?,
                "total" => out.total_us = value.parse().ok()?,
                _ => {}
            }
        }
        Some(out)
    };
    Some(Pressure {
        some: line("some ")?,
        full: line("full "),
    })
}

/// `3.32` → 332.
fn hundredths(value: &str) -> Option<u32> {
    let (whole, fraction) = value.split_once('.').unwrap_or((value, "0"));
    let fraction = format!("{fraction:0<2}");
    Some(whole.parse::<u32>().ok()? * 100 + fraction.get(..2)?.parse::<u32>().ok()?)
}

/// Reads the statistics of the cgroup `cgroup` (a cgroupfs path) on this host.
pub fn read(cgroup: &Path) -> CgroupStats {
    read_in(&Layout::probe(cgroup))
}

/// [`read`] for a layout already probed.
pub fn read_in(layout: &Layout) -> CgroupStats {
    let file = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let mut stats = CgroupStats {
        cpu_usage_ns: match layout.place("cpuacct").or_else(|| layout.place("cpu")) {
            Some(Place::V1(dir)) => file(dir, "cpuacct.usage").and_then(|t| v1_cpu(&t)),
            Some(Place::V2(dir)) => file(dir, "cpu.stat").and_then(|t| v2_cpu(&t)),
            None => None,
        },
        ..CgroupStats::default()
    };
    match layout.place("memory") {
        Some(Place::V1(dir)) => {
            let usage = file(dir, "memory.usage_in_bytes");
            if let (Some(usage), Some(limit), Some(stat)) = (
                &usage,
                file(dir, "memory.limit_in_bytes"),
                file(dir, "memory.stat"),
            ) {
                stats.memory = v1_memory(usage, &limit, &stat);
            }
            stats.swap_usage_bytes = match (file(dir, "memory.memsw.usage_in_bytes"), &usage) {
                (Some(memsw), Some(usage)) => v1_swap(&memsw, usage),
                _ => None,
            };
        }
        Some(Place::V2(dir)) => {
            if let (Some(current), Some(max), Some(stat)) = (
                file(dir, "memory.current"),
                file(dir, "memory.max"),
                file(dir, "memory.stat"),
            ) {
                stats.memory = v2_memory(&current, &max, &stat);
            }
            stats.swap_usage_bytes =
                file(dir, "memory.swap.current").and_then(|t| parse_number(&t));
        }
        None => {}
    }
    stats.pids = match layout.place("pids") {
        Some(Place::V1(dir) | Place::V2(dir)) => {
            file(dir, "pids.current").and_then(|t| parse_number(&t))
        }
        None => None,
    };
    // PSI lives in every v2 directory, whichever hierarchy carries the controllers.
    if let Some(dir) = layout.v2_dir.as_deref().filter(|d| d.is_dir()) {
        stats.cpu_pressure = file(dir, "cpu.pressure").and_then(|t| parse_pressure(&t));
        stats.memory_pressure = file(dir, "memory.pressure").and_then(|t| parse_pressure(&t));
        stats.io_pressure = file(dir, "io.pressure").and_then(|t| parse_pressure(&t));
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    // From a v1 memory cgroup (Linux 6.x, hybrid host) holding a 64 MiB allocation.
    const V1_MEMORY_STAT: &str = "\
cache 8192000
rss 67244032
rss_huge 0
shmem 0
mapped_file 0
inactive_anon 67108864
active_anon 135168
inactive_file 4096000
active_file 4096000
hierarchical_memory_limit 268435456
total_cache 8192000
total_rss 67244032
total_pgfault 17012
total_pgmajfault 3
total_inactive_anon 67108864
total_active_anon 135168
total_inactive_file 4096000
total_active_file 4096000
";

    // From a v2 cgroup (Linux 6.x, systemd host).
    const V2_MEMORY_STAT: &str = "\
anon 67244032
file 8192000
kernel 253952
sock 0
shmem 0
file_mapped 0
inactive_anon 67108864
active_anon 135168
inactive_file 4096000
active_file 4096000
pgfault 17012
pgmajfault 3
";

    const V2_CPU_STAT: &str = "\
usage_usec 1534211
user_usec 1200000
system_usec 334211
nr_periods 0
nr_throttled 0
throttled_usec 0
";

    #[test]
    fn cpu_time_is_nanoseconds_on_both_hierarchies() {
        assert_eq!(v1_cpu("5585582426101\n"), Some(5_585_582_426_101));
        assert_eq!(v2_cpu(V2_CPU_STAT), Some(1_534_211_000));
        assert_eq!(v1_cpu(""), None, "a cgroup that vanished mid-read");
        assert_eq!(v2_cpu("user_usec 3\n"), None);
    }

    #[test]
    fn working_set_is_usage_minus_inactive_file_on_both_hierarchies() {
        let usage = (67_244_032u64 + 8_192_000).to_string();
        let v1 = v1_memory(&usage, "268435456\n", V1_MEMORY_STAT).unwrap();
        let v2 = v2_memory(&usage, "268435456\n", V2_MEMORY_STAT).unwrap();
        for m in [&v1, &v2] {
            assert_eq!(m.usage_bytes, 75_436_032);
            assert_eq!(m.working_set_bytes, 75_436_032 - 4_096_000);
            assert_eq!(m.rss_bytes, 67_244_032);
            assert_eq!((m.page_faults, m.major_page_faults), (17_012, 3));
            assert_eq!(m.limit_bytes, Some(268_435_456));
            assert_eq!(m.available_bytes(), Some(268_435_456 - 71_340_032));
        }
        // Inactive file above usage (a racing read) clamps at 0.
        let tiny = v2_memory("100\n", "max\n", "inactive_file 4096\n").unwrap();
        assert_eq!(tiny.working_set_bytes, 0);
        assert_eq!(tiny.available_bytes(), None);
        assert_eq!(v1_memory("", "1", ""), None);
    }

    #[test]
    fn unlimited_limits_are_none() {
        assert_eq!(parse_limit("9223372036854771712\n"), None, "v1 unlimited");
        assert_eq!(parse_limit("max\n"), None, "v2 unlimited");
        assert_eq!(parse_limit("1048576\n"), Some(1_048_576));
        assert_eq!(parse_limit("garbage"), None);
    }

    #[test]
    fn swap_in_use_on_v1_is_memsw_minus_memory() {
        assert_eq!(v1_swap("3000\n", "1000\n"), Some(2000));
        assert_eq!(v1_swap("1000\n", "3000\n"), Some(0), "a racing read");
        assert_eq!(v1_swap("", "1"), None);
    }

    #[test]
    fn pressure_files_parse_with_and_without_full() {
        let cpu = "some avg10=0.05 avg60=3.32 avg300=5.75 total=621740285\n\
                   full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n";
        let p = parse_pressure(cpu).unwrap();
        assert_eq!(
            p.some,
            PressureLine {
                avg10: 5,
                avg60: 332,
                avg300: 575,
                total_us: 621_740_285
            }
        );
        assert_eq!(p.full, Some(PressureLine::default()));
        let some_only = parse_pressure("some avg10=12.5 avg60=0 avg300=100.00 total=9\n").unwrap();
        assert_eq!((some_only.some.avg10, some_only.some.avg60), (1250, 0));
        assert_eq!(some_only.some.avg300, 10000);
        assert_eq!(some_only.full, None);
        assert_eq!(parse_pressure(""), None);
        assert_eq!(parse_pressure("some avg10=x total=1\n"), None);
    }

    #[test]
    fn keyed_files_skip_lines_that_are_not_numbers() {
        let k = parse_keyed("a 1\nb x\n\nc 3 extra\n");
        assert_eq!(k.get("a"), Some(&1));
        assert_eq!(k.get("b"), None);
        assert_eq!(k.get("c"), Some(&3));
    }

    #[test]
    fn a_layout_reads_each_controller_from_its_hierarchy() {
        let root = std::env::temp_dir().join(format!("berth-stats-{}", std::process::id()));
        let v1_memory_dir = root.join("memory/pod/c1");
        let v1_cpu_dir = root.join("cpuacct/pod/c1");
        let v2 = root.join("unified/pod/c1");
        for d in [&v1_memory_dir, &v1_cpu_dir, &v2] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(v1_cpu_dir.join("cpuacct.usage"), "42\n").unwrap();
        std::fs::write(v1_memory_dir.join("memory.usage_in_bytes"), "5000\n").unwrap();
        std::fs::write(
            v1_memory_dir.join("memory.limit_in_bytes"),
            "9223372036854771712\n",
        )
        .unwrap();
        std::fs::write(
            v1_memory_dir.join("memory.stat"),
            "total_inactive_file 1000\n",
        )
        .unwrap();
        std::fs::write(v1_memory_dir.join("memory.memsw.usage_in_bytes"), "7000\n").unwrap();
        std::fs::write(v2.join("pids.current"), "3\n").unwrap();
        std::fs::write(
            v2.join("cpu.pressure"),
            "some avg10=1.00 avg60=0 avg300=0 total=5\n",
        )
        .unwrap();
        let layout = Layout {
            v1: [
                ("memory".to_string(), v1_memory_dir.clone()),
                ("cpu".to_string(), v1_cpu_dir.clone()),
                ("cpuacct".to_string(), v1_cpu_dir.clone()),
            ]
            .into(),
            v2_dir: Some(v2.clone()),
            v2_controllers: vec!["pids".to_string()],
            swap: true,
        };
        let stats = read_in(&layout);
        std::fs::remove_dir_all(&root).unwrap();
        assert_eq!(stats.cpu_usage_ns, Some(42));
        let memory = stats.memory.unwrap();
        assert_eq!((memory.usage_bytes, memory.working_set_bytes), (5000, 4000));
        assert_eq!(memory.limit_bytes, None);
        assert_eq!(stats.swap_usage_bytes, Some(2000));
        assert_eq!(stats.pids, Some(3));
        assert_eq!(stats.cpu_pressure.map(|p| p.some.avg10), Some(100));
        assert_eq!(stats.memory_pressure, None);
    }
}
