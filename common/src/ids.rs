//! Sandbox and container ids: 64 random hex digits, like containerd's, found by a unique prefix
//! as crictl passes them.

/// A new id from /dev/urandom.
pub fn new_id() -> std::io::Result<String> {
    let bytes = random_bytes::<32>()?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// `N` random bytes from /dev/urandom.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes)
}

/// The one key equal to `query`, or else the only key starting with it.
pub fn resolve_prefix<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    query: &str,
) -> Option<String> {
    if query.is_empty() {
        return None;
    }
    let mut matches = Vec::new();
    for key in keys {
        if key == query {
            return Some(key.clone());
        }
        if key.starts_with(query) {
            matches.push(key);
        }
    }
    match matches.as_slice() {
        [only] => Some((*only).clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_64_hex_digits_and_resolve_by_unique_prefix() {
        let a = new_id().unwrap();
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        let keys = vec!["abc1".to_string(), "abc2".to_string(), "def".to_string()];
        assert_eq!(resolve_prefix(&keys, "d"), Some("def".to_string()));
        assert_eq!(resolve_prefix(&keys, "abc"), None, "ambiguous");
        assert_eq!(resolve_prefix(&keys, "abc2"), Some("abc2".to_string()));
        assert_eq!(resolve_prefix(&keys, ""), None);
        assert_eq!(resolve_prefix(&keys, "x"), None);
    }
}
