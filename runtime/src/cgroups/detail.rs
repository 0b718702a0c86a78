//! The fuller reading of a cgroup behind ListPodSandboxMetrics, which reports cadvisor's
//! families: CPU time split into user and system and CFS throttling; memory cache, mapped
//! files, kernel memory, peak, limit hits and OOM kills; processes, threads and their limit,
//! open descriptors and sockets. Pure parsers over the files' contents, table-tested below with
//! v1 and v2 fixtures, and [`read_detail`], which finds each controller's files through a
//! [`Layout`] as `stats::read_in` does. A value a file did not give is `None`.

use std::path::Path;

use super::stats::{parse_keyed, parse_limit, parse_number};
use super::update::{Layout, Place};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CgroupDetail {
    pub cpu: CpuDetail,
    pub memory: MemoryDetail,
    pub tasks: TaskCounts,
}

/// CPU time by mode and CFS bandwidth enforcement.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuDetail {
    pub user_ns: Option<u64>,
    pub system_ns: Option<u64>,
    /// CFS periods elapsed, periods in which the cgroup was throttled, and for how long.
    pub periods: Option<u64>,
    pub throttled_periods: Option<u64>,
    pub throttled_ns: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryDetail {
    /// Page cache (v1 `total_cache`, v2 `file`).
    pub cache_bytes: Option<u64>,
    pub mapped_file_bytes: Option<u64>,
    pub kernel_bytes: Option<u64>,
    /// The highest usage seen (v1 `memory.max_usage_in_bytes`, v2 `memory.peak`).
    pub max_usage_bytes: Option<u64>,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `memory.events` `max`).
    pub failcnt: Option<u64>,
    /// Processes the OOM killer took in this cgroup.
    pub oom_kills: Option<u64>,
}

/// What runs in the cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskCounts {
    pub processes: Option<u64>,
    pub threads: Option<u64>,
    /// `pids.max`; `Some(0)` for no limit, as cadvisor reports it.
    pub threads_max: Option<u64>,
    pub file_descriptors: Option<u64>,
    pub sockets: Option<u64>,
}

/// v1: `cpuacct.stat` (`user`/`system` in clock ticks, `ticks_per_second` of them a second)
/// and the cpu controller's `cpu.stat` (`throttled_time` in ns).
pub fn v1_cpu_detail(cpuacct_stat: &str, cpu_stat: &str, ticks_per_second: u64) -> CpuDetail {
    let acct = parse_keyed(cpuacct_stat);
    let cfs = parse_keyed(cpu_stat);
    let ticks = |k: &str| {
        acct.get(k)
            .map(|t| t.saturating_mul(1_000_000_000) / ticks_per_second.max(1))
    };
    CpuDetail {
        user_ns: ticks("user"),
        system_ns: ticks("system"),
        periods: cfs.get("nr_periods").copied(),
        throttled_periods: cfs.get("nr_throttled").copied(),
        throttled_ns: cfs.get("throttled_time").copied(),
    }
}

/// v2: `cpu.stat`, every time in µs.
pub fn v2_cpu_detail(cpu_stat: &str) -> CpuDetail {
    let stat = parse_keyed(cpu_stat);
    let ns = |k: &str| stat.get(k).map(|us| us.saturating_mul(1000));
    CpuDetail {
        user_ns: ns("user_usec"),
        system_ns: ns("system_usec"),
        periods: stat.get("nr_periods").copied(),
        throttled_periods: stat.get("nr_throttled").copied(),
        throttled_ns: ns("throttled_usec"),
    }
}

/// The files of a v1 memory cgroup that [`v1_memory_detail`] reads.
#[derive(Debug, Default)]
pub struct V1MemoryFiles<'a> {
    pub stat: &'a str,
    pub max_usage: &'a str,
    pub failcnt: &'a str,
    pub kmem_usage: &'a str,
    pub oom_control: &'a str,
}

pub fn v1_memory_detail(files: &V1MemoryFiles<'_>) -> MemoryDetail {
    let stat = parse_keyed(files.stat);
    MemoryDetail {
        cache_bytes: stat.get("total_cache").copied(),
        mapped_file_bytes: stat.get("total_mapped_file").copied(),
        kernel_bytes: parse_number(files.kmem_usage),
        max_usage_bytes: parse_number(files.max_usage),
        failcnt: parse_number(files.failcnt),
        oom_kills: parse_keyed(files.oom_control).get("oom_kill").copied(),
    }
}

