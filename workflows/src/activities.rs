//! The activity definitions: each group is named for the client its implementation holds
//! (`soma-activities` implements `XActivities` as `XActivitiesImpl`), and operators see the
//! steps as `XActivities::<step>` in the Temporal UI. Inputs and outputs carry IDs and counts,
//! never text, so histories stay small.
#![allow(unreachable_pub)]

use serde::{Deserialize, Serialize};
use temporalio_macros::activity_definitions;
use temporalio_sdk::activities::ActivityError;
use uuid::Uuid;

use soma_contract::api::{CatalogRefreshed, MaintenanceBatch};
use soma_contract::events::ErrorCode;
use soma_contract::{AttachmentStatus, AttachmentStorage, UploadRef};
use soma_contract::{MemoryWriteRef, RecallStatus, SessionRef, ToolCallRef, ToolCallStatus, TurnOutcome, TurnRef};

/// Session and stream writes: the store.
pub struct SessionActivities;

#[activity_definitions]
impl SessionActivities {
    /// Starts the turn if no earlier turn of the session is unfinished: stores the accepted
    /// user text as a message and emits `message.user`. Returns false, having written
    /// nothing, while earlier turns are still running.
    /// A turn the policy does not allow (`conversation.send`) is not begun.
    #[activity]
    pub async fn begin_turn(turn: TurnRef) -> Result<TurnBegin, ActivityError> {
        unimplemented!()
    }

    /// Waits until the scan of every file the message carries has ended, then emits each one's
    /// `attachment.status` on the turn: clean ones go to the model, the others are refused.
    #[activity]
    pub async fn await_attachments(turn: TurnRef) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Waits until every earlier turn of the session has finished (turns run in order).
    #[activity]
    pub async fn wait_for_earlier_turns(turn: TurnRef) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Stores the reply (the last attempt's deltas) as the assistant message, exactly once.
    #[activity]
    pub async fn persist_assistant_message(
        input: AssistantMessageInput,
    ) -> Result<Option<Uuid>, ActivityError> {
        unimplemented!()
    }

    /// Records how the turn ended: turn status, `turn.*` event (and `error`), audit row.
    #[activity]
    pub async fn finish_turn(input: FinishTurnInput) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Asks Temporal to cancel the workflow of each of the session's open turns. Returns how
    /// many there were.
    #[activity]
    pub async fn cancel_open_turns(session: SessionRef) -> Result<u32, ActivityError> {
        unimplemented!()
    }

    /// Waits until no turn of the session is open.
    #[activity]
    pub async fn wait_for_open_turns(session: SessionRef) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Appends `session.deleted`, the last event of the session's stream: open streams end.
    #[activity]
    pub async fn announce_session_deleted(session: SessionRef) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Removes the session and everything it owns; audited. Returns whether it was there.
    #[activity]
    pub async fn purge_session(session: SessionRef) -> Result<bool, ActivityError> {
        unimplemented!()
    }
}

/// The model: the LLM provider's client (and the store its deltas are written to).
pub struct LlmActivities;

#[activity_definitions]
impl LlmActivities {
    /// Streams the provider's reply into `llm.delta` events; emits `llm.retry` on a retried
    /// attempt that follows streamed deltas, and `llm.complete` at the end.
    /// Each round's call offers the tenant's tools (none on the last round allowed); the
    /// calls the model asks for are stored and their IDs returned.
    #[activity]
    pub async fn stream_reply(input: ReplyRound) -> Result<StreamOutcome, ActivityError> {
        unimplemented!()
    }
}

/// Tool calls: the catalog, the policy and the tools' own clients (HTTP, MCP).
pub struct ToolActivities;

#[activity_definitions]
impl ToolActivities {
    /// Puts the built-ins and the configured MCP servers' tools in the catalog and removes the
    /// MCP tools no longer offered; says how each server answered.
    #[activity]
    pub async fn refresh_tool_catalog() -> Result<CatalogRefreshed, ActivityError> {
        unimplemented!()
    }

    /// Looks the tool up in the tenant's catalog, checks the inputs against its schema and
    /// asks the policy (`tool.execute`); emits `tool.call`. Says how to run it, or why not.
    #[activity]
    pub async fn prepare_tool_call(call: ToolCallRef) -> Result<ToolPlan, ActivityError> {
        unimplemented!()
    }

