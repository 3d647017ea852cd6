//! The session event contract: every event a session's stream carries, with its payload.
//!
//! Activities append [`SessionEvent`]s; the store keeps each as its kind, its JSON payload and a
//! dedupe key ([`SessionEvent::dedupe_key`]); the api sends each as an SSE frame whose `data:`
//! is an [`EventData`] (`{type, meta, payload}`); clients decode it back with
//! [`EventData::event`]. The table in `docs/architecture.md` is checked against
//! [`SessionEvent::examples`], so it cannot drift from this file.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::status::{AttachmentStatus, MemoryRole, MemoryWriteStatus, RecallStatus, Role, ToolCallStatus, TurnOutcome};

/// Declares [`SessionEvent`] from a table of `"kind" => Variant(Payload)`, so each kind's name
/// is written once: serde's tag, [`SessionEvent::kind`] and [`SessionEvent::KINDS`] all use it.
macro_rules! session_events {
    ($($(#[doc = $doc:literal])+ $kind:literal => $variant:ident($payload:ty),)+) => {
        /// An event on a session's stream. Serialized as `{"type": kind, "payload": …}`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
        #[serde(tag = "type", content = "payload")]
        pub enum SessionEvent {
            $($(#[doc = $doc])+ #[serde(rename = $kind)] $variant($payload),)+
        }

        impl SessionEvent {
            /// Every kind, in the order of the contract.
            pub const KINDS: &'static [&'static str] = &[$($kind,)+];

            /// The SSE `event:` name, stored as `session_events.kind`.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(SessionEvent::$variant(_) => $kind,)+
                }
            }

            /// What the event means (its doc comment), for the documentation.
            pub fn description(&self) -> &'static str {
                match self {
                    $(SessionEvent::$variant(_) => concat!($($doc),+),)+
                }
            }
        }
    };
}

session_events! {
    /// The user's message, stored and about to be answered.
    "message.user" => MessageUser(UserMessage),
    /// What the turn recalled from memory for the model (keys and scores), or that memory
    /// was unavailable and the turn goes on without it.
    "memory.recall" => MemoryRecall(MemoryRecall),
    /// A piece of the reply as the provider streams it (coalesced over a few ms).
    "llm.delta" => LlmDelta(LlmDelta),
    /// The provider call is being retried: drop the partial reply shown so far.
    "llm.retry" => LlmRetry(LlmRetry),
    /// The provider finished streaming an attempt.
    "llm.complete" => LlmComplete(LlmComplete),
    /// A tool is called: by the model (in a round of the turn) or by a direct request.
    "tool.call" => ToolCall(ToolCall),
    /// The tool call waits for a person to approve or deny it (`POST /v1/tool/{id}/approve`).
    "tool.approval_required" => ToolApprovalRequired(ToolApprovalRequired),
    /// The tool call's result: its output, or why there is none (denied, failed, timed out).
    "tool.result" => ToolResult(ToolResult),
    /// An uploaded file moved on: its bytes are all in and it waits for the scan, or the scan
    /// said clean (downloadable), quarantined (with the signature found) or failed.
    "attachment.status" => AttachmentStatusChanged(AttachmentStatusChanged),
    /// A message's memory write ended: delivered to the memory backend, refused by the
    /// policy, or dead-lettered after its retries.
    "memory.write" => MemoryWrite(MemoryWrite),
    /// The turn ended with its reply stored.
    "turn.complete" => TurnComplete(TurnEnd),
    /// The turn failed after its retries; an `error` event says why.
    "turn.failed" => TurnFailed(TurnEnd),
    /// The turn was cancelled; the partial reply is kept as `cancelled`.
    "turn.cancelled" => TurnCancelled(TurnEnd),
    /// Something the user should know went wrong.
    "error" => Error(ErrorEvent),
    /// The conversation was cleared (`POST /v1/sessions/{id}/reset`); the session goes on.
    "session.reset" => SessionReset(ConversationReset),
    /// The session was deleted: the last event of its stream, which then ends.
    "session.deleted" => SessionDeleted(SessionDeleted),
}

