//! What `soma-bench` and `soma-chaos` share: a stack of real processes (the release api and
//! worker binaries) on a fresh database and the Temporal dev server, an in-process provider
//! whose token send times are recorded, and an HTTP/SSE client that follows turns.

pub mod baseline;
pub mod files;
pub mod procs;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use soma_contract::SessionEvent;
use soma_devllm::{DevProviderHandle, DevProviderOptions, TokenHook};
use soma_client::{Client, EventStream, SseEvent};
use soma_tests::fresh_database;

use procs::Proc;

pub const KEY: &str = "soma-bench-key";
/// The stack's admin key (dead letters).
pub const ADMIN_KEY: &str = "soma-bench-admin-key";
/// A key of another tenant, for checks that one tenant cannot reach another's sessions.
pub const OTHER_TENANT_KEY: &str = "soma-bench-other-tenant-key";
pub const WAIT: Duration = Duration::from_secs(120);

/// When the provider sent each token, by the message that asked for it.
pub type EmitLog = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn percentile(samples: &mut [f64], p: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[((p / 100.0) * (samples.len() - 1) as f64).round() as usize]
}

/// Flags both `soma-bench` and `soma-chaos` take.
#[derive(Debug, Clone, clap::Args)]
pub struct StackArgs {
    /// Directory holding the soma-api and soma-worker binaries.
    #[arg(long)]
    pub bin_dir: PathBuf,
    /// Where the api's and worker's logs go.
    #[arg(long, default_value = ".soma/logs")]
    pub log_dir: PathBuf,
    /// A short smoke run: fewer samples, trials and connections.
    #[arg(long)]
    pub quick: bool,
}

/// The api, the worker, their database and the provider (and, for the benchmark, the
/// baseline's worker).
pub struct Stack {
    pub api: Option<Proc>,
    pub worker: Option<Proc>,
    pub baseline_worker: Option<Proc>,
    pub provider: DevProviderHandle,
    pub client: StackClient,
    pub api_addr: SocketAddr,
    pub database_url: String,
    pub task_queue: String,
    pub run_id: String,
    env: Vec<(&'static str, String)>,
    bin_dir: PathBuf,
    log_dir: PathBuf,
    admin_url: String,
    database: String,
}

impl Stack {
    /// Reads `SOMA_BENCH_DATABASE_URL` and `TEMPORAL_ADDRESS` (set by ops/bench, ops/chaos,
    /// ops/test).
    pub async fn start(name: &str, args: &StackArgs, provider: DevProviderOptions) -> anyhow::Result<Stack> {
        Self::start_with(name, args, provider, Vec::new()).await
    }

