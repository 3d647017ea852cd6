//! `messages`: the conversation as users and the LLM see it.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use soma_workflows::TurnRef;

use super::{Store, StoreError};

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Message {
    pub id: Uuid,
    pub turn_id: Uuid,
    pub role: String,
    pub content: String,
    pub status: String,
    pub created_at: DateTime<Utc>,
}

/// One line of the conversation as sent to the LLM.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConversationLine {
    pub role: String,
    pub content: String,
}

impl Store {
    /// Stores a turn's message for `role` once; a retry returns the first one's ID.
    pub async fn insert_message(
        &self,
        turn: &TurnRef,
        role: &str,
        content: &str,
        status: &str,
    ) -> Result<Uuid, StoreError> {
        let id: Uuid = sqlx::query_scalar(
            "WITH ins AS (
                INSERT INTO messages (id, tenant_id, session_id, turn_id, role, content, status)
                VALUES ($1, $2, $3, $4, $5, $6, $7)
                ON CONFLICT (turn_id, role) DO NOTHING
                RETURNING id)
             SELECT id FROM ins
             UNION ALL
             SELECT id FROM messages WHERE turn_id = $4 AND role = $5
             LIMIT 1",
        )
        .bind(Uuid::now_v7())
        .bind(&turn.tenant_id)
        .bind(turn.session_id)
        .bind(turn.turn_id)
        .bind(role)
        .bind(content)
        .bind(status)
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    /// The session's messages, oldest first, after the message `after` (exclusive).
    pub async fn session_messages(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        after: Option<Uuid>,
        limit: i64,
    ) -> Result<Vec<Message>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT m.id, m.turn_id, m.role, m.content, m.status, m.created_at
             FROM messages m JOIN turns t ON t.id = m.turn_id
             WHERE m.session_id = $1 AND m.tenant_id = $2
               AND ($3::uuid IS NULL OR (t.seq, m.role = 'assistant') >
                    (SELECT t2.seq, m2.role = 'assistant' FROM messages m2 JOIN turns t2 ON t2.id = m2.turn_id WHERE m2.id = $3))
             ORDER BY t.seq, m.role = 'assistant'
             LIMIT $4",
        )
        .bind(session_id)
        .bind(tenant_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?)
    }

    /// The conversation up to and including `turn`, in order, for the LLM call.
    pub async fn conversation_until(&self, turn: &TurnRef) -> Result<Vec<ConversationLine>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT m.role, m.content FROM messages m JOIN turns t ON t.id = m.turn_id
             WHERE m.session_id = $1 AND m.tenant_id = $2
               AND t.seq <= (SELECT seq FROM turns WHERE id = $3 AND tenant_id = $2)
             ORDER BY t.seq, m.role = 'assistant'",
        )
        .bind(turn.session_id)
        .bind(&turn.tenant_id)
        .bind(turn.turn_id)
        .fetch_all(&self.pool)
        .await?)
    }
}
