//! `audit_log`: who did what, to which session, and how it ended.

use sqlx::PgExecutor;
use uuid::Uuid;

use super::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub tenant_id: &'a str,
    pub request_id: Option<&'a str>,
    pub session_id: Option<Uuid>,
    pub turn_id: Option<Uuid>,
    /// `api`, `worker`, or an operator's name.
    pub actor: &'a str,
    pub action: &'a str,
    pub outcome: &'a str,
    pub details: serde_json::Value,
    /// Set by activities so that a retry does not audit twice.
    pub dedupe_key: Option<String>,
}

impl AuditEntry<'_> {
    pub async fn insert<'e>(&self, executor: impl PgExecutor<'e>) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_log (tenant_id, request_id, session_id, turn_id, actor, action,
                                    outcome, details, dedupe_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (dedupe_key) DO NOTHING",
        )
        .bind(self.tenant_id)
        .bind(self.request_id)
        .bind(self.session_id)
        .bind(self.turn_id)
        .bind(self.actor)
        .bind(self.action)
        .bind(self.outcome)
        .bind(&self.details)
        .bind(&self.dedupe_key)
        .execute(executor)
        .await?;
        Ok(())
    }
}

impl Store {
    pub async fn audit(&self, entry: &AuditEntry<'_>) -> Result<(), StoreError> {
        entry.insert(&self.pool).await
    }
}
