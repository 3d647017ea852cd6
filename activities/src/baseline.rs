//! The baseline's activity (see `soma_workflows::baseline`).

use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use soma_workflows::activities::defs;

pub struct EmptyStepActivities;

#[activities]
impl EmptyStepActivities {
    #[activity(definition = defs::EmptyStep)]
    pub async fn empty_step(_ctx: ActivityContext) -> Result<u64, ActivityError> {
        let since_epoch =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Ok(since_epoch.as_micros() as u64)
    }
}
