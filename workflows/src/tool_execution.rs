//! `ToolExecutionWorkflow`: one tool call, step by step as in the design's table.
//!
//! catalog lookup, input check and policy gate (`tool.call`) → approval if the tool requires
//! it (`tool.approval_required`, then a decision signal or the timeout, which counts as a
//! denial) → execute within the tool's profile → record the result (`tool.result`, audit).
//! Whatever happens to the tool, the call ends with a result the model and the user see: the
//! workflow fails only if recording that result does.
//!
//! The bookkeeping steps (prepare, ask for approval, record) are local activities, and so is
//! the execution of an instant tool: a tool round costs the server's floor for a child
//! workflow, not three activity dispatches on top of it.
#![allow(unreachable_pub)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_client::errors::WorkflowInteractionError;
use temporalio_client::{
    Client, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowSignalOptions, WorkflowStartOptions,
};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityExecutionError, SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult,
    WorkflowTermination,
};
use uuid::Uuid;

use soma_contract::{ApprovalDecision, ToolCallRef, ToolCallStatus, WorkKind};

use crate::activities::{ApprovalRequest, FinishToolCall, ToolActivities, ToolPlan};
use crate::{steps, visibility};

/// The decision a person sends to a call waiting for approval (`POST /v1/tool/{id}/approve`
/// or `/deny`), as the signal `decide`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolDecision {
    pub decision: ApprovalDecision,
    pub decided_by: String,
    pub reason: Option<String>,
}

/// Output of `ToolExecutionWorkflow`: how the call ended (its output is in `tool_calls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallOutcome {
    pub status: ToolCallStatus,
}

#[workflow]
pub struct ToolExecutionWorkflow {
    call: ToolCallRef,
    decision: Option<ToolDecision>,
}

#[workflow_methods]
impl ToolExecutionWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, call: ToolCallRef) -> Self {
        Self { call, decision: None }
    }

    #[run(name = "ToolExecutionWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<ToolCallOutcome> {
        let call = ctx.state(|s| s.call.clone());
        let (status, reason) = match run_tool(ctx, &call).await {
            Ok(ended) => ended,
            Err(ActivityExecutionError::Cancelled(_)) => {
                (ToolCallStatus::Cancelled, Some("the tool call was cancelled".to_string()))
            }
            Err(err) if err.as_timeout().is_some() => (ToolCallStatus::TimedOut, Some(steps::failure_reason(&err))),
            Err(err) => (ToolCallStatus::Failed, Some(steps::failure_reason(&err))),
        };
        // Runs even when the workflow was cancelled: the call's end must be recorded.
        let status = ctx
            .execute_local_activity(
                ToolActivities::finish_tool_call,
                FinishToolCall { call, status, reason },
                steps::local_database_after_cancel(),
            )
            .await?;
        if status == ToolCallStatus::Cancelled {
            return Err(WorkflowTermination::cancelled());
        }
        Ok(ToolCallOutcome { status })
    }

    /// A person's decision on the call (only heeded while it waits for one).
    #[signal]
    pub fn decide(&mut self, _ctx: &mut SyncWorkflowContext<Self>, decision: ToolDecision) {
        self.decision.get_or_insert(decision);
    }
}

/// The steps a cancel request may interrupt. Returns the result to record: a refusal or a
/// denial, or `Succeeded` (the execution stored its output).
async fn run_tool(
    ctx: &mut WorkflowContext<ToolExecutionWorkflow>,
    call: &ToolCallRef,
) -> Result<(ToolCallStatus, Option<String>), ActivityExecutionError> {
    let plan =
        ctx.execute_local_activity(ToolActivities::prepare_tool_call, call.clone(), steps::local_database()).await?;
    let (profile, approval_timeout_ms) = match plan {
        ToolPlan::Refused { status, reason } => return Ok((status, Some(reason))),
        ToolPlan::Run { profile, approval_timeout_ms } => (profile, approval_timeout_ms),
    };
    if let Some(timeout_ms) = approval_timeout_ms {
        let request = ApprovalRequest { call: call.clone(), timeout_ms };
        ctx.execute_local_activity(ToolActivities::request_approval, request, steps::local_database()).await?;
        let timeout = Duration::from_millis(timeout_ms);
        temporalio_sdk::workflows::select! {
            _ = ctx.wait_condition(|s: &ToolExecutionWorkflow| s.decision.is_some()) => {}
            _ = ctx.timer(timeout) => {}
        }
        match ctx.state(|s| s.decision.clone()) {
            Some(ToolDecision { decision: ApprovalDecision::Approved, .. }) => {}
            Some(ToolDecision { decided_by, reason, .. }) => {
                let why = reason.map(|r| format!(": {r}")).unwrap_or_default();
                return Ok((ToolCallStatus::Denied, Some(format!("denied by {decided_by}{why}"))));
            }
            None if ctx.cancellation_token().is_cancelled() => {
                return Ok((ToolCallStatus::Cancelled, Some("the tool call was cancelled".into())));
            }
            None => {
                let reason = format!("no decision within {} s: counts as denied", timeout.as_secs());
                return Ok((ToolCallStatus::TimedOut, Some(reason)));
            }
        }
    }
    let timeout = Duration::from_millis(profile.timeout_ms);
    if profile.instant {
        let options = steps::instant_tool(timeout, profile.max_attempts);
        ctx.execute_local_activity(ToolActivities::execute_tool, call.clone(), options).await?;
    } else {
        let options = steps::tool(timeout, profile.max_attempts);
        ctx.execute_activity(ToolActivities::execute_tool, call.clone(), options).await?;
    }
    Ok((ToolCallStatus::Succeeded, None))
}

impl ToolExecutionWorkflow {
    /// The readable workflow ID of a tool call: `tool/{session}/{call}`.
    pub fn workflow_id(session_id: Uuid, tool_call_id: Uuid) -> String {
        format!("tool/{session_id}/{tool_call_id}")
    }

    /// How a direct request's call is started: under its own ID, never twice.
    pub fn start_options(task_queue: &str, call: &ToolCallRef, tool: &str) -> WorkflowStartOptions {
        WorkflowStartOptions::new(task_queue.to_string(), Self::workflow_id(call.session_id, call.tool_call_id))
            .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
            .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
            .search_attributes(visibility::search_attributes(WorkKind::Tool, &call.tenant_id, Some(call.session_id)))
            .memo(visibility::memo(&call.request_id, tool))
            .build()
    }

    /// Sends a person's decision to the call's workflow as its `decide` signal: from the api,
    /// and from the worker's recovery sweep for a decision recorded but never sent.
    pub async fn send_decision(
        client: &Client,
        workflow_id: String,
        decision: ToolDecision,
    ) -> Result<(), WorkflowInteractionError> {
        client
            .get_workflow_handle::<ToolExecutionWorkflow>(workflow_id)
            .signal(ToolExecutionWorkflow::decide, decision, WorkflowSignalOptions::default())
            .await
    }
}
