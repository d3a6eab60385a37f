//! A small application whose model methods run as jobs: partners imported from CSV text in chunk
//! jobs (a fan-out), then exported to a file, one export job per batch of partners.
//!
//! The demo (`cargo run -p partners`) shows the three run modes; `src/bin/worker.rs` is this
//! application's own worker binary (`cargo run -p partners --bin worker -- run`).

use std::io::Write;
use std::path::PathBuf;

use diesel::prelude::*;
use queue_diesel::prelude::*;

diesel::table! {
    /// The application's own table.
    partners (id) {
        /// Row id.
        id -> BigInt,
        /// Display name.
        name -> Text,
        /// Mail address; exports refuse partners without a valid one.
        email -> Text,
        /// Language of the user who imported the partner.
        lang -> Text,
        /// How many times the partner was exported.
        exports -> Integer,
    }
}

/// A business partner.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable, Model)]
#[diesel(table_name = partners)]
#[queue(model = "res.partner")]
pub struct Partner {
    /// Row id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Mail address.
    pub email: String,
    /// Language of the importing user.
    pub lang: String,
    /// Export count.
    pub exports: i32,
}

/// Where exports are written: `$PARTNERS_EXPORT_DIR`, else `./partners-out`.
pub fn export_dir() -> PathBuf {
    std::env::var_os("PARTNERS_EXPORT_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("partners-out"))
}

/// The error of an export that cannot be done.
#[derive(Debug)]
pub struct InvalidEmail(pub String);

impl std::fmt::Display for InvalidEmail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "partner {:?} has no valid email address", self.0)
    }
}

impl std::error::Error for InvalidEmail {}

#[queueable]
impl Partner {
    /// Import partners from CSV text (`name,email` lines), in chunk jobs of `chunk` lines.
    #[job(channel = "root.import")]
    pub fn import_csv(_records: Vec<Partner>, csv: String, chunk: usize) -> JobResult<String> {
        let rows: Vec<(String, String)> = csv
            .lines()
            .filter_map(|line| line.split_once(','))
            .map(|(name, email)| (name.trim().to_owned(), email.trim().to_owned()))
            .collect();
        let chunks = rows.chunks(chunk.max(1));
        let count = chunks.len();
        for rows in chunks {
            Partner::queue().priority(5).import_chunk(NoRecords, rows.to_vec())?;
        }
        Ok(format!("{} rows in {count} chunk job(s)", rows.len()))
    }

    /// Create the partners of one chunk, in the importing user's language.
    #[job(channel = "root.import")]
    pub fn import_chunk(_records: Vec<Partner>, env: &Env, rows: Vec<(String, String)>) -> JobResult<String> {
        let lang = env.context().get("lang").and_then(|v| v.as_str()).unwrap_or("en").to_owned();
        for (name, email) in &rows {
            diesel::insert_into(partners::table)
                .values((
                    partners::name.eq(name),
                    partners::email.eq(email),
                    partners::lang.eq(&lang),
                    partners::exports.eq(0),
                ))
                .execute(&mut *env.conn())?;
        }
        Ok(format!("imported {} partner(s)", rows.len()))
    }

    /// Export partners to `<export dir>/<target>.csv`.
    #[job(channel = "root.export", max_retries = 3)]
    pub fn export(records: Vec<Partner>, env: &Env, target: String) -> JobResult<String> {
        if let Some(bad) = records.iter().find(|p| !p.email.contains('@')) {
            return Err(InvalidEmail(bad.name.clone()).into());
        }
        let dir = export_dir();
        std::fs::create_dir_all(&dir)?;
        let mut file =
            std::fs::OpenOptions::new().create(true).append(true).open(dir.join(format!("{target}.csv")))?;
        for partner in &records {
            writeln!(
                file,
                "{},{},{},user {}",
                partner.name,
                partner.email,
                partner.lang,
                env.user_id().unwrap_or(0)
            )?;
            diesel::update(partner)
                .set(partners::exports.eq(partners::exports + 1))
                .execute(&mut *env.conn())?;
        }
        Ok(format!("exported {} partner(s) to {target}", records.len()))
    }
}

#[queueable]
impl Partner {
    /// Push partners to a CRM that is busy the first two times (retried by the pattern).
    #[job(channel = "root.export", retry_pattern = "1:1", max_retries = 5)]
    pub fn sync_crm(records: Vec<Partner>, env: &Env) -> JobResult<String> {
        if env.attempt() < 3 {
            return Err(JobError::retry(format!("CRM busy (try {})", env.attempt())));
        }
        Ok(format!("synced {} partner(s) on try {}", records.len(), env.attempt()))
    }

    /// Write a summary once the exports it depends on are done.
    #[job(channel = "root.mail")]
    pub fn send_summary(_records: Vec<Partner>, env: &Env, to: String) -> JobResult<String> {
        let exported: i64 =
            partners::table.filter(partners::exports.gt(0)).count().get_result(&mut *env.conn())?;
        let dir = export_dir();
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("summary.txt"), format!("to {to}: {exported} partner(s) exported\n"))?;
        Ok(format!("summary for {to}: {exported} exported"))
    }
}

/// Create the application's table on either backend.
pub fn create_tables(db: &Database) -> Result<(), queue_diesel::Error> {
    let mut conn = db.conn()?;
    let sql = match db.backend() {
        queue_diesel::Backend::Sqlite => {
            "CREATE TABLE IF NOT EXISTS partners (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, email TEXT NOT NULL, lang TEXT NOT NULL, exports INTEGER NOT NULL DEFAULT 0)"
        }
        queue_diesel::Backend::Postgres => {
            "CREATE TABLE IF NOT EXISTS partners (id BIGSERIAL PRIMARY KEY, name TEXT NOT NULL, email TEXT NOT NULL, lang TEXT NOT NULL, exports INTEGER NOT NULL DEFAULT 0)"
        }
    };
    conn.batch(sql).map_err(|e| queue_diesel::Error::Query { what: "create the partners table", source: e })
}
