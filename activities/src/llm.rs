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
    Finished { reason: String },
}

#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// Worth retrying: connection trouble, 429, 5xx, a stream cut short.
    #[error("LLM provider unavailable: {0}")]
    Transient(String),
    /// Retrying will not help: bad key, bad request, unknown model.
    #[error("LLM provider rejected the request: {0}")]
    Rejected(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

#[derive(Clone)]
pub struct LlmClient {
    http: reqwest::Client,
    base_url: String,
    api_key: String,
    model: String,
}

/// Longest silence tolerated inside a stream before it counts as broken.
const STREAM_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl LlmClient {
    pub fn new(base_url: &str, api_key: &str, model: &str) -> Self {
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
        }
    }

    pub fn model(&self) -> &str {
        &self.model
    }

    /// Starts a streamed completion; the stream ends after `Finished` or with an error.
    pub async fn stream_chat(
        &self,
        messages: &[ChatMessage],
        idempotency_key: &str,
    ) -> Result<impl Stream<Item = Result<LlmChunk, LlmError>> + Send + use<>, LlmError> {
        let mut request = self
            .http
            .post(format!("{}/chat/completions", self.base_url))
            .header("Idempotency-Key", idempotency_key)
            .json(&serde_json::json!({ "model": self.model, "messages": messages, "stream": true }));
        if !self.api_key.is_empty() {
            request = request.bearer_auth(&self.api_key);
        }
        let response = request.send().await.map_err(|e| LlmError::Transient(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let message = format!("HTTP {status}: {}", body.chars().take(500).collect::<String>());
            return Err(if status.as_u16() == 429 || status.is_server_error() {
                LlmError::Transient(message)
            } else {
                LlmError::Rejected(message)
            });
        }
        Ok(parse_sse(response.bytes_stream()))
    }
}

/// Turns the response body into chunks. Lines are buffered across network reads.
fn parse_sse<B, E>(body: B) -> impl Stream<Item = Result<LlmChunk, LlmError>> + Send
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
    futures::stream::unfold(state, |mut state| async move {
        loop {
            if let Some(chunk) = state.pending.pop_front() {
                return Some((Ok(chunk), state));
            }
            if state.done {
                return None;
            }
            let next = tokio::time::timeout(STREAM_IDLE_TIMEOUT, state.body.next()).await;
            let bytes = match next {
                Err(_) => {
                    state.done = true;
                    return Some((Err(LlmError::Transient("stream idle too long".into())), state));
                }
                Ok(None) => {
                    state.done = true;
                    return Some((Err(LlmError::Transient("stream ended before [DONE]".into())), state));
                }
                Ok(Some(Err(err))) => {
                    state.done = true;
                    return Some((Err(LlmError::Transient(format!("stream broken: {err}"))), state));
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
        .map_err(|e| LlmError::Transient(format!("malformed stream chunk: {e}")))?;
    if let Some(error) = value.get("error") {
        return Err(LlmError::Transient(format!("provider error in stream: {error}")));
    }
    let mut chunks = Vec::new();
    if let Some(choice) = value.get("choices").and_then(|c| c.get(0)) {
        if let Some(text) = choice.pointer("/delta/content").and_then(Value::as_str)
            && !text.is_empty()
        {
            chunks.push(LlmChunk::Delta(text.to_string()));
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
        let chunks: Vec<_> = parse_sse(body).collect().await;
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
        let chunks: Vec<_> = parse_sse(body).collect().await;
        assert!(matches!(chunks[0], Ok(LlmChunk::Delta(_))));
        assert!(matches!(chunks[1], Err(LlmError::Transient(_))));
    }
}
