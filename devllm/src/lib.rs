//! The soma dev provider: a stand-in LLM that speaks the OpenAI chat-completions protocol
//! (`POST /v1/chat/completions`, `stream: true` as server-sent `data:` chunks ending in
//! `data: [DONE]`), so the real provider client is what talks to it. It needs no key and
//! replies deterministically. `ops/dev` runs it when no LLM is configured; the tests run it
//! in-process with delays and injected [`Fault`]s.

use std::collections::HashMap;
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

/// The model name the dev provider answers as, so it is never mistaken for a real model.
pub const MODEL: &str = "soma-dev-provider";
/// Where `ops/dev` runs it.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:20021";

/// A failure the provider injects into a request, as real providers fail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer with this HTTP status and an OpenAI-style error body; a 429 may say when to come
    /// back (`Retry-After`, in seconds).
    Status { status: u16, retry_after_secs: Option<u64> },
    /// Break the connection after this many tokens.
    BreakAfter(usize),
    /// Send a chunk that is not JSON after this many tokens.
    MalformedAfter(usize),
    /// Go silent, connection open, after this many tokens, for this long; then go on.
    StallAfter { tokens: usize, stall: Duration },
}

/// How the provider behaves; the defaults are what `ops/dev` runs.
#[derive(Debug, Clone)]
pub struct DevProviderOptions {
    /// Delay before the first token (the provider's own time-to-first-token).
    pub time_to_first_token: Duration,
    /// Delay between tokens.
    pub token_interval: Duration,
    /// Extra filler words appended to every reply, for long streams.
    pub extra_words: usize,
    /// Fail the first [`faulty_requests`](Self::faulty_requests) requests so …
    pub fault: Option<Fault>,
    /// … then reply normally.
    pub faulty_requests: usize,
    /// Called as each token is sent, for benchmarks that time delivery.
    pub on_token: Option<TokenHook>,
    /// Called as a streamed request arrives, with how many tool results it carries after
    /// the last user message (benchmarks time a tool round with it and `on_finish`).
    pub on_request: Option<TokenHook>,
    /// Called as a stream's finish chunk is sent, with how many tool calls it asked for.
    pub on_finish: Option<TokenHook>,
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
            fault: None,
            faulty_requests: 0,
            on_token: None,
            on_request: None,
            on_finish: None,
        }
    }
}

struct Provider {
    options: std::sync::Mutex<DevProviderOptions>,
    requests: AtomicUsize,
    /// Streams sent to their end (`[DONE]`), by the request's `Idempotency-Key`.
    completed: std::sync::Mutex<HashMap<String, usize>>,
    /// The system and user messages of the latest requests, `(role, content)`, oldest first:
    /// what the model was told (recalled memories, attached files), for tests to check.
    prompt_messages: std::sync::Mutex<std::collections::VecDeque<(String, String)>>,
}

/// How many of the latest requests' system and user messages are kept.
const KEPT_PROMPT_MESSAGES: usize = 400;

impl Provider {
    fn new(options: DevProviderOptions) -> Arc<Provider> {
        Arc::new(Provider {
            options: options.into(),
            requests: AtomicUsize::new(0),
            completed: Default::default(),
            prompt_messages: Default::default(),
        })
    }
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

    /// Streams completed more than once for one `Idempotency-Key` (a client's attempt), with
    /// their counts: what a crash drill counts as a provider call completed twice.
    pub fn completed_twice(&self) -> Vec<(String, usize)> {
        let completed = self.provider.completed.lock().expect("completed lock");
        completed.iter().filter(|(_, n)| **n > 1).map(|(key, n)| (key.clone(), *n)).collect()
    }

    /// The system messages the latest requests carried, oldest first.
    pub fn system_messages(&self) -> Vec<String> {
        self.prompt_messages("system")
    }

    /// The user messages the latest requests carried (with their attached files), oldest first.
    pub fn user_messages(&self) -> Vec<String> {
        self.prompt_messages("user")
    }

    fn prompt_messages(&self, role: &str) -> Vec<String> {
        let kept = self.provider.prompt_messages.lock().expect("prompt messages lock");
        kept.iter().filter(|(r, _)| r == role).map(|(_, content)| content.clone()).collect()
    }

    /// Changes how later requests are answered (a benchmark's phases differ in timing).
    pub fn update_options(&self, change: impl FnOnce(&mut DevProviderOptions)) {
        change(&mut self.provider.options.lock().expect("options lock"));
    }
}

