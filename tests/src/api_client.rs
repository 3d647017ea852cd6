//! HTTP calls to the API as one tenant, shared by the end-to-end tests and the benchmark.

use serde_json::{Value, json};

use crate::SseClient;

#[derive(Clone)]
pub struct ApiClient {
    pub http: reqwest::Client,
    pub api_url: String,
    /// The API key every request carries (the tenant it acts as).
    pub key: String,
}

/// A `POST /v1/session/message` body.
pub fn message_body(session_id: Option<&str>, message: &str) -> Value {
    let mut body = json!({ "message": message });
    if let Some(session_id) = session_id {
        body["session_id"] = json!(session_id);
    }
    body
}

impl ApiClient {
    pub fn new(api_url: String, key: &str) -> Self {
        Self { http: reqwest::Client::new(), api_url, key: key.to_string() }
    }

    /// The same API as another tenant (or with a wrong or missing key).
    pub fn with_key(&self, key: &str) -> Self {
        Self { key: key.to_string(), ..self.clone() }
    }

    /// `POST /v1/session/message` with a raw body → `(status, JSON body or null)`.
    pub async fn post_message(
        &self,
        body: String,
        idempotency_key: Option<&str>,
    ) -> reqwest::Result<(u16, Value)> {
        let mut request = self
            .http
            .post(format!("{}/v1/session/message", self.api_url))
            .header("X-API-Key", &self.key)
            .header("Content-Type", "application/json")
            .body(body);
        if let Some(idempotency_key) = idempotency_key {
            request = request.header("Idempotency-Key", idempotency_key);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        Ok((status, response.json().await.unwrap_or(Value::Null)))
    }

    /// Sends a message; `(session_id, turn_id, workflow_id)`, or an error unless 202.
    pub async fn send(
        &self,
        session_id: Option<&str>,
        message: &str,
    ) -> anyhow::Result<(String, String, String)> {
        let (status, body) = self.post_message(message_body(session_id, message).to_string(), None).await?;
        anyhow::ensure!(status == 202, "message not accepted: {status} {body}");
        let field = |name: &str| body[name].as_str().unwrap_or_default().to_string();
        Ok((field("session_id"), field("turn_id"), field("workflow_id")))
    }

    pub fn events_url(&self, session_id: &str) -> String {
        format!("{}/v1/session/{session_id}/events", self.api_url)
    }

    /// Opens the session's event stream after event `last_event_id`.
    pub async fn events(&self, session_id: &str, last_event_id: Option<i64>) -> SseClient {
        SseClient::connect(&self.http, &self.events_url(session_id), &self.key, last_event_id).await
    }
}
