//! Reading a session's event stream: `text/event-stream` frames (`id:`, `event:`, `data:`;
//! comments ignored) whose `data:` is the contract's `EventData`.

use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;

use soma_contract::{EventData, SessionEvent};

use crate::ClientError;

/// One event as a client receives it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub id: i64,
    /// The SSE `event:` name.
    pub kind: String,
    pub data: EventData,
}

impl SseEvent {
    /// The typed event; `None` for a kind newer than this client.
    pub fn typed(&self) -> Option<SessionEvent> {
        self.data.event().ok()
    }

    /// Whether the event belongs to the turn `turn_id` (as the API returned it).
    pub fn is_of_turn(&self, turn_id: &str) -> bool {
        self.data.meta.turn_id.is_some_and(|id| id.to_string() == turn_id)
    }
}

/// What one open connection to a session's stream yields.
pub struct EventStream {
    body: BoxStream<'static, reqwest::Result<bytes::Bytes>>,
    buffer: String,
}

/// What waiting for the next event gave.
#[derive(Debug)]
pub enum Next {
    Event(SseEvent),
    /// Nothing within the wait.
    Idle,
    /// The server closed the stream, or the connection broke.
    Closed,
}

impl EventStream {
    /// Sends `request` (a `GET …/events`, however authenticated) and reads its stream.
    pub async fn open(request: reqwest::RequestBuilder) -> Result<Self, ClientError> {
        Self::from_response(request.header("Accept", "text/event-stream").send().await?).await
    }

    /// Reads the stream of a response to `GET …/events`, or its error.
    pub async fn from_response(response: reqwest::Response) -> Result<Self, ClientError> {
        let response = crate::check(response).await?;
        Ok(EventStream { body: response.bytes_stream().boxed(), buffer: String::new() })
    }

    /// The next event, waiting at most `wait`.
    pub async fn next(&mut self, wait: Duration) -> Result<Next, ClientError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                if let Some(event) = parse_frame(&frame)? {
                    return Ok(Next::Event(event));
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Ok(Next::Idle),
                Ok(None) | Ok(Some(Err(_))) => return Ok(Next::Closed),
                Ok(Some(Ok(chunk))) => self.buffer.push_str(&String::from_utf8_lossy(&chunk)),
            }
        }
    }

    /// The next event, or `None` when none comes within `wait` or the stream ends.
    pub async fn next_event(&mut self, wait: Duration) -> Option<SseEvent> {
        match self.next(wait).await {
            Ok(Next::Event(event)) => Some(event),
            _ => None,
        }
    }
}

/// One frame: an event, or `None` for a comment (the heartbeat).
fn parse_frame(frame: &str) -> Result<Option<SseEvent>, ClientError> {
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
        return Ok(None);
    }
    let broken = |why: &str| ClientError::Decode(format!("{why}: {frame:?}"));
    let data: EventData = serde_json::from_str(&data).map_err(|err| broken(&err.to_string()))?;
    let (Some(id), Some(kind)) = (id, kind) else { return Err(broken("a frame without id or event")) };
    if kind != data.kind {
        return Err(broken("`event:` and `data.type` differ"));
    }
    Ok(Some(SseEvent { id, kind, data }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_events_and_comments_are_not() {
        assert!(parse_frame(": heartbeat\n\n").unwrap().is_none());
        let frame = concat!(
            "id: 7\nevent: llm.delta\n",
            r#"data: {"type":"llm.delta","meta":{"request_id":"r","trace_id":null,"session_id":"01960000-0000-7000-8000-000000000001","turn_id":null,"tenant_id":"t","created_at":"2026-01-01T00:00:00Z"},"payload":{"text":"Hi","attempt":1,"index":0}}"#,
            "\n\n"
        );
        let event = parse_frame(frame).unwrap().unwrap();
        assert_eq!((event.id, event.kind.as_str()), (7, "llm.delta"));
        assert!(matches!(event.typed(), Some(SessionEvent::LlmDelta(d)) if d.text == "Hi"));
        assert!(parse_frame("id: 7\nevent: error\ndata: {\n\n").is_err());
    }
}
