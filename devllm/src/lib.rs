//! The soma dev provider: a stand-in LLM that speaks the OpenAI chat-completions protocol
//! (`POST /v1/chat/completions`, `stream: true` as server-sent `data:` chunks ending in
//! `data: [DONE]`), so the real provider client is what talks to it. It needs no key and
//! replies deterministically. `ops/dev` runs it when no LLM is configured; the tests run it
//! in-process with delays and injected failures.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

/// The model name the dev provider answers as.
pub const MODEL: &str = "soma-dev-provider";

/// How the provider behaves; the defaults are what `ops/dev` runs.
#[derive(Debug, Clone)]
pub struct DevProviderOptions {
    /// Delay before the first token (the provider's own time-to-first-token).
    pub time_to_first_token: Duration,
    /// Delay between tokens.
    pub token_interval: Duration,
    /// Extra filler words appended to every reply, for long streams.
    pub extra_words: usize,
    /// Break the connection after this many tokens …
    pub fail_after_tokens: Option<usize>,
    /// … for this many requests (then reply normally).
    pub failing_requests: usize,
    /// Called as each token is sent, for benchmarks that time delivery.
    pub on_token: Option<TokenHook>,
}

/// Called with `(the conversation's last user message, token index)` as the token is sent.
pub type TokenCallback = dyn Fn(&str, usize) + Send + Sync;

#[derive(Clone)]
pub struct TokenHook(pub Arc<TokenCallback>);

impl std::fmt::Debug for TokenHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHook")
    }
}

impl Default for DevProviderOptions {
    fn default() -> Self {
        Self {
            time_to_first_token: Duration::from_millis(150),
            token_interval: Duration::from_millis(40),
            extra_words: 0,
            fail_after_tokens: None,
            failing_requests: 0,
            on_token: None,
        }
    }
}

struct Provider {
    options: std::sync::Mutex<DevProviderOptions>,
    requests: AtomicUsize,
}

/// A running provider: its address and how many completions it was asked for.
#[derive(Clone)]
pub struct DevProviderHandle {
    pub addr: SocketAddr,
    provider: Arc<Provider>,
}

impl DevProviderHandle {
    /// The OpenAI-style base URL, ending in `/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }
    pub fn requests(&self) -> usize {
        self.provider.requests.load(Ordering::SeqCst)
    }

    /// Changes how later requests are answered (a benchmark's phases differ in timing).
    pub fn update_options(&self, change: impl FnOnce(&mut DevProviderOptions)) {
        change(&mut self.provider.options.lock().expect("options lock"));
    }
}

/// Serves the provider on `listener` in a background task.
pub fn spawn(listener: TcpListener, options: DevProviderOptions) -> std::io::Result<DevProviderHandle> {
    let addr = listener.local_addr()?;
    let provider = Arc::new(Provider { options: options.into(), requests: AtomicUsize::new(0) });
    let app = router(provider.clone());
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).await {
            tracing::error!(error = %err, "dev provider stopped");
        }
    });
    Ok(DevProviderHandle { addr, provider })
}

/// Serves the provider until the process ends.
pub async fn serve(listener: TcpListener, options: DevProviderOptions) -> std::io::Result<()> {
    let provider = Arc::new(Provider { options: options.into(), requests: AtomicUsize::new(0) });
    axum::serve(listener, router(provider)).await
}

fn router(provider: Arc<Provider>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .route("/health", get(|| async { "ok" }))
        .with_state(provider)
}

#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: Option<String>,
    messages: Vec<ChatMessage>,
    #[serde(default)]
    stream: bool,
}

#[derive(Debug, Deserialize)]
struct ChatMessage {
    role: String,
    #[serde(default)]
    content: Option<String>,
}

async fn models() -> Json<serde_json::Value> {
    Json(json!({ "object": "list", "data": [{ "id": MODEL, "object": "model", "owned_by": "soma-dev" }] }))
}

async fn chat_completions(State(provider): State<Arc<Provider>>, body: Bytes) -> Response {
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            let error = json!({ "error": { "message": err.to_string(), "type": "invalid_request_error" } });
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
    };
    let number = provider.requests.fetch_add(1, Ordering::SeqCst);
    let options = provider.options.lock().expect("options lock").clone();
    let tokens = reply_tokens(&request.messages, options.extra_words);
    let last_user = last_user_message(&request.messages).to_string();
    let model = request.model.unwrap_or_else(|| MODEL.to_string());
    let id = format!("chatcmpl-dev-{number}");
    if !request.stream {
        let text: String = tokens.concat();
        return Json(json!({
            "id": id, "object": "chat.completion", "created": 0, "model": model,
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
        }))
        .into_response();
    }
    let fail_after = options.fail_after_tokens.filter(|_| number < options.failing_requests);
    let stream = async_stream::stream! {
        tokio::time::sleep(options.time_to_first_token).await;
        yield Ok::<_, std::io::Error>(chunk(&id, &model, json!({ "role": "assistant", "content": "" }), None));
        for (index, token) in tokens.iter().enumerate() {
            if index > 0 {
                tokio::time::sleep(options.token_interval).await;
            }
            if fail_after == Some(index) {
                yield Err(std::io::Error::other("dev provider: injected failure"));
                return;
            }
            if let Some(hook) = &options.on_token {
                (hook.0)(&last_user, index);
            }
            yield Ok(chunk(&id, &model, json!({ "content": token }), None));
        }
        yield Ok(chunk(&id, &model, json!({}), Some("stop")));
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn chunk(id: &str, model: &str, delta: serde_json::Value, finish_reason: Option<&str>) -> Bytes {
    let body = json!({
        "id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
    });
    Bytes::from(format!("data: {body}\n\n"))
}

/// The deterministic reply to a conversation, split into word tokens (each but the first
/// with its leading space, as real providers stream them).
fn last_user_message(messages: &[ChatMessage]) -> &str {
    messages.iter().rev().find(|m| m.role == "user").and_then(|m| m.content.as_deref()).unwrap_or("")
}

fn reply_tokens(messages: &[ChatMessage], extra_words: usize) -> Vec<String> {
    let last_user = last_user_message(messages);
    let earlier = messages.iter().filter(|m| m.role == "user").count().saturating_sub(1);
    let mut text = format!(
        "[soma dev provider] You said: \"{}\" ({earlier} earlier user messages in this session).",
        last_user.trim()
    );
    for n in 0..extra_words {
        text.push_str(if n % 2 == 0 { " lorem" } else { " ipsum" });
    }
    let mut tokens = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        tokens.push(if i == 0 { word.to_string() } else { format!(" {word}") });
    }
    tokens
}
