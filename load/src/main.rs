//! `opampd-load` (the runner comes in the next change).

fn main() {}
