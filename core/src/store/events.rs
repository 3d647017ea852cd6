//! `session_events`: the stream. The BIGSERIAL id is the SSE event id; a `NOTIFY` on
//! [`EVENTS_CHANNEL`] with the session id wakes every API process.
//!
//! Appends take a per-session transaction lock before their ids are drawn, so within a
//! session ids become visible in increasing order: a reader that has seen id N can never
//! later find a committed event below N, which is what makes `Last-Event-ID` resumption
//! gap-free.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use soma_contract::{EventData, EventMeta, EventScope, SessionEvent};

use super::{Store, StoreError};

/// The channel every append notifies, with the session id as payload.
pub const EVENTS_CHANNEL: &str = "soma_events";

/// An event as stored: its id, kind and JSON payload, and who and what it belongs to.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: i64,
    pub tenant_id: String,
    pub session_id: Uuid,
    pub turn_id: Option<Uuid>,
    pub kind: String,
    pub payload: Value,
    pub request_id: Option<String>,
    pub trace_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

impl StoredEvent {
    /// The SSE frame's `data:`. The payload is passed on as stored, so an api forwards kinds
    /// newer than itself untouched.
    pub fn into_data(self) -> EventData {
        EventData {
            kind: self.kind,
            meta: EventMeta {
                request_id: self.request_id,
                trace_id: self.trace_id,
                session_id: self.session_id,
                turn_id: self.turn_id,
                tenant_id: self.tenant_id,
                created_at: self.created_at,
            },
            payload: self.payload,
        }
    }
}

impl Store {
    /// Appends events in one statement (one round trip) and notifies listeners. Events whose
    /// dedupe key exists already are skipped. Returns how many were new.
    pub async fn append_events(
        &self,
        scope: &EventScope<'_>,
        events: &[SessionEvent],
    ) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let kinds: Vec<String> = events.iter().map(|e| e.kind().to_string()).collect();
        let payloads: Vec<Value> = events.iter().map(SessionEvent::payload).collect();
        let keys: Vec<String> = events.iter().map(|e| e.dedupe_key(scope)).collect();
        let inserted = sqlx::query_scalar!(
            r#"WITH session_lock AS MATERIALIZED (
                SELECT pg_advisory_xact_lock(hashtextextended($2::uuid::text, 7)) AS locked),
             ins AS (
                INSERT INTO session_events (tenant_id, session_id, turn_id, kind, payload,
                                            request_id, trace_id, dedupe_key)
                SELECT $1, $2, $3, e.kind, e.payload, $4, $5, e.dedupe_key
                FROM session_lock,
                     unnest($6::text[], $7::jsonb[], $8::text[]) WITH ORDINALITY
                         AS e(kind, payload, dedupe_key, ord)
                ORDER BY e.ord
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING id)
             -- One NOTIFY per new row; Postgres folds identical ones in a transaction into one.
             SELECT count(*) AS "inserted!" FROM (SELECT pg_notify($9, $2::uuid::text) FROM ins) AS notified"#,
            scope.tenant_id,
            scope.session_id,
            scope.turn_id,
            scope.request_id,
            scope.trace_id,
            &kinds,
            &payloads,
            &keys,
            EVENTS_CHANNEL,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(inserted as u64)
    }

    /// Up to `limit` events of a session after `after_id`, in id order.
    pub async fn events_after(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        Ok(sqlx::query_as!(
            StoredEvent,
            "SELECT id, tenant_id, session_id, turn_id, kind, payload, request_id, trace_id, created_at
             FROM session_events
             WHERE session_id = $1 AND tenant_id = $2 AND id > $3
             ORDER BY id LIMIT $4",
            session_id,
            tenant_id,
            after_id,
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The session's newest event id (0 when it has none).
    pub async fn last_event_id(&self, tenant_id: &str, session_id: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT coalesce(max(id), 0) AS "last!" FROM session_events
               WHERE session_id = $1 AND tenant_id = $2"#,
            session_id,
            tenant_id,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Where a client that has just read the session's messages opens its stream: before the
    /// first event of the oldest open turn (whose reply is not stored yet), or after the
    /// session's newest event when no turn is open.
    pub async fn stream_after_messages(&self, tenant_id: &str, session_id: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT coalesce(
                   (SELECT min(stream_after) FROM open_turns WHERE session_id = $1 AND tenant_id = $2),
                   (SELECT max(id) FROM session_events WHERE session_id = $1 AND tenant_id = $2),
                   0) AS "after!""#,
            session_id,
            tenant_id,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether any attempt of the turn's LLM call has streamed a delta yet.
    pub async fn has_streamed_deltas(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        turn_id: Uuid,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM session_events
                              WHERE session_id = $1 AND tenant_id = $2 AND turn_id = $3
                                AND kind = 'llm.delta') AS "streamed!""#,
            session_id,
            tenant_id,
            turn_id,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The reply as streamed by the newest attempt: its deltas concatenated in order.
    pub async fn streamed_reply(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        turn_id: Uuid,
    ) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"WITH deltas AS (
                   SELECT id, payload FROM session_events
                   WHERE session_id = $1 AND tenant_id = $2 AND turn_id = $3 AND kind = 'llm.delta')
               SELECT coalesce(string_agg(payload->>'text', '' ORDER BY id), '') AS "reply!" FROM deltas
               WHERE (payload->>'attempt')::int = (SELECT max((payload->>'attempt')::int) FROM deltas)"#,
            session_id,
            tenant_id,
            turn_id,
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
