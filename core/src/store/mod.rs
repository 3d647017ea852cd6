//! The Postgres store: every query the api, the activities and the maintenance jobs run, one
//! module per table, each written once and checked against the schema at compile time
//! (`sqlx::query!` with the offline data in `.sqlx/`). Writes are keyed (unique keys,
//! `ON CONFLICT DO NOTHING`) so a retried activity cannot duplicate them. Queries made for a
//! tenant's request or turn are scoped by its tenant; the recovery sweep reads across tenants.

mod audit;
mod event_writer;
mod events;
mod maintenance;
mod memory;
mod messages;
mod sessions;
mod tools;
mod turns;
mod uploads;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::{Connection, PgPool};
use sqlx::postgres::PgPoolOptions;

pub use audit::{AuditEntry, AuditFilter, Requester};
pub use events::{EVENTS_CHANNEL, StoredEvent};
pub use maintenance::{ClaimedSession, Compacted, Gauge, MAINTENANCE_ACTOR};
pub use memory::{DeadLetterFilter, MemoryWriteRow, TurnMessage};
pub use messages::ConversationLine;
pub use sessions::{ImportedMessage, ImportedTurn, SessionCursor, SessionMemories};
pub use tools::{CatalogTool, DecisionError, ModelToolCall, RoundCall, ToolCallRow, UndeliveredDecision};
pub use uploads::{Appended, AttachmentRow, ChunkWriter, NewUpload, PromptAttachment, ScanRecord, UploadChunk};
pub use turns::{AcceptedTurn, BegunTurn, NewTurn, OpenTurn, StalledTurn, TurnRow, TurnSession, TurnStart, TurnToStart};

/// Errors a caller can act on; anything else is a database failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("session not found")]
    SessionNotFound,
    #[error("turn not found")]
    TurnNotFound,
    #[error("tool call not found")]
    ToolCallNotFound,
    /// A turn of the session is open, and the caller asked not to queue behind it.
    #[error("a turn of the session is running")]
    SessionBusy,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A database failure that every append of a group commit shares.
    #[error(transparent)]
    Shared(Arc<sqlx::Error>),
    /// The process's event writer has stopped (the runtime is shutting down).
    #[error("the event writer has stopped")]
    WriterGone,
}

impl StoreError {
    /// Whether trying again may succeed (a database failure) or cannot (a missing row).
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Database(_) | StoreError::Shared(_) | StoreError::WriterGone)
    }
}

/// Handle on the database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    /// Started by the first append (it needs a runtime); shared by every clone.
    writer: Arc<OnceLock<event_writer::EventWriter>>,
    /// At most one commit of events per window (see `event_writer`).
    event_window: Duration,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("pool", &self.pool).finish_non_exhaustive()
    }
}

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

impl Store {
    /// Connects a pool. Connections are opened lazily so a process can start (and report
    /// itself not ready) while the database is still coming up.
    pub fn connect_lazy(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(5))
            // A connection keeps buffers the size of the largest message it sent or read (an
            // upload's chunk is a megabyte), so without this every pooled connection that
            // ever carried one would hold that much for good.
            .after_release(|connection, _| {
                Box::pin(async move {
                    connection.shrink_buffers();
                    Ok(true)
                })
            })
            .connect_lazy(url)?;
        Ok(Self { pool, writer: Arc::default(), event_window: Duration::ZERO })
    }

    /// Commits this process's event appends at most once per `window`, together: for a worker
    /// streaming many replies (none by default: each append commits as soon as it can).
    pub fn with_event_window(mut self, window: Duration) -> Self {
        self.event_window = window;
        self.writer = Arc::default();
        self
    }

    fn event_writer(&self) -> &event_writer::EventWriter {
        self.writer.get_or_init(|| event_writer::EventWriter::start(self.pool.clone(), self.event_window))
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations (safe to run from several processes at once).
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// A cheap round trip, for readiness checks.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query!("SELECT 1 AS one").fetch_one(&self.pool).await?;
        Ok(())
    }
}
