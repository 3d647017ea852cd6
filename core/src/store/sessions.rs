//! `sessions`: one row per conversation, and what happens to a whole session: delete, reset,
//! import.

use chrono::{DateTime, Utc};
use serde_json::json;
use sqlx::{PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use soma_contract::api::SessionSummary;
use soma_contract::{MessageStatus, Role};

use super::{AuditEntry, Requester, Store, StoreError};

/// Keyset position in the session list: newest activity first.
#[derive(Debug, Clone, Copy)]
pub struct SessionCursor {
    pub updated_at: DateTime<Utc>,
    pub id: Uuid,
}

/// What a session's deletion does to its memories in the built-in backend (which keeps them
/// without a foreign key, so they outlive it unless told otherwise).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionMemories {
    Keep,
    Forget,
}

/// A turn to import: the user's message and, if it was answered, the reply.
#[derive(Debug, Clone)]
pub struct ImportedTurn {
    pub user: ImportedMessage,
    pub assistant: Option<ImportedMessage>,
}

#[derive(Debug, Clone)]
pub struct ImportedMessage {
    pub content: String,
    pub status: MessageStatus,
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Whether the tenant has this session (and it is not being deleted).
    pub async fn session_exists(&self, tenant_id: &str, session_id: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL)
               AS "exists!""#,
            session_id,
            tenant_id,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The tenant's sessions, most recently active first, `limit` at a time; `session` alone
    /// when given.
    pub async fn list_sessions(
        &self,
        tenant_id: &str,
        limit: i64,
        after: Option<SessionCursor>,
        session: Option<Uuid>,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        Ok(sqlx::query_as!(
            SessionSummary,
            "SELECT id, persona_id, turn_count, created_at, updated_at FROM sessions
             WHERE tenant_id = $1 AND deleted_at IS NULL
               AND ($2::timestamptz IS NULL OR (updated_at, id) < ($2, $3))
               AND ($5::uuid IS NULL OR id = $5)
             ORDER BY updated_at DESC, id DESC
             LIMIT $4",
            tenant_id,
            after.map(|c| c.updated_at),
            after.map(|c| c.id),
            limit,
            session,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Whether a turn of the session is queued or running.
    pub async fn session_has_open_turn(&self, tenant_id: &str, session_id: Uuid) -> Result<bool, StoreError> {
        has_open_turn(&self.pool, tenant_id, session_id).await
    }

    /// One of the tenant's sessions.
    pub async fn session(&self, tenant_id: &str, session_id: Uuid) -> Result<SessionSummary, StoreError> {
        let mut found = self.list_sessions(tenant_id, 1, None, Some(session_id)).await?;
        found.pop().ok_or(StoreError::SessionNotFound)
    }

    /// Hides a session from every request at once: the first step of deleting it. Audited.
    pub async fn mark_session_deleted(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        by: Requester<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let marked = sqlx::query_scalar!(
            "UPDATE sessions SET deleted_at = now() WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL
             RETURNING id",
            session_id,
            tenant_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if marked.is_none() {
            return Err(StoreError::SessionNotFound);
        }
        AuditEntry::for_session(tenant_id, session_id, by, "session.delete", "requested", json!({}))
            .insert(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes back [`mark_session_deleted`](Self::mark_session_deleted) when the deletion could
    /// not be started.
    pub async fn unmark_session_deleted(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        by: Requester<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!("UPDATE sessions SET deleted_at = NULL WHERE id = $1 AND tenant_id = $2", session_id, tenant_id)
            .execute(&mut *tx)
            .await?;
        let outcome = "withdrawn: its workflow could not be started";
        AuditEntry::for_session(tenant_id, session_id, by, "session.delete", outcome, json!({}))
            .insert(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Removes a session marked deleted and everything it owns (turns, messages, events, and
    /// with [`SessionMemories::Forget`] its memories). Audit rows stay: they are the record
    /// that it existed. Returns whether it was there.
    pub async fn purge_session(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        memories: SessionMemories,
        by: Requester<'_>,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let purged = sqlx::query_scalar!(
            "DELETE FROM sessions WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NOT NULL RETURNING id",
            session_id,
            tenant_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        if purged.is_some() {
            let mut details = json!({});
            if memories == SessionMemories::Forget {
                let forgotten = sqlx::query!(
                    "DELETE FROM memories WHERE tenant_id = $1 AND session_id = $2",
                    tenant_id,
                    session_id
                )
                .execute(&mut *tx)
                .await?
                .rows_affected();
                details = json!({ "memories_forgotten": forgotten });
            }
            AuditEntry::for_session(tenant_id, session_id, by, "session.delete", "completed", details)
                .once(format!("{session_id}:session.delete"))
                .insert(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(purged.is_some())
    }

    /// Clears a session's conversation (turns, messages, events) and keeps the session, unless
    /// a turn of it is open. Returns how many messages were removed. Audited.
    pub async fn reset_session(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        by: Requester<'_>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        lock_session(&mut tx, tenant_id, session_id).await?;
        if has_open_turn(&mut *tx, tenant_id, session_id).await? {
            return Err(StoreError::SessionBusy);
        }
        sqlx::query!("DELETE FROM session_events WHERE session_id = $1 AND tenant_id = $2", session_id, tenant_id)
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query_scalar!(
            r#"WITH gone AS (DELETE FROM messages WHERE session_id = $1 AND tenant_id = $2 RETURNING 1)
               SELECT count(*) AS "removed!" FROM gone"#,
            session_id,
            tenant_id,
        )
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query!("DELETE FROM turns WHERE session_id = $1 AND tenant_id = $2", session_id, tenant_id)
            .execute(&mut *tx)
            .await?;
        let details = json!({ "removed_messages": removed });
        AuditEntry::for_session(tenant_id, session_id, by, "session.reset", "completed", details)
            .insert(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(removed)
    }

    /// Creates a session holding an imported conversation: its turns completed, with no
    /// workflow, and their messages as they were. Audited.
    pub async fn import_session(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        persona_id: Option<&str>,
        turns: &[ImportedTurn],
        by: Requester<'_>,
    ) -> Result<i64, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "INSERT INTO sessions (id, tenant_id, persona_id, turn_count) VALUES ($1, $2, $3, $4)",
            session_id,
            tenant_id,
            persona_id,
            turns.len() as i32,
        )
        .execute(&mut *tx)
        .await?;
        let mut messages = 0;
        for (index, turn) in turns.iter().enumerate() {
            let turn_id = Uuid::now_v7();
            sqlx::query!(
                "INSERT INTO turns (id, tenant_id, session_id, seq, user_message, persona_id, request_id,
                                    trace_id, workflow_id, status, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, 'completed', $9, $9)",
                turn_id,
                tenant_id,
                session_id,
                index as i32 + 1,
                turn.user.content,
                persona_id,
                by.request_id,
                by.trace_id,
                turn.user.created_at,
            )
            .execute(&mut *tx)
            .await?;
            let replies = [(Role::User, Some(&turn.user)), (Role::Assistant, turn.assistant.as_ref())];
            for (role, message) in replies {
                let Some(message) = message else { continue };
                sqlx::query!(
                    "INSERT INTO messages (id, tenant_id, session_id, turn_id, role, content, status, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                    Uuid::now_v7(),
                    tenant_id,
                    session_id,
                    turn_id,
                    role as Role,
                    message.content,
                    message.status as MessageStatus,
                    message.created_at,
                )
                .execute(&mut *tx)
                .await?;
                messages += 1;
            }
        }
        let details = json!({ "turns": turns.len(), "messages": messages });
        AuditEntry::for_session(tenant_id, session_id, by, "session.import", "completed", details)
            .insert(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(messages)
    }
}

/// Locks the tenant's session row for the rest of the transaction; a session being deleted
/// is not found.
pub(super) async fn lock_session(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: &str,
    session_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query_scalar!(
        "SELECT id FROM sessions WHERE id = $1 AND tenant_id = $2 AND deleted_at IS NULL FOR UPDATE",
        session_id,
        tenant_id,
    )
    .fetch_optional(&mut **tx)
    .await?
    .map(|_| ())
    .ok_or(StoreError::SessionNotFound)
}

/// Whether a turn of the session is queued or running.
pub(super) async fn has_open_turn(
    executor: impl PgExecutor<'_>,
    tenant_id: &str,
    session_id: Uuid,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM open_turns WHERE session_id = $1 AND tenant_id = $2) AS "open!""#,
        session_id,
        tenant_id,
    )
    .fetch_one(executor)
    .await?)
}
