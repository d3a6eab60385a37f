//! What operators read: the jobs a filter matches, counts per channel and state, how a job
//! relates to others, the functions of pending jobs nobody here can run, and whether the schema
//! is up to date. Read-only: nothing here writes.

use chrono::{DateTime, NaiveDateTime, Utc};
use diesel::prelude::*;
use queue_core::{JobId, JobState};

use super::ListParams;
use super::rows::Version;
use crate::connection::{AnyConnection, with_backend};
use crate::error::{Error, Result};
use crate::schema::{queue_job, queue_job_dependency};

/// One channel's jobs, as [`Database::stats`](crate::Database::stats) counts them.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ChannelStats {
    /// The channel's full name (`root.export`).
    pub channel: String,
    /// Jobs per state; states without jobs are left out.
    pub counts: Vec<(JobState, i64)>,
    /// When the longest-waiting due `pending` job became due (its eta, or when it was queued).
    pub oldest_due: Option<DateTime<Utc>>,
}

impl ChannelStats {
    /// Jobs of the channel in `state`.
    pub fn count(&self, state: JobState) -> i64 {
        self.counts.iter().find(|(s, _)| *s == state).map_or(0, |(_, n)| *n)
    }
}

/// The queue at a glance.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Stats {
    /// Per channel that has jobs, by name.
    pub channels: Vec<ChannelStats>,
    /// Jobs that finished `done` since each of the times asked for, in the same order.
    pub done_since: Vec<i64>,
    /// Jobs that ended `failed` since each of the times asked for, in the same order.
    pub failed_since: Vec<i64>,
}

/// A job's relatives through dependencies: uuid and state of each.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Family {
    /// The jobs it waits for.
    pub parents: Vec<(JobId, JobState)>,
    /// The jobs that wait for it.
    pub children: Vec<(JobId, JobState)>,
}

/// Operators' reads.
pub trait Views {
    /// Every job `params` matches (its limit aside), oldest first.
    fn job_uuids(&mut self, params: &ListParams) -> Result<Vec<JobId>>;
    /// How many jobs `params` matches (its limit and offset aside).
    fn job_count_matching(&mut self, params: &ListParams) -> Result<i64>;
    /// Counts per channel and state, the oldest due pending job per channel, and the jobs done
    /// and failed since each of `since`; `now` decides which pending jobs are due.
    fn job_stats(&mut self, now: DateTime<Utc>, since: &[DateTime<Utc>]) -> Result<Stats>;
    /// The parents and children of job `id`.
    fn job_family(&mut self, id: i64) -> Result<Family>;
    /// Functions of pending jobs that are not in `known`, with how many jobs each.
    fn job_unknown_functions(&mut self, known: &[&str]) -> Result<Vec<(String, i64)>>;
    /// The schema's steps not applied yet (all of them where the queue's tables are missing).
    fn schema_pending(&mut self) -> Result<Vec<&'static str>>;
}

impl Views for AnyConnection {
    fn job_uuids(&mut self, params: &ListParams) -> Result<Vec<JobId>> {
        use queue_job::dsl;
        let uuids: Vec<String> = with_backend!(self, c => {
            let mut query = dsl::queue_job.select(dsl::uuid).into_boxed();
            super::jobs::filter_jobs!(query, params);
            query.order(dsl::id.asc()).load(c)
        })
        .map_err(Error::query("list jobs"))?;
        uuids
            .iter()
            .map(|u| u.parse::<JobId>().map_err(|_| Error::Config(format!("a job has a malformed uuid {u:?}"))))
            .collect()
    }

    fn job_count_matching(&mut self, params: &ListParams) -> Result<i64> {
        use queue_job::dsl;
        with_backend!(self, c => {
            let mut query = dsl::queue_job.count().into_boxed();
            super::jobs::filter_jobs!(query, params);
            query.get_result(c)
        })
        .map_err(Error::query("count jobs"))
    }

