//! Inputs, outputs, IDs and event kinds shared by the api, the workflows and the activities.
//! Workflow inputs and outputs carry IDs and small metadata, never message text (DESIGN.md,
//! principle 1), so a turn's history stays the same size however long a conversation grows.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Everything an activity needs to find a turn's data in Postgres.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRef {
    pub tenant_id: String,
    pub session_id: Uuid,
    pub turn_id: Uuid,
    /// The request that accepted the turn; carried into events and audit rows.
    pub request_id: String,
}

/// Input of `ChatTurnWorkflow`.
pub type ChatTurnInput = TurnRef;

/// How a turn ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TurnStatus {
    Completed,
    Failed,
    Cancelled,
}

impl TurnStatus {
    /// The value stored in `turns.status` and `messages.status`-adjacent columns.
    pub fn as_str(self) -> &'static str {
        match self {
            TurnStatus::Completed => "completed",
            TurnStatus::Failed => "failed",
            TurnStatus::Cancelled => "cancelled",
        }
    }

    /// The event that tells a stream's reader how the turn ended.
    pub fn event_kind(self) -> &'static str {
        match self {
            TurnStatus::Completed => event_kind::TURN_COMPLETE,
            TurnStatus::Failed => event_kind::TURN_FAILED,
            TurnStatus::Cancelled => event_kind::TURN_CANCELLED,
        }
    }
}

/// Output of `ChatTurnWorkflow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatTurnOutput {
    pub status: TurnStatus,
    pub assistant_message_id: Option<Uuid>,
}

/// What the streaming LLM call reports back: counts, never text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOutcome {
    /// The activity attempt whose deltas make up the reply.
    pub attempt: u32,
    pub delta_count: u32,
    pub finish_reason: String,
}

/// Input of `persist_assistant_message`: the reply is assembled from the stored deltas.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssistantMessageInput {
    pub turn: TurnRef,
    pub status: TurnStatus,
}

/// Input of `finish_turn`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishTurnInput {
    pub turn: TurnRef,
    pub status: TurnStatus,
    pub assistant_message_id: Option<Uuid>,
    /// Why a failed turn failed, in words a user can read.
    pub reason: Option<String>,
}

/// The readable workflow ID of a chat turn (DESIGN.md, principle 6).
pub fn chat_workflow_id(session_id: Uuid, turn_id: Uuid) -> String {
    format!("chat/{session_id}/{turn_id}")
}

/// The SSE `event:` names (DESIGN.md, HTTP contract).
pub mod event_kind {
    pub const MESSAGE_USER: &str = "message.user";
    pub const LLM_DELTA: &str = "llm.delta";
    pub const LLM_COMPLETE: &str = "llm.complete";
    pub const LLM_RETRY: &str = "llm.retry";
    pub const TURN_COMPLETE: &str = "turn.complete";
    pub const TURN_FAILED: &str = "turn.failed";
    pub const TURN_CANCELLED: &str = "turn.cancelled";
    pub const ERROR: &str = "error";
}
