//! `messages`: the conversation as users and the LLM see it. Messages are in turn order, and
//! within a turn in the order they were stored.

use uuid::Uuid;

use soma_contract::api::Message;
use soma_contract::{MessageStatus, Role};

use super::{Store, StoreError};

/// One line of the conversation as sent to the LLM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationLine {
    /// The turn it belongs to (its files go with its user message).
    pub turn_id: Uuid,
    pub role: Role,
    pub content: String,
}

impl Store {
    /// Stores a turn's message for `role` once; a retry returns the first one's ID.
    pub async fn insert_message(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        turn_id: Uuid,
        role: Role,
        content: &str,
        status: MessageStatus,
    ) -> Result<Uuid, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"WITH ins AS (
                   INSERT INTO messages (id, tenant_id, session_id, turn_id, role, content, status)
                   VALUES ($1, $2, $3, $4, $5, $6, $7)
                   ON CONFLICT (turn_id, role) DO NOTHING
                   RETURNING id)
               SELECT id AS "id!" FROM ins
               UNION ALL
               SELECT id FROM messages WHERE turn_id = $4 AND role = $5 AND tenant_id = $2
               LIMIT 1"#,
            Uuid::now_v7(),
            tenant_id,
            session_id,
            turn_id,
            role as Role,
            content,
            status as MessageStatus,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The session's messages in conversation order: after the message `after` (exclusive;
    /// from the start when `None`), up to and including the turn `until` (to the end when
    /// `None`), at most `limit` (all when `None`).
    pub async fn messages(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        after: Option<Uuid>,
        until: Option<Uuid>,
        limit: Option<i64>,
    ) -> Result<Vec<Message>, StoreError> {
        Ok(sqlx::query_as!(
            Message,
            r#"SELECT m.id, m.turn_id, t.seq AS turn_seq, t.workflow_id, m.role AS "role: Role", m.content,
                      m.status AS "status: MessageStatus", m.created_at
               FROM messages m JOIN turns t ON t.id = m.turn_id
               WHERE m.session_id = $1 AND m.tenant_id = $2
                 AND ($3::uuid IS NULL OR (t.seq, m.created_at, m.id) >
                      (SELECT t2.seq, m2.created_at, m2.id FROM messages m2 JOIN turns t2 ON t2.id = m2.turn_id
                       WHERE m2.id = $3 AND m2.tenant_id = $2))
                 AND ($4::uuid IS NULL OR t.seq <= (SELECT seq FROM turns WHERE id = $4 AND tenant_id = $2))
               ORDER BY t.seq, m.created_at, m.id
               LIMIT $5"#,
            session_id,
            tenant_id,
            after,
            until,
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The conversation up to and including `turn_id`, for the LLM call.
    pub async fn conversation_until(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        turn_id: Uuid,
    ) -> Result<Vec<ConversationLine>, StoreError> {
        let messages = self.messages(tenant_id, session_id, None, Some(turn_id), None).await?;
        Ok(messages.into_iter().map(|m| ConversationLine { turn_id: m.turn_id, role: m.role, content: m.content }).collect())
    }
}
