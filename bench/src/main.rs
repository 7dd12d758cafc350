//! `troupe-bench`: load generator and report writer (grows with the node).
fn main() {}
