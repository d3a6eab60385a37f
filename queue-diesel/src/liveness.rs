//! How a worker shows it is alive, and what it was running, without writing to the database.
//!
//! Each process that runs jobs holds an exclusive lock on a file of its own, named after its
//! worker id, in a folder shared by the workers of a database on one host (SQLite: beside the
//! database, `<db>.workers/`; PostgreSQL: `QUEUE_STATE_DIR`, by default a folder of the temporary
//! directory named after the database). The operating system drops the lock when the process
//! dies, however it dies: a file whose lock can be taken belongs to a dead process.
//!
//! The same file records, one slot per executor, the job each executor is running inside a
//! batch (batch jobs are not marked `started` in the database, so nothing else would tell). The
//! file is memory-mapped: recording a job is two stores to memory, no system call, and the page
//! outlives a process that dies (though not a host that crashes). A worker that finds a dead
//! process's file settles the jobs it names ([`reap`]): their try counts and they run alone from
//! then on, so a job that kills its process cannot take batch after batch down with it.
//!
//! On SQLite the locks also tell the rescuer which `started` jobs are orphans; on PostgreSQL row
//! locks do that.

use std::collections::HashMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{Error, Result};

/// Bytes per slot: the job's row id, then its tries before the run.
const SLOT_BYTES: usize = 16;

/// Lock files held by this process, by path: kept open (and locked) until the process ends.
fn held() -> &'static Mutex<HashMap<PathBuf, File>> {
    static HELD: OnceLock<Mutex<HashMap<PathBuf, File>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The liveness folder of a SQLite database.
pub fn folder_of_sqlite(database_path: &str) -> PathBuf {
    PathBuf::from(format!("{database_path}.workers"))
}

/// The liveness folder of a PostgreSQL database reached through `url` (without its password),
/// under `base`: one per database, shared by the workers of this host.
pub fn folder_of_server(base: &Path, redacted_url: &str) -> PathBuf {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in redacted_url.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    base.join(format!("queue-workers-{hash:016x}"))
}

fn file_for(folder: &Path, worker_id: &str) -> PathBuf {
    let safe: String = worker_id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' { c } else { '_' })
        .collect();
    folder.join(format!("{safe}.lock"))
}

/// Hold the liveness lock of `worker_id` in `folder` for the rest of this process's life.
pub fn hold(folder: &Path, worker_id: &str) -> Result<()> {
    open_held(folder, worker_id, 0).map(|_| ())
}

/// Open (and lock, once per process) the file of `worker_id`, at least `len` bytes long; returns
/// a handle on it.
fn open_held(folder: &Path, worker_id: &str, len: u64) -> Result<File> {
    let path = file_for(folder, worker_id);
    let io = |what: &'static str| move |source| Error::Io { what, source };
    let mut held = held().lock().unwrap_or_else(|p| p.into_inner());
    if !held.contains_key(&path) {
        std::fs::create_dir_all(folder).map_err(io("failed to create the liveness folder"))?;
        let mut file = open_locked(&path).map_err(io("failed to lock a liveness file"))?;
        // A reaper may have removed a dead process's file of the same name while we waited for
        // its lock: lock a file that is still there.
        while file.metadata().map_err(io("failed to read a liveness file"))?.nlink() == 0 {
            file = open_locked(&path).map_err(io("failed to lock a liveness file"))?;
        }
        // A file left by an earlier process of the same id names nothing of ours.
        file.set_len(0).map_err(io("failed to clear a liveness file"))?;
        held.insert(path.clone(), file);
    }
    let file = held.get(&path).ok_or_else(|| Error::Config("liveness file vanished".into()))?;
    if file.metadata().map_err(io("failed to read a liveness file"))?.len() < len {
        file.set_len(len).map_err(io("failed to size a liveness file"))?;
    }
    file.try_clone().map_err(io("failed to open a liveness file"))
}

/// Open (creating it if needed) and lock the file at `path`.
fn open_locked(path: &Path) -> std::io::Result<File> {
    let file = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(path)?;
    file.lock()?;
    Ok(file)
}

/// True when the process that held `worker_id`'s lock in `folder` is gone (or never held one).
pub fn is_dead(folder: &Path, worker_id: &str) -> bool {
    let path = file_for(folder, worker_id);
    if held().lock().unwrap_or_else(|p| p.into_inner()).contains_key(&path) {
        return false;
    }
    let Ok(file) = OpenOptions::new().read(true).write(true).open(&path) else { return true };
    match file.try_lock() {
        Ok(()) => {
            // Its record is read and removed by `reap` (which takes this lock too).
            let _ = file.unlock();
            true
        }
        Err(TryLockError::WouldBlock) => false,
        Err(TryLockError::Error(_)) => false,
    }
}

