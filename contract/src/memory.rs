//! What a memory is on the wire: the platform's payload shape and key format, so memories
//! written by the old platform and by this engine look alike in the memory service.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::status::MemoryRole;

/// The stored payload of a remembered conversation event (the platform's
/// `conversation_event`): what the memory backend keeps and recall gives back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryPayload {
    /// The remembered message's ID.
    pub id: Uuid,
    /// `conversation_event` for messages, `tool_result` for tools' results, `attachment` for
    /// the text of a message's files.
    #[serde(rename = "type")]
    pub kind: String,
    pub role: MemoryRole,
    pub content: String,
    #[serde(default)]
    pub attachments: Vec<Value>,
    pub session_id: Option<Uuid>,
    pub persona_id: Option<String>,
    /// `{tenant_id, turn_id, request_id, created_at}` and whatever else the writer adds.
    #[serde(default)]
    pub metadata: Value,
    pub idempotency_key: String,
}

impl MemoryPayload {
    /// The payload `type` of remembered messages.
    pub const CONVERSATION_EVENT: &'static str = "conversation_event";
    /// The payload `type` of remembered tool results.
    pub const TOOL_RESULT: &'static str = "tool_result";
    /// The payload `type` of remembered attachment text (`{filename}: {text}`).
    pub const ATTACHMENT: &'static str = "attachment";
}

/// How long a memory write keeps trying: backoff from 1 s doubling up to
/// `max_interval_secs`, for `budget_secs` in all (then it becomes a dead letter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryRetry {
    pub max_interval_secs: u64,
    pub budget_secs: u64,
}

/// The idempotency key of a remembered message, in the platform's format
/// `{tenant}/{namespace}/{session_id}/{role}/{ts}/{hash16}`: `ts` is when the message was
/// stored (ms since the Unix epoch) and `hash16` the first 16 hex digits of its content's
/// SHA-256. Everything in it is fixed when the message is stored, so every retry and every
/// replay of the write uses the same key.
pub fn memory_key(
    tenant_id: &str,
    namespace: &str,
    session_id: Uuid,
    role: MemoryRole,
    stored_at: DateTime<Utc>,
    content: &str,
) -> String {
    let hash = hex::encode(Sha256::digest(content.as_bytes()));
    format!("{tenant_id}/{namespace}/{session_id}/{role}/{}/{}", stored_at.timestamp_millis(), &hash[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_depends_only_on_what_was_stored() {
        let session = Uuid::from_u128(7);
        let at = DateTime::from_timestamp_millis(1_795_000_000_123).unwrap();
        let key = memory_key("acme", "default", session, MemoryRole::User, at, "hello");
        assert_eq!(key, format!("acme/default/{session}/user/1795000000123/2cf24dba5fb0a30e"));
        assert_eq!(key, memory_key("acme", "default", session, MemoryRole::User, at, "hello"));
        assert_ne!(key, memory_key("acme", "default", session, MemoryRole::Assistant, at, "hello"));
    }
}
