//! Infrastructure the api and the worker share: configuration, telemetry, the Temporal
//! connection and the Postgres store (the only place SQL is written). It knows no workflow:
//! the store speaks the contract's types and plain IDs.

pub mod blobs;
pub mod clamav;
pub mod cli;
pub mod config;
pub mod http;
pub mod memory;
pub mod schedules;
pub mod store;
pub mod telemetry;
pub mod temporal;
pub mod tool_inputs;
pub mod wakeups;

pub use config::{Config, MemoryBackendKind, Secret};
pub use memory::MemoryBackend;
pub use store::Store;
pub use wakeups::SessionWakeups;
