//! The queue's schema, in steps: each step's SQL is embedded from `migrations/<backend>/<step>/`
//! and recorded, once applied, in the queue's own table `queue_schema_migrations`. The
//! application's Diesel migrations (`__diesel_schema_migrations`) are never touched, so
//! `diesel migration run`, `revert` and `redo` see only the application's own steps.
//!
//! Two ways in: the queue applies its pending steps when a database opens (the default), or the
//! application copies [`script`]'s SQL into a migration of its own (`queue-worker migrate
//! --print`), which records the steps as applied so the queue finds nothing to do.

use crate::connection::Backend;
use crate::error::{Error, Result};

/// One step of the schema.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Step {
    /// `2026-11-25-000001_create_queue_job`: the folder's name, which orders the steps.
    pub name: &'static str,
    /// The SQL that applies it.
    pub up: &'static str,
    /// The SQL that undoes it.
    pub down: &'static str,
}

impl Step {
    /// The version Diesel's own migration table would give this step (its name's date and
    /// number without dashes): how steps applied by earlier releases are recognised.
    fn diesel_version(&self) -> String {
        self.name.split('_').next().unwrap_or(self.name).replace('-', "")
    }
}

macro_rules! steps {
    ($backend:literal: $($name:literal),* $(,)?) => {
        &[$(Step {
            name: $name,
            up: include_str!(concat!("../../migrations/", $backend, "/", $name, "/up.sql")),
            down: include_str!(concat!("../../migrations/", $backend, "/", $name, "/down.sql")),
        }),*]
    };
}

const SQLITE: &[Step] = steps!("sqlite":
    "2026-11-25-000001_create_queue_job",
    "2026-11-25-000002_claim_order_identity_key",
    "2026-11-25-000003_dependencies",
    "2026-12-02-000005_isolation",
    "2026-12-02-000006_progress",
    "2026-12-02-000007_channel_pause",
    "2026-12-02-000008_channel_start",
    "2026-12-03-000009_schedules",
);

const POSTGRES: &[Step] = steps!("postgres":
    "2026-11-25-000001_create_queue_job",
    "2026-11-25-000002_claim_order_identity_key",
    "2026-11-25-000003_dependencies",
    "2026-11-26-000004_autovacuum",
    "2026-12-02-000005_isolation",
    "2026-12-02-000006_progress",
    "2026-12-02-000007_channel_pause",
    "2026-12-02-000008_channel_start",
    "2026-12-03-000009_schedules",
);

/// The steps of `backend`'s schema, in order.
pub fn steps(backend: Backend) -> &'static [Step] {
    match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }
}

const VERSIONS: &str = "CREATE TABLE IF NOT EXISTS queue_schema_migrations (\n    \
    version TEXT PRIMARY KEY,\n    \
    run_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP\n);\n";

fn record(step: &Step) -> String {
    format!("INSERT INTO queue_schema_migrations (version) VALUES ('{}');\n", step.name)
}

/// The whole schema of `backend` as one SQL script, for an application that runs the queue's
/// schema from its own migrations: `up` creates it and records every step as applied; the
/// other direction drops it.
pub fn script(backend: Backend, up: bool) -> String {
    let mut sql = String::new();
    if up {
        sql.push_str("-- The job queue's tables (queue-worker migrate --print).\n");
        sql.push_str(VERSIONS);
        for step in steps(backend) {
            sql.push_str(&format!("\n-- {}\n{}\n", step.name, step.up.trim_end()));
            sql.push('\n');
            sql.push_str(&record(step));
        }
    } else {
        sql.push_str("-- Drops the job queue's tables (queue-worker migrate --print --down).\n");
        for step in steps(backend).iter().rev() {
            sql.push_str(&format!("\n-- {}\n{}\n", step.name, step.down.trim_end()));
        }
        sql.push_str("\nDROP TABLE queue_schema_migrations;\n");
    }
    sql
}

