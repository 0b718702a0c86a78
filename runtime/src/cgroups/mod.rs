//! cgroupfs-driver cgroups on v1, v2 and hybrid hosts: find the hierarchies, make a cgroup path
//! in each (remembering what we made, to remove exactly that), move a process in; `update` writes
//! new limits into a live cgroup; `stats` reads usage back, and `detail` the rest of what the
//! CRI metrics report.

pub mod detail;
pub mod stats;
pub mod systemd;
pub mod update;

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    pub mountpoint: PathBuf,
    /// v1 controllers (`cpu`, `memory`, …, or `name=systemd`); empty for the v2 hierarchy.
    pub controllers: Vec<String>,
    pub v2: bool,
}

/// Parses /proc/self/mountinfo text into cgroup hierarchies (bind mounts of a hierarchy's
/// subdirectory are skipped: only roots count).
pub fn parse_mountinfo(text: &str) -> Vec<Hierarchy> {
    let mut out: Vec<Hierarchy> = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        let (root, mountpoint) = (fields.get(3), fields.get(4));
        let (fstype, super_options) = (fields.get(sep + 1), fields.get(sep + 3));
        let (Some(root), Some(mountpoint), Some(fstype)) = (root, mountpoint, fstype) else {
            continue;
        };
        if *root != "/" {
            continue;
        }
        let hierarchy = match *fstype {
            "cgroup2" => Hierarchy {
                mountpoint: PathBuf::from(mountpoint),
                controllers: Vec::new(),
                v2: true,
            },
            "cgroup" => Hierarchy {
                mountpoint: PathBuf::from(mountpoint),
                controllers: super_options
                    .map(|o| {
                        o.split(',')
                            .filter(|c| {
                                !matches!(*c, "rw" | "ro")
                                    && !c.starts_with("release_agent")
                                    && *c != "clone_children"
                                    && *c != "noprefix"
                                    && *c != "xattr"
                            })
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
                v2: false,
            },
            _ => continue,
        };
        if !out.iter().any(|h| h.mountpoint == hierarchy.mountpoint) {
            out.push(hierarchy);
        }
    }
    out
}

/// The hierarchies of this host, read once per process: cgroup filesystems are mounted at boot
/// and stay, while `/proc/self/mountinfo` grows with every pod's mounts and costs more to read
/// than the stats a ListContainerStats takes from each cgroup.
pub fn hierarchies() -> Vec<Hierarchy> {
    static HIERARCHIES: std::sync::OnceLock<Vec<Hierarchy>> = std::sync::OnceLock::new();
    HIERARCHIES
        .get_or_init(|| {
            parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
        })
        .clone()
}

/// The host's cgroup layout: `v2` (one unified hierarchy, as on a systemd node), `v1` (controller
/// hierarchies only) or `hybrid` (v1 controllers beside a cgroup2 mount).
pub fn layout(hierarchies: &[Hierarchy]) -> &'static str {
    let v2 = hierarchies.iter().any(|h| h.v2);
    let v1 = hierarchies.iter().any(|h| !h.v2);
    match (v1, v2) {
        (true, true) => "hybrid",
        (false, true) => "v2",
        _ => "v1",
    }
}

/// A cgroup path as kubelet gives it (`/kubepods/burstable/pod<uid>`), checked: relative
/// components are refused so it cannot name anything outside the hierarchies.
pub fn cgroupfs_path(parent: &str) -> Result<PathBuf, String> {
    let path = Path::new(parent);
    let mut clean = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => clean.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(format!("cgroup parent {parent:?} must not contain \"..\""));
            }
        }
    }
    if clean.as_os_str() == "/" {
        return Err(format!("cgroup parent {parent:?} names the root cgroup"));
    }
    Ok(clean)
}

/// The cgroupfs path of a pod's cgroup parent under `driver`: a checked path for cgroupfs, a
/// slice's directory for systemd.
pub fn parent_path(driver: crate::CgroupDriver, parent: &str) -> Result<PathBuf, String> {
    match driver {
        crate::CgroupDriver::Cgroupfs => cgroupfs_path(parent),
        crate::CgroupDriver::Systemd => systemd::slice_path(parent),
    }
}

/// Each level of `path` in hierarchy `h`, with its parent, from the top down.
fn levels(h: &Hierarchy, path: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut dir = h.mountpoint.clone();
    let mut out = Vec::new();
    for part in path
        .components()
        .filter(|c| matches!(c, Component::Normal(_)))
    {
        let parent = dir.clone();
        dir.push(part);
        out.push((parent, dir.clone()));
    }
    out
}

