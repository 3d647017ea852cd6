//! The turn-recovery sweep: a periodic job in every worker that finds open turns which will
//! never move on their own, and moves them. Two ways a turn gets stuck:
//!
//! - its workflow never started: an api stored the turn and died before starting it (its
//!   client saw no 202). The sweep starts it, so it is answered, in order, before the
//!   session's later turns (which wait for it).
//! - its workflow ended without recording the turn's end: an operator terminated it, or it
//!   timed out. The sweep records the turn as failed (an `error` and a `turn.failed` event,
//!   an audit row), so the session's later turns are not blocked for ever.
//!
//! Every worker sweeps; starting a workflow and recording an end are both idempotent, so
//! several sweeps at once do no harm. Each action is logged and audited (actor `recovery`).
//!
//! The same sweep finds memory writes that are still owed but have not moved for longer than
//! their retries ever wait (their workflow never started, or was terminated; a dead letter's
//! replay whose start failed) and starts their workflow again under the same key, and files
//! whose bytes are all in but whose scan has no workflow (the api died between the two),
//! and approvals or denials that were recorded but never signalled to the tool call's
//! workflow (the api died between the two; the call would otherwise wait out its approval
//! timeout and count as denied). A decision signalled twice is heeded once.

use std::time::Duration;

use serde_json::json;
use temporalio_client::errors::WorkflowInteractionError;
use temporalio_client::{Client, UntypedWorkflow, WorkflowExecutionStatus};

use soma_activities::session::{record_turn_end, store_reply};
use soma_contract::TurnOutcome;
use soma_contract::memory::MemoryRetry;
use soma_core::Store;
use soma_core::store::{AuditEntry, StalledTurn};
use soma_workflows::{
    ChatTurnWorkflow, MemoryWriteInput, MemoryWriteWorkflow, ToolDecision, ToolExecutionWorkflow, UploadScanWorkflow,
};
use soma_workflows::activities::FinishTurnInput;

/// The audit log's name for what the sweep does.
const ACTOR: &str = "recovery";
/// At most this many turns per sweep, oldest first.
const BATCH: i64 = 200;

/// What one sweep did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    /// Open turns that had not moved, each looked up in Temporal.
    pub examined: usize,
    /// Turns whose workflow was missing and is now started.
    pub started: usize,
    /// Turns whose workflow had ended without them, now recorded as failed.
    pub failed: usize,
    /// Owed memory writes whose workflow was gone, now started again.
    pub memory_writes_started: usize,
    /// Pending files whose scan had no workflow, now started.
    pub scans_started: usize,
    /// Recorded decisions on tool calls that their workflow had not heard, now signalled.
    pub decisions_delivered: usize,
}

impl SweepReport {
    /// Whether the sweep changed anything.
    pub fn acted(&self) -> bool {
        self.started + self.failed + self.memory_writes_started + self.scans_started + self.decisions_delivered > 0
    }
}

pub struct TurnRecovery {
    store: Store,
    temporal: Client,
    task_queue: String,
    /// An open turn that has not changed for this long is looked at.
    quiet_for: Duration,
    /// How memory writes retry (a write quiet for longer than its longest backoff is stuck).
    memory_retry: MemoryRetry,
}

impl TurnRecovery {
    pub fn new(store: Store, temporal: Client, task_queue: String, quiet_for: Duration, memory_retry: MemoryRetry) -> Self {
        Self { store, temporal, task_queue, quiet_for, memory_retry }
    }

