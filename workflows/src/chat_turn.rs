//! `ChatTurnWorkflow`: one chat turn, step by step as in DESIGN.md's table.
//!
//! begin turn (persist the user message; while earlier turns run, wait for them first) →
//! stream LLM reply → persist assistant message → finish turn (`turn.complete`). A cancel request stops the stream, keeps the
//! partial reply as `cancelled` and ends with `turn.cancelled`; a step that exhausts its
//! retries ends with `turn.failed`, an `error` event and an audit row, then fails the workflow
//! so operators see it in the Temporal UI.
#![allow(unreachable_pub)]

use std::time::Duration;

use temporalio_common::RetryPolicy;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, LocalActivityOptions,
    WorkflowCancellationToken, WorkflowContext, WorkflowContextView, WorkflowResult, WorkflowTermination,
};
use uuid::Uuid;

use crate::activities::ChatActivities;
use crate::contract::{
    AssistantMessageInput, ChatTurnInput, ChatTurnOutput, FinishTurnInput, TurnRef, TurnStatus,
};

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
            Ended::Replied(_) => TurnStatus::Completed,
            Ended::Cancelled => TurnStatus::Cancelled,
            Ended::Failed(_) => TurnStatus::Failed,
        };
        let assistant_message_id = match ended {
            Ended::Replied(id) => id,
            _ => {
                ctx.execute_activity(
                    ChatActivities::persist_assistant_message,
                    AssistantMessageInput { turn: turn.clone(), status },
                    cleanup_step(),
                )
                .await?
            }
        };
        let reason = match &ended {
            Ended::Failed(err) => Some(err.to_string()),
            _ => None,
        };
        ctx.execute_activity(
            ChatActivities::finish_turn,
            FinishTurnInput { turn, status, assistant_message_id, reason },
            cleanup_step(),
        )
        .await?;

        match ended {
            Ended::Replied(_) => Ok(ChatTurnOutput { status, assistant_message_id }),
            Ended::Cancelled => Err(WorkflowTermination::cancelled()),
            Ended::Failed(err) => Err((*err).into()),
        }
    }
}

/// The steps a cancel request may interrupt. Returns the assistant message's ID.
async fn converse(
    ctx: &mut WorkflowContext<ChatTurnWorkflow>,
    turn: &TurnRef,
) -> Result<Option<Uuid>, ActivityExecutionError> {
    // A local activity: no server round trip before the LLM call when the session is idle.
    while !ctx.execute_local_activity(ChatActivities::begin_turn, turn.clone(), local_db_step()).await? {
        ctx.execute_activity(ChatActivities::wait_for_earlier_turns, turn.clone(), queue_wait()).await?;
    }
    ctx.execute_activity(ChatActivities::stream_llm_reply, turn.clone(), llm_stream()).await?;
    ctx.execute_activity(
        ChatActivities::persist_assistant_message,
        AssistantMessageInput { turn: turn.clone(), status: TurnStatus::Completed },
        db_step(),
    )
    .await
}

/// Short Postgres writes: retried with backoff for a few minutes, so a database restart
/// delays a turn rather than failing it.
fn db_step() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .maximum_interval(Duration::from_secs(20))
                .maximum_attempts(20)
                .build(),
        )
        .build()
}

/// A short Postgres step run by the workflow's own worker, retried like [`db_step`].
fn local_db_step() -> LocalActivityOptions {
    LocalActivityOptions::builder()
        .start_to_close_timeout(Duration::from_secs(30))
        .schedule_to_close_timeout(Duration::from_secs(600))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .maximum_interval(Duration::from_secs(20))
                .build(),
        )
        .build()
}

/// Like [`db_step`], but detached from the workflow's cancellation so that a cancelled turn
/// still records its end.
fn cleanup_step() -> ActivityOptions {
    let mut options = db_step();
    options.cancellation_token = Some(WorkflowCancellationToken::new());
    options
}

/// Waiting for earlier turns of the session may take as long as they do; heartbeats tell a
/// dead worker from a long wait.
fn queue_wait() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(24 * 3600))
        .heartbeat_timeout(Duration::from_secs(10))
        .cancellation_type(ActivityCancellationType::TryCancel)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .maximum_interval(Duration::from_secs(10))
                .build(),
        )
        .build()
}

/// The provider call: heartbeats every few hundred ms, so a dead worker is noticed within the
/// heartbeat timeout and a cancel request reaches the stream quickly. The workflow waits for
/// the activity to stop so the partial reply is complete before it is stored.
fn llm_stream() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(600))
        .heartbeat_timeout(Duration::from_secs(3))
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .maximum_interval(Duration::from_secs(10))
                .maximum_attempts(5)
                .build(),
        )
        .build()
}
