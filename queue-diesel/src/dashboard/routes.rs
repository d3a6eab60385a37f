//! The dashboard's routes: who may do what, reading the request, and the database calls (on
//! blocking threads).

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDate, Utc};
use queue_core::{JobId, JobState, OperatorAction};

use super::Shared;
use super::pages::{self, JobsPage};
use crate::error::{Error, Result};
use crate::store::ListParams;

type Params = HashMap<String, String>;

/// Jobs per page of the list.
pub(super) const PAGE: i64 = 50;
const COOKIE: &str = "queue_dashboard_token";

pub(super) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(jobs))
        .route("/jobs/{uuid}", get(job))
        .route("/jobs/{uuid}/{action}", post(act_on_one))
        .route("/bulk/{action}", post(act_on_filter))
        .route("/channels", get(channels))
        .route("/functions", get(functions))
        .with_state(shared)
}

/// The token a request carries: `?token=`, `Authorization: Bearer`, or the cookie.
fn token_of(headers: &HeaderMap, query: Option<&Params>) -> Option<String> {
    if let Some(token) = query.and_then(|q| q.get("token")) {
        return Some(token.clone());
    }
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(bearer) = header(header::AUTHORIZATION).and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(bearer.trim().to_owned());
    }
    header(header::COOKIE)?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
}

/// Whether `given` is the configured token (compared in constant time).
fn is_token(shared: &Shared, given: Option<&str>) -> bool {
    let (Some(expected), Some(given)) = (shared.config.token.as_deref(), given) else { return false };
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Pages need the token when the dashboard listens beyond loopback.
fn may_read(shared: &Shared, headers: &HeaderMap, query: &Params) -> bool {
    shared.loopback || is_token(shared, token_of(headers, Some(query)).as_deref())
}

/// Whether an action request may act: the token, this server's form key, and no other site's
/// `Origin`.
fn may_act(shared: &Shared, headers: &HeaderMap, form: &Params) -> std::result::Result<(), &'static str> {
    if shared.config.token.is_none() {
        return Err("actions need a token: start the dashboard with QUEUE_DASHBOARD_TOKEN set");
    }
    if !is_token(shared, token_of(headers, None).as_deref()) {
        return Err("this action needs the dashboard's token: open the dashboard with ?token=…");
    }
    if form.get("key").map(String::as_str) != Some(shared.form_key.as_str()) {
        return Err("this action did not come from one of this dashboard's pages");
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or_default();
    if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok())
        && origin != format!("http://{host}")
        && origin != format!("https://{host}")
    {
        return Err("this action came from another site");
    }
    Ok(())
}

/// Run `f` on a blocking thread (the database calls block).
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Config(format!("the dashboard's task failed: {e}")))?
}

