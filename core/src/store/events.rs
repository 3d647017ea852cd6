//! `session_events`: the stream. The BIGSERIAL id is the SSE event id; a `NOTIFY` on
//! [`EVENTS_CHANNEL`] with the session id wakes every API process.
//!
//! Appends take a per-session transaction lock before their ids are drawn, so within a
//! session ids become visible in increasing order: a reader that has seen id N can never
//! later find a committed event below N, which is what makes `Last-Event-ID` resumption
//! gap-free.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
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

/// One event ready to be written: what the contract makes of it, and where it goes.
#[derive(Debug, Clone)]
pub(super) struct EventRow {
    tenant_id: String,
    session_id: Uuid,
    turn_id: Option<Uuid>,
    request_id: Option<String>,
    trace_id: Option<String>,
    kind: &'static str,
    payload: Value,
    dedupe_key: String,
    /// A streamed token (`llm.delta`): the bulk of all appends, which nothing waits on but the
    /// clients, so it may wait for others to be committed with.
    is_delta: bool,
}

impl EventRow {
    fn new(scope: &EventScope<'_>, event: &SessionEvent) -> Self {
        EventRow {
            tenant_id: scope.tenant_id.to_string(),
            session_id: scope.session_id,
            turn_id: scope.turn_id,
            request_id: scope.request_id.map(str::to_string),
            trace_id: scope.trace_id.map(str::to_string),
            kind: event.kind(),
            payload: event.payload(),
            dedupe_key: event.dedupe_key(scope),
            is_delta: matches!(event, SessionEvent::LlmDelta(_)),
        }
    }

    /// Whether this row may wait for company in a group commit (see [`super::event_writer`]).
    pub(super) fn may_wait(&self) -> bool {
        self.is_delta
    }
}

impl Store {
    /// Appends events, durably, in order, each once (an event whose dedupe key exists is
    /// skipped), and wakes every api process following the session. Appends made at the same
    /// time by this process are committed together (see [`super::event_writer`]).
    pub async fn append_events(&self, scope: &EventScope<'_>, events: &[SessionEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let rows = events.iter().map(|event| EventRow::new(scope, event)).collect();
        self.event_writer().append(rows).await
    }

}

/// Writes rows of any sessions in one statement: the sessions' locks first (in one order, so two
/// writers cannot deadlock), then the rows in order, then one NOTIFY listing the sessions that
/// got new events.
pub(super) async fn insert_event_rows(pool: &PgPool, rows: &[EventRow]) -> Result<(), sqlx::Error> {
    {
        let column = |f: fn(&EventRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
        let sessions: Vec<Uuid> = rows.iter().map(|r| r.session_id).collect();
        let turns: Vec<Option<Uuid>> = rows.iter().map(|r| r.turn_id).collect();
        let requests: Vec<Option<String>> = rows.iter().map(|r| r.request_id.clone()).collect();
        let traces: Vec<Option<String>> = rows.iter().map(|r| r.trace_id.clone()).collect();
        let payloads: Vec<Value> = rows.iter().map(|r| r.payload.clone()).collect();
        sqlx::query_scalar!(
            r#"WITH rows AS (
                   SELECT * FROM unnest($1::text[], $2::uuid[], $3::uuid[], $4::text[], $5::text[],
                                        $6::text[], $7::jsonb[], $8::text[]) WITH ORDINALITY
                       AS r(tenant_id, session_id, turn_id, request_id, trace_id, kind, payload, dedupe_key, ord)),
               locks AS MATERIALIZED (
                   SELECT count(pg_advisory_xact_lock(key)) AS taken
                   FROM (SELECT DISTINCT hashtextextended(session_id::text, 7) AS key FROM rows ORDER BY key) keys),
               ins AS (
                   INSERT INTO session_events (tenant_id, session_id, turn_id, kind, payload,
                                               request_id, trace_id, dedupe_key)
                   SELECT r.tenant_id, r.session_id, r.turn_id, r.kind, r.payload, r.request_id, r.trace_id,
                          r.dedupe_key
                   FROM locks, rows r
                   ORDER BY r.ord
                   ON CONFLICT (dedupe_key) DO NOTHING
                   RETURNING session_id),
               woken AS (SELECT DISTINCT session_id::text AS id FROM ins)
               -- One NOTIFY for the commit: the sessions, comma separated, 200 to a notification
               -- (a payload holds 8,000 bytes).
               SELECT count(*) AS "notified!" FROM (
                   SELECT pg_notify($9, string_agg(id, ','))
                   FROM (SELECT id, (row_number() OVER () - 1) / 200 AS chunk FROM woken) numbered
                   GROUP BY chunk) notified"#,
            &column(|r| r.tenant_id.clone()),
            &sessions,
            &turns as &[Option<Uuid>],
            &requests as &[Option<String>],
            &traces as &[Option<String>],
            &column(|r| r.kind.to_string()),
            &payloads,
            &column(|r| r.dedupe_key.clone()),
            EVENTS_CHANNEL,
        )
        .fetch_one(pool)
        .await?;
        Ok(())
    }
}

