//! The savepoints that keep each job's writes apart inside a transaction shared by several jobs.
//!
//! A savepoint is taken only when a job first touches the connection (a job that never does
//! needs none, and one that fails before touching it has nothing to roll back). A job that fails
//! is rolled back to its savepoint, which stays, empty, for the next job to use. Savepoints are
//! never released: each job's is nested in the one before, and the transaction's commit ends them
//! all; a transaction takes at most a budget of them (PostgreSQL caches 64 subtransactions per
//! transaction).
//!
//! A PostgreSQL job can also return `Ok` after one of its statements failed, which leaves the
//! transaction aborted: the next statement anyone sends fails. That job is the one that wrote
//! last, so whoever meets the failure rolls it back to its savepoint and names it
//! ([`Isolation::take_blamed`]); the job that met it goes on untouched.

use std::cell::{Cell, RefCell};

use crate::connection::AnyConnection;
use crate::error::{Error, Result};
use crate::store::{Conflict, Store};

/// Where the transaction's latest savepoint stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// None taken yet.
    None,
    /// Taken, nothing written after it: the next job that touches the connection uses it.
    Fresh,
    /// The job with this row id wrote after it.
    Used(i64),
    /// The queue itself wrote after it (an outcome it stored): no job may roll back to it.
    Kept,
}

/// The savepoint book of one transaction.
#[derive(Debug)]
pub(crate) struct Isolation {
    budget: usize,
    taken: Cell<usize>,
    mark: Cell<Mark>,
    /// The job running now, and whether it has touched the connection.
    current: Cell<i64>,
    touched: Cell<bool>,
    /// Jobs found to have left the transaction aborted, rolled back to their savepoint.
    blamed: RefCell<Vec<i64>>,
    /// Why the current job's savepoint could not be taken: the transaction is unusable.
    failure: RefCell<Option<String>>,
}

impl Isolation {
    /// A book for a transaction that may take `budget` savepoints.
    pub(crate) fn new(budget: usize) -> Isolation {
        Isolation {
            budget,
            taken: Cell::new(0),
            mark: Cell::new(Mark::None),
            current: Cell::new(0),
            touched: Cell::new(false),
            blamed: RefCell::new(Vec::new()),
            failure: RefCell::new(None),
        }
    }

    /// Job `id` starts.
    pub(crate) fn start(&self, id: i64) {
        self.current.set(id);
        self.touched.set(false);
    }

    /// True when the transaction has taken all the savepoints it may: it should commit before
    /// another job runs.
    pub(crate) fn exhausted(&self) -> bool {
        self.taken.get() >= self.budget
    }

    /// Before the current job's first statement: make sure a savepoint lies between it and the
    /// jobs before it. Called by `Env::try_conn`.
    pub(crate) fn enter(&self, conn: &mut AnyConnection) -> Result<()> {
        if self.touched.replace(true) {
            return Ok(());
        }
        let me = Mark::Used(self.current.get());
        if self.mark.get() == Mark::Fresh {
            self.mark.set(me);
            return Ok(());
        }
        match conn.savepoint_take() {
            Ok(()) => {
                self.taken.set(self.taken.get() + 1);
                self.mark.set(me);
                Ok(())
            }
            Err(e) => {
                if self.recover(conn, &e).is_some() {
                    // The savepoint the rollback kept is this job's now.
                    self.mark.set(me);
                    return Ok(());
                }
                *self.failure.borrow_mut() = Some(crate::run::chain(&e));
                Err(e)
            }
        }
    }

    /// The queue wrote something of its own (an outcome, a freed key) that a later job's
    /// rollback must not undo.
    pub(crate) fn wrote(&self) {
        if self.mark.get() == Mark::Fresh {
            self.mark.set(Mark::Kept);
        }
    }

    /// After the current job failed: roll its writes back, if it made any.
    pub(crate) fn undo(&self, conn: &mut AnyConnection) -> Result<()> {
        if self.touched.get() && self.mark.get() == Mark::Used(self.current.get()) {
            conn.savepoint_rollback()?;
            self.mark.set(Mark::Fresh);
        }
        Ok(())
    }

    /// A statement failed with `error`: if the transaction was left aborted by the job that
    /// wrote last, roll that job back to its savepoint and return its id (also kept for
    /// [`Isolation::take_blamed`]). `None` when the error is something else.
    pub(crate) fn recover(&self, conn: &mut AnyConnection, error: &Error) -> Option<i64> {
        let Mark::Used(writer) = self.mark.get() else { return None };
        // An aborted transaction shows as SQLSTATE 25P02 (PostgreSQL only: a failed SQLite
        // statement leaves its transaction usable).
        if Conflict::of(error) != Some(Conflict::AbortedTransaction) {
            return None;
        }
        conn.savepoint_rollback().ok()?;
        self.mark.set(Mark::Fresh);
        self.blamed.borrow_mut().push(writer);
        Some(writer)
    }

    /// Jobs found since the last call to have left the transaction aborted (their writes were
    /// rolled back).
    pub(crate) fn take_blamed(&self) -> Vec<i64> {
        std::mem::take(&mut *self.blamed.borrow_mut())
    }

    /// Why the current job's savepoint could not be taken, if it could not.
    pub(crate) fn take_failure(&self) -> Option<String> {
        self.failure.borrow_mut().take()
    }
}
