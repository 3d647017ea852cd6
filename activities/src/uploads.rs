//! `UploadActivities`: the steps of an uploaded file's scan, holding the store (the file's
//! bytes until scanned), clamd and the S3 bucket. Each is safe to run again: the scan only
//! reads, the S3 object's key is derived from the attachment, the verdict is recorded once.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest, Sha256};
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio::time::Instant;

use soma_contract::{AttachmentStatus, AttachmentStorage, UploadRef};
use soma_core::blobs::{BlobError, BlobStore};
use soma_core::clamav::{Clamd, ClamdError, Verdict};
use soma_core::store::{AttachmentRow, AuditEntry, ScanRecord, Store, StoreError};
use soma_workflows::activities::{RecordScanInput, RecordStoreFailureInput, ScanOutcome, defs};

use crate::failure::{Classify, Failure, step_failure};
use crate::session::WORKER_ACTOR;

/// How often a step reading the whole file says how far it got.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(2);
/// When a step reading the whole file is next due to say how far it got.
struct Heartbeats {
    next: Instant,
}

impl Heartbeats {
    fn new() -> Self {
        Self { next: Instant::now() + HEARTBEAT_EVERY }
    }

    /// Whether a heartbeat is due now (the next one is then due [`HEARTBEAT_EVERY`] later).
    fn due(&mut self) -> bool {
        let due = Instant::now() >= self.next;
        if due {
            self.next = Instant::now() + HEARTBEAT_EVERY;
        }
        due
    }
}

/// How often a scan following an upload still arriving looks for its next bytes.
const FOLLOW_POLL: Duration = Duration::from_millis(50);
/// How soon it looks again after bytes came when at most [`NEAR_END_BYTES`] are still to come:
/// the verdict waits for the look that finds the last ones (a fast client's next chunk is a few
/// milliseconds away). Each look that finds nothing waits twice as long, up to [`FOLLOW_POLL`].
const FOLLOW_POLL_NEAR_END: Duration = Duration::from_millis(5);
const NEAR_END_BYTES: i64 = 4 * 1024 * 1024;

/// The audit log's action for a file's scan.
const SCAN_ACTION: &str = "upload.scan";
/// The audit log's action for a clean file that could not be moved to its storage.
const STORE_ACTION: &str = "upload.store";

/// What uploads need from the deployment.
#[derive(Debug, Clone)]
pub struct UploadSettings {
    /// A clean file up to this size stays in its Postgres row; a larger one goes to S3.
    pub inline_max_bytes: u64,
    /// clamd's stream limit: a larger file is not sent, and is quarantined as too large.
    pub stream_max_bytes: u64,
    /// How much of a text-like file's text is kept for the model.
    pub text_max_bytes: usize,
    /// How long a scan follows an upload that sends nothing before it lets go of clamd's
    /// connection and its worker slot (`upload_follow_patience_ms`).
    pub follow_patience: Duration,
}

/// Whether a file's text can go to the model as it is: plain text, Markdown, JSON, CSV and
/// the like.
pub fn is_text_like(content_type: &str) -> bool {
    let mime = mime_of(content_type);
    mime.starts_with("text/")
        || mime.ends_with("+json")
        || matches!(mime.as_str(), "application/json" | "application/x-ndjson" | "application/csv" | "application/xml")
}

fn mime_of(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// The largest PDF whose text is read: the whole file is held while it is scanned.
pub const PDF_TEXT_MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

/// Where a clean file's text for the model comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextSource {
    /// A text-like file: its first bytes, as they are.
    Plain,
    /// A PDF up to [`PDF_TEXT_MAX_FILE_BYTES`]: the text extracted from the whole file.
    Pdf,
}

impl TextSource {
    pub fn of(content_type: &str, size_bytes: u64) -> Option<Self> {
        if is_text_like(content_type) {
            Some(TextSource::Plain)
        } else if mime_of(content_type) == "application/pdf" && size_bytes <= PDF_TEXT_MAX_FILE_BYTES {
            Some(TextSource::Pdf)
        } else {
            None
        }
    }
}