impl Store {
    /// For each `(session, tenant, after)`, up to `limit` of its events after `after`: one
    /// query for many sessions (an api process reads every woken session at once). In session,
    /// then id, order.
    pub async fn events_after_each(
        &self,
        cursors: &[(Uuid, String, i64)],
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sessions: Vec<Uuid> = cursors.iter().map(|c| c.0).collect();
        let tenants: Vec<String> = cursors.iter().map(|c| c.1.clone()).collect();
        let afters: Vec<i64> = cursors.iter().map(|c| c.2).collect();
        Ok(sqlx::query_as!(
            StoredEvent,
            r#"SELECT e.id AS "id!", e.tenant_id AS "tenant_id!", e.session_id AS "session_id!", e.turn_id,
                      e.kind AS "kind!", e.payload AS "payload!", e.request_id, e.trace_id,
                      e.created_at AS "created_at!"
               FROM unnest($1::uuid[], $2::text[], $3::bigint[]) AS c(session_id, tenant_id, after)
               CROSS JOIN LATERAL (
                   SELECT id, tenant_id, session_id, turn_id, kind, payload, request_id, trace_id, created_at
                   FROM session_events
                   WHERE session_id = c.session_id AND tenant_id = c.tenant_id AND id > c.after
                   ORDER BY id LIMIT $4) e
               ORDER BY e.session_id, e.id"#,
            &sessions,
            &tenants,
            &afters,
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

    /// Whether any attempt of the turn's LLM call in `round` has streamed a delta yet.
    pub async fn has_streamed_deltas(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        turn_id: Uuid,
        round: u32,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM session_events
                              WHERE session_id = $1 AND tenant_id = $2 AND turn_id = $3
                                AND kind = 'llm.delta' AND coalesce((payload->>'round')::int, 0) = $4) AS "streamed!""#,
            session_id,
            tenant_id,
            turn_id,
            round as i32,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The reply as streamed: of each round (the model's calls between rounds of tools), the
    /// newest attempt's deltas, concatenated in order.
    pub async fn streamed_reply(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        turn_id: Uuid,
    ) -> Result<String, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"WITH deltas AS (
                   SELECT id, payload->>'text' AS text, (payload->>'attempt')::int AS attempt,
                          coalesce((payload->>'round')::int, 0) AS round
                   FROM session_events
                   WHERE session_id = $1 AND tenant_id = $2 AND turn_id = $3 AND kind = 'llm.delta')
               SELECT coalesce(string_agg(text, '' ORDER BY round, id), '') AS "reply!" FROM deltas d
               WHERE attempt = (SELECT max(attempt) FROM deltas WHERE round = d.round)"#,
            session_id,
            tenant_id,
            turn_id,
        )
        .fetch_one(&self.pool)
        .await?)
    }
}