/// The directories [`ensure`] would make for `path` now: those that do not exist, parents
/// first. Recorded before `ensure` runs, they are what a crash in between leaves to remove.
pub fn missing(path: &Path) -> Vec<PathBuf> {
    hierarchies()
        .iter()
        .flat_map(|h| levels(h, path))
        .map(|(_, dir)| dir)
        .filter(|dir| !dir.exists())
        .collect()
}

/// Makes `path` in every hierarchy. Returns the directories that did not exist before, parents
/// first, so that [`remove_created`] can take back exactly those.
pub fn ensure(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    ensure_in(&hierarchies(), path, |dir| std::fs::create_dir(dir))
}

/// How often one hierarchy's levels are walked when parents keep going under us.
const ENSURE_WALKS: usize = 10;

/// [`ensure`] in `hierarchies`, making each directory with `mkdir`.
fn ensure_in(
    hierarchies: &[Hierarchy],
    path: &Path,
    mut mkdir: impl FnMut(&Path) -> std::io::Result<()>,
) -> std::io::Result<Vec<PathBuf>> {
    let mut created = Vec::new();
    for h in hierarchies {
        let mut walks = 1;
        loop {
            match ensure_levels(h, path, &mut created, &mut mkdir) {
                Ok(()) => break,
                // A parent another pod made, taken back (it was empty then) since we looked:
                // the walk goes again, and what is missing now is ours.
                Err((e, dir))
                    if e.kind() == std::io::ErrorKind::NotFound && walks < ENSURE_WALKS =>
                {
                    tracing::debug!(cgroup = %dir.display(), "its parent went meanwhile: made again");
                    walks += 1;
                }
                Err((e, dir)) => {
                    remove_created(&created);
                    return Err(std::io::Error::other(format!(
                        "create cgroup {}: {e}",
                        dir.display()
                    )));
                }
            }
        }
    }
    Ok(created)
}

/// Makes what is missing of `path` in `h`, adding it to `created`; the error, with the
/// directory it was making, ends the walk.
fn ensure_levels(
    h: &Hierarchy,
    path: &Path,
    created: &mut Vec<PathBuf>,
    mkdir: &mut impl FnMut(&Path) -> std::io::Result<()>,
) -> Result<(), (std::io::Error, PathBuf)> {
    for (parent, dir) in levels(h, path) {
        if !dir.exists() {
            match mkdir(&dir) {
                Ok(()) => {
                    created.push(dir.clone());
                    if h.v2 {
                        enable_controllers(&parent);
                    }
                }
                // Another pod (or agent) sharing the parent made it just now: it is theirs
                // to take back, and there for us to use.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err((e, dir)),
            }
        }
        // A new v1 cpuset cgroup starts with no CPUs or memory nodes, and so may one that
        // another caller has just made and not filled yet: no task could join it or any
        // child of it. Each level on the way, parents first, gets its parent's if empty.
        if h.controllers.iter().any(|c| c == "cpuset") {
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
                if !own.trim().is_empty() {
                    continue;
                }
                if let Ok(value) = std::fs::read_to_string(parent.join(file)) {
                    let _ = std::fs::write(dir.join(file), value.trim());
                }
            }
        }
    }
    Ok(())
}

/// v2: lets the children of `dir` use every controller `dir` has, as kubelet and libcontainer
/// do for the cgroups they make, so a pod cgroup berth made reports and limits memory, CPU and
/// pids like one kubelet made. Best effort, one controller at a time: a controller the parent
/// cannot hand down (its own parent did not enable it, or `dir` holds processes) is left out.
fn enable_controllers(dir: &Path) {
    let available = std::fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    for c in available.split_whitespace() {
        if !enabled.split_whitespace().any(|e| e == c) {
            let _ = std::fs::write(dir.join("cgroup.subtree_control"), format!("+{c}"));
        }
    }
}

/// Moves the calling process into `path` in every hierarchy. A single-threaded caller moves on
/// v1 by writing `0` to `tasks`, which moves only the calling thread and so skips the kernel's
/// global threadgroup lock: `cgroup.procs` takes it, and it waits for an RCU grace period
/// (6-18 ms on a 2-core VM) unless another migration ran just before. v2 (and a caller with
/// threads) writes `0` to `cgroup.procs`.
pub fn join_self(path: &Path) -> Result<(), String> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    let single_threaded = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.split_whitespace().eq(["Threads:", "1"]))
    });
    for h in hierarchies() {
        let file = if h.v2 || !single_threaded {
            "cgroup.procs"
        } else {
            "tasks"
        };
        let target = h.mountpoint.join(relative).join(file);
        std::fs::write(&target, "0")
            .map_err(|e| format!("join cgroup {}: {e}", target.display()))?;
    }
    Ok(())
}

