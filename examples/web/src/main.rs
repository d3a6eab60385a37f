//! An axum service that queues jobs from its handlers: `POST /customers` stores a customer and
//! queues its welcome in the same transaction; a worker in the same process runs the welcome
//! (an `async fn` job: it awaits a timer, as a call to a mail service would); `GET /jobs/{uuid}`
//! shows the job.
//!
//! ```sh
//! cargo run --manifest-path examples/web/Cargo.toml -- --listen 127.0.0.1:3000
//! curl -s -XPOST localhost:3000/customers -H 'content-type: application/json' -d '{"email":"ada@example.org"}'
//! curl -s localhost:3000/jobs/<uuid>
//! ```

use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use diesel::prelude::*;
use queue_diesel::prelude::*;
use queue_diesel::{JobId, Shutdown, Worker, WorkerConfig};
use serde_json::{Value, json};

diesel::table! {
    /// The shop's customers.
    customers (id) {
        /// Row id.
        id -> BigInt,
        /// Where the welcome goes.
        email -> Text,
        /// Set by the welcome job.
        welcomed -> Bool,
    }
}

/// A customer of the shop.
#[derive(Debug, Queryable, Selectable, Identifiable, Model)]
#[diesel(table_name = customers)]
#[queue(model = "shop.customer")]
pub struct Customer {
    /// Row id.
    pub id: i64,
    /// Where the welcome goes.
    pub email: String,
    /// Set by the welcome job.
    pub welcomed: bool,
}

#[queueable]
impl Customer {
    /// Welcome new customers.
    pub async fn welcome(records: Vec<Customer>, env: &Env, greeting: String) -> JobResult<String> {
        // The mail service's answer (a timer of the Tokio runtime, as an HTTP client's call).
        tokio::time::sleep(Duration::from_millis(20)).await;
        for customer in &records {
            // In the job's transaction: it commits with the job's `done`.
            diesel::update(customer).set(customers::welcomed.eq(true)).execute(&mut *env.conn())?;
        }
        let emails: Vec<&str> = records.iter().map(|c| c.email.as_str()).collect();
        Ok(format!("{greeting} {}", emails.join(", ")))
    }
}

#[derive(serde::Deserialize)]
struct SignUp {
    email: String,
}

type Failure = (StatusCode, String);

fn failure(e: impl std::fmt::Display) -> Failure {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

/// Store the customer and queue the welcome, in one transaction.
async fn sign_up(State(db): State<Database>, Json(form): Json<SignUp>) -> Result<Json<Value>, Failure> {
    let created = db
        .spawn_transaction(Context::user(1), move |env| {
            diesel::insert_into(customers::table)
                .values(customers::email.eq(&form.email))
                .execute(&mut *env.conn())?;
            let customer: Customer = customers::table
                .filter(customers::email.eq(&form.email))
                .order(customers::id.desc())
                .select(Customer::as_select())
                .first(&mut *env.conn())?;
            let job = Customer::queue().welcome(&customer, "Welcome,".into())?;
            Ok::<_, queue_diesel::Error>(json!({ "customer": customer.id, "job": job.uuid().to_string() }))
        })
        .await
        .map_err(failure)?;
    Ok(Json(created))
}

/// A job as operators see it.
async fn job(State(db): State<Database>, Path(uuid): Path<String>) -> Result<Json<Value>, Failure> {
    let uuid: JobId = uuid.parse().map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}")))?;
    let job = tokio::task::spawn_blocking(move || db.job(&uuid))
        .await
        .map_err(failure)?
        .map_err(|e| (StatusCode::NOT_FOUND, e.to_string()))?;
    Ok(Json(json!({ "uuid": job.uuid.to_string(), "state": job.state.to_string(), "result": job.result })))
}

/// `--database-url URL` (default: `web-shop.sqlite3`) and `--listen ADDR` (default
/// `127.0.0.1:3000`).
fn settings() -> Result<(String, String), String> {
    let (mut url, mut listen) = ("web-shop.sqlite3".to_owned(), "127.0.0.1:3000".to_owned());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        match arg.as_str() {
            "--database-url" => url = value,
            "--listen" => listen = value,
            other => {
                return Err(format!(
                    "unexpected argument {other:?}; usage: web [--database-url URL] [--listen ADDR]"
                ));
            }
        }
    }
    Ok((url, listen))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (url, listen) = settings()?;
    let db = Database::builder(&url).worker(true).open()?;
    let ddl = match db.backend() {
        queue_diesel::Backend::Postgres => {
            "CREATE TABLE IF NOT EXISTS customers (id BIGSERIAL PRIMARY KEY, email TEXT NOT NULL, welcomed BOOLEAN NOT NULL DEFAULT FALSE)"
        }
        _ => {
            "CREATE TABLE IF NOT EXISTS customers (id INTEGER PRIMARY KEY AUTOINCREMENT, email TEXT NOT NULL, welcomed BOOLEAN NOT NULL DEFAULT FALSE)"
        }
    };
    db.conn()?.batch(ddl)?;

    // The worker runs on threads of its own, beside the runtime.
    let shutdown = Shutdown::new();
    let worker = Worker::new(db.clone(), WorkerConfig::default())?;
    let stop = shutdown.clone();
    let worker_thread = std::thread::spawn(move || worker.run(&stop));

    let app = Router::new().route("/customers", post(sign_up)).route("/jobs/{uuid}", get(job)).with_state(db);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    shutdown.trigger();
    worker_thread.join().map_err(|_| "the worker thread panicked")??;
    Ok(())
}
