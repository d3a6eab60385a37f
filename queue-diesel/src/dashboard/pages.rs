//! The dashboard's pages, rendered with maud: every value from a job is escaped, and no page
//! carries script.

use std::collections::HashMap;

use maud::{DOCTYPE, Markup, PreEscaped, html};
use queue_core::{Job, JobState, OperatorAction};

use super::Shared;
use super::routes::PAGE;
use crate::progress::Progress;
use crate::store::{Family, Stats};

/// The fields of a list's filter, kept by its links and its bulk actions.
pub(super) const FILTERS: [&str; 8] = ["state", "channel", "func", "model", "error", "origin", "from", "to"];

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
nav a{margin-right:1em}table{border-collapse:collapse;margin:.5em 0}\
td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;vertical-align:top}\
th{background:#f3f3f3}pre{background:#f7f7f7;padding:.5em;overflow:auto;max-width:70em}\
.failed{color:#b00020}.done{color:#116611}.message{background:#fff6d6;padding:.5em;border:1px solid #e6c84c}\
form.inline{display:inline}input,select{margin-right:.5em}.counts a{margin-right:1em}";

/// `path?k=v&…`, each value percent-encoded.
pub(super) fn link(path: &str, params: &[(String, String)]) -> String {
    if params.is_empty() {
        return path.to_owned();
    }
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    format!("{path}?{}", query.join("&"))
}

fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn layout(shared: &Shared, title: &str, refresh: bool, body: Markup) -> String {
    let refresh = (refresh && shared.config.refresh_secs > 0).then_some(shared.config.refresh_secs);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                @if let Some(secs) = refresh { meta http-equiv="refresh" content=(secs); }
                title { (title) " · queue" }
                style { (PreEscaped(STYLE)) }
            }
            body {
                nav { a href="/" { "Jobs" } a href="/channels" { "Channels" } a href="/functions" { "Functions" } }
                h1 { (title) }
                (body)
            }
        }
    }
    .into_string()
}

/// A page with one message.
pub(super) fn message(title: &str, text: &str) -> String {
    html! { (DOCTYPE) html lang="en" { head { meta charset="utf-8"; title { (title) } } body { h1 { (title) } p { (text) } p { a href="/" { "Jobs" } } } } }
        .into_string()
}

/// What the jobs page shows.
#[derive(Debug)]
pub(super) struct JobsPage {
    pub query: HashMap<String, String>,
    pub jobs: Vec<Job>,
    pub total: i64,
    pub page: i64,
    pub stats: Stats,
}

fn state_class(state: JobState) -> &'static str {
    match state {
        JobState::Failed => "failed",
        JobState::Done => "done",
        _ => "",
    }
}

fn time(t: Option<chrono::DateTime<chrono::Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string()).unwrap_or_default()
}

