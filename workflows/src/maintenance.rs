//! `MaintenanceWorkflow`: one run of a periodic job, started by its Temporal Schedule (or by
//! `trigger` from the admin API, `soma schedules trigger`, the Temporal UI). It handles the job
//! in bounded batches, one activity each, until nothing is left or the run's batch budget is
//! spent (the next tick goes on), and returns a report an operator can read in the UI.
#![allow(unreachable_pub)]

use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowContextView, WorkflowResult};

use soma_contract::api::{MaintenanceBatch, MaintenanceReport};
use soma_contract::{MaintenanceJob, WorkKind};

use crate::activities::{MaintenanceActivities, MemoryActivities};
use crate::{steps, visibility};

/// Batches one run may take; what is left waits for the next tick, so a backlog never makes
/// one run (and its history) unbounded.
const MAX_BATCHES: u32 = 50;

#[workflow]
pub struct MaintenanceWorkflow {
    job: MaintenanceJob,
}

#[workflow_methods]
impl MaintenanceWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, job: MaintenanceJob) -> Self {
        Self { job }
    }

    #[run(name = "MaintenanceWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<MaintenanceReport> {
        let job = ctx.state(|s| s.job);
        // A schedule's action cannot carry search attributes: the run labels itself.
        ctx.upsert_search_attributes(visibility::kind_only(WorkKind::Maintenance));
        let mut report = MaintenanceReport { job, items: 0, batches: 0, summary: String::new() };
        loop {
            let options = steps::database();
            let batch: MaintenanceBatch = match job {
                MaintenanceJob::PublishMetrics => {
                    ctx.execute_activity(MaintenanceActivities::publish_gauges, (), options).await?
                }
                MaintenanceJob::CleanupSessions => {
                    ctx.execute_activity(MaintenanceActivities::delete_expired_sessions, (), options).await?
                }
                MaintenanceJob::CompactDeltas => {
                    ctx.execute_activity(MaintenanceActivities::compact_turn_deltas, (), options).await?
                }
                MaintenanceJob::ExpireUploads => {
                    ctx.execute_activity(MaintenanceActivities::remove_expired_uploads, (), options).await?
                }
                MaintenanceJob::RetryDeadLetters => {
                    ctx.execute_activity(MemoryActivities::replay_dead_letters, (), options).await?
                }
            };
            report.items += batch.items;
            report.batches += 1;
            report.summary = if report.batches == 1 {
                batch.summary
            } else {
                format!("{} items in {} batches; the last: {}", report.items, report.batches, batch.summary)
            };
            if !batch.more || report.batches >= MAX_BATCHES {
                return Ok(report);
            }
        }
    }
}