    /// [`start`](Self::start), with more configuration for the api and the worker.
    pub async fn start_with(
        name: &str,
        args: &StackArgs,
        provider: DevProviderOptions,
        more_env: Vec<(&'static str, String)>,
    ) -> anyhow::Result<Stack> {
        let (bin_dir, log_dir) = (args.bin_dir.clone(), args.log_dir.clone());
        let admin_url = std::env::var("SOMA_BENCH_DATABASE_URL").map_err(|_| {
            anyhow::anyhow!("SOMA_BENCH_DATABASE_URL is not set: run through ops/bench, ops/chaos or ops/test")
        })?;
        let temporal_address = soma_core::Config::load(None)?.temporal_address;
        let run_id = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
        let database = format!("soma_{name}_{run_id}");
        let database_url = fresh_database(&admin_url, &database).await;

        let emits: EmitLog = Arc::default();
        let hook_log = emits.clone();
        let hook = TokenHook(Arc::new(move |message: &str, index: usize| {
            let mut log = hook_log.lock().unwrap();
            let times = log.entry(message.to_string()).or_default();
            times.truncate(index); // a retried request starts the list again
            times.push(Instant::now());
        }));
        let provider = soma_devllm::spawn(
            tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            DevProviderOptions { on_token: Some(hook), ..provider },
        )?;
        let api_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let eager_start_addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let task_queue = format!("{name}-{run_id}");
        let mut env = vec![
            ("DATABASE_URL", database_url.clone()),
            ("TEMPORAL_ADDRESS", temporal_address),
            ("SOMA_TASK_QUEUE", task_queue.clone()),
            ("SOMA_LLM_BASE_URL", provider.base_url()),
            ("SOMA_LLM_MODEL", soma_devllm::MODEL.to_string()),
            (
                "SOMA_API_KEYS",
                format!(
                    "bench:{},other:{}",
                    soma_api::auth::hash_key(KEY),
                    soma_api::auth::hash_key(OTHER_TENANT_KEY)
                ),
            ),
            ("SOMA_ADMIN_API_KEYS", format!("bench-admin:{}", soma_api::auth::hash_key(ADMIN_KEY))),
            // One secret for every api process of the stack, so a restarted api takes the
            // stream tokens the one before it minted.
            ("SOMA_STREAM_TOKEN_SECRET", uuid::Uuid::new_v4().to_string()),
            ("SOMA_LISTEN_ADDR", api_addr.to_string()),
            // The worker starts chat turns eagerly, as in ops/dev.
            ("SOMA_EAGER_START_ADDR", eager_start_addr.to_string()),
            ("SOMA_LOG_FILTER", "warn".to_string()),
            // No periodic jobs unless a drill asks for its own: the configured ones would
            // outlive the stack, starting runs for its task queue once it is gone.
            ("SOMA_SCHEDULES", "[]".to_string()),
        ];
        env.extend(more_env);
        std::fs::create_dir_all(&log_dir)?;
        let client = StackClient { api: Client::new(&format!("http://{api_addr}"), KEY), emits };
        let mut stack = Stack {
            api: None,
            worker: None,
            baseline_worker: None,
            provider,
            client,
            api_addr,
            database_url,
            task_queue,
            run_id,
            env,
            bin_dir,
            log_dir,
            admin_url,
            database,
        };
        stack.start_worker()?;
        stack.start_api().await?;
        Ok(stack)
    }

    pub fn start_worker(&mut self) -> anyhow::Result<()> {
        self.worker =
            Some(Proc::spawn("worker", &self.bin_dir.join("soma-worker"), &self.env, &self.log_dir)?);
        Ok(())
    }

    /// Starts the baseline's worker (`soma-bench-worker`), for figures that compare with it.
    pub fn start_baseline_worker(&mut self) -> anyhow::Result<()> {
        let binary = self.bin_dir.join("soma-bench-worker");
        self.baseline_worker = Some(Proc::spawn("baseline-worker", &binary, &self.env, &self.log_dir)?);
        Ok(())
    }

    /// The baseline's task queue.
    pub fn baseline_task_queue(&self) -> String {
        baseline::task_queue(&self.task_queue)
    }

    /// SIGKILLs the worker.
    pub fn kill_worker(&mut self) {
        self.worker = None;
    }

    pub async fn start_api(&mut self) -> anyhow::Result<()> {
        self.api = Some(Proc::spawn("api", &self.bin_dir.join("soma-api"), &self.env, &self.log_dir)?);
        self.client.wait_ready().await
    }

    /// SIGKILLs the api.
    pub fn kill_api(&mut self) {
        self.api = None;
    }

    pub fn pid(process: &Option<Proc>) -> u32 {
        process.as_ref().map_or(0, Proc::pid)
    }

    /// Stops the processes and drops the database.
    pub async fn finish(&mut self) {
        self.api = None;
        self.worker = None;
        self.baseline_worker = None;
        use sqlx::Connection;
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.database))
                .execute(&mut admin)
                .await;
        }
    }
}

/// What a turn looked like to one SSE client.
#[derive(Debug, Default)]
pub struct FollowedTurn {
    /// From the given start to the turn's first delta.
    pub first_delta: Option<Duration>,
    /// From the given start to the provider sending the first token.
    pub first_token_sent: Option<Duration>,
    /// Per token: provider sent it → the client had it, in ms.
    pub delivery_ms: Vec<f64>,
    /// Per delta: its row's `created_at` (the worker's insert began) → the client had it, in
    /// ms by the wall clock; what the delivery took after the worker got the token.
    pub stored_to_client_ms: Vec<f64>,
    /// Per token: provider sent it → its row's `created_at`, in ms (the delivery less the
    /// part after its row): the worker's share, coalescing windows included.
    pub sent_to_stored_ms: Vec<f64>,
    /// The reply as a client honouring `llm.retry` shows it.
    pub shown: soma_contract::ShownReply,
    pub end: Option<String>,
    pub last_id: i64,
    pub events: Vec<SseEvent>,
}

