//! UpdateContainerResources, the cgroup half: the writes that put new limits into a container's
//! live cgroup and their order (pure, tested below), and the writes themselves. The order follows
//! `runc update` (libcontainer/cgroups/fs and fs2).

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use oci_spec::runtime::LinuxResources;

#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The request cannot be applied to this cgroup (a missing controller, an inconsistent value).
    #[error("{0}")]
    Invalid(String),
    /// The kernel refused a write; the message names the file and the value.
    #[error("{0}")]
    Refused(String),
}

/// Where a container's cgroup is, controller by controller.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    /// v1: controller (`cpu`, `memory`, …) → the container's directory in that hierarchy.
    pub v1: BTreeMap<String, PathBuf>,
    /// The container's directory in the v2 hierarchy, if the host mounts one.
    pub v2_dir: Option<PathBuf>,
    /// The controllers enabled in that directory (its `cgroup.controllers`).
    pub v2_controllers: Vec<String>,
    /// The container's memory cgroup can limit swap (`memory.memsw.limit_in_bytes` on v1,
    /// `memory.swap.max` on v2).
    pub swap: bool,
}

/// Where a controller's files are: a v1 hierarchy's directory or the v2 one.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Place<'a> {
    V1(&'a Path),
    V2(&'a Path),
}

impl Layout {
    /// The directory whose files set `controller`: its v1 hierarchy if one carries it (what
    /// libcontainer uses on a hybrid host), else the v2 directory if the controller is enabled.
    pub(crate) fn place(&self, controller: &str) -> Option<Place<'_>> {
        if let Some(dir) = self.v1.get(controller) {
            return Some(Place::V1(dir));
        }
        match &self.v2_dir {
            Some(dir) if self.v2_controllers.iter().any(|c| c == controller) => {
                Some(Place::V2(dir))
            }
            _ => None,
        }
    }

    fn require(&self, controller: &str) -> Result<Place<'_>, UpdateError> {
        self.place(controller).ok_or_else(|| {
            UpdateError::Invalid(format!(
                "no cgroup hierarchy has the {controller} controller for this container"
            ))
        })
    }

    /// This host's layout for the cgroup `cgroup` (absolute, under each hierarchy's root).
    pub fn probe(cgroup: &Path) -> Layout {
        let relative = cgroup.strip_prefix("/").unwrap_or(cgroup);
        let mut layout = Layout::default();
        for h in crate::cgroups::hierarchies() {
            let dir = h.mountpoint.join(relative);
            if h.v2 {
                layout.v2_controllers = std::fs::read_to_string(dir.join("cgroup.controllers"))
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                layout.v2_dir = Some(dir);
            } else {
                for c in h.controllers {
                    layout.v1.insert(c, dir.clone());
                }
            }
        }
        layout.swap = match layout.place("memory") {
            Some(Place::V1(dir)) => dir.join("memory.memsw.limit_in_bytes").exists(),
            Some(Place::V2(dir)) => dir.join("memory.swap.max").exists(),
            None => false,
        };
        layout
    }
}

/// One cgroup file write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub file: PathBuf,
    pub value: String,
    /// EINVAL here is not final: the plan writes the same file again after the write that makes
    /// the value acceptable (runc: a shorter `cpu.cfs_period_us` can exceed the parent's quota
    /// until `cpu.cfs_quota_us` is lowered).
    pub retried_later: bool,
    /// Read back and compared: v1 clamps `cpu.shares` to 2..=262144 without an error.
    pub read_back: bool,
}

fn write(dir: &Path, file: &str, value: impl ToString) -> Write {
    Write {
        file: dir.join(file),
        value: value.to_string(),
        retried_later: false,
        read_back: false,
    }
}