/// v2: `memory.stat`, `memory.peak` and `memory.events`. Kernel memory is `kernel` where the
/// kernel reports it (5.18 on), else the sum of its parts.
pub fn v2_memory_detail(stat: &str, peak: &str, events: &str) -> MemoryDetail {
    let stat = parse_keyed(stat);
    let events = parse_keyed(events);
    let kernel = stat.get("kernel").copied().or_else(|| {
        let parts = ["kernel_stack", "pagetables", "percpu", "sock", "slab"];
        let found: Vec<u64> = parts.iter().filter_map(|k| stat.get(k).copied()).collect();
        (!found.is_empty()).then(|| found.iter().sum())
    });
    MemoryDetail {
        cache_bytes: stat.get("file").copied(),
        mapped_file_bytes: stat.get("file_mapped").copied(),
        kernel_bytes: kernel,
        max_usage_bytes: parse_number(peak),
        failcnt: events.get("max").copied(),
        oom_kills: events.get("oom_kill").copied(),
    }
}

/// `pids.max`: a number, or `max` (reported as 0, "no limit").
pub fn threads_max(pids_max: &str) -> Option<u64> {
    match pids_max.trim() {
        "max" => Some(0),
        _ => parse_limit(pids_max),
    }
}

/// Lines naming a task (`cgroup.procs`, `tasks`, `cgroup.threads`).
pub fn count_tasks(text: &str) -> u64 {
    text.lines().filter(|l| !l.trim().is_empty()).count() as u64
}

/// The open descriptors of these processes, and how many of them are sockets. A process that
/// exits meanwhile counts for nothing.
pub fn descriptors(pids: &[i32]) -> (u64, u64) {
    let (mut fds, mut sockets) = (0, 0);
    for pid in pids {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for entry in entries.flatten() {
            fds += 1;
            let is_socket = std::fs::read_link(entry.path()).is_ok_and(|target| {
                target
                    .as_os_str()
                    .as_encoded_bytes()
                    .starts_with(b"socket:")
            });
            if is_socket {
                sockets += 1;
            }
        }
    }
    (fds, sockets)
}

