//! Placeholder; replaced by the in-process round-trip benchmark.
fn main() {}
