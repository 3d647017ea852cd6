//! `sessions`: one row per conversation.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use super::{Store, StoreError};

#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    pub id: Uuid,
    pub persona_id: Option<String>,
    pub turn_count: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Keyset position in the session list: newest activity first.
#[derive(Debug, Clone, Copy)]
pub struct SessionCursor {
    pub updated_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Store {
    pub async fn session_exists(&self, tenant_id: &str, session_id: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT EXISTS (SELECT 1 FROM sessions WHERE id = $1 AND tenant_id = $2) AS "exists!""#,
            session_id,
            tenant_id,
        )
        .fetch_one(&self.pool)
        .await?)
    }

    /// The tenant's sessions, most recently active first, `limit` at a time.
    pub async fn list_sessions(
        &self,
        tenant_id: &str,
        limit: i64,
        after: Option<SessionCursor>,
    ) -> Result<Vec<SessionSummary>, StoreError> {
        Ok(sqlx::query_as!(
            SessionSummary,
            "SELECT id, persona_id, turn_count, created_at, updated_at FROM sessions
             WHERE tenant_id = $1
               AND ($2::timestamptz IS NULL OR (updated_at, id) < ($2, $3))
             ORDER BY updated_at DESC, id DESC
             LIMIT $4",
            tenant_id,
            after.map(|c| c.updated_at),
            after.map(|c| c.id),
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
