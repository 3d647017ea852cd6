//! The memory backend: `remember`, `recall` and `feedback`, always for one tenant, on the
//! built-in Postgres memory (the default, so a keyless stack remembers) or on SomaBrain, the
//! platform's memory service, over its HTTP contract. Errors say whether trying again may help:
//! timeouts, 5xx and 429 (with its `Retry-After`) may; any other refusal will not.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use soma_contract::memory::MemoryPayload;

use crate::config::{Config, MemoryBackendKind};
use crate::http::Refusal;
use crate::store::{Store, StoreError};
use soma_contract::api::MemoryItem;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// Worth trying again: unreachable, slow, 5xx, 429.
    #[error("memory backend unavailable: {message}")]
    Unavailable { message: String, retry_after: Option<Duration> },
    /// Trying again will not help: the backend refused the request (auth, validation).
    #[error("memory backend refused the request: {0}")]
    Refused(String),
}

impl MemoryError {
    pub fn is_transient(&self) -> bool {
        matches!(self, MemoryError::Unavailable { .. })
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            MemoryError::Unavailable { retry_after, .. } => *retry_after,
            MemoryError::Refused(_) => None,
        }
    }

    fn unavailable(message: impl std::fmt::Display) -> Self {
        MemoryError::Unavailable { message: message.to_string(), retry_after: None }
    }
}

impl From<StoreError> for MemoryError {
    fn from(err: StoreError) -> Self {
        if err.is_transient() { MemoryError::unavailable(err) } else { MemoryError::Refused(err.to_string()) }
    }
}

/// What a write achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remembered {
    Stored,
    /// The key was already remembered: nothing changed.
    AlreadyThere,
    /// The backend accepted it into its own replay queue (SomaBrain's `queued-for-replay`).
    Queued,
}

/// What recall found.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Recalled {
    pub hits: Vec<MemoryItem>,
    /// Part of the backend's storage did not answer (SomaBrain's `degraded: true`).
    pub degraded: bool,
    pub reasons: Vec<String>,
}

/// The memory backend the config names.
#[derive(Debug, Clone)]
pub enum MemoryBackend {
    Postgres { store: Store, namespace: String },
    Somabrain(SomaBrain),
}

impl MemoryBackend {
    pub fn from_config(config: &Config, store: Store) -> Self {
        match config.memory_backend {
            MemoryBackendKind::Postgres => {
                MemoryBackend::Postgres { store, namespace: config.memory_namespace.clone() }
            }
            MemoryBackendKind::Somabrain => MemoryBackend::Somabrain(SomaBrain::new(
                &config.somabrain_url,
                config.somabrain_token.expose(),
                &config.memory_namespace,
            )),
        }
    }

    /// Which backend this is, for logs and events.
    pub fn name(&self) -> &'static str {
        match self {
            MemoryBackend::Postgres { .. } => "postgres",
            MemoryBackend::Somabrain(_) => "somabrain",
        }
    }

    /// Whether the backend answers now (SomaBrain's `/readyz`; Postgres a round trip): the
    /// cause of dead-lettered writes has cleared.
    pub async fn is_ready(&self) -> bool {
        match self {
            MemoryBackend::Postgres { store, .. } => store.ping().await.is_ok(),
            MemoryBackend::Somabrain(brain) => brain.is_ready().await,
        }
    }

    /// Remembers `payload` under its idempotency key, for `tenant_id`. Writing a key again
    /// changes nothing. `request_id` is sent as `X-Request-ID` (the same on every retry).
    pub async fn remember(
        &self,
        tenant_id: &str,
        payload: &MemoryPayload,
        request_id: &str,
    ) -> Result<Remembered, MemoryError> {
        match self {
            MemoryBackend::Postgres { store, namespace } => {
                let stored = store
                    .remember_memory(
                        tenant_id,
                        namespace,
                        &payload.idempotency_key,
                        payload.session_id,
                        Some(payload.role.as_str()),
                        &payload.content,
                        &json!(payload),
                    )
                    .await?;
                Ok(if stored { Remembered::Stored } else { Remembered::AlreadyThere })
            }
            MemoryBackend::Somabrain(brain) => brain.remember(tenant_id, payload, request_id).await,
        }
    }

    /// The tenant's memories most relevant to `query` (and of `session_id`, if given), best
    /// first, at most `top_k`.
    pub async fn recall(
        &self,
        tenant_id: &str,
        query: &str,
        session_id: Option<Uuid>,
        top_k: u32,
    ) -> Result<Recalled, MemoryError> {
        match self {
            MemoryBackend::Postgres { store, .. } => {
                let hits = store.recall_memories(tenant_id, query, session_id, i64::from(top_k)).await?;
                Ok(Recalled { hits, ..Recalled::default() })
            }
            MemoryBackend::Somabrain(brain) => brain.recall(tenant_id, query, session_id, top_k).await,
        }
    }

    /// Tells the backend how useful a recalled memory was (`utility` in -1..1).
    pub async fn feedback(&self, tenant_id: &str, key: &str, utility: f64, reward: f64) -> Result<bool, MemoryError> {
        match self {
            MemoryBackend::Postgres { store, .. } => Ok(store.memory_feedback(tenant_id, key, utility).await?),
            MemoryBackend::Somabrain(brain) => brain.feedback(tenant_id, utility, reward).await.map(|()| true),
        }
    }
}

