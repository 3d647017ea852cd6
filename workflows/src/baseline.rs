//! `EmptyStepsWorkflow`: the orchestration floor. It runs as many activities as a chat turn,
//! each doing nothing, so a benchmark can put the chat turn's rate next to what the Temporal
//! server allows on the same machine in the same run.
#![allow(unreachable_pub)]

use std::time::Duration;

use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{ActivityOptions, WorkflowContext, WorkflowContextView, WorkflowResult};

use crate::activities::BaselineActivities;

#[workflow]
pub struct EmptyStepsWorkflow {
    steps: u32,
}

#[workflow_methods]
impl EmptyStepsWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, steps: u32) -> Self {
        Self { steps }
    }

    #[run(name = "EmptyStepsWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<u32> {
        let steps = ctx.state(|s| s.steps);
        for _ in 0..steps {
            ctx.execute_activity(
                BaselineActivities::empty_step,
                (),
                ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30)).build(),
            )
            .await?;
        }
        Ok(steps)
    }
}
