//! The activity definitions: each group is named for the client its implementation holds
//! (`soma-activities` implements `XActivities` as `XActivitiesImpl`), and operators see the
//! steps as `XActivities::<step>` in the Temporal UI. Inputs and outputs carry IDs and counts,
//! never text, so histories stay small.
#![allow(unreachable_pub)]

use serde::{Deserialize, Serialize};
use temporalio_macros::activity_definitions;
use temporalio_sdk::activities::ActivityError;
use uuid::Uuid;

use soma_contract::{SessionRef, TurnOutcome, TurnRef};

/// Session and stream writes: the store.
pub struct SessionActivities;

#[activity_definitions]
impl SessionActivities {
    /// Starts the turn if no earlier turn of the session is unfinished: stores the accepted
    /// user text as a message and emits `message.user`. Returns false, having written
    /// nothing, while earlier turns are still running.
    #[activity]
    pub async fn begin_turn(turn: TurnRef) -> Result<bool, ActivityError> {
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
    #[activity]
    pub async fn stream_reply(turn: TurnRef) -> Result<StreamOutcome, ActivityError> {
        unimplemented!()
    }
}

/// The generated marker types, which `soma-activities` names in `#[activity(definition = …)]`.
pub mod defs {
    pub use super::llm_activities::*;
    pub use super::session_activities::*;
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
}