pub(super) fn jobs(shared: &Shared, data: &JobsPage, can_act: bool) -> String {
    let q = &data.query;
    let value = |name: &str| q.get(name).cloned().unwrap_or_default();
    let kept: Vec<(String, String)> = FILTERS
        .iter()
        .filter_map(|f| q.get(*f).filter(|v| !v.is_empty()).map(|v| ((*f).to_owned(), v.clone())))
        .collect();
    let with = |extra: (&str, String)| {
        let mut params: Vec<(String, String)> = kept.iter().filter(|(k, _)| k != extra.0).cloned().collect();
        params.push((extra.0.to_owned(), extra.1));
        link("/", &params)
    };
    let mut per_state: Vec<(JobState, i64)> = JobState::ALL.iter().map(|s| (*s, 0)).collect();
    for c in &data.stats.channels {
        for (state, n) in &mut per_state {
            *n += c.count(*state);
        }
    }
    let pages = (data.total + PAGE - 1) / PAGE;
    let body = html! {
        @if let Some(message) = q.get("message") { p.message { (message) } }
        p.counts {
            "By state: "
            @for (state, n) in &per_state { a href=(with(("state", state.as_str().to_owned()))) { (state.as_str()) " " (n) } }
        }
        p.counts {
            "By channel: "
            @for c in &data.stats.channels {
                a href=(with(("channel", c.channel.clone()))) { (c.channel) " " (c.counts.iter().map(|(_, n)| n).sum::<i64>()) }
            }
        }
        form method="get" action="/" {
            select name="state" {
                option value="" { "any state" }
                @for state in JobState::ALL {
                    option value=(state.as_str()) selected[value("state") == state.as_str()] { (state.as_str()) }
                }
            }
            input name="channel" placeholder="channel" value=(value("channel"));
            input name="func" placeholder="function" value=(value("func"));
            input name="model" placeholder="model" value=(value("model"));
            input name="origin" placeholder="origin" value=(value("origin"));
            input name="error" placeholder="text in the error" value=(value("error"));
            "queued from " input type="date" name="from" value=(value("from"));
            " to " input type="date" name="to" value=(value("to"));
            button type="submit" { "Filter" }
            " " a href="/" { "clear" }
        }
        p { (data.total) " job(s)" @if pages > 1 { ", page " (data.page) " of " (pages) } }
        table {
            tr { th { "uuid" } th { "state" } th { "prio" } th { "channel" } th { "function" } th { "description" } th { "origin" } th { "try" } th { "eta" } th { "queued" } th { "error" } }
            @for job in &data.jobs {
                tr {
                    td { a href=(format!("/jobs/{}", job.uuid)) { (job.uuid) } }
                    td class=(state_class(job.state)) { (job.state.as_str()) }
                    td { (job.priority) }
                    td { (job.channel) }
                    td { (job.func) }
                    td { (job.description) }
                    td {
                        @if let Some(origin) = &job.origin {
                            a href=(format!("/jobs?origin={}", encode(origin))) { (origin) }
                        }
                    }
                    td { (job.attempts) }
                    td { (time(job.eta)) }
                    td { (time(Some(job.date_created))) }
                    td { (job.error_line()) }
                }
            }
        }
        p {
            @if data.page > 1 { a href=(with(("page", (data.page - 1).to_string()))) { "← newer" } " " }
            @if data.page < pages { a href=(with(("page", (data.page + 1).to_string()))) { "older →" } }
        }
        // As on the command line, an action on many jobs needs a filter.
        @if can_act && data.total > 0 && !kept.is_empty() {
            h2 { "On every job this filter matches" }
            @for (action, label) in [("requeue", "Requeue"), ("cancel", "Cancel"), ("done", "Set done")] {
                form.inline method="post" action=(format!("/bulk/{action}")) {
                    input type="hidden" name="key" value=(shared.form_key);
                    input type="hidden" name="expected" value=(data.total);
                    @for (k, v) in &kept { input type="hidden" name=(k) value=(v); }
                    button type="submit" { (label) " " (data.total) " job(s)" }
                }
            }
        }
    };
    layout(shared, "Jobs", true, body)
}

pub(super) fn job(
    shared: &Shared,
    job: &Job,
    family: &Family,
    progress: Option<&Progress>,
    message: Option<&str>,
    can_act: bool,
) -> String {
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v).unwrap_or_default();
    let context = serde_json::Value::Object(job.context.values().clone());
    // queue_job's "related action": the record a job works on, in the application.
    let template = shared.config.links.iter().find(|(model, _)| *model == job.model).map(|(_, t)| t);
    let opt = |v: &Option<String>| v.clone().unwrap_or_default();
    let tries = if job.max_retries == 0 { "unlimited".to_owned() } else { job.max_retries.to_string() };
    let body = html! {
        @if let Some(message) = message { p.message { (message) } }
        @if job.exc_name.is_some() || job.exc_message.is_some() {
            h2 { "Error" }
            p.failed { (job.error_line()) }
            pre { (opt(&job.exc_message)) "\n\n" (opt(&job.exc_info)) }
        }
        table {
            tr { th { "uuid" } td { (job.uuid) } }
            tr { th { "state" } td class=(state_class(job.state)) { (job.state.as_str()) } }
            tr { th { "function" } td { (job.func) } }
            tr { th { "description" } td { (job.description) } }
            tr { th { "model" } td { (job.model) } }
            tr { th { "records" } td {
                (format!("{:?}", job.record_ids))
                @if let Some(template) = template {
                    @for id in &job.record_ids { " " a href=(template.replace("{id}", &id.to_string())) { (job.model) " " (id) } }
                }
            } }
            tr { th { "user" } td { (job.context.user_id().map(|u| u.to_string()).unwrap_or_default()) } }
            tr { th { "channel" } td { (job.channel) } }
            tr { th { "priority" } td { (job.priority) } }
            tr { th { "tries" } td { (job.attempts) " of " (tries) } }
            tr { th { "identity key" } td { (opt(&job.identity_key)) } }
            tr { th { "origin" } td { (opt(&job.origin)) } }
            tr { th { "queued" } td { (time(Some(job.date_created))) } }
            tr { th { "eta" } td { (time(job.eta)) } }
            tr { th { "started" } td { (time(job.date_started)) } }
            tr { th { "finished" } td { (time(job.date_done)) } }
            tr { th { "worker" } td { (opt(&job.worker_id)) } }
            @if let Some(p) = progress {
                tr { th { "progress" } td { (p.done) " of " (p.total) " (" ((p.ratio() * 100.0).round()) "%), at " (time(Some(p.at))) } }
            }
            tr { th { "result" } td { (opt(&job.result)) } }
        }
        h2 { "Arguments" } pre { (pretty(&job.args)) }
        h2 { "Context" } pre { (pretty(&context)) }
        h2 { "Depends on" }
        @if family.parents.is_empty() { p { "nothing" } }
        ul { @for (uuid, state) in &family.parents { li { a href=(format!("/jobs/{uuid}")) { (uuid) } " " (state.as_str()) } } }
        h2 { "Waited for by" }
        @if family.children.is_empty() { p { "nothing" } }
        ul { @for (uuid, state) in &family.children { li { a href=(format!("/jobs/{uuid}")) { (uuid) } " " (state.as_str()) } } }
        @if can_act {
            h2 { "Actions" }
            @for (action, name, label) in [(OperatorAction::Requeue, "requeue", "Requeue"), (OperatorAction::Cancel, "cancel", "Cancel"), (OperatorAction::SetDone, "done", "Set done")] {
                @if action.applies_to(job.state) {
                    form.inline method="post" action=(format!("/jobs/{}/{name}", job.uuid)) {
                        input type="hidden" name="key" value=(shared.form_key);
                        button type="submit" { (label) }
                    }
                }
            }
        }
    };
    layout(shared, &format!("Job {}", job.uuid), false, body)
}

