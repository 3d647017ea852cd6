//! The replay suite: every recorded history in `tests/histories/` replays against the current
//! workflow code without a non-determinism error, and every workflow type has at least one.
//! A change that would break turns in flight fails here; guard it with `ctx.patched(..)` (see
//! docs/architecture.md, "Changing a workflow") and record new histories with
//! `ops/record-histories`. Needs no server.

use std::collections::BTreeSet;

use soma_contract::MaintenanceJob;
use soma_tests::histories;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::workflow_replayer::{WorkflowReplayFailure, WorkflowReplayer, WorkflowReplayerOptions};
use temporalio_sdk::{WorkflowContext, WorkflowContextView, WorkflowResult};

#[tokio::test]
async fn every_recorded_history_replays_without_nondeterminism() {
    let recorded = histories::load(&histories::default_dir()).unwrap();
    let results = histories::replayer().replay_workflows(recorded.iter().map(|r| r.replayable())).await.unwrap();
    let failures: Vec<String> = recorded
        .iter()
        .zip(&results)
        .filter_map(|(r, result)| result.replay_failure.as_ref().map(|f| format!("{}: {f}", r.path.display())))
        .collect();
    assert!(failures.is_empty(), "{} of {} histories fail to replay:\n{}", failures.len(), recorded.len(), failures.join("\n"));

    let recorded_types: BTreeSet<&str> = recorded.iter().map(|r| r.workflow_type.as_str()).collect();
    let missing: Vec<String> =
        soma_workflows::workflow_types().into_iter().filter(|t| !recorded_types.contains(t.as_str())).collect();
    assert!(missing.is_empty(), "no recorded history of {missing:?}: record one with ops/record-histories");
}

/// `MaintenanceWorkflow` as an unguarded change would make it: it waits before its first
/// batch, so the commands it issues no longer match the recorded ones.
#[workflow]
struct ChangedMaintenance;

#[workflow_methods]
impl ChangedMaintenance {
    #[init]
    fn new(_ctx: &WorkflowContextView, _job: MaintenanceJob) -> Self {
        Self
    }

    #[run(name = "MaintenanceWorkflow")]
    async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<()> {
        let _ = ctx.timer(std::time::Duration::from_secs(1)).await;
        Ok(())
    }
}

/// The suite can fail: a changed workflow does not replay its recorded histories.
#[tokio::test]
async fn a_changed_workflow_fails_the_replay_of_its_recorded_histories() {
    let recorded: Vec<_> = histories::load(&histories::default_dir())
        .unwrap()
        .into_iter()
        .filter(|r| r.workflow_type == "MaintenanceWorkflow")
        .collect();
    assert!(!recorded.is_empty(), "a recorded MaintenanceWorkflow history");
    let replayer = WorkflowReplayer::new(
        WorkflowReplayerOptions::new().register_workflow::<ChangedMaintenance>().unwrap().build(),
    )
    .unwrap();
    let results = replayer.replay_workflows(recorded.iter().map(|r| r.replayable())).await.unwrap();
    for (r, result) in recorded.iter().zip(&results) {
        assert!(
            matches!(result.replay_failure, Some(WorkflowReplayFailure::Nondeterminism { .. })),
            "{}: {:?}",
            r.path.display(),
            result.replay_failure
        );
    }
}
