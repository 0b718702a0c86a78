//! The one way berth replaces a file whole: a temp file beside it, then a rename over it, so a
//! reader (or an agent that was killed halfway) sees the old contents or the new, never half.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// How much a write must survive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Durability {
    /// fsync of the file before the rename and of the directory after: survives a power loss.
    Synced,
    /// No fsync: for the state dir's files (`/run/berth`, tmpfs on a node), which a power loss
    /// or a reboot takes anyway (berth starts from an empty or unreadable state as after a
    /// reboot), and where syncing only slows the request down: on a disk-backed `/run` the
    /// pod's eight state writes took 4-8 ms of RunPodSandbox.
    Unsynced,
}

/// Writes `bytes` to `path` atomically and durably: temp file, fsync, rename, fsync of the dir.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, 0o644, Durability::Synced)
}

/// As [`write_atomic`], the file created with `mode` (before the umask) instead of 0644.
pub fn write_atomic_with_mode(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    write(path, bytes, mode, Durability::Synced)
}

/// Atomic but not durable: temp file and rename, no fsync. Only for the state dir's files,
/// which need not outlive the boot.
pub fn write_atomic_unsynced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write(path, bytes, 0o644, Durability::Unsynced)
}

/// As [`write_atomic_unsynced`], the file created with `mode` (before the umask) instead of
/// 0644: for a file outside the state dir whose loss in a power cut its reader tolerates.
pub fn write_atomic_unsynced_with_mode(
    path: &Path,
    bytes: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    write(path, bytes, mode, Durability::Unsynced)
}

fn write(path: &Path, bytes: &[u8], mode: u32, durability: Durability) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}-{}", std::process::id(), unique()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(bytes)?;
        if durability == Durability::Synced {
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if durability == Durability::Synced {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes the temp files that writers other than this process left in `dir` (a writer killed
/// between its temp file and the rename leaves one). Returns how many went. For the directories
/// that outlive the agent, at its start.
pub fn remove_stale_temps(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mine = std::process::id();
    entries
        .flatten()
        .filter(|e| temp_writer(&e.file_name().to_string_lossy()).is_some_and(|pid| pid != mine))
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}

/// The pid of the writer of temp file `name` (`.<name>.tmp-<pid>-<n>`), if it is one.
fn temp_writer(name: &str) -> Option<u32> {
    let rest = name.strip_prefix('.')?;
    let (_, tail) = rest.rsplit_once(".tmp-")?;
    let (pid, n) = tail.split_once('-')?;
    n.parse::<u64>().ok()?;
    pid.parse().ok()
}

/// A process-unique number for temp names.
pub fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    (NEXT.fetch_add(1, Ordering::Relaxed) << 32) ^ nanos
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn writes_replace_the_whole_file_and_leave_no_temp_behind() {
        let dir =
            std::env::temp_dir().join(format!("berth-atomic-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("record.json");
        write_atomic(&path, b"first, and longer").unwrap();
        write_atomic_unsynced(&path, b"second").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"second");
        write_atomic_with_mode(&path, b"third", 0o600).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["record.json"]);
        assert!(write_atomic(&dir.join("missing/x"), b"").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temps_of_other_writers_are_swept_and_nothing_else() {
        struct Gone(std::path::PathBuf);
        impl Drop for Gone {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        let dir =
            std::env::temp_dir().join(format!("berth-sweep-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&dir).unwrap();
        let _gone = Gone(dir.clone());
        let mine = format!(".r.json.tmp-{}-5", std::process::id());
        for name in [
            ".r.json.tmp-1-2",
            ".x.tmp-99999-123",
            "r.json",
            ".hidden",
            mine.as_str(),
        ] {
            std::fs::write(dir.join(name), b"").unwrap();
        }
        assert_eq!(remove_stale_temps(&dir), 2);
        let mut left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".hidden", mine.as_str(), "r.json"]);
    }
}
