//! The OpenAI-compatible chat-completions client: `POST {base}/chat/completions` with
//! `stream: true`, read as server-sent `data:` lines until `data: [DONE]`. It talks to any
//! OpenAI-compatible provider (OpenAI, OpenRouter, Groq, vLLM…) and to the dev provider.

use std::time::Duration;

use futures::{Stream, StreamExt};
use serde::Serialize;
use serde_json::Value;

/// One piece of a streamed reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmChunk {
    Delta(String),
    /// A piece of the `index`th tool call the model asks for: its ID and name come first,
    /// its arguments (JSON text) in fragments.
    ToolCall { index: usize, id: Option<String>, name: Option<String>, arguments: String },
    Finished { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// Worth retrying: connection trouble, 429, 5xx, a stream cut short or stalled, a garbled
    /// chunk. `retry_after` is the provider's own `Retry-After`, if it sent one.
    #[error("LLM provider unavailable: {message}")]
    Transient { message: String, retry_after: Option<Duration> },
    /// Retrying will not help: bad key, bad request, unknown model.
    #[error("LLM provider rejected the request: {0}")]
    Rejected(String),
}

impl LlmError {
    fn transient(message: impl Into<String>) -> Self {
        LlmError::Transient { message: message.into(), retry_after: None }
    }
}

impl crate::failure::Failure for LlmError {
    fn is_transient(&self) -> bool {
        matches!(self, LlmError::Transient { .. })
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            LlmError::Transient { retry_after, .. } => *retry_after,
            LlmError::Rejected(_) => None,
        }
    }
}

/// A message of the conversation sent to the model (OpenAI's chat format).
#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    /// None on an assistant message that only calls tools.
    pub content: Option<String>,
    /// An assistant message's calls: `{id, type: "function", function: {name, arguments}}`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<Value>,
    /// A tool message: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn text(role: &str, content: impl Into<String>) -> Self {
        ChatMessage { role: role.into(), content: Some(content.into()), tool_calls: Vec::new(), tool_call_id: None }
    }
}

#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    model: String,
    /// Longest silence tolerated inside a stream (before its first token too) before it
    /// counts as stalled and the attempt fails, to be retried.
    stall_timeout: Duration,
}

impl LlmClient {
    /// `stall_timeout` should be generous: reasoning models may think for a long time before
    /// their first token.
    pub fn new(base_url: &str, api_key: &str, model: &str, stall_timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .build()
            .expect("reqwest client builds");
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_string(),
            api_key: api_key.to_string(),
            model: model.to_string(),
            stall_timeout,
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Starts a streamed completion; the stream ends after `Finished` or with an error.
    /// `tools` are offered to the model as functions (`{type: "function", function: {name,
    /// description, parameters}}`); none, and the model can only answer.
    pub async fn stream_chat(
        &self,
        messages: &[ChatMessage],
        tools: &[Value],
        idempotency_key: &str,
    ) -> Result<impl Stream<Item = Result<LlmChunk, LlmError>> + Send + use<>, LlmError> {
        let mut body = serde_json::json!({ "model": self.model, "messages": messages, "stream": true });
        if !tools.is_empty() {
            body["tools"] = Value::Array(tools.to_vec());
        }
        let mut request = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .header("Idempotency-Key", idempotency_key)
            .json(&body);
        if !self.api_key.is_empty() {
            request = request.bearer_auth(&self.api_key);
        }
        let response = tokio::time::timeout(self.stall_timeout, request.send())
            .await
            .map_err(|_| LlmError::transient(format!("no response within {:?}", self.stall_timeout)))?
            .map_err(|e| LlmError::transient(e.to_string()))?;
        if !response.status().is_success() {
            let refusal = soma_core::http::Refusal::read(response, 500).await;
            return Err(if refusal.is_transient() {
                LlmError::Transient { message: refusal.message, retry_after: refusal.retry_after }
            } else {
                LlmError::Rejected(refusal.message)
            });
        }
        Ok(parse_sse(response.bytes_stream(), self.stall_timeout))
    }
}

/// Turns the response body into chunks. Lines are buffered across network reads.
fn parse_sse<B, E>(body: B, stall_timeout: Duration) -> impl Stream<Item = Result<LlmChunk, LlmError>> + Send
where
    B: Stream<Item = Result<bytes::Bytes, E>> + Send + 'static,
    E: std::fmt::Display,
{
    struct State<B> {
        body: std::pin::Pin<Box<B>>,
        buffer: Vec<u8>,
        pending: std::collections::VecDeque<LlmChunk>,
        done: bool,
    }
    let state = State { body: Box::pin(body), buffer: Vec::new(), pending: Default::default(), done: false };
    futures::stream::unfold(state, move |mut state| async move {
        loop {
            if let Some(chunk) = state.pending.pop_front() {
                return Some((Ok(chunk), state));
            }
            if state.done {
                return None;
            }
            let next = tokio::time::timeout(stall_timeout, state.body.next()).await;
            let bytes = match next {
                Err(_) => {
                    state.done = true;
                    let message = format!("the stream stalled: nothing for {stall_timeout:?}");
                    return Some((Err(LlmError::transient(message)), state));
                }
                Ok(None) => {
                    state.done = true;
                    return Some((Err(LlmError::transient("stream ended before [DONE]")), state));
                }
                Ok(Some(Err(err))) => {
                    state.done = true;
                    return Some((Err(LlmError::transient(format!("stream broken: {err}"))), state));
                }
                Ok(Some(Ok(bytes))) => bytes,
            };
            state.buffer.extend_from_slice(&bytes);
            while let Some(end) = state.buffer.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = state.buffer.drain(..=end).collect();
                let line = String::from_utf8_lossy(&line);
                match parse_line(line.trim_end_matches(['\r', '\n'])) {
                    Ok(Some(Line::Chunks(chunks))) => state.pending.extend(chunks),
                    Ok(Some(Line::Done)) => state.done = true,
                    Ok(None) => {}
                    Err(err) => {
                        state.done = true;
                        state.pending.clear();
                        return Some((Err(err), state));
                    }
                }
            }
        }
    })
}