/// Reads the detail of a cgroup whose layout is `layout`.
pub fn read_detail(layout: &Layout) -> CgroupDetail {
    let file = |dir: &Path, name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let text = |dir: &Path, name: &str| file(dir, name).unwrap_or_default();
    let cpu = match (layout.place("cpuacct"), layout.place("cpu")) {
        (_, Some(Place::V2(dir))) => v2_cpu_detail(&text(dir, "cpu.stat")),
        (acct, cfs) => {
            // SAFETY: sysconf has no preconditions.
            let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            let dir_text = |place: Option<Place<'_>>, name: &str| match place {
                Some(Place::V1(dir) | Place::V2(dir)) => text(dir, name),
                None => String::new(),
            };
            v1_cpu_detail(
                &dir_text(acct, "cpuacct.stat"),
                &dir_text(cfs, "cpu.stat"),
                ticks,
            )
        }
    };
    let memory = match layout.place("memory") {
        Some(Place::V1(dir)) => v1_memory_detail(&V1MemoryFiles {
            stat: &text(dir, "memory.stat"),
            max_usage: &text(dir, "memory.max_usage_in_bytes"),
            failcnt: &text(dir, "memory.failcnt"),
            kmem_usage: &text(dir, "memory.kmem.usage_in_bytes"),
            oom_control: &text(dir, "memory.oom_control"),
        }),
        Some(Place::V2(dir)) => v2_memory_detail(
            &text(dir, "memory.stat"),
            &text(dir, "memory.peak"),
            &text(dir, "memory.events"),
        ),
        None => MemoryDetail::default(),
    };
    // Tasks are listed in every hierarchy; the pids controller's is the one with the limit.
    let tasks_dir = match layout.place("pids").or_else(|| layout.place("memory")) {
        Some(Place::V1(dir)) => Some((dir, "tasks")),
        Some(Place::V2(dir)) => Some((dir, "cgroup.threads")),
        None => None,
    };
    let tasks = match tasks_dir {
        Some((dir, threads_file)) => match file(dir, "cgroup.procs") {
            Some(procs) => {
                let pids = super::parse_procs(&procs);
                let (fds, sockets) = descriptors(&pids);
                TaskCounts {
                    processes: Some(pids.len() as u64),
                    threads: file(dir, threads_file).map(|t| count_tasks(&t)),
                    threads_max: file(dir, "pids.max").and_then(|t| threads_max(&t)),
                    file_descriptors: Some(fds),
                    sockets: Some(sockets),
                }
            }
            None => TaskCounts::default(),
        },
        None => TaskCounts::default(),
    };
    CgroupDetail { cpu, memory, tasks }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_detail_on_v1_converts_ticks_and_keeps_throttled_nanoseconds() {
        let detail = v1_cpu_detail(
            "user 250\nsystem 50\n",
            "nr_periods 40\nnr_throttled 7\nthrottled_time 350000000\nnr_bursts 0\n",
            100,
        );
        assert_eq!(
            detail,
            CpuDetail {
                user_ns: Some(2_500_000_000),
                system_ns: Some(500_000_000),
                periods: Some(40),
                throttled_periods: Some(7),
                throttled_ns: Some(350_000_000),
            }
        );
        assert_eq!(v1_cpu_detail("", "", 100), CpuDetail::default());
    }

    #[test]
    fn cpu_detail_on_v2_is_microseconds_times_1000() {
        let stat = "usage_usec 1200\nuser_usec 1000\nsystem_usec 200\nnr_periods 9\n\
                    nr_throttled 2\nthrottled_usec 30\nnr_bursts 0\nburst_usec 0\n";
        assert_eq!(
            v2_cpu_detail(stat),
            CpuDetail {
                user_ns: Some(1_000_000),
                system_ns: Some(200_000),
                periods: Some(9),
                throttled_periods: Some(2),
                throttled_ns: Some(30_000),
            }
        );
        // Without the cpu controller enabled, cpu.stat has only the usage lines.
        let bare = v2_cpu_detail("usage_usec 5\nuser_usec 3\nsystem_usec 2\n");
        assert_eq!((bare.user_ns, bare.periods), (Some(3000), None));
    }

    #[test]
    fn memory_detail_on_v1_reads_the_hierarchical_totals() {
        let detail = v1_memory_detail(&V1MemoryFiles {
            stat: "cache 1\nmapped_file 2\ntotal_cache 8192000\ntotal_mapped_file 4096\n",
            max_usage: "80000000\n",
            failcnt: "3\n",
            kmem_usage: "1900544\n",
            oom_control: "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n",
        });
        assert_eq!(
            detail,
            MemoryDetail {
                cache_bytes: Some(8_192_000),
                mapped_file_bytes: Some(4096),
                kernel_bytes: Some(1_900_544),
                max_usage_bytes: Some(80_000_000),
                failcnt: Some(3),
                oom_kills: Some(1),
            }
        );
    }

    #[test]
    fn memory_detail_on_v2_takes_kernel_or_sums_its_parts() {
        let events = "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n";
        let detail = v2_memory_detail(
            "anon 100\nfile 300\nkernel 70\nkernel_stack 16\nfile_mapped 40\n",
            "4096\n",
            events,
        );
        assert_eq!(
            detail,
            MemoryDetail {
                cache_bytes: Some(300),
                mapped_file_bytes: Some(40),
                kernel_bytes: Some(70),
                max_usage_bytes: Some(4096),
                failcnt: Some(12),
                oom_kills: Some(1),
            }
        );
        let older = v2_memory_detail("kernel_stack 16\nslab 100\nsock 4\n", "", "");
        assert_eq!(older.kernel_bytes, Some(120));
        assert_eq!((older.max_usage_bytes, older.failcnt), (None, None));
    }

    #[test]
    fn thread_limits_and_task_lists() {
        assert_eq!(threads_max("max\n"), Some(0));
        assert_eq!(threads_max("512\n"), Some(512));
        assert_eq!(threads_max(""), None);
        assert_eq!(count_tasks("1\n22\n\n333\n"), 3);
        assert_eq!(count_tasks(""), 0);
    }

    #[test]
    fn descriptors_counts_our_own_sockets() {
        let me = std::process::id() as i32;
        let _a = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let _b = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let _file = std::fs::File::open("/proc/self/status").unwrap();
        // Other tests run in this process too: at least ours are seen.
        let (fds, sockets) = descriptors(&[me]);
        assert!(sockets >= 2, "{sockets}");
        assert!(fds > sockets, "{fds} {sockets}");
        assert_eq!(descriptors(&[i32::MAX]), (0, 0));
    }
}
