//! The chat turn's activities, declared here and implemented in `soma-activities`, so the
//! workflow code depends on their contract and not on their clients.
#![allow(unreachable_pub)]

use temporalio_macros::activity_definitions;
use temporalio_sdk::activities::ActivityError;
use uuid::Uuid;

use crate::contract::{AssistantMessageInput, FinishTurnInput, StreamOutcome, TurnRef};

/// Activity names as operators see them in the Temporal UI: `ChatActivities::<step>`.
pub struct ChatActivities;

#[activity_definitions]
impl ChatActivities {
    /// Waits until every earlier turn of the session has finished (turns run in order).
    #[activity]
    pub async fn wait_for_earlier_turns(turn: TurnRef) -> Result<(), ActivityError> {
        unimplemented!()
    }

    /// Starts the turn if no earlier turn of the session is unfinished: stores the accepted
    /// user text as a message and emits `message.user`. Returns false, having written
    /// nothing, while earlier turns are still running.
    #[activity]
    pub async fn begin_turn(turn: TurnRef) -> Result<bool, ActivityError> {
        unimplemented!()
    }

    /// Streams the provider's reply into `llm.delta` events; emits `llm.retry` on a retried
    /// attempt that follows emitted deltas, and `llm.complete` at the end.
    #[activity]
    pub async fn stream_llm_reply(turn: TurnRef) -> Result<StreamOutcome, ActivityError> {
        unimplemented!()
    }

    /// Stores the reply (the last attempt's deltas) as the assistant message, exactly once.
    #[activity]
    pub async fn persist_assistant_message(
        input: AssistantMessageInput,
    ) -> Result<Option<Uuid>, ActivityError> {
        unimplemented!()
    }

    /// Records how the turn ended: turn status, `turn.*` event, audit row; wakes later turns.
    #[activity]
    pub async fn finish_turn(input: FinishTurnInput) -> Result<(), ActivityError> {
        unimplemented!()
    }
}

/// The baseline's activity: does nothing, as fast as the worker can, and says when it began.
pub struct BaselineActivities;

#[activity_definitions]
impl BaselineActivities {
    /// Returns the wall-clock time it began, in microseconds since the Unix epoch.
    #[activity]
    pub async fn empty_step() -> Result<u64, ActivityError> {
        unimplemented!()
    }
}

/// The generated marker types, which `soma-activities` names in `#[activity(definition = …)]`.
pub mod defs {
    pub use super::baseline_activities::*;
    pub use super::chat_activities::*;
}
