//! `turns`: accepted messages waiting for, or being answered by, a `ChatTurnWorkflow`.

use serde_json::json;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use soma_workflows::{TurnRef, TurnStatus, chat_workflow_id};

use super::{AuditEntry, Store, StoreError};

/// A message to accept as a new turn.
#[derive(Debug, Clone)]
pub struct NewTurn<'a> {
    pub tenant_id: &'a str,
    /// `None` starts a new session.
    pub session_id: Option<Uuid>,
    pub idempotency_key: Option<&'a str>,
    pub message: &'a str,
    pub persona_id: Option<&'a str>,
    pub request_id: &'a str,
}

/// The accepted turn. `created` is false when an Idempotency-Key matched an earlier turn.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AcceptedTurn {
    pub session_id: Uuid,
    pub turn_id: Uuid,
    pub workflow_id: String,
    pub request_id: String,
    #[sqlx(default)]
    pub created: bool,
}

/// What an activity reads about its turn.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TurnRow {
    pub seq: i32,
    pub user_message: String,
    pub persona_id: Option<String>,
    pub status: String,
}

/// An unfinished turn ahead of another in its session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EarlierTurn {
    pub turn_id: Uuid,
    pub workflow_id: String,
    pub request_id: String,
    pub age_seconds: f64,
}

/// A turn that has not finished, with the workflow that runs it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OpenTurn {
    pub turn_id: Uuid,
    pub workflow_id: String,
}

