//! Deterministic workflow code and the contract types the api and the worker share.
//!
//! Nothing here does I/O or reads clocks: side effects live in `soma-activities`, which
//! implements the activity definitions declared in [`activities`].

pub mod activities;
pub mod baseline;
pub mod chat_turn;
pub mod contract;

pub use baseline::EmptyStepsWorkflow;
pub use chat_turn::ChatTurnWorkflow;
pub use contract::*;
