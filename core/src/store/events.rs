//! `session_events`: the stream (DESIGN.md, principle 3). The BIGSERIAL id is the SSE event
//! id; a `NOTIFY` on [`EVENTS_CHANNEL`] with the session id wakes every API process.
//!
//! Appends take a per-session transaction lock before their ids are drawn, so within a
//! session ids become visible in increasing order: a reader that has seen id N can never
//! later find a committed event below N, which is what makes `Last-Event-ID` resumption
//! gap-free.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use soma_workflows::TurnRef;

use super::{Store, StoreError};

/// The channel every append notifies, with the session id as payload.
pub const EVENTS_CHANNEL: &str = "soma_events";

/// An event to append; `dedupe_key` makes the append idempotent.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub kind: &'static str,
    pub payload: Value,
    pub dedupe_key: String,
}

#[derive(Debug, Clone, sqlx::FromRow)]
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

impl Store {
    /// Appends a turn's events in one statement (one round trip) and notifies listeners.
    /// Events whose dedupe key exists already are skipped. Returns how many were new.
    pub async fn append_events(&self, turn: &TurnRef, events: &[NewEvent]) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let kinds: Vec<&str> = events.iter().map(|e| e.kind).collect();
        let payloads: Vec<&Value> = events.iter().map(|e| &e.payload).collect();
        let keys: Vec<&str> = events.iter().map(|e| e.dedupe_key.as_str()).collect();
        let inserted: i64 = sqlx::query_scalar(
            "WITH session_lock AS MATERIALIZED (
                SELECT pg_advisory_xact_lock(hashtextextended($2::text, 7)) AS locked),
             ins AS (
                INSERT INTO session_events (tenant_id, session_id, turn_id, kind, payload,
                                            request_id, dedupe_key)
                SELECT $1, $2, $3, e.kind, e.payload, $4, e.dedupe_key
                FROM session_lock,
                     unnest($5::text[], $6::jsonb[], $7::text[]) WITH ORDINALITY
                         AS e(kind, payload, dedupe_key, ord)
                ORDER BY e.ord
                ON CONFLICT (dedupe_key) DO NOTHING
                RETURNING id)
             -- One NOTIFY per new row; Postgres folds identical ones in a transaction into one.
             SELECT count(*) FROM (SELECT pg_notify($8, $2::text) FROM ins) AS notified",
        )
        .bind(&turn.tenant_id)
        .bind(turn.session_id)
        .bind(turn.turn_id)
        .bind(&turn.request_id)
        .bind(&kinds)
        .bind(&payloads)
        .bind(&keys)
        .bind(EVENTS_CHANNEL)
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
        Ok(sqlx::query_as(
            "SELECT id, tenant_id, session_id, turn_id, kind, payload, request_id, trace_id, created_at
             FROM session_events
             WHERE session_id = $1 AND tenant_id = $2 AND id > $3
             ORDER BY id LIMIT $4",
        )
        .bind(session_id)
        .bind(tenant_id)
        .bind(after_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The session's newest event id (0 when it has none).
    pub async fn last_event_id(&self, tenant_id: &str, session_id: Uuid) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT coalesce(max(id), 0) FROM session_events WHERE session_id = $1 AND tenant_id = $2",
        )
        .bind(session_id)
        .bind(tenant_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Whether any attempt of the turn's LLM call has streamed a delta yet.
    pub async fn has_streamed_deltas(&self, turn: &TurnRef) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM session_events
                            WHERE session_id = $1 AND turn_id = $2 AND kind = 'llm.delta')",
        )
        .bind(turn.session_id)
        .bind(turn.turn_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The reply as streamed by the newest attempt: its deltas concatenated in order.
    pub async fn streamed_reply(&self, turn: &TurnRef) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT coalesce(string_agg(payload->>'text', '' ORDER BY id), '') FROM session_events
             WHERE session_id = $1 AND turn_id = $2 AND kind = 'llm.delta'
               AND (payload->>'attempt')::int = (
                   SELECT max((payload->>'attempt')::int) FROM session_events
                   WHERE session_id = $1 AND turn_id = $2 AND kind = 'llm.delta')",
        )
        .bind(turn.session_id)
        .bind(turn.turn_id)
        .fetch_one(&self.pool)
        .await?)
    }
}
