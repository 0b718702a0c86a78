//! The ustar writer: tar entries written byte by byte, so the same inputs always give the same
//! bytes and hostile paths can be expressed at all.

use super::MTIME;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Hardlink(String),
    CharDevice { major: u32, minor: u32 },
    BlockDevice { major: u32, minor: u32 },
    Fifo,
}

/// One tar entry. The path is written exactly as given (no cleaning), so it may be hostile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: String,
    pub kind: EntryKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

impl Entry {
    fn new(path: &str, kind: EntryKind, mode: u32) -> Entry {
        Entry {
            path: path.trim_end_matches('/').to_string(),
            kind,
            mode,
            uid: 0,
            gid: 0,
        }
    }

    pub fn file(path: &str, data: &[u8], mode: u32) -> Entry {
        Entry::new(path, EntryKind::File(data.to_vec()), mode)
    }

    pub fn dir(path: &str, mode: u32) -> Entry {
        Entry::new(path, EntryKind::Dir, mode)
    }

    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Symlink(target.to_string()), 0o777)
    }

    pub fn hardlink(path: &str, target: &str) -> Entry {
        Entry::new(path, EntryKind::Hardlink(target.to_string()), 0o644)
    }

    pub fn char_device(path: &str, major: u32, minor: u32) -> Entry {
        Entry::new(path, EntryKind::CharDevice { major, minor }, 0o666)
    }

    pub fn fifo(path: &str) -> Entry {
        Entry::new(path, EntryKind::Fifo, 0o644)
    }

    pub fn owned(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
}

/// Writes `entries` as a ustar archive, in the order given, ending with two zero blocks.
pub fn write_tar<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in entries {
        let mut header = [0u8; 512];
        let (typeflag, link, size, device) = match &entry.kind {
            EntryKind::File(data) => (b'0', "", data.len(), (0, 0)),
            EntryKind::Hardlink(target) => (b'1', target.as_str(), 0, (0, 0)),
            EntryKind::Symlink(target) => (b'2', target.as_str(), 0, (0, 0)),
            EntryKind::CharDevice { major, minor } => (b'3', "", 0, (*major, *minor)),
            EntryKind::BlockDevice { major, minor } => (b'4', "", 0, (*major, *minor)),
            EntryKind::Dir => (b'5', "", 0, (0, 0)),
            EntryKind::Fifo => (b'6', "", 0, (0, 0)),
        };
        let path = match entry.kind {
            EntryKind::Dir => format!("{}/", entry.path),
            _ => entry.path.clone(),
        };
        let (prefix, name) = split_ustar_path(&path);
        header[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut header[100..108], entry.mode as u64);
        octal(&mut header[108..116], entry.uid as u64);
        octal(&mut header[116..124], entry.gid as u64);
        octal(&mut header[124..136], size as u64);
        octal(&mut header[136..148], MTIME);
        header[156] = typeflag;
        assert!(link.len() <= 100, "tar link target too long: {link}");
        header[157..157 + link.len()].copy_from_slice(link.as_bytes());
        header[257..263].copy_from_slice(b"ustar\0");
        header[263..265].copy_from_slice(b"00");
        octal(&mut header[329..337], device.0 as u64);
        octal(&mut header[337..345], device.1 as u64);
        header[345..345 + prefix.len()].copy_from_slice(prefix.as_bytes());
        // The checksum is taken with its own field as spaces.
        header[148..156].copy_from_slice(b"        ");
        let sum: u32 = header.iter().map(|&b| b as u32).sum();
        header[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&header);
        if let EntryKind::File(data) = &entry.kind {
            out.extend_from_slice(data);
            out.resize(out.len().next_multiple_of(512), 0);
        }
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// ustar keeps up to 100 bytes in `name` and 155 more in `prefix`, split at a `/`.
fn split_ustar_path(path: &str) -> (&str, &str) {
    if path.len() <= 100 {
        return ("", path);
    }
    let body = path.trim_end_matches('/');
    (1..body.len())
        .filter(|&i| body.as_bytes()[i] == b'/')
        .find(|&i| i <= 155 && path.len() - i - 1 <= 100)
        .map(|i| (&path[..i], &path[i + 1..]))
        .unwrap_or_else(|| panic!("tar path too long for ustar: {path}"))
}

fn octal(field: &mut [u8], value: u64) {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    assert!(
        digits.len() < field.len(),
        "{value} does not fit a tar field"
    );
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_paths_use_the_ustar_prefix() {
        let path = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let tar = write_tar([&Entry::file(&path, b"x", 0o644)]);
        let mut archive = tar::Archive::new(tar.as_slice());
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        assert_eq!(entry.path().unwrap().display().to_string(), path);
    }
}
