//! Path helpers shared by the spec rules.

use std::path::{Component, Path, PathBuf};

/// Lexical clean-up of a path (Go's `filepath.Clean`): no `.`, no `..` past the root, no
/// repeated or trailing separators.
pub fn clean_path(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else if !path.is_absolute() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(if path.is_absolute() { "/" } else { "." });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_path_is_lexical() {
        let cases = [
            ("/a/b/", "/a/b"),
            ("/a//b/./c", "/a/b/c"),
            ("/a/b/../c", "/a/c"),
            ("/../a", "/a"),
            ("/..", "/"),
            ("/", "/"),
            ("a/../..", ".."),
            ("../../a", "../../a"),
            ("", "."),
        ];
        for (input, expected) in cases {
            assert_eq!(
                clean_path(Path::new(input)),
                PathBuf::from(expected),
                "{input}"
            );
        }
    }
}