    /// Marks the call as waiting for a person and emits `tool.approval_required`.
    #[activity]
    pub async fn request_approval(input: ApprovalRequest) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Runs the tool within its profile (taking one of its concurrency slots first) and
    /// stores the output.
    #[activity]
    pub async fn execute_tool(call: ToolCallRef) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Records the call's result (unless it has one): status, `tool.result`, audit row.
    #[activity]
    pub async fn finish_tool_call(input: FinishToolCall) -> Result<ToolCallStatus, ActivityError> {
        unimplemented!()
    }
}

/// Memory: the memory backend (and the policy for `memory.write`).
pub struct MemoryActivities;

#[activity_definitions]
impl MemoryActivities {
    /// If the memory backend answers again, replays a batch of open dead letters under their
    /// idempotency keys (each write starts again; audited); otherwise replays none.
    #[activity]
    pub async fn replay_dead_letters() -> Result<MaintenanceBatch, ActivityError> {
        unimplemented!()
    }

    /// Recalls what is relevant to the turn's user message (top-k within a token budget) and
    /// records it with the turn (`memory.recall`) for the model's prompt. A backend that fails
    /// or is slow degrades the turn, it does not fail it: the event says memory was
    /// unavailable.
    #[activity]
    pub async fn recall_for_turn(turn: TurnRef) -> Result<RecallStatus, ActivityError> {
        unimplemented!()
    }

    /// Records the memory writes the turn owes (its user message, and its reply when it
    /// completed) and starts their `MemoryWriteWorkflow`s without waiting for them. Returns
    /// how many were started.
    #[activity]
    pub async fn remember_turn(turn: TurnRef) -> Result<u32, ActivityError> {
        unimplemented!()
    }

    /// Asks the policy (`memory.write`); a write it does not allow is recorded as denied
    /// (`memory.write` event, audit row). Returns whether it may go on.
    #[activity]
    pub async fn check_memory_write(write: MemoryWriteRef) -> Result<bool, ActivityError> {
        unimplemented!()
    }

    /// Writes the memory to the backend under its idempotency key (a write already there
    /// changes nothing), then emits `memory.write`. Each failed attempt is recorded with its
    /// error.
    #[activity]
    pub async fn remember(write: MemoryWriteRef) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Files the write as a dead letter with its payload, error and attempts; `memory.write`
    /// (dead-lettered) and an audit row.
    #[activity]
    pub async fn dead_letter_memory_write(input: DeadLetterInput) -> Result<(), ActivityError> {
        unimplemented!()
    }
}

/// Uploaded files: the store (their bytes until scanned), clamd and the S3 bucket.
pub struct UploadActivities;

#[activity_definitions]
impl UploadActivities {
    /// Reads the file's bytes once, checking each chunk against the SHA-256 it arrived with
    /// and the whole against the one declared, while streaming them to clamd (INSTREAM).
    /// Started while the file is still arriving, it follows the upload, scanning each chunk
    /// as it is stored, and returns [`ScanOutcome::Unfinished`] if the upload pauses.
    /// Heartbeats the bytes scanned. Retried while clamd is away; the file stays `pending`.
    #[activity]
    pub async fn scan_upload(upload: UploadRef) -> Result<ScanOutcome, ActivityError> {
        unimplemented!()
    }

    /// Keeps a clean file: in its row up to the inline size, else in S3 under a key derived
    /// from the attachment (a retry writes the same object); then drops its received chunks,
    /// which served it until now.
    #[activity]
    pub async fn store_attachment(upload: UploadRef) -> Result<AttachmentStorage, ActivityError> {
        unimplemented!()
    }

    /// Records the verdict (status, SHA-256, signature), drops the scanned bytes of a file
    /// not clean (a clean one is served from them until it is stored), writes the audit row,
    /// then emits `attachment.status` on the session's stream.
    #[activity]
    pub async fn record_scan(input: RecordScanInput) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// A clean file that could not be stored stays served from its received chunks: the audit
    /// row says why, for an operator.
    #[activity]
    pub async fn record_store_failure(input: RecordStoreFailureInput) -> Result<(), ActivityError> {
        unimplemented!()
    }
}

/// The generated marker types, which `soma-activities` names in `#[activity(definition = …)]`.
pub mod defs {
    pub use super::llm_activities::*;
    pub use super::maintenance_activities::*;
    pub use super::memory_activities::*;
    pub use super::session_activities::*;
    pub use super::tool_activities::*;
    pub use super::upload_activities::*;
}

/// What `begin_turn` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TurnBegin {
    /// The user message is stored; the reply can be made.
    Begun,
    /// Begun, and the message carries files: their scans must end before the model is called.
    BegunWithAttachments,
    /// Earlier turns of the session are still open: wait for them, then try again.
    WaitForEarlier,
    /// The policy does not allow it (or could not say: fail closed).
    Denied { reason: String },
}

/// The periodic jobs' steps: the store and the bucket. Each handles one bounded batch and says
/// whether more is left.
pub struct MaintenanceActivities;

