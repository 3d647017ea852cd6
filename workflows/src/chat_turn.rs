//! `ChatTurnWorkflow`: one chat turn, step by step as in the design's table.
//!
//! begin turn (policy gate `conversation.send`; store the user message; while earlier turns
//! run, wait for them first) → recall memories for the prompt → stream the LLM reply → while the model asks for tools: run the
//! round's calls as child `ToolExecutionWorkflow`s in parallel, then stream the next round →
//! store the assistant message → finish the turn (`turn.complete`) → start the memory writes
//! of its messages (not awaited: a turn completes while the memory backend is down).
//! A cancel request stops the stream, keeps the partial reply as `cancelled` and ends with
//! `turn.cancelled`; a step that exhausts its retries ends with `turn.failed`, an `error` event
//! and an audit row, then fails the workflow so operators see it in the Temporal UI.
#![allow(unreachable_pub)]

use serde::{Deserialize, Serialize};
use temporalio_client::{WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityExecutionError, ChildWorkflowOptions, ParentClosePolicy, WorkflowContext, WorkflowContextView,
    WorkflowResult, WorkflowTermination,
};
use uuid::Uuid;

use soma_contract::events::ErrorCode;
use soma_contract::{ToolCallRef, ToolCallStatus, TurnOutcome, TurnRef, WorkKind};

use crate::activities::{
    AssistantMessageInput, FinishToolCall, FinishTurnInput, LlmActivities, MemoryActivities, ReplyRound,
    SessionActivities, ToolActivities, TurnBegin,
};
use crate::{steps, visibility};
use crate::tool_execution::ToolExecutionWorkflow;

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
    /// The policy did not allow the turn: it fails, with the reason, but the workflow does not.
    Denied(String),
    Failed(Box<ActivityExecutionError>),
}

impl From<ActivityExecutionError> for Ended {
    fn from(err: ActivityExecutionError) -> Self {
        match err {
            ActivityExecutionError::Cancelled(_) => Ended::Cancelled,
            err => Ended::Failed(Box::new(err)),
        }
    }
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
            Err(ended) => ended,
        };

        // Steps after the conversation run even when the workflow was cancelled: the partial
        // reply and the turn's end must be recorded whatever happened.
        let status = match &ended {
            Ended::Replied(_) => TurnOutcome::Completed,
            Ended::Cancelled => TurnOutcome::Cancelled,
            Ended::Denied(_) | Ended::Failed(_) => TurnOutcome::Failed,
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
        let (reason, code) = match &ended {
            Ended::Failed(err) => (Some(steps::failure_reason(err)), Some(ErrorCode::TurnFailed)),
            Ended::Denied(reason) => (Some(reason.clone()), Some(ErrorCode::PolicyDenied)),
            _ => (None, None),
        };
        ctx.execute_activity(
            SessionActivities::finish_turn,
            FinishTurnInput { turn: turn.clone(), status, assistant_message_id, reason, code },
            steps::database_after_cancel(),
        )
        .await?;
        // After the turn's end, so remembering never delays the user; its writes run on.
        ctx.execute_local_activity(MemoryActivities::remember_turn, turn, steps::local_database_after_cancel())
            .await?;

        match ended {
            Ended::Replied(_) | Ended::Denied(_) => Ok(ChatTurnOutput { status, assistant_message_id }),
            Ended::Cancelled => Err(WorkflowTermination::cancelled()),
            Ended::Failed(err) => Err((*err).into()),
        }
    }
}

