//! `ChatTurnWorkflow`: one chat turn, step by step as in the design's table.
//!
//! begin turn (store the user message; while earlier turns run, wait for them first) →
//! stream the LLM reply → store the assistant message → finish the turn (`turn.complete`).
//! A cancel request stops the stream, keeps the partial reply as `cancelled` and ends with
//! `turn.cancelled`; a step that exhausts its retries ends with `turn.failed`, an `error` event
//! and an audit row, then fails the workflow so operators see it in the Temporal UI.
#![allow(unreachable_pub)]

use serde::{Deserialize, Serialize};
use temporalio_client::{WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityExecutionError, WorkflowContext, WorkflowContextView, WorkflowResult, WorkflowTermination,
};
use uuid::Uuid;

use soma_contract::{TurnOutcome, TurnRef};

use crate::activities::{AssistantMessageInput, FinishTurnInput, LlmActivities, SessionActivities};
use crate::steps;

/// Input of `ChatTurnWorkflow`.
pub type ChatTurnInput = TurnRef;

/// Output of `ChatTurnWorkflow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurnOutput {
    pub status: TurnOutcome,
    pub assistant_message_id: Option<Uuid>,
}

#[workflow]
pub struct ChatTurnWorkflow {
    turn: TurnRef,
}

/// How the conversation steps ended before the turn is finished.
enum Ended {
    Replied(Option<Uuid>),
    Cancelled,
    Failed(Box<ActivityExecutionError>),
}

#[workflow_methods]
impl ChatTurnWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, input: ChatTurnInput) -> Self {
        Self { turn: input }
    }

    #[run(name = "ChatTurnWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<ChatTurnOutput> {
        let turn = ctx.state(|s| s.turn.clone());
        let ended = match converse(ctx, &turn).await {
            Ok(message_id) => Ended::Replied(message_id),
            Err(ActivityExecutionError::Cancelled(_)) => Ended::Cancelled,
            Err(err) => Ended::Failed(Box::new(err)),
        };

        // Steps after the conversation run even when the workflow was cancelled: the partial
        // reply and the turn's end must be recorded whatever happened.
        let status = match &ended {
            Ended::Replied(_) => TurnOutcome::Completed,
            Ended::Cancelled => TurnOutcome::Cancelled,
            Ended::Failed(_) => TurnOutcome::Failed,
        };
        let assistant_message_id = match ended {
            Ended::Replied(id) => id,
            _ => {
                ctx.execute_activity(
                    SessionActivities::persist_assistant_message,
                    AssistantMessageInput { turn: turn.clone(), status },
                    steps::database_after_cancel(),
                )
                .await?
            }
        };
        let reason = match &ended {
            Ended::Failed(err) => Some(failure_reason(err)),
            _ => None,
        };
        ctx.execute_activity(
            SessionActivities::finish_turn,
            FinishTurnInput { turn, status, assistant_message_id, reason },
            steps::database_after_cancel(),
        )
        .await?;

        match ended {
            Ended::Replied(_) => Ok(ChatTurnOutput { status, assistant_message_id }),
            Ended::Cancelled => Err(WorkflowTermination::cancelled()),
            Ended::Failed(err) => Err((*err).into()),
        }
    }
}

/// Why a step failed, in the words of its deepest cause: the activity's own error ("LLM
/// provider rejected the request: HTTP 401 …") or the timeout that ended it, rather than the
/// wrapper's "Activity task failed". This is what the user reads in the `error` event.
fn failure_reason(err: &ActivityExecutionError) -> String {
    let mut failure = err.failure();
    let mut deepest = None;
    while let Some(current) = failure {
        if !current.message.is_empty() {
            deepest = Some(current.message.clone());
        }
        failure = current.cause.as_deref();
    }
    deepest.unwrap_or_else(|| err.to_string())
}

/// The steps a cancel request may interrupt. Returns the assistant message's ID.
async fn converse(
    ctx: &mut WorkflowContext<ChatTurnWorkflow>,
    turn: &TurnRef,
) -> Result<Option<Uuid>, ActivityExecutionError> {
    // A local activity: no server round trip before the LLM call when the session is idle.
    while !ctx
        .execute_local_activity(SessionActivities::begin_turn, turn.clone(), steps::local_database())
        .await?
    {
        ctx.execute_activity(SessionActivities::wait_for_earlier_turns, turn.clone(), steps::wait()).await?;
    }
    ctx.execute_activity(LlmActivities::stream_reply, turn.clone(), steps::llm_stream()).await?;
    ctx.execute_activity(
        SessionActivities::persist_assistant_message,
        AssistantMessageInput { turn: turn.clone(), status: TurnOutcome::Completed },
        steps::database(),
    )
    .await
}

impl ChatTurnWorkflow {
    /// The readable workflow ID of a turn: `chat/{session}/{turn}`.
    pub fn workflow_id(session_id: Uuid, turn_id: Uuid) -> String {
        format!("chat/{session_id}/{turn_id}")
    }

    /// How a turn's workflow is started: under its turn's ID, reusing a running one and never
    /// running a finished one again, so a retried request or a recovery sweep starts at most
    /// one workflow per turn.
    pub fn start_options(task_queue: &str, turn: &TurnRef) -> WorkflowStartOptions {
        WorkflowStartOptions::new(task_queue.to_string(), Self::workflow_id(turn.session_id, turn.turn_id))
            .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
            .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
            .build()
    }
}
