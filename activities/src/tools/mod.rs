//! `ToolActivities`: the steps of a tool call, holding the store, the policy and the tools'
//! clients ([`runners`]). Each is safe to run again: statuses only move forward, events and
//! audit rows are keyed by the call.

pub mod runners;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use soma_contract::events::{ToolApprovalRequired, ToolCall, ToolResult};
use soma_contract::api::{CatalogRefreshed, McpServerListing};
use soma_contract::memory::MemoryPayload;
use soma_contract::{MemoryRole, SessionEvent, ToolCallRef, ToolCallStatus};
use soma_core::MemoryBackend;
use soma_core::store::{AuditEntry, CatalogTool, Store, StoreError, ToolCallRow};
use soma_core::tool_inputs;
use soma_workflows::activities::{ApprovalRequest, FinishToolCall, ToolPlan, ToolProfile, defs};

use crate::failure::Classify;
use crate::memory::{MemorySettings, Origin, Remembered, owe_memory_write};
use crate::policy::{Decision, Policy, PolicyInput, TOOL_EXECUTE};
use crate::session::WORKER_ACTOR;
pub use runners::{ToolError, ToolSettings};

/// How often a running tool heartbeats, and how often a call waiting for a slot looks again.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

pub struct ToolActivitiesImpl {
    store: Store,
    policy: Arc<Policy>,
    settings: ToolSettings,
    http: reqwest::Client,
    memory: MemoryBackend,
    /// Where the results of tools that are remembered go (`remember_results`).
    memory_settings: MemorySettings,
}

impl ToolActivitiesImpl {
    pub fn new(
        store: Store,
        policy: Arc<Policy>,
        settings: ToolSettings,
        memory: MemoryBackend,
        memory_settings: MemorySettings,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client builds");
        Self { store, policy, settings, http, memory, memory_settings }
    }

    /// Puts the built-in tools and the MCP servers' tools in the catalog, and removes the MCP
    /// tools no longer offered (at start, and on demand through `ToolCatalogRefreshWorkflow`).
    /// A server that cannot be listed keeps its tools as they were.
    pub async fn refresh(&self) -> Result<CatalogRefreshed, StoreError> {
        let mut entries = runners::builtin_catalog();
        let (mut servers, mut answered) = (Vec::new(), Vec::new());
        for (server, listing) in runners::mcp_catalog(&self.settings).await {
            let (tools, error) = match listing {
                Ok(tools) => {
                    answered.push(server.clone());
                    (tools, None)
                }
                Err(error) => (Vec::new(), Some(error)),
            };
            servers.push(McpServerListing { name: server, tools: tools.len() as u32, error });
            entries.extend(tools);
        }
        for entry in &entries {
            self.store.upsert_tool(entry).await?;
        }
        let configured: Vec<String> = self.settings.mcp_servers.keys().cloned().collect();
        let offered: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
        let retired = self.store.retire_mcp_tools(&configured, &answered, &offered).await?;
        Ok(CatalogRefreshed { tools: entries.len() as u32, retired, servers })
    }

    async fn call_row(&self, call: &ToolCallRef) -> Result<ToolCallRow, ActivityError> {
        self.store
            .tool_call(&call.tenant_id, call.tool_call_id)
            .await
            .classify()?
            .ok_or(StoreError::ToolCallNotFound)
            .classify()
    }
}

impl ToolActivitiesImpl {
    /// Remembers a succeeded call's result like a message, if its tool says so
    /// (`remember_results`): `{tool}({arguments}) → {output}`, the output cut as in `tool.result`.
    async fn remember_result(&self, ctx: &ActivityContext, call: &ToolCallRef, row: &ToolCallRow) -> Result<(), ActivityError> {
        let tool = self.store.tenant_tool(&call.tenant_id, &row.tool_name).await.classify()?;
        if !tool.is_some_and(|tool| tool.remember_results) {
            return Ok(());
        }
        let (output, _) = preview(row.output.as_deref().unwrap_or_default(), ToolResult::PREVIEW_BYTES);
        let item = Remembered {
            id: call.tool_call_id,
            kind: MemoryPayload::TOOL_RESULT,
            role: MemoryRole::Tool,
            content: format!("{}({}) → {output}", row.tool_name, row.arguments),
            persona_id: None,
            stored_at: row.created_at,
        };
        let origin = Origin {
            tenant_id: call.tenant_id.clone(),
            session_id: call.session_id,
            turn_id: call.turn_id,
            request_id: call.request_id.clone(),
            trace_id: call.trace_id.clone(),
        };
        owe_memory_write(&self.store, ctx, &self.memory_settings, &origin, item).await?;
        Ok(())
    }
}

