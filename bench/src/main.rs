//! `soma-bench`: measures the chat turn against the real Temporal dev server and PostgreSQL,
//! with the api and the worker as separate (release) processes and an in-process provider
//! that speaks the OpenAI streaming protocol at a fixed time-to-first-token and token rate.
//! Prints one table: each figure next to its target. Run it through `ops/bench`.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use soma_bench::procs::{CpuGroups, Members, rss_bytes};
use soma_bench::{KEY, Stack, StackArgs, StackClient, ms, percentile};
use soma_bench::baseline::{EagerFloor, EmptySteps, EmptyStepsWorkflow};
use soma_devllm::DevProviderOptions;
use soma_client::EventStream;
use temporalio_client::{UntypedWorkflow, WorkflowStartOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(about = "Soma chat-turn benchmark (run it through ops/bench)")]
struct Args {
    #[command(flatten)]
    stack: StackArgs,
    /// Measure only these figures (comma-separated): rss, ttft, history, throughput, tools,
    /// memory, upload, idle, active, deletion, maintenance.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Figure>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Figure {
    Rss,
    Ttft,
    History,
    Throughput,
    Tools,
    Memory,
    Upload,
    Idle,
    Active,
    Deletion,
    Maintenance,
}

const PROVIDER_TTFT: Duration = Duration::from_millis(200);
const PROVIDER_TOKEN_INTERVAL: Duration = Duration::from_millis(20);
/// Latency figures are measured this many times; the table shows the median run and the spread.
const RUNS: usize = 3;
/// The CPU Postgres and the api used, together, at 1,000 active clients on 50 sessions before
/// group commits and the single reader (the parent of commit 96ae993, its own
/// `ops/bench --only active`), by the CPU model it was measured on. Two 2-core machines of
/// the same kind differ by more than this target's margin, so a run compares itself with a
/// figure from its own CPU model where there is one.
const API_AND_POSTGRES_CPU_BEFORE: &[(&str, f64)] = &[
    // 2026-12-05: api 26 % + Postgres 42 %, then api 27 % + Postgres 44 %.
    ("AMD EPYC", 69.5),
];
/// On any other CPU: the project's first machine, 2026-11-23 (api 18 %, Postgres 32 %).
const API_AND_POSTGRES_CPU_BEFORE_ELSEWHERE: f64 = 50.0;

/// The api + Postgres CPU before group commits on this machine's CPU model, and where it
/// was measured.
fn api_and_postgres_cpu_before() -> (f64, String) {
    let model = cpu_model();
    match API_AND_POSTGRES_CPU_BEFORE.iter().find(|(measured_on, _)| model == *measured_on) {
        Some((measured_on, percent)) => (*percent, format!("measured on {measured_on}")),
        None => (API_AND_POSTGRES_CPU_BEFORE_ELSEWHERE, "the project's first machine".into()),
    }
}

/// The runs of one latency figure: the median run, and how far the others were from it.
struct Runs(Vec<f64>);

impl Runs {
    fn median(&self) -> f64 {
        let mut sorted = self.0.clone();
        percentile(&mut sorted, 50.0)
    }

    fn max(&self) -> f64 {
        self.0.iter().copied().fold(f64::MIN, f64::max)
    }

    /// `24.5 ms (runs 23.9–25.3)`.
    fn show(&self) -> String {
        let min = self.0.iter().copied().fold(f64::MAX, f64::min);
        format!("{:.1} ms (runs {min:.1}–{:.1})", self.median(), self.max())
    }
}

/// One upload run: the raw figure, ours, and the api's memory meanwhile.
struct UploadRun {
    raw: Duration,
    sent: Duration,
    to_clean: Duration,
    /// From the start until the file is in S3 (it is served from Postgres until then).
    to_s3: Duration,
    rss_before_mib: f64,
    rss_growth_mib: f64,
}

impl UploadRun {
    fn ratio(&self) -> f64 {
        self.to_clean.as_secs_f64() / self.raw.as_secs_f64()
    }
}

struct Row {
    figure: String,
    measured: String,
    target: String,
    ok: Option<bool>,
}

fn row(figure: &str, measured: String, target: &str, ok: Option<bool>) -> Row {
    Row { figure: figure.into(), measured, target: target.into(), ok }
}

/// Sends a message and follows its turn to the end on `stream`.
async fn turn(
    client: &StackClient,
    stream: &mut EventStream,
    session: Option<&str>,
    message: &str,
) -> anyhow::Result<(String, soma_bench::FollowedTurn, String)> {
    let sent = Instant::now();
    let (session, turn, workflow_id) = client.send(session, message).await?;
    Ok((session, client.follow_turn(stream, &turn, message, sent).await, workflow_id))
}

/// What every figure's measurement needs.
struct Bench {
    stack: Stack,
    client: StackClient,
    temporal: temporalio_client::Client,
    cpu: CpuGroups,
    quick: bool,
    /// A session that has had one turn, for figures that only need somewhere to talk.
    session: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let wants = |figure: Figure| args.only.is_empty() || args.only.contains(&figure);
    let mut stack = Stack::start("bench", &args.stack, DevProviderOptions::default()).await?;
    stack.start_baseline_worker()?;
    let client = stack.client.clone();
    let temporal = soma_core::temporal::connect(&soma_core::Config::load(None)?, Duration::from_secs(10)).await?;
    let cpu = CpuGroups {
        groups: vec![
            ("api", Members::Pids(vec![Stack::pid(&stack.api)])),
            ("worker", Members::Pids(vec![Stack::pid(&stack.worker)])),
            ("baseline worker", Members::Pids(vec![Stack::pid(&stack.baseline_worker)])),
            ("temporal", Members::CommandContains("server start-dev")),
            ("postgres", Members::CommandContains("postgres: ")),
            ("bench", Members::Pids(vec![std::process::id()])),
        ],
    };
    let started = Instant::now();
    let load_before = load_average();