/// Serves the provider on `listener` in a background task.
pub fn spawn(listener: TcpListener, options: DevProviderOptions) -> std::io::Result<DevProviderHandle> {
    let addr = listener.local_addr()?;
    let provider = Provider::new(options);
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
    axum::serve(listener, router(Provider::new(options))).await
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
    /// Functions the model may call (OpenAI's `tools`).
    #[serde(default)]
    tools: Vec<serde_json::Value>,
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

async fn chat_completions(
    State(provider): State<Arc<Provider>>,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let request: ChatRequest = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(err) => {
            let error = json!({ "error": { "message": err.to_string(), "type": "invalid_request_error" } });
            return (StatusCode::BAD_REQUEST, Json(error)).into_response();
        }
    };
    let number = provider.requests.fetch_add(1, Ordering::SeqCst);
    {
        let mut kept = provider.prompt_messages.lock().expect("prompt messages lock");
        for message in request.messages.iter().filter(|m| m.role == "system" || m.role == "user") {
            if kept.len() == KEPT_PROMPT_MESSAGES {
                kept.pop_front();
            }
            kept.push_back((message.role.clone(), message.content.clone().unwrap_or_default()));
        }
    }
    let options = provider.options.lock().expect("options lock").clone();
    let fault = options.fault.clone().filter(|_| number < options.faulty_requests);
    if let Some(Fault::Status { status, retry_after_secs }) = fault {
        return error_response(status, retry_after_secs);
    }
    let idempotency_key =
        headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let calls = tool_calls(&request);
    let tokens = if calls.is_empty() { reply_tokens(&request.messages, options.extra_words) } else { Vec::new() };
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
    if let Some(hook) = &options.on_request {
        let last = request.messages.iter().rposition(|m| m.role == "user").unwrap_or(0);
        (hook.0)(&last_user, request.messages[last..].iter().filter(|m| m.role == "tool").count());
    }
    let stream = async_stream::stream! {
        tokio::time::sleep(options.time_to_first_token).await;
        yield Ok::<_, std::io::Error>(chunk(&id, &model, json!({ "role": "assistant", "content": "" }), None));
        for (index, token) in tokens.iter().enumerate() {
            if index > 0 {
                tokio::time::sleep(options.token_interval).await;
            }
            match &fault {
                Some(Fault::BreakAfter(after)) if *after == index => {
                    yield Err(std::io::Error::other("dev provider: injected failure"));
                    return;
                }
                Some(Fault::MalformedAfter(after)) if *after == index => {
                    yield Ok(Bytes::from_static(b"data: {\"choices\": [{\"delta\": \n\n"));
                }
                Some(Fault::StallAfter { tokens, stall }) if *tokens == index => tokio::time::sleep(*stall).await,
                _ => {}
            }
            if let Some(hook) = &options.on_token {
                (hook.0)(&last_user, index);
            }
            yield Ok(chunk(&id, &model, json!({ "content": token }), None));
        }
        // Each call as real providers stream them: ID and name first, then the arguments in
        // two fragments.
        for (index, (name, arguments)) in calls.iter().enumerate() {
            let call_id = format!("call_{number}_{index}");
            let (head, tail) = arguments.split_at(arguments.len() / 2);
            let start = json!({ "tool_calls": [{ "index": index, "id": call_id, "type": "function",
                                                  "function": { "name": name, "arguments": head } }] });
            yield Ok(chunk(&id, &model, start, None));
            let rest = json!({ "tool_calls": [{ "index": index, "function": { "arguments": tail } }] });
            yield Ok(chunk(&id, &model, rest, None));
        }
        let finish = if calls.is_empty() { "stop" } else { "tool_calls" };
        if let Some(hook) = &options.on_finish {
            (hook.0)(&last_user, calls.len());
        }
        yield Ok(chunk(&id, &model, json!({}), Some(finish)));
        *provider.completed.lock().expect("completed lock").entry(idempotency_key).or_default() += 1;
        yield Ok(Bytes::from_static(b"data: [DONE]\n\n"));
    };
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// An error as OpenAI-compatible providers send it.
fn error_response(status: u16, retry_after_secs: Option<u64>) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let kind = match status.as_u16() {
        401 => "invalid_api_key",
        429 => "rate_limit_exceeded",
        _ => "server_error",
    };
    let body = json!({ "error": { "message": format!("dev provider: injected {status}"), "type": kind } });
    let mut response = (status, Json(body)).into_response();
    if let Some(seconds) = retry_after_secs {
        response.headers_mut().insert(header::RETRY_AFTER, seconds.into());
    }
    response
}

fn chunk(id: &str, model: &str, delta: serde_json::Value, finish_reason: Option<&str>) -> Bytes {
    let body = json!({
        "id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
        "choices": [{ "index": 0, "delta": delta, "finish_reason": finish_reason }],
    });
    Bytes::from(format!("data: {body}\n\n"))
}

