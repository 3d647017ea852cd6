//! A minimal SSE client for the tests and the benchmark: reads `id:`/`event:`/`data:` frames,
//! ignores comments, and decodes `data:` as the contract's `EventData`.

use std::time::Duration;

use futures::StreamExt;
use soma_contract::{EventData, SessionEvent};

#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: i64,
    /// The SSE `event:` name.
    pub kind: String,
    pub data: EventData,
}

impl SseEvent {
    /// The typed event; panics if the frame breaks the contract.
    pub fn event(&self) -> SessionEvent {
        self.data.event().unwrap_or_else(|err| panic!("event {} breaks the contract: {err}", self.id))
    }

    /// Whether the event belongs to the turn `turn_id` (as the API returned it).
    pub fn is_of_turn(&self, turn_id: &str) -> bool {
        self.data.meta.turn_id.is_some_and(|id| id.to_string() == turn_id)
    }
}

/// The reply a client that honours `llm.retry` shows: the deltas after the last retry.
pub fn shown_reply(events: &[SseEvent]) -> String {
    let mut shown = String::new();
    for event in events {
        match event.event() {
            SessionEvent::LlmRetry(_) => shown.clear(),
            SessionEvent::LlmDelta(delta) => shown.push_str(&delta.text),
            _ => {}
        }
    }
    shown
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
    if data.is_empty() {
        return None; // a comment (the heartbeat)
    }
    let data: EventData =
        serde_json::from_str(&data).unwrap_or_else(|err| panic!("data is not EventData: {err}: {data}"));
    let kind = kind?;
    assert_eq!(kind, data.kind, "`event:` and `data.type` agree");
    Some(SseEvent { id: id?, kind, data })
}
