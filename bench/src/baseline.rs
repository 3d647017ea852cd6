//! `EmptyStepsWorkflow`: the orchestration floor. It runs as many activities as a chat turn
//! (local ones first, then regular ones), each doing nothing, so the benchmark can put the
//! chat turn's figures next to what the Temporal server allows on the same machine in the same
//! run: its rate, and how long after the start request the first regular activity begins (the
//! chat turn's LLM call is its first regular activity).
//!
//! Only the benchmark's own worker (`soma-bench-worker`, a process of its own like the chat
//! worker) registers it, on a task queue of its own; production workers never do.
#![allow(unreachable_pub)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{
    ActivityOptions, LocalActivityOptions, Worker, WorkerOptions, WorkflowContext, WorkflowContextView,
    WorkflowResult,
};

/// The baseline's task queue, beside the chat worker's.
pub fn task_queue(chat_task_queue: &str) -> String {
    format!("{chat_task_queue}-baseline")
}

/// How many empty steps of each kind to run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct EmptySteps {
    pub local: u32,
    pub regular: u32,
}

impl EmptySteps {
    /// As many steps of each kind as a chat turn that needs no wait: `begin_turn` (local),
    /// then the LLM stream, the assistant message and `finish_turn`.
    pub const CHAT_TURN: EmptySteps = EmptySteps { local: 1, regular: 3 };
}

#[workflow]
pub struct EmptyStepsWorkflow {
    steps: EmptySteps,
}

#[workflow_methods]
impl EmptyStepsWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, steps: EmptySteps) -> Self {
        Self { steps }
    }

    /// Returns when the first regular step began (µs since the Unix epoch; 0 without one).
    #[run(name = "EmptyStepsWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<u64> {
        let steps = ctx.state(|s| s.steps);
        for _ in 0..steps.local {
            let options =
                LocalActivityOptions::builder().start_to_close_timeout(Duration::from_secs(30)).build();
            ctx.execute_local_activity(BaselineActivities::empty_step, (), options).await?;
        }
        let mut first_regular_began = 0;
        for _ in 0..steps.regular {
            let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30)).build();
            let began = ctx.execute_activity(BaselineActivities::empty_step, (), options).await?;
            if first_regular_began == 0 {
                first_regular_began = began;
            }
        }
        Ok(first_regular_began)
    }
}

/// The floor of one tool round: an activity ends (the model asked for a tool), a child
/// workflow with one activity runs (the tool), then the parent's next activity begins (the
/// model hears back). Returns that gap in µs, as the activities' own clocks saw it.
#[workflow]
pub struct ToolRoundFloorWorkflow;

#[workflow_methods]
impl ToolRoundFloorWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, _input: ()) -> Self {
        Self
    }

    #[run(name = "ToolRoundFloorWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<u64> {
        let options = || ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30)).build();
        let asked = ctx.execute_activity(BaselineActivities::empty_step, (), options()).await?;
        let child = ctx
            .start_child_workflow(EmptyStepsWorkflow::run, EmptySteps { local: 0, regular: 1 }, Default::default())
            .await?;
        child.result().await?;
        let back = ctx.execute_activity(BaselineActivities::empty_step, (), options()).await?;
        Ok(back.saturating_sub(asked))
    }
}

/// [`ToolRoundFloorWorkflow`]'s gap, in ms.
pub async fn tool_round_floor(client: &temporalio_client::Client, task_queue: &str) -> anyhow::Result<f64> {
    let workflow_id = format!("bench-tool-floor/{}", uuid::Uuid::new_v4());
    let options = temporalio_client::WorkflowStartOptions::new(task_queue.to_string(), workflow_id).build();
    let handle = client.start_workflow(ToolRoundFloorWorkflow::run, (), options).await?;
    Ok(handle.get_result(Default::default()).await? as f64 / 1000.0)
}

/// The baseline's activity: does nothing, as fast as the worker can, and says when it began.
pub struct BaselineActivities;

#[activities]
impl BaselineActivities {
    /// Returns the wall-clock time it began, in microseconds since the Unix epoch.
    #[activity]
    pub async fn empty_step(_ctx: ActivityContext) -> Result<u64, ActivityError> {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(since_epoch.as_micros() as u64)
    }
}

/// How long after its start request an empty workflow's first regular activity runs, when a
/// local one goes first: the part of the time to first token that is the Temporal server's
/// (start, a workflow task, its completion, the activity dispatch). With `eager`, the start
/// response carries the first workflow task to a worker sharing `client`'s connection.
pub async fn floor(client: &temporalio_client::Client, task_queue: &str, eager: bool) -> anyhow::Result<f64> {
    let workflow_id = format!("bench-floor/{}", uuid::Uuid::new_v4());
    let options = temporalio_client::WorkflowStartOptions::new(task_queue.to_string(), workflow_id)
        .enable_eager_workflow_start(eager)
        .build();
    let sent = std::time::SystemTime::now();
    let handle = client.start_workflow(EmptyStepsWorkflow::run, EmptySteps { local: 1, regular: 1 }, options).await?;
    let began_us = handle.get_result(Default::default()).await?;
    let sent_us = sent.duration_since(std::time::UNIX_EPOCH)?.as_micros() as f64;
    Ok((began_us as f64 - sent_us) / 1000.0)
}

/// The floor with eager workflow start: a baseline worker and the client that starts the
/// workflows share one connection, on a thread of their own (the SDK's worker is `!Send`), as
/// an api process hosting a worker for the chat workflow would.
pub struct EagerFloor {
    requests: tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<anyhow::Result<f64>>>,
}

impl EagerFloor {
    pub fn start(config: soma_core::Config, task_queue: String) -> anyhow::Result<EagerFloor> {
        let (requests, mut measures) =
            tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<anyhow::Result<f64>>>();
        let (ready, started) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, async move {
                let setup = async {
                    let temporal = soma_worker::temporal_runtime(None)?;
                    let client = soma_core::temporal::connect(&config, Duration::from_secs(10)).await?;
                    let worker = worker(&temporal, client.clone(), task_queue.clone())?;
                    anyhow::Ok((temporal, client, worker))
                };
                let (_temporal, client, mut worker) = match setup.await {
                    Ok(parts) => parts,
                    Err(err) => return drop(ready.send(Err(err))),
                };
                let stop = worker.shutdown_handle();
                tokio::task::spawn_local(async move {
                    while let Some(reply) = measures.recv().await {
                        let _ = reply.send(floor(&client, &task_queue, true).await);
                    }
                    stop();
                });
                let _ = ready.send(Ok(()));
                let _ = worker.run().await;
            });
        });
        started.recv()??;
        Ok(EagerFloor { requests })
    }

    pub async fn measure(&self) -> anyhow::Result<f64> {
        let (reply, result) = tokio::sync::oneshot::channel();
        self.requests.send(reply).map_err(|_| anyhow::anyhow!("the eager baseline stopped"))?;
        result.await?
    }
}

/// A worker for the baseline on `task_queue`, with the chat worker's sticky-queue setting.
pub fn worker(
    runtime: &temporalio_sdk::Runtime,
    client: temporalio_client::Client,
    task_queue: String,
) -> anyhow::Result<Worker> {
    let options = WorkerOptions::new(task_queue)
        .register_workflow::<EmptyStepsWorkflow>()?
        .register_workflow::<ToolRoundFloorWorkflow>()?
        .register_activities(BaselineActivities)
        .sticky_queue_schedule_to_start_timeout(Duration::from_secs(3))
        .build();
    Ok(Worker::new(runtime, client, options)?)
}
