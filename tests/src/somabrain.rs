//! A SomaBrain test server that follows the service's HTTP contract (bearer auth, `X-Tenant-ID`,
//! `key` as the idempotency key, `queued-for-replay`, `degraded` recall, its error codes), so
//! the real client is tested against it. Tests switch how it answers ([`BrainMode`]) and count
//! what reached it: stores by key, and every remember request by key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub const BRAIN_TOKEN: &str = "test-somabrain-token";

/// How the server answers memory routes.
#[derive(Debug, Clone, PartialEq)]
pub enum BrainMode {
    Healthy,
    /// 503 "backend unreachable", as when its storage is down.
    Down,
    /// 200 with `persisted_to_ltm: false` and the `queued-for-replay` warning: accepted.
    QueuesForReplay,
    /// 422 validation error on remember: a permanent refusal.
    Refuses,
    /// Answers after this long.
    Slow(Duration),
    /// 429 with `Retry-After: 1`.
    RateLimited,
    /// Recall answers 200 with `degraded: true` (long-term storage failing).
    Degraded,
}

#[derive(Default)]
struct Brain {
    mode: Option<BrainMode>,
    /// Stored payloads by (tenant, key), as the coordinate hash of the key dedupes them.
    stored: HashMap<(String, String), Value>,
    /// Remember requests that were answered 200, by key.
    accepted: HashMap<String, usize>,
    /// Every remember request, whatever the answer, by key.
    requests: HashMap<String, usize>,
}

#[derive(Clone)]
pub struct FakeSomaBrain {
    brain: Arc<Mutex<Brain>>,
    pub url: String,
}

impl FakeSomaBrain {
    pub async fn start() -> FakeSomaBrain {
        let brain = Arc::new(Mutex::new(Brain { mode: Some(BrainMode::Healthy), ..Brain::default() }));
        let app = axum::Router::new()
            .route("/memory/remember", post(remember))
            .route("/api/memory/remember", post(remember))
            .route("/memory/recall", post(recall))
            .route("/api/memory/recall", post(recall))
            .route("/context/feedback", post(feedback))
            .route("/health", get(|| async { Json(json!({ "status": "healthy" })) }))
            .with_state(brain.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeSomaBrain { brain, url }
    }

    pub fn set_mode(&self, mode: BrainMode) {
        self.brain.lock().unwrap().mode = Some(mode);
    }

    /// Remember requests answered 200, by key.
    pub fn accepted(&self) -> HashMap<String, usize> {
        self.brain.lock().unwrap().accepted.clone()
    }

    /// Every remember request, by key.
    pub fn requests(&self) -> HashMap<String, usize> {
        self.brain.lock().unwrap().requests.clone()
    }

    /// The memories stored for a tenant.
    pub fn stored(&self, tenant: &str) -> Vec<Value> {
        let brain = self.brain.lock().unwrap();
        brain.stored.iter().filter(|((t, _), _)| t == tenant).map(|(_, v)| v.clone()).collect()
    }
}

fn detail(status: StatusCode, detail: &str) -> Response {
    (status, Json(json!({ "detail": detail }))).into_response()
}

/// The contract's auth: no token 401, a wrong one 403.
fn authorize(headers: &HeaderMap) -> Result<(), Response> {
    let token = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match token.map(str::trim) {
        None | Some("") => Err(detail(StatusCode::UNAUTHORIZED, "missing bearer token")),
        Some(BRAIN_TOKEN) => Ok(()),
        Some(_) => Err(detail(StatusCode::FORBIDDEN, "invalid token")),
    }
}

/// Waits or fails as the mode says; `Ok(mode)` when the request should be answered.
async fn gate(brain: &Arc<Mutex<Brain>>) -> Result<BrainMode, Response> {
    let mode = brain.lock().unwrap().mode.clone().unwrap_or(BrainMode::Healthy);
    match &mode {
        BrainMode::Down => Err(detail(StatusCode::SERVICE_UNAVAILABLE, "memory backend unreachable")),
        BrainMode::RateLimited => {
            Err((StatusCode::TOO_MANY_REQUESTS, [("retry-after", "1")], Json(json!({ "detail": "slow down" }))).into_response())
        }
        BrainMode::Slow(wait) => {
            tokio::time::sleep(*wait).await;
            Ok(mode)
        }
        _ => Ok(mode),
    }
}

async fn remember(State(brain): State<Arc<Mutex<Brain>>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(refused) = authorize(&headers) {
        return refused;
    }
    let key = body["key"].as_str().unwrap_or_default().to_string();
    *brain.lock().unwrap().requests.entry(key.clone()).or_default() += 1;
    let mode = match gate(&brain).await {
        Ok(mode) => mode,
        Err(failed) => return failed,
    };
    let (Some(tenant), Some(namespace), Some(value)) =
        (body["tenant"].as_str(), body["namespace"].as_str(), body.get("value").filter(|v| v.is_object()))
    else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "tenant, namespace, key and value are required");
    };
    if key.is_empty() || mode == BrainMode::Refuses {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "value: payload rejected by validation");
    }
    if headers.get("x-tenant-id").and_then(|v| v.to_str().ok()) != Some(tenant) {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "X-Tenant-ID must equal the body's tenant");
    }
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let queued = mode == BrainMode::QueuesForReplay;
    let mut brain = brain.lock().unwrap();
    let mut stored = value.clone();
    stored["tenant"] = json!(tenant);
    stored["namespace"] = json!(namespace);
    stored["key"] = json!(key);
    let deduplicated = brain.stored.insert((tenant.to_string(), key.clone()), stored).is_some();
    *brain.accepted.entry(key.clone()).or_default() += 1;
    let warnings: Vec<&str> = if queued { vec!["memory-backend-unavailable:queued-for-replay"] } else { vec![] };
    Json(json!({
        "ok": true, "tenant": tenant, "namespace": namespace, "key": key, "coordinate": [0.1, 0.2, 0.3],
        "promoted_to_wm": true, "persisted_to_ltm": !queued, "queued_for_ltm": queued, "deduplicated": deduplicated,
        "importance": 0.5, "novelty": 0.5, "ttl_applied": null, "trace_id": null, "request_id": request_id,
        "warnings": warnings, "signals": {},
    }))
    .into_response()
}

