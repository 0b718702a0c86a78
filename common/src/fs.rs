//! Filesystem steps several crates take: the idempotent removes of CRI's Stop/Remove, the trash
//! that takes their trees out of sight at once, and the disk usage of a tree (image snapshots,
//! containers' writable layers).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Allocated bytes and distinct inodes of a tree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskUsage {
    pub bytes: u64,
    pub inodes: u64,
}

/// Allocated bytes (blocks × 512) and distinct inodes under `path`, not following symlinks;
/// a hard-linked file counts once. What cannot be read (a file removed meanwhile) is skipped.
pub fn disk_usage(path: &Path) -> DiskUsage {
    let mut usage = DiskUsage::default();
    let mut seen = HashSet::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.bytes += meta.blocks() * 512;
        }
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    usage
}

/// Makes `dir` (and its parents) if missing and gives it mode 0700, also when it already existed
/// with another: what lives under it (image snapshots, containers' upper dirs) may hold setuid
/// binaries an image or a container wrote, which no other host user may reach.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
}

/// Makes `dir` (and its parents) if missing and gives it mode 0711: others may pass through to
/// an entry they can name, but not list it. Each entry closes itself ([`closed_dir`]).
pub fn passable_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
}

/// Gives the existing `dir` mode 0700, or with `group` root:`group` and mode 0710: that group
/// alone may pass through it (the host group of a pod user namespace's root, whose processes
/// reach their own files under it).
pub fn closed_dir(dir: &Path, group: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(dir, Some(0), Some(gid))?;
            0o710
        }
        None => 0o700,
    };
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Removes `dir` and everything in it; a directory that is already gone is not an error.
pub fn remove_dir_all_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// A directory that trees to delete are renamed into: one rename takes a tree out of sight, and
/// its files are deleted afterwards, off the request's path. Deleting a tree costs a
/// journal commit and, on a disk mounted `discard`, a TRIM for each freed extent: tens of
/// milliseconds for a few old files. What a crash leaves in the trash is deleted when it is
/// opened again. It must be on the filesystem of what it takes (a rename does not cross one).
#[derive(Debug, Clone)]
pub struct Trash {
    dir: PathBuf,
}

impl Trash {
    /// Opens (creating, mode 0700) the trash at `dir` and deletes what a crash left in it.
    pub fn open(dir: PathBuf) -> std::io::Result<Trash> {
        private_dir(&dir)?;
        let trash = Trash { dir };
        for entry in std::fs::read_dir(&trash.dir)?.flatten() {
            if let Err(e) = trash.delete(&entry.path()) {
                tracing::warn!(path = %entry.path().display(), error = %e, "trash: cannot delete what was left");
            }
        }
        Ok(trash)
    }

    /// Renames `path` into the trash under a name of its own, and returns where it went; None
    /// when there is no `path`. The caller deletes it with [`Trash::delete`].
    pub fn take(&self, path: &Path) -> std::io::Result<Option<PathBuf>> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let doomed = self
            .dir
            .join(format!("{name}-{:x}", crate::atomic::unique()));
        match std::fs::rename(path, &doomed) {
            Ok(()) => Ok(Some(doomed)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a tree [`Trash::take`] moved in; one that is already gone is not an error.
    pub fn delete(&self, doomed: &Path) -> std::io::Result<()> {
        match std::fs::symlink_metadata(doomed) {
            Ok(m) if !m.is_dir() => std::fs::remove_file(doomed),
            _ => remove_dir_all_if_present(doomed),
        }
    }

    /// The trash's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_usage_counts_blocks_and_each_inode_once() {
        let base = std::env::temp_dir().join(format!("berth-du-{}", std::process::id()));
        std::fs::create_dir_all(base.join("d")).unwrap();
        std::fs::write(base.join("d/f"), vec![1u8; 100_000]).unwrap();
        std::fs::hard_link(base.join("d/f"), base.join("link")).unwrap();
        std::os::unix::fs::symlink("/nonexistent", base.join("sym")).unwrap();
        let u = disk_usage(&base);
        // base, d, f (once, though linked twice), sym.
        assert_eq!(u.inodes, 4);
        assert!(u.bytes >= 100_000, "{u:?}");
        assert_eq!(disk_usage(&base.join("missing")), DiskUsage::default());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn removing_a_missing_dir_succeeds_and_a_file_in_the_way_fails() {
        let base = std::env::temp_dir().join(format!("berth-fs-{}", std::process::id()));
        std::fs::create_dir_all(base.join("a/b")).unwrap();
        remove_dir_all_if_present(&base.join("a")).unwrap();
        assert!(!base.join("a").exists());
        remove_dir_all_if_present(&base.join("a")).unwrap();
        std::fs::write(base.join("file"), b"x").unwrap();
        assert!(remove_dir_all_if_present(&base.join("file")).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn the_trash_takes_a_tree_at_once_and_deletes_what_a_crash_left_when_opened() {
        let base = std::env::temp_dir().join(format!("berth-trash-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let trash = Trash::open(base.join("trash")).unwrap();
        std::fs::create_dir_all(base.join("pods/p1/ns")).unwrap();
        std::fs::write(base.join("pods/p1/record.json"), "{}").unwrap();

        let doomed = trash.take(&base.join("pods/p1")).unwrap().unwrap();
        assert!(!base.join("pods/p1").exists());
        assert!(doomed.starts_with(base.join("trash")));
        assert!(doomed.join("record.json").exists());
        // A second tree of the same name gets a name of its own.
        std::fs::create_dir_all(base.join("pods/p1")).unwrap();
        let again = trash.take(&base.join("pods/p1")).unwrap().unwrap();
        assert_ne!(doomed, again);
        assert_eq!(trash.take(&base.join("pods/p1")).unwrap(), None);

        trash.delete(&again).unwrap();
        trash.delete(&again).unwrap();
        assert!(!again.exists());
        // `doomed` is what a crash would leave: the next open deletes it.
        std::fs::write(base.join("trash/stray-file"), "x").unwrap();
        let trash = Trash::open(base.join("trash")).unwrap();
        assert_eq!(std::fs::read_dir(trash.dir()).unwrap().count(), 0);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