/// `message.user`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserMessage {
    pub message_id: Uuid,
    pub role: Role,
    pub content: String,
    pub persona_id: Option<String>,
    /// The turn's place in its session, from 1.
    pub seq: i32,
}

/// `llm.delta`. Within one attempt, `index` counts from 0 without gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LlmDelta {
    pub text: String,
    pub attempt: u32,
    pub index: u32,
    /// The model call of the turn it belongs to: 0, then one more after each round of tools.
    #[serde(default)]
    pub round: u32,
    /// Set on the one delta a compaction (the `compact-deltas` job) left of a finished reply:
    /// `text` is the whole round's text and replaces what a client has of that round.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub compacted: bool,
}

/// `llm.retry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LlmRetry {
    /// The attempt that starts now; its deltas replace the earlier ones.
    pub attempt: u32,
    /// Drop what this round streamed so far (earlier rounds stand).
    pub discard_partial: bool,
    pub reason: String,
    #[serde(default)]
    pub round: u32,
}

/// `llm.complete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LlmComplete {
    pub attempt: u32,
    pub delta_count: u32,
    /// `stop`, or `tool_calls` when the model asked for tools (a next round follows).
    pub finish_reason: String,
    pub model: String,
    #[serde(default)]
    pub round: u32,
}

/// `tool.call`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolCall {
    pub tool_call_id: Uuid,
    pub tool: String,
    /// The inputs as the model or the caller sent them.
    pub arguments: String,
    /// The turn's round that asked for it; none for a direct request.
    pub round: Option<u32>,
}

/// `tool.approval_required`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolApprovalRequired {
    pub tool_call_id: Uuid,
    pub tool: String,
    pub arguments: String,
    /// Without a decision by then, the call counts as denied.
    pub expires_at: DateTime<Utc>,
}

/// `tool.result`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ToolResult {
    pub tool_call_id: Uuid,
    pub tool: String,
    pub status: ToolCallStatus,
    /// The output (of a succeeded call), cut at [`ToolResult::PREVIEW_BYTES`]; the whole is
    /// at `GET /v1/tool/{id}`.
    pub output: Option<String>,
    pub truncated: bool,
    /// Why there is no output, in words a user can read.
    pub reason: Option<String>,
}

impl ToolResult {
    /// How much of an output the event carries.
    pub const PREVIEW_BYTES: usize = 4096;
}

/// `memory.recall`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryRecall {
    pub status: RecallStatus,
    /// What was put in the prompt, best first (within the recall's token budget).
    pub memories: Vec<RecalledMemory>,
    /// Why memory was unavailable or degraded.
    pub reason: Option<String>,
}

/// One recalled memory, as `memory.recall` names it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RecalledMemory {
    pub key: String,
    pub score: f64,
    /// The first words of what is remembered.
    pub preview: String,
}

/// `memory.write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemoryWrite {
    pub key: String,
    pub role: Option<MemoryRole>,
    pub status: MemoryWriteStatus,
    pub attempts: u32,
    /// Why a write was refused or dead-lettered.
    pub reason: Option<String>,
}

/// `attachment.status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AttachmentStatusChanged {
    pub attachment_id: Uuid,
    pub filename: String,
    pub status: AttachmentStatus,
    pub size_bytes: i64,
    /// The SHA-256 of the stored bytes, once the scan has read them.
    pub sha256: Option<String>,
    /// What the scanner found (`Soma.Test.EICAR`, "too large to scan"), or why the scan failed.
    pub verdict: Option<String>,
}

/// `turn.complete`, `turn.failed` and `turn.cancelled`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TurnEnd {
    pub status: TurnOutcome,
    pub assistant_message_id: Option<Uuid>,
    /// Why a failed turn failed, in words a user can read.
    pub reason: Option<String>,
}

/// `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorEvent {
    pub code: ErrorCode,
    pub message: String,
}