fn profile(tool: &CatalogTool) -> ToolProfile {
    ToolProfile {
        timeout_ms: tool.timeout_ms.max(1) as u64,
        max_attempts: tool.max_attempts.max(1) as u32,
        instant: runners::is_instant(tool),
    }
}

#[activities]
impl ToolActivitiesImpl {
    #[activity(definition = defs::RefreshToolCatalog)]
    pub async fn refresh_tool_catalog(self: Arc<Self>, _ctx: ActivityContext) -> Result<CatalogRefreshed, ActivityError> {
        self.refresh().await.classify()
    }

    #[activity(definition = defs::PrepareToolCall)]
    pub async fn prepare_tool_call(
        self: Arc<Self>,
        _ctx: ActivityContext,
        call: ToolCallRef,
    ) -> Result<ToolPlan, ActivityError> {
        let row = self.call_row(&call).await?;
        let event = SessionEvent::ToolCall(ToolCall {
            tool_call_id: call.tool_call_id,
            tool: row.tool_name.clone(),
            arguments: row.arguments.clone(),
            round: row.round.map(|r| r as u32),
        });
        self.store.append_events(&call.scope(), &[event]).await.classify()?;
        let refused = |status, reason: String| Ok(ToolPlan::Refused { status, reason });
        let Some(tool) = self.store.tenant_tool(&call.tenant_id, &row.tool_name).await.classify()? else {
            return refused(ToolCallStatus::Failed, format!("there is no tool called {}", row.tool_name));
        };
        if !tool.enabled {
            return refused(ToolCallStatus::Failed, format!("the tool {} is disabled for this tenant", tool.name));
        }
        let inputs = match tool_inputs::parse_arguments(&row.arguments) {
            Ok(inputs) => inputs,
            Err(reason) => return refused(ToolCallStatus::Failed, reason),
        };
        if let Err(reason) = tool_inputs::validate(&tool.input_schema, &inputs) {
            return refused(ToolCallStatus::Failed, reason);
        }
        let input = PolicyInput {
            tenant: &call.tenant_id,
            persona_id: None,
            action: TOOL_EXECUTE,
            resource: &tool.name,
            context: json!({ "session_id": call.session_id, "turn_id": call.turn_id, "inputs": inputs }),
        };
        if let Decision::Deny(reason) = self.policy.decide(&input).await {
            return refused(ToolCallStatus::Denied, reason);
        }
        let requires_approval = tool.requires_approval || self.settings.approval_required.contains(&tool.name);
        let approval_timeout_ms = requires_approval.then_some(tool.approval_timeout_ms.max(1) as u64);
        Ok(ToolPlan::Run { profile: profile(&tool), approval_timeout_ms })
    }

    #[activity(definition = defs::RequestApproval)]
    pub async fn request_approval(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: ApprovalRequest,
    ) -> Result<(), ActivityError> {
        let call = &input.call;
        let status = self
            .store
            .set_tool_call_status(&call.tenant_id, call.tool_call_id, ToolCallStatus::AwaitingApproval, None, None)
            .await
            .classify()?;
        if status != ToolCallStatus::AwaitingApproval {
            return Ok(());
        }
        let row = self.call_row(call).await?;
        let expires_at = chrono::Utc::now() + chrono::Duration::milliseconds(input.timeout_ms as i64);
        let event = SessionEvent::ToolApprovalRequired(ToolApprovalRequired {
            tool_call_id: call.tool_call_id,
            tool: row.tool_name,
            arguments: row.arguments,
            expires_at,
        });
        self.store.append_events(&call.scope(), &[event]).await.classify()
    }

