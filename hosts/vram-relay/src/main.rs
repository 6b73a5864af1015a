//! The `vram-relay` command-line tool.

fn main() {}