/// The steps a cancel request may interrupt. Returns the assistant message's ID.
async fn converse(ctx: &mut WorkflowContext<ChatTurnWorkflow>, turn: &TurnRef) -> Result<Option<Uuid>, Ended> {
    // A local activity: no server round trip before the LLM call when the session is idle.
    loop {
        match ctx.execute_local_activity(SessionActivities::begin_turn, turn.clone(), steps::local_database()).await? {
            TurnBegin::Begun => break,
            TurnBegin::BegunWithAttachments => {
                ctx.execute_activity(SessionActivities::await_attachments, turn.clone(), steps::wait()).await?;
                break;
            }
            TurnBegin::Denied { reason } => return Err(Ended::Denied(reason)),
            TurnBegin::WaitForEarlier => {
                ctx.execute_activity(SessionActivities::wait_for_earlier_turns, turn.clone(), steps::wait()).await?;
            }
        }
    }
    // Local too: recall costs the backend's answer, not a server round trip.
    ctx.execute_local_activity(MemoryActivities::recall_for_turn, turn.clone(), steps::local_database()).await?;
    let mut round = 0;
    loop {
        let reply = ReplyRound { turn: turn.clone(), round };
        let outcome = ctx.execute_activity(LlmActivities::stream_reply, reply, steps::llm_stream()).await?;
        if outcome.tool_calls.is_empty() {
            break;
        }
        run_tools(ctx, turn, &outcome.tool_calls).await?;
        round += 1;
    }
    ctx.execute_activity(
        SessionActivities::persist_assistant_message,
        AssistantMessageInput { turn: turn.clone(), status: TurnOutcome::Completed },
        steps::database(),
    )
    .await
    .map_err(Ended::from)
}

/// Runs one round's tool calls as child workflows, all at once, until each has its result.
/// Cancelling the turn cancels them (and their tools). A child that ended without recording
/// a result (terminated by an operator, say) gets one here, so the model always hears back.
async fn run_tools(
    ctx: &mut WorkflowContext<ChatTurnWorkflow>,
    turn: &TurnRef,
    tool_call_ids: &[Uuid],
) -> Result<(), Ended> {
    let calls: Vec<ToolCallRef> = tool_call_ids
        .iter()
        .map(|&tool_call_id| ToolCallRef {
            tenant_id: turn.tenant_id.clone(),
            session_id: turn.session_id,
            tool_call_id,
            turn_id: Some(turn.turn_id),
            request_id: turn.request_id.clone(),
            trace_id: turn.trace_id.clone(),
        })
        .collect();
    let view = &*ctx;
    let children = calls.iter().map(|call| async move {
        let options = ChildWorkflowOptions::builder()
            .workflow_id(ToolExecutionWorkflow::workflow_id(call.session_id, call.tool_call_id))
            .parent_close_policy(ParentClosePolicy::RequestCancel)
            .search_attributes(visibility::search_attributes(WorkKind::Tool, &call.tenant_id, Some(call.session_id)))
            .build();
        let started = view.start_child_workflow(ToolExecutionWorkflow::run, call.clone(), options).await;
        match started {
            Ok(child) => child.result().await.map(|outcome| outcome.status).map_err(|e| e.to_string()),
            Err(err) => Err(err.to_string()),
        }
    });
    let results = temporalio_sdk::workflows::join_all(children).await;
    if ctx.cancellation_token().is_cancelled() {
        return Err(Ended::Cancelled);
    }
    for (call, result) in calls.into_iter().zip(results) {
        if let Err(reason) = result {
            let finish = FinishToolCall {
                call,
                status: ToolCallStatus::Failed,
                reason: Some(format!("the tool's workflow ended without a result: {reason}")),
            };
            ctx.execute_activity(ToolActivities::finish_tool_call, finish, steps::database()).await?;
        }
    }
    Ok(())
}

impl ChatTurnWorkflow {
    /// The readable workflow ID of a turn: `chat/{session}/{turn}`.
    pub fn workflow_id(session_id: Uuid, turn_id: Uuid) -> String {
        format!("chat/{session_id}/{turn_id}")
    }

    /// How a turn's workflow is started: under its turn's ID, reusing a running one and never
    /// running a finished one again, so a retried request or a recovery sweep starts at most
    /// one workflow per turn. `message` (its first words) is the memo's summary.
    pub fn start_options(task_queue: &str, turn: &TurnRef, message: &str) -> WorkflowStartOptions {
        WorkflowStartOptions::new(task_queue.to_string(), Self::workflow_id(turn.session_id, turn.turn_id))
            .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
            .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
            .search_attributes(visibility::search_attributes(WorkKind::Chat, &turn.tenant_id, Some(turn.session_id)))
            .memo(visibility::memo(&turn.request_id, message))
            .build()
    }
}
