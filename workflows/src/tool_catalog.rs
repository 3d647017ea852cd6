//! `ToolCatalogRefreshWorkflow`: refreshes the tool catalog on demand (`POST
//! /v1/admin/tools/refresh`, `soma tools --refresh`): the built-ins and every configured MCP
//! server's tools written, the MCP tools no longer offered removed. Workers do the same when
//! they start; this runs it on one of them while they run.
#![allow(unreachable_pub)]

use std::time::Duration;

use temporalio_client::{WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{ActivityOptions, WorkflowContext, WorkflowContextView, WorkflowResult};

use soma_contract::api::CatalogRefreshed;

use crate::activities::ToolActivities;
use crate::visibility;
use soma_contract::WorkKind;

#[workflow]
pub struct ToolCatalogRefreshWorkflow;

#[workflow_methods]
impl ToolCatalogRefreshWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, _input: ()) -> Self {
        Self
    }

    #[run(name = "ToolCatalogRefreshWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<CatalogRefreshed> {
        // Listing a slow MCP server may take a while; three tries in all.
        let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(60))
            .retry_policy(temporalio_common::RetryPolicy::builder().maximum_attempts(3).build())
            .build();
        Ok(ctx.execute_activity(ToolActivities::refresh_tool_catalog, (), options).await?)
    }
}

impl ToolCatalogRefreshWorkflow {
    /// One refresh at a time: a request while one runs joins it.
    pub const WORKFLOW_ID: &'static str = "tools/refresh";

    pub fn start_options(task_queue: &str) -> WorkflowStartOptions {
        WorkflowStartOptions::new(task_queue.to_string(), Self::WORKFLOW_ID)
            .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
            .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
            .search_attributes(temporalio_common::search_attributes::SearchAttributes::new(visibility::kind_only(WorkKind::Tool)))
            .build()
    }
}
