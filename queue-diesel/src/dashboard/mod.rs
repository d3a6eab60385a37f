//! A web dashboard of the queue, server-rendered: jobs with filters and paging, a job with
//! everything about it, actions on one job or on every job a filter matches, channels and
//! functions. No script runs in its pages; job data is escaped.
//!
//! Security: it binds to loopback by default, and refuses any other address without a token
//! (`QUEUE_DASHBOARD_TOKEN`). Actions always need the token, and are refused from other sites:
//! they take a form field only this server's pages carry, and a request whose `Origin` is not
//! the dashboard's own. A browser gives the token once (`?token=…`); the dashboard keeps it in a
//! cookie that browsers send only to it, and only from its own pages (`SameSite=Strict`).

mod pages;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;

use queue_core::ChannelConfig;

use crate::database::Database;
use crate::error::{Error, Result};

/// How to serve the dashboard.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct DashboardConfig {
    /// Address to listen on; loopback unless a token is set.
    pub bind: String,
    /// The secret that actions (and, off loopback, every page) need.
    pub token: Option<String>,
    /// The channels the workers run, for the channels page.
    pub channels: ChannelConfig,
    /// Links to the records a job works on, per model: `res.partner` →
    /// `https://erp.example.org/partners/{id}` (`{id}` is replaced by each record id).
    pub links: Vec<(String, String)>,
    /// Seconds between refreshes of the list pages; 0 for none.
    pub refresh_secs: u32,
}

impl DashboardConfig {
    /// Serve on `bind`, read-only unless a token is given with [`DashboardConfig::token`].
    pub fn new(bind: impl Into<String>) -> DashboardConfig {
        DashboardConfig {
            bind: bind.into(),
            token: None,
            channels: ChannelConfig::default(),
            links: Vec::new(),
            refresh_secs: 10,
        }
    }

    /// The secret actions need (an empty one is none).
    #[must_use]
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// The channels the workers run.
    #[must_use]
    pub fn channels(mut self, channels: ChannelConfig) -> Self {
        self.channels = channels;
        self
    }

    /// A link template per model, `model=https://…/{id}`; a malformed one is refused.
    pub fn link(mut self, spec: &str) -> Result<Self> {
        let Some((model, template)) = spec.split_once('=') else {
            return Err(Error::Config(format!("expected model=url-template in {spec:?}")));
        };
        if model.trim().is_empty() || !template.contains("{id}") {
            return Err(Error::Config(format!(
                "expected model=url-template with {{id}} in the template, got {spec:?}"
            )));
        }
        self.links.push((model.trim().to_owned(), template.trim().to_owned()));
        Ok(self)
    }

    /// Seconds between refreshes of the list pages; 0 for none.
    #[must_use]
    pub fn refresh_secs(mut self, secs: u32) -> Self {
        self.refresh_secs = secs;
        self
    }
}

/// What every request handler shares.
#[derive(Debug)]
struct Shared {
    db: Database,
    config: DashboardConfig,
    /// Carried by the forms of this server's pages: a request without it did not come from one.
    form_key: String,
    /// It listens on loopback only: pages are readable without the token.
    loopback: bool,
}

/// Serve the dashboard of `db` on a thread of its own, until the process ends. Returns the
/// address bound (with the port chosen, for port 0).
pub fn serve(db: Database, config: DashboardConfig) -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(&config.bind)
        .map_err(|source| Error::Io { what: "cannot listen for the dashboard", source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| Error::Io { what: "cannot listen for the dashboard", source })?;
    if !bound.ip().is_loopback() && config.token.is_none() {
        return Err(Error::Config(format!(
            "the dashboard would listen on {bound}, which is not loopback, without a token: set QUEUE_DASHBOARD_TOKEN (or --token), or bind to 127.0.0.1"
        )));
    }
    listener
        .set_nonblocking(true)
        .map_err(|source| Error::Io { what: "cannot listen for the dashboard", source })?;
    let form_key = crate::JobId::new().to_string();
    let shared = Arc::new(Shared { db, config, form_key, loopback: bound.ip().is_loopback() });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("queue-dashboard")
        .enable_io()
        .build()
        .map_err(|source| Error::Io { what: "cannot start the dashboard's runtime", source })?;
    std::thread::Builder::new()
        .name("queue-dashboard".into())
        .spawn(move || {
            runtime.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => return tracing::error!(error = %e, "the dashboard cannot listen"),
                };
                if let Err(e) = axum::serve(listener, routes::router(shared)).await {
                    tracing::error!(error = %e, "the dashboard stopped");
                }
            });
        })
        .map_err(|source| Error::Io { what: "failed to start the dashboard thread", source })?;
    tracing::info!(address = %bound, "dashboard at http://{bound}/");
    Ok(bound)
}
