//! The baseline's activity (see `soma_workflows::baseline`).

use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use soma_workflows::activities::defs;

pub struct EmptyStepActivities;

#[activities]
impl EmptyStepActivities {
    #[activity(definition = defs::EmptyStep)]
    pub async fn empty_step(_ctx: ActivityContext) -> Result<(), ActivityError> {
        Ok(())
    }
}
