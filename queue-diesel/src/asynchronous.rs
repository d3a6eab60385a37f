//! Async job methods and async applications.
//!
//! A job method may be an `async fn` (to use an HTTP client or another async library): the
//! executor that runs the job drives its future on its own thread, so the job's database work
//! stays in the job's transaction and the worker's other executors go on meanwhile. With the
//! `tokio` feature the future runs inside a Tokio runtime (timers, sockets, `reqwest` work);
//! without it, futures that need no runtime (channels, most of `futures`) still do.
//!
//! From an async application (axum, actix on Tokio), `Database::spawn_transaction` (feature
//! `tokio`) runs a queue transaction on Tokio's blocking threads and awaits it: Diesel is
//! synchronous, and a transaction must not hold up the runtime's own threads.

use std::future::Future;
use std::sync::Arc;
use std::task::{Poll, Wake, Waker};

#[cfg(feature = "tokio")]
use crate::database::Database;

/// Drive `future` to completion on this thread (used by the code `#[queueable]` generates for
/// `async fn` job methods).
///
/// With the `tokio` feature: on a thread of the application's Tokio runtime (a job run at the
/// call, or after the commit, from a handler), the future runs on that runtime (a multi-threaded
/// runtime is told the thread blocks); elsewhere (the worker's executors) a runtime of the
/// queue's own serves the future's timers and sockets.
pub fn block_on<F: Future>(future: F) -> F::Output {
    #[cfg(feature = "tokio")]
    {
        use tokio::runtime::{Handle, RuntimeFlavor};
        return match Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(|| handle.block_on(future))
            }
            // On a blocking thread (`spawn_transaction`) this works; on the runtime's own thread
            // Tokio refuses, with its reason.
            Ok(handle) => handle.block_on(future),
            Err(_) => runtime().block_on(future),
        };
    }
    #[allow(unreachable_code)]
    park_until_ready(future)
}

/// The queue's own Tokio runtime, for job futures run outside of one.
#[cfg(feature = "tokio")]
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("queue-tokio")
            .enable_all()
            .build()
            .unwrap_or_else(|e| panic!("cannot start the queue's Tokio runtime: {e}"))
    })
}

/// Poll `future` on this thread, parking it between wake-ups.
fn park_until_ready<F: Future>(future: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = std::task::Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        match future.as_mut().poll(&mut cx) {
            Poll::Ready(value) => return value,
            Poll::Pending => std::thread::park(),
        }
    }
}

#[cfg(feature = "tokio")]
impl Database {
    /// Run [`Database::transaction`] on Tokio's blocking threads and await it: the way to queue
    /// jobs from an async handler. `f` runs on another thread, so it takes what it needs by value.
    ///
    /// ```no_run
    /// # use queue_diesel::prelude::*;
    /// # async fn handler(db: Database) -> Result<(), queue_diesel::Error> {
    /// let queued = db
    ///     .spawn_transaction(Context::user(7), |env| {
    ///         // the handler's database work, then Model::queue()…
    ///         Ok::<_, queue_diesel::Error>(env.user_id())
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Panics
    /// When `f` panics (the panic is resumed here), or outside a Tokio runtime.
    pub async fn spawn_transaction<T, E, F>(&self, context: queue_core::Context, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<crate::Error> + Send + 'static,
        F: FnOnce(&crate::Env) -> Result<T, E> + Send + 'static,
    {
        let db = self.clone();
        match tokio::task::spawn_blocking(move || db.transaction(context, f)).await {
            Ok(outcome) => outcome,
            Err(e) => match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("the transaction's task was cancelled: {e}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that is pending until another thread wakes it.
    #[test]
    fn a_future_woken_from_another_thread_completes() {
        let (tx, rx) = std::sync::mpsc::channel::<Waker>();
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&ready);
        let waker_thread = std::thread::spawn(move || {
            let waker = rx.recv().expect("a waker");
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            waker.wake();
        });
        let mut sent = false;
        let value = block_on(std::future::poll_fn(|cx| {
            if ready.load(std::sync::atomic::Ordering::SeqCst) {
                return Poll::Ready(42);
            }
            if !sent {
                sent = true;
                tx.send(cx.waker().clone()).expect("sent");
            }
            Poll::Pending
        }));
        assert_eq!(value, 42);
        waker_thread.join().expect("joined");
    }
}