/// v1 `cpu.shares` → v2 `cpu.weight`: the curve runc (since 1.3.2), crun, libcontainer (which
/// sets the weight a container is created with, and its systemd scope's CPUWeight) and kubelet's
/// cgroup library use. With l = log2(shares), weight = ⌈10^((l² + 125·l) / 612 − 7/34)⌉, which
/// keeps the defaults aligned (1024 → 100) and the ends (2 → 1, 262144 → 10000); the older
/// straight line put 1024 at 39.
fn cpu_weight(shares: u64) -> u64 {
    match shares {
        0..=2 => 1,
        262_144.. => 10_000,
        _ => {
            let l = (shares as f64).log2();
            let weight = 10f64.powf((l * l + 125.0 * l) / 612.0 - 7.0 / 34.0).ceil() as u64;
            weight.clamp(1, 10_000)
        }
    }
}

/// The writes that set `r` (an OCI translation of the merged resources) in the container's
/// cgroup, in order: cpuset, memory, cpu, hugetlb, then unified keys, which override the rest
/// on v2. `current_memory_limit` is the v1 `memory.limit_in_bytes` now: the kernel keeps
/// memory ≤ memory+swap at every step, so it decides whether the swap limit goes first.
pub fn plan(
    r: &LinuxResources,
    layout: &Layout,
    current_memory_limit: Option<i64>,
) -> Result<Vec<Write>, UpdateError> {
    let mut out = Vec::new();
    if let Some(cpu) = r.cpu() {
        let cpuset = [("cpuset.cpus", cpu.cpus()), ("cpuset.mems", cpu.mems())];
        for (file, value) in cpuset {
            if let Some(value) = value {
                let (Place::V1(dir) | Place::V2(dir)) = layout.require("cpuset")?;
                out.push(write(dir, file, value));
            }
        }
    }
    if let Some(memory) = r.memory() {
        let limit = memory.limit();
        let swap = memory.swap().filter(|_| layout.swap);
        if limit.is_some() || swap.is_some() {
            match layout.require("memory")? {
                Place::V1(dir) => {
                    let limit = limit.map(|l| write(dir, "memory.limit_in_bytes", l));
                    let swap = swap.map(|s| (s, write(dir, "memory.memsw.limit_in_bytes", s)));
                    match (limit, swap) {
                        (Some(l), Some((s, sw))) => {
                            // runc's setMemoryAndSwap: raising memory+swap above the current
                            // memory limit first, else lowering memory first.
                            if s == -1 || current_memory_limit.is_some_and(|c| c < s) {
                                out.extend([sw, l]);
                            } else {
                                out.extend([l, sw]);
                            }
                        }
                        (Some(l), None) => out.push(l),
                        (None, Some((_, sw))) => out.push(sw),
                        (None, None) => {}
                    }
                }
                Place::V2(dir) => {
                    // v2 limits swap alone: memory.swap.max = (memory+swap) - memory.
                    if let Some(s) = swap {
                        let value = match (s, limit) {
                            (-1, _) => "max".to_string(),
                            (_, None) => {
                                return Err(UpdateError::Invalid(format!(
                                    "memory+swap limit {s} needs a memory limit on cgroup v2"
                                )))
                            }
                            (s, Some(l)) if s < l => {
                                return Err(UpdateError::Invalid(format!(
                                    "memory+swap limit {s} is below the memory limit {l}"
                                )))
                            }
                            (s, Some(l)) => (s - l).to_string(),
                        };
                        out.push(write(dir, "memory.swap.max", value));
                    }
                    if let Some(l) = limit {
                        out.push(write(dir, "memory.max", l));
                    }
                }
            }
        }
    }
    if let Some(cpu) = r.cpu() {
        if cpu.shares().is_some() || cpu.period().is_some() || cpu.quota().is_some() {
            match layout.require("cpu")? {
                Place::V1(dir) => {
                    if let Some(shares) = cpu.shares() {
                        out.push(Write {
                            read_back: true,
                            ..write(dir, "cpu.shares", shares)
                        });
                    }
                    let period = cpu.period().map(|p| write(dir, "cpu.cfs_period_us", p));
                    match (period, cpu.quota()) {
                        (Some(p), Some(q)) => out.extend([
                            Write {
                                retried_later: true,
                                ..p.clone()
                            },
                            write(dir, "cpu.cfs_quota_us", q),
                            p,
                        ]),
                        (Some(p), None) => out.push(p),
                        (None, Some(q)) => out.push(write(dir, "cpu.cfs_quota_us", q)),
                        (None, None) => {}
                    }
                }
                Place::V2(dir) => {
                    if let Some(shares) = cpu.shares() {
                        out.push(write(dir, "cpu.weight", cpu_weight(shares)));
                    }
                    if cpu.period().is_some() || cpu.quota().is_some() {
                        let mut value = match cpu.quota() {
                            Some(q) if q > 0 => q.to_string(),
                            _ => "max".to_string(),
                        };
                        if let Some(p) = cpu.period() {
                            value = format!("{value} {p}");
                        }
                        out.push(write(dir, "cpu.max", value));
                    }
                }
            }
        }
    }
    // Dropped like at create when the host has no hugetlb controller (containerd's
    // tolerate_missing_hugetlb_controller); `spec::resources` already leaves them out then.
    for h in r.hugepage_limits().iter().flatten() {
        let size = h.page_size();
        if size.is_empty() || size.contains('/') {
            return Err(UpdateError::Invalid(format!("hugepage size {size:?}")));
        }
        match layout.place("hugetlb") {
            Some(Place::V1(dir)) => out.push(write(
                dir,
                &format!("hugetlb.{size}.limit_in_bytes"),
                h.limit(),
            )),
            Some(Place::V2(dir)) => out.push(write(dir, &format!("hugetlb.{size}.max"), h.limit())),
            None => {}
        }
    }
    let unified: BTreeMap<_, _> = r.unified().iter().flatten().collect();
    for (key, value) in unified {
        // A key names a file in the container's directory, nothing beside or above it.
        if key.is_empty() || key.contains('/') || key.starts_with('.') {
            return Err(UpdateError::Invalid(format!("unified key {key:?}")));
        }
        let controller = key.split('.').next().unwrap_or_default();
        let dir = match &layout.v2_dir {
            Some(dir)
                if controller == "cgroup"
                    || layout.v2_controllers.iter().any(|c| c == controller) =>
            {
                dir
            }
            _ => {
                return Err(UpdateError::Invalid(format!(
                    "unified key {key}: the container's cgroup v2 directory has no {controller} \
                     controller (unified keys need cgroup v2)"
                )))
            }
        };
        out.push(write(dir, key, value));
    }
    Ok(out)
}

