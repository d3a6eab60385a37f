//! What the queue needs from an application's model: a stable name and loading records by id.

use crate::connection::JobConnection;

/// A Diesel model whose methods can be queued. Derive it with `#[derive(queue_diesel::Model)]`.
pub trait Model: Sized + 'static {
    /// Stable name stored in job rows (`#[queue(model = "res.partner")]`, default: the table name).
    const MODEL_NAME: &'static str;

    /// The record's id, stored in the job.
    fn record_id(&self) -> i64;
}

/// Loading a model's records by id on connections of type `C`. `#[derive(Model)]` implements it
/// for every connection type the model's Diesel derives can load from: a model with
/// PostgreSQL-only column types loads on `PgConnection` only, and its job methods take
/// `env: &Env<PgConnection>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be loaded on a `{C}`",
    label = "the records of this job method are loaded on a `{C}`",
    note = "a job method's records load on the connection type of its `env` parameter (`Env` is `Env<AnyConnection>`); a model whose columns exist on one backend only takes `env: &Env<PgConnection>` or `env: &Env<SqliteConnection>`"
)]
pub trait LoadRecords<C: JobConnection>: Model {
    /// Load the records with these ids; ids of deleted records are simply absent.
    fn load_by_ids(conn: &mut C, ids: &[i64]) -> diesel::QueryResult<Vec<Self>>;
}

/// The records a queued call runs on: one record, a slice, a `Vec` or an array of them.
pub trait Records<M: Model> {
    /// The ids to store in the job, in order.
    fn record_ids(&self) -> Vec<i64>;
}

impl<M: Model> Records<M> for &M {
    fn record_ids(&self) -> Vec<i64> {
        vec![self.record_id()]
    }
}

impl<M: Model> Records<M> for &[M] {
    fn record_ids(&self) -> Vec<i64> {
        self.iter().map(Model::record_id).collect()
    }
}

impl<M: Model> Records<M> for &Vec<M> {
    fn record_ids(&self) -> Vec<i64> {
        self.iter().map(Model::record_id).collect()
    }
}

impl<M: Model, const N: usize> Records<M> for &[M; N] {
    fn record_ids(&self) -> Vec<i64> {
        self.iter().map(Model::record_id).collect()
    }
}

impl<M: Model> Records<M> for &[&M] {
    fn record_ids(&self) -> Vec<i64> {
        self.iter().map(|m| m.record_id()).collect()
    }
}

/// No records: a call on the model itself (queue_job's calls on an empty recordset).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoRecords;

impl<M: Model> Records<M> for NoRecords {
    fn record_ids(&self) -> Vec<i64> {
        Vec::new()
    }
}