    /// Sweeps every `every` until the process ends. A failed sweep is logged and tried again.
    pub async fn run(self, every: Duration) {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match self.sweep().await {
                Ok(report) if report.acted() => {
                    tracing::info!(?report, "turn recovery sweep");
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "turn recovery sweep failed; will try again"),
            }
        }
    }

    /// One pass over the open turns that have not moved for a while.
    pub async fn sweep(&self) -> anyhow::Result<SweepReport> {
        let mut report = SweepReport::default();
        for stalled in self.store.stalled_turns(self.quiet_for, BATCH).await? {
            report.examined += 1;
            let handle = self.temporal.get_workflow_handle::<UntypedWorkflow>(stalled.workflow_id.clone());
            match handle.describe(Default::default()).await {
                Err(WorkflowInteractionError::NotFound(_)) => {
                    self.start(&stalled).await?;
                    report.started += 1;
                }
                Err(err) => return Err(err.into()),
                Ok(description) => {
                    let status = description.status();
                    if is_closed(status) && self.fail(&stalled, status).await? {
                        report.failed += 1;
                    }
                }
            }
        }
        report.memory_writes_started = self.sweep_memory_writes().await?;
        report.scans_started = self.sweep_scans().await?;
        report.decisions_delivered = self.sweep_decisions().await?;
        Ok(report)
    }

    /// Signals each recorded decision that its call's workflow has not acted on. Returns how
    /// many reached a running workflow. A call whose workflow is gone (terminated by an
    /// operator) is left as it is: nothing waits for the decision any more.
    async fn sweep_decisions(&self) -> anyhow::Result<usize> {
        let mut delivered = 0;
        for call in self.store.undelivered_decisions(self.quiet_for, BATCH).await? {
            let signal = ToolDecision {
                decision: call.decision,
                decided_by: call.decided_by.clone(),
                reason: call.decision_reason.clone(),
            };
            match ToolExecutionWorkflow::send_decision(&self.temporal, call.workflow_id.clone(), signal).await {
                Ok(()) => {}
                Err(WorkflowInteractionError::NotFound(_)) => continue,
                Err(err) => return Err(err.into()),
            }
            let details = json!({ "tool_call_id": call.tool_call_id, "tool": call.tool_name, "decided_by": call.decided_by });
            let entry = AuditEntry {
                tenant_id: &call.tenant_id,
                request_id: None,
                trace_id: None,
                session_id: Some(call.session_id),
                turn_id: call.turn_id,
                actor: ACTOR,
                action: "tool.approval.recover",
                outcome: call.decision.as_str(),
                details,
                dedupe_key: Some(format!("{}:tool.approval.recover", call.tool_call_id)),
            };
            self.store.audit(&entry).await?;
            tracing::warn!(workflow_id = %call.workflow_id, decision = call.decision.as_str(),
                           "delivered a recorded decision that the tool call's workflow had not heard");
            delivered += 1;
        }
        Ok(delivered)
    }

    /// Tells the scan of each pending file that has gone quiet that every byte is in,
    /// starting it if none is running (the api may have died between storing the last byte
    /// and saying so). Returns how many were started. A scan heartbeats and moves its file at
    /// every step, so a quiet pending file has lost its scan, or its scan waits for clamd or S3.
    async fn sweep_scans(&self) -> anyhow::Result<usize> {
        let mut started = 0;
        for upload in self.store.stalled_pending_uploads(self.quiet_for, BATCH).await? {
            let workflow_id = UploadScanWorkflow::workflow_id(upload.attachment_id);
            let handle = self.temporal.get_workflow_handle::<UntypedWorkflow>(workflow_id.clone());
            let running = match handle.describe(Default::default()).await {
                Ok(description) => !is_closed(description.status()),
                Err(WorkflowInteractionError::NotFound(_)) => false,
                Err(err) => return Err(err.into()),
            };
            self.store.touch_upload(upload.attachment_id).await?;
            if !running {
                let outcome = "started: the pending file's scan had no running workflow";
                let details = json!({ "attachment_id": upload.attachment_id, "workflow_id": workflow_id });
                let entry = AuditEntry::for_upload(&upload, ACTOR, "upload.scan.recover", outcome, details);
                self.store.audit(&entry).await?;
            }
            UploadScanWorkflow::send_received(&self.temporal, &self.task_queue, &upload, "recovered scan").await?;
            if !running {
                tracing::warn!(%workflow_id, "started the scan of a pending file that had none");
                started += 1;
            }
        }
        Ok(started)
    }

    /// Starts the workflow of each owed memory write that has none running. Returns how many.
    async fn sweep_memory_writes(&self) -> anyhow::Result<usize> {
        let quiet_for = Duration::from_secs(2 * self.memory_retry.max_interval_secs + 60).max(self.quiet_for);
        let mut started = 0;
        for write in self.store.stalled_memory_writes(quiet_for, BATCH).await? {
            let workflow_id = MemoryWriteWorkflow::workflow_id(&write.key);
            let handle = self.temporal.get_workflow_handle::<UntypedWorkflow>(workflow_id.clone());
            match handle.describe(Default::default()).await {
                Ok(description) if !is_closed(description.status()) => continue,
                Ok(_) | Err(WorkflowInteractionError::NotFound(_)) => {}
                Err(err) => return Err(err.into()),
            }
            let outcome = "started: the owed write had no running workflow";
            let details = json!({ "key": write.key, "workflow_id": workflow_id });
            let entry = AuditEntry::for_memory_write(&write, ACTOR, "memory.write.recover", outcome, details);
            self.store.audit(&entry).await?;
            let options = MemoryWriteWorkflow::start_options(&self.task_queue, &write);
            let input = MemoryWriteInput { write, retry: self.memory_retry };
            soma_core::temporal::start_once(&self.temporal, MemoryWriteWorkflow::run, input, options).await?;
            tracing::warn!(%workflow_id, "started the workflow of an owed memory write that had none");
            started += 1;
        }
        Ok(started)
    }

    async fn start(&self, stalled: &StalledTurn) -> anyhow::Result<()> {
        self.audit(stalled, "started: its workflow had never started", json!({})).await?;
        let options = ChatTurnWorkflow::start_options(&self.task_queue, &stalled.turn, "recovered turn");
        soma_core::temporal::start_once(&self.temporal, ChatTurnWorkflow::run, stalled.turn.clone(), options)
            .await?;
        let turn = &stalled.turn;
        tracing::warn!(session_id = %turn.session_id, turn_id = %turn.turn_id, workflow_id = %stalled.workflow_id,
                       "started the workflow of a turn that had none");
        Ok(())
    }

    /// Records the turn as failed if it is still open now that its workflow has ended.
    /// Returns whether it was.
    async fn fail(&self, stalled: &StalledTurn, status: WorkflowExecutionStatus) -> anyhow::Result<bool> {
        let turn = &stalled.turn;
        // Read again: the workflow records a normal end before it closes, so a turn still open
        // now that its workflow is closed will never be finished by it.
        if !self.store.turn(&turn.tenant_id, turn.turn_id).await?.status.is_open() {
            return Ok(false);
        }
        let reason = format!("the turn's workflow ended without finishing it ({status:?}); nothing more will happen");
        let input = FinishTurnInput {
            turn: turn.clone(),
            status: TurnOutcome::Failed,
            assistant_message_id: store_reply(&self.store, turn, TurnOutcome::Failed).await?,
            reason: Some(reason),
            code: None,
        };
        // Audited first: the turn's end event, last, tells clients everything is recorded.
        self.audit(stalled, "failed: its workflow had ended", json!({ "workflow_status": format!("{status:?}") }))
            .await?;
        record_turn_end(&self.store, &input, ACTOR).await?;
        tracing::warn!(session_id = %turn.session_id, turn_id = %turn.turn_id, workflow_id = %stalled.workflow_id,
                       ?status, "recorded a turn whose workflow had ended as failed");
        Ok(true)
    }

    async fn audit(&self, stalled: &StalledTurn, outcome: &str, details: serde_json::Value) -> anyhow::Result<()> {
        let turn = &stalled.turn;
        let entry = AuditEntry::for_turn(turn, ACTOR, "turn.recover", outcome, details);
        self.store.audit(&entry.once(format!("{}:turn.recover", turn.turn_id))).await?;
        Ok(())
    }
}

fn is_closed(status: WorkflowExecutionStatus) -> bool {
    use WorkflowExecutionStatus::*;
    matches!(status, Completed | Failed | Canceled | Terminated | TimedOut)
}
