//! Diesel's view of the queue's own table. The SQL lives in `migrations/`.

diesel::table! {
    /// One row per job, in every state.
    queue_job (id) {
        /// Row id: creation order.
        id -> BigInt,
        /// Public id (UUID text).
        uuid -> Text,
        /// State name, see `JobState`.
        state -> Text,
        /// Registered function name.
        func -> Text,
        /// Model name of the records.
        model -> Text,
        /// JSON array of record ids.
        record_ids -> Text,
        /// JSON object of arguments.
        args -> Text,
        /// JSON object of context values.
        context -> Text,
        /// User the job runs for.
        user_id -> Nullable<BigInt>,
        /// Lower runs first.
        priority -> Integer,
        /// Not before this.
        eta -> Nullable<Timestamp>,
        /// Deadline used in ordering.
        expected_at -> Nullable<Timestamp>,
        /// Channel name.
        channel -> Text,
        /// Identity key.
        identity_key -> Nullable<Text>,
        /// Tries started.
        attempts -> Integer,
        /// Retries allowed, 0 = forever.
        max_retries -> Integer,
        /// Human description.
        description -> Text,
        /// Result for people.
        result -> Nullable<Text>,
        /// Error name.
        exc_name -> Nullable<Text>,
        /// Error message.
        exc_message -> Nullable<Text>,
        /// Error details.
        exc_info -> Nullable<Text>,
        /// Queued at.
        date_created -> Timestamp,
        /// Taken by a worker at.
        date_enqueued -> Nullable<Timestamp>,
        /// Started at.
        date_started -> Nullable<Timestamp>,
        /// Finished at.
        date_done -> Nullable<Timestamp>,
        /// Worker holding the job.
        worker_id -> Nullable<Text>,
        /// Token of the current claim.
        lease_token -> Nullable<Text>,
        /// Some job depends on this one.
        has_dependents -> Bool,
        /// How far it is kept apart from other jobs (0 shares batches, 1 its own transaction,
        /// 2 no other job beside it in its worker).
        isolation -> Integer,
        /// Runs stopped by something that was not the job's fault.
        interruptions -> Integer,
        /// What queued it, when not the application's code (`schedule:<name>`).
        origin -> Nullable<Text>,
    }
}

diesel::table! {
    /// A child job waits until each of its parents is done.
    queue_job_dependency (child_id, parent_id) {
        /// The waiting job.
        child_id -> BigInt,
        /// A job it waits for.
        parent_id -> BigInt,
    }
}

diesel::table! {
    /// How far running jobs say they are: one row per job that reported progress.
    queue_job_progress (job_id) {
        /// The job's row id.
        job_id -> BigInt,
        /// Units done.
        done -> BigInt,
        /// Units in all.
        total -> BigInt,
        /// When it was reported.
        updated_at -> Timestamp,
    }
}

diesel::table! {
    /// Channels an operator paused.
    queue_channel_pause (channel) {
        /// The channel's full name; channels below it are paused too.
        channel -> Text,
        /// When it was paused.
        paused_at -> Timestamp,
    }
}

diesel::table! {
    /// Recent job starts of channels with a throttle or a rate limit.
    queue_channel_start (id) {
        /// Row id.
        id -> BigInt,
        /// The configured channel.
        channel -> Text,
        /// When a worker took the right to start one of its jobs.
        started_at -> Timestamp,
    }
}

diesel::table! {
    /// Periodic schedules: the last tick each one dealt with, shared by every worker.
    queue_schedule (name) {
        /// The schedule's name.
        name -> Text,
        /// Every tick up to this one is queued or dropped.
        last_tick -> Timestamp,
        /// When a worker last wrote the row.
        updated_at -> Timestamp,
    }
}

diesel::joinable!(queue_job_dependency -> queue_job (parent_id));
diesel::allow_tables_to_appear_in_same_query!(queue_job, queue_job_dependency, queue_job_progress);
