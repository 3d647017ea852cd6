//! `UploadScanWorkflow`: one uploaded file, step by step as in the design's table.
//!
//! verify the SHA-256 while scanning with clamd (one read of the bytes) → record the verdict
//! (`attachment.status`, audit row): infected or too large, quarantined and its bytes dropped;
//! clean, served from the bytes as received → clean: store as an attachment (inline or S3),
//! then drop the received bytes. While clamd is away the scan retries and the file stays
//! `pending`; nothing is ever served before the verdict says `clean`, and no infected byte
//! ever reaches the bucket. While S3 is away the store step retries and the clean file is
//! served from Postgres; if it never succeeds, an audit row says so.
//!
//! A tus upload's scan starts when the upload is created and follows it: each chunk is
//! scanned as it is stored, so the verdict comes soon
//! after the last byte rather than a whole read later. If the upload pauses, the scan step
//! lets go ([`ScanOutcome::Unfinished`]) and the workflow waits, holding nothing, for the
//! `received` signal (sent when the last byte is stored) or the upload's expiry, then scans
//! again from the first byte.
#![allow(unreachable_pub)]

use std::time::Duration;

use temporalio_client::errors::WorkflowStartError;
use temporalio_client::{Client, WorkflowIdConflictPolicy, WorkflowIdReusePolicy, WorkflowStartOptions};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{SyncWorkflowContext, WorkflowContext, WorkflowContextView, WorkflowResult};
use uuid::Uuid;

use soma_contract::{AttachmentStatus, UploadRef, WorkKind};

use crate::activities::{RecordScanInput, RecordStoreFailureInput, ScanOutcome, UploadActivities};
use crate::{steps, visibility};

/// The patch that records a clean verdict before the file is stored (S3 or inline), so the
/// file is usable as soon as it is known clean; histories without it stored first.
const CLEAN_BEFORE_STORED: &str = "clean-before-stored";

#[workflow]
pub struct UploadScanWorkflow {
    upload: UploadRef,
    /// Every byte of the file is stored (the `received` signal).
    received: bool,
}

#[workflow_methods]
impl UploadScanWorkflow {
    #[init]
    pub fn new(_ctx: &WorkflowContextView, upload: UploadRef) -> Self {
        Self { upload, received: false }
    }

    /// Returns the file's final status: clean, quarantined or failed.
    #[run(name = "UploadScanWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>) -> WorkflowResult<AttachmentStatus> {
        let upload = ctx.state(|s| s.upload.clone());
        let mut outcome = loop {
            match ctx.execute_activity(UploadActivities::scan_upload, upload.clone(), steps::whole_file()).await {
                Ok(ScanOutcome::Unfinished { wait_ms }) => {
                    temporalio_sdk::workflows::select! {
                        _ = ctx.wait_condition(|s: &UploadScanWorkflow| s.received) => {}
                        _ = ctx.timer(Duration::from_millis(wait_ms)) => {}
                    }
                }
                Ok(outcome) => break outcome,
                Err(err) => break ScanOutcome::Failed { reason: steps::failure_reason(&err) },
            }
        };
        let clean_before_stored = ctx.patched(CLEAN_BEFORE_STORED);
        if !clean_before_stored {
            // Histories from before the patch: a clean file was stored before its verdict was recorded.
            if let ScanOutcome::Clean { .. } = outcome
                && let Err(err) =
                    ctx.execute_activity(UploadActivities::store_attachment, upload.clone(), steps::whole_file()).await
            {
                outcome = ScanOutcome::Failed { reason: format!("storing the clean file failed: {}", steps::failure_reason(&err)) };
            }
        }
        let status = outcome.status();
        ctx.execute_activity(
            UploadActivities::record_scan,
            RecordScanInput { upload: upload.clone(), outcome },
            steps::database_after_cancel(),
        )
        .await?;
        if clean_before_stored && status == AttachmentStatus::Clean {
            // Served from its received chunks until this step has moved it to its storage.
            if let Err(err) = ctx.execute_activity(UploadActivities::store_attachment, upload.clone(), steps::whole_file()).await {
                let reason = steps::failure_reason(&err);
                ctx.execute_activity(
                    UploadActivities::record_store_failure,
                    RecordStoreFailureInput { upload, reason },
                    steps::database_after_cancel(),
                )
                .await?;
            }
        }
        Ok(status)
    }

    /// Every byte of the file is stored: a scan waiting for the rest starts again now.
    #[signal]
    pub fn received(&mut self, _ctx: &mut SyncWorkflowContext<Self>) {
        self.received = true;
    }
}

impl UploadScanWorkflow {
    /// The readable workflow ID of a file's scan: `upload/{attachment id}`.
    pub fn workflow_id(attachment_id: Uuid) -> String {
        format!("upload/{attachment_id}")
    }

    /// How a scan is started (when its upload is created, or with the `received` signal when
    /// its last byte is stored): once per file; a running scan is joined. A scan that ended
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

    /// Tells the file's scan that every byte is stored, starting the scan if none is running:
    /// from the api when the last byte is stored, and from the worker's recovery sweep for a
    /// pending file whose scan went quiet. Sent twice, it is heeded once.
    pub async fn send_received(
        client: &Client,
        task_queue: &str,
        upload: &UploadRef,
        filename: &str,
    ) -> Result<(), WorkflowStartError> {
        let options = Self::start_options(task_queue, upload, filename);
        client
            .signal_with_start_workflow(UploadScanWorkflow::run, upload.clone(), UploadScanWorkflow::received, (), options)
            .await
            .map(|_| ())
    }
}
