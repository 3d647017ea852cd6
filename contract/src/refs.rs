//! What identifies a turn, or a whole session, wherever it goes: workflow inputs, activities,
//! events, audit rows.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::events::EventScope;

/// Everything an activity needs to find a turn's data and to say which request caused it.
/// Workflow inputs carry this, never message text (so a turn's history stays small).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnRef {
    pub tenant_id: String,
    pub session_id: Uuid,
    pub turn_id: Uuid,
    /// The request that accepted the turn; carried into events and audit rows.
    pub request_id: String,
    /// The accepting request's trace (W3C trace id, 32 hex digits). Histories recorded before
    /// it existed have none.
    #[serde(default)]
    pub trace_id: Option<String>,
}

impl TurnRef {
    /// Where the turn's events go.
    pub fn scope(&self) -> EventScope<'_> {
        EventScope {
            tenant_id: &self.tenant_id,
            session_id: self.session_id,
            turn_id: Some(self.turn_id),
            request_id: Some(&self.request_id),
            trace_id: self.trace_id.as_deref(),
        }
    }
}

/// A change to a whole session (its deletion, say): the session, and who asked for it in
/// which request. Workflow inputs carry this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    pub tenant_id: String,
    pub session_id: Uuid,
    pub request_id: String,
    pub trace_id: Option<String>,
    /// Who asked, as the audit log names them.
    pub actor: String,
}

impl SessionRef {
    /// Where the session's own events (not a turn's) go.
    pub fn scope(&self) -> EventScope<'_> {
        EventScope {
            tenant_id: &self.tenant_id,
            session_id: self.session_id,
            turn_id: None,
            request_id: Some(&self.request_id),
            trace_id: self.trace_id.as_deref(),
        }
    }
}

/// What a tool call's workflow carries: the call's ID and where its events go, never its
/// inputs or outputs (they live in `tool_calls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRef {
    pub tenant_id: String,
    pub session_id: Uuid,
    pub tool_call_id: Uuid,
    /// The chat turn whose model asked for the call; none for a direct request.
    pub turn_id: Option<Uuid>,
    pub request_id: String,
    pub trace_id: Option<String>,
}

impl ToolCallRef {
    /// Where the call's events go: its turn's stream, or the session's.
    pub fn scope(&self) -> EventScope<'_> {
        EventScope {
            tenant_id: &self.tenant_id,
            session_id: self.session_id,
            turn_id: self.turn_id,
            request_id: Some(&self.request_id),
            trace_id: self.trace_id.as_deref(),
        }
    }
}

/// What a memory write's workflow carries: the write's idempotency key (its payload waits in
/// `memory_writes`) and where its `memory.write` event goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryWriteRef {
    pub tenant_id: String,
    /// `{tenant}/{namespace}/{session_id}/{role}/{ts}/{hash16}`: see [`crate::memory::memory_key`].
    pub key: String,
    pub session_id: Option<Uuid>,
    pub turn_id: Option<Uuid>,
    pub request_id: String,
    pub trace_id: Option<String>,
}

impl MemoryWriteRef {
    /// Where the write's event goes: its turn's stream, or its session's; none without a
    /// session (a replayed write whose session is gone).
    pub fn scope(&self) -> Option<EventScope<'_>> {
        Some(EventScope {
            tenant_id: &self.tenant_id,
            session_id: self.session_id?,
            turn_id: self.turn_id,
            request_id: Some(&self.request_id),
            trace_id: self.trace_id.as_deref(),
        })
    }
}

/// An uploaded file on its way through the scan: workflow inputs carry this, never its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadRef {
    pub tenant_id: String,
    pub attachment_id: Uuid,
    /// The session the file was uploaded for, whose stream hears how its scan ends; none for
    /// a file uploaded on its own.
    pub session_id: Option<Uuid>,
    /// The request that completed the upload; carried into events and audit rows.
    pub request_id: String,
    pub trace_id: Option<String>,
}

impl UploadRef {
    /// Where the file's `attachment.status` events go, if it belongs to a session.
    pub fn scope(&self) -> Option<EventScope<'_>> {
        Some(EventScope {
            tenant_id: &self.tenant_id,
            session_id: self.session_id?,
            turn_id: None,
            request_id: Some(&self.request_id),
            trace_id: self.trace_id.as_deref(),
        })
    }
}

/// The Temporal search attributes every workflow carries, so `temporal workflow list --query
/// "SessionId='…'"` and the Temporal UI's filter find a session's or a tenant's work. All are
/// `Keyword`s; the worker and the api register them when they start.
pub mod search_attributes {
    pub const TENANT_ID: &str = "TenantId";
    pub const SESSION_ID: &str = "SessionId";
    /// A [`WorkKind`](crate::WorkKind): chat, tool, upload, memory, maintenance.
    pub const SOMA_KIND: &str = "SomaKind";
    pub const ALL: [&str; 3] = [TENANT_ID, SESSION_ID, SOMA_KIND];
}
