//! `queue-worker`: migrate the queue's tables and look at jobs. It links no job function: build
//! your application's own worker binary (see `queue_diesel::cli`) to run jobs.

fn main() -> std::process::ExitCode {
    queue_diesel::cli::main()
}