/// The lines of a `/proc/<pid>/cgroup` text as (controllers, path); the v2 line's controllers
/// are empty.
pub fn proc_cgroup_lines(text: &str) -> Vec<(&str, &str)> {
    text.lines()
        .filter_map(|l| {
            let mut fields = l.splitn(3, ':');
            let (_id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
            Some((controllers, path))
        })
        .collect()
}

/// The mounted hierarchy a `/proc/<pid>/cgroup` line's controllers name: the v2 one for none,
/// else the v1 one with exactly those controllers.
pub fn hierarchy_named<'a>(
    controllers: &str,
    hierarchies: &'a [Hierarchy],
) -> Option<&'a Hierarchy> {
    let v2 = controllers.is_empty();
    let names: Vec<&str> = controllers.split(',').collect();
    hierarchies.iter().find(|h| {
        h.v2 == v2
            && (v2
                || (h.controllers.len() == names.len()
                    && names.iter().all(|n| h.controllers.iter().any(|c| c == n))))
    })
}

/// The `cgroup.procs` file of the cgroup a process is in, from its `/proc/<pid>/cgroup` text:
/// on the v2 hierarchy where one is mounted, else on the first v1 hierarchy listed. `None` when
/// no line names a mounted hierarchy.
pub fn procs_file_of(proc_cgroup: &str, hierarchies: &[Hierarchy]) -> Option<PathBuf> {
    let lines = proc_cgroup_lines(proc_cgroup);
    let v2 = lines.iter().filter(|(c, _)| c.is_empty());
    let v1 = lines.iter().filter(|(c, _)| !c.is_empty());
    v2.chain(v1).find_map(|(controllers, path)| {
        let h = hierarchy_named(controllers, hierarchies)?;
        Some(
            h.mountpoint
                .join(path.trim_start_matches('/'))
                .join("cgroup.procs"),
        )
    })
}

/// Takes, and gives back, the kernel's global threadgroup lock that every `cgroup.procs` write on
/// this host takes, by moving this process into the cgroup it is already in (which changes
/// nothing). Blocks the calling thread for what taking it first waits for: an RCU grace period,
/// unless a writer had it within the last one (6-18 ms on a 2-core VM, most of a container's
/// create). So called from a thread of its own just before a create, it starts that period
/// beside the create's other work, and the executor's move of the container's init finds it
/// passed or under way.
pub fn take_threadgroup_lock_in_place() -> Result<(), String> {
    static OWN: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    let own = OWN.get_or_init(|| {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        procs_file_of(&text, &hierarchies())
    });
    let own = own
        .as_ref()
        .ok_or("this process's cgroup is on no mounted hierarchy")?;
    std::fs::write(own, "0").map_err(|e| format!("write {}: {e}", own.display()))
}

