//! The `h2_authority` fuzz target's body; its input and its checks are described in
//! `fuzz/fuzz_targets/h2_authority.rs`. libFuzzer runs it there, coverage-guided (`make fuzz`);
//! `e2e/tests/fuzz_targets.rs` runs it over the seeds and seeded mutations of them (`make test`).

use berth_cri::authority::AuthorityRewriter;

pub fn run(data: &[u8]) {
    let Some((&head, rest)) = data.split_first() else {
        return;
    };
    let (cuts, stream) = rest.split_at(usize::from(head & 7).min(rest.len()));

    let mut whole = Vec::new();
    AuthorityRewriter::default().feed(stream, &mut whole);
    assert!(
        whole.len() <= stream.len(),
        "{} bytes in, {} out",
        stream.len(),
        whole.len()
    );

    let mut rewriter = AuthorityRewriter::default();
    let mut pieces = Vec::new();
    let mut sizes = cuts.iter().map(|&c| usize::from(c) + 1).cycle();
    let mut left = stream;
    while !left.is_empty() {
        let n = sizes.next().unwrap_or(left.len()).min(left.len());
        let (piece, after) = left.split_at(n);
        rewriter.feed(piece, &mut pieces);
        left = after;
    }
    assert!(
        pieces == whole,
        "cut at {cuts:?}: output differs from one feed"
    );
}
