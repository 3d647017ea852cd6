//! `SessionDeletionWorkflow`: deleting a session, durably. The api has already hidden the
//! session from every request (and audited the request) before starting it; this stops its
//! work, tells its streams, and removes its data:
//!
//! cancel its open turns → wait until they have recorded their ends → `session.deleted` (open
//! streams end) → a moment for streams to deliver it → remove the session, its turns,
//! messages and events (audited).
#![allow(unreachable_pub)]

use std::time::Duration;

use serde::{Deserialize, Serialize};
use temporalio_client::{WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowContextView, WorkflowResult};
use uuid::Uuid;

use soma_contract::{SessionRef, WorkKind};

use crate::activities::SessionActivities;
use crate::{steps, visibility};

/// How long open streams have to deliver `session.deleted` before its row goes with the rest.
const STREAMS_GRACE: Duration = Duration::from_secs(3);

/// Output of `SessionDeletionWorkflow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDeletionOutput {
    /// Turns that were running or queued and were cancelled.
    pub cancelled_turns: u32,
    /// Whether the session's data was still there to remove.
    pub purged: bool,
}

#[workflow]
pub struct SessionDeletionWorkflow {
    session: SessionRef,
}

#[workflow_methods]
impl SessionDeletionWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, session: SessionRef) -> Self {
        Self { session }
    }

    #[run(name = "SessionDeletionWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<SessionDeletionOutput> {
        let session = ctx.state(|s| s.session.clone());
        let cancelled_turns =
            ctx.execute_activity(SessionActivities::cancel_open_turns, session.clone(), steps::database()).await?;
        ctx.execute_activity(SessionActivities::wait_for_open_turns, session.clone(), steps::wait()).await?;
        ctx.execute_activity(SessionActivities::announce_session_deleted, session.clone(), steps::database())
            .await?;
        ctx.timer(STREAMS_GRACE).await;
        let purged = ctx.execute_activity(SessionActivities::purge_session, session, steps::database()).await?;
        Ok(SessionDeletionOutput { cancelled_turns, purged })
    }
}

impl SessionDeletionWorkflow {
    /// `session-delete/{session}`.
    pub fn workflow_id(session_id: Uuid) -> String {
        format!("session-delete/{session_id}")
    }

    /// One deletion per session: a repeated request joins the running one.
    pub fn start_options(task_queue: &str, session: &SessionRef) -> WorkflowStartOptions {
        WorkflowStartOptions::new(task_queue.to_string(), Self::workflow_id(session.session_id))
            .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
            .id_reuse_policy(WorkflowIdReusePolicy::RejectDuplicate)
            .search_attributes(visibility::search_attributes(WorkKind::Chat, &session.tenant_id, Some(session.session_id)))
            .memo(visibility::memo(&session.request_id, "delete the session"))
            .build()
    }
}
