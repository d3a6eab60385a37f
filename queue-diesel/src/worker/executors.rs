//! The executor threads: each takes a unit of work from the dispatcher (a batch to claim and run,
//! or a job claimed to run alone), runs it on a connection it keeps between units, and reports.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

use queue_core::Ending;

use crate::connection::AnyConnection;
use crate::database::Database;
use crate::error::{Error, Result};
use crate::liveness::Record;
use crate::run::alone::{self, Outcome};
use crate::run::batch::{self, BatchFailed, BatchReport, BatchTicket};
use crate::run::{JobControl, chain};
use crate::store::{RunRow, Session, Store};

/// Work handed to an executor.
pub(super) enum Assignment {
    /// A job claimed under `lease`, to run alone.
    Alone { flight: u64, row: Box<RunRow>, lease: Arc<str>, control: Arc<JobControl> },
    /// A batch to claim and run.
    Batch { flight: u64, ticket: BatchTicket, control: Arc<JobControl> },
}

/// How a unit of work ended.
#[derive(Debug)]
pub(super) enum Done {
    /// A job run alone.
    Alone(Outcome),
    /// A batch, or why it failed as a whole.
    Batch(std::result::Result<BatchReport, String>),
}

/// What the dispatcher reacts to.
#[derive(Debug)]
pub(super) enum Event {
    /// An executor is done with a unit of work.
    Finished { flight: u64, done: Done },
    /// A job may have been queued.
    Wake,
    /// Stop claiming and shut down.
    Stop,
}

/// The executor threads: how to start one more (to replace one stuck in a job given up on).
#[derive(Debug)]
pub(super) struct Executors {
    pub db: Database,
    pub worker_id: Arc<str>,
    pub jobs: Arc<Mutex<Receiver<Assignment>>>,
    pub events: Sender<Event>,
    pub record: Option<Arc<Record>>,
    pub started: usize,
    /// Open each executor's connection when it starts, on the starting thread (the first
    /// executors of a worker that serves): opening one (a TLS handshake) takes milliseconds a
    /// first job would otherwise wait, and a thread still opening one when the process exits
    /// could crash it.
    pub connect_first: bool,
    /// The claims each executor prepares on its connection when it opens it.
    pub claims: Arc<[BatchTicket]>,
}

/// An executor's connection, kept between units of work. It is its own, not the pool's: a
/// thread stuck in a job given up on keeps it until the body returns, and must not starve the
/// pool the application and its replacement use.
struct Held {
    conn: AnyConnection,
    session: Option<Session>,
}

impl Executors {
    /// Start one more executor thread.
    pub(super) fn spawn(&mut self) -> Result<()> {
        let db = self.db.clone();
        let jobs = Arc::clone(&self.jobs);
        let events = self.events.clone();
        let worker_id = Arc::clone(&self.worker_id);
        // Its own slot of the liveness record, held until the thread ends.
        let slot = self.record.as_ref().and_then(|r| r.slot()).map(Arc::new);
        let opened = if self.connect_first { connect(&self.db, &self.claims) } else { None };
        let claims = Arc::clone(&self.claims);
        self.started += 1;
        std::thread::Builder::new()
            .name(format!("queue-exec-{}", self.started))
            .spawn(move || {
                let mut held = opened;
                loop {
                    let next = jobs.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(assignment) = next else { return };
                    if held.is_none() {
                        held = connect(&db, &claims);
                    }
                    // The connection is dropped once the work is detached from it: a watcher
                    // may be ending its session until then.
                    let mut broken = false;
                    let mut failed = None;
                    let (flight, control, done) = match assignment {
                        Assignment::Alone { flight, row, lease, control } => {
                            control.attach(held.as_ref().and_then(|h| h.session));
                            // Job panics are caught inside; this catches the queue's own, so
                            // that the slot and the job are always accounted for.
                            let outcome = held.as_mut().map(|h| {
                                catch_unwind(AssertUnwindSafe(|| {
                                    alone::run(&db, &mut h.conn, &row, &lease, &worker_id, Some(&control))
                                }))
                            });
                            let outcome = match outcome {
                                Some(Ok(outcome)) => outcome,
                                _ => {
                                    broken = true;
                                    Outcome { unsettled: true, ..Outcome::default() }
                                }
                            };
                            if !outcome.queued.is_empty() {
                                db.wake();
                            }
                            (flight, control, Done::Alone(outcome))
                        }
                        Assignment::Batch { flight, ticket, control } => {
                            control.attach(held.as_ref().and_then(|h| h.session));
                            control.attach_slot(slot.clone());
                            let report = match held.as_mut() {
                                Some(h) => catch_unwind(AssertUnwindSafe(|| {
                                    batch::run(&db, &mut h.conn, &ticket, &control, slot.as_deref())
                                }))
                                .unwrap_or_else(|_| {
                                    let error = Error::Config("the batch runner panicked".into());
                                    Err(BatchFailed { error, interrupted: None })
                                }),
                                None => Err(BatchFailed {
                                    error: Error::Config("no connection".into()),
                                    interrupted: None,
                                }),
                            };
                            let report = report.map_err(|e| {
                                broken = true;
                                let text = chain(&e.error);
                                failed = Some(e);
                                text
                            });
                            (flight, control, Done::Batch(report))
                        }
                    };
                    // Whether the dispatcher gave up on the work first (then its session was
                    // ended, and a new thread replaced this one).
                    let finished_first = control.finish();
                    control.detach();
                    if broken || !finished_first {
                        held = None;
                    }
                    if let Some(failed) = failed
                        && finished_first
                    {
                        interrupted(&db, &worker_id, &failed);
                    }
                    if events.send(Event::Finished { flight, done }).is_err() || !finished_first {
                        return;
                    }
                }
            })
            .map(|_| ())
            .map_err(|source| Error::Io { what: "failed to start an executor thread", source })
    }
}

/// A connection for jobs, with the session handle a watcher needs to end it, ready for `claims`.
fn connect(db: &Database, claims: &[BatchTicket]) -> Option<Held> {
    let opened = crate::store::connect(&db.raw_url(), db.backend()).and_then(|mut conn| {
        conn.session_prepare_for_jobs()?;
        for ticket in claims {
            if let Err(e) = batch::prepare_claim(db, &mut conn, ticket) {
                tracing::warn!(error = %chain(&e), channel = %ticket.channel.node, "cannot prepare a claim");
            }
        }
        let session = conn.session().ok();
        Ok(Held { conn, session })
    });
    opened.map_err(|e| tracing::error!(error = %chain(&e), "no connection to run jobs")).ok()
}

/// A batch failed as a whole with a job running: that job runs alone from now on, and the
/// failure counts as an interruption (the first few cost no try), so a job that kills its own
/// session or breaks its transaction cannot take batch after batch down.
fn interrupted(db: &Database, worker_id: &str, failed: &BatchFailed) {
    let Some(id) = failed.interrupted else { return };
    tracing::warn!(job_id = id, error = %chain(&failed.error), "a batch failed under a job; it runs alone from now on");
    let ending = Ending::Interrupted { reason: format!("its batch failed under it: {}", failed.error) };
    let settled =
        db.conn().and_then(|mut conn| alone::settle_id(db, &mut conn, id, "", None, ending, worker_id));
    if let Err(e) = settled {
        tracing::warn!(job_id = id, error = %chain(&e), "cannot mark a job to run alone now");
    }
}