impl Store {
    /// Records an accepted message as a turn, in one transaction: the session is created or
    /// locked, the turn gets the next place in it, and the acceptance is audited. A repeated
    /// Idempotency-Key returns the first turn and writes nothing.
    pub async fn accept_turn(&self, new: &NewTurn<'_>) -> Result<AcceptedTurn, StoreError> {
        if let Some(existing) = self.turn_by_idempotency_key(new).await? {
            return Ok(existing);
        }
        let mut tx = self.pool.begin().await?;
        let (session_id, seq) = match new.session_id {
            Some(session_id) => (session_id, next_turn_seq(&mut tx, new.tenant_id, session_id).await?),
            None => (create_session(&mut tx, new.tenant_id, new.persona_id).await?, 1),
        };
        let turn_id = Uuid::now_v7();
        let workflow_id = chat_workflow_id(session_id, turn_id);
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO turns (id, tenant_id, session_id, seq, idempotency_key, user_message,
                                persona_id, request_id, workflow_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
             RETURNING id",
        )
        .bind(turn_id)
        .bind(new.tenant_id)
        .bind(session_id)
        .bind(seq)
        .bind(new.idempotency_key)
        .bind(new.message)
        .bind(new.persona_id)
        .bind(new.request_id)
        .bind(&workflow_id)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_none() {
            // A concurrent request with the same key won; ours changes nothing.
            tx.rollback().await?;
            return self.turn_by_idempotency_key(new).await?.ok_or(StoreError::TurnNotFound);
        }
        AuditEntry {
            tenant_id: new.tenant_id,
            request_id: Some(new.request_id),
            session_id: Some(session_id),
            turn_id: Some(turn_id),
            actor: "api",
            action: "turn.accept",
            outcome: "accepted",
            details: json!({ "seq": seq, "workflow_id": workflow_id, "message_bytes": new.message.len() }),
            dedupe_key: None,
        }
        .insert(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(AcceptedTurn {
            session_id,
            turn_id,
            workflow_id,
            request_id: new.request_id.to_string(),
            created: true,
        })
    }

    async fn turn_by_idempotency_key(&self, new: &NewTurn<'_>) -> Result<Option<AcceptedTurn>, StoreError> {
        let Some(key) = new.idempotency_key else { return Ok(None) };
        Ok(sqlx::query_as(
            "SELECT session_id, id AS turn_id, workflow_id, request_id FROM turns
             WHERE tenant_id = $1 AND idempotency_key = $2",
        )
        .bind(new.tenant_id)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?)
    }

    pub async fn turn(&self, turn: &TurnRef) -> Result<TurnRow, StoreError> {
        sqlx::query_as(
            "SELECT seq, user_message, persona_id, status FROM turns
             WHERE id = $1 AND tenant_id = $2",
        )
        .bind(turn.turn_id)
        .bind(&turn.tenant_id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::TurnNotFound)
    }

    /// The turns accepted before this one that have not finished yet.
    pub async fn unfinished_earlier_turns(&self, turn: &TurnRef) -> Result<Vec<EarlierTurn>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id AS turn_id, workflow_id, request_id,
                    extract(epoch FROM now() - created_at)::float8 AS age_seconds
             FROM turns
             WHERE session_id = $1 AND tenant_id = $2
               AND seq < (SELECT seq FROM turns WHERE id = $3 AND tenant_id = $2)
               AND status IN ('queued', 'running')
             ORDER BY seq",
        )
        .bind(turn.session_id)
        .bind(&turn.tenant_id)
        .bind(turn.turn_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn mark_turn_running(&self, turn: &TurnRef) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE turns SET status = 'running', updated_at = now()
             WHERE id = $1 AND tenant_id = $2 AND status = 'queued'",
        )
        .bind(turn.turn_id)
        .bind(&turn.tenant_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_turn_status(&self, turn: &TurnRef, status: TurnStatus) -> Result<(), StoreError> {
        sqlx::query("UPDATE turns SET status = $3, updated_at = now() WHERE id = $1 AND tenant_id = $2")
            .bind(turn.turn_id)
            .bind(&turn.tenant_id)
            .bind(status.as_str())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Takes back a turn whose workflow could not be started (the client got an error, not a
    /// 202), so it neither blocks the session nor answers a retried Idempotency-Key.
    pub async fn withdraw_turn(
        &self,
        tenant_id: &str,
        turn_id: Uuid,
        request_id: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let session_id: Option<Uuid> = sqlx::query_scalar(
            "DELETE FROM turns WHERE id = $1 AND tenant_id = $2 AND status = 'queued' RETURNING session_id",
        )
        .bind(turn_id)
        .bind(tenant_id)
        .fetch_optional(&mut *tx)
        .await?;
        AuditEntry {
            tenant_id,
            request_id: Some(request_id),
            session_id,
            turn_id: Some(turn_id),
            actor: "api",
            action: "turn.accept",
            outcome: "withdrawn: workflow could not be started",
            details: json!({}),
            dedupe_key: None,
        }
        .insert(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session's oldest unfinished turn: the one running, or else the next to run.
    pub async fn oldest_open_turn(
        &self,
        tenant_id: &str,
        session_id: Uuid,
    ) -> Result<Option<OpenTurn>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id AS turn_id, workflow_id FROM turns
             WHERE session_id = $1 AND tenant_id = $2 AND status IN ('queued', 'running')
             ORDER BY seq LIMIT 1",
        )
        .bind(session_id)
        .bind(tenant_id)
        .fetch_optional(&self.pool)
        .await?)
    }
}

async fn create_session(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: &str,
    persona_id: Option<&str>,
) -> Result<Uuid, StoreError> {
    let id = Uuid::now_v7();
    sqlx::query("INSERT INTO sessions (id, tenant_id, persona_id, turn_count) VALUES ($1, $2, $3, 1)")
        .bind(id)
        .bind(tenant_id)
        .bind(persona_id)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// Locks the session row and takes the next turn number: accepted order is this order.
async fn next_turn_seq(
    tx: &mut Transaction<'_, Postgres>,
    tenant_id: &str,
    session_id: Uuid,
) -> Result<i32, StoreError> {
    sqlx::query_scalar(
        "UPDATE sessions SET turn_count = turn_count + 1, updated_at = now()
         WHERE id = $1 AND tenant_id = $2 RETURNING turn_count",
    )
    .bind(session_id)
    .bind(tenant_id)
    .fetch_optional(&mut **tx)
    .await?
    .ok_or(StoreError::SessionNotFound)
}
