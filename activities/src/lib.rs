//! Every side effect of the workflows, as activity implementations grouped by the client they
//! hold: `SessionActivitiesImpl` (the store) and `LlmActivitiesImpl` (the provider), each
//! implementing the definitions of the same name in `soma_workflows::activities`. How their
//! errors become retries or failures is in [`failure`].

pub mod failure;
pub mod llm;
pub mod maintenance;
pub mod memory;
pub mod policy;
pub mod session;
pub mod tools;
pub mod uploads;

pub use llm::{LlmActivitiesImpl, LlmClient, LlmError};
pub use maintenance::{MaintenanceActivitiesImpl, MaintenanceSettings, SessionPurger};
pub use memory::{MemoryActivitiesImpl, MemorySettings};
pub use policy::Policy;
pub use session::SessionActivitiesImpl;
pub use tools::{ToolActivitiesImpl, ToolSettings};
pub use uploads::{UploadActivitiesImpl, UploadSettings};