    // Warm up: one turn through every part.
    let (session, _) = client.complete_turn(None, "warm up").await?;
    let bench = Bench { stack, client, temporal, cpu, quick: args.stack.quick, session };

    let mut rows = Vec::new();
    if wants(Figure::Rss) {
        rows.extend(bench.idle_rss().await);
    }
    if wants(Figure::Ttft) {
        rows.extend(bench.time_to_first_token().await?);
    }
    if wants(Figure::History) {
        rows.push(bench.history_size().await?);
    }
    if wants(Figure::Throughput) {
        rows.push(bench.throughput().await?);
    }
    if wants(Figure::Tools) {
        rows.extend(bench.tool_calls().await?);
    }
    if wants(Figure::Memory) {
        rows.extend(bench.memory().await?);
    }
    if wants(Figure::Upload) {
        rows.extend(bench.upload().await?);
    }
    if wants(Figure::Idle) {
        rows.push(bench.idle_streams().await?);
    }
    if wants(Figure::Active) {
        rows.push(bench.active_streams().await?);
    }
    if wants(Figure::Deletion) {
        rows.push(bench.session_deletion().await?);
    }
    if wants(Figure::Maintenance) {
        rows.extend(bench.maintenance().await?);
    }
    print_table(&rows, started.elapsed(), bench.quick, &load_before);
    let mut bench = bench;
    bench.stack.finish().await;
    Ok(())
}

impl Bench {
    /// Starts `total` empty workflows with `steps` on the baseline worker, all at once, and
    /// waits for them: the seconds it took (the floor beside a figure of as many of ours).
    async fn empty_workflows_at_once(&self, name: &str, total: usize, steps: EmptySteps) -> anyhow::Result<f64> {
        let t0 = Instant::now();
        let starts = (0..total).map(|i| {
            let temporal = self.temporal.clone();
            let workflow_id = format!("{name}/{}/{i}", self.stack.run_id);
            let options = WorkflowStartOptions::new(self.stack.baseline_task_queue(), workflow_id).build();
            async move {
                let handle = temporal.start_workflow(EmptyStepsWorkflow::run, steps, options).await?;
                handle.get_result(Default::default()).await?;
                anyhow::Ok(())
            }
        });
        for result in futures::future::join_all(starts).await {
            result?;
        }
        Ok(t0.elapsed().as_secs_f64())
    }

    fn api_pid(&self) -> u32 {
        Stack::pid(&self.stack.api)
    }

    fn answer_at_once(&self) {
        self.stack.provider.update_options(|o| {
            o.time_to_first_token = Duration::ZERO;
            o.token_interval = Duration::ZERO;
            o.extra_words = 20;
        });
    }

    /// Waits until a workflow has closed (whatever its outcome).
    async fn closed(
        &self,
        workflow_id: String,
    ) -> temporalio_client::UntypedWorkflowHandle<temporalio_client::Client> {
        let handle = self.temporal.get_workflow_handle::<UntypedWorkflow>(workflow_id);
        let _ = handle.get_result(Default::default()).await;
        handle
    }

    async fn idle_rss(&self) -> Vec<Row> {
        tokio::time::sleep(Duration::from_secs(2)).await;
        [("api", self.api_pid()), ("worker", Stack::pid(&self.stack.worker))]
            .into_iter()
            .map(|(name, pid)| {
                let rss = rss_bytes(pid) as f64 / (1024.0 * 1024.0);
                row(
                    &format!("idle RSS of the {name}"),
                    format!("{rss:.1} MiB"),
                    "≤ 60 MiB",
                    Some(rss <= 60.0),
                )
            })
            .collect()
    }