enum Line {
    Chunks(Vec<LlmChunk>),
    Done,
}

/// One SSE line: `data: {...}`, `data: [DONE]`, or something to ignore (comments, blanks).
fn parse_line(line: &str) -> Result<Option<Line>, LlmError> {
    let Some(data) = line.strip_prefix("data:") else { return Ok(None) };
    let data = data.trim();
    if data == "[DONE]" {
        return Ok(Some(Line::Done));
    }
    let value: Value = serde_json::from_str(data)
        .map_err(|e| LlmError::transient(format!("malformed stream chunk: {e}")))?;
    if let Some(error) = value.get("error") {
        return Err(LlmError::transient(format!("provider error in stream: {error}")));
    }
    let mut chunks = Vec::new();
    if let Some(choice) = value.get("choices").and_then(|c| c.get(0)) {
        if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str)
            && !text.is_empty()
        {
            chunks.push(LlmChunk::Delta(text.to_string()));
        }
        for call in choice.pointer("/delta/tool_calls").and_then(Value::as_array).into_iter().flatten() {
            let index = call.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
            let text = |pointer: &str| call.pointer(pointer).and_then(Value::as_str).map(str::to_string);
            chunks.push(LlmChunk::ToolCall {
                index,
                id: text("/id"),
                name: text("/function/name"),
                arguments: text("/function/arguments").unwrap_or_default(),
            });
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            chunks.push(LlmChunk::Finished { reason: reason.to_string() });
        }
    }
    Ok(Some(Line::Chunks(chunks)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn chunks_split_across_reads_are_reassembled() {
        let body = futures::stream::iter(vec![
            Ok::<_, std::io::Error>(bytes::Bytes::from("data: {\"choices\":[{\"delta\":{\"content\":\"Hel")),
            Ok(bytes::Bytes::from(
                "lo\"}}]}\n\n: keep-alive\n\ndata: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
            )),
            Ok(bytes::Bytes::from("data: [DONE]\n\n")),
        ]);
        let chunks: Vec<_> = parse_sse(body, Duration::from_secs(5)).collect().await;
        let chunks: Vec<_> = chunks.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            chunks,
            vec![LlmChunk::Delta("Hello".into()), LlmChunk::Finished { reason: "stop".into() }]
        );
    }

    #[tokio::test]
    async fn a_stream_cut_before_done_is_an_error() {
        let body = futures::stream::iter(vec![Ok::<_, std::io::Error>(bytes::Bytes::from(
            "data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n",
        ))]);
        let chunks: Vec<_> = parse_sse(body, Duration::from_secs(5)).collect().await;
        assert!(matches!(chunks[0], Ok(LlmChunk::Delta(_))));
        assert!(matches!(chunks[1], Err(LlmError::Transient { .. })));
    }
}