/// Stable codes of `error` events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// A step of the turn failed for good (its retries ran out, or the provider refused).
    TurnFailed,
    /// The policy did not allow the action (or could not be evaluated: fail closed).
    PolicyDenied,
}

/// `session.reset`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationReset {
    pub removed_messages: i64,
}

/// `session.deleted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SessionDeleted {}

/// Where an event belongs and what caused it: what is stored beside its kind and payload.
#[derive(Debug, Clone, Copy)]
pub struct EventScope<'a> {
    pub tenant_id: &'a str,
    pub session_id: Uuid,
    pub turn_id: Option<Uuid>,
    pub request_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
}

impl SessionEvent {
    /// The event that tells a stream's reader how a turn ended.
    pub fn turn_end(end: TurnEnd) -> SessionEvent {
        match end.status {
            TurnOutcome::Completed => SessionEvent::TurnComplete(end),
            TurnOutcome::Failed => SessionEvent::TurnFailed(end),
            TurnOutcome::Cancelled => SessionEvent::TurnCancelled(end),
        }
    }

    /// Whether this is the last event of its session's stream.
    pub fn ends_stream(&self) -> bool {
        matches!(self, SessionEvent::SessionDeleted(_))
    }

    /// Whether an event of this kind is the last of its session's stream, for readers that
    /// pass events on without decoding them.
    pub fn kind_ends_stream(kind: &str) -> bool {
        kind == SessionEvent::SessionDeleted(SessionDeleted {}).kind()
    }

    /// Whether this is the last event of its turn.
    pub fn ends_turn(&self) -> bool {
        matches!(
            self,
            SessionEvent::TurnComplete(_) | SessionEvent::TurnFailed(_) | SessionEvent::TurnCancelled(_)
        )
    }

    /// What makes an append idempotent: the same event appended again (by a retried activity)
    /// has the same key and is skipped. Keys are unique within the turn (or, for events outside
    /// a turn, the session); a turn has one end whichever way it ends.
    pub fn dedupe_key(&self, scope: &EventScope<'_>) -> String {
        let subject = scope.turn_id.unwrap_or(scope.session_id);
        match self {
            SessionEvent::LlmDelta(delta) => {
                format!("{subject}:llm.delta:{}{}:{}", round_prefix(delta.round), delta.attempt, delta.index)
            }
            SessionEvent::LlmRetry(retry) => format!("{subject}:llm.retry:{}{}", round_prefix(retry.round), retry.attempt),
            SessionEvent::LlmComplete(complete) => {
                format!("{subject}:llm.complete:{}{}", round_prefix(complete.round), complete.attempt)
            }
            SessionEvent::ToolCall(call) => format!("{subject}:tool.call:{}", call.tool_call_id),
            SessionEvent::ToolApprovalRequired(asked) => format!("{subject}:tool.approval_required:{}", asked.tool_call_id),
            SessionEvent::ToolResult(result) => format!("{subject}:tool.result:{}", result.tool_call_id),
            SessionEvent::TurnComplete(_) | SessionEvent::TurnFailed(_) | SessionEvent::TurnCancelled(_) => {
                format!("{subject}:turn.end")
            }
            // A replayed write (under the replay's request) ends again.
            SessionEvent::MemoryWrite(write) => format!(
                "{subject}:memory.write:{}:{}:{}",
                write.key,
                write.status,
                scope.request_id.unwrap_or_default()
            ),
            SessionEvent::AttachmentStatusChanged(changed) => {
                format!("{subject}:attachment.status:{}:{}", changed.attachment_id, changed.status)
            }
            // A session may be reset many times: once per request.
            SessionEvent::SessionReset(_) => {
                format!("{subject}:session.reset:{}", scope.request_id.unwrap_or_default())
            }
            SessionEvent::MessageUser(_)
            | SessionEvent::MemoryRecall(_)
            | SessionEvent::Error(_)
            | SessionEvent::SessionDeleted(_) => {
                format!("{subject}:{}", self.kind())
            }
        }
    }