#[activity_definitions]
impl MaintenanceActivities {
    /// Computes the gauges (active sessions, running and queued turns, scans pending, dead
    /// letters, oldest pending memory write) and stores them for `/metrics`.
    #[activity]
    pub async fn publish_gauges() -> Result<MaintenanceBatch, ActivityError> {
        unimplemented!()
    }

    /// Deletes a batch of sessions past their retention with everything they own: their
    /// files' S3 objects first, then their rows (audited).
    #[activity]
    pub async fn delete_expired_sessions() -> Result<MaintenanceBatch, ActivityError> {
        unimplemented!()
    }

    /// Replaces the `llm.delta` events of a batch of old finished turns by one per reply.
    #[activity]
    pub async fn compact_turn_deltas() -> Result<MaintenanceBatch, ActivityError> {
        unimplemented!()
    }

    /// Removes a batch of tus uploads past their expiry with the bytes they received.
    #[activity]
    pub async fn remove_expired_uploads() -> Result<MaintenanceBatch, ActivityError> {
        unimplemented!()
    }
}


/// Input of `stream_reply`: the turn and its round (0, then one more after each round of
/// tools).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyRound {
    pub turn: TurnRef,
    pub round: u32,
}

/// What the streaming LLM call reports back: counts, never text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOutcome {
    /// The activity attempt whose deltas make up the reply.
    pub attempt: u32,
    pub delta_count: u32,
    pub finish_reason: String,
    /// The tool calls the model asked for (stored in `tool_calls`), in its order; empty when
    /// the reply is final.
    #[serde(default)]
    pub tool_calls: Vec<Uuid>,
}

/// Input of `persist_assistant_message`: the reply is assembled from the stored deltas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssistantMessageInput {
    pub turn: TurnRef,
    /// How the turn ended; a cut-short reply is stored as `cancelled` or `failed`.
    pub status: TurnOutcome,
}

/// Input of `finish_turn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishTurnInput {
    pub turn: TurnRef,
    pub status: TurnOutcome,
    pub assistant_message_id: Option<Uuid>,
    /// Why a failed turn failed, in words a user can read.
    pub reason: Option<String>,
    /// The `error` event's code for a failed turn (`turn_failed` if none).
    #[serde(default)]
    pub code: Option<ErrorCode>,
}

/// What `prepare_tool_call` decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolPlan {
    /// Run it with this profile, after a person's approval if `approval_timeout_ms` is set.
    Run { profile: ToolProfile, approval_timeout_ms: Option<u64> },
    /// Do not run it: unknown or disabled tool, invalid inputs, denied by the policy.
    Refused { status: ToolCallStatus, reason: String },
}

/// How a tool runs: from its catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolProfile {
    pub timeout_ms: u64,
    pub max_attempts: u32,
    /// The tool runs inside the worker at once, calling nothing (a built-in such as the
    /// calculator): it runs as a local activity, with no server round trip.
    #[serde(default)]
    pub instant: bool,
}

/// Input of `request_approval`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub call: ToolCallRef,
    pub timeout_ms: u64,
}

/// Input of `finish_tool_call`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishToolCall {
    pub call: ToolCallRef,
    /// The result, unless the call already has one (a succeeded execution stores its own).
    pub status: ToolCallStatus,
    pub reason: Option<String>,
}

/// Input of `dead_letter_memory_write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterInput {
    pub write: MemoryWriteRef,
    /// Why it is given up on, in the words of the last failure.
    pub reason: String,
}

/// What the scan of an uploaded file found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ScanOutcome {
    /// Every byte as it arrived, and clamd found nothing.
    Clean { sha256: String },
    /// clamd found a signature, or the file is beyond what it scans (not read then: no
    /// SHA-256).
    Quarantined { sha256: Option<String>, verdict: String },
    /// The bytes are not what was sent, or the scan could not be done: never served.
    Failed { reason: String },
    /// The upload paused before its last byte (or is too large to follow): nothing is
    /// recorded; the scan starts again when every byte is in, or after `wait_ms` (when the
    /// upload expires).
    Unfinished { wait_ms: u64 },
}

impl ScanOutcome {
    pub fn status(&self) -> AttachmentStatus {
        match self {
            ScanOutcome::Clean { .. } => AttachmentStatus::Clean,
            ScanOutcome::Quarantined { .. } => AttachmentStatus::Quarantined,
            ScanOutcome::Failed { .. } => AttachmentStatus::Failed,
            ScanOutcome::Unfinished { .. } => AttachmentStatus::Uploading,
        }
    }
}

/// Input of `record_scan`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordScanInput {
    pub upload: UploadRef,
    pub outcome: ScanOutcome,
}

/// Why a clean file could not be stored ([`UploadActivities::record_store_failure`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordStoreFailureInput {
    pub upload: UploadRef,
    pub reason: String,
}
