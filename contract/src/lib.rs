//! The types every part of Soma agrees on: the session event contract, statuses and roles, and
//! the reference a turn travels under. Plain data (serde; `sqlx::Type` with the `sqlx`
//! feature), no I/O, so both the deterministic workflows and the store can use it.

pub mod events;
pub mod status;
pub mod turn;

pub use events::{EventData, EventMeta, EventScope, SessionEvent};
pub use status::{MessageStatus, Role, TurnOutcome, TurnStatus};
pub use turn::TurnRef;
