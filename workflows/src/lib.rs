//! Deterministic workflow code: the workflows, the activity definitions they call, how each
//! kind of step runs ([`steps`]) and how each workflow is started.
//!
//! Nothing here does I/O or reads clocks: side effects live in `soma-activities`, which
//! implements the definitions in [`activities`]. The types shared with the store and the api
//! are in `soma-contract`.

pub mod activities;
pub mod chat_turn;
pub mod maintenance;
pub mod memory_write;
pub mod registry;
pub mod session_deletion;
pub mod steps;
pub mod tool_catalog;
pub mod tool_execution;
pub mod upload_scan;
pub mod visibility;

pub use chat_turn::{ChatTurnInput, ChatTurnOutput, ChatTurnWorkflow};
pub use maintenance::MaintenanceWorkflow;
pub use memory_write::{MemoryWriteInput, MemoryWriteWorkflow};
pub use registry::{WorkflowRegistry, register_all, workflow_types};
pub use session_deletion::{SessionDeletionOutput, SessionDeletionWorkflow};
pub use tool_catalog::ToolCatalogRefreshWorkflow;
pub use tool_execution::{ToolCallOutcome, ToolDecision, ToolExecutionWorkflow};
pub use upload_scan::UploadScanWorkflow;
