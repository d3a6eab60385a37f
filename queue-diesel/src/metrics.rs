//! Prometheus metrics of the jobs this process runs, and of the queue it runs them from.
//!
//! Counted once [`enable`] was called (`queue-worker run --metrics ADDR` calls it and serves
//! [`render`] on `http://ADDR/metrics`); before that, recording a job costs one atomic load.
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `queue_jobs_started_total` | counter | function, channel |
//! | `queue_jobs_done_total`, `_failed_total`, `_retried_total`, `_cancelled_total` | counter | function, channel |
//! | `queue_jobs_rescued_total` | counter | function, channel |
//! | `queue_job_run_seconds` | histogram | function, channel |
//! | `queue_job_latency_seconds` (from due to start) | histogram | function, channel |
//! | `queue_batch_jobs` (jobs per batch transaction) | histogram | |
//! | `queue_job_progress_ratio` (running jobs that reported progress) | gauge | uuid, function |
//! | `queue_jobs` (read from the database at each scrape) | gauge | channel, state |
//! | `queue_channel_running`, `queue_channel_capacity`, `queue_channel_paused` | gauge | channel (as configured) |
//! | `queue_pool_connections` | gauge | state (idle, busy) |

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use queue_core::{ChannelConfig, JobState};

use crate::database::Database;
use crate::error::{Error, Result};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    function: String,
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProgressLabels {
    uuid: String,
    function: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    channel: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ChannelLabels {
    channel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    state: &'static str,
}

type Seconds = Family<JobLabels, Histogram, fn() -> Histogram>;

fn seconds() -> Histogram {
    // 0.5 ms to about 4.5 minutes.
    Histogram::new(exponential_buckets(0.0005, 2.0, 20))
}

struct Metrics {
    registry: Registry,
    started: Family<JobLabels, Counter>,
    done: Family<JobLabels, Counter>,
    failed: Family<JobLabels, Counter>,
    retried: Family<JobLabels, Counter>,
    cancelled: Family<JobLabels, Counter>,
    rescued: Family<JobLabels, Counter>,
    run: Seconds,
    latency: Seconds,
    batch: Histogram,
    progress: Family<ProgressLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static METRICS: OnceLock<Metrics> = OnceLock::new();

fn metrics() -> Option<&'static Metrics> {
    if !ENABLED.load(Ordering::Relaxed) {
        return None;
    }
    METRICS.get()
}

/// Start counting the jobs this process runs.
pub fn enable() {
    METRICS.get_or_init(|| {
        let mut registry = Registry::default();
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<JobLabels, Counter>::default();
            registry.register(name, help, family.clone());
            family
        };
        let started = counter(&mut registry, "queue_jobs_started", "Job runs started");
        let done = counter(&mut registry, "queue_jobs_done", "Job runs that ended done");
        let failed = counter(&mut registry, "queue_jobs_failed", "Job runs that ended failed");
        let retried =
            counter(&mut registry, "queue_jobs_retried", "Job runs that ended pending again, to be retried");
        let cancelled = counter(&mut registry, "queue_jobs_cancelled", "Job runs that ended cancelled");
        let rescued =
            counter(&mut registry, "queue_jobs_rescued", "Jobs whose worker was gone, put back or failed");
        let run: Seconds = Family::new_with_constructor(seconds);
        registry.register("queue_job_run_seconds", "How long job bodies ran", run.clone());
        let latency: Seconds = Family::new_with_constructor(seconds);
        registry.register(
            "queue_job_latency_seconds",
            "From when a job was due to when it started",
            latency.clone(),
        );
        let batch = Histogram::new(exponential_buckets(1.0, 2.0, 10));
        registry.register("queue_batch_jobs", "Jobs run per batch transaction", batch.clone());
        let progress = Family::<ProgressLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "queue_job_progress_ratio",
            "How far running jobs of this process said they are, 0 to 1",
            progress.clone(),
        );
        Metrics {
            registry,
            started,
            done,
            failed,
            retried,
            cancelled,
            rescued,
            run,
            latency,
            batch,
            progress,
        }
    });
    ENABLED.store(true, Ordering::Relaxed);
}

fn labels(function: &str, channel: &str) -> JobLabels {
    JobLabels { function: function.to_owned(), channel: channel.to_owned() }
}

/// A job started, `latency` after it became due.
pub(crate) fn job_started(function: &str, channel: &str, latency: Duration) {
    if let Some(m) = metrics() {
        let labels = labels(function, channel);
        m.started.get_or_create(&labels).inc();
        m.latency.get_or_create(&labels).observe(latency.as_secs_f64());
    }
}

/// A job's body ran for `took`.
pub(crate) fn job_ran(function: &str, channel: &str, took: Duration) {
    if let Some(m) = metrics() {
        m.run.get_or_create(&labels(function, channel)).observe(took.as_secs_f64());
    }
}

/// A run left its job in `state`.
pub(crate) fn job_ended(function: &str, channel: &str, state: JobState) {
    let Some(m) = metrics() else { return };
    let family = match state {
        JobState::Done => &m.done,
        JobState::Failed => &m.failed,
        JobState::Cancelled => &m.cancelled,
        JobState::Pending => &m.retried,
        _ => return,
    };
    family.get_or_create(&labels(function, channel)).inc();
}

