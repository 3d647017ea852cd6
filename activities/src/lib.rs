//! Every side effect of the workflows, as activity structs holding their clients.

pub mod chat;
pub mod llm;

pub use chat::ChatTurnActivities;
pub use llm::{LlmClient, LlmError};