    /// The payload as stored (`session_events.payload`).
    pub fn payload(&self) -> Value {
        match serde_json::to_value(self) {
            Ok(Value::Object(mut tagged)) => tagged.remove("payload").unwrap_or(Value::Null),
            _ => Value::Null,
        }
    }

    /// Reads a stored or received event back from its kind and payload.
    pub fn from_parts(kind: &str, payload: Value) -> Result<SessionEvent, serde_json::Error> {
        serde_json::from_value(serde_json::json!({ "type": kind, "payload": payload }))
    }

    /// One event of each kind, for the documentation and its check.
    pub fn examples() -> Vec<SessionEvent> {
        let id = Uuid::from_u128(0x0196_0000_0000_7000_8000_0000_0000_0001);
        let end = |status| TurnEnd { status, assistant_message_id: Some(id), reason: None };
        vec![
            SessionEvent::MessageUser(UserMessage {
                message_id: id,
                role: Role::User,
                content: "What is Temporal?".into(),
                persona_id: None,
                seq: 1,
            }),
            SessionEvent::MemoryRecall(MemoryRecall {
                status: RecallStatus::Recalled,
                memories: vec![RecalledMemory {
                    key: format!("acme/default/{id}/user/1795000000123/2cf24dba5fb0a30e"),
                    score: 0.42,
                    preview: "My favourite colour is teal".into(),
                }],
                reason: None,
            }),
            SessionEvent::LlmDelta(LlmDelta { text: "Temporal is".into(), attempt: 1, index: 0, round: 0, compacted: false }),
            SessionEvent::LlmRetry(LlmRetry {
                attempt: 2,
                discard_partial: true,
                reason: "the provider stream was interrupted; restarting the reply".into(),
                round: 0,
            }),
            SessionEvent::LlmComplete(LlmComplete {
                attempt: 2,
                delta_count: 14,
                finish_reason: "stop".into(),
                model: "gpt-4o-mini".into(),
                round: 0,
            }),
            SessionEvent::ToolCall(ToolCall {
                tool_call_id: id,
                tool: "calculator".into(),
                arguments: r#"{"expression":"17*23"}"#.into(),
                round: Some(0),
            }),
            SessionEvent::ToolApprovalRequired(ToolApprovalRequired {
                tool_call_id: id,
                tool: "http_fetch".into(),
                arguments: r#"{"url":"https://example.com/"}"#.into(),
                expires_at: DateTime::from_timestamp(1_795_000_000, 0).unwrap_or_default(),
            }),
            SessionEvent::ToolResult(ToolResult {
                tool_call_id: id,
                tool: "calculator".into(),
                status: ToolCallStatus::Succeeded,
                output: Some("391".into()),
                truncated: false,
                reason: None,
            }),
            SessionEvent::AttachmentStatusChanged(AttachmentStatusChanged {
                attachment_id: id,
                filename: "report.pdf".into(),
                status: AttachmentStatus::Quarantined,
                size_bytes: 68,
                sha256: Some("275a021bbfb6489e54d471899f7db9d1663fc695ec2fe2a2c4538aabf651fd0f".into()),
                verdict: Some("Soma.Test.EICAR".into()),
            }),
            SessionEvent::MemoryWrite(MemoryWrite {
                key: format!("acme/default/{id}/assistant/1795000000456/9f86d081884c7d65"),
                role: Some(MemoryRole::Assistant),
                status: MemoryWriteStatus::Delivered,
                attempts: 1,
                reason: None,
            }),
            SessionEvent::TurnComplete(end(TurnOutcome::Completed)),
            SessionEvent::TurnFailed(TurnEnd {
                status: TurnOutcome::Failed,
                assistant_message_id: None,
                reason: Some("LLM provider rejected the request: HTTP 401".into()),
            }),
            SessionEvent::TurnCancelled(end(TurnOutcome::Cancelled)),
            SessionEvent::Error(ErrorEvent {
                code: ErrorCode::TurnFailed,
                message: "LLM provider rejected the request: HTTP 401".into(),
            }),
            SessionEvent::SessionReset(ConversationReset { removed_messages: 6 }),
            SessionEvent::SessionDeleted(SessionDeleted {}),
        ]
    }

