//! The end-to-end test harness: each test gets its own database (created from
//! `SOMA_TEST_DATABASE_URL`), its own Temporal task queue on the real dev server
//! (`TEMPORAL_ADDRESS`), an in-process API on port 0, workers it can start and kill, and the
//! dev provider with the delays and failures it asks for. `ops/test` sets the environment.

use std::time::Duration;

use serde_json::Value;
use soma_client::{Client, EventStream, SseEvent};
use soma_contract::{SessionEvent, TurnRef};
use soma_core::config::LogFormat;
use soma_core::store::{NewTurn, Requester, TurnSession};
use soma_core::{Config, Store};
use soma_workflows::ChatTurnWorkflow;
use soma_devllm::{DevProviderHandle, DevProviderOptions};
use uuid::Uuid;


pub mod histories;
pub mod somabrain;

pub const KEY_A: &str = "test-key-tenant-a";
pub const KEY_B: &str = "test-key-tenant-b";
/// An admin key (`admin_api_keys`): the admin routes, across tenants.
pub const KEY_ADMIN: &str = "test-key-admin";

/// Generous bound for anything a test waits on; failures say what they waited for.
pub const DEADLINE: Duration = Duration::from_secs(90);

pub struct TestApp {
    pub config: Config,
    pub store: Store,
    /// The API as tenant A; `api.with_key(KEY_B)` for tenant B.
    pub api: Client,
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
            // The api hands turns' starts to the test's worker there, as in ops/dev.
            eager_start_addr: free_loopback_addr(),
            max_message_bytes: 1024,
            policy_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/policy").into(),
            api_keys: format!(
                "tenant-a:{},tenant-b:{}",
                soma_api::auth::hash_key(KEY_A),
                soma_api::auth::hash_key(KEY_B)
            ),
            admin_api_keys: format!("ops:{}", soma_api::auth::hash_key(KEY_ADMIN)),
            // Schedules live in the namespace, not the task queue: only the tests about them
            // make any (under IDs of their own, deleted at their end).
            schedules: Vec::new(),
            ..Config::load(None).expect("the environment's config is valid")
        };
        configure(&mut config);
        let store = Store::connect_lazy(config.database_url.expose(), 10).unwrap();
        let temporal = soma_core::temporal::connect(&config, Duration::from_secs(10))
            .await
            .expect("Temporal reachable (ops/test starts it)");

        let ctx = soma_api::ApiContext::new(config.clone(), store.clone(), temporal.clone()).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Client::new(&format!("http://{}", listener.local_addr().unwrap()), KEY_A);
        tokio::spawn(soma_api::serve(listener, ctx, std::future::pending()));

        TestApp { config, store, api, provider, temporal }
    }

    /// Starts a worker on the test's task queue, in its own thread and runtime so that it can
    /// be killed like a crashed process.
    pub fn start_worker(&self) -> TestWorker {
        TestWorker::start(self.config.clone())
    }

    /// Like [`start_worker`](Self::start_worker), with the test's own changes to its config.
    pub fn start_worker_with(&self, configure: impl FnOnce(&mut Config)) -> TestWorker {
        let mut config = self.config.clone();
        configure(&mut config);
        TestWorker::start(config)
    }

    /// `POST /v1/session/message` as tenant A.
    pub async fn post_message(&self, body: Value, idempotency_key: Option<&str>) -> (u16, Value) {
        self.post_message_raw(KEY_A, body.to_string(), idempotency_key).await
    }

    /// `POST /v1/session/message` with a raw body, as whoever `key` is.
    pub async fn post_message_raw(&self, key: &str, body: String, idempotency_key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .api
            .with_key(key)
            .request(reqwest::Method::POST, "/v1/session/message")
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(idempotency_key) = idempotency_key {
            request = request.header("Idempotency-Key", idempotency_key);
        }
        status_and_json(request.send().await.unwrap()).await
    }

    /// Sends a message and returns `(session_id, turn_id, workflow_id)`; panics unless 202.
    pub async fn send(&self, session_id: Option<&str>, message: &str) -> (String, String, String) {
        let session = session_id.map(|id| id.parse().unwrap());
        let accepted = self.api.say(session, message).await.unwrap_or_else(|err| panic!("not accepted: {err}"));
        (accepted.session_id.to_string(), accepted.turn_id.to_string(), accepted.workflow_id)
    }

    /// `POST /v1/session/{id}/cancel` as tenant A.
    pub async fn cancel(&self, session_id: &str) -> (u16, Value) {
        self.call(KEY_A, reqwest::Method::POST, &format!("/v1/session/{session_id}/cancel")).await
    }

    pub async fn get(&self, key: &str, path: &str) -> (u16, Value) {
        self.call(key, reqwest::Method::GET, path).await
    }

    /// Any call without a body, as whoever `key` is: `(status, JSON body or null)`.
    pub async fn call(&self, key: &str, method: reqwest::Method, path: &str) -> (u16, Value) {
        status_and_json(self.api.with_key(key).request(method, path).send().await.unwrap()).await
    }

    /// Opens the session's event stream as tenant A, after event `last_event_id`.
    pub async fn events(&self, session_id: &str, last_event_id: Option<i64>) -> EventStream {
        self.api.events(session_id.parse().unwrap(), last_event_id).await.expect("the event stream opens")
    }

    /// The session's stored messages as `(role, content, status)`, read through the API.
    pub async fn messages(&self, session_id: &str) -> Vec<(String, String, String)> {
        let messages = self.api.all_messages(session_id.parse().unwrap()).await.expect("messages readable");
        messages.into_iter().map(|m| (m.role.to_string(), m.content, m.status.to_string())).collect()
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
            attachments: &[],
            refuse_if_busy: false,
            by: Requester { actor: "test", request_id: "stored-by-test", trace_id: None },
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

/// Polls `check` every 100 ms until it holds, or panics after [`DEADLINE`] saying what it
/// waited for.
pub async fn eventually<F, Fut>(what: &str, check: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "waited {DEADLINE:?} for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// What the tests expect of a session's stream: events up to a kind, or a number of them, in
/// a bounded time, else a panic saying what came.
#[allow(async_fn_in_trait)]
pub trait Expect {
    /// Events until one of kind `last_kind` (inclusive).
    async fn until(&mut self, last_kind: &str, wait: Duration) -> Vec<SseEvent>;
    /// Exactly `n` events.
    async fn take(&mut self, n: usize, wait: Duration) -> Vec<SseEvent>;
}

impl Expect for EventStream {
    async fn until(&mut self, last_kind: &str, wait: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.next_event(left).await else {
                let kinds: Vec<_> = events.iter().map(|e: &SseEvent| e.kind.clone()).collect();
                panic!("no {last_kind} within {wait:?}; got {kinds:?}");
            };
            let done = event.kind == last_kind;
            events.push(event);
            if done {
                return events;
            }
        }
    }

    async fn take(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while events.len() < n {
            let event =
                self.next_event(wait).await.unwrap_or_else(|| panic!("only {} of {n} events", events.len()));
            events.push(event);
        }
        events
    }
}

/// The typed event, for tests: a frame that breaks the contract fails the test.
pub trait Typed {
    fn event(&self) -> SessionEvent;
}

impl Typed for SseEvent {
    fn event(&self) -> SessionEvent {
        self.data.event().unwrap_or_else(|err| panic!("event {} breaks the contract: {err}", self.id))
    }
}

/// The reply a client that honours `llm.retry` shows ([`ShownReply`]).
pub fn shown_reply(events: &[SseEvent]) -> String {
    let mut shown = soma_contract::ShownReply::default();
    for event in events {
        shown.apply(&event.event());
    }
    shown.text()
}

/// A loopback address nothing listens on now (the kernel's pick, released again).
pub fn free_loopback_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    listener.local_addr().expect("its address").to_string()
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

/// A TCP proxy in front of a server whose open connections can be cut at once, as a network
/// failure would: clients see their connections drop and must reconnect (through the proxy,
/// which takes new connections as before).
pub struct CuttableProxy {
    pub addr: std::net::SocketAddr,
    cut: tokio::sync::watch::Sender<u64>,
}

impl CuttableProxy {
    pub async fn start(target: std::net::SocketAddr) -> CuttableProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, cuts) = tokio::sync::watch::channel(0u64);
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let mut cuts = cuts.clone();
                cuts.mark_unchanged();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cuts.changed() => {} // dropping both sockets cuts the connection
                    }
                });
            }
        });
        CuttableProxy { addr, cut }
    }

    /// Drops every connection open now.
    pub fn cut(&self) {
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl TestApp {
    /// The address the API listens on.
    pub fn api_addr(&self) -> std::net::SocketAddr {
        self.api.base_url().trim_start_matches("http://").parse().expect("the API's address")
    }
}

/// The project's policies (`ops/policy/`), as the tests' workers evaluate them.
pub fn project_policy() -> std::sync::Arc<soma_activities::Policy> {
    let dir = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../ops/policy"));
    std::sync::Arc::new(soma_activities::Policy::from_dir(dir).expect("ops/policy loads"))
}
/// A one-page PDF showing `text` in Helvetica, with a correct cross-reference table: a real
/// PDF for the text extraction, made here because the tests fetch nothing.
pub fn tiny_pdf(text: &str) -> Vec<u8> {
    let escaped = text.replace('\\', "\\\\").replace('(', "\\(").replace(')', "\\)");
    let content = format!("BT /F1 12 Tf 72 720 Td ({escaped}) Tj ET");
    let objects = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>"
            .to_string(),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".to_string(),
    ];
    let mut pdf = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, object) in objects.iter().enumerate() {
        offsets.push(pdf.len());
        pdf.extend_from_slice(format!("{} 0 obj\n{object}\nendobj\n", i + 1).as_bytes());
    }
    let xref = pdf.len();
    pdf.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).as_bytes());
    for offset in offsets {
        pdf.extend_from_slice(format!("{offset:010} 00000 n \n").as_bytes());
    }
    pdf.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objects.len() + 1).as_bytes(),
    );
    pdf
}
