// The PostgreSQL tests run when the suite is built with `QUEUE_TEST_POSTGRES_URL` set; without
// it they are reported as ignored, with the reason, rather than passing without running. So are
// the tests that run the application's migrations with diesel_cli (`QUEUE_TEST_DIESEL_CLI`) and
// those of TLS to PostgreSQL (`QUEUE_TEST_POSTGRES_TLS_URL`, `QUEUE_TEST_POSTGRES_TLS_CA`), and
// the dashboard's test in a real browser (`QUEUE_TEST_CHROMEDRIVER`: Debian's chromium-driver).
fn main() {
    println!("cargo::rustc-check-cfg=cfg(queue_postgres_tests)");
    println!("cargo::rustc-check-cfg=cfg(queue_diesel_cli_tests)");
    println!("cargo::rerun-if-env-changed=QUEUE_TEST_DIESEL_CLI");
    println!("cargo::rustc-check-cfg=cfg(queue_postgres_tls_tests)");
    println!("cargo::rerun-if-env-changed=QUEUE_TEST_POSTGRES_TLS_URL");
    println!("cargo::rerun-if-env-changed=QUEUE_TEST_POSTGRES_TLS_CA");
    if std::env::var("QUEUE_TEST_POSTGRES_TLS_URL").is_ok_and(|url| !url.trim().is_empty())
        && std::env::var("QUEUE_TEST_POSTGRES_TLS_CA").is_ok()
    {
        println!("cargo::rustc-cfg=queue_postgres_tls_tests");
    }
    if std::env::var("QUEUE_TEST_DIESEL_CLI").is_ok_and(|path| !path.trim().is_empty()) {
        println!("cargo::rustc-cfg=queue_diesel_cli_tests");
    }
    println!("cargo::rustc-check-cfg=cfg(queue_browser_tests)");
    println!("cargo::rerun-if-env-changed=QUEUE_TEST_CHROMEDRIVER");
    if std::env::var("QUEUE_TEST_CHROMEDRIVER").is_ok_and(|path| !path.trim().is_empty()) {
        println!("cargo::rustc-cfg=queue_browser_tests");
    }
    println!("cargo::rerun-if-env-changed=QUEUE_TEST_POSTGRES_URL");
    if std::env::var("QUEUE_TEST_POSTGRES_URL").is_ok_and(|url| !url.trim().is_empty()) {
        println!("cargo::rustc-cfg=queue_postgres_tests");
    }
}