/// The pids a `cgroup.procs` file lists.
pub fn parse_procs(text: &str) -> Vec<i32> {
    text.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// The processes in the cgroup `path` (cgroupfs path), in any hierarchy, each once.
pub fn procs(path: &Path) -> Vec<i32> {
    procs_in(&dirs_of(path))
}

/// The processes listed in the cgroup directories `dirs`, each once.
fn procs_in(dirs: &[PathBuf]) -> Vec<i32> {
    let mut pids: Vec<i32> = dirs
        .iter()
        .flat_map(|d| {
            parse_procs(&std::fs::read_to_string(d.join("cgroup.procs")).unwrap_or_default())
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// The directories of the cgroup `path` that exist, one per hierarchy.
fn dirs_of(path: &Path) -> Vec<PathBuf> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    hierarchies()
        .into_iter()
        .map(|h| h.mountpoint.join(relative))
        .filter(|d| d.join("cgroup.procs").exists())
        .collect()
}

/// SIGKILLs every process in the cgroup `path` (cgroupfs path) and waits until none is left,
/// at most `timeout`; returns how many it found there first. Whatever PID namespace they are
/// in: without one of its own (the host's, or the pod's) the kernel leaves a container's other
/// processes running when its init dies, and a container whose monitor died has nobody else to
/// end it. v2's `cgroup.kill` kills the whole cgroup at once, forks in flight included; on v1
/// the freezer (where mounted) holds every task still while the signals go out, so nothing
/// forks past them. Killed processes that were re-parented to the caller (a subreaper) are
/// reaped here.
pub fn kill_all(path: &Path, timeout: Duration) -> Result<usize, String> {
    use nix::sys::signal::{kill, Signal};
    use nix::sys::wait::{waitpid, WaitPidFlag};
    use nix::unistd::Pid;
    let dirs = dirs_of(path);
    let deadline = Instant::now() + timeout;
    let mut freezer = dirs
        .iter()
        .map(|d| d.join("freezer.state"))
        .find(|f| f.exists());
    let mut found = None;
    loop {
        let pids = procs_in(&dirs);
        let found = *found.get_or_insert(pids.len());
        if pids.is_empty() {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            if let Some(state) = &freezer {
                let _ = std::fs::write(state, "THAWED");
            }
            return Err(format!(
                "processes {pids:?} still in cgroup {} after SIGKILL",
                path.display()
            ));
        }
        let killed_at_once = dirs
            .iter()
            .any(|d| std::fs::write(d.join("cgroup.kill"), "1").is_ok());
        if !killed_at_once {
            // A frozen task takes its SIGKILL when thawed; freezing again each round costs
            // little and catches what forked before the first.
            if let Some(state) = &freezer {
                if std::fs::write(state, "FROZEN").is_err() {
                    freezer = None;
                }
            }
            // Listed again once frozen: what forked since the last look is there now.
            for pid in procs_in(&dirs) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Some(state) = &freezer {
                let _ = std::fs::write(state, "THAWED");
            }
        }
        std::thread::sleep(Duration::from_millis(2));
        for pid in &pids {
            let _ = waitpid(Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

/// [`kill_all`], then the cgroup `path` removed in every hierarchy (a container's cgroup,
/// whose runtime did not remove it).
pub fn kill_and_remove(path: &Path, timeout: Duration) -> Result<(), String> {
    kill_all(path, timeout)?;
    for dir in dirs_of(path) {
        let _ = std::fs::remove_dir(dir);
    }
    Ok(())
}

/// Removes cgroup directories made by [`ensure`], deepest first. One still holding tasks
/// (EBUSY) stays and is reported.
pub fn remove_created(created: &[PathBuf]) -> Vec<String> {
    let mut left = Vec::new();
    for dir in created.iter().rev() {
        match std::fs::remove_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => left.push(format!("{}: {e}", dir.display())),
        }
    }
    left
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hierarchy(mountpoint: &str, controllers: &[&str]) -> Hierarchy {
        Hierarchy {
            mountpoint: PathBuf::from(mountpoint),
            controllers: controllers.iter().map(|c| c.to_string()).collect(),
            v2: controllers.is_empty(),
        }
    }

    /// A parent another pod made and took back (it was empty then) between our look and our
    /// mkdir under it: made again, as ours.
    #[test]
    fn a_parent_taken_back_under_ensure_is_made_again_as_ours() {
        let root = std::env::temp_dir().join(format!("berth-ensure-{}", std::process::id()));
        let shared = root.join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        let h = Hierarchy {
            mountpoint: root.clone(),
            controllers: vec!["pids".to_string()],
            v2: false,
        };
        let mut taken_back = false;
        let created = ensure_in(&[h], Path::new("shared/pod"), |dir| {
            if !taken_back {
                taken_back = true;
                std::fs::remove_dir(&shared).unwrap();
            }
            std::fs::create_dir(dir)
        });
        let made = root.join("shared/pod").is_dir();
        let _ = std::fs::remove_dir_all(&root);
        assert_eq!(
            created.unwrap(),
            vec![shared.clone(), shared.join("pod")],
            "the parent is ours to take back now"
        );
        assert!(made);
    }

    #[test]
    fn a_process_s_own_procs_file_is_on_v2_where_mounted_else_on_a_v1_hierarchy_it_names() {
        let v1 = [
            hierarchy("/sys/fs/cgroup/cpu,cpuacct", &["cpu", "cpuacct"]),
            hierarchy("/sys/fs/cgroup/memory", &["memory"]),
        ];
        let hybrid = [
            v1[0].clone(),
            v1[1].clone(),
            hierarchy("/sys/fs/cgroup/unified", &[]),
        ];
        let text = "12:memory:/berth/pod1\n4:cpu,cpuacct:/berth/pod1\n0::/\n";
        assert_eq!(
            procs_file_of(text, &hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified/cgroup.procs"))
        );
        assert_eq!(
            procs_file_of(text, &v1),
            Some(PathBuf::from(
                "/sys/fs/cgroup/memory/berth/pod1/cgroup.procs"
            ))
        );
        let v2 = [hierarchy("/sys/fs/cgroup", &[])];
        assert_eq!(
            procs_file_of("0::/system.slice/berthd.service\n", &v2),
            Some(PathBuf::from(
                "/sys/fs/cgroup/system.slice/berthd.service/cgroup.procs"
            ))
        );
        // A hierarchy the host does not mount, or no text: nothing.
        assert_eq!(procs_file_of("3:blkio:/x\n", &v1), None);
        assert_eq!(procs_file_of("", &v2), None);
    }

    /// From a thread of a process with several: the process stays where it was.
    #[test]
    fn taking_the_threadgroup_lock_in_place_moves_nothing() {
        let before = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        std::thread::spawn(take_threadgroup_lock_in_place)
            .join()
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/self/cgroup").unwrap(),
            before
        );
    }

    /// Two pods made at once under a new parent: one agent has made the parent and not yet
    /// given it CPUs and memory nodes when the other, finding it there, makes its child under
    /// it, which then has none either and no task can join (ENOSPC). Every level on the way
    /// gets its parent's when it has none, made by this call or not.
    #[test]
    fn a_v1_cpuset_level_found_empty_is_filled_before_its_child_is_made() {
        let cpusets: Vec<Hierarchy> = hierarchies()
            .into_iter()
            .filter(|h| !h.v2 && h.controllers.iter().any(|c| c == "cpuset"))
            .collect();
        assert!(!cpusets.is_empty(), "no v1 cpuset hierarchy on this host");
        let top = format!("berth-unit-{}-cpuset", std::process::id());
        let top_dir = cpusets[0].mountpoint.join(&top);
        std::fs::create_dir(&top_dir).unwrap();
        // What another agent's half-done mkdir looks like.
        std::fs::write(top_dir.join("cpuset.cpus"), "").unwrap();
        std::fs::write(top_dir.join("cpuset.mems"), "").unwrap();
        let path = PathBuf::from(format!("/{top}/child"));
        let made = ensure(&path);
        let read = |dir: &Path, file: &str| {
            std::fs::read_to_string(dir.join(file))
                .unwrap_or_default()
                .trim()
                .to_string()
        };
        let child = top_dir.join("child");
        let values = [
            read(&top_dir, "cpuset.cpus"),
            read(&top_dir, "cpuset.mems"),
            read(&child, "cpuset.cpus"),
            read(&child, "cpuset.mems"),
        ];
        if let Ok(made) = &made {
            remove_created(made);
        }
        for h in hierarchies() {
            let _ = std::fs::remove_dir(h.mountpoint.join(&top));
        }
        made.unwrap();
        assert!(values.iter().all(|v| !v.is_empty()), "{values:?}");
    }

    #[test]
    fn procs_files_list_one_pid_a_line() {
        assert_eq!(parse_procs("12\n345\n"), [12, 345]);
        assert_eq!(parse_procs(""), Vec::<i32>::new());
        assert_eq!(parse_procs("7\n\nx\n8"), [7, 8]);
    }

    const HYBRID: &str = "\
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime - cgroup2 cgroup2 rw
32 30 0:28 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
35 30 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct
36 30 0:32 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
37 30 0:33 / /sys/fs/cgroup/cpuset rw,nosuid - cgroup cgroup rw,cpuset,clone_children
90 36 0:32 /kubepods /var/lib/x rw - cgroup cgroup rw,memory
";

    #[test]
    fn mountinfo_gives_each_hierarchy_once_with_its_controllers() {
        let h = parse_mountinfo(HYBRID);
        assert_eq!(h.len(), 5);
        assert!(h[0].v2 && h[0].mountpoint == Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(h[1].controllers, ["name=systemd"]);
        assert_eq!(h[2].controllers, ["cpu", "cpuacct"]);
        assert_eq!(h[4].controllers, ["cpuset"]);
        assert_eq!(layout(&h), "hybrid");
        assert_eq!(layout(&h[..1]), "v2");
        assert_eq!(layout(&h[1..]), "v1");
    }

    #[test]
    fn cgroup_parents_are_cleaned_and_checked() {
        assert_eq!(
            cgroupfs_path("/kubepods/burstable/pod1").unwrap(),
            Path::new("/kubepods/burstable/pod1")
        );
        assert_eq!(
            cgroupfs_path("kubepods/pod1").unwrap(),
            Path::new("/kubepods/pod1")
        );
        assert!(cgroupfs_path("/kubepods/../../etc").is_err());
        assert!(cgroupfs_path("/").is_err());
    }
}
