//! This application's worker: `cargo run -p partners --bin worker -- run --channels root:2,root.export:1`.
//! It links the `partners` crate, so the worker knows its job functions.

use partners as _;

fn main() -> std::process::ExitCode {
    queue_diesel::cli::main()
}