/// Called as each step is applied: its name, how many are applied so far, how many in all.
pub type OnStep<'a> = &'a mut dyn FnMut(&str, usize, usize);

/// Apply the pending steps on `c`, each in a transaction with its record, telling `on_step` of
/// each. The caller makes sure no other process migrates at the same time (a lock on
/// PostgreSQL; SQLite's write lock).
pub(super) fn migrate<C>(
    c: &mut C,
    backend: Backend,
    applied: impl Fn(&mut C) -> Result<Vec<String>>,
    on_step: OnStep<'_>,
) -> Result<()>
where
    C: diesel::Connection,
{
    let fail = |step: &str| {
        let step = step.to_owned();
        move |e: diesel::result::Error| Error::Migration(format!("step {step}: {e}").into())
    };
    c.batch_execute(VERSIONS).map_err(fail("create queue_schema_migrations"))?;
    adopt_diesel_records(c, backend)?;
    let done = applied(c)?;
    let pending: Vec<&Step> = steps(backend).iter().filter(|s| !done.iter().any(|d| d == s.name)).collect();
    for (i, step) in pending.iter().enumerate() {
        c.transaction(|c| {
            c.batch_execute(step.up)?;
            c.batch_execute(&record(step))
        })
        .map_err(fail(step.name))?;
        tracing::info!(step = step.name, "queue schema step applied");
        on_step(step.name, i + 1, pending.len());
    }
    Ok(())
}

/// Releases before this one recorded their steps in Diesel's own table, where they got in the
/// way of the application's `diesel migration revert`: move those records to the queue's table.
fn adopt_diesel_records<C: diesel::Connection>(c: &mut C, backend: Backend) -> Result<()> {
    let steps = steps(backend);
    let versions = steps.iter().map(|s| format!("'{}'", s.diesel_version())).collect::<Vec<_>>().join(", ");
    // Runs only where Diesel's table exists: the statement fails harmlessly elsewhere, in its own
    // transaction (on PostgreSQL a failed statement would spoil an enclosing one).
    let adopted = c.transaction(|c| {
        let mut sql = String::new();
        for step in steps {
            sql.push_str(&format!(
                "INSERT INTO queue_schema_migrations (version) SELECT '{name}' WHERE EXISTS \
                 (SELECT 1 FROM __diesel_schema_migrations WHERE version = '{version}') \
                 AND NOT EXISTS (SELECT 1 FROM queue_schema_migrations WHERE version = '{name}');\n",
                name = step.name,
                version = step.diesel_version(),
            ));
        }
        sql.push_str(&format!("DELETE FROM __diesel_schema_migrations WHERE version IN ({versions});"));
        c.batch_execute(&sql)
    });
    if let Err(e) = adopted {
        tracing::debug!(error = %e, "no queue step recorded in __diesel_schema_migrations");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every folder of `migrations/<backend>` is a listed step, in order, and the reverse.
    #[test]
    fn every_migration_folder_is_a_step() {
        for backend in [Backend::Sqlite, Backend::Postgres] {
            let dir =
                std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(backend.name());
            let mut folders: Vec<String> = std::fs::read_dir(&dir)
                .expect("migrations folder")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            folders.sort();
            let listed: Vec<&str> = steps(backend).iter().map(|s| s.name).collect();
            assert_eq!(folders, listed, "{}", dir.display());
            assert!(listed.is_sorted());
        }
    }

    #[test]
    fn the_script_records_every_step() {
        let up = script(Backend::Postgres, true);
        assert!(up.starts_with("-- The job queue's tables"));
        assert!(up.contains("CREATE TABLE queue_job ("));
        assert!(up.contains("VALUES ('2026-12-02-000005_isolation')"));
        let down = script(Backend::Postgres, false);
        assert!(down.trim_end().ends_with("DROP TABLE queue_schema_migrations;"));
        assert!(down.find("DROP COLUMN isolation") < down.find("DROP TABLE queue_job;"));
        assert_eq!(steps(Backend::Sqlite)[0].diesel_version(), "20261125000001");
    }
}