/// At most `max_bytes` of `text` (cut at a character), and whether it was cut.
fn within(mut text: String, max_bytes: usize) -> (String, bool) {
    let truncated = text.len() > max_bytes;
    if truncated {
        let mut end = max_bytes;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    // A character cut in half by the byte limit shows as one replacement character.
    let kept = text.trim_end_matches('\u{FFFD}').to_string();
    (kept, truncated)
}

/// The text of a PDF, or none when it has none to read (scanned pages, encryption, or a file
/// the extractor does not understand; it may even panic, which ends only its own thread).
async fn pdf_text(bytes: Vec<u8>) -> Option<String> {
    match tokio::task::spawn_blocking(move || pdf_extract::extract_text_from_mem(&bytes)).await {
        Ok(Ok(text)) if !text.trim().is_empty() => Some(text.trim().to_string()),
        Ok(Ok(_)) => None,
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "no text could be read from a PDF");
            None
        }
        Err(err) => {
            tracing::warn!(error = %err, "the PDF text extractor failed");
            None
        }
    }
}

pub struct UploadActivitiesImpl {
    store: Store,
    clamd: Clamd,
    blobs: BlobStore,
    settings: UploadSettings,
}

/// The object a clean attachment is kept under: derived from it, so a retried write replaces
/// the same object.
pub fn object_key(tenant_id: &str, attachment_id: uuid::Uuid) -> String {
    format!("attachments/{tenant_id}/{attachment_id}")
}

impl Failure for ClamdError {
    /// clamd away or refusing a stream (out of memory, restarting): try again later.
    fn is_transient(&self) -> bool {
        true
    }
}

impl Failure for BlobError {
    fn is_transient(&self) -> bool {
        true
    }
}

/// A failure no retry can fix: the file is gone.
#[derive(Debug, thiserror::Error)]
#[error("the upload {0} is gone (deleted with its session?)")]
struct UploadGone(uuid::Uuid);

impl Failure for UploadGone {
    fn is_transient(&self) -> bool {
        false
    }
}

impl UploadActivitiesImpl {
    pub fn new(store: Store, clamd: Clamd, blobs: BlobStore, settings: UploadSettings) -> Self {
        Self { store, clamd, blobs, settings }
    }

    async fn row(&self, upload: &UploadRef) -> Result<AttachmentRow, ActivityError> {
        match self.store.attachment(&upload.tenant_id, upload.attachment_id).await.classify()? {
            Some(row) => Ok(row),
            None => Err(step_failure(UploadGone(upload.attachment_id))),
        }
    }

    /// Records that the file is kept in S3 under `key`, once the object holds all of it. An
    /// object whose file went meanwhile (deleted with its session) is deleted too.
    async fn record_object(&self, row: &AttachmentRow, key: &str, written: u64) -> Result<(), ActivityError> {
        if written != row.received_bytes as u64 {
            return Err(step_failure(BlobError {
                operation: "put object",
                message: format!("wrote {written} bytes of {}", row.received_bytes),
            }));
        }
        if !self.store.store_attachment_object(row.id, key).await.classify()? {
            self.blobs.delete(key).await.classify()?;
        }
        Ok(())
    }

    /// The chunks as bytes for S3, heartbeating the progress; a chunk that went missing ends
    /// the stream with an error.
    fn chunk_bytes<'a>(&'a self, ctx: &'a ActivityContext, id: uuid::Uuid) -> impl futures::Stream<Item = Result<Bytes, StoreError>> + Unpin + 'a {
        let mut sent = 0u64;
        let mut heartbeats = Heartbeats::new();
        Box::pin(self.store.upload_chunks(id, 0, i64::MAX).then(move |chunk| {
            let chunk = chunk.map(|chunk| {
                sent += chunk.data.len() as u64;
                Bytes::from(chunk.data)
            });
            let beat = heartbeats.due();
            let progress = sent;
            async move {
                if beat {
                    let _ = ctx.record_heartbeat(progress).await;
                }
                chunk
            }
        }))
    }
}

