//! Compile-time errors of the macros, with their messages and spans. What compiles is tested by
//! `expansion.rs` and the integration suite; only failing cases are here, so their separate build
//! runs `cargo check` and compiles no C library. That build still takes Diesel's compile time
//! (a minute or two on a small machine), so the test runs on request:
//! `cargo test -p queue-derive -- --ignored` (`.ci/run` does).

#[test]
#[ignore = "checks the macros' error messages in a separate build of Diesel (1-2 min): cargo test -p queue-derive -- --ignored"]
fn ui() {
    let cases = trybuild::TestCases::new();
    cases.compile_fail("tests/ui/fail/*.rs");
}