/// Carries out `writes` in order. The first refusal stops it: what was written stays (as with
/// runc), the error names the file and the value.
pub fn apply(writes: &[Write]) -> Result<(), UpdateError> {
    for w in writes {
        below_usage(w).map_err(UpdateError::Refused)?;
        // No O_CREAT: a missing file is an error, not a new file; one write() per value, as
        // cgroupfs wants.
        let result = std::fs::OpenOptions::new()
            .write(true)
            .open(&w.file)
            .and_then(|mut f| f.write_all(w.value.as_bytes()));
        match result {
            Ok(()) => {}
            Err(e) if w.retried_later && e.raw_os_error() == Some(libc::EINVAL) => continue,
            Err(e) => return Err(UpdateError::Refused(refusal(w, &e))),
        }
        if w.read_back {
            let got = std::fs::read_to_string(&w.file).unwrap_or_default();
            if got.trim() != w.value {
                return Err(UpdateError::Refused(format!(
                    "wrote {} to {} but the kernel set {}",
                    w.value,
                    w.file.display(),
                    got.trim()
                )));
            }
        }
    }
    Ok(())
}

/// v1 refuses a memory limit below what the container uses and cannot reclaim (EBUSY); v2 takes
/// any `memory.max` and OOM-kills the container to meet it. An update must not kill: below the
/// current usage is refused on v2 too, before the file is written.
fn below_usage(w: &Write) -> Result<(), String> {
    if w.file.file_name().and_then(|n| n.to_str()) != Some("memory.max") {
        return Ok(());
    }
    let (Ok(limit), Some(dir)) = (w.value.parse::<u64>(), w.file.parent()) else {
        return Ok(());
    };
    let used = std::fs::read_to_string(dir.join("memory.current"))
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    match used {
        Some(used) if used > limit => Err(format!(
            "write {limit} to {}: below what the container uses ({used} bytes); cgroup v2 \
             would OOM-kill it",
            w.file.display()
        )),
        _ => Ok(()),
    }
}

