//! A minimal SSE client for the tests: reads `id:`/`event:`/`data:` frames, ignores comments.

use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: i64,
    pub kind: String,
    pub data: Value,
}

impl SseEvent {
    pub fn payload(&self) -> &Value {
        &self.data["payload"]
    }
}

pub struct SseClient {
    body: futures::stream::BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

impl SseClient {
    pub async fn connect(
        http: &reqwest::Client,
        url: &str,
        key: &str,
        last_event_id: Option<i64>,
    ) -> SseClient {
        Self::try_connect(http, url, key, last_event_id).await.expect("event stream opens")
    }

    /// Like [`connect`](Self::connect), for callers that expect the server to be away.
    pub async fn try_connect(
        http: &reqwest::Client,
        url: &str,
        key: &str,
        last_event_id: Option<i64>,
    ) -> Result<SseClient, String> {
        let mut request = http.get(url).header("X-API-Key", key).header("Accept", "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id.to_string());
        }
        let response = request.send().await.map_err(|e| e.to_string())?;
        if response.status().as_u16() != 200 {
            return Err(format!("event stream refused: {}", response.status()));
        }
        Ok(SseClient { body: response.bytes_stream().boxed(), buffer: String::new() })
    }

    /// The next event, or `None` if none comes within `wait`.
    pub async fn next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_frame(&frame) {
                    return Some(event);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next()).await.ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }

    /// Events until one of kind `last_kind` (inclusive); panics past `wait`.
    pub async fn until(&mut self, last_kind: &str, wait: Duration) -> Vec<SseEvent> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(event) = self.next_event(left).await else {
                let kinds: Vec<_> = events.iter().map(|e: &SseEvent| e.kind.clone()).collect();
                panic!("no {last_kind} within {wait:?}; got {kinds:?}");
            };
            let done = event.kind == last_kind;
            events.push(event);
            if done {
                return events;
            }
        }
    }

    /// Exactly `n` events; panics past `wait`.
    pub async fn take(&mut self, n: usize, wait: Duration) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while events.len() < n {
            let event =
                self.next_event(wait).await.unwrap_or_else(|| panic!("only {} of {n} events", events.len()));
            events.push(event);
        }
        events
    }
}

fn parse_frame(frame: &str) -> Option<SseEvent> {
    let (mut id, mut kind, mut data) = (None, None, String::new());
    for line in frame.lines() {
        if line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => id = value.parse().ok(),
            "event" => kind = Some(value.to_string()),
            "data" => data.push_str(value),
            _ => {}
        }
    }
    Some(SseEvent { id: id?, kind: kind?, data: serde_json::from_str(&data).ok()? })
}
