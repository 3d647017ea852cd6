//! Every side effect of the workflows, as activity structs holding their clients.

pub mod baseline;
pub mod chat;
pub mod llm;

pub use baseline::EmptyStepActivities;
pub use chat::ChatTurnActivities;
pub use llm::{LlmClient, LlmError};