/// The tools the dev provider asks for, when it is offered tools and the conversation since
/// the last user message has had fewer rounds of tools than it wants:
/// - `[[tool:NAME {json}]]` markers in the message call those tools, all in one round
///   (`[[rounds:N]]` repeats that round N times);
/// - otherwise "what is <arithmetic>" calls `calculator` once.
fn tool_calls(request: &ChatRequest) -> Vec<(String, String)> {
    let offered = |name: &str| {
        request.tools.iter().any(|tool| tool.pointer("/function/name").and_then(|n| n.as_str()) == Some(name))
    };
    if request.tools.is_empty() {
        return Vec::new();
    }
    let last_user = request.messages.iter().rposition(|m| m.role == "user").unwrap_or(0);
    let rounds_done = request.messages[last_user..].iter().filter(|m| m.role == "tool").count();
    let message = last_user_message(&request.messages);
    let markers = tool_markers(message);
    if !markers.is_empty() {
        let rounds = message
            .split("[[rounds:")
            .nth(1)
            .and_then(|rest| rest.split("]]").next())
            .and_then(|n| n.trim().parse::<usize>().ok())
            .unwrap_or(1);
        let calls_done = rounds_done / markers.len();
        if calls_done >= rounds {
            return Vec::new();
        }
        return markers.into_iter().filter(|(name, _)| offered(name)).collect();
    }
    if rounds_done > 0 || !offered("calculator") {
        return Vec::new();
    }
    arithmetic_question(message)
        .map(|expression| vec![("calculator".to_string(), json!({ "expression": expression }).to_string())])
        .unwrap_or_default()
}

/// `[[tool:NAME {json}]]` markers, in order.
fn tool_markers(message: &str) -> Vec<(String, String)> {
    message
        .split("[[tool:")
        .skip(1)
        .filter_map(|rest| {
            let body = rest.split("]]").next()?.trim();
            let (name, arguments) = body.split_once(' ').unwrap_or((body, "{}"));
            Some((name.trim().to_string(), arguments.trim().to_string()))
        })
        .collect()
}

/// "What is 17*23?" → `17*23`.
fn arithmetic_question(message: &str) -> Option<String> {
    let lower = message.to_ascii_lowercase();
    let rest = lower.split("what is").nth(1)?;
    let expression: String = rest.trim().trim_end_matches(['?', '.', '!']).trim().to_string();
    let arithmetic = !expression.is_empty()
        && expression.chars().any(|c| c.is_ascii_digit())
        && expression.chars().all(|c| c.is_ascii_digit() || " +-*/^().".contains(c));
    arithmetic.then_some(expression)
}

fn last_user_message(messages: &[ChatMessage]) -> &str {
    messages.iter().rev().find(|m| m.role == "user").and_then(|m| m.content.as_deref()).unwrap_or("")
}

/// The deterministic reply to a conversation, split into word tokens (each but the first
/// with its leading space, as real providers stream them). After tool calls it reports what
/// the tools answered.
fn reply_tokens(messages: &[ChatMessage], extra_words: usize) -> Vec<String> {
    let earlier = messages.iter().filter(|m| m.role == "user").count().saturating_sub(1);
    let last_user = messages.iter().rposition(|m| m.role == "user").unwrap_or(0);
    let tool_answers: Vec<&str> = messages[last_user..]
        .iter()
        .filter(|m| m.role == "tool")
        .map(|m| m.content.as_deref().unwrap_or(""))
        .collect();
    let text = if tool_answers.is_empty() {
        reply_text(last_user_message(messages), earlier, extra_words)
    } else {
        let last: String = tool_answers[tool_answers.len().saturating_sub(1)].chars().take(200).collect();
        format!("[soma dev provider] The tools answered ({} results); the last said: {last}", tool_answers.len())
    };
    let mut tokens = Vec::new();
    for (i, word) in text.split(' ').enumerate() {
        tokens.push(if i == 0 { word.to_string() } else { format!(" {word}") });
    }
    tokens
}

/// The whole reply to `message` after `earlier` user messages: what a client that honours
/// `llm.retry` must end up showing, token for token.
pub fn reply_text(message: &str, earlier: usize, extra_words: usize) -> String {
    let mut text = format!(
        "[soma dev provider] You said: \"{}\" ({earlier} earlier user messages in this session).",
        message.trim()
    );
    for n in 0..extra_words {
        text.push_str(if n % 2 == 0 { " lorem" } else { " ipsum" });
    }
    text
}