pub(super) fn channels(
    shared: &Shared,
    stats: &Stats,
    paused: &[(String, chrono::DateTime<chrono::Utc>)],
) -> String {
    let paused_by = |name: &str| {
        paused
            .iter()
            .find(|(p, _)| name == p || name.starts_with(&format!("{p}.")))
            .map(|(p, at)| format!("paused ({p}, since {})", time(Some(*at))))
    };
    let now = shared.db.now();
    let config = &shared.config.channels;
    let body = html! {
        table {
            tr { th { "channel" } th { "capacity" } th { "state" } th { "running" } th { "pending" } th { "failed" } th { "oldest pending" } }
            @for channel in config.channels() {
                @let mine: Vec<_> = stats.channels.iter().filter(|c| config.node_for(&c.channel) == channel.name).collect();
                @let oldest = mine.iter().filter_map(|c| c.oldest_due).min();
                tr {
                    td { a href=(link("/", &[("channel".into(), channel.name.clone())])) { (channel.name) } }
                    td { (channel.capacity) @if config.is_sequential(&channel.name) { " sequential" } }
                    td { (paused_by(&channel.name).unwrap_or_else(|| if channel.capacity == 0 { "held (capacity 0)".into() } else { "running".into() })) }
                    td { (mine.iter().map(|c| c.count(JobState::Started)).sum::<i64>()) }
                    td { (mine.iter().map(|c| c.count(JobState::Pending)).sum::<i64>()) }
                    td { (mine.iter().map(|c| c.count(JobState::Failed)).sum::<i64>()) }
                    td { (oldest.map(|d| format!("{}s", (now - d).num_seconds().max(0))).unwrap_or_else(|| "-".into())) }
                }
            }
        }
    };
    layout(shared, "Channels", true, body)
}

pub(super) fn functions(shared: &Shared, unknown: &[(String, i64)]) -> String {
    let registry = crate::function::registry().ok();
    let names = registry.map(|r| r.names()).unwrap_or_default();
    let body = html! {
        h2 { "Registered in this binary" }
        table {
            tr { th { "function" } th { "timeout" } th { "retry pattern" } th { "runs alone" } }
            @for name in &names {
                @if let Some(f) = registry.and_then(|r| r.get(name)) {
                    tr {
                        td { (name) }
                        td { (f.timeout().map(|t| format!("{t:?}")).unwrap_or_default()) }
                        td { (f.retry_pattern().map(|p| p.to_string()).unwrap_or_default()) }
                        td { @if f.isolated() { "yes" } }
                    }
                }
            }
        }
        h2 { "Pending jobs nobody here can run" }
        @if unknown.is_empty() { p { "none" } }
        table {
            @for (name, n) in unknown {
                tr { td { a href=(link("/", &[("func".into(), name.clone()), ("state".into(), "pending".into())])) { (name) } } td { (n) } }
            }
        }
    };
    layout(shared, "Functions", false, body)
}
