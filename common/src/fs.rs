//! Filesystem steps that CRI's idempotent Stop/Remove need.

use std::path::Path;

/// Removes `dir` and everything in it; a directory that is already gone is not an error.
pub fn remove_dir_all_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