#[activities]
impl UploadActivitiesImpl {
    #[activity(definition = defs::ScanUpload)]
    pub async fn scan_upload(self: Arc<Self>, ctx: ActivityContext, upload: UploadRef) -> Result<ScanOutcome, ActivityError> {
        let mut row = self.row(&upload).await?;
        if row.status.is_final() {
            // Recorded by an earlier run of this scan: say the same again.
            return Ok(recorded_outcome(&row));
        }
        if row.is_expired(chrono::Utc::now()) {
            return Ok(expired());
        }
        let stream_max = self.settings.stream_max_bytes as i64;
        let known_size = row.size_bytes;
        if row.status == AttachmentStatus::Uploading && known_size.is_some_and(|size| size > stream_max) {
            // Too large to scan: nothing to follow; the verdict waits for the last byte.
            return Ok(unfinished(&row));
        }
        if row.status != AttachmentStatus::Uploading && known_size.unwrap_or(row.received_bytes) > stream_max {
            return Ok(ScanOutcome::Quarantined { sha256: None, verdict: Verdict::TOO_LARGE.into() });
        }
        let mut scan = self.clamd.scan().await.classify()?;
        // A deferred length is known only at the end: the PDF limit is checked then too.
        let text_source = TextSource::of(&row.content_type, known_size.unwrap_or(0) as u64);
        let mut text = Vec::new();
        let mut whole = Sha256::new();
        let mut offset = 0i64;
        let mut heartbeats = Heartbeats::new();
        let mut last_bytes_at = Instant::now();
        let mut poll = FOLLOW_POLL;
        // Read what is stored; while the upload is still arriving, come back for the rest.
        loop {
            // Only what the row says is stored: a quiet upload costs one query per look.
            if offset < row.received_bytes {
                let mut chunks = self.store.upload_chunks(upload.attachment_id, offset, i64::MAX);
                while let Some(chunk) = chunks.next().await {
                    let chunk = chunk.classify()?;
                    let broken = if chunk.start_offset != offset {
                        Some(format!("the bytes at offset {offset} are missing"))
                    } else if !chunk.is_as_received() {
                        Some(format!("the chunk at offset {offset} is not the one received (its checksum differs)"))
                    } else {
                        None
                    };
                    if let Some(reason) = broken {
                        return Ok(ScanOutcome::Failed { reason });
                    }
                    if offset + chunk.data.len() as i64 > stream_max {
                        // A deferred length grew beyond what clamd scans: decide once every byte is in.
                        return Ok(unfinished(&row));
                    }
                    whole.update(&chunk.data);
                    match text_source {
                        Some(TextSource::Plain) if text.len() <= self.settings.text_max_bytes => {
                            let room = self.settings.text_max_bytes + 1 - text.len();
                            text.extend_from_slice(&chunk.data[..chunk.data.len().min(room)]);
                        }
                        Some(TextSource::Pdf) if (text.len() + chunk.data.len()) as u64 <= PDF_TEXT_MAX_FILE_BYTES => {
                            text.extend_from_slice(&chunk.data)
                        }
                        _ => {}
                    }
                    scan.send(&chunk.data).await.classify()?;
                    offset += chunk.data.len() as i64;
                    last_bytes_at = Instant::now();
                    let near_end = known_size.is_some_and(|size| size - offset <= NEAR_END_BYTES);
                    poll = if near_end { FOLLOW_POLL_NEAR_END } else { FOLLOW_POLL };
                    if heartbeats.due() {
                        ctx.record_heartbeat(offset).await?;
                    }
                }
            }
            if row.status != AttachmentStatus::Uploading && offset >= row.received_bytes {
                break; // every byte is in, and read
            }
            row = self.row(&upload).await?;
            if row.status == AttachmentStatus::Uploading && offset >= row.received_bytes {
                // Nothing new yet: wait for the client, but not for ever.
                if row.is_expired(chrono::Utc::now()) {
                    return Ok(expired());
                }
                if last_bytes_at.elapsed() >= self.settings.follow_patience {
                    return Ok(unfinished(&row));
                }
                if heartbeats.due() {
                    ctx.record_heartbeat(offset).await?;
                }
                tokio::time::sleep(poll).await;
                poll = (poll * 2).min(FOLLOW_POLL);
            }
        }
        let size = row.size_bytes.unwrap_or(row.received_bytes);
        let read_at = Instant::now();
        let sha256 = hex::encode(whole.finalize());
        let broken = if offset != size {
            Some(format!("{offset} bytes stored of {size}"))
        } else {
            row.expected_sha256
                .as_ref()
                .filter(|expected| !expected.eq_ignore_ascii_case(&sha256))
                .map(|expected| format!("SHA-256 is {sha256}, not the {expected} declared"))
        };
        if let Some(reason) = broken {
            return Ok(ScanOutcome::Failed { reason });
        }
        let verdict = scan.finish().await.classify()?;
        // After the last byte was read: clamd's verdict.
        tracing::info!(attachment_id = %row.id, bytes = size, verdict_ms = read_at.elapsed().as_millis() as u64, "file scanned");
        Ok(match verdict {
            Verdict::Clean => {
                let readable = match text_source {
                    Some(TextSource::Plain) => Some(String::from_utf8_lossy(&text).into_owned()),
                    Some(TextSource::Pdf) if size as u64 <= PDF_TEXT_MAX_FILE_BYTES => pdf_text(text).await,
                    Some(TextSource::Pdf) => None,
                    None => None,
                };
                if let Some(readable) = readable {
                    let (kept, truncated) = within(readable, self.settings.text_max_bytes);
                    self.store.set_attachment_text(row.id, &kept, truncated).await.classify()?;
                }
                ScanOutcome::Clean { sha256 }
            }
            Verdict::Infected(signature) => ScanOutcome::Quarantined { sha256: Some(sha256), verdict: signature },
            Verdict::TooLarge => ScanOutcome::Quarantined { sha256: Some(sha256), verdict: Verdict::TOO_LARGE.into() },
        })
    }

