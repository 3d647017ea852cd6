//! Recorded workflow histories (`tests/histories/<WorkflowType>/<run id>.json`, the SDK's JSON
//! form of a history): the replay suite replays every one against the current workflow code on
//! each test run, and `soma-record-histories` adds new ones from a namespace's closed workflows.
//!
//! A history is worth keeping when it covers a step no kept one does: its *steps* are the
//! kinds of event it holds, with the activity, child workflow, signal or marker they name
//! ("ActivityTaskScheduled LlmActivities::stream_reply", "WorkflowExecutionSignaled decide").

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use temporalio_client::WorkflowHistory;
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
use temporalio_common::protos::temporal::api::history::v1::{History, HistoryEvent};
use temporalio_sdk::workflow_replayer::{WorkflowReplayer, WorkflowReplayerOptions};

/// Where the recorded histories live: `tests/histories` of this repository.
pub fn default_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("histories")
}

/// A replayer that knows every workflow type of the project.
pub fn replayer() -> WorkflowReplayer {
    let mut options = WorkflowReplayerOptions::new().build();
    soma_workflows::register_all(&mut options).expect("each workflow type is registered once");
    WorkflowReplayer::new(options).expect("a replayer with workflows")
}

/// One recorded history file.
pub struct Recorded {
    pub path: PathBuf,
    pub workflow_type: String,
    pub history: History,
}

impl Recorded {
    /// The history in the form the replayer takes.
    pub fn replayable(&self) -> WorkflowHistory {
        self.history.clone().into()
    }
}

/// Every recorded history under `dir` (`<WorkflowType>/<name>.json`), sorted by path.
pub fn load(dir: &Path) -> anyhow::Result<Vec<Recorded>> {
    let mut recorded = Vec::new();
    if !dir.exists() {
        return Ok(recorded);
    }
    for type_dir in std::fs::read_dir(dir)? {
        let type_dir = type_dir?.path();
        if !type_dir.is_dir() {
            continue;
        }
        let workflow_type = type_dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&type_dir)? {
            let path = file?.path();
            if path.extension().is_some_and(|e| e == "json") {
                let bytes = std::fs::read(&path)?;
                let history: History = serde_json::from_slice(&bytes)
                    .map_err(|e| anyhow::anyhow!("{}: not a history in the SDK's JSON form: {e}", path.display()))?;
                recorded.push(Recorded { path, workflow_type: workflow_type.clone(), history });
            }
        }
    }
    recorded.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(recorded)
}

/// The steps a history covers (see the module's doc).
pub fn steps(events: &[HistoryEvent]) -> BTreeSet<String> {
    events
        .iter()
        .map(|event| {
            let kind = event.event_type().as_str_name().trim_start_matches("EVENT_TYPE_").to_lowercase();
            let named = match &event.attributes {
                Some(Attributes::ActivityTaskScheduledEventAttributes(a)) => a.activity_type.as_ref().map(|t| t.name.clone()),
                Some(Attributes::StartChildWorkflowExecutionInitiatedEventAttributes(a)) => {
                    a.workflow_type.as_ref().map(|t| t.name.clone())
                }
                Some(Attributes::WorkflowExecutionSignaledEventAttributes(a)) => Some(a.signal_name.clone()),
                Some(Attributes::MarkerRecordedEventAttributes(a)) => Some(a.marker_name.clone()),
                _ => None,
            };
            match named {
                Some(name) => format!("{kind} {name}"),
                None => kind,
            }
        })
        .collect()
}
