//! The `image_reference` fuzz target's body; its input and its checks are described in
//! `fuzz/fuzz_targets/image_reference.rs`. libFuzzer runs it there, coverage-guided (`make fuzz`);
//! `e2e/tests/fuzz_targets.rs` runs it over the seeds and seeded mutations of them (`make test`).

use berth_image::reference::Reference;

pub fn run(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(reference) = Reference::parse(input) else {
        return;
    };
    let printed = reference.to_string();
    let name = reference.name();
    assert!(
        printed.starts_with(&name),
        "{printed:?} does not start with {name:?}"
    );
    let asked = reference.manifest_reference();
    assert!(!asked.is_empty(), "{input:?}: empty manifest reference");
    let reparse = |text: &str| {
        Reference::parse(text)
            .unwrap_or_else(|e| panic!("{input:?} printed as {text:?}, which does not parse: {e}"))
    };
    assert_eq!(
        reparse(&printed),
        reference,
        "{input:?} printed as {printed:?}"
    );
    if let Some(tagged) = reference.tagged() {
        let again = reparse(&tagged);
        assert_eq!(
            (again.name(), again.tag, again.digest),
            (name.clone(), reference.tag.clone(), None),
            "repo tag {tagged:?} of {input:?}"
        );
    }
    if let Some(digest) = &reference.digest {
        let repo_digest = reference.with_digest(digest);
        let again = reparse(&repo_digest);
        assert_eq!(
            (again.name(), again.tag, again.digest.as_ref()),
            (name.clone(), None, Some(digest)),
            "repo digest {repo_digest:?} of {input:?}"
        );
    }
}