    #[activity(definition = defs::StoreAttachment)]
    pub async fn store_attachment(
        self: Arc<Self>,
        ctx: ActivityContext,
        upload: UploadRef,
    ) -> Result<AttachmentStorage, ActivityError> {
        let row = self.row(&upload).await?;
        if let Some(storage) = row.storage {
            return Ok(storage);
        }
        if row.received_bytes as u64 <= self.settings.inline_max_bytes {
            self.store.store_attachment_inline(row.id).await.classify()?;
            return Ok(AttachmentStorage::Inline);
        }
        let key = object_key(&row.tenant_id, row.id);
        let written = self.blobs.put(&key, &row.content_type, self.chunk_bytes(&ctx, row.id)).await.classify()?;
        self.record_object(&row, &key, written).await?;
        Ok(AttachmentStorage::S3)
    }

    #[activity(definition = defs::RecordScan)]
    pub async fn record_scan(self: Arc<Self>, _ctx: ActivityContext, input: RecordScanInput) -> Result<(), ActivityError> {
        let RecordScanInput { upload, outcome } = input;
        let (sha256, verdict) = match &outcome {
            ScanOutcome::Clean { sha256 } => (Some(sha256.as_str()), None),
            ScanOutcome::Quarantined { sha256, verdict } => (sha256.as_deref(), Some(verdict.as_str())),
            ScanOutcome::Failed { reason } => (None, Some(reason.as_str())),
            ScanOutcome::Unfinished { .. } => return Ok(()), // no verdict: nothing to record
        };
        let status = outcome.status();
        self.store.record_scan(upload.attachment_id, &ScanRecord { status, sha256, verdict }).await.classify()?;
        let Some(row) = self.store.attachment(&upload.tenant_id, upload.attachment_id).await.classify()? else {
            return Ok(());
        };
        if !row.status.is_final() {
            return Ok(()); // an upload that expired before its last byte: its expiry removes it
        }
        // The audit row first: whoever sees the announcement can already find it.
        let details = json!({ "attachment_id": row.id, "filename": row.filename, "size_bytes": row.received_bytes,
                              "sha256": row.sha256, "verdict": row.verdict, "storage": row.storage });
        let entry = AuditEntry::for_upload(&upload, WORKER_ACTOR, SCAN_ACTION, row.status.as_str(), details);
        self.store.audit(&entry.once(format!("{}:{SCAN_ACTION}", row.id))).await.classify()?;
        if let Some(scope) = upload.scope() {
            self.store.append_events(&scope, &[row.status_event()]).await.classify()?;
        }
        Ok(())
    }

