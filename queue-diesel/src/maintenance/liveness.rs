//! How a worker shows it is alive without writing anything.
//!
//! PostgreSQL: a running job's transaction holds its row locked (`FOR UPDATE`) from its first
//! statement; a worker that dies loses its connection and its locks with it, so a `started` row
//! nobody holds is an orphan.
//!
//! SQLite (one host by nature): each process that claims jobs holds an exclusive lock on a file
//! named after its worker id, beside the database (`<db>.workers/<id>.lock`); the operating system
//! drops the lock when the process dies, however it dies. A worker id whose file can be locked by
//! someone else belongs to a dead process.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use crate::error::{Error, Result};

/// Lock files held by this process, by path: kept open (and locked) until the process ends.
fn held() -> &'static Mutex<HashMap<PathBuf, File>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, File>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The folder of a SQLite database's liveness files.
pub fn folder(database_path: &str) -> PathBuf {
    PathBuf::from(format!("{database_path}.workers"))
}

fn file_for(folder: &Path, worker_id: &str) -> PathBuf {
    let safe: String = worker_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    folder.join(format!("{safe}.lock"))
}

/// Hold the liveness lock of `worker_id` for the rest of this process's life.
pub fn hold(database_path: &str, worker_id: &str) -> Result<()> {
    let folder = folder(database_path);
    let path = file_for(&folder, worker_id);
    let mut held = held().lock().unwrap_or_else(|p| p.into_inner());
    if held.contains_key(&path) {
        return Ok(());
    }
    std::fs::create_dir_all(&folder)
        .map_err(|source| Error::Io { what: "failed to create the liveness folder", source })?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| Error::Io { what: "failed to open a liveness file", source })?;
    file.lock().map_err(|source| Error::Io { what: "failed to lock a liveness file", source })?;
    held.insert(path, file);
    Ok(())
}

/// True when the process that held `worker_id`'s lock is gone (or never held one). Removes the
/// file of a dead worker.
pub fn is_dead(database_path: &str, worker_id: &str) -> bool {
    let path = file_for(&folder(database_path), worker_id);
    if held().lock().unwrap_or_else(|p| p.into_inner()).contains_key(&path) {
        return false;
    }
    let Ok(file) = OpenOptions::new().write(true).open(&path) else { return true };
    match file.try_lock() {
        Ok(()) => {
            let _ = std::fs::remove_file(&path);
            true
        }
        Err(TryLockError::WouldBlock) => false,
        Err(TryLockError::Error(_)) => false,
    }
}
