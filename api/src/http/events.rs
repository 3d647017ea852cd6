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
use futures::StreamExt;
use serde::Deserialize;
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
    // Each frame was rendered once for all clients: write it as it is, with a comment when quiet.
    let body = async_stream::stream! {
        let mut events = std::pin::pin!(events);
        loop {
            match tokio::time::timeout(HEARTBEAT, events.next()).await {
                Ok(Some(event)) => yield Ok::<_, Infallible>(event.frame.clone()),
                Ok(None) => break,
                Err(_) => yield Ok(Bytes::from_static(b": heartbeat\n\n")),
            }
        }
    };
    Ok(([(CONTENT_TYPE, "text/event-stream"), (CACHE_CONTROL, "no-cache")], Body::from_stream(body)).into_response())
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
