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

/// A worker for the baseline on `task_queue`, with the chat worker's sticky-queue setting.
pub fn worker(
    runtime: &temporalio_sdk::Runtime,
    client: temporalio_client::Client,
    task_queue: String,
) -> anyhow::Result<Worker> {
    let options = WorkerOptions::new(task_queue)
        .register_workflow::<EmptyStepsWorkflow>()?
        .register_activities(BaselineActivities)
        .sticky_queue_schedule_to_start_timeout(Duration::from_secs(3))
        .build();
    Ok(Worker::new(runtime, client, options)?)
}
