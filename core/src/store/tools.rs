//! `tools`, `tool_tenant_overrides` and `tool_calls`: the catalog as each tenant sees it
//! (overrides applied in one SQL function, `tenant_tools`), and every call with its inputs,
//! decision and output, so workflows carry only the call's ID.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use soma_contract::api::ToolCallView;
use soma_contract::{ApprovalDecision, ToolCallRef, ToolCallStatus, ToolKind};

use super::{Store, StoreError};

/// A catalog entry, with the tenant's overrides applied when read for a tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct CatalogTool {
    pub name: String,
    pub description: String,
    pub input_schema: Value,
    pub kind: ToolKind,
    /// `http`: the URL the inputs go to; `mcp`: the server's name in the config.
    pub endpoint: Option<String>,
    /// `mcp`: the tool's name on its server.
    pub remote_name: Option<String>,
    pub enabled: bool,
    pub requires_approval: bool,
    pub timeout_ms: i32,
    pub max_attempts: i32,
    pub approval_timeout_ms: i32,
    pub max_concurrent: i32,
    /// Its results are remembered like messages (a memory write each).
    pub remember_results: bool,
}

impl CatalogTool {
    /// A built-in tool with the default profile.
    pub fn builtin(name: &str, description: &str, input_schema: Value) -> Self {
        CatalogTool {
            name: name.into(),
            description: description.into(),
            input_schema,
            kind: ToolKind::Builtin,
            endpoint: None,
            remote_name: None,
            enabled: true,
            requires_approval: false,
            timeout_ms: 30_000,
            max_attempts: 3,
            approval_timeout_ms: 600_000,
            max_concurrent: 10,
            remember_results: false,
        }
    }
}

/// A call the model asked for in a round of a turn, with the ID and workflow ID it gets if
/// it is new.
#[derive(Debug, Clone)]
pub struct ModelToolCall {
    pub id: Uuid,
    pub workflow_id: String,
    pub provider_call_id: String,
    pub tool_name: String,
    pub arguments: String,
}

/// A call of an earlier round, as the next model call is told about it.
#[derive(Debug, Clone)]
pub struct RoundCall {
    pub round: i32,
    pub provider_call_id: String,
    pub tool_name: String,
    pub arguments: String,
    pub status: ToolCallStatus,
    pub output: Option<String>,
    pub error: Option<String>,
}

/// A stored call, as its workflow's steps read it.
#[derive(Debug, Clone)]
pub struct ToolCallRow {
    pub session_id: Uuid,
    pub turn_id: Option<Uuid>,
    pub round: Option<i32>,
    pub tool_name: String,
    pub arguments: String,
    pub status: ToolCallStatus,
    pub approval: Option<ApprovalDecision>,
    pub decision_reason: Option<String>,
    pub output: Option<String>,
    pub error: Option<String>,
    pub workflow_id: String,
    pub created_at: DateTime<Utc>,
}

/// A recorded decision that its call's workflow may not have heard.
#[derive(Debug, Clone)]
pub struct UndeliveredDecision {
    pub tenant_id: String,
    pub tool_call_id: Uuid,
    pub session_id: Uuid,
    pub turn_id: Option<Uuid>,
    pub tool_name: String,
    pub workflow_id: String,
    pub decision: ApprovalDecision,
    pub decided_by: String,
    pub decision_reason: Option<String>,
}

/// Why a decision on a tool call was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("tool call not found")]
    NotFound,
    #[error("the tool call is not waiting for approval (it is {0})")]
    NotWaiting(ToolCallStatus),
    #[error("the tool call was already {0}")]
    AlreadyDecided(ApprovalDecision),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for DecisionError {
    fn from(err: sqlx::Error) -> Self {
        DecisionError::Store(err.into())
    }
}

impl Store {
    /// Adds a tool to the catalog or updates its definition (what the code or the config
    /// says, at every worker start); the operator's switches and profile (`enabled`,
    /// `requires_approval`, timeouts, attempts, concurrency) are set only when the tool is new.
    pub async fn upsert_tool(&self, tool: &CatalogTool) -> Result<(), StoreError> {
        self.write_tool(tool, true).await
    }

    /// Removes the MCP tools no longer offered: those of a server that answered (`answered`)
    /// but no longer lists them (`offered` holds every name listed now), and those of servers
    /// no longer `configured`. Returns how many.
    pub async fn retire_mcp_tools(
        &self,
        configured: &[String],
        answered: &[String],
        offered: &[String],
    ) -> Result<u64, StoreError> {
        Ok(sqlx::query!(
            r#"DELETE FROM tools
               WHERE kind = 'mcp'
                 AND (endpoint <> ALL($1::text[]) OR (endpoint = ANY($2::text[]) AND name <> ALL($3::text[])))"#,
            configured,
            answered,
            offered,
        )
        .execute(&self.pool)
        .await?
        .rows_affected())
    }