/// A job whose worker was gone was rescued.
pub(crate) fn job_rescued(function: &str, channel: &str) {
    if let Some(m) = metrics() {
        m.rescued.get_or_create(&labels(function, channel)).inc();
    }
}

/// A running job said it is `ratio` of the way.
pub(crate) fn job_progress(uuid: &queue_core::JobId, function: &str, ratio: f64) {
    if let Some(m) = metrics() {
        let labels = ProgressLabels { uuid: uuid.to_string(), function: function.to_owned() };
        m.progress.get_or_create(&labels).set(ratio);
    }
}

/// A job's run ended: its progress is no longer shown.
pub(crate) fn job_progress_end(uuid: &str, function: &str) {
    if let Some(m) = metrics() {
        m.progress.remove(&ProgressLabels { uuid: uuid.to_owned(), function: function.to_owned() });
    }
}

/// A batch transaction ran `jobs` jobs.
pub(crate) fn batch_ran(jobs: usize) {
    if let Some(m) = metrics()
        && jobs > 0
    {
        m.batch.observe(jobs as f64);
    }
}

/// The metrics in Prometheus' text format: what this process counted, and what `db` holds now
/// (jobs per channel and state; running jobs and capacity per channel of `channels`; the
/// connections of `db`'s pool).
pub fn render(db: &Database, channels: &ChannelConfig) -> Result<String> {
    let stats = db.stats(&[])?;
    let mut now = Registry::default();
    let jobs = Family::<StateLabels, Gauge>::default();
    now.register("queue_jobs", "Jobs in the database, per channel and state", jobs.clone());
    let running = Family::<ChannelLabels, Gauge>::default();
    now.register(
        "queue_channel_running",
        "Jobs started in a configured channel and its unconfigured sub-channels",
        running.clone(),
    );
    let capacity = Family::<ChannelLabels, Gauge>::default();
    now.register("queue_channel_capacity", "Jobs a configured channel may run at once", capacity.clone());
    let paused = Family::<ChannelLabels, Gauge>::default();
    now.register(
        "queue_channel_paused",
        "1 when a configured channel is paused (itself or above)",
        paused.clone(),
    );
    let pauses = db.paused_channels()?;
    let pool = Family::<PoolLabels, Gauge>::default();
    now.register("queue_pool_connections", "Connections of the queue's pool", pool.clone());
    for c in &stats.channels {
        for (state, n) in &c.counts {
            jobs.get_or_create(&StateLabels { channel: c.channel.clone(), state: state.as_str().to_owned() })
                .set(*n);
        }
    }
    for channel in channels.channels() {
        let name = ChannelLabels { channel: channel.name.clone() };
        capacity.get_or_create(&name).set(channel.capacity as i64);
        let held =
            pauses.iter().any(|(p, _)| channel.name == *p || channel.name.starts_with(&format!("{p}.")));
        paused.get_or_create(&name).set(i64::from(held));
        running.get_or_create(&name).set(0);
    }
    for c in &stats.channels {
        let node = channels.node_for(&c.channel).to_owned();
        running.get_or_create(&ChannelLabels { channel: node }).inc_by(c.count(JobState::Started));
    }
    let (connections, idle) = db.pool_state();
    pool.get_or_create(&PoolLabels { state: "idle" }).set(i64::from(idle));
    pool.get_or_create(&PoolLabels { state: "busy" }).set(i64::from(connections.saturating_sub(idle)));
    let mut text = String::new();
    let written = (|| {
        if let Some(m) = METRICS.get() {
            encode_registry(&mut text, &m.registry)?;
        }
        encode_registry(&mut text, &now)?;
        encode_eof(&mut text)
    })();
    written.map_err(|_| Error::Config("cannot write the metrics".into()))?;
    Ok(text)
}

/// Serve [`render`] at `http://addr/metrics` on a thread of its own, until the process ends.
/// Returns the address bound (with the port chosen, for port 0).
pub fn serve(addr: &str, db: Database, channels: ChannelConfig) -> Result<SocketAddr> {
    enable();
    let listener = TcpListener::bind(addr)
        .map_err(|source| Error::Io { what: "cannot listen for metrics scrapes", source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Io { what: "cannot listen for metrics scrapes", source })?;
    std::thread::Builder::new()
        .name("queue-metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &db, &channels) {
                    tracing::debug!(error = %e, "a metrics scrape failed");
                }
            }
        })
        .map_err(|source| Error::Io { what: "failed to start the metrics thread", source })?;
    tracing::info!(address = %bound, "serving metrics at http://{bound}/metrics");
    Ok(bound)
}

/// Answer one HTTP request: the metrics for `GET /metrics`, 404 otherwise.
fn answer(stream: TcpStream, db: &Database, channels: &ChannelConfig) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(&stream);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    // The headers are read and ignored.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let mut parts = request.split_whitespace();
    let (status, kind, body) = match (parts.next(), parts.next().map(|p| p.split('?').next().unwrap_or(p))) {
        (Some("GET"), Some("/metrics")) => match render(db, channels) {
            Ok(text) => ("200 OK", "application/openmetrics-text; version=1.0.0; charset=utf-8", text),
            Err(e) => ("503 Service Unavailable", "text/plain; charset=utf-8", format!("{e}\n")),
        },
        _ => ("404 Not Found", "text/plain; charset=utf-8", "metrics are at /metrics\n".to_owned()),
    };
    let mut stream = &stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
