//! The types every part of Soma agrees on: the session event contract, the HTTP API's bodies,
//! statuses and roles, and the references a turn or a session travels under. Plain data (serde; `sqlx::Type` with the `sqlx`
//! feature), no I/O, so both the deterministic workflows and the store can use it.

pub mod api;
pub mod memory;
pub mod events;
pub mod status;
pub mod refs;
pub mod reply;

pub use events::{EventData, EventMeta, EventScope, SessionEvent};
pub use status::{
    ApprovalDecision, AttachmentStatus, AttachmentStorage, DeadLetterKind, DeadLetterStatus, MaintenanceJob, MemoryRole, MemoryWriteStatus, MessageStatus, RecallStatus, Role, ToolCallStatus,
    ToolKind, TurnOutcome, TurnStatus, WorkKind,
};
pub use refs::{MemoryWriteRef, SessionRef, ToolCallRef, TurnRef, UploadRef};
pub use reply::ShownReply;