    /// Time to first token and per-delta latency, in one session with the stream open, with
    /// Temporal's floor measured between the same samples, with and without eager start.
    /// [`RUNS`] runs.
    async fn time_to_first_token(&self) -> anyhow::Result<Vec<Row>> {
        self.stack.provider.update_options(|o| {
            o.time_to_first_token = PROVIDER_TTFT;
            o.token_interval = PROVIDER_TOKEN_INTERVAL;
            o.extra_words = 20;
        });
        let samples = if self.quick { 8 } else { 30 };
        let eager_queue = format!("{}-eager", self.stack.task_queue);
        let eager = EagerFloor::start(soma_core::Config::load(None)?, eager_queue)?;
        let mut provider_ttft = measure_provider_ttft(&self.stack.provider.base_url(), samples).await?;
        let provider_p50 = percentile(&mut provider_ttft, 50.0);
        let mut stream = self.client.events(&self.session, None).await;
        let [mut ttft50, mut ttft95, mut floor50, mut eager50, mut delta50, mut delta95, mut before50] =
            std::array::from_fn(|_| Runs(Vec::new()));
        for run in 0..RUNS {
            let (mut ttfts, mut delivery, mut floors, mut eagers, mut befores) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..samples {
                let message = format!("ttft probe {run}.{i}");
                let (_, followed, workflow_id) =
                    turn(&self.client, &mut stream, Some(&self.session), &message).await?;
                // The next sample starts once this turn's workflow has closed, not while the
                // server is still recording its end (a user's next message comes seconds later).
                self.closed(workflow_id).await;
                let first_delta =
                    followed.first_delta.ok_or_else(|| anyhow::anyhow!("turn {i} streamed no delta"))?;
                ttfts.push(ms(first_delta) - provider_p50);
                // The provider sends its first token PROVIDER_TTFT after the request reached it.
                if let Some(sent) = followed.first_token_sent {
                    befores.push(ms(sent) - ms(PROVIDER_TTFT));
                }
                delivery.extend(followed.delivery_ms);
                let baseline_queue = self.stack.baseline_task_queue();
                floors.push(soma_bench::baseline::floor(&self.temporal, &baseline_queue, false).await?);
                eagers.push(eager.measure().await?);
            }
            ttft50.0.push(percentile(&mut ttfts, 50.0));
            ttft95.0.push(percentile(&mut ttfts, 95.0));
            floor50.0.push(percentile(&mut floors, 50.0));
            eager50.0.push(percentile(&mut eagers, 50.0));
            delta50.0.push(percentile(&mut delivery, 50.0));
            delta95.0.push(percentile(&mut delivery, 95.0));
            before50.0.push(percentile(&mut befores, 50.0));
        }
        let baseline_rss = rss_bytes(Stack::pid(&self.stack.baseline_worker)) as f64 / (1024.0 * 1024.0);
        Ok(vec![
            row(
                "added time-to-first-token (POST → first llm.delta at SSE client, minus provider TTFT)",
                format!(
                    "p50 {}, p95 {} (provider p50 {provider_p50:.1} ms; {RUNS} runs of {samples})",
                    ttft50.show(),
                    ttft95.show()
                ),
                "p50 ≤ 25 ms, p95 ≤ 60 ms",
                Some(ttft50.median() <= 25.0 && ttft95.median() <= 60.0),
            ),
            row(
                "of which Temporal's floor with eager workflow start, as turns start: an empty workflow's start request → its first regular activity running, after one local activity",
                format!(
                    "p50 {}; the rest, p50 {:.1} ms, is ours: the POST to the provider's request takes p50 {} (the floor and our steps before the call), the first token to the client p50 {}",
                    eager50.show(),
                    ttft50.median() - eager50.median(),
                    before50.show(),
                    delta50.show()
                ),
                "—",
                None,
            ),
            row(
                "eager workflow start (the api hands a turn's start to the worker, which starts it and takes its first workflow task from the start response)",
                format!(
                    "the floor p50 {} with it vs {} without = {:.2}×; it costs the api nothing (the worker, which runs the workflow anyway, starts it; a worker hosted in the api would cost ~{baseline_rss:.0} MiB idle RSS, the baseline worker's)",
                    eager50.show(),
                    floor50.show(),
                    eager50.median() / floor50.median()
                ),
                "adopt at ≤ 0.5× with no memory cost",
                Some(eager50.median() <= 0.5 * floor50.median()),
            ),
            row(
                "added per-delta latency (provider sends token → SSE client has it)",
                format!("p50 {}, p95 {}", delta50.show(), delta95.show()),
                "p50 ≤ 5 ms",
                Some(delta50.median() <= 5.0),
            ),
        ])
    }

    /// Temporal history size of turn 1 and turn 50 of one conversation.
    async fn history_size(&self) -> anyhow::Result<Row> {
        self.answer_at_once();
        let mut history_sizes = Vec::new();
        let (mut session, mut stream) = (None::<String>, None::<EventStream>);
        for turn_number in 1..=50 {
            let message = format!("history turn {turn_number}");
            let (id, turn_id, workflow_id) = self.client.send(session.as_deref(), &message).await?;
            let stream = match &mut stream {
                Some(stream) => stream,
                None => stream.insert(self.client.events(&id, None).await),
            };
            self.client.follow_turn(stream, &turn_id, &message, Instant::now()).await;
            session = Some(id);
            if turn_number == 1 || turn_number == 50 {
                let description = self.closed(workflow_id).await.describe(Default::default()).await?;
                let bytes =
                    description.raw_description.workflow_execution_info.map_or(0, |i| i.history_size_bytes);
                history_sizes.push(bytes as f64 / 1024.0);
            }
        }
        Ok(row(
            "Temporal history of one turn, at turn 1 and turn 50",
            format!("{:.1} KiB, {:.1} KiB", history_sizes[0], history_sizes[1]),
            "≤ 64 KiB, flat",
            Some(history_sizes[1] <= 64.0 && history_sizes[1] <= history_sizes[0] * 1.1),
        ))
    }

