//! Failures of the Diesel side of the queue.

/// A failure of the queue: configuration, database, or misuse.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A failure of the pure part (bad option, bad channel, illegal transition, …).
    #[error(transparent)]
    Core(#[from] queue_core::Error),
    /// Bad configuration: the message says what was expected and what was given.
    #[error("{0}")]
    Config(String),
    /// The database could not be reached.
    #[error("failed to connect to {url}")]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The driver's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A query failed.
    #[error("failed to {what}")]
    Query {
        /// What the queue was doing.
        what: &'static str,
        /// Diesel's reason.
        #[source]
        source: diesel::result::Error,
    },
    /// The schema could not be brought up to date.
    #[error("failed to migrate the queue schema")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// `Model::queue()…` or `current_env()` was called outside a queue transaction.
    #[error(
        "no queue transaction on this thread: queue jobs inside Database::transaction(…) or queue_diesel::with_env(…)"
    )]
    NoTransaction,
    /// The connection of the current transaction is borrowed (a guard from `env.conn()` is alive).
    #[error(
        "the transaction's connection is in use: drop the guard returned by env.conn() before queueing a job"
    )]
    ConnectionBusy,
    /// Code asked for the transaction's connection as a type it is not.
    #[error("the transaction's connection cannot be used as {wanted}: it is {given}")]
    ConnectionType {
        /// The type asked for.
        wanted: &'static str,
        /// What the connection is.
        given: &'static str,
    },
    /// A stored value could not be decoded.
    #[error("failed to decode {what} of job {job}")]
    Decode {
        /// Which field.
        what: &'static str,
        /// Job uuid or id.
        job: String,
        /// The decoder's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// No job has this uuid.
    #[error("no job with uuid {0}")]
    JobNotFound(String),
    /// A call's arguments encode to more bytes than the database's limit.
    #[error(
        "arguments of {func} take {size} bytes encoded, more than the limit of {limit}: store large data in a table and pass its id"
    )]
    ArgsTooLarge {
        /// Function name.
        func: String,
        /// Encoded size.
        size: usize,
        /// The limit (`DatabaseBuilder::max_args_bytes`).
        limit: usize,
    },
    /// A job's function is not registered in this binary.
    #[error("unknown job function {0:?}: it is not registered in this binary")]
    UnknownFunction(String),
    /// The job functions linked into this binary are inconsistent (duplicate names, bad patterns).
    #[error("invalid job function registry: {0}")]
    Registry(String),
    /// A worker was asked to run with no job function linked in.
    #[error(
        "no job function is registered in this binary, so this worker could run no job; build a worker binary that links your models (see the README, \"Your own worker binary\")"
    )]
    NoFunctions,
    /// A job running synchronously (`queue_no_delay`) returned an error verdict.
    #[error("job {func} run without delay failed: {verdict}")]
    NoDelayJob {
        /// Function name.
        func: String,
        /// The verdict, as text.
        verdict: String,
    },
    /// Code inside a queue transaction opened a transaction it did not close, or closed one it
    /// did not open: everything was rolled back.
    #[error(
        "transaction left at depth {found} instead of {expected}: code inside it opened a transaction it did not close, or closed one it did not open; everything was rolled back"
    )]
    TransactionDepth {
        /// The depth the queue opened.
        expected: u32,
        /// The depth found when the body returned.
        found: u32,
    },
    /// A batch found fewer of its jobs than it had selected when it stored them `done`: the
    /// batch was rolled back, its jobs stay `pending`.
    #[error(
        "a batch selected {expected} jobs but found {found} of them when storing them done; it was rolled back"
    )]
    BatchLost {
        /// Jobs the batch ran.
        expected: usize,
        /// Jobs found.
        found: usize,
    },
    /// Every executor thread of a worker stopped.
    #[error("all executor threads of the worker stopped")]
    NoExecutors,
    /// The job was taken over by another worker: its result was not committed.
    #[error("job {0} was taken over by another worker; its result was not committed")]
    LeaseLost(String),
    /// A schedule's code failed to queue the jobs of a tick; the tick was rolled back and is
    /// tried again.
    #[error("schedule {name} failed to queue its jobs")]
    Schedule {
        /// The schedule's name.
        name: String,
        /// What its code returned.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Operating-system failure (signals, threads).
    #[error("{what}")]
    Io {
        /// What the queue was doing.
        what: &'static str,
        /// The system's reason.
        #[source]
        source: std::io::Error,
    },
}

/// Result of a queue operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wrap a Diesel error with what the queue was doing.
    pub(crate) fn query(what: &'static str) -> impl FnOnce(diesel::result::Error) -> Error {
        move |source| Error::Query { what, source }
    }
}

impl Error {
    /// True for failures that say nothing about the job: the database was busy, the connection
    /// dropped, the transaction met a deadlock or lost a serialization conflict (see
    /// [`crate::Conflict`]). A job that met one is given back rather than failed.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::ConnectionBusy => true,
            other => crate::store::Conflict::of(other).is_some(),
        }
    }
}

impl From<diesel::result::Error> for Error {
    fn from(source: diesel::result::Error) -> Self {
        Error::Query { what: "run a query", source }
    }
}
