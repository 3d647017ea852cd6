//! `GET /v1/session/{id}/events`: the session's events as SSE. `id:` is the event's
//! `session_events` id, `event:` its kind, `data:` `{type, meta, payload}`. A reconnecting
//! client sends `Last-Event-ID` (or `?after=`) and gets exactly the later events. New events
//! are read when Postgres NOTIFY wakes the session, never by polling, once per process for all
//! of the session's clients (see `feed`); a comment goes out every 15 s so proxies keep the
//! connection open.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::{Stream, StreamExt};
use serde::Deserialize;

use crate::extract::{AppQuery, OwnedSession};
use crate::feed;
use crate::{ApiContext, ApiError};

#[derive(Debug, Deserialize)]
pub struct StreamQuery {
    after: Option<i64>,
}

pub async fn stream(
    State(ctx): State<ApiContext>,
    session: OwnedSession,
    AppQuery(query): AppQuery<StreamQuery>,
    headers: HeaderMap,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => {
            Some(value.to_str().ok().and_then(|v| v.trim().parse::<i64>().ok()).ok_or_else(|| {
                ApiError::bad_request("invalid_last_event_id", "Last-Event-ID must be an event id")
            })?)
        }
        None => None,
    };
    let after = last_event_id.or(query.after).unwrap_or(0);
    let tenant_id = session.principal.tenant_id;
    let feed = ctx.feeds.feed(&tenant_id, session.session_id).await?;
    let events =
        feed::follow(ctx.store.clone(), tenant_id, session.session_id, after, feed, ctx.closing.subscribe())
            .map(|event| Ok(event.to_sse()));
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("heartbeat")))
}