    /// Replaces a tool's whole entry, switches and profile included (operators and tests).
    pub async fn put_tool(&self, tool: &CatalogTool) -> Result<(), StoreError> {
        self.write_tool(tool, false).await
    }

    async fn write_tool(&self, tool: &CatalogTool, keep_settings: bool) -> Result<(), StoreError> {
        sqlx::query!(
            r#"INSERT INTO tools (name, description, input_schema, kind, endpoint, remote_name, enabled,
                                  requires_approval, timeout_ms, max_attempts, approval_timeout_ms, max_concurrent,
                                  remember_results)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $14)
               ON CONFLICT (name) DO UPDATE SET
                   description = excluded.description, input_schema = excluded.input_schema, kind = excluded.kind,
                   endpoint = excluded.endpoint, remote_name = excluded.remote_name, updated_at = now(),
                   enabled = CASE WHEN $13 THEN tools.enabled ELSE excluded.enabled END,
                   requires_approval = CASE WHEN $13 THEN tools.requires_approval ELSE excluded.requires_approval END,
                   timeout_ms = CASE WHEN $13 THEN tools.timeout_ms ELSE excluded.timeout_ms END,
                   max_attempts = CASE WHEN $13 THEN tools.max_attempts ELSE excluded.max_attempts END,
                   approval_timeout_ms = CASE WHEN $13 THEN tools.approval_timeout_ms ELSE excluded.approval_timeout_ms END,
                   max_concurrent = CASE WHEN $13 THEN tools.max_concurrent ELSE excluded.max_concurrent END,
                   remember_results = CASE WHEN $13 THEN tools.remember_results ELSE excluded.remember_results END"#,
            tool.name,
            tool.description,
            tool.input_schema,
            tool.kind as ToolKind,
            tool.endpoint,
            tool.remote_name,
            tool.enabled,
            tool.requires_approval,
            tool.timeout_ms,
            tool.max_attempts,
            tool.approval_timeout_ms,
            tool.max_concurrent,
            keep_settings,
            tool.remember_results,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Switches a tool on or off for one tenant, or requires (or waives) approval there; `None`
    /// leaves the catalog's value.
    pub async fn set_tool_override(
        &self,
        tenant_id: &str,
        tool_name: &str,
        enabled: Option<bool>,
        requires_approval: Option<bool>,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            r#"INSERT INTO tool_tenant_overrides (tenant_id, tool_name, enabled, requires_approval)
               VALUES ($1, $2, $3, $4)
               ON CONFLICT (tenant_id, tool_name) DO UPDATE SET
                   enabled = excluded.enabled, requires_approval = excluded.requires_approval"#,
            tenant_id,
            tool_name,
            enabled,
            requires_approval,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The tenant's tools, enabled or not, by name.
    pub async fn tenant_tools(&self, tenant_id: &str) -> Result<Vec<CatalogTool>, StoreError> {
        self.catalog(tenant_id, None).await
    }

    /// One tool as the tenant sees it.
    pub async fn tenant_tool(&self, tenant_id: &str, name: &str) -> Result<Option<CatalogTool>, StoreError> {
        Ok(self.catalog(tenant_id, Some(name)).await?.pop())
    }

    /// The tenant's view of the catalog: every tool, or the one called `name`.
    async fn catalog(&self, tenant_id: &str, name: Option<&str>) -> Result<Vec<CatalogTool>, StoreError> {
        Ok(sqlx::query_as!(
            CatalogTool,
            r#"SELECT name AS "name!", description AS "description!", input_schema AS "input_schema!",
                      kind AS "kind!: ToolKind", endpoint, remote_name, enabled AS "enabled!",
                      requires_approval AS "requires_approval!", timeout_ms AS "timeout_ms!",
                      max_attempts AS "max_attempts!", approval_timeout_ms AS "approval_timeout_ms!",
                      max_concurrent AS "max_concurrent!", remember_results AS "remember_results!"
               FROM tenant_tools($1) WHERE $2::text IS NULL OR name = $2 ORDER BY name"#,
            tenant_id,
            name,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Stores the calls the model asked for in a round of a turn, once (a retried step finds
    /// the first attempt's); returns their IDs in the model's order.
    pub async fn record_round_calls(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        turn_id: Uuid,
        request_id: &str,
        trace_id: Option<&str>,
        round: i32,
        calls: &[ModelToolCall],
    ) -> Result<Vec<Uuid>, StoreError> {
        let mut ids = Vec::with_capacity(calls.len());
        let mut tx = self.pool.begin().await?;
        for (index, call) in calls.iter().enumerate() {
            let stored = sqlx::query_scalar!(
                r#"WITH ins AS (
                       INSERT INTO tool_calls (id, tenant_id, session_id, turn_id, round, index_in_round,
                                               provider_call_id, tool_name, arguments, request_id, trace_id, workflow_id)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                       ON CONFLICT (turn_id, round, index_in_round) DO NOTHING
                       RETURNING id)
                   SELECT id AS "id!" FROM ins
                   UNION ALL
                   SELECT id FROM tool_calls WHERE turn_id = $4 AND round = $5 AND index_in_round = $6
                   LIMIT 1"#,
                call.id,
                tenant_id,
                session_id,
                turn_id,
                round,
                index as i32,
                call.provider_call_id,
                call.tool_name,
                call.arguments,
                request_id,
                trace_id,
                call.workflow_id,
            )
            .fetch_one(&mut *tx)
            .await?;
            ids.push(stored);
        }
        tx.commit().await?;
        Ok(ids)
    }

    /// Stores a call requested directly (`POST /v1/tool/request`).
    pub async fn insert_direct_call(
        &self,
        call: &ToolCallRef,
        workflow_id: &str,
        tool_name: &str,
        arguments: &str,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            r#"INSERT INTO tool_calls (id, tenant_id, session_id, tool_name, arguments, request_id, trace_id, workflow_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"#,
            call.tool_call_id,
            call.tenant_id,
            call.session_id,
            tool_name,
            arguments,
            call.request_id,
            call.trace_id,
            workflow_id,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Removes a direct call whose workflow could not be started.
    pub async fn withdraw_direct_call(&self, tenant_id: &str, tool_call_id: Uuid) -> Result<(), StoreError> {
        sqlx::query!(
            "DELETE FROM tool_calls WHERE id = $1 AND tenant_id = $2 AND turn_id IS NULL AND status = 'requested'",
            tool_call_id,
            tenant_id,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn tool_call(&self, tenant_id: &str, tool_call_id: Uuid) -> Result<Option<ToolCallRow>, StoreError> {
        Ok(sqlx::query_as!(
            ToolCallRow,
            r#"SELECT session_id, turn_id, round, tool_name, arguments, status AS "status: ToolCallStatus",
                      approval AS "approval: ApprovalDecision", decision_reason, output, error, workflow_id, created_at
               FROM tool_calls WHERE id = $1 AND tenant_id = $2"#,
            tool_call_id,
            tenant_id,
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A call as the API shows it, whole output included.
    pub async fn tool_call_view(&self, tenant_id: &str, tool_call_id: Uuid) -> Result<Option<ToolCallView>, StoreError> {
        Ok(sqlx::query_as!(
            ToolCallView,
            r#"SELECT id AS tool_call_id, session_id, turn_id, tool_name AS tool, arguments,
                      status AS "status: ToolCallStatus", output, error, workflow_id, created_at, finished_at
               FROM tool_calls WHERE id = $1 AND tenant_id = $2"#,
            tool_call_id,
            tenant_id,
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Moves a call that has no result yet to `status` (a final status records `output` or
    /// `error` with it). Returns the call's status afterwards: a call that already had its
    /// result keeps it, so a retried step cannot overwrite it.
    pub async fn set_tool_call_status(
        &self,
        tenant_id: &str,
        tool_call_id: Uuid,
        status: ToolCallStatus,
        output: Option<&str>,
        error: Option<&str>,
    ) -> Result<ToolCallStatus, StoreError> {
        let row = sqlx::query_scalar!(
            r#"WITH upd AS (
                   UPDATE tool_calls SET status = $3, output = coalesce($4, output), error = coalesce($5, error),
                          finished_at = CASE WHEN $6 THEN now() END
                   WHERE id = $1 AND tenant_id = $2
                     AND status IN ('requested', 'awaiting_approval', 'running')
                   RETURNING status)
               SELECT status AS "status!: ToolCallStatus" FROM upd
               UNION ALL
               SELECT status FROM tool_calls WHERE id = $1 AND tenant_id = $2
               LIMIT 1"#,
            tool_call_id,
            tenant_id,
            status as ToolCallStatus,
            output,
            error,
            status.is_final(),
        )
        .fetch_optional(&self.pool)
        .await?;
        row.ok_or(StoreError::ToolCallNotFound)
    }

    /// Takes one of the tool's execution slots for the tenant (its profile's concurrency):
    /// marks the call running if fewer than `max_concurrent` of the tenant's calls of that tool
    /// run, counting only those started within `timeout` (one whose worker died frees its slot
    /// when its time is up). A call that already runs keeps its slot.
    pub async fn acquire_tool_slot(
        &self,
        tenant_id: &str,
        tool_call_id: Uuid,
        tool_name: &str,
        max_concurrent: i32,
        timeout: Duration,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0))", tenant_id, tool_name)
            .fetch_one(&mut *tx)
            .await?;
        let since = Utc::now() - chrono::Duration::from_std(timeout).unwrap_or_default();
        let taken = sqlx::query_scalar!(
            r#"WITH running AS (
                   SELECT count(*) AS n FROM tool_calls
                   WHERE tenant_id = $1 AND tool_name = $3 AND status = 'running' AND started_at > $5 AND id <> $2)
               UPDATE tool_calls SET status = 'running', started_at = coalesce(started_at, now())
               WHERE id = $2 AND tenant_id = $1
                 AND (status = 'running' OR (status IN ('requested', 'awaiting_approval') AND (SELECT n FROM running) < $4))
               RETURNING id"#,
            tenant_id,
            tool_call_id,
            tool_name,
            i64::from(max_concurrent),
            since,
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(taken.is_some())
    }

    /// Records a person's decision on a call that waits for one, once.
    pub async fn decide_tool_call(
        &self,
        tenant_id: &str,
        tool_call_id: Uuid,
        decision: ApprovalDecision,
        decided_by: &str,
        reason: Option<&str>,
    ) -> Result<ToolCallRow, DecisionError> {
        let decided = sqlx::query_scalar!(
            r#"UPDATE tool_calls SET approval = $3, decided_by = $4, decision_reason = $5, decided_at = now()
               WHERE id = $1 AND tenant_id = $2 AND status = 'awaiting_approval' AND approval IS NULL
               RETURNING id"#,
            tool_call_id,
            tenant_id,
            decision as ApprovalDecision,
            decided_by,
            reason,
        )
        .fetch_optional(&self.pool)
        .await?;
        let row = self.tool_call(tenant_id, tool_call_id).await?.ok_or(DecisionError::NotFound)?;
        match (decided, row.approval) {
            (Some(_), _) => Ok(row),
            (None, Some(earlier)) => Err(DecisionError::AlreadyDecided(earlier)),
            (None, None) => Err(DecisionError::NotWaiting(row.status)),
        }
    }

    /// Takes back a decision that could not be delivered, so it can be sent again.
    pub async fn undo_decision(&self, tenant_id: &str, tool_call_id: Uuid) -> Result<(), StoreError> {
        sqlx::query!(
            r#"UPDATE tool_calls SET approval = NULL, decided_by = NULL, decision_reason = NULL, decided_at = NULL
               WHERE id = $1 AND tenant_id = $2 AND status = 'awaiting_approval'"#,
            tool_call_id,
            tenant_id,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Decisions recorded more than `quiet_for` ago on calls that still wait for one: their
    /// signal was never delivered (the api died between recording and signalling), oldest first.
    pub async fn undelivered_decisions(
        &self,
        quiet_for: Duration,
        limit: i64,
    ) -> Result<Vec<UndeliveredDecision>, StoreError> {
        Ok(sqlx::query_as!(
            UndeliveredDecision,
            r#"SELECT tenant_id, id AS tool_call_id, session_id, turn_id, tool_name, workflow_id,
                      approval AS "decision!: ApprovalDecision", decided_by AS "decided_by!", decision_reason
               FROM tool_calls
               WHERE status = 'awaiting_approval' AND approval IS NOT NULL
                 AND decided_at < now() - make_interval(secs => $1)
               ORDER BY decided_at LIMIT $2"#,
            quiet_for.as_secs_f64(),
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The calls of the turn's rounds before `before_round`, in order, for the next model call.
    pub async fn round_calls(
        &self,
        tenant_id: &str,
        turn_id: Uuid,
        before_round: i32,
    ) -> Result<Vec<RoundCall>, StoreError> {
        Ok(sqlx::query_as!(
            RoundCall,
            r#"SELECT round AS "round!", provider_call_id AS "provider_call_id!", tool_name, arguments,
                      status AS "status: ToolCallStatus", output, error
               FROM tool_calls WHERE turn_id = $1 AND tenant_id = $2 AND round < $3
               ORDER BY round, index_in_round"#,
            turn_id,
            tenant_id,
            before_round,
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
