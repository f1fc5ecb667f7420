//! The `meshreg` command line.
fn main() {}
