//! Statuses and roles, complete enums. Stored as checked `TEXT` columns (the migrations list
//! the same values), read and written through `sqlx::Type` with the `sqlx` feature.

use serde::{Deserialize, Serialize};

/// Declares a status enum: serde and the database see the same snake_case names.
macro_rules! text_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        #[cfg_attr(feature = "sqlx", derive(sqlx::Type))]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[cfg_attr(feature = "sqlx", sqlx(type_name = "text", rename_all = "snake_case"))]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The name stored in the database and sent on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Where a turn is: accepted and waiting, being answered, or ended.
    pub enum TurnStatus {
        /// Accepted; waits for the session's earlier turns.
        Queued => "queued",
        /// Its user message is stored and the reply is being made.
        Running => "running",
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

text_enum! {
    /// How a turn ended: the terminal [`TurnStatus`]es.
    pub enum TurnOutcome {
        Completed => "completed",
        Failed => "failed",
        Cancelled => "cancelled",
    }
}

text_enum! {
    /// Whether a stored message is whole.
    pub enum MessageStatus {
        Complete => "complete",
        /// A reply cut short by a cancel request: what was streamed before it.
        Cancelled => "cancelled",
        /// A reply cut short by a failure: what was streamed before it.
        Failed => "failed",
    }
}

text_enum! {
    /// Who wrote a message.
    pub enum Role {
        User => "user",
        Assistant => "assistant",
    }
}

text_enum! {
    /// Where a tool call is.
    pub enum ToolCallStatus {
        /// Asked for; not yet checked against the catalog and the policy.
        Requested => "requested",
        /// Waits for a person to approve or deny it.
        AwaitingApproval => "awaiting_approval",
        Running => "running",
        Succeeded => "succeeded",
        /// The tool failed for good: unknown or disabled, invalid inputs, retries exhausted.
        Failed => "failed",
        /// The policy or a person said no.
        Denied => "denied",
        /// The tool, or the wait for approval, took longer than its profile allows.
        TimedOut => "timed_out",
        Cancelled => "cancelled",
    }
}

text_enum! {
    /// Where a tool's code lives.
    pub enum ToolKind {
        /// Built into the worker (`calculator`, `current_time`, `http_fetch`).
        Builtin => "builtin",
        /// An HTTP endpoint the inputs are POSTed to, signed with HMAC.
        Http => "http",
        /// A tool of an MCP server named in the config.
        Mcp => "mcp",
    }
}

text_enum! {
    /// A person's answer to a tool call that needs approval.
    pub enum ApprovalDecision {
        Approved => "approved",
        Denied => "denied",
    }
}

text_enum! {
    /// Whose words a memory holds: a message's author, or a tool's result.
    pub enum MemoryRole {
        User => "user",
        Assistant => "assistant",
        Tool => "tool",
    }
}

impl From<Role> for MemoryRole {
    fn from(role: Role) -> Self {
        match role {
            Role::User => MemoryRole::User,
            Role::Assistant => MemoryRole::Assistant,
        }
    }
}

text_enum! {
    /// Where a memory write is.
    pub enum MemoryWriteStatus {
        /// Owed to the backend; its workflow is trying (and retrying).
        Pending => "pending",
        /// The backend has it (or queued it itself, which counts as accepted).
        Delivered => "delivered",
        /// The policy (`memory.write`) did not allow it.
        Denied => "denied",
        /// Failed for good or out of retries: in `dead_letters`, waiting for a replay.
        DeadLettered => "dead_lettered",
    }
}

text_enum! {
    /// How much recall a turn got.
    pub enum RecallStatus {
        /// The backend answered in full.
        Recalled => "recalled",
        /// The backend answered from part of its storage (SomaBrain's `degraded: true`).
        Degraded => "degraded",
        /// The backend could not be reached in time: the turn goes on without memories.
        Unavailable => "unavailable",
    }
}

text_enum! {
    /// Where a dead letter is.
    pub enum DeadLetterStatus {
        Open => "open",
        /// Started again under the same idempotency key.
        Replayed => "replayed",
        /// Given up on by a person, with a reason.
        Discarded => "discarded",
    }
}

text_enum! {
    /// The kinds of work that can end as a dead letter.
    pub enum DeadLetterKind {
        MemoryWrite => "memory_write",
    }
}

text_enum! {
    /// The periodic jobs, each run by a Temporal Schedule as a `MaintenanceWorkflow`.
    pub enum MaintenanceJob {
        /// Gauges from the database (sessions, turns, scans, dead letters, memory writes),
        /// served on `/metrics`.
        PublishMetrics => "publish_metrics",
        /// Sessions past their retention, with everything they own (S3 objects included).
        CleanupSessions => "cleanup_sessions",
        /// The `llm.delta` events of old finished turns, replaced by one event per reply.
        CompactDeltas => "compact_deltas",
        /// tus uploads past their expiry, with their received bytes.
        ExpireUploads => "expire_uploads",
        /// Open dead letters replayed once their cause has cleared.
        RetryDeadLetters => "retry_dead_letters",
    }
}

text_enum! {
    /// What a workflow does, as the operator filters on it (`SomaKind` search attribute).
    pub enum WorkKind {
        Chat => "chat",
        Tool => "tool",
        Upload => "upload",
        Memory => "memory",
        Maintenance => "maintenance",
    }
}

impl ToolCallStatus {
    /// Whether the call has its result.
    pub fn is_final(self) -> bool {
        !matches!(self, ToolCallStatus::Requested | ToolCallStatus::AwaitingApproval | ToolCallStatus::Running)
    }
}

impl TurnStatus {
    /// Queued and running turns hold their session: later turns wait for them.
    pub fn is_open(self) -> bool {
        matches!(self, TurnStatus::Queued | TurnStatus::Running)
    }
}

impl From<TurnOutcome> for TurnStatus {
    fn from(outcome: TurnOutcome) -> Self {
        match outcome {
            TurnOutcome::Completed => TurnStatus::Completed,
            TurnOutcome::Failed => TurnStatus::Failed,
            TurnOutcome::Cancelled => TurnStatus::Cancelled,
        }
    }
}

impl From<TurnOutcome> for MessageStatus {
    /// The status of the reply a turn that ended so leaves behind.
    fn from(outcome: TurnOutcome) -> Self {
        match outcome {
            TurnOutcome::Completed => MessageStatus::Complete,
            TurnOutcome::Failed => MessageStatus::Failed,
            TurnOutcome::Cancelled => MessageStatus::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_and_database_names_agree() {
        for status in TurnStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for status in MessageStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for status in ToolCallStatus::ALL {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
        for role in Role::ALL {
            assert_eq!(serde_json::to_value(role).unwrap(), role.as_str());
        }
        for outcome in TurnOutcome::ALL {
            assert_eq!(TurnStatus::from(*outcome).as_str(), outcome.as_str());
        }
    }
}

text_enum! {
    /// Where an uploaded file is, from its first byte to being served or refused. Only `clean`
    /// files are ever served.
    pub enum AttachmentStatus {
        /// Bytes are still arriving (a tus upload not yet at its length).
        Uploading => "uploading",
        /// Every byte is in; the scan has not said yet (or the scanner is away).
        Pending => "pending",
        /// Scanned clean and stored: downloadable by its tenant.
        Clean => "clean",
        /// The scanner found something (or the file was too large to scan): never served.
        Quarantined => "quarantined",
        /// The stored bytes did not match their SHA-256, or the scan gave up: never served.
        Failed => "failed",
    }
}

impl AttachmentStatus {
    /// Whether the scan has said its last word.
    pub fn is_final(self) -> bool {
        matches!(self, AttachmentStatus::Clean | AttachmentStatus::Quarantined | AttachmentStatus::Failed)
    }
}

text_enum! {
    /// Where a clean attachment's bytes live.
    pub enum AttachmentStorage {
        /// In its Postgres row (small files).
        Inline => "inline",
        /// In the S3 bucket, under a key derived from the attachment's id.
        S3 => "s3",
    }
}