/// SomaBrain's HTTP client: bearer auth, `X-Tenant-ID` equal to the body's tenant,
/// `X-Request-ID` kept across retries, 30 s per request.
#[derive(Debug, Clone)]
pub struct SomaBrain {
    http: reqwest::Client,
    base_url: String,
    token: String,
    namespace: String,
}

/// SomaBrain's warning for a write it queued itself while its storage was down: accepted.
const QUEUED_FOR_REPLAY: &str = "queued-for-replay";

impl SomaBrain {
    pub fn new(base_url: &str, token: &str, namespace: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .build()
            .expect("reqwest client builds");
        SomaBrain {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            token: token.to_string(),
            namespace: namespace.to_string(),
        }
    }

    async fn is_ready(&self) -> bool {
        let response = self.http.get(format!("{}/readyz", self.base_url)).send().await;
        response.is_ok_and(|r| r.status().is_success())
    }

    async fn post(&self, path: &str, tenant_id: &str, request_id: &str, body: &Value) -> Result<Value, MemoryError> {
        let response = self
            .http
            .post(format!("{}{path}", self.base_url))
            .bearer_auth(&self.token)
            .header("X-Tenant-ID", tenant_id)
            .header("X-Request-ID", request_id)
            .header("X-Namespace", &self.namespace)
            .json(body)
            .send()
            .await
            .map_err(|e| MemoryError::unavailable(format!("SomaBrain {path}: {e}")))?;
        if response.status().is_success() {
            return response.json().await.map_err(|e| MemoryError::unavailable(format!("SomaBrain {path}: {e}")));
        }
        let refusal = Refusal::read(response, 300).await;
        let message = format!("SomaBrain {path}: {}", refusal.message);
        if refusal.is_transient() {
            Err(MemoryError::Unavailable { message, retry_after: refusal.retry_after })
        } else {
            Err(MemoryError::Refused(message))
        }
    }

    async fn remember(&self, tenant_id: &str, payload: &MemoryPayload, request_id: &str) -> Result<Remembered, MemoryError> {
        let body = json!({
            "tenant": tenant_id,
            "namespace": self.namespace,
            "key": payload.idempotency_key,
            "value": payload,
            "meta": { "session_id": payload.session_id, "role": payload.role },
            "tags": ["conversation", payload.role.as_str()],
        });
        let answer = self.post("/memory/remember", tenant_id, request_id, &body).await?;
        let queued = answer["warnings"]
            .as_array()
            .is_some_and(|w| w.iter().filter_map(Value::as_str).any(|w| w.contains(QUEUED_FOR_REPLAY)));
        if queued {
            return Ok(Remembered::Queued);
        }
        if answer["ok"].as_bool() == Some(false) {
            return Err(MemoryError::unavailable(format!("SomaBrain did not store the memory: {answer}")));
        }
        Ok(if answer["deduplicated"].as_bool() == Some(true) { Remembered::AlreadyThere } else { Remembered::Stored })
    }

    async fn recall(
        &self,
        tenant_id: &str,
        query: &str,
        session_id: Option<Uuid>,
        top_k: u32,
    ) -> Result<Recalled, MemoryError> {
        let body = json!({ "query": query, "top_k": top_k, "layer": "both", "namespace": self.namespace });
        let request_id = Uuid::now_v7().to_string();
        let answer = self.post("/memory/recall", tenant_id, &request_id, &body).await?;
        let hits = answer["results"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .filter_map(|result| hit(result, tenant_id))
            // SomaBrain has no session filter: keep only the session's own.
            .filter(|hit| session_id.is_none() || hit.session_id == session_id)
            .collect();
        let reasons = answer["degraded_reasons"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).map(str::to_string).collect())
            .unwrap_or_default();
        Ok(Recalled { hits, degraded: answer["degraded"].as_bool().unwrap_or(false), reasons })
    }

    async fn feedback(&self, tenant_id: &str, utility: f64, reward: f64) -> Result<(), MemoryError> {
        let body = json!({ "tenant_id": tenant_id, "utility": utility, "reward": reward });
        let request_id = Uuid::now_v7().to_string();
        self.post("/context/feedback", tenant_id, &request_id, &body).await.map(|_| ())
    }
}

/// A recall result's stored payload as a hit; results of another tenant (which a correct
/// server never sends) are dropped.
fn hit(result: &Value, tenant_id: &str) -> Option<MemoryItem> {
    let content = &result["content"];
    if content["tenant"].as_str().is_some_and(|t| t != tenant_id) {
        return None;
    }
    let key = content["key"].as_str().or_else(|| content["idempotency_key"].as_str())?;
    Some(MemoryItem {
        key: key.to_string(),
        content: content["content"].as_str().unwrap_or_default().to_string(),
        score: result["score"].as_f64().unwrap_or(0.0),
        session_id: content["session_id"].as_str().and_then(|s| s.parse().ok()),
        role: content["role"].as_str().map(str::to_string),
        created_at: None,
    })
}