#[derive(Clone)]
pub struct StackClient {
    pub api: Client,
    pub emits: EmitLog,
}

impl StackClient {
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(response) = self.api.request(reqwest::Method::GET, "/v1/ready").send().await
                && response.status().is_success()
            {
                return Ok(());
            }
            anyhow::ensure!(Instant::now() < deadline, "the api did not become ready (see its log)");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `POST /v1/session/message` in a new session → `(status, body)`, whatever the status.
    pub async fn post(&self, message: &str, idempotency_key: Option<&str>) -> anyhow::Result<(u16, Value)> {
        let mut request = self
            .api
            .request(reqwest::Method::POST, "/v1/session/message")
            .json(&serde_json::json!({ "message": message }));
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Sends a message; `(session_id, turn_id, workflow_id)` or an error unless 202.
    pub async fn send(
        &self,
        session_id: Option<&str>,
        message: &str,
    ) -> anyhow::Result<(String, String, String)> {
        let session = session_id.map(str::parse).transpose()?;
        let accepted = self.api.say(session, message).await?;
        Ok((accepted.session_id.to_string(), accepted.turn_id.to_string(), accepted.workflow_id))
    }

    pub async fn events(&self, session_id: &str, after: Option<i64>) -> EventStream {
        self.api.events(session_id.parse().expect("a session id"), after).await.expect("the event stream opens")
    }

    /// Sends a message (in a new session when `session_id` is `None`) and follows its turn to
    /// the end on a stream of its own: `(session_id, the turn's last event id)`.
    pub async fn complete_turn(
        &self,
        session_id: Option<&str>,
        message: &str,
    ) -> anyhow::Result<(String, i64)> {
        let (session_id, turn_id, _) = self.send(session_id, message).await?;
        let mut stream = self.events(&session_id, None).await;
        let last_id = self.follow_turn(&mut stream, &turn_id, message, Instant::now()).await.last_id;
        Ok((session_id, last_id))
    }

    /// Follows one turn on `stream` to its end (or until the stream breaks).
    pub async fn follow_turn(
        &self,
        stream: &mut EventStream,
        turn_id: &str,
        message: &str,
        since: Instant,
    ) -> FollowedTurn {
        let mut followed = FollowedTurn::default();
        while let Some(event) = stream.next_event(WAIT).await {
            let received = Instant::now();
            followed.last_id = event.id;
            if !event.is_of_turn(turn_id) {
                continue;
            }
            let Some(typed) = event.typed() else { continue };
            match &typed {
                SessionEvent::LlmDelta(delta) => {
                    followed.first_delta.get_or_insert(received - since);
                    if followed.first_token_sent.is_none()
                        && let Some(first) = self.emits.lock().unwrap().get(message).and_then(|t| t.first().copied())
                    {
                        followed.first_token_sent = Some(first.saturating_duration_since(since));
                    }
                    let late = chrono::Utc::now().signed_duration_since(event.data.meta.created_at);
                    let stored_to_client = late.num_microseconds().unwrap_or(0) as f64 / 1000.0;
                    followed.stored_to_client_ms.push(stored_to_client);
                    let words = |text: String| if text.is_empty() { 0 } else { text.split(' ').count() };
                    let before = words(followed.shown.text());
                    followed.shown.apply(&SessionEvent::LlmDelta(delta.clone()));
                    let after = words(followed.shown.text());
                    if let Some(times) = self.emits.lock().unwrap().get(message) {
                        for sent in times.iter().take(after).skip(before) {
                            let delivery = ms(received.saturating_duration_since(*sent));
                            followed.delivery_ms.push(delivery);
                            followed.sent_to_stored_ms.push((delivery - stored_to_client).max(0.0));
                        }
                    }
                }
                retry @ SessionEvent::LlmRetry(_) => {
                    followed.shown.apply(retry);
                }
                end if end.ends_turn() => followed.end = Some(end.kind().to_string()),
                _ => {}
            }
            followed.events.push(event);
            if followed.end.is_some() {
                break;
            }
        }
        followed
    }
}
