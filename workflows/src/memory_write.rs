//! `MemoryWriteWorkflow`: one memory write, step by step as in the design's table.
//!
//! policy gate (`memory.write`, fail closed) → `remember` with the idempotency key, retried
//! with exponential backoff within the write's budget → `memory.write` event. A write that
//! exhausts the budget, fails for good or is cancelled becomes a dead letter (payload, error,
//! attempts) that an operator can replay under the same key: nothing is dropped silently.
#![allow(unreachable_pub)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_client::{WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowContextView, WorkflowResult};

use soma_contract::memory::MemoryRetry;
use soma_contract::{MemoryWriteRef, MemoryWriteStatus, WorkKind};

use crate::activities::{DeadLetterInput, MemoryActivities};
use crate::{steps, visibility};

/// Input of `MemoryWriteWorkflow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryWriteInput {
    pub write: MemoryWriteRef,
    pub retry: MemoryRetry,
}

#[workflow]
pub struct MemoryWriteWorkflow {
    input: MemoryWriteInput,
}

#[workflow_methods]
impl MemoryWriteWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, input: MemoryWriteInput) -> Self {
        Self { input }
    }

    /// Returns how the write ended: delivered, denied, or dead-lettered.
    #[run(name = "MemoryWriteWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<MemoryWriteStatus> {
        let MemoryWriteInput { write, retry } = ctx.state(|s| s.input.clone());
        let allowed =
            ctx.execute_local_activity(MemoryActivities::check_memory_write, write.clone(), steps::local_database());
        if !allowed.await? {
            return Ok(MemoryWriteStatus::Denied);
        }
        let budget = Duration::from_secs(retry.budget_secs);
        let max_interval = Duration::from_secs(retry.max_interval_secs);
        match ctx.execute_activity(MemoryActivities::remember, write.clone(), steps::memory_write(max_interval, budget)).await {
            Ok(()) => Ok(MemoryWriteStatus::Delivered),
            Err(err) => {
                let reason = steps::failure_reason(&err);
                ctx.execute_activity(
                    MemoryActivities::dead_letter_memory_write,
                    DeadLetterInput { write, reason },
                    steps::database_after_cancel(),
                )
                .await?;
                Ok(MemoryWriteStatus::DeadLettered)
            }
        }
    }
}

impl MemoryWriteWorkflow {
    /// The readable workflow ID of a write: `memory/{idempotency key}`.
    pub fn workflow_id(key: &str) -> String {
        format!("memory/{key}")
    }

    /// How a write is started: under its key, reusing a running one; a finished write may be
    /// started again (a dead letter's replay: the key makes it change nothing if delivered).
    pub fn start_options(task_queue: &str, write: &MemoryWriteRef) -> WorkflowStartOptions {
        WorkflowStartOptions::new(task_queue.to_string(), Self::workflow_id(&write.key))
            .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
            .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
            .search_attributes(visibility::search_attributes(WorkKind::Memory, &write.tenant_id, write.session_id))
            .memo(visibility::memo(&write.request_id, "memory write"))
            .build()
    }
}
