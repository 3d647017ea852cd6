//! The end-to-end test harness: each test gets its own database (created from
//! `SOMA_TEST_DATABASE_URL`), its own Temporal task queue on the real dev server
//! (`TEMPORAL_ADDRESS`), an in-process API on port 0, workers it can start and kill, and the
//! dev provider with the delays and failures it asks for. `ops/test` sets the environment.

pub mod api_client;
pub mod sse;

use std::time::Duration;

use serde_json::Value;
use soma_contract::TurnRef;
use soma_core::config::LogFormat;
use soma_core::store::{NewTurn, TurnSession};
use soma_core::{Config, Store};
use soma_workflows::ChatTurnWorkflow;
use soma_devllm::{DevProviderHandle, DevProviderOptions};
use uuid::Uuid;

pub use api_client::{ApiClient, message_body};
pub use sse::{SseClient, SseEvent, shown_reply};

pub const KEY_A: &str = "test-key-tenant-a";
pub const KEY_B: &str = "test-key-tenant-b";

/// Generous bound for anything a test waits on; failures say what they waited for.
pub const DEADLINE: Duration = Duration::from_secs(90);

pub struct TestApp {
    pub config: Config,
    pub store: Store,
    /// The API as tenant A; `api.with_key(KEY_B)` for tenant B.
    pub api: ApiClient,
    pub provider: DevProviderHandle,
    pub temporal: temporalio_client::Client,
}

fn required_env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through ops/test, which starts PostgreSQL and Temporal")
    })
}

impl TestApp {
    /// Everything a test needs, named after the test for the task queue and database.
    pub async fn spawn(test_name: &str, provider: DevProviderOptions) -> TestApp {
        Self::spawn_with(test_name, provider, |_| {}).await
    }

    /// Like [`spawn`](Self::spawn), with the test's own changes to the config.
    pub async fn spawn_with(
        test_name: &str,
        provider: DevProviderOptions,
        configure: impl FnOnce(&mut Config),
    ) -> TestApp {
        if std::env::var("TEST_LOG").is_ok() {
            soma_core::telemetry::init_telemetry(LogFormat::Human, "info,temporalio_sdk_core=warn");
        }
        let admin_url = required_env("SOMA_TEST_DATABASE_URL");
        let suffix = Uuid::new_v4().simple().to_string()[..8].to_string();
        let database_url = fresh_database(&admin_url, &format!("soma_test_{test_name}_{suffix}")).await;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let provider = soma_devllm::spawn(listener, provider).unwrap();

        // The environment's Temporal address and defaults; the rest is the test's own.
        let mut config = Config {
            database_url: soma_core::Secret::new(database_url),
            database_max_connections: 10,
            task_queue: format!("test-{test_name}-{suffix}"),
            llm_base_url: provider.base_url(),
            llm_model: soma_devllm::MODEL.into(),
            delta_coalesce_ms: 20,
            max_message_bytes: 1024,
            api_keys: format!(
                "tenant-a:{},tenant-b:{}",
                soma_api::auth::hash_key(KEY_A),
                soma_api::auth::hash_key(KEY_B)
            ),
            ..Config::load(None).expect("the environment's config is valid")
        };
        configure(&mut config);
        let store = Store::connect_lazy(config.database_url.expose(), 10).unwrap();
        let temporal = soma_core::temporal::connect(&config, Duration::from_secs(10))
            .await
            .expect("Temporal reachable (ops/test starts it)");

        let ctx = soma_api::ApiContext::new(config.clone(), store.clone(), temporal.clone()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = ApiClient::new(format!("http://{}", listener.local_addr().unwrap()), KEY_A);
        tokio::spawn(soma_api::serve(listener, ctx, std::future::pending()));

        TestApp { config, store, api, provider, temporal }
    }

    /// Starts a worker on the test's task queue, in its own thread and runtime so that it can
    /// be killed like a crashed process.
    pub fn start_worker(&self) -> TestWorker {
        TestWorker::start(self.config.clone())
    }

    /// `POST /v1/session/message` as tenant A.
    pub async fn post_message(&self, body: Value, idempotency_key: Option<&str>) -> (u16, Value) {
        self.post_message_raw(KEY_A, body.to_string(), idempotency_key).await
    }

    pub async fn post_message_raw(
        &self,
        key: &str,
        body: String,
        idempotency_key: Option<&str>,
    ) -> (u16, Value) {
        self.api.with_key(key).post_message(body, idempotency_key).await.unwrap()
    }

    /// Sends a message and returns `(session_id, turn_id, workflow_id)`; panics unless 202.
    pub async fn send(&self, session_id: Option<&str>, message: &str) -> (String, String, String) {
        self.api.send(session_id, message).await.unwrap()
    }

    /// `POST /v1/session/{id}/cancel` as tenant A.
    pub async fn cancel(&self, session_id: &str) -> (u16, Value) {
        let url = format!("{}/v1/session/{session_id}/cancel", self.api.api_url);
        let response = self.api.http.post(url).header("X-API-Key", KEY_A).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        let url = format!("{}{path}", self.api.api_url);
        let response = self.api.http.get(url).header("X-API-Key", key).send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Opens the session's event stream as tenant A, after event `last_event_id`.
    pub async fn events(&self, session_id: &str, last_event_id: Option<i64>) -> SseClient {
        self.api.events(session_id, last_event_id).await
    }

    /// Opens the session's event stream with `?after=` instead of `Last-Event-ID`.
    pub async fn get_events_after(&self, session_id: &str, after: i64) -> SseClient {
        let url = format!("{}?after={after}", self.api.events_url(session_id));
        SseClient::connect(&self.api.http, &url, KEY_A, None).await
    }

    /// The session's stored messages as `(role, content, status)`.
    pub async fn messages(&self, session_id: &str) -> Vec<(String, String, String)> {
        let (status, body) = self.get(KEY_A, &format!("/v1/sessions/{session_id}/messages")).await;
        assert_eq!(status, 200, "{body}");
        body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let field = |name: &str| m[name].as_str().unwrap().to_string();
                (field("role"), field("content"), field("status"))
            })
            .collect()
    }

