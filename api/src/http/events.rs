//! `GET /v1/session/{id}/events`: the session's events as SSE. `id:` is the event's
//! `session_events` id, `event:` its kind, `data:` `{type, meta, payload}`. A reconnecting
//! client sends `Last-Event-ID` (or `?after=`) and gets exactly the later events. New events
//! are read when Postgres NOTIFY wakes the session, never by polling, once per process for all
//! of the session's clients (see `feed`); a comment goes out every 15 s so proxies keep the
//! connection open. Browsers authenticate with a stream token (`?token=`), minted by
//! `POST /v1/session/{id}/stream-token`.

use std::convert::Infallible;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::time::Instant;
use utoipa::{IntoParams, ToSchema};

use soma_contract::api::{ErrorBody, StreamToken};

use crate::extract::{AppQuery, OwnedSession, SessionReader};
use crate::feed;
use crate::{ApiContext, ApiError};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamQuery {
    /// Start after this event id (as `Last-Event-ID` does; the header wins).
    after: Option<i64>,
    /// A stream token for this session, for clients that cannot send headers.
    #[allow(dead_code)] // read by the `SessionReader` extractor
    token: Option<String>,
}

/// One server-sent event as it goes over the wire (`id:`, `event:`, `data:` lines).
#[derive(ToSchema)]
#[allow(dead_code)] // documents the frames `RenderedEvent::render` makes
pub struct SseFrame {
    /// The event id: resume after it with `Last-Event-ID` (or `?after=`).
    id: String,
    /// The event's kind: `message.user`, `llm.delta`, … (see `SessionEvent`).
    event: String,
    /// JSON, an `EventData`: `{type, meta, payload}`, its payload the `SessionEvent` of its type.
    #[schema(content_media_type = "application/json")]
    data: String,
}

/// How long a stream may be quiet before it gets a comment, so proxies keep it open.
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The session's events, as server-sent events, from after `Last-Event-ID` (or `after`).
#[utoipa::path(
    get, path = "/v1/session/{id}/events", tag = "chat",
    params(
        ("id" = Uuid, Path, description = "The session"),
        ("Last-Event-ID" = Option<i64>, Header, nullable = false, description = "Resume after this event id"),
        StreamQuery,
    ),
    responses(
        (status = 200, description = "An endless `text/event-stream`; each frame's `data:` is an `EventData` \
                                      (its `payload` decodes as the `SessionEvent` of its `type`). \
                                      `session.deleted` is the last event.",
         content_type = "text/event-stream", body = SseFrame),
        (status = 400, description = "A bad `Last-Event-ID` or `after`", body = ErrorBody),
        (status = 401, description = "No or a wrong API key, or an invalid (`invalid_token`) or expired \
                                      (`token_expired`) stream token", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's sessions", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []), ("stream_token" = []))
)]
pub async fn stream(
    State(ctx): State<ApiContext>,
    reader: SessionReader,
    AppQuery(query): AppQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => {
            Some(value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).ok_or_else(|| {
                ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be an event id")
            })?)
        }
        None => None,
    };
    let after = last_event_id.or(query.after).unwrap_or(0);
    let SessionReader { tenant_id, session_id } = reader;
    let feed = ctx.feeds.feed(&tenant_id, session_id).await?;
    let events = feed::follow(ctx.store.clone(), tenant_id, session_id, after, feed, ctx.closing.subscribe());
    // Each frame was rendered once for all clients: write it as it is.
    let body = with_heartbeats(events.map(|event| event.frame.clone()), HEARTBEAT);
    Ok(([(CONTENT_TYPE, "text/event-stream"), (CACHE_CONTROL, "no-cache")], Body::from_stream(body.map(Ok::<_, Infallible>))).into_response())
}

/// `frames`, with a comment whenever they have been quiet for `quiet`. One timer per stream,
/// not one per frame: when it fires, a stream that sent something since it was armed is
/// re-armed from then; a quiet one gets the comment.
fn with_heartbeats(frames: impl Stream<Item = Bytes>, quiet: Duration) -> impl Stream<Item = Bytes> {
    async_stream::stream! {
        let mut frames = std::pin::pin!(frames);
        let mut heartbeat = std::pin::pin!(tokio::time::sleep(quiet));
        let mut last_sent = Instant::now();
        loop {
            tokio::select! {
                frame = frames.next() => match frame {
                    Some(frame) => {
                        last_sent = Instant::now();
                        yield frame;
                    }
                    None => break,
                },
                () = &mut heartbeat => {
                    if Instant::now() >= last_sent + quiet {
                        last_sent = Instant::now();
                        yield Bytes::from_static(b": heartbeat\n\n");
                    }
                    heartbeat.as_mut().reset(last_sent + quiet);
                }
            }
        }
    }
}

/// A short-lived token that opens this session's event stream (`?token=`) and nothing else.
#[utoipa::path(
    post, path = "/v1/session/{id}/stream-token", tag = "chat",
    params(("id" = Uuid, Path, description = "The session")),
    responses(
        (status = 200, description = "The token and when it expires", body = StreamToken),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "Not one of the tenant's sessions", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn stream_token(State(ctx): State<ApiContext>, session: OwnedSession) -> Json<StreamToken> {
    Json(ctx.stream_tokens.mint(&session.principal.tenant_id, session.session_id, chrono::Utc::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const QUIET: Duration = Duration::from_secs(15);
    const COMMENT: &[u8] = b": heartbeat\n\n";

    /// Frames sent at the given seconds, then the stream stays open (quiet) for ever.
    fn frames_at(seconds: &'static [u64]) -> impl Stream<Item = Bytes> {
        async_stream::stream! {
            let start = Instant::now();
            for s in seconds {
                tokio::time::sleep_until(start + Duration::from_secs(*s)).await;
                yield Bytes::from(format!("frame {s}"));
            }
            futures::future::pending::<()>().await;
        }
    }

    /// What the stream writes in its first `seconds`, each with when it came (whole seconds).
    async fn written(frames: impl Stream<Item = Bytes>, seconds: u64) -> Vec<(u64, Vec<u8>)> {
        let start = Instant::now();
        let stream = with_heartbeats(frames, QUIET).take_until(tokio::time::sleep(Duration::from_secs(seconds)));
        stream.map(|bytes| (start.elapsed().as_secs(), bytes.to_vec())).collect().await
    }

    #[tokio::test(start_paused = true)]
    async fn a_quiet_stream_gets_a_comment_every_15_seconds() {
        let out = written(frames_at(&[]), 46).await;
        assert_eq!(out, vec![(15, COMMENT.to_vec()), (30, COMMENT.to_vec()), (45, COMMENT.to_vec())]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_sends_gets_no_comment_until_it_has_been_quiet_for_15_seconds() {
        let out = written(frames_at(&[10, 20, 28]), 44).await;
        let comments: Vec<u64> = out.iter().filter(|(_, bytes)| bytes == COMMENT).map(|(at, _)| *at).collect();
        assert_eq!(comments, vec![43], "{out:?}");
        assert_eq!(out.len(), 4);
    }
}