    /// The contract as a markdown table: kind, what it means, an example payload. The
    /// documentation holds this table; a test fails when the two differ.
    pub fn markdown_table() -> String {
        let mut table = String::from("| kind | meaning | example payload |\n|---|---|---|\n");
        for event in SessionEvent::examples() {
            let meaning = event.description().trim();
            table.push_str(&format!("| `{}` | {meaning} | `{}` |\n", event.kind(), event.payload()));
        }
        table
    }
}

/// Keys of round 0 are those of turns from before rounds existed, so a turn in flight across
/// the upgrade keeps its keys.
fn round_prefix(round: u32) -> String {
    if round == 0 { String::new() } else { format!("r{round}:") }
}

/// Who and what an event belongs to, as sent in every event's `data.meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventMeta {
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub session_id: Uuid,
    pub turn_id: Option<Uuid>,
    pub tenant_id: String,
    pub created_at: DateTime<Utc>,
}

/// The SSE `data:` of every event: `{type, meta, payload}`. `type` repeats the SSE `event:`
/// name so a client reading raw frames can dispatch on it. The payload is kept as JSON so an
/// api passes on kinds newer than itself untouched; [`EventData::event`] decodes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventData {
    #[serde(rename = "type")]
    pub kind: String,
    pub meta: EventMeta,
    pub payload: Value,
}

impl EventData {
    /// The typed event.
    pub fn event(&self) -> Result<SessionEvent, serde_json::Error> {
        SessionEvent::from_parts(&self.kind, self.payload.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_an_example_that_round_trips() {
        let examples = SessionEvent::examples();
        let kinds: Vec<&str> = examples.iter().map(SessionEvent::kind).collect();
        assert_eq!(kinds, SessionEvent::KINDS, "one example per kind, in contract order");
        for event in examples {
            let back = SessionEvent::from_parts(event.kind(), event.payload()).unwrap();
            assert_eq!(back, event);
        }
    }

    #[test]
    fn a_turn_has_one_end_and_attempts_do_not_collide() {
        let turn = Uuid::new_v4();
        let scope =
            EventScope { tenant_id: "t", session_id: Uuid::new_v4(), turn_id: Some(turn), request_id: None, trace_id: None };
        let end = |status| SessionEvent::turn_end(TurnEnd { status, assistant_message_id: None, reason: None });
        assert_eq!(end(TurnOutcome::Completed).dedupe_key(&scope), end(TurnOutcome::Cancelled).dedupe_key(&scope));
        let delta = |round, attempt, index| SessionEvent::LlmDelta(LlmDelta { text: "x".into(), attempt, index, round, compacted: false });
        assert_ne!(delta(0, 1, 0).dedupe_key(&scope), delta(0, 2, 0).dedupe_key(&scope));
        assert_ne!(delta(0, 1, 0).dedupe_key(&scope), delta(0, 1, 1).dedupe_key(&scope));
        assert_ne!(delta(0, 1, 0).dedupe_key(&scope), delta(1, 1, 0).dedupe_key(&scope));
        assert_eq!(delta(0, 1, 0).dedupe_key(&scope), format!("{turn}:llm.delta:1:0"), "round 0 keeps its old keys");
    }

    #[test]
    fn the_documentation_shows_the_contract_as_it_is() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/architecture.md");
        let docs = std::fs::read_to_string(path).expect("docs/architecture.md exists");
        let table = SessionEvent::markdown_table();
        assert!(
            docs.contains(&table),
            "docs/architecture.md must hold the event table exactly as the contract makes it; put this in it:\n\n{table}"
        );
    }

    #[test]
    fn an_unknown_kind_is_an_error_not_a_guess() {
        assert!(SessionEvent::from_parts("llm.nonsense", serde_json::json!({})).is_err());
    }
}
