//! The Rust client of the Soma API: one typed call per route (bodies are the contract's
//! types), a session's event stream, and [`Follow`], which resumes that stream where it broke.
//! The `soma` CLI, the end-to-end tests and the benchmark all talk to the API through it.

pub mod follow;
pub mod sse;
pub mod upload;

use reqwest::{Method, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use soma_contract::api::{
    CancelRequested, ErrorBody, MessageAccepted, MessagePage, PostMessage, RuntimeConfig, SessionDeletion,
    SessionImported, SessionList, SessionReset, StreamToken,
};

pub use follow::{Follow, Followed};
pub use sse::{EventStream, Next, SseEvent};
pub use upload::{TusUpload, UploadProgress};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The API answered with an error body.
    #[error("{status}: {} ({})", .body.message, .body.code)]
    Api { status: u16, body: ErrorBody },
    /// The API could not be reached, or the connection broke.
    #[error("cannot reach the API: {0}")]
    Http(#[from] reqwest::Error),
    /// The API answered something this client cannot read.
    #[error("unexpected answer from the API: {0}")]
    Decode(String),
}

impl ClientError {
    /// The API's error code, if it answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { body, .. } => Some(&body.code),
            _ => None,
        }
    }

    /// The HTTP status the API answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Whether asking again cannot help: a refused key, a missing session, a bad request.
    pub fn is_permanent(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if (400..500).contains(status) && *status != 429)
    }
}

#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    base_url: String,
    key: String,
}

impl Client {
    /// A client of the API at `base_url` (`http://host:port`) with an API key.
    pub fn new(base_url: &str, key: &str) -> Self {
        let http = reqwest::Client::builder().tcp_nodelay(true).build().expect("reqwest client builds");
        Client { http, base_url: base_url.trim_end_matches('/').to_string(), key: key.to_string() }
    }

    /// The same API with another key (another tenant, or a wrong one).
    pub fn with_key(&self, key: &str) -> Self {
        Client { key: key.to_string(), ..self.clone() }
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// A request to `path` with the API key.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base_url)).header("X-API-Key", &self.key)
    }

    /// Sends a message; the same `idempotency_key` returns the same turn.
    pub async fn send(&self, message: &PostMessage, idempotency_key: Option<&str>) -> Result<MessageAccepted, ClientError> {
        let mut request = self.request(Method::POST, "/v1/session/message").json(message);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        decode(request.send().await?).await
    }

    /// Sends `message` in `session` (a new session when `None`), queued behind a running turn.
    pub async fn say(&self, session: Option<Uuid>, message: &str) -> Result<MessageAccepted, ClientError> {
        let body = PostMessage {
            session_id: session,
            message: message.to_string(),
            persona_id: None,
            attachments: Vec::new(),
            if_busy: Default::default(),
        };
        self.send(&body, None).await
    }

    pub async fn sessions(&self, limit: Option<i64>, cursor: Option<&str>) -> Result<SessionList, ClientError> {
        let mut request = self.request(Method::GET, "/v1/sessions");
        if let Some(limit) = limit {
            request = request.query(&[("limit", limit)]);
        }
        if let Some(cursor) = cursor {
            request = request.query(&[("cursor", cursor)]);
        }
        decode(request.send().await?).await
    }

    /// One page of a session's messages.
    pub async fn messages(&self, session: Uuid, after: Option<Uuid>, limit: Option<i64>) -> Result<MessagePage, ClientError> {
        let mut request = self.request(Method::GET, &format!("/v1/sessions/{session}/messages"));
        if let Some(after) = after {
            request = request.query(&[("after", after)]);
        }
        if let Some(limit) = limit {
            request = request.query(&[("limit", limit)]);
        }
        decode(request.send().await?).await
    }

