//! `memories` (the built-in memory backend), `memory_writes` (what is owed to the backend) and
//! `dead_letters` (what was given up on, to replay or discard).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use soma_contract::api::{DeadLetter, MemoryItem};
use soma_contract::{DeadLetterKind, DeadLetterStatus, MemoryRole, MemoryWriteRef, MemoryWriteStatus, MessageStatus, Role};

use super::{AuditEntry, Store, StoreError};

/// A write owed to the memory backend.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryWriteRow {
    pub key: String,
    pub tenant_id: String,
    pub session_id: Option<Uuid>,
    pub turn_id: Option<Uuid>,
    pub role: Option<MemoryRole>,
    pub payload: Value,
    pub status: MemoryWriteStatus,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// A message of a turn, as its memory write needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnMessage {
    pub id: Uuid,
    pub role: Role,
    pub content: String,
    pub status: MessageStatus,
    pub persona_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// Which dead letters to list.
#[derive(Debug, Clone, Default)]
pub struct DeadLetterFilter {
    pub kind: Option<DeadLetterKind>,
    pub tenant_id: Option<String>,
    /// Only those filed before this.
    pub before: Option<DateTime<Utc>>,
    /// Open ones unless said otherwise.
    pub status: Option<DeadLetterStatus>,
    pub limit: i64,
}

