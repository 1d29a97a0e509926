//! Arbitrary bytes from a public HTTP client into the hub's request-head inspector
//! (`hub::http::framing::HeadInspector`), which must find every request head hyper will see, in
//! chunks split at arbitrary points.
//!
//! Input: one seed byte for the chunk boundaries, then the stream. Invariants checked:
//! - nothing panics;
//! - the verdicts are the same however the stream is chunked (with a head limit no head in the
//!   input can reach, so only the framing decides);
//! - with a small head limit too, feeding never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tunnelize::hub::http::framing::{HeadInspector, Verdict};
use tunnelize_fuzz::split;

/// Verdicts for `chunks`; at most one per CRLFCRLF in the stream, plus one to see the default.
fn verdicts(max_head: usize, chunks: &[&[u8]], heads_at_most: usize) -> Vec<Verdict> {
    let mut inspector = HeadInspector::new(max_head);
    for chunk in chunks {
        inspector.feed(chunk);
    }
    (0..=heads_at_most)
        .map(|_| inspector.next_verdict())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, stream)) = data.split_first() else {
        return;
    };
    let heads = stream.windows(4).filter(|w| w == b"\r\n\r\n").count();
    let unreachable_limit = stream.len() + 1;
    let whole = verdicts(unreachable_limit, &[stream], heads);
    let chunked = verdicts(unreachable_limit, &split(seed, stream), heads);
    assert_eq!(whole, chunked, "the chunk boundaries changed the verdicts");
    assert_eq!(
        whole.last(),
        Some(&Verdict::Clean),
        "more verdicts than heads"
    );

    let small_limit = usize::from(seed) * 4;
    let _ = verdicts(small_limit, &split(seed, stream), heads);
});