    /// Every message of a session, page after page.
    pub async fn all_messages(&self, session: Uuid) -> Result<Vec<soma_contract::api::Message>, ClientError> {
        let (mut all, mut after) = (Vec::new(), None);
        loop {
            let page = self.messages(session, after, Some(200)).await?;
            all.extend(page.messages);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    pub async fn cancel(&self, session: Uuid) -> Result<CancelRequested, ClientError> {
        decode(self.request(Method::POST, &format!("/v1/session/{session}/cancel")).send().await?).await
    }

    pub async fn delete(&self, session: Uuid) -> Result<SessionDeletion, ClientError> {
        decode(self.request(Method::DELETE, &format!("/v1/sessions/{session}")).send().await?).await
    }

    pub async fn reset(&self, session: Uuid) -> Result<SessionReset, ClientError> {
        decode(self.request(Method::POST, &format!("/v1/sessions/{session}/reset")).send().await?).await
    }

    /// The session as JSON lines (`ExportLine`s).
    pub async fn export(&self, session: Uuid) -> Result<String, ClientError> {
        let response = self.request(Method::GET, &format!("/v1/sessions/{session}/export")).send().await?;
        Ok(check(response).await?.text().await?)
    }

    /// Imports an export as a new session.
    pub async fn import(&self, jsonl: String) -> Result<SessionImported, ClientError> {
        let request = self
            .request(Method::POST, "/v1/sessions/import")
            .header("Content-Type", "application/x-ndjson")
            .body(jsonl);
        decode(request.send().await?).await
    }

    pub async fn stream_token(&self, session: Uuid) -> Result<StreamToken, ClientError> {
        decode(self.request(Method::POST, &format!("/v1/session/{session}/stream-token")).send().await?).await
    }

    /// The tools the tenant may use.
    pub async fn tools(&self) -> Result<soma_contract::api::ToolList, ClientError> {
        decode(self.request(Method::GET, "/v1/tools").send().await?).await
    }

    /// Runs a tool directly in a session; its result comes on the session's stream.
    pub async fn request_tool(
        &self,
        session: Uuid,
        tool: &str,
        inputs: serde_json::Value,
    ) -> Result<soma_contract::api::ToolRequestAccepted, ClientError> {
        let body = soma_contract::api::ToolRequest { session_id: session, tool_id: tool.to_string(), inputs };
        decode(self.request(Method::POST, "/v1/tool/request").json(&body).send().await?).await
    }

    /// A tool call with its whole output.
    pub async fn tool_call(&self, id: Uuid) -> Result<soma_contract::api::ToolCallView, ClientError> {
        decode(self.request(Method::GET, &format!("/v1/tool/{id}")).send().await?).await
    }

    /// Approves (`approve: true`) or denies a call that waits for approval.
    pub async fn decide_tool(
        &self,
        id: Uuid,
        approve: bool,
        reason: Option<&str>,
    ) -> Result<soma_contract::api::ToolDecisionAccepted, ClientError> {
        let verb = if approve { "approve" } else { "deny" };
        let body = soma_contract::api::ToolDecisionRequest { reason: reason.map(str::to_string) };
        decode(self.request(Method::POST, &format!("/v1/tool/{id}/{verb}")).json(&body).send().await?).await
    }

    /// The tenant's memories most relevant to `query` (and of `session`, if given).
    pub async fn recall(&self, query: &str, session: Option<Uuid>) -> Result<soma_contract::api::RecallResponse, ClientError> {
        let mut request = self.request(Method::GET, "/v1/memory/recall").query(&[("q", query)]);
        if let Some(session) = session {
            request = request.query(&[("session_id", session.to_string())]);
        }
        decode(request.send().await?).await
    }

    /// Refreshes the tool catalog from the MCP servers (an admin key's call).
    pub async fn refresh_tools(&self) -> Result<soma_contract::api::CatalogRefreshed, ClientError> {
        decode(self.request(Method::POST, "/v1/admin/tools/refresh").send().await?).await
    }

    /// Open dead letters (an admin key's call).
    pub async fn dead_letters(&self) -> Result<soma_contract::api::DeadLetterList, ClientError> {
        decode(self.request(Method::GET, "/v1/admin/dead-letters").send().await?).await
    }

    /// Replays one dead letter, or (`None`) every open one (an admin key's call).
    pub async fn replay_dead_letters(&self, id: Option<Uuid>) -> Result<soma_contract::api::Replayed, ClientError> {
        let path = match id {
            Some(id) => format!("/v1/admin/dead-letters/{id}/replay"),
            None => "/v1/admin/dead-letters/replay".to_string(),
        };
        decode(self.request(Method::POST, &path).send().await?).await
    }

    /// Gives up on a dead letter, saying why (an admin key's call).
    pub async fn discard_dead_letter(&self, id: Uuid, reason: &str) -> Result<soma_contract::api::DeadLetter, ClientError> {
        let body = soma_contract::api::Discard { reason: reason.to_string() };
        decode(self.request(Method::POST, &format!("/v1/admin/dead-letters/{id}/discard")).json(&body).send().await?).await
    }

    /// Audit rows matching `query` (`session_id`, `request_id`, `tenant_id`, `actor`,
    /// `action`, `after`, `limit` pairs), oldest first (an admin key's call).
    pub async fn audit(&self, query: &[(&str, String)]) -> Result<soma_contract::api::AuditList, ClientError> {
        decode(self.request(Method::GET, "/v1/admin/audit").query(query).send().await?).await
    }

    /// The periodic jobs' schedules (an admin key's call).
    pub async fn schedules(&self) -> Result<soma_contract::api::ScheduleList, ClientError> {
        decode(self.request(Method::GET, "/v1/admin/schedules").send().await?).await
    }

    /// `trigger`, `pause` or `unpause` a schedule, with an optional note (an admin key's call).
    pub async fn steer_schedule(
        &self,
        id: &str,
        verb: &str,
        note: Option<String>,
    ) -> Result<soma_contract::api::ScheduleView, ClientError> {
        let path = format!("/v1/admin/schedules/{id}/{verb}");
        let mut request = self.request(Method::POST, &path);
        if note.is_some() {
            request = request.json(&soma_contract::api::ScheduleNote { note });
        }
        decode(request.send().await?).await
    }

    pub async fn runtime_config(&self) -> Result<RuntimeConfig, ClientError> {
        decode(self.request(Method::GET, "/v1/runtime-config").send().await?).await
    }

    /// Opens the session's event stream after event `after` (from the start when `None`).
    pub async fn events(&self, session: Uuid, after: Option<i64>) -> Result<EventStream, ClientError> {
        let mut request = self.request(Method::GET, &format!("/v1/session/{session}/events"));
        if let Some(after) = after {
            request = request.header("Last-Event-ID", after.to_string());
        }
        EventStream::open(request).await
    }

    /// Follows the session's stream after event `after`, reconnecting whenever it breaks.
    pub fn follow(&self, session: Uuid, after: i64) -> Follow {
        Follow::new(self.clone(), session, after)
    }
}

/// The response if it is a success, else its error body.
pub async fn check(response: Response) -> Result<Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| ErrorBody {
        code: format!("http_{}", status.as_u16()),
        message: if text.is_empty() { status.canonical_reason().unwrap_or("error").into() } else { text },
        request_id: String::new(),
    });
    Err(ClientError::Api { status: status.as_u16(), body })
}

async fn decode<T: DeserializeOwned>(response: Response) -> Result<T, ClientError> {
    let response = check(response).await?;
    let status = response.status();
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|err| {
        let shown = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned();
        ClientError::Decode(format!("{status} {err}: {shown}"))
    })
}
