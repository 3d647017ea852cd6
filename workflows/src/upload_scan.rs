//! `UploadScanWorkflow`: one uploaded file, step by step as in the design's table.
//!
//! verify the SHA-256 while scanning with clamd (one read of the bytes) → clean: store as an
//! attachment (inline or S3) / infected or too large: quarantine → record the verdict
//! (`attachment.status`, audit row). While clamd or S3 is away the step retries and the file
//! stays `pending`; nothing is ever served before the verdict says `clean`.
#![allow(unreachable_pub)]

use temporalio_client::{WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{WorkflowContext, WorkflowContextView, WorkflowResult};
use uuid::Uuid;

use soma_contract::{AttachmentStatus, UploadRef, WorkKind};

use crate::activities::{RecordScanInput, ScanOutcome, UploadActivities};
use crate::{steps, visibility};

#[workflow]
pub struct UploadScanWorkflow {
    upload: UploadRef,
}

#[workflow_methods]
impl UploadScanWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, upload: UploadRef) -> Self {
        Self { upload }
    }

    /// Returns the file's final status: clean, quarantined or failed.
    #[run(name = "UploadScanWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<AttachmentStatus> {
        let upload = ctx.state(|s| s.upload.clone());
        let mut outcome = match ctx.execute_activity(UploadActivities::scan_upload, upload.clone(), steps::whole_file()).await {
            Ok(outcome) => outcome,
            Err(err) => ScanOutcome::Failed { reason: steps::failure_reason(&err) },
        };
        if let ScanOutcome::Clean { .. } = outcome
            && let Err(err) =
                ctx.execute_activity(UploadActivities::store_attachment, upload.clone(), steps::whole_file()).await
        {
            outcome = ScanOutcome::Failed { reason: format!("storing the clean file failed: {}", steps::failure_reason(&err)) };
        }
        let status = outcome.status();
        ctx.execute_activity(UploadActivities::record_scan, RecordScanInput { upload, outcome }, steps::database_after_cancel())
            .await?;
        Ok(status)
    }
}

impl UploadScanWorkflow {
    /// The readable workflow ID of a file's scan: `upload/{attachment id}`.
    pub fn workflow_id(attachment_id: Uuid) -> String {
        format!("upload/{attachment_id}")
    }

    /// How a scan is started: once per file; a running scan is joined. A scan that ended
    /// without recording a verdict (terminated by an operator) may be started again.
    /// `filename` is the memo's summary.
    pub fn start_options(task_queue: &str, upload: &UploadRef, filename: &str) -> WorkflowStartOptions {
        WorkflowStartOptions::new(task_queue.to_string(), Self::workflow_id(upload.attachment_id))
            .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
            .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicate)
            .search_attributes(visibility::search_attributes(WorkKind::Upload, &upload.tenant_id, upload.session_id))
            .memo(visibility::memo(&upload.request_id, filename))
            .build()
    }
}