    #[activity(definition = defs::ExecuteTool)]
    pub async fn execute_tool(
        self: Arc<Self>,
        ctx: ActivityContext,
        call: ToolCallRef,
    ) -> Result<(), ActivityError> {
        let row = self.call_row(&call).await?;
        if row.status.is_final() {
            // An earlier attempt finished it.
            return Ok(());
        }
        let tool = self
            .store
            .tenant_tool(&call.tenant_id, &row.tool_name)
            .await
            .classify()?
            .ok_or_else(|| ToolError::Permanent(format!("the tool {} left the catalog", row.tool_name)))
            .classify()?;
        let timeout = Duration::from_millis(profile(&tool).timeout_ms);
        // A slot first: at most max_concurrent of the tenant's calls of this tool run at once.
        while !self
            .store
            .acquire_tool_slot(&call.tenant_id, call.tool_call_id, &tool.name, tool.max_concurrent, timeout)
            .await
            .classify()?
        {
            ctx.record_heartbeat(()).await?;
            tokio::select! {
                _ = ctx.cancelled() => return Err(ActivityError::cancelled()),
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        let inputs = tool_inputs::parse_arguments(&row.arguments).map_err(ToolError::Permanent).classify()?;
        let key = call.tool_call_id.to_string();
        let clients = runners::Clients { settings: &self.settings, http: &self.http, memory: &self.memory };
        let this_call = runners::Call { tenant_id: &call.tenant_id, idempotency_key: &key, timeout };
        let running = runners::run(&clients, &tool, &inputs, &this_call);
        tokio::pin!(running);
        let output = loop {
            tokio::select! {
                output = &mut running => break output.classify()?,
                _ = ctx.cancelled() => return Err(ActivityError::cancelled()),
                _ = tokio::time::sleep(HEARTBEAT_EVERY) => ctx.record_heartbeat(()).await?,
            }
        };
        self.store
            .set_tool_call_status(&call.tenant_id, call.tool_call_id, ToolCallStatus::Succeeded, Some(&output), None)
            .await
            .classify()?;
        Ok(())
    }

    #[activity(definition = defs::FinishToolCall)]
    pub async fn finish_tool_call(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: FinishToolCall,
    ) -> Result<ToolCallStatus, ActivityError> {
        let call = &input.call;
        let status = self
            .store
            .set_tool_call_status(&call.tenant_id, call.tool_call_id, input.status, None, input.reason.as_deref())
            .await
            .classify()?;
        let row = self.call_row(call).await?;
        let (output, truncated) = match &row.output {
            Some(output) if status == ToolCallStatus::Succeeded => {
                let (preview, truncated) = preview(output, ToolResult::PREVIEW_BYTES);
                (Some(preview), truncated)
            }
            _ => (None, false),
        };
        let reason = if status == ToolCallStatus::Succeeded { None } else { row.error.clone() };
        let details = json!({ "tool": row.tool_name, "tool_call_id": call.tool_call_id, "reason": reason,
                              "workflow_id": row.workflow_id });
        let entry = AuditEntry {
            tenant_id: &call.tenant_id,
            request_id: Some(&call.request_id),
            trace_id: call.trace_id.as_deref(),
            session_id: Some(call.session_id),
            turn_id: call.turn_id,
            actor: WORKER_ACTOR,
            action: TOOL_EXECUTE,
            outcome: status.as_str(),
            details,
            dedupe_key: None,
        };
        self.store.audit(&entry.once(format!("{}:tool.execute", call.tool_call_id))).await.classify()?;
        let event = SessionEvent::ToolResult(ToolResult {
            tool_call_id: call.tool_call_id,
            tool: row.tool_name.clone(),
            status,
            output,
            truncated,
            reason,
        });
        self.store.append_events(&call.scope(), &[event]).await.classify()?;
        if status == ToolCallStatus::Succeeded {
            self.remember_result(&ctx, call, &row).await?;
        }
        Ok(status)
    }
}

/// The first `limit` bytes of `text` (on a character boundary), and whether it was cut.
pub fn preview(text: &str, limit: usize) -> (String, bool) {
    if text.len() <= limit {
        return (text.to_string(), false);
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    (text[..end].to_string(), true)
}