/// The memory-mapped record of a live worker: one slot per executor thread.
#[derive(Debug)]
pub struct Record {
    map: *mut libc::c_void,
    len: usize,
    slots: usize,
    /// Which slots an executor thread holds (a thread stuck in a job it was given up on keeps
    /// its slot until it ends; its replacement takes another).
    in_use: Vec<std::sync::atomic::AtomicBool>,
}

// SAFETY: the mapping is shared memory written only through atomics.
unsafe impl Send for Record {}
// SAFETY: as above.
unsafe impl Sync for Record {}

impl Record {
    /// Hold `worker_id`'s lock in `folder` and map a record of `slots` slots.
    pub fn open(folder: &Path, worker_id: &str, slots: usize) -> Result<Arc<Record>> {
        let len = slots.max(1) * SLOT_BYTES;
        let file = open_held(folder, worker_id, len as u64)?;
        use std::os::fd::AsRawFd;
        // SAFETY: mapping `len` bytes of a file at least that long, shared, read-write.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(Error::Io {
                what: "failed to map a liveness file",
                source: std::io::Error::last_os_error(),
            });
        }
        let record = Record {
            map,
            len,
            slots: slots.max(1),
            in_use: (0..slots.max(1)).map(|_| std::sync::atomic::AtomicBool::new(false)).collect(),
        };
        for i in 0..record.slots {
            record.word(i, 0).store(0, Ordering::SeqCst);
        }
        Ok(Arc::new(record))
    }

    fn word(&self, slot: usize, word: usize) -> &AtomicI64 {
        let offset = slot * SLOT_BYTES + word * 8;
        debug_assert!(offset + 8 <= self.len);
        // SAFETY: in bounds of the mapping (checked by `Slot::new`), 8-aligned (the mapping is
        // page-aligned, slots are 16 bytes); the mapping lives as long as `self`.
        unsafe { &*(self.map.cast::<u8>().add(offset).cast::<AtomicI64>()) }
    }

    /// A free slot for an executor thread, held until the returned [`Slot`] is dropped; `None`
    /// when every slot is held (the thread's batch jobs then go unrecorded).
    pub fn slot(self: &Arc<Self>) -> Option<Slot> {
        let index = self.in_use.iter().position(|used| {
            used.compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        })?;
        Some(Slot { record: Arc::clone(self), index })
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        for i in 0..self.slots {
            self.word(i, 0).store(0, Ordering::SeqCst);
        }
        // SAFETY: unmapping what `open` mapped; no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.map, self.len);
        }
    }
}

/// One executor's slot in its worker's [`Record`].
#[derive(Debug)]
pub struct Slot {
    record: Arc<Record>,
    index: usize,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.clear();
        self.record.in_use[self.index].store(false, Ordering::SeqCst);
    }
}

impl Slot {
    /// The executor runs job `id` (row id), with `attempts` tries before this run.
    pub fn set(&self, id: i64, attempts: i32) {
        self.record.word(self.index, 1).store(i64::from(attempts), Ordering::SeqCst);
        self.record.word(self.index, 0).store(id, Ordering::SeqCst);
    }

    /// The executor runs no batch job.
    pub fn clear(&self) {
        self.record.word(self.index, 0).store(0, Ordering::SeqCst);
    }
}

/// A dead worker's file, locked by this process until it is dropped or removed.
#[derive(Debug)]
pub struct Dead {
    /// Its worker id, as the file names it.
    pub worker: String,
    /// The jobs its executors were running in batches: row id and tries before the run.
    pub running: Vec<(i64, i32)>,
    path: PathBuf,
    _file: File,
}

impl Dead {
    /// Its jobs were settled: remove the file.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The files in `folder` of workers that died, each locked by this process and read.
pub fn reap(folder: &Path) -> Vec<Dead> {
    let Ok(entries) = std::fs::read_dir(folder) else { return Vec::new() };
    let mut dead = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_none_or(|e| e != "lock") {
            continue;
        }
        if held().lock().unwrap_or_else(|p| p.into_inner()).contains_key(&path) {
            continue;
        }
        let Ok(mut file) = OpenOptions::new().read(true).write(true).open(&path) else { continue };
        if file.try_lock().is_err() {
            continue;
        }
        // Another reaper may have removed it between our open and our lock.
        if file.metadata().map_or(true, |m| m.nlink() == 0) {
            continue;
        }
        let mut bytes = Vec::new();
        if file.read_to_end(&mut bytes).is_err() {
            continue;
        }
        let running = bytes
            .chunks_exact(SLOT_BYTES)
            .filter_map(|slot| {
                let id = i64::from_ne_bytes(slot[..8].try_into().ok()?);
                let attempts = i64::from_ne_bytes(slot[8..].try_into().ok()?);
                (id > 0).then(|| (id, i32::try_from(attempts).unwrap_or(0)))
            })
            .collect();
        let worker = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        dead.push(Dead { worker, running, path, _file: file });
    }
    dead
}
