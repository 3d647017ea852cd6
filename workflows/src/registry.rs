//! Every workflow type this project runs, listed once: the worker registers them to run them,
//! the replay suite registers them to check recorded histories against the code.

use temporalio_sdk::workflow_replayer::WorkflowReplayerOptions;
use temporalio_sdk::workflows::WorkflowImplementation;
use temporalio_sdk::{WorkerOptions, WorkflowDefinitions, WorkflowRegistrationError};
use temporalio_common::WorkflowDefinition;

use crate::{
    ChatTurnWorkflow, MaintenanceWorkflow, MemoryWriteWorkflow, SessionDeletionWorkflow, ToolCatalogRefreshWorkflow,
    ToolExecutionWorkflow, UploadScanWorkflow,
};

/// Something workflows are registered on: a worker's options, a replayer's, or a bare set.
pub trait WorkflowRegistry {
    /// Registers the workflow `W`.
    fn register<W>(&mut self) -> Result<(), WorkflowRegistrationError>
    where
        W: WorkflowImplementation,
        <W::Run as WorkflowDefinition>::Input: Send;
}

/// Registers every workflow type on `registry`.
pub fn register_all(registry: &mut impl WorkflowRegistry) -> Result<(), WorkflowRegistrationError> {
    registry.register::<ChatTurnWorkflow>()?;
    registry.register::<SessionDeletionWorkflow>()?;
    registry.register::<ToolExecutionWorkflow>()?;
    registry.register::<ToolCatalogRefreshWorkflow>()?;
    registry.register::<MemoryWriteWorkflow>()?;
    registry.register::<UploadScanWorkflow>()?;
    registry.register::<MaintenanceWorkflow>()?;
    Ok(())
}

/// The type names of every workflow, sorted (what the Temporal UI's "Workflow Type" shows).
pub fn workflow_types() -> Vec<String> {
    let mut definitions = WorkflowDefinitions::new();
    register_all(&mut definitions).expect("each workflow type is registered once");
    let mut names: Vec<String> = definitions.workflow_definitions().map(|d| d.workflow_type.clone()).collect();
    names.sort();
    names
}

/// Each of these has its own `register_workflow::<W>()`, alike but for its return type.
macro_rules! registry_by_register_workflow {
    ($($target:ty),*) => {$(
        impl WorkflowRegistry for $target {
            fn register<W>(&mut self) -> Result<(), WorkflowRegistrationError>
            where
                W: WorkflowImplementation,
                <W::Run as WorkflowDefinition>::Input: Send,
            {
                self.register_workflow::<W>().map(|_| ())
            }
        }
    )*};
}

registry_by_register_workflow!(WorkflowDefinitions, WorkerOptions, WorkflowReplayerOptions);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workflow_type_is_listed_once() {
        let types = workflow_types();
        assert_eq!(types.len(), 7, "{types:?}");
        assert!(types.contains(&"ChatTurnWorkflow".to_string()), "{types:?}");
    }
}
