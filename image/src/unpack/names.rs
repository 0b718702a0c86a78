//! Tar entry names: lexical cleaning under the root, and what a final name means in a layer.

/// A tar entry name as path components, cleaned lexically under `/` as containerd does: empty
/// and `.` parts vanish, `..` drops the previous part and never climbs above the root.
pub(super) fn clean_components(name: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for part in name.split(|b| *b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            part => out.push(part),
        }
    }
    out
}

pub(super) fn join(comps: &[&[u8]]) -> Vec<u8> {
    comps.join(&b'/')
}

/// What an entry's final name means in an OCI layer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Name<'a> {
    Plain,
    /// `.wh..wh..opq`: the directory hides everything below it in lower layers.
    Opaque,
    /// `.wh.<name>`: `<name>` is deleted.
    Whiteout(&'a [u8]),
    /// Other `.wh..wh.` names (aufs hard-link bookkeeping): not part of the filesystem.
    AufsMeta,
    /// `.wh.`, `.wh..`, `.wh...`: a whiteout of nothing or of a directory's own links.
    BadWhiteout,
}

pub(super) fn classify_name(base: &[u8]) -> Name<'_> {
    if base == b".wh..wh..opq" {
        Name::Opaque
    } else if base.starts_with(b".wh..wh.") {
        Name::AufsMeta
    } else if let Some(hidden) = base.strip_prefix(b".wh.") {
        match hidden {
            b"" | b"." | b".." => Name::BadWhiteout,
            _ => Name::Whiteout(hidden),
        }
    } else {
        Name::Plain
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_cleaned_lexically_under_the_root() {
        let cases: [(&str, &[&str]); 9] = [
            ("etc/passwd", &["etc", "passwd"]),
            ("./usr/bin/", &["usr", "bin"]),
            ("/etc/shadow", &["etc", "shadow"]),
            ("../../etc/x", &["etc", "x"]),
            ("a/../../b", &["b"]),
            ("a//b/./c/..", &["a", "b"]),
            ("./", &[]),
            ("..", &[]),
            ("", &[]),
        ];
        for (name, want) in cases {
            let got: Vec<&[u8]> = clean_components(name.as_bytes());
            let want: Vec<&[u8]> = want.iter().map(|s| s.as_bytes()).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn whiteout_names_are_classified() {
        assert_eq!(classify_name(b"passwd"), Name::Plain);
        assert_eq!(classify_name(b".whiteout"), Name::Plain);
        assert_eq!(classify_name(b".wh..wh..opq"), Name::Opaque);
        assert_eq!(classify_name(b".wh..wh.plnk"), Name::AufsMeta);
        assert_eq!(classify_name(b".wh..wh.aufs"), Name::AufsMeta);
        assert_eq!(classify_name(b".wh.gone"), Name::Whiteout(b"gone"));
        assert_eq!(classify_name(b".wh..hidden"), Name::Whiteout(b".hidden"));
        assert_eq!(classify_name(b".wh."), Name::BadWhiteout);
        assert_eq!(classify_name(b".wh.."), Name::BadWhiteout);
        assert_eq!(classify_name(b".wh..."), Name::BadWhiteout);
    }
}