    /// Sustained turns per second, next to the empty workflow with as many activities of each
    /// kind. Every turn has its own session, so none waits for another and each runs the same
    /// steps as the empty workflow; all are sent at once on both sides.
    async fn throughput(&self) -> anyhow::Result<Row> {
        self.answer_at_once();
        let total = if self.quick { 20 } else { 120 };
        let before = self.cpu.sample();
        let t0 = Instant::now();
        let sends = (0..total).map(|i| async move { self.client.send(None, &format!("load {i}")).await });
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        let pool = sqlx::PgPool::connect(&self.stack.database_url).await?;
        loop {
            let done: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM turns WHERE status = 'completed' AND user_message LIKE 'load %'",
            )
            .fetch_one(&pool)
            .await?;
            if done as usize >= total {
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "load turns did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool.close().await;
        let chat_seconds = t0.elapsed().as_secs_f64();
        let chat_cpu = self.cpu.describe(&before, &self.cpu.sample(), chat_seconds);
        let chat_rate = total as f64 / chat_seconds;

        let before = self.cpu.sample();
        let empty_seconds = self.empty_workflows_at_once("bench-empty", total, EmptySteps::CHAT_TURN).await?;
        let empty_cpu = self.cpu.describe(&before, &self.cpu.sample(), empty_seconds);
        let empty_rate = total as f64 / empty_seconds;
        Ok(row(
            "sustained chat turns/s (zero-latency provider), vs an empty workflow with the same steps (1 local, 3 regular activities)",
            format!(
                "{chat_rate:.1} turns/s vs {empty_rate:.1} wf/s = {:.2}× ({total} each, all at once)\n    CPU during turns: {chat_cpu}\n    CPU during empty: {empty_cpu}",
                chat_rate / empty_rate
            ),
            "≥ 0.8 × empty",
            Some(chat_rate >= 0.8 * empty_rate),
        ))
    }

    /// The time a no-op tool call adds inside a turn (the model's stream that asks for it ends
    /// → the model's next request arrives), beside Temporal's floor for a child workflow with
    /// one activity between two activities; then 100 direct tool calls at once, beside as many
    /// empty workflows with the tool workflow's steps.
    async fn tool_calls(&self) -> anyhow::Result<Vec<Row>> {
        self.answer_at_once();
        let moments: std::sync::Arc<std::sync::Mutex<HashMap<String, (Option<Instant>, Option<Instant>)>>> =
            Default::default();
        let (asked, heard) = (moments.clone(), moments.clone());
        self.stack.provider.update_options(move |o| {
            o.on_finish = Some(soma_devllm::TokenHook(std::sync::Arc::new(move |message: &str, calls: usize| {
                if calls > 0 {
                    asked.lock().unwrap().entry(message.to_string()).or_default().0 = Some(Instant::now());
                }
            })));
            o.on_request = Some(soma_devllm::TokenHook(std::sync::Arc::new(move |message: &str, results: usize| {
                if results > 0 {
                    heard.lock().unwrap().entry(message.to_string()).or_default().1 = Some(Instant::now());
                }
            })));
        });
        let samples = if self.quick { 5 } else { 20 };
        let mut stream = self.client.events(&self.session, None).await;
        let (mut added50, mut floor50) = (Runs(Vec::new()), Runs(Vec::new()));
        for run in 0..RUNS {
            let (mut added, mut floors) = (Vec::new(), Vec::new());
            for i in 0..samples {
                let message = format!("what is {run}+{i}");
                let (_, _, workflow_id) = turn(&self.client, &mut stream, Some(&self.session), &message).await?;
                self.closed(workflow_id).await;
                let (asked, heard) = moments.lock().unwrap().get(&message).copied().unwrap_or_default();
                let (Some(asked), Some(heard)) = (asked, heard) else {
                    anyhow::bail!("the model did not call the calculator for {message:?}");
                };
                added.push(ms(heard.duration_since(asked)));
                floors.push(soma_bench::baseline::tool_round_floor(&self.temporal, &self.stack.baseline_task_queue()).await?);
            }
            added50.0.push(percentile(&mut added, 50.0));
            floor50.0.push(percentile(&mut floors, 50.0));
        }
        self.stack.provider.update_options(|o| {
            o.on_finish = None;
            o.on_request = None;
        });

        // 100 direct calls across 20 sessions, all at once.
        let total = if self.quick { 20 } else { 100 };
        let sessions: Vec<uuid::Uuid> = {
            let mut ids = Vec::new();
            for i in 0..20.min(total) {
                let (session, _) = self.client.complete_turn(None, &format!("tools session {i}")).await?;
                ids.push(session.parse()?);
            }
            ids
        };
        let api = self.client.api.clone();
        let t0 = Instant::now();
        let requests = (0..total).map(|i| {
            let api = api.clone();
            let session = sessions[i % sessions.len()];
            async move { api.request_tool(session, "calculator", serde_json::json!({"expression": format!("{i}*2")})).await }
        });
        let mut ids = Vec::new();
        for accepted in futures::future::join_all(requests).await {
            ids.push(accepted?.tool_call_id);
        }
        let pool = sqlx::PgPool::connect(&self.stack.database_url).await?;
        loop {
            let done: i64 = sqlx::query_scalar("SELECT count(*) FROM tool_calls WHERE id = ANY($1) AND status = 'succeeded'")
                .bind(&ids)
                .fetch_one(&pool)
                .await?;
            // Done when each call's workflow has recorded its result event.
            let events: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM session_events WHERE kind = 'tool.result' AND (payload->>'tool_call_id')::uuid = ANY($1)",
            )
            .bind(&ids)
            .fetch_one(&pool)
            .await?;
            if done as usize >= total && events as usize >= total {
                break;
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(600), "tool calls did not finish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pool.close().await;
        let tool_rate = total as f64 / t0.elapsed().as_secs_f64();
        let empty_rate = total as f64 / self.empty_workflows_at_once("bench-empty-tool", total, EmptySteps { local: 3, regular: 0 }).await?;
        Ok(vec![
            row(
                "a no-op tool call inside a turn (calculator): the model's stream asking for it ends → the model's next request arrives",
                format!(
                    "p50 {}; Temporal's floor for the same shape (an activity ends → a child workflow with one activity → the next activity begins) p50 {} ({RUNS} runs of {samples})",
                    added50.show(),
                    floor50.show()
                ),
                "p50 ≤ 60 ms",
                Some(added50.median() <= 60.0),
            ),
            row(
                "direct tool calls at once (POST /v1/tool/request, calculator, across 20 sessions)",
                format!(
                    "{total} of {total} completed: {tool_rate:.1} calls/s vs {empty_rate:.1} wf/s for empty workflows with the same 3 local activities = {:.2}×",
                    tool_rate / empty_rate
                ),
                "all complete",
                Some(true),
            ),
        ])
    }

    /// Memory on the built-in backend: a turn's end → its messages visible in recall
    /// (`GET /v1/memory/recall`, polled every 5 ms), p50 and p95; then writes started all at
    /// once (staged as a turn stages them), beside as many empty workflows with the same steps.
    async fn memory(&self) -> anyhow::Result<Vec<Row>> {
        self.answer_at_once();
        let samples = if self.quick { 10 } else { 40 };
        let mut visible = Vec::new();
        for i in 0..samples {
            let (session, _) = self.client.complete_turn(None, &format!("memory probe {i}")).await?;
            let ended = Instant::now();
            let session: uuid::Uuid = session.parse()?;
            loop {
                let recalled = self.client.api.recall("", Some(session)).await?;
                if recalled.memories.len() >= 2 {
                    break;
                }
                anyhow::ensure!(ended.elapsed() < Duration::from_secs(60), "the turn's messages were never remembered");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            visible.push(ms(ended.elapsed()));
        }
        let (p50, p95) = (percentile(&mut visible, 50.0), percentile(&mut visible, 95.0));

        // Writes all at once: staged like a turn's, each its own MemoryWriteWorkflow.
        let total = if self.quick { 20 } else { 100 };
        let store = soma_core::Store::connect_lazy(&self.stack.database_url, 5)?;
        let session: uuid::Uuid = self.session.parse()?;
        let mut inputs = Vec::new();
        for i in 0..total {
            let key = format!("bench/{}/memory/{i}", self.stack.run_id);
            let payload = soma_contract::memory::MemoryPayload {
                id: uuid::Uuid::now_v7(),
                kind: soma_contract::memory::MemoryPayload::CONVERSATION_EVENT.into(),
                role: soma_contract::MemoryRole::User,
                content: format!("bench memory number {i}"),
                attachments: Vec::new(),
                session_id: Some(session),
                persona_id: None,
                metadata: serde_json::json!({}),
                idempotency_key: key.clone(),
            };
            let write = soma_contract::MemoryWriteRef {
                tenant_id: "bench".into(),
                key,
                session_id: Some(session),
                turn_id: None,
                request_id: format!("bench-{}", self.stack.run_id),
                trace_id: None,
            };
            store.stage_memory_write(&write, Some(soma_contract::MemoryRole::User), &serde_json::json!(payload)).await?;
            inputs.push(soma_workflows::MemoryWriteInput { write, retry: soma_core::Config::default().memory_retry() });
        }
        let t0 = Instant::now();
        let starts = inputs.into_iter().map(|input| {
            let temporal = self.temporal.clone();
            let options = soma_workflows::MemoryWriteWorkflow::start_options(&self.stack.task_queue, &input.write);
            async move {
                let handle = temporal.start_workflow(soma_workflows::MemoryWriteWorkflow::run, input, options).await?;
                anyhow::Ok(handle.get_result(Default::default()).await?)
            }
        });
        let mut delivered = 0;
        for ended in futures::future::join_all(starts).await {
            delivered += usize::from(ended? == soma_contract::MemoryWriteStatus::Delivered);
        }
        let write_rate = total as f64 / t0.elapsed().as_secs_f64();
        let empty_rate = total as f64 / self.empty_workflows_at_once("bench-empty-memory", total, EmptySteps { local: 1, regular: 1 }).await?;
        Ok(vec![
            row(
                "memory write accepted → visible in recall (built-in backend; from the turn's end, which starts its writes)",
                format!("p50 {p50:.1} ms, p95 {p95:.1} ms ({samples} turns, 2 writes each)"),
                "p50 ≤ 100 ms, p95 ≤ 500 ms",
                Some(p50 <= 100.0 && p95 <= 500.0),
            ),
            row(
                "memory writes at once (MemoryWriteWorkflow: local policy gate, remember)",
                format!(
                    "{delivered} of {total} delivered: {write_rate:.1} writes/s vs {empty_rate:.1} wf/s for empty workflows with the same steps (1 local, 1 regular activity) = {:.2}×",
                    write_rate / empty_rate
                ),
                "all delivered",
                Some(delivered == total),
            ),
        ])
    }

    /// A large file through tus to `clean` (every byte stored, verified and scanned by clamd;
    /// downloadable from then on), beside the same bytes sent raw over loopback to disk plus a
    /// raw `clamdscan --stream` of them, [`RUNS`] times; when it is in S3 too; and the api's
    /// RSS while it receives them.
    async fn upload(&self) -> anyhow::Result<Vec<Row>> {
        let mib = if self.quick { 20 } else { 100 };
        let dir = std::env::temp_dir().join(format!("soma-bench-upload-{}", self.stack.run_id));
        std::fs::create_dir_all(&dir)?;
        let path = dir.join("upload.bin");
        let sha256 = soma_bench::files::random_file(&path, mib * 1024 * 1024, 7)?;
        let clamd = soma_core::Config::load(None)?.clamd_address;
        // Each run: the raw transfer and clamdscan, then the same file through us, so the
        // ratio compares figures taken moments apart; the table shows the median run.
        let mut runs = Vec::new();
        for _ in 0..RUNS {
            runs.push(self.upload_once(&path, &dir, &clamd, &sha256).await?);
        }
        std::fs::remove_dir_all(&dir).ok();
        let rss_before = runs[0].rss_before_mib;
        let growth = runs.iter().map(|run| run.rss_growth_mib).fold(0.0, f64::max);
        runs.sort_by(|a, b| a.ratio().total_cmp(&b.ratio()));
        let (min, median, max) = (runs[0].ratio(), &runs[runs.len() / 2], runs[runs.len() - 1].ratio());
        let ratio = median.ratio();
        Ok(vec![
            row(
                &format!("{mib} MiB through tus to clean (stored, SHA-256 verified, clamd INSTREAM; downloadable)"),
                format!(
                    "{:.2} s ({:.2} s to send) vs {:.2} s raw (loopback to disk + clamdscan --stream) = {ratio:.2}× (runs {min:.2}–{max:.2}×); in S3 at {:.2} s",
                    median.to_clean.as_secs_f64(),
                    median.sent.as_secs_f64(),
                    median.raw.as_secs_f64(),
                    median.to_s3.as_secs_f64()
                ),
                "≤ 1.3×",
                Some(ratio <= 1.3),
            ),
            row(
                &format!("api RSS while it receives {mib} MiB"),
                format!("{rss_before:.1} MiB before, peak +{growth:.1} MiB"),
                "does not grow with the file (≤ +32 MiB)",
                Some(growth <= 32.0),
            ),
        ])
    }

    /// One upload of `path` through tus to `clean`, beside a raw transfer and clamdscan of it.
    async fn upload_once(&self, path: &Path, dir: &Path, clamd: &str, sha256: &str) -> anyhow::Result<UploadRun> {
        let raw = soma_bench::files::raw_transfer(path, dir).await? + soma_bench::files::raw_clamdscan(path, clamd, dir).await?;
        let api_pid = self.api_pid();
        let rss_before = rss_bytes(api_pid);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let sampler = tokio::spawn(async move {
            let mut peak = 0;
            while !*stopped.borrow() {
                peak = peak.max(rss_bytes(api_pid));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        let t0 = Instant::now();
        let upload = self.client.api.upload_file(path, None, None, |_| {}).await?;
        let sent = t0.elapsed();
        let attachment = self.client.api.wait_for_scan(upload.id()?, Duration::from_secs(300)).await?;
        let to_clean = t0.elapsed();
        let _ = stop.send(true);
        let peak = sampler.await?;
        anyhow::ensure!(attachment.status == soma_contract::AttachmentStatus::Clean, "not clean: {attachment:?}");
        anyhow::ensure!(attachment.sha256.as_deref() == Some(sha256), "the stored file differs");
        // The next run starts once this file is in S3, so it does not share the machine with it.
        let to_s3 = loop {
            let attachment = self.client.api.attachment(attachment.id).await?;
            if attachment.storage.is_some() {
                anyhow::ensure!(attachment.storage == Some(soma_contract::AttachmentStorage::S3), "not in S3: {attachment:?}");
                break t0.elapsed();
            }
            anyhow::ensure!(t0.elapsed() < Duration::from_secs(300), "not stored after 300 s: {attachment:?}");
            tokio::time::sleep(Duration::from_millis(25)).await;
        };
        const MIB: f64 = 1024.0 * 1024.0;
        Ok(UploadRun {
            raw,
            sent,
            to_clean,
            to_s3,
            rss_before_mib: rss_before as f64 / MIB,
            rss_growth_mib: peak.saturating_sub(rss_before) as f64 / MIB,
        })
    }

    /// Idle SSE connections held by the api, and the memory each costs it.
    async fn idle_streams(&self) -> anyhow::Result<Row> {
        self.answer_at_once();
        let count = if self.quick { 1_000 } else { 10_000 };
        let (_, last_id) = self.client.complete_turn(Some(&self.session), "idle streams").await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_before = rss_bytes(self.api_pid());
        let connections = open_idle_streams(self.stack.api_addr, &self.session, last_id, count).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let per_connection =
            (rss_bytes(self.api_pid()).saturating_sub(rss_before)) as f64 / connections.len() as f64 / 1024.0;
        Ok(row(
            "idle SSE connections held by one api process, memory each",
            format!("{} held, {per_connection:.1} KiB each", connections.len()),
            "10,000 at ≤ 16 KiB each",
            Some(connections.len() >= 10_000 && per_connection <= 16.0),
        ))
    }

    /// Many clients, each of their sessions streaming 20 deltas/s: [`RUNS`] runs, each a turn
    /// in every session with every client following it.
    async fn active_streams(&self) -> anyhow::Result<Row> {
        self.answer_at_once();
        let (sessions, clients_each) = if self.quick { (10, 20) } else { (50, 20) };
        let mut session_ids = Vec::new();
        for s in 0..sessions {
            session_ids.push(self.client.complete_turn(None, &format!("active setup {s}")).await?);
        }
        self.stack.provider.update_options(|o| {
            o.time_to_first_token = Duration::from_millis(100);
            o.token_interval = Duration::from_millis(50);
            o.extra_words = 100;
        });
        let mut clients = Vec::new();
        for (session, last_id) in &session_ids {
            for _ in 0..clients_each {
                clients.push((session.clone(), self.client.events(session, Some(*last_id)).await));
            }
        }
        let (mut p50s, mut p99s) = (Runs(Vec::new()), Runs(Vec::new()));
        let (mut to_stored99s, mut stored99s) = (Runs(Vec::new()), Runs(Vec::new()));
        let before = self.cpu.sample();
        let t0 = Instant::now();
        for run in 0..RUNS {
            // Clients read while the turns are being sent: a client that only starts reading once
            // all POSTs are done would find a second's worth of deltas waiting in its socket.
            let turn_of: HashMap<&str, tokio::sync::watch::Sender<Option<(String, String)>>> =
                session_ids.iter().map(|(session, _)| (session.as_str(), Default::default())).collect();
            let followers = clients.iter_mut().map(|(session, stream)| {
                let mut sent = turn_of[session.as_str()].subscribe();
                async move {
                    let (turn_id, message) =
                        sent.wait_for(Option::is_some).await.expect("turn sent").clone().expect("some");
                    self.client.follow_turn(stream, &turn_id, &message, Instant::now()).await
                }
            });
            let sends = async {
                for (s, (session, _)) in session_ids.iter().enumerate() {
                    let message = format!("active {run}.{s}");
                    let (_, turn_id, _) = self.client.send(Some(session), &message).await?;
                    turn_of[session.as_str()].send_replace(Some((turn_id, message)));
                }
                anyhow::Ok(())
            };
            let (followed, sent) = tokio::join!(futures::future::join_all(followers), sends);
            sent?;
            let mut delivery: Vec<f64> = followed.iter().flat_map(|f| f.delivery_ms.iter().copied()).collect();
            let mut stored: Vec<f64> =
                followed.iter().flat_map(|f| f.stored_to_client_ms.iter().copied()).collect();
            p50s.0.push(percentile(&mut delivery, 50.0));
            p99s.0.push(percentile(&mut delivery, 99.0));
            stored99s.0.push(percentile(&mut stored, 99.0));
            let mut to_stored: Vec<f64> =
                followed.iter().flat_map(|f| f.sent_to_stored_ms.iter().copied()).collect();
            to_stored99s.0.push(percentile(&mut to_stored, 99.0));
        }
        let seconds = t0.elapsed().as_secs_f64();
        let after = self.cpu.sample();
        let active_cpu = self.cpu.describe(&before, &after, seconds);
        let api_and_postgres = self.cpu.percent_of(&["api", "postgres"], &before, &after, seconds);
        let (cpu_before, before_where) = api_and_postgres_cpu_before();
        Ok(row(
            "active streams: clients each receiving 20 deltas/s, delivery latency",
            format!(
                "{} clients on {sessions} sessions: p50 {}, p99 {}\n    of which provider → stored row (the worker), p99 {}; stored row → client, p99 {}\n    CPU: {active_cpu}\n    api + postgres {api_and_postgres:.0}% of a core (before group commits: {cpu_before:.0}%, {before_where})",
                sessions * clients_each,
                p50s.show(),
                p99s.show(),
                to_stored99s.show(),
                stored99s.show()
            ),
            "1,000 clients, p99 ≤ 100 ms in every run; api + postgres CPU ≤ half of before",
            Some(
                sessions * clients_each >= 1000
                    && p99s.max() <= 100.0
                    && api_and_postgres <= cpu_before / 2.0,
            ),
        ))
    }
}

impl Bench {
    /// How long a session deletion takes, from the 202 to the last of its rows gone, for
    /// sessions with one finished turn; its stream's 3 s of grace is part of it.
    async fn session_deletion(&self) -> anyhow::Result<Row> {
        self.answer_at_once();
        let samples = if self.quick { 5 } else { 20 };
        let mut sessions = Vec::new();
        for i in 0..samples {
            sessions.push(self.client.complete_turn(None, &format!("to delete {i}")).await?.0);
        }
        let pool = sqlx::PgPool::connect(&self.stack.database_url).await?;
        let deletions = sessions.iter().map(|session| {
            let pool = pool.clone();
            async move {
                let id: uuid::Uuid = session.parse()?;
                let sent = Instant::now();
                self.client.api.delete(id).await?;
                loop {
                    let gone: bool = sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM sessions WHERE id = $1)")
                        .bind(id)
                        .fetch_one(&pool)
                        .await?;
                    if gone {
                        return anyhow::Ok(ms(sent.elapsed()));
                    }
                    anyhow::ensure!(sent.elapsed() < Duration::from_secs(120), "session {id} was never removed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        });
        let mut took = futures::future::try_join_all(deletions).await?;
        pool.close().await;
        let (p50, p95) = (percentile(&mut took, 50.0), percentile(&mut took, 95.0));
        Ok(row(
            "session deletion: DELETE → its rows gone (includes 3 s for open streams to see session.deleted)",
            format!("p50 {p50:.0} ms, p95 {p95:.0} ms ({samples} at once)"),
            "p95 ≤ 5 s",
            Some(p95 <= 5000.0),
        ))
    }
}

/// The provider's own time to first content token, through the worker's own client.
async fn measure_provider_ttft(base_url: &str, samples: usize) -> anyhow::Result<Vec<f64>> {
    let client = soma_activities::LlmClient::new(base_url, "", soma_devllm::MODEL, Duration::from_secs(60));
    let mut times = Vec::new();
    for i in 0..samples {
        let messages = vec![soma_activities::llm::ChatMessage::text("user", format!("direct {i}"))];
        let sent = Instant::now();
        let mut stream = Box::pin(client.stream_chat(&messages, &[], "bench").await?);
        while let Some(chunk) = stream.next().await {
            if matches!(chunk?, soma_activities::llm::LlmChunk::Delta(_)) {
                times.push(ms(sent.elapsed()));
                break;
            }
        }
    }
    Ok(times)
}

/// Opens `count` event streams that stay idle (they start after the last event).
async fn open_idle_streams(
    addr: std::net::SocketAddr,
    session: &str,
    after: i64,
    count: usize,
) -> anyhow::Result<Vec<tokio::net::TcpStream>> {
    let request = format!(
        "GET /v1/session/{session}/events HTTP/1.1\r\nHost: {addr}\r\nX-API-Key: {KEY}\r\nAccept: text/event-stream\r\nLast-Event-ID: {after}\r\n\r\n"
    );
    let open = |_| {
        let request = request.clone();
        async move {
            let mut socket = tokio::net::TcpStream::connect(addr).await?;
            socket.write_all(request.as_bytes()).await?;
            let mut head = vec![0u8; 1024];
            let n = socket.read(&mut head).await?;
            anyhow::ensure!(
                head[..n].starts_with(b"HTTP/1.1 200"),
                "stream refused: {}",
                String::from_utf8_lossy(&head[..n])
            );
            anyhow::Ok(socket)
        }
    };
    let results: Vec<_> = futures::stream::iter(0..count).map(open).buffer_unordered(200).collect().await;
    let mut sockets = Vec::with_capacity(count);
    for result in results {
        match result {
            Ok(socket) => sockets.push(socket),
            Err(err) => {
                eprintln!("idle streams: stopped at {} connections: {err}", sockets.len());
                break;
            }
        }
    }
    Ok(sockets)
}

/// The machine, as the table's heading says it: cores, CPU model, memory.
fn machine() -> String {
    let model = cpu_model();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string()))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or("? GiB".into(), |kb| format!("{:.0} GiB", kb / 1024.0 / 1024.0));
    format!("{} cores ({model}), {memory}", std::thread::available_parallelism().map_or(0, |n| n.get()))
}

/// The CPU's model name, as /proc/cpuinfo says it.
fn cpu_model() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|rest| rest.split_once(':')).map(|(_, m)| m.trim()))
        .unwrap_or("unknown CPU")
        .to_string()
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    loadavg.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

fn print_table(rows: &[Row], took: Duration, quick: bool, load_before: &str) {
    let machine = machine();
    println!();
    println!(
        "Soma chat-turn benchmark{} — {machine}, release build, Temporal dev server, took {:.0} s",
        if quick { " (quick: not figures to quote)" } else { "" },
        took.as_secs_f64()
    );
    println!("load average before it started: {load_before}");
    println!(
        "provider: time-to-first-token {} ms, one token every {} ms",
        PROVIDER_TTFT.as_millis(),
        PROVIDER_TOKEN_INTERVAL.as_millis()
    );
    println!();
    println!("| figure | measured | target | met |");
    println!("|---|---|---|---|");
    for r in rows {
        let met = match r.ok {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "—",
        };
        println!("| {} | {} | {} | {met} |", r.figure, r.measured.replace('\n', "<br>"), r.target);
    }
}

impl Bench {
    /// Runs one maintenance job to its end on the stack's worker, as its schedule would.
    async fn run_job(&self, job: soma_contract::MaintenanceJob) -> anyhow::Result<(soma_contract::api::MaintenanceReport, f64)> {
        let id = format!("bench-{job}-{}", uuid::Uuid::new_v4());
        let options = WorkflowStartOptions::new(self.stack.task_queue.clone(), id).build();
        let t0 = Instant::now();
        let handle = self.temporal.start_workflow(soma_workflows::MaintenanceWorkflow::run, job, options).await?;
        let report = handle.get_result(Default::default()).await?;
        Ok((report, ms(t0.elapsed())))
    }

    /// The periodic jobs: a publish-metrics run beside Temporal's floor for one activity, and
    /// the rates at which compact-deltas and cleanup-sessions work through a backlog of
    /// finished sessions made old (by moving their times back).
    async fn maintenance(&self) -> anyhow::Result<Vec<Row>> {
        use soma_contract::MaintenanceJob;
        self.answer_at_once();
        let runs = if self.quick { 5 } else { 20 };
        let (mut ours, mut floor) = (Vec::new(), Vec::new());
        for i in 0..runs {
            ours.push(self.run_job(MaintenanceJob::PublishMetrics).await?.1);
            let workflow_id = format!("maintenance-floor/{}/{i}", self.stack.run_id);
            let options = WorkflowStartOptions::new(self.stack.baseline_task_queue(), workflow_id).build();
            let t0 = Instant::now();
            let handle = self.temporal.start_workflow(EmptyStepsWorkflow::run, EmptySteps { local: 0, regular: 1 }, options).await?;
            handle.get_result(Default::default()).await?;
            floor.push(ms(t0.elapsed()));
        }
        let (ours, floor) = (percentile(&mut ours, 50.0), percentile(&mut floor, 50.0));

        // A backlog: sessions with one finished turn each, sent 50 at a time.
        let total = if self.quick { 40 } else { 200 };
        let mut sessions = Vec::new();
        for chunk in (0..total).collect::<Vec<_>>().chunks(50) {
            let turns = chunk.iter().map(|i| {
                let message = format!("old session {i}");
                async move { self.client.complete_turn(None, &message).await }
            });
            for (session, _) in futures::future::try_join_all(turns).await? {
                sessions.push(session.parse::<uuid::Uuid>()?);
            }
        }
        let pool = sqlx::PgPool::connect(&self.stack.database_url).await?;
        // The turns' memory writes first, so the jobs are timed on an otherwise idle worker.
        let settled = Instant::now();
        while sqlx::query_scalar::<_, i64>("SELECT count(*) FROM memory_writes WHERE status = 'pending'").fetch_one(&pool).await? > 0 {
            anyhow::ensure!(settled.elapsed() < Duration::from_secs(120), "the turns' memory writes never finished");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        const DELTAS: &str = "SELECT count(*) FROM session_events WHERE kind = 'llm.delta' AND session_id = ANY($1)";
        let before: i64 = sqlx::query_scalar(DELTAS).bind(&sessions).fetch_one(&pool).await?;
        sqlx::query("UPDATE turns SET updated_at = now() - interval '2 days' WHERE session_id = ANY($1)")
            .bind(&sessions)
            .execute(&pool)
            .await?;
        let (compacted, compact_ms) = self.run_job(MaintenanceJob::CompactDeltas).await?;
        let after: i64 = sqlx::query_scalar(DELTAS).bind(&sessions).fetch_one(&pool).await?;
        let removed = before - after;
        anyhow::ensure!(compacted.items as usize >= total, "compact-deltas compacted {} of {total} turns", compacted.items);
        let compact_rate = compacted.items as f64 / (compact_ms / 1000.0);

        sqlx::query("UPDATE sessions SET updated_at = now() - interval '400 days' WHERE id = ANY($1)")
            .bind(&sessions)
            .execute(&pool)
            .await?;
        let (cleaned, cleanup_ms) = self.run_job(MaintenanceJob::CleanupSessions).await?;
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE id = ANY($1)")
            .bind(&sessions)
            .fetch_one(&pool)
            .await?;
        pool.close().await;
        anyhow::ensure!(left == 0, "cleanup-sessions left {left} of {total} expired sessions ({})", cleaned.summary);
        let cleanup_rate = total as f64 / (cleanup_ms / 1000.0);
        Ok(vec![
            row(
                "maintenance: a publish-metrics run, start → result (p50) · Temporal's floor for one activity",
                format!("{ours:.0} ms · floor {floor:.0} ms ({runs} runs)"),
                "≤ floor + 100 ms",
                Some(ours <= floor + 100.0),
            ),
            row(
                "maintenance: compact-deltas through a backlog of finished turns",
                format!("{} turns ({removed} delta rows removed) in {compact_ms:.0} ms: {compact_rate:.0} turns/s", compacted.items),
                "≥ 50 turns/s (above the sustained turn rate)",
                Some(compact_rate >= 50.0),
            ),
            row(
                "maintenance: cleanup-sessions through a backlog of expired sessions (with their turns and events)",
                format!("{total} sessions in {cleanup_ms:.0} ms: {cleanup_rate:.0} sessions/s"),
                "≥ 10 sessions/s",
                Some(cleanup_rate >= 10.0),
            ),
        ])
    }
}