fn failure(e: &Error) -> Response {
    let status = match e {
        Error::JobNotFound(_) => StatusCode::NOT_FOUND,
        Error::Config(_) | Error::Core(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, Html(pages::message("Error", &crate::run::chain(e)))).into_response()
}

/// The filters of a list (or of a bulk action) from its query or form fields.
pub(super) fn filters(fields: &Params) -> Result<ListParams> {
    let field = |name: &str| fields.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let mut params = ListParams::default();
    if let Some(state) = field("state") {
        params = params.state(state.parse::<JobState>()?);
    }
    if let Some(v) = field("channel") {
        params = params.channel(v);
    }
    if let Some(v) = field("func") {
        params = params.func(v);
    }
    if let Some(v) = field("model") {
        params = params.model(v);
    }
    if let Some(v) = field("error") {
        params = params.error_containing(v);
    }
    if let Some(v) = field("origin") {
        params = params.origin(v);
    }
    let date = |name: &str, end: bool| -> Result<Option<DateTime<Utc>>> {
        let Some(text) = field(name) else { return Ok(None) };
        if let Ok(at) = DateTime::parse_from_rfc3339(text) {
            return Ok(Some(at.with_timezone(&Utc)));
        }
        let day = NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .map_err(|_| Error::Config(format!("expected a date like 2026-12-02 in {name}, got {text:?}")))?;
        let day = if end { day.succ_opt().unwrap_or(day) } else { day };
        Ok(day.and_hms_opt(0, 0, 0).map(|t| t.and_utc()))
    };
    // `to` includes its whole day.
    params = params.created_between(date("from", false)?, date("to", true)?);
    Ok(params)
}

/// The gate every page goes through: `Some` response when the page is not to be rendered. A
/// valid `?token=` is kept in a cookie and dropped from the address; a wrong one, or none off
/// loopback, is refused.
fn gate(shared: &Shared, headers: &HeaderMap, query: &Params, path: &str) -> Option<Response> {
    if let Some(given) = query.get("token") {
        if !is_token(shared, Some(given)) {
            let page = pages::message("Wrong token", "The token given is not the dashboard's.");
            return Some((StatusCode::FORBIDDEN, Html(page)).into_response());
        }
        let rest: Vec<(String, String)> =
            query.iter().filter(|(k, _)| *k != "token").map(|(k, v)| (k.clone(), v.clone())).collect();
        let cookie = format!("{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/");
        return Some(
            ([(header::SET_COOKIE, cookie)], Redirect::to(&pages::link(path, &rest))).into_response(),
        );
    }
    if !may_read(shared, headers, query) {
        let page =
            pages::message("Token needed", "Open the dashboard with ?token=… (its QUEUE_DASHBOARD_TOKEN).");
        return Some((StatusCode::UNAUTHORIZED, Html(page)).into_response());
    }
    None
}

async fn jobs(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    if let Some(response) = gate(&shared, &headers, &query, "/") {
        return response;
    }
    let read = Arc::clone(&shared);
    let q = query.clone();
    let loaded = blocking(move || {
        let params = filters(&q)?;
        let page_no: i64 = q.get("page").and_then(|p| p.parse().ok()).filter(|p| *p >= 1).unwrap_or(1);
        let jobs = read.db.jobs(&params.clone().limit(PAGE).offset((page_no - 1) * PAGE))?;
        let total = read.db.job_count(&params)?;
        let stats = read.db.stats(&[])?;
        Ok(JobsPage { query: q, jobs, total, page: page_no, stats })
    })
    .await;
    match loaded {
        Ok(data) => {
            let can_act = is_token(&shared, token_of(&headers, None).as_deref());
            Html(pages::jobs(&shared, &data, can_act)).into_response()
        }
        Err(e) => failure(&e),
    }
}

async fn job(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(uuid): Path<String>,
    Query(query): Query<Params>,
) -> Response {
    if let Some(response) = gate(&shared, &headers, &query, &format!("/jobs/{uuid}")) {
        return response;
    }
    let read = Arc::clone(&shared);
    let loaded = blocking(move || {
        let id: JobId =
            uuid.parse().map_err(|_| Error::Config(format!("expected a job uuid, got {uuid:?}")))?;
        let job = read.db.job(&id)?;
        let family = read.db.job_family(&id)?;
        let progress = read.db.job_progress(&id)?;
        Ok((job, family, progress))
    })
    .await;
    match loaded {
        Ok((job, family, progress)) => {
            let can_act = is_token(&shared, token_of(&headers, None).as_deref());
            Html(pages::job(
                &shared,
                &job,
                &family,
                progress.as_ref(),
                query.get("message").map(String::as_str),
                can_act,
            ))
            .into_response()
        }
        Err(e) => failure(&e),
    }
}

fn action(name: &str) -> Result<OperatorAction> {
    match name {
        "requeue" => Ok(OperatorAction::Requeue),
        "cancel" => Ok(OperatorAction::Cancel),
        "done" => Ok(OperatorAction::SetDone),
        other => Err(Error::Config(format!("unknown action {other:?}: requeue, cancel or done"))),
    }
}

async fn act_on_one(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path((uuid, name)): Path<(String, String)>,
    Form(form): Form<Params>,
) -> Response {
    if let Err(why) = may_act(&shared, &headers, &form) {
        return (StatusCode::FORBIDDEN, Html(pages::message("Refused", why))).into_response();
    }
    let act = Arc::clone(&shared);
    let target = uuid.clone();
    let done = blocking(move || {
        let id: JobId =
            target.parse().map_err(|_| Error::Config(format!("expected a job uuid, got {target:?}")))?;
        let action = action(&name)?;
        Ok(match act.db.job_action(&id, action) {
            Ok(job) => format!("{}: the job is {} now", action.verb(), job.state),
            Err(e) => format!("refused to {}: {e}", action.verb()),
        })
    })
    .await;
    match done {
        Ok(message) => Redirect::to(&pages::link(&format!("/jobs/{uuid}"), &[("message".into(), message)]))
            .into_response(),
        Err(e) => failure(&e),
    }
}

async fn act_on_filter(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Form(form): Form<Params>,
) -> Response {
    if let Err(why) = may_act(&shared, &headers, &form) {
        return (StatusCode::FORBIDDEN, Html(pages::message("Refused", why))).into_response();
    }
    let act = Arc::clone(&shared);
    let fields = form.clone();
    let done = blocking(move || {
        let action = action(&name)?;
        let params = filters(&fields)?;
        let uuids = act.db.job_uuids(&params)?;
        // The count the person confirmed: a filter that matches other jobs now is looked at again.
        let expected: Option<usize> = fields.get("expected").and_then(|n| n.parse().ok());
        if expected != Some(uuids.len()) {
            return Ok(format!(
                "nothing changed: the filter matches {} job(s) now, not {}; look again",
                uuids.len(),
                expected.map_or("?".into(), |n| n.to_string())
            ));
        }
        let refused = uuids.iter().filter(|uuid| act.db.job_action(uuid, action).is_err()).count();
        Ok(format!(
            "{}: {} of {} job(s); {refused} refused",
            action.verb(),
            uuids.len() - refused,
            uuids.len()
        ))
    })
    .await;
    match done {
        Ok(message) => {
            let mut keep: Vec<(String, String)> = form
                .iter()
                .filter(|(k, v)| pages::FILTERS.contains(&k.as_str()) && !v.is_empty())
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            keep.push(("message".into(), message));
            Redirect::to(&pages::link("/", &keep)).into_response()
        }
        Err(e) => failure(&e),
    }
}

async fn channels(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    if let Some(response) = gate(&shared, &headers, &query, "/channels") {
        return response;
    }
    let read = Arc::clone(&shared);
    match blocking(move || Ok((read.db.stats(&[])?, read.db.paused_channels()?))).await {
        Ok((stats, paused)) => Html(pages::channels(&shared, &stats, &paused)).into_response(),
        Err(e) => failure(&e),
    }
}

async fn functions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(query): Query<Params>,
) -> Response {
    if let Some(response) = gate(&shared, &headers, &query, "/functions") {
        return response;
    }
    let read = Arc::clone(&shared);
    let loaded = blocking(move || {
        let names = crate::function::registry()?.names();
        let unknown = read.db.unknown_functions(&names)?;
        Ok(unknown)
    })
    .await;
    match loaded {
        Ok(unknown) => Html(pages::functions(&shared, &unknown)).into_response(),
        Err(e) => failure(&e),
    }
}