    fn job_stats(&mut self, now: DateTime<Utc>, since: &[DateTime<Utc>]) -> Result<Stats> {
        use queue_job::dsl;
        let counts: Vec<(String, String, i64)> = with_backend!(self, c => dsl::queue_job
            .group_by((dsl::channel, dsl::state))
            .select((dsl::channel, dsl::state, diesel::dsl::count_star()))
            .load(c))
        .map_err(Error::query("count jobs per channel"))?;
        let now = now.naive_utc();
        let oldest: Vec<(String, Option<NaiveDateTime>)> = with_backend!(self, c => dsl::queue_job
            .filter(dsl::state.eq(JobState::Pending.as_str()))
            .filter(dsl::eta.le(now))
            .group_by(dsl::channel)
            .select((dsl::channel, diesel::dsl::min(dsl::eta)))
            .load(c))
        .map_err(Error::query("find the oldest pending jobs"))?;
        let created: Vec<(String, Option<NaiveDateTime>)> = with_backend!(self, c => dsl::queue_job
            .filter(dsl::state.eq(JobState::Pending.as_str()))
            .filter(dsl::eta.is_null())
            .group_by(dsl::channel)
            .select((dsl::channel, diesel::dsl::min(dsl::date_created)))
            .load(c))
        .map_err(Error::query("find the oldest pending jobs"))?;
        let mut stats = Stats::default();
        for (channel, state, n) in counts {
            let state = state.parse::<JobState>()?;
            match stats.channels.iter_mut().find(|c| c.channel == channel) {
                Some(found) => found.counts.push((state, n)),
                None => stats.channels.push(ChannelStats { channel, counts: vec![(state, n)], oldest_due: None }),
            }
        }
        for (channel, due) in oldest.into_iter().chain(created) {
            let Some(due) = due else { continue };
            if let Some(found) = stats.channels.iter_mut().find(|c| c.channel == channel) {
                let due = due.and_utc();
                found.oldest_due = Some(found.oldest_due.map_or(due, |d| d.min(due)));
            }
        }
        stats.channels.sort_by(|a, b| a.channel.cmp(&b.channel));
        for channel in &mut stats.channels {
            channel.counts.sort();
        }
        for at in since {
            let at = at.naive_utc();
            let finished: Vec<(String, i64)> = with_backend!(self, c => dsl::queue_job
                .filter(dsl::date_done.ge(at))
                .filter(dsl::state.eq_any([JobState::Done.as_str(), JobState::Failed.as_str()]))
                .group_by(dsl::state)
                .select((dsl::state, diesel::dsl::count_star()))
                .load(c))
            .map_err(Error::query("count the jobs finished lately"))?;
            let of = |state: JobState| finished.iter().find(|(s, _)| s == state.as_str()).map_or(0, |(_, n)| *n);
            stats.done_since.push(of(JobState::Done));
            stats.failed_since.push(of(JobState::Failed));
        }
        Ok(stats)
    }

    fn job_family(&mut self, id: i64) -> Result<Family> {
        use queue_job::dsl;
        use queue_job_dependency as dep;
        let parents: Vec<(String, String)> = with_backend!(self, c => dep::table
            .inner_join(dsl::queue_job.on(dsl::id.eq(dep::parent_id)))
            .filter(dep::child_id.eq(id))
            .select((dsl::uuid, dsl::state))
            .order(dsl::id)
            .load(c))
        .map_err(Error::query("read a job's parents"))?;
        let children: Vec<(String, String)> = with_backend!(self, c => dep::table
            .inner_join(dsl::queue_job.on(dsl::id.eq(dep::child_id)))
            .filter(dep::parent_id.eq(id))
            .select((dsl::uuid, dsl::state))
            .order(dsl::id)
            .load(c))
        .map_err(Error::query("read a job's children"))?;
        let decode = |rows: Vec<(String, String)>| -> Result<Vec<(JobId, JobState)>> {
            rows.into_iter()
                .map(|(uuid, state)| {
                    let uuid = uuid
                        .parse::<JobId>()
                        .map_err(|_| Error::Config(format!("a job has a malformed uuid {uuid:?}")))?;
                    Ok((uuid, state.parse::<JobState>()?))
                })
                .collect()
        };
        Ok(Family { parents: decode(parents)?, children: decode(children)? })
    }

    fn job_unknown_functions(&mut self, known: &[&str]) -> Result<Vec<(String, i64)>> {
        use queue_job::dsl;
        let known: Vec<String> = known.iter().map(|k| (*k).to_owned()).collect();
        with_backend!(self, c => dsl::queue_job
            .filter(dsl::state.eq(JobState::Pending.as_str()))
            .filter(diesel::dsl::not(dsl::func.eq_any(&known)))
            .group_by(dsl::func)
            .select((dsl::func, diesel::dsl::count_star()))
            .order(dsl::func)
            .load(c))
        .map_err(Error::query("find the functions of pending jobs"))
    }

    fn schema_pending(&mut self) -> Result<Vec<&'static str>> {
        let steps = super::schema::steps(self.backend());
        let applied: std::result::Result<Vec<Version>, _> = with_backend!(self, c => {
            // Its own transaction: on PostgreSQL, a missing table must not spoil an enclosing one.
            c.transaction(|c| diesel::sql_query("SELECT version FROM queue_schema_migrations").load(c))
        });
        let applied: Vec<String> = applied.map(|rows| rows.into_iter().map(|r| r.version).collect()).unwrap_or_default();
        Ok(steps.iter().map(|s| s.name).filter(|name| !applied.iter().any(|a| a == name)).collect())
    }
}