    #[activity(definition = defs::RecordStoreFailure)]
    pub async fn record_store_failure(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: RecordStoreFailureInput,
    ) -> Result<(), ActivityError> {
        let RecordStoreFailureInput { upload, reason } = input;
        tracing::warn!(attachment_id = %upload.attachment_id, %reason, "a clean file stays in its received chunks");
        let details = json!({ "attachment_id": upload.attachment_id, "reason": reason });
        let entry = AuditEntry::for_upload(&upload, WORKER_ACTOR, STORE_ACTION, "failed", details);
        self.store.audit(&entry.once(format!("{}:{STORE_ACTION}", upload.attachment_id))).await.classify()
    }
}

/// A scan that lets go of an upload still arriving: it starts again when every byte is in
/// (the `received` signal), or once the upload has expired.
fn unfinished(row: &AttachmentRow) -> ScanOutcome {
    let until_expiry = (row.expires_at - chrono::Utc::now()).num_milliseconds().max(0) as u64;
    ScanOutcome::Unfinished { wait_ms: until_expiry + 1_000 }
}

/// A scan of an upload that expired before its last byte: nothing to scan, nothing to record.
fn expired() -> ScanOutcome {
    ScanOutcome::Failed { reason: "the upload expired before its last byte".into() }
}

/// The outcome a finished scan recorded.
fn recorded_outcome(row: &AttachmentRow) -> ScanOutcome {
    let verdict = row.verdict.clone().unwrap_or_default();
    match row.status {
        AttachmentStatus::Clean => ScanOutcome::Clean { sha256: row.sha256.clone().unwrap_or_default() },
        AttachmentStatus::Quarantined => ScanOutcome::Quarantined { sha256: row.sha256.clone(), verdict },
        _ => ScanOutcome::Failed { reason: verdict },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_comes_from_text_like_files_and_pdfs_up_to_their_limit() {
        assert_eq!(TextSource::of("text/markdown; charset=utf-8", 10), Some(TextSource::Plain));
        assert_eq!(TextSource::of("application/pdf", PDF_TEXT_MAX_FILE_BYTES), Some(TextSource::Pdf));
        assert_eq!(TextSource::of("application/pdf", PDF_TEXT_MAX_FILE_BYTES + 1), None);
        assert_eq!(TextSource::of("image/png", 10), None);
    }

    #[test]
    fn kept_text_is_cut_at_a_character_and_says_so() {
        assert_eq!(within("héllo".into(), 100), ("héllo".to_string(), false));
        // "é" is two bytes: a limit inside it keeps what comes before.
        assert_eq!(within("héllo".into(), 2), ("h".to_string(), true));
        assert_eq!(within("ok\u{FFFD}".into(), 100), ("ok".to_string(), false));
    }
}