async fn recall(State(brain): State<Arc<Mutex<Brain>>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    if let Err(refused) = authorize(&headers) {
        return refused;
    }
    let mode = match gate(&brain).await {
        Ok(mode) => mode,
        Err(failed) => return failed,
    };
    let Some(query) = body["query"].as_str() else {
        return detail(StatusCode::UNPROCESSABLE_ENTITY, "query is required");
    };
    // The tenant comes from the header, not the body.
    let tenant = headers.get("x-tenant-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let top_k = body["top_k"].as_u64().unwrap_or(10) as usize;
    let words: Vec<String> = query.split(|c: char| !c.is_alphanumeric()).filter(|w| w.len() > 3).map(str::to_lowercase).collect();
    let brain = brain.lock().unwrap();
    let mut results: Vec<(f64, Value)> = brain
        .stored
        .iter()
        .filter(|((t, _), _)| *t == tenant)
        .filter_map(|(_, stored)| {
            let content = stored["content"].as_str().unwrap_or_default().to_lowercase();
            let hits = words.iter().filter(|w| content.contains(w.as_str())).count();
            (hits > 0).then(|| (hits as f64 / words.len() as f64, stored.clone()))
        })
        .collect();
    results.sort_by(|a, b| b.0.total_cmp(&a.0));
    results.truncate(top_k);
    let degraded = mode == BrainMode::Degraded;
    let results: Vec<Value> =
        results.into_iter().map(|(score, content)| json!({ "content": content, "layer": "wm", "score": score })).collect();
    Json(json!({
        "tenant": tenant, "namespace": body["namespace"], "total_results": results.len(), "results": results,
        "wm_hits": 0, "ltm_hits": 0, "duration_ms": 1.0, "degraded": degraded,
        "degraded_reasons": if degraded { vec!["ltm unavailable"] } else { vec![] },
    }))
    .into_response()
}

async fn feedback(State(brain): State<Arc<Mutex<Brain>>>, headers: HeaderMap, Json(_body): Json<Value>) -> Response {
    if let Err(refused) = authorize(&headers) {
        return refused;
    }
    match gate(&brain).await {
        Ok(_) => Json(json!({ "accepted": true, "adaptation_applied": false, "elapsed_ms": 1.0 })).into_response(),
        Err(failed) => failed,
    }
}