    /// Stores a turn for tenant A as the api would, without starting its workflow: what an
    /// api that died before starting it leaves behind, or a turn for an activity test.
    pub async fn store_turn(&self, session: TurnSession, message: &str) -> TurnRef {
        let turn_id = Uuid::now_v7();
        let new = NewTurn {
            tenant_id: "tenant-a",
            session,
            turn_id,
            workflow_id: &ChatTurnWorkflow::workflow_id(session.id(), turn_id),
            idempotency_key: None,
            message,
            persona_id: None,
            request_id: "stored-by-test",
            trace_id: None,
            actor: "test",
        };
        self.store.accept_turn(&new).await.expect("turn stored").turn
    }

    /// The audit rows about a turn, oldest first: `(action, outcome, actor)`.
    pub async fn audit(&self, turn_id: &str) -> Vec<(String, String, String)> {
        let turn_id: Uuid = turn_id.parse().unwrap();
        sqlx::query_as("SELECT action, outcome, actor FROM audit_log WHERE turn_id = $1 ORDER BY id")
            .bind(turn_id)
            .fetch_all(self.store.pool())
            .await
            .unwrap()
    }

    /// Rows in a table of the test's database.
    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }
}

/// Creates the database `name` (made a valid identifier) beside `admin_url`'s, applies the
/// migrations, and returns its URL. Each test and benchmark run gets one of its own.
pub async fn fresh_database(admin_url: &str, name: &str) -> String {
    use sqlx::Connection;
    let database: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let mut admin = sqlx::PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|err| panic!("the admin database {admin_url} is not reachable: {err}"));
    sqlx::query(&format!("CREATE DATABASE {database}")).execute(&mut admin).await.unwrap();
    let mut url = reqwest::Url::parse(admin_url).unwrap();
    url.set_path(&format!("/{database}"));
    let store = Store::connect_lazy(url.as_str(), 2).unwrap();
    store.migrate().await.expect("migrations apply");
    store.pool().close().await;
    url.to_string()
}

/// A worker running on its own thread; `kill` drops it mid-flight, as a crash would.
pub struct TestWorker {
    kill: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestWorker {
    fn start(config: Config) -> TestWorker {
        let (kill, killed) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let temporal_runtime = soma_worker::temporal_runtime(None).unwrap();
                let client = soma_core::temporal::connect(&config, Duration::from_secs(10)).await.unwrap();
                let store = Store::connect_lazy(config.database_url.expose(), 10).unwrap();
                let _ = ready_tx.send(());
                // Dropping the worker future on `kill` stops it without any goodbye.
                tokio::select! {
                    result = soma_worker::run(&temporal_runtime, &config, client, store, std::future::pending()) => {
                        if let Err(err) = result {
                            eprintln!("worker stopped with error: {err:#}");
                        }
                    }
                    _ = killed => {}
                }
            });
            runtime.shutdown_background();
        });
        ready_rx.recv_timeout(Duration::from_secs(30)).expect("worker thread started");
        TestWorker { kill: Some(kill), thread: Some(thread) }
    }

    /// Stops the worker abruptly: its in-flight activities never report back.
    pub fn kill(mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
    }
}