fn refusal(w: &Write, e: &std::io::Error) -> String {
    let mut message = format!("write {} to {}: {e}", w.value, w.file.display());
    // A memory limit below what the container uses and cannot reclaim is refused with EBUSY.
    let name = w.file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if e.raw_os_error() == Some(libc::EBUSY)
        && matches!(name, "memory.limit_in_bytes" | "memory.max")
    {
        let usage = if name == "memory.max" {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        if let Some(dir) = w.file.parent() {
            if let Ok(used) = std::fs::read_to_string(dir.join(usage)) {
                message.push_str(&format!(" (the container uses {} bytes)", used.trim()));
            }
        }
    }
    message
}

/// Puts `r` into the live cgroup `cgroup`.
pub fn update_cgroup(cgroup: &Path, r: &LinuxResources) -> Result<(), UpdateError> {
    let layout = Layout::probe(cgroup);
    let current_memory_limit = match layout.place("memory") {
        Some(Place::V1(dir)) => std::fs::read_to_string(dir.join("memory.limit_in_bytes"))
            .ok()
            .and_then(|s| s.trim().parse().ok()),
        _ => None,
    };
    apply(&plan(r, &layout, current_memory_limit)?)
}

/// The container's init process gets the new `oom_score_adj`. Processes it has already started
/// keep theirs (the kernel copies the value at fork).
pub fn set_oom_score_adj(pid: i32, value: i32) -> Result<(), String> {
    let file = format!("/proc/{pid}/oom_score_adj");
    std::fs::write(&file, value.to_string()).map_err(|e| format!("write {value} to {file}: {e}"))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use oci_spec::runtime::{LinuxCpu, LinuxHugepageLimit, LinuxMemory};

    use super::*;

    fn v1() -> Layout {
        let dir = |c: &str| PathBuf::from(format!("/cg/{c}/pod/c1"));
        Layout {
            v1: ["cpu", "cpuset", "memory", "hugetlb"]
                .into_iter()
                .map(|c| (c.to_string(), dir(c)))
                .collect(),
            v2_dir: Some(PathBuf::from("/cg/unified/pod/c1")),
            v2_controllers: Vec::new(),
            swap: true,
        }
    }

    fn v2() -> Layout {
        Layout {
            v1: BTreeMap::new(),
            v2_dir: Some(PathBuf::from("/cg/pod/c1")),
            v2_controllers: ["cpu", "cpuset", "memory", "hugetlb"]
                .map(String::from)
                .to_vec(),
            swap: true,
        }
    }

    /// (file, value) pairs, paths shortened to what follows `/cg/`.
    fn files(writes: &[Write]) -> Vec<(String, String)> {
        writes
            .iter()
            .map(|w| {
                let file = w.file.strip_prefix("/cg").unwrap_or(&w.file);
                (format!("/{}", file.display()), w.value.clone())
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(f, v)| (f.to_string(), v.to_string()))
            .collect()
    }

    fn memory(limit: Option<i64>, swap: Option<i64>) -> LinuxResources {
        let mut m = LinuxMemory::default();
        m.set_limit(limit);
        m.set_swap(swap);
        let mut r = LinuxResources::default();
        r.set_memory(Some(m));
        r
    }

    fn cpu(shares: Option<u64>, quota: Option<i64>, period: Option<u64>) -> LinuxResources {
        let mut c = LinuxCpu::default();
        c.set_shares(shares);
        c.set_quota(quota);
        c.set_period(period);
        let mut r = LinuxResources::default();
        r.set_cpu(Some(c));
        r
    }

    #[test]
    fn v1_cpu_writes_shares_then_period_around_quota() {
        let writes = plan(&cpu(Some(512), Some(50_000), Some(100_000)), &v1(), None).unwrap();
        assert_eq!(
            files(&writes),
            pairs(&[
                ("/cpu/pod/c1/cpu.shares", "512"),
                ("/cpu/pod/c1/cpu.cfs_period_us", "100000"),
                ("/cpu/pod/c1/cpu.cfs_quota_us", "50000"),
                ("/cpu/pod/c1/cpu.cfs_period_us", "100000"),
            ])
        );
        assert!(writes[0].read_back);
        // Only the first period write may fail with EINVAL: the second one is final.
        assert_eq!(
            writes.iter().map(|w| w.retried_later).collect::<Vec<_>>(),
            [false, true, false, false]
        );
        // -1 (no quota) is written as it is; an unset field is not written.
        let writes = plan(&cpu(None, Some(-1), None), &v1(), None).unwrap();
        assert_eq!(
            files(&writes),
            pairs(&[("/cpu/pod/c1/cpu.cfs_quota_us", "-1")])
        );
        assert!(plan(&cpu(None, None, None), &v1(), None)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn v1_memory_and_swap_order_keeps_memory_below_memsw() {
        const MI: i64 = 1 << 20;
        // (new limit, new memory+swap, current memory limit, memsw file exists, expected files)
        type Case = (
            Option<i64>,
            Option<i64>,
            Option<i64>,
            bool,
            &'static [&'static str],
        );
        let cases: [Case; 7] = [
            // Lowering: memory first, then memsw.
            (
                Some(64 * MI),
                Some(64 * MI),
                Some(128 * MI),
                true,
                &["limit", "memsw"],
            ),
            // Raising above the current limit: memsw first.
            (
                Some(256 * MI),
                Some(256 * MI),
                Some(128 * MI),
                true,
                &["memsw", "limit"],
            ),
            // Unlimited swap: memsw first.
            (
                Some(64 * MI),
                Some(-1),
                Some(128 * MI),
                true,
                &["memsw", "limit"],
            ),
            // From "unlimited" (a huge current value) down: memory first.
            (
                Some(64 * MI),
                Some(64 * MI),
                Some(i64::MAX),
                true,
                &["limit", "memsw"],
            ),
            // No memsw file: swap is left out.
            (
                Some(64 * MI),
                Some(64 * MI),
                Some(128 * MI),
                false,
                &["limit"],
            ),
            (Some(64 * MI), None, Some(128 * MI), true, &["limit"]),
            (None, Some(64 * MI), None, true, &["memsw"]),
        ];
        for (limit, swap, current, has_swap, want) in cases {
            let layout = Layout {
                swap: has_swap,
                ..v1()
            };
            let got = plan(&memory(limit, swap), &layout, current).unwrap();
            let got: Vec<&str> = got
                .iter()
                .map(|w| match w.file.file_name().unwrap().to_str().unwrap() {
                    "memory.limit_in_bytes" => "limit",
                    "memory.memsw.limit_in_bytes" => "memsw",
                    other => panic!("unexpected {other}"),
                })
                .collect();
            assert_eq!(got, want, "{limit:?} {swap:?} {current:?} {has_swap}");
        }
        let got = plan(&memory(Some(64 * MI), None), &v1(), None).unwrap();
        assert_eq!(
            files(&got),
            pairs(&[("/memory/pod/c1/memory.limit_in_bytes", "67108864")])
        );
    }

    #[test]
    fn v2_writes_weight_max_and_swap_beyond_memory() {
        let got = plan(&cpu(Some(1024), Some(50_000), Some(100_000)), &v2(), None).unwrap();
        assert_eq!(
            files(&got),
            pairs(&[
                ("/pod/c1/cpu.weight", "100"),
                ("/pod/c1/cpu.max", "50000 100000"),
            ])
        );
        let got = plan(&cpu(None, Some(-1), Some(100_000)), &v2(), None).unwrap();
        assert_eq!(files(&got), pairs(&[("/pod/c1/cpu.max", "max 100000")]));
        assert_eq!(
            (cpu_weight(2), cpu_weight(262_144), cpu_weight(1)),
            (1, 10_000, 1)
        );
        // Points of the curve (512 → 59 is what libcontainer itself wrote on the node lane).
        assert_eq!(
            [2, 3, 512, 1024, 2048, 100_000, 262_143].map(cpu_weight),
            [1, 2, 59, 100, 174, 4_340, 10_000]
        );

        let got = plan(&memory(Some(64 << 20), Some(96 << 20)), &v2(), None).unwrap();
        assert_eq!(
            files(&got),
            pairs(&[
                ("/pod/c1/memory.swap.max", "33554432"),
                ("/pod/c1/memory.max", "67108864"),
            ])
        );
        let got = plan(&memory(Some(64 << 20), Some(-1)), &v2(), None).unwrap();
        assert_eq!(got[0].value, "max");
        let err = plan(&memory(Some(64 << 20), Some(32 << 20)), &v2(), None).unwrap_err();
        assert!(err.to_string().contains("below the memory limit"), "{err}");
    }

    #[test]
    fn cpusets_and_hugepages_go_to_their_controllers() {
        let mut c = LinuxCpu::default();
        c.set_cpus(Some("0-1".into()));
        c.set_mems(Some("0".into()));
        let mut h = LinuxHugepageLimit::default();
        h.set_page_size("2MB".into());
        h.set_limit(4 << 20);
        let mut r = LinuxResources::default();
        r.set_cpu(Some(c));
        r.set_hugepage_limits(Some(vec![h]));
        assert_eq!(
            files(&plan(&r, &v1(), None).unwrap()),
            pairs(&[
                ("/cpuset/pod/c1/cpuset.cpus", "0-1"),
                ("/cpuset/pod/c1/cpuset.mems", "0"),
                ("/hugetlb/pod/c1/hugetlb.2MB.limit_in_bytes", "4194304"),
            ])
        );
        assert_eq!(
            files(&plan(&r, &v2(), None).unwrap()),
            pairs(&[
                ("/pod/c1/cpuset.cpus", "0-1"),
                ("/pod/c1/cpuset.mems", "0"),
                ("/pod/c1/hugetlb.2MB.max", "4194304"),
            ])
        );
        // No hugetlb controller: dropped, as at create.
        let mut layout = v1();
        layout.v1.remove("hugetlb");
        assert_eq!(plan(&r, &layout, None).unwrap().len(), 2);
    }

    #[test]
    fn a_limit_without_its_controller_is_refused() {
        let mut layout = v1();
        layout.v1.remove("cpu");
        let err = plan(&cpu(Some(512), None, None), &layout, None).unwrap_err();
        assert!(err.to_string().contains("cpu controller"), "{err}");
    }

    #[test]
    fn unified_keys_need_their_v2_controller_and_stay_in_the_directory() {
        let unified = |k: &str| {
            let mut r = LinuxResources::default();
            r.set_unified(Some(HashMap::from([(k.to_string(), "1000".to_string())])));
            r
        };
        assert_eq!(
            files(&plan(&unified("memory.high"), &v2(), None).unwrap()),
            pairs(&[("/pod/c1/memory.high", "1000")])
        );
        // Hybrid host whose v2 hierarchy has no controllers.
        let err = plan(&unified("memory.high"), &v1(), None).unwrap_err();
        assert!(err.to_string().contains("cgroup v2"), "{err}");
        for bad in ["../../etc/x", "", ".hidden", "memory/../x"] {
            assert!(plan(&unified(bad), &v2(), None).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_refused_write_names_the_file_and_the_value() {
        let dir = std::env::temp_dir().join(format!("berth-update-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let writes = [write(&dir, "missing.file", 42)];
        let err = apply(&writes).unwrap_err().to_string();
        assert!(
            err.contains("write 42 to") && err.contains("missing.file"),
            "{err}"
        );
        // Nothing was created in its place.
        assert!(!dir.join("missing.file").exists());
        std::fs::write(dir.join("present"), "").unwrap();
        apply(&[write(&dir, "present", 7)]).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("present")).unwrap(), "7");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
