//! `audit_log`: who did what, to which session, and how it ended.

use sqlx::PgExecutor;
use uuid::Uuid;

use soma_contract::api::AuditRecord;
use soma_contract::{MemoryWriteRef, TurnRef, UploadRef};

use super::{Store, StoreError};

#[derive(Debug, Clone)]
pub struct AuditEntry<'a> {
    pub tenant_id: &'a str,
    pub request_id: Option<&'a str>,
    pub trace_id: Option<&'a str>,
    pub session_id: Option<Uuid>,
    pub turn_id: Option<Uuid>,
    /// Who acted: the principal of an API request (`key:…`), `worker`, or a maintenance job.
    pub actor: &'a str,
    pub action: &'a str,
    pub outcome: &'a str,
    pub details: serde_json::Value,
    /// Set by activities so that a retry does not audit twice.
    pub dedupe_key: Option<String>,
}

/// Who asked for something, for its audit row.
#[derive(Debug, Clone, Copy)]
pub struct Requester<'a> {
    /// The principal (`key:…`), `worker`, or a maintenance job.
    pub actor: &'a str,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
}

impl<'a> AuditEntry<'a> {
    /// An entry about a whole session, under the request that asked for it.
    pub fn for_session(
        tenant_id: &'a str,
        session_id: Uuid,
        by: Requester<'a>,
        action: &'a str,
        outcome: &'a str,
        details: serde_json::Value,
    ) -> Self {
        AuditEntry {
            tenant_id,
            request_id: Some(by.request_id),
            trace_id: by.trace_id,
            session_id: Some(session_id),
            turn_id: None,
            actor: by.actor,
            action,
            outcome,
            details,
            dedupe_key: None,
        }
    }

    /// An entry about an uploaded file, under the request that completed it.
    pub fn for_upload(
        upload: &'a UploadRef,
        actor: &'a str,
        action: &'a str,
        outcome: &'a str,
        details: serde_json::Value,
    ) -> Self {
        AuditEntry {
            tenant_id: &upload.tenant_id,
            request_id: Some(&upload.request_id),
            trace_id: upload.trace_id.as_deref(),
            session_id: upload.session_id,
            turn_id: None,
            actor,
            action,
            outcome,
            details,
            dedupe_key: None,
        }
    }

    /// An entry about a memory write, under the request that caused it.
    pub fn for_memory_write(
        write: &'a MemoryWriteRef,
        actor: &'a str,
        action: &'a str,
        outcome: &'a str,
        details: serde_json::Value,
    ) -> Self {
        AuditEntry {
            tenant_id: &write.tenant_id,
            request_id: Some(&write.request_id),
            trace_id: write.trace_id.as_deref(),
            session_id: write.session_id,
            turn_id: write.turn_id,
            actor,
            action,
            outcome,
            details,
            dedupe_key: None,
        }
    }

    /// An entry about a turn, under the request and trace that accepted it.
    pub fn for_turn(
        turn: &'a TurnRef,
        actor: &'a str,
        action: &'a str,
        outcome: &'a str,
        details: serde_json::Value,
    ) -> Self {
        AuditEntry {
            tenant_id: &turn.tenant_id,
            request_id: Some(&turn.request_id),
            trace_id: turn.trace_id.as_deref(),
            session_id: Some(turn.session_id),
            turn_id: Some(turn.turn_id),
            actor,
            action,
            outcome,
            details,
            dedupe_key: None,
        }
    }

    /// Written at most once per key: for entries an activity (retried) or a sweep (repeated)
    /// makes.
    pub fn once(self, dedupe_key: String) -> Self {
        AuditEntry { dedupe_key: Some(dedupe_key), ..self }
    }

    /// Writes the entry (once, when it has a dedupe key), through `record_audit`, the one
    /// place an audit row is written.
    pub async fn insert<'e>(&self, executor: impl PgExecutor<'e>) -> Result<(), StoreError> {
        sqlx::query!(
            "SELECT record_audit($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            self.tenant_id,
            self.request_id,
            self.trace_id,
            self.session_id,
            self.turn_id,
            self.actor,
            self.action,
            self.outcome,
            &self.details,
            self.dedupe_key,
        )
        .fetch_one(executor)
        .await?;
        Ok(())
    }
}

impl Store {
    pub async fn audit(&self, entry: &AuditEntry<'_>) -> Result<(), StoreError> {
        entry.insert(&self.pool).await
    }
}

/// Which audit rows to read (every field narrows; none set reads them all).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub tenant_id: Option<String>,
    pub session_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub actor: Option<String>,
    /// An action (`session.delete`) or, ending in `.*`, a family (`schedule.*`).
    pub action: Option<String>,
    /// Rows after this id.
    pub after: i64,
    pub limit: i64,
}

impl Store {
    /// Audit rows matching `filter`, oldest first.
    pub async fn audit_records(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>, StoreError> {
        let action_prefix = filter.action.as_deref().and_then(|a| a.strip_suffix('*'));
        let action = filter.action.as_deref().filter(|a| !a.ends_with('*'));
        Ok(sqlx::query_as!(
            AuditRecord,
            r#"SELECT id, tenant_id, request_id, trace_id, session_id, turn_id, actor, action, outcome, details, created_at
               FROM audit_log
               WHERE id > $1
                 AND ($2::text IS NULL OR tenant_id = $2)
                 AND ($3::uuid IS NULL OR session_id = $3)
                 AND ($4::text IS NULL OR request_id = $4)
                 AND ($5::text IS NULL OR actor = $5)
                 AND ($6::text IS NULL OR action = $6)
                 AND ($7::text IS NULL OR starts_with(action, $7))
               ORDER BY id
               LIMIT $8"#,
            filter.after,
            filter.tenant_id.as_deref(),
            filter.session_id,
            filter.request_id.as_deref(),
            filter.actor.as_deref(),
            action,
            action_prefix,
            filter.limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
