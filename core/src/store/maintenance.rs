//! What the periodic jobs do to the database, each in bounded batches: gauges for `/metrics`,
//! sessions past their retention, `llm.delta` compaction, expired uploads.

use std::time::Duration;

use uuid::Uuid;

use super::{Store, StoreError};

/// The actor of the audit rows the jobs write.
pub const MAINTENANCE_ACTOR: &str = "maintenance";

/// One published gauge.
#[derive(Debug, Clone, PartialEq)]
pub struct Gauge {
    pub name: String,
    pub help: String,
    pub value: f64,
}

/// A session a cleanup has claimed: hidden from every request, to be purged with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimedSession {
    pub tenant_id: String,
    pub session_id: Uuid,
}

/// What one compaction batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Compacted {
    pub turns: u64,
    /// `llm.delta` events removed (each reply keeps one).
    pub events_removed: u64,
}

fn secs(age: Duration) -> f64 {
    age.as_secs_f64()
}

impl Store {
    /// Computes the gauges from the tables and stores them for every api's `/metrics`.
    pub async fn publish_gauges(&self) -> Result<Vec<Gauge>, StoreError> {
        let rows = sqlx::query!(
            r#"WITH computed (name, help, value) AS (VALUES
                   ('soma_sessions_active', 'Sessions with a message in the last hour',
                    (SELECT count(*) FROM sessions WHERE deleted_at IS NULL AND updated_at > now() - interval '1 hour')::float8),
                   ('soma_turns_running', 'Turns being answered',
                    (SELECT count(*) FROM turns WHERE status = 'running')::float8),
                   ('soma_turns_queued', 'Turns accepted and waiting for their session',
                    (SELECT count(*) FROM turns WHERE status = 'queued')::float8),
                   ('soma_scans_pending', 'Uploaded files waiting for their antivirus scan',
                    (SELECT count(*) FROM attachments WHERE status = 'pending')::float8),
                   ('soma_uploads_in_progress', 'tus uploads not yet complete',
                    (SELECT count(*) FROM attachments WHERE status = 'uploading')::float8),
                   ('soma_dead_letters_open', 'Dead letters waiting for a replay or a discard',
                    (SELECT count(*) FROM dead_letters WHERE status = 'open')::float8),
                   ('soma_memory_write_oldest_pending_seconds', 'Age of the oldest memory write not yet delivered',
                    coalesce((SELECT extract(epoch FROM now() - min(created_at)) FROM memory_writes WHERE status = 'pending'), 0)::float8)
               )
               INSERT INTO gauges (name, help, value, updated_at)
               SELECT name, help, value, now() FROM computed
               ON CONFLICT (name) DO UPDATE SET help = EXCLUDED.help, value = EXCLUDED.value, updated_at = now()
               RETURNING name, help, value"#
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|r| Gauge { name: r.name, help: r.help, value: r.value }).collect())
    }

    /// The gauges as last published, by name.
    pub async fn gauges(&self) -> Result<Vec<Gauge>, StoreError> {
        let rows = sqlx::query!("SELECT name, help, value FROM gauges ORDER BY name").fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|r| Gauge { name: r.name, help: r.help, value: r.value }).collect())
    }

    /// Claims up to `limit` sessions to delete: untouched for `retention` (or marked deleted
    /// over an hour ago by a deletion that never finished), with no open turn. Each is hidden
    /// from every request at once (a message racing the claim gets 404, never a half-deleted
    /// session) and audited (`session.expire`).
    pub async fn claim_expired_sessions(&self, retention: Duration, limit: u32) -> Result<Vec<ClaimedSession>, StoreError> {
        let rows = sqlx::query!(
            r#"WITH claimed AS (
                   UPDATE sessions s SET deleted_at = coalesce(s.deleted_at, now())
                   WHERE s.id IN (
                       SELECT id FROM sessions c
                       WHERE (c.deleted_at IS NULL AND c.updated_at < now() - make_interval(secs => $1))
                          OR c.deleted_at < now() - interval '1 hour'
                       ORDER BY c.updated_at
                       LIMIT $2
                       FOR UPDATE SKIP LOCKED)
                     AND NOT EXISTS (SELECT 1 FROM turns t WHERE t.session_id = s.id AND t.status IN ('queued', 'running'))
                   RETURNING s.tenant_id, s.id, s.updated_at),
               audited AS (
                   INSERT INTO audit_log (tenant_id, session_id, actor, action, outcome, details)
                   SELECT tenant_id, id, $3, 'session.expire', 'requested',
                          jsonb_build_object('last_active', updated_at, 'retention_secs', $1)
                   FROM claimed)
               SELECT tenant_id AS "tenant_id!", id AS "id!" FROM claimed"#,
            secs(retention),
            i64::from(limit),
            MAINTENANCE_ACTOR,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| ClaimedSession { tenant_id: r.tenant_id, session_id: r.id })
            .collect())
    }

    /// The S3 keys of a session's attachments (deleted before the session's rows go).
    pub async fn session_object_keys(&self, tenant_id: &str, session_id: Uuid) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT object_key AS "object_key!" FROM attachments
               WHERE session_id = $1 AND tenant_id = $2 AND object_key IS NOT NULL"#,
            session_id,
            tenant_id,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Replaces the `llm.delta` events of up to `limit` turns that ended over `age` ago by one
    /// event per reply (model call): the whole text of its final attempt, marked `compacted`,
    /// under the ID of the reply's last delta. A client resuming before that ID gets the whole
    /// reply once; one resuming inside the removed range gets it once too, and replaces what it
    /// had of that reply; one after it is unaffected.
    pub async fn compact_deltas(&self, age: Duration, limit: u32) -> Result<Compacted, StoreError> {
        let row = sqlx::query!(
            r#"WITH picked AS (
                   SELECT id, session_id FROM turns
                   WHERE status IN ('completed', 'failed', 'cancelled') AND compacted_at IS NULL
                     AND updated_at < now() - make_interval(secs => $1)
                   ORDER BY updated_at
                   LIMIT $2
                   FOR UPDATE SKIP LOCKED),
               deltas AS (
                   SELECT e.id, e.turn_id, coalesce((e.payload->>'round')::int, 0) AS round,
                          (e.payload->>'attempt')::int AS attempt, e.payload->>'text' AS text
                   FROM session_events e JOIN picked p ON e.session_id = p.session_id AND e.turn_id = p.id
                   WHERE e.kind = 'llm.delta'),
               finals AS (
                   SELECT turn_id, round, max(attempt) AS attempt FROM deltas GROUP BY turn_id, round),
               merged AS (
                   SELECT d.turn_id, d.round, f.attempt, string_agg(d.text, '' ORDER BY d.id) AS text,
                          max(d.id) AS keep_id
                   FROM deltas d JOIN finals f ON f.turn_id = d.turn_id AND f.round = d.round AND f.attempt = d.attempt
                   GROUP BY d.turn_id, d.round, f.attempt),
               kept AS (
                   UPDATE session_events e
                   SET payload = jsonb_build_object('text', m.text, 'attempt', m.attempt, 'index', 0,
                                                    'round', m.round, 'compacted', true)
                   FROM merged m WHERE e.id = m.keep_id
                   RETURNING e.id),
               removed AS (
                   DELETE FROM session_events e USING deltas d
                   WHERE e.id = d.id AND d.id NOT IN (SELECT keep_id FROM merged)
                   RETURNING e.id),
               marked AS (
                   UPDATE turns t SET compacted_at = now() FROM picked p WHERE t.id = p.id RETURNING t.id)
               SELECT (SELECT count(*) FROM marked) AS "turns!", (SELECT count(*) FROM removed) AS "removed!",
                      (SELECT count(*) FROM kept) AS "kept!""#,
            secs(age),
            i64::from(limit),
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(Compacted { turns: row.turns as u64, events_removed: row.removed as u64 })
    }

    /// Removes up to `limit` unfinished uploads past their expiry with the bytes they received
    /// (audited `upload.expire`). Returns how many.
    pub async fn expire_uploads(&self, limit: u32) -> Result<u64, StoreError> {
        let expired = sqlx::query_scalar!(
            r#"WITH gone AS (
                   DELETE FROM attachments WHERE id IN (
                       SELECT id FROM attachments WHERE status = 'uploading' AND expires_at < now()
                       ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                   RETURNING tenant_id, id, session_id, request_id, received_bytes, size_bytes),
               audited AS (
                   INSERT INTO audit_log (tenant_id, request_id, session_id, actor, action, outcome, details)
                   SELECT tenant_id, request_id, session_id, $2, 'upload.expire', 'completed',
                          jsonb_build_object('attachment_id', id, 'received_bytes', received_bytes, 'size_bytes', size_bytes)
                   FROM gone)
               SELECT count(*) AS "expired!" FROM gone"#,
            i64::from(limit),
            MAINTENANCE_ACTOR,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(expired as u64)
    }
}
