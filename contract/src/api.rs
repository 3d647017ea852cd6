//! The HTTP API's request and response bodies: what the api serves, the OpenAPI document
//! describes (with the `openapi` feature) and the Rust client and `soma` CLI read.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::status::{
    ApprovalDecision, AttachmentStatus, AttachmentStorage, DeadLetterKind, DeadLetterStatus, MaintenanceJob, MessageStatus, Role, ToolCallStatus, ToolKind, TurnStatus,
};

/// Derives `utoipa::ToSchema` with the `openapi` feature.
macro_rules! api_type {
    ($($item:item)+) => {
        $(
            #[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
            $item
        )+
    };
}

api_type! {
    /// Every error: a stable `code`, a message for people, and the request's id.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ErrorBody {
        pub code: String,
        pub message: String,
        pub request_id: String,
    }

    /// `POST /v1/session/message`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct PostMessage {
        /// The session to continue; without one, a new session starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub session_id: Option<Uuid>,
        /// Not blank, no NUL character; at most the deployment's `max_message_bytes` (413 beyond).
        #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = r"^[^\x00]*[^\x00\s][^\x00]*$"))]
        pub message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(pattern = r"^[^\x00]*$"))]
        pub persona_id: Option<String>,
        /// Files uploaded earlier (`/v1/uploads`) that go with the message: the turn waits for
        /// their scans; clean text-like ones (text, Markdown, JSON, CSV) reach the model, the
        /// others are refused with an `attachment.status` event.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        #[cfg_attr(feature = "openapi", schema(max_items = 20))]
        pub attachments: Vec<AttachmentRef>,
        /// What to do when a turn of the session is still running.
        #[serde(default)]
        pub if_busy: IfBusy,
    }

    /// A file uploaded earlier, to go with a message.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct AttachmentRef {
        pub id: Uuid,
    }

    /// A message sent while a turn of its session runs ("double texting").
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(rename_all = "snake_case")]
    pub enum IfBusy {
        /// Answer it after the running turn (and any queued before it).
        #[default]
        Queue,
        /// Cancel the running and queued turns (their partial replies kept as `cancelled`) and
        /// answer this one next.
        Interrupt,
        /// Refuse it: 409 `session_busy`, nothing changes.
        Reject,
    }

    /// 202 to `POST /v1/session/message`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MessageAccepted {
        pub session_id: Uuid,
        pub turn_id: Uuid,
        /// The turn's workflow in Temporal.
        pub workflow_id: String,
        /// `queued`: the turn runs once the session's earlier turns have.
        pub status: TurnStatus,
        /// Open the session's stream after this event id to see this turn from its start.
        pub stream_after: i64,
    }

    /// One of the tenant's sessions.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SessionSummary {
        pub id: Uuid,
        pub persona_id: Option<String>,
        pub turn_count: i32,
        pub created_at: DateTime<Utc>,
        pub updated_at: DateTime<Utc>,
    }

    /// `GET /v1/sessions`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SessionList {
        pub sessions: Vec<SessionSummary>,
        /// Pass as `cursor` for the next page; null on the last one.
        pub next_cursor: Option<String>,
    }

    /// A stored message of the conversation.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Message {
        pub id: Uuid,
        pub turn_id: Uuid,
        /// The turn's place in its session, from 1.
        pub turn_seq: i32,
        /// The turn's workflow in Temporal; null for imported turns, which had none here.
        pub workflow_id: Option<String>,
        pub role: Role,
        pub content: String,
        pub status: MessageStatus,
        pub created_at: DateTime<Utc>,
    }

    /// `GET /v1/sessions/{id}/messages`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MessagePage {
        pub session_id: Uuid,
        pub messages: Vec<Message>,
        /// Pass as `after` for the next page; null on the last one.
        pub next_after: Option<Uuid>,
        /// Open the session's stream after this event id to see what these messages do not
        /// hold: the reply of a turn still running, so far, and everything after. Events of
        /// turns that these messages show finished may come again; a client ignores them.
        pub stream_after: i64,
    }

    /// 202 to `POST /v1/session/{id}/cancel`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CancelRequested {
        pub session_id: Uuid,
        pub turn_id: Uuid,
        pub workflow_id: String,
        /// `cancelling`: the stream shows `turn.cancelled` once the turn has stopped.
        pub status: String,
    }

    /// `POST /v1/session/{id}/stream-token`: lets a browser's `EventSource`, which cannot send
    /// headers, read this one session's stream (`GET /v1/session/{id}/events?token=…`) and
    /// nothing else, until it expires.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct StreamToken {
        pub token: String,
        pub expires_at: DateTime<Utc>,
    }

    /// 202 to `DELETE /v1/sessions/{id}`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SessionDeletion {
        pub session_id: Uuid,
        /// The deletion's workflow: it cancels the session's turns, ends its streams with
        /// `session.deleted`, then removes its data.
        pub workflow_id: String,
        /// `deleting`: the session is gone for every request from now on.
        pub status: String,
    }

    /// 200 to `POST /v1/sessions/{id}/reset`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SessionReset {
        pub session_id: Uuid,
        /// Messages removed; the session and its stream go on.
        pub removed_messages: i64,
    }

    /// 201 to `POST /v1/sessions/import`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct SessionImported {
        /// The new session holding the imported conversation.
        pub session_id: Uuid,
        pub turns: i64,
        pub messages: i64,
    }

    /// `GET /v1/runtime-config`: what a UI may show. Never a secret.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct RuntimeConfig {
        pub version: String,
        /// The model turns are answered by.
        pub model: Option<String>,
        pub max_message_bytes: usize,
        pub stream_token_ttl_secs: u64,
        /// Where the Temporal UI is, for links to a turn's workflow:
        /// `{temporal_ui_url}/namespaces/{temporal_namespace}/workflows/{workflow_id}`.
        pub temporal_ui_url: Option<String>,
        pub temporal_namespace: String,
        pub features: Features,
    }

    /// What this deployment does beyond chat.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Features {
        pub tools: bool,
        pub uploads: bool,
        pub memory: bool,
    }

    /// One line of a session export (JSON lines): first the session, then its messages in
    /// conversation order. `POST /v1/sessions/import` takes the same lines.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case")]
    pub enum ExportLine {
        Session(ExportedSession),
        Message(ExportedMessage),
    }

    /// The first line of an export.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ExportedSession {
        /// [`EXPORT_FORMAT`].
        pub format: String,
        /// The session's id where it was exported; an import makes a new one.
        pub session_id: Uuid,
        pub persona_id: Option<String>,
        pub created_at: DateTime<Utc>,
    }

    /// A message line of an export.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ExportedMessage {
        /// The turn's place in the session, from 1: a user message, then its reply.
        pub turn: i32,
        pub role: Role,
        pub content: String,
        pub status: MessageStatus,
        pub created_at: DateTime<Utc>,
    }

    /// A tool as the caller's tenant sees it (`GET /v1/tools`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct ToolInfo {
        pub name: String,
        pub description: String,
        /// JSON Schema of the inputs.
        pub input_schema: serde_json::Value,
        pub kind: ToolKind,
        pub requires_approval: bool,
        /// How long one execution may take, in ms.
        pub timeout_ms: i32,
    }

    /// `GET /v1/tools`: the enabled tools of the caller's tenant, by name.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct ToolList {
        pub tools: Vec<ToolInfo>,
    }

    /// `POST /v1/tool/request`: runs one tool directly, outside a chat turn.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ToolRequest {
        pub session_id: Uuid,
        /// The tool's name, as `GET /v1/tools` lists it.
        #[cfg_attr(feature = "openapi", schema(pattern = r"^[A-Za-z0-9_-]{1,64}$"))]
        pub tool_id: String,
        /// Checked against the tool's input schema (400 if they do not fit).
        pub inputs: serde_json::Value,
    }

    /// 202 to `POST /v1/tool/request`: the result comes as `tool.result` on the session's stream.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ToolRequestAccepted {
        pub tool_call_id: Uuid,
        pub session_id: Uuid,
        pub workflow_id: String,
        pub status: ToolCallStatus,
    }

    /// `POST /v1/tool/{id}/approve` and `/deny`.
    #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct ToolDecisionRequest {
        /// No NUL character (400 `invalid_text`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(pattern = r"^[^\x00]*$"))]
        pub reason: Option<String>,
    }

    /// The answer to an approval or a denial: the decision went to the waiting call.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ToolDecisionAccepted {
        pub tool_call_id: Uuid,
        pub decision: ApprovalDecision,
    }

    /// `GET /v1/tool/{id}`: a tool call with its whole output.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ToolCallView {
        pub tool_call_id: Uuid,
        pub session_id: Uuid,
        pub turn_id: Option<Uuid>,
        pub tool: String,
        pub arguments: String,
        pub status: ToolCallStatus,
        pub output: Option<String>,
        pub error: Option<String>,
        pub workflow_id: String,
        pub created_at: DateTime<Utc>,
        pub finished_at: Option<DateTime<Utc>>,
    }

    /// `POST /v1/admin/tools/refresh`: the catalog refreshed from the built-ins and the MCP
    /// servers in the config.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct CatalogRefreshed {
        /// Entries written (built-ins and every tool the MCP servers listed).
        pub tools: u32,
        /// MCP tools removed: no longer listed by their server, or of a server no longer configured.
        pub retired: u64,
        pub servers: Vec<McpServerListing>,
    }

    /// How one MCP server answered the refresh.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct McpServerListing {
        pub name: String,
        pub tools: u32,
        /// Why it could not be listed (its tools are then kept as they were).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }

    /// `GET /v1/memory/recall`: the tenant's memories most relevant to `q`, best first.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct RecallResponse {
        pub memories: Vec<MemoryItem>,
        /// Part of the backend's storage did not answer (the results may be incomplete).
        pub degraded: bool,
        /// `postgres` or `somabrain`.
        pub backend: String,
    }

    /// One remembered item.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct MemoryItem {
        /// The write's idempotency key: `{tenant}/{namespace}/{session_id}/{role}/{ts}/{hash16}`.
        pub key: String,
        pub content: String,
        pub score: f64,
        pub session_id: Option<Uuid>,
        pub role: Option<String>,
        pub created_at: Option<DateTime<Utc>>,
    }

    /// `POST /v1/memory/feedback`: how useful a recalled memory was.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct MemoryFeedback {
        /// The memory's key, as recall gave it (no NUL character).
        #[cfg_attr(feature = "openapi", schema(pattern = r"^[^\x00]*$"))]
        pub key: String,
        /// From -1 (harmful) to 1 (exactly what was needed).
        #[cfg_attr(feature = "openapi", schema(minimum = -1, maximum = 1))]
        pub utility: f64,
        /// The reward the platform's learning loop uses; defaults to `utility`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(minimum = -1, maximum = 1))]
        pub reward: Option<f64>,
    }

    /// The answer to `POST /v1/memory/feedback`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct FeedbackAccepted {
        pub accepted: bool,
    }

    /// A dead letter: work that exhausted its retries or failed for good, with its payload.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct DeadLetter {
        pub id: Uuid,
        pub kind: DeadLetterKind,
        pub tenant_id: String,
        /// The work's idempotency key; a replay runs under it again.
        pub key: String,
        pub session_id: Option<Uuid>,
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        pub payload: serde_json::Value,
        pub error: String,
        pub attempts: i32,
        pub status: DeadLetterStatus,
        pub resolved_by: Option<String>,
        pub resolution: Option<String>,
        pub resolved_at: Option<DateTime<Utc>>,
        pub created_at: DateTime<Utc>,
    }

    /// `GET /v1/admin/dead-letters`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct DeadLetterList {
        pub dead_letters: Vec<DeadLetter>,
    }

    /// `POST /v1/admin/dead-letters/replay`: replays every open dead letter that matches.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct ReplayAll {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub kind: Option<DeadLetterKind>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub tenant_id: Option<String>,
    }

    /// What a replay started: the dead letters replayed and their workflows.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Replayed {
        pub replayed: Vec<ReplayedLetter>,
    }

    /// One replayed dead letter.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ReplayedLetter {
        pub id: Uuid,
        pub workflow_id: String,
    }

    /// `POST /v1/admin/dead-letters/{id}/discard`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    pub struct Discard {
        /// Why it is given up on (required: it goes to the audit log). Not blank, no NUL character.
        #[cfg_attr(feature = "openapi", schema(min_length = 1, pattern = r"^[^\x00]*[^\x00\s][^\x00]*$"))]
        pub reason: String,
    }

    /// An uploaded file: `POST /v1/uploads` (multipart) and `GET /v1/attachments/{id}/status`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Attachment {
        pub id: Uuid,
        pub filename: String,
        pub content_type: String,
        /// The declared length; none while a tus upload defers it.
        pub size_bytes: Option<i64>,
        /// Bytes received so far.
        pub received_bytes: i64,
        pub status: AttachmentStatus,
        /// The SHA-256 (hex) of the bytes: as received for a multipart upload, as scanned once
        /// the scan has read them.
        pub sha256: Option<String>,
        /// What the scanner found, or why the scan failed.
        pub verdict: Option<String>,
        pub session_id: Option<Uuid>,
        /// Where to download it once `clean`.
        pub url: String,
        /// The scan's workflow in Temporal.
        pub workflow_id: String,
        pub created_at: DateTime<Utc>,
        pub scanned_at: Option<DateTime<Utc>>,
        /// Where a clean file's bytes are kept: `inline` (its row) or `s3`; none while it is
        /// served from the bytes as received, until the scan's last step has stored it.
        #[serde(default)]
        pub storage: Option<AttachmentStorage>,
    }

    /// One row of the audit log: who did what, to which session, and how it ended.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AuditRecord {
        /// Increasing: the cursor of `GET /v1/admin/audit?after=`.
        pub id: i64,
        pub tenant_id: String,
        /// The API request that caused it (`X-Request-Id`), if any.
        pub request_id: Option<String>,
        pub trace_id: Option<String>,
        pub session_id: Option<Uuid>,
        pub turn_id: Option<Uuid>,
        /// `key:<first 12 hex of the key's hash>`, `admin:<name>`, `worker`, `recovery`, or a job.
        pub actor: String,
        /// `turn.accept`, `session.delete`, `schedule.pause`, …
        pub action: String,
        pub outcome: String,
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        pub details: serde_json::Value,
        pub created_at: DateTime<Utc>,
    }

    /// `GET /v1/admin/audit`: matching rows, oldest first.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AuditList {
        pub records: Vec<AuditRecord>,
        /// Pass as `after` for the next page; absent on the last one.
        pub next_after: Option<i64>,
    }

    /// `GET /v1/admin/schedules`: the periodic jobs as Temporal runs them.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ScheduleList {
        pub schedules: Vec<ScheduleView>,
    }

    /// One schedule: what it runs, when, and what it did lately.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ScheduleView {
        /// The schedule's ID in Temporal (`temporal schedule describe --schedule-id …`).
        pub id: String,
        pub job: MaintenanceJob,
        /// `every 60s` or the cron expression.
        pub spec: String,
        pub paused: bool,
        /// Why it is paused (or was last unpaused), as the operator said.
        pub note: Option<String>,
        /// The next few times it will run (none while paused).
        pub next_runs: Vec<DateTime<Utc>>,
        /// The latest runs it started, newest last.
        pub recent_runs: Vec<ScheduleRun>,
        /// Runs started since it was created.
        pub runs: i64,
    }

    /// A run a schedule started.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ScheduleRun {
        pub workflow_id: String,
        pub started_at: Option<DateTime<Utc>>,
    }

    /// `POST /v1/admin/schedules/{id}/pause` and `…/unpause`: why (kept as the schedule's note).
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    pub struct ScheduleNote {
        /// No NUL character (400 `invalid_text`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[cfg_attr(feature = "openapi", schema(pattern = r"^[^\x00]*$"))]
        pub note: Option<String>,
    }

    /// What one run of a periodic job did: the `MaintenanceWorkflow`'s result, readable in the
    /// Temporal UI.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MaintenanceReport {
        pub job: MaintenanceJob,
        /// Items handled: sessions deleted, events removed, uploads expired, letters replayed,
        /// gauges published.
        pub items: u64,
        /// Bounded batches it took.
        pub batches: u32,
        /// One line for people.
        pub summary: String,
    }

    /// What one batch of a periodic job did.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct MaintenanceBatch {
        pub items: u64,
        /// Whether more is left for another batch.
        pub more: bool,
        pub summary: String,
    }

    /// `GET /v1/health`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Health {
        pub status: String,
        pub service: String,
        pub version: String,
    }

    /// `GET /v1/ready`: 200 when no check is `failing`, 503 with the failing ones otherwise.
    /// Postgres and Temporal are required; clamd and S3 are not (uploads wait for the scanner,
    /// only large clean files need S3): when they do not answer their check is `degraded`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Readiness {
        /// `ready` or `not_ready`.
        pub status: String,
        pub checks: std::collections::BTreeMap<String, Check>,
    }

    /// One readiness check.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct Check {
        /// `ok`, `failing` (the process is not ready) or `degraded` (it serves; the error says
        /// what waits).
        pub status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pub error: Option<String>,
    }
}

impl DeadLetter {
    /// The memory write a replay of this letter runs again, under its key, for `request_id`.
    pub fn memory_write(&self, request_id: &str, trace_id: Option<&str>) -> crate::MemoryWriteRef {
        crate::MemoryWriteRef {
            tenant_id: self.tenant_id.clone(),
            key: self.key.clone(),
            session_id: self.session_id,
            turn_id: None,
            request_id: request_id.to_string(),
            trace_id: trace_id.map(str::to_string),
        }
    }
}

/// The `format` of the first line of a session export.
pub const EXPORT_FORMAT: &str = "soma.session.v1";