impl Store {
    /// Keeps a memory in the built-in backend, once per key: returns false when the key was
    /// already remembered, or its session has been deleted since (the write is then a no-op).
    /// The session's row is share-locked while the memory goes in, so a deletion that forgets
    /// the session's memories waits for it and takes it too.
    pub async fn remember_memory(
        &self,
        tenant_id: &str,
        namespace: &str,
        key: &str,
        session_id: Option<Uuid>,
        role: Option<&str>,
        content: &str,
        payload: &Value,
    ) -> Result<bool, StoreError> {
        let inserted = sqlx::query!(
            r#"INSERT INTO memories (id, tenant_id, namespace, key, session_id, role, content, payload)
               SELECT $1, $2, $3, $4, $5, $6, $7, $8
               WHERE $5::uuid IS NULL
                  OR EXISTS (SELECT 1 FROM sessions WHERE id = $5 AND deleted_at IS NULL FOR KEY SHARE)
               ON CONFLICT (tenant_id, key) DO NOTHING"#,
            Uuid::now_v7(),
            tenant_id,
            namespace,
            key,
            session_id,
            role,
            content,
            payload,
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(inserted == 1)
    }

    /// The tenant's memories that match any word of `query` (full-text, English stemming),
    /// best first; with `session_id`, only that session's. An empty query lists the most recent
    /// ones; a query with no searchable word (only stop words) finds nothing.
    pub async fn recall_memories(
        &self,
        tenant_id: &str,
        query: &str,
        session_id: Option<Uuid>,
        top_k: i64,
    ) -> Result<Vec<MemoryItem>, StoreError> {
        Ok(sqlx::query_as!(
            MemoryItem,
            r#"WITH q AS (SELECT NULLIF(replace(plainto_tsquery('english', $2)::text, ' & ', ' | '), '')::tsquery AS q)
               SELECT m.key, m.content, m.session_id, m.role, m.created_at AS "created_at?",
                      (COALESCE(ts_rank_cd(m.search, q.q), 0) + 0.01 * m.feedback)::float8 AS "score!"
               FROM memories m, q
               WHERE m.tenant_id = $1
                 AND ($3::uuid IS NULL OR m.session_id = $3)
                 AND (btrim($2) = '' OR m.search @@ q.q)
               ORDER BY 6 DESC, m.created_at DESC
               LIMIT $4"#,
            tenant_id,
            query,
            session_id,
            top_k,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Adds feedback on a recalled memory of the tenant (it ranks it up or down). Returns
    /// whether the memory exists.
    pub async fn memory_feedback(&self, tenant_id: &str, key: &str, utility: f64) -> Result<bool, StoreError> {
        let updated =
            sqlx::query!("UPDATE memories SET feedback = feedback + $3 WHERE tenant_id = $1 AND key = $2", tenant_id, key, utility)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(updated == 1)
    }

    /// Records what the turn recalled for its prompt (the first recording stands: a retried
    /// recall does not change what the model was shown).
    pub async fn set_turn_recall(&self, tenant_id: &str, turn_id: Uuid, recalled: &Value) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE turns SET recalled = $3 WHERE id = $1 AND tenant_id = $2 AND recalled IS NULL",
            turn_id,
            tenant_id,
            recalled,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// What the turn recalled for its prompt, if anything.
    pub async fn turn_recall(&self, tenant_id: &str, turn_id: Uuid) -> Result<Option<Value>, StoreError> {
        Ok(sqlx::query_scalar!("SELECT recalled FROM turns WHERE id = $1 AND tenant_id = $2", turn_id, tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .flatten())
    }

    /// The turn's stored messages (user, then assistant), as their memory writes need them.
    pub async fn turn_messages(&self, tenant_id: &str, turn_id: Uuid) -> Result<Vec<TurnMessage>, StoreError> {
        Ok(sqlx::query_as!(
            TurnMessage,
            r#"SELECT m.id, m.role AS "role: Role", m.content, m.status AS "status: MessageStatus",
                      t.persona_id, m.created_at
               FROM messages m JOIN turns t ON t.id = m.turn_id
               WHERE m.turn_id = $1 AND m.tenant_id = $2
               ORDER BY m.created_at, m.id"#,
            turn_id,
            tenant_id,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Records a write owed to the memory backend, once per key (a retry changes nothing).
    /// Returns its status: `Pending` unless an earlier staging already saw it end.
    pub async fn stage_memory_write(
        &self,
        write: &MemoryWriteRef,
        role: Option<MemoryRole>,
        payload: &Value,
    ) -> Result<MemoryWriteStatus, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"WITH ins AS (
                   INSERT INTO memory_writes (key, tenant_id, session_id, turn_id, role, payload, request_id, trace_id)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (key) DO NOTHING
                   RETURNING status)
               SELECT status AS "status!: MemoryWriteStatus" FROM ins
               UNION ALL
               SELECT status FROM memory_writes WHERE key = $1 AND tenant_id = $2
               LIMIT 1"#,
            write.key,
            write.tenant_id,
            write.session_id,
            write.turn_id,
            role.map(MemoryRole::as_str),
            payload,
            write.request_id,
            write.trace_id,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// Pending writes that have not moved for `quiet_for` (their workflow may be gone), oldest
    /// first; each is touched, so the next sweep looks at others first.
    pub async fn stalled_memory_writes(&self, quiet_for: Duration, limit: i64) -> Result<Vec<MemoryWriteRef>, StoreError> {
        Ok(sqlx::query_as!(
            MemoryWriteRef,
            r#"UPDATE memory_writes SET updated_at = now()
               WHERE key IN (SELECT key FROM memory_writes
                             WHERE status = 'pending' AND updated_at < now() - make_interval(secs => $1)
                             ORDER BY updated_at LIMIT $2
                             FOR UPDATE SKIP LOCKED)
               RETURNING tenant_id, key, session_id, turn_id, request_id, trace_id"#,
            quiet_for.as_secs_f64(),
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// A write owed to the backend, by key, within its tenant.
    pub async fn memory_write(&self, tenant_id: &str, key: &str) -> Result<Option<MemoryWriteRow>, StoreError> {
        Ok(sqlx::query_as!(
            MemoryWriteRow,
            r#"SELECT key, tenant_id, session_id, turn_id, role AS "role: MemoryRole", payload,
                      status AS "status: MemoryWriteStatus", attempts, last_error, created_at
               FROM memory_writes WHERE key = $1 AND tenant_id = $2"#,
            key,
            tenant_id,
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records how a write ended, or (`Pending`) the attempt it is at and its last error.
    pub async fn set_memory_write_status(
        &self,
        tenant_id: &str,
        key: &str,
        status: MemoryWriteStatus,
        attempts: i32,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            r#"UPDATE memory_writes
               SET status = $3, attempts = GREATEST(attempts, $4), last_error = COALESCE($5, last_error), updated_at = now(),
                   delivered_at = CASE WHEN $3 = 'delivered' THEN now() ELSE delivered_at END
               WHERE key = $1 AND tenant_id = $2"#,
            key,
            tenant_id,
            status as MemoryWriteStatus,
            attempts,
            error,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives up on a write: files it as an open dead letter with its payload, error and
    /// attempts (once: a retry finds it filed) and marks it dead-lettered. Returns the dead
    /// letter's ID; none if the write is gone (its session was deleted).
    pub async fn dead_letter_memory_write(
        &self,
        tenant_id: &str,
        key: &str,
        error: &str,
    ) -> Result<Option<Uuid>, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"WITH w AS (
                   UPDATE memory_writes SET status = 'dead_lettered', last_error = $3, updated_at = now()
                   WHERE key = $2 AND tenant_id = $1
                   RETURNING key, tenant_id, session_id, payload, attempts),
               ins AS (
                   INSERT INTO dead_letters (id, kind, tenant_id, key, session_id, payload, error, attempts)
                   SELECT $4, 'memory_write', tenant_id, key, session_id, payload, $3, attempts FROM w
                   ON CONFLICT (kind, key) WHERE status = 'open' DO NOTHING
                   RETURNING id)
               SELECT id AS "id!" FROM ins
               UNION ALL
               SELECT id FROM dead_letters
               WHERE kind = 'memory_write' AND key = $2 AND tenant_id = $1 AND status = 'open'
               LIMIT 1"#,
            tenant_id,
            key,
            error,
            Uuid::now_v7(),
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Dead letters, oldest first.
    pub async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, StoreError> {
        let status = filter.status.unwrap_or(DeadLetterStatus::Open);
        Ok(sqlx::query_as!(
            DeadLetter,
            r#"SELECT id, kind AS "kind: DeadLetterKind", tenant_id, key, session_id, payload, error, attempts,
                      status AS "status: DeadLetterStatus", resolved_by, resolution, resolved_at, created_at
               FROM dead_letters
               WHERE status = $1
                 AND ($2::text IS NULL OR kind = $2)
                 AND ($3::text IS NULL OR tenant_id = $3)
                 AND ($4::timestamptz IS NULL OR created_at < $4)
               ORDER BY created_at, id
               LIMIT $5"#,
            status as DeadLetterStatus,
            filter.kind.map(DeadLetterKind::as_str),
            filter.tenant_id.as_deref(),
            filter.before,
            filter.limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// One dead letter.
    pub async fn dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>, StoreError> {
        Ok(sqlx::query_as!(
            DeadLetter,
            r#"SELECT id, kind AS "kind: DeadLetterKind", tenant_id, key, session_id, payload, error, attempts,
                      status AS "status: DeadLetterStatus", resolved_by, resolution, resolved_at, created_at
               FROM dead_letters WHERE id = $1"#,
            id,
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Closes an open dead letter as replayed or discarded, by whom and why, audited
    /// (`dead_letter.resolve`, with `details`) in the same transaction. A memory write's replay
    /// (under `request`: the replay's request and trace) makes its write owed again (pending,
    /// its attempts from 0) in it too. Returns false if it was not open (someone else resolved
    /// it first).
    pub async fn resolve_dead_letter(
        &self,
        id: Uuid,
        status: DeadLetterStatus,
        by: &str,
        resolution: Option<&str>,
        request: (&str, Option<&str>),
        mut details: Value,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let resolved = sqlx::query!(
            r#"UPDATE dead_letters SET status = $2, resolved_by = $3, resolution = $4, resolved_at = now()
               WHERE id = $1 AND status = 'open'
               RETURNING kind, tenant_id, key, session_id, payload"#,
            id,
            status as DeadLetterStatus,
            by,
            resolution,
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(letter) = resolved else {
            return Ok(false);
        };
        if status == DeadLetterStatus::Replayed && letter.kind == DeadLetterKind::MemoryWrite.as_str() {
            // The session may be gone: the write then has none (and no event).
            sqlx::query!(
                r#"INSERT INTO memory_writes (key, tenant_id, session_id, turn_id, role, payload, request_id, trace_id)
                   VALUES ($1, $2, (SELECT id FROM sessions WHERE id = $3), NULL, $4::jsonb ->> 'role', $4, $5, $6)
                   ON CONFLICT (key) DO UPDATE
                   SET status = 'pending', attempts = 0, last_error = NULL, updated_at = now(),
                       request_id = EXCLUDED.request_id, trace_id = EXCLUDED.trace_id
                   WHERE memory_writes.status = 'dead_lettered'"#,
                letter.key,
                letter.tenant_id,
                letter.session_id,
                letter.payload,
                request.0,
                request.1,
            )
            .execute(&mut *tx)
            .await?;
        }
        details["dead_letter_id"] = serde_json::json!(id);
        details["key"] = serde_json::json!(letter.key);
        AuditEntry {
            tenant_id: &letter.tenant_id,
            request_id: Some(request.0),
            trace_id: request.1,
            session_id: letter.session_id,
            turn_id: None,
            actor: by,
            action: "dead_letter.resolve",
            outcome: status.as_str(),
            details,
            dedupe_key: None,
        }
        .insert(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// The age of the oldest write still owed to the backend, and how many there are.
    pub async fn pending_memory_writes(&self) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
        let row = sqlx::query!(
            r#"SELECT count(*) AS "count!", min(created_at) AS oldest
               FROM memory_writes WHERE status = 'pending'"#
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.count, row.oldest))
    }
}
