//! `attachments` (an uploaded file, its scan's verdict and where a clean one is kept) and
//! `upload_chunks` (the bytes of a file not yet scanned, durable as they arrive).

use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use soma_contract::events::AttachmentStatusChanged;
use soma_contract::{AttachmentStatus, AttachmentStorage, SessionEvent, UploadRef};

use super::{Store, StoreError};

/// An uploaded file as the store keeps it (without its bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct AttachmentRow {
    pub id: Uuid,
    pub tenant_id: String,
    pub session_id: Option<Uuid>,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: Option<i64>,
    pub received_bytes: i64,
    pub metadata: Value,
    pub status: AttachmentStatus,
    pub expected_sha256: Option<String>,
    pub sha256: Option<String>,
    pub verdict: Option<String>,
    pub storage: Option<AttachmentStorage>,
    pub object_key: Option<String>,
    pub request_id: String,
    pub trace_id: Option<String>,
    pub expires_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    pub scanned_at: Option<DateTime<Utc>>,
}

impl AttachmentRow {
    /// What the scan's workflow carries.
    pub fn upload_ref(&self) -> UploadRef {
        UploadRef {
            tenant_id: self.tenant_id.clone(),
            attachment_id: self.id,
            session_id: self.session_id,
            request_id: self.request_id.clone(),
            trace_id: self.trace_id.clone(),
        }
    }

    /// `attachment.status` for where the file is now.
    pub fn status_event(&self) -> SessionEvent {
        SessionEvent::AttachmentStatusChanged(AttachmentStatusChanged {
            attachment_id: self.id,
            filename: self.filename.clone(),
            status: self.status,
            size_bytes: self.received_bytes,
            sha256: self.sha256.clone(),
            verdict: self.verdict.clone(),
        })
    }

    /// Whether a tus client may still send bytes to it.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.status == AttachmentStatus::Uploading && self.expires_at <= now
    }
}

/// A new upload, before its first byte.
#[derive(Debug, Clone)]
pub struct NewUpload<'a> {
    pub tenant_id: &'a str,
    pub session_id: Option<Uuid>,
    pub filename: &'a str,
    pub content_type: &'a str,
    /// None: deferred (tus `Upload-Defer-Length`).
    pub size_bytes: Option<i64>,
    pub metadata: Value,
    pub expected_sha256: Option<&'a str>,
    pub request_id: &'a str,
    pub trace_id: Option<&'a str>,
    pub expires_at: DateTime<Utc>,
    /// The tenant may have at most this many uploads in progress.
    pub max_in_progress: i64,
}

/// What a chunk did to its upload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// Stored; the upload has this many bytes now and is `status`.
    Stored { received_bytes: i64, status: AttachmentStatus },
    /// The upload is not at the offset the chunk starts at (another request moved it), or no
    /// longer takes bytes.
    OffsetMoved,
}

/// How a scan ended, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanRecord<'a> {
    pub status: AttachmentStatus,
    pub sha256: Option<&'a str>,
    pub verdict: Option<&'a str>,
}

/// A file a message carries, as its prompt shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct PromptAttachment {
    pub turn_id: Uuid,
    pub attachment_id: Uuid,
    pub filename: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub status: AttachmentStatus,
    pub verdict: Option<String>,
    /// The text of a clean text-like file.
    pub text: Option<String>,
    pub text_truncated: bool,
}

/// A chunk of a file not yet scanned.
#[derive(Debug, Clone)]
pub struct UploadChunk {
    pub start_offset: i64,
    pub data: Vec<u8>,
    /// [`UploadChunk::checksum`] of the bytes as they arrived.
    pub crc32c: Option<i32>,
    /// The SHA-256 of the bytes as they arrived, for chunks stored before they had a CRC32C.
    pub sha256: Option<Vec<u8>>,
}

impl UploadChunk {
    /// The CRC32C a chunk is stored with (as the `INTEGER` column holds it).
    pub fn checksum(data: &[u8]) -> i32 {
        crc_fast::crc32_iscsi(data) as i32
    }

    /// Whether the bytes are still the ones that arrived.
    pub fn is_as_received(&self) -> bool {
        match (self.crc32c, &self.sha256) {
            (Some(crc32c), _) => crc32c == Self::checksum(&self.data),
            (None, Some(sha256)) => Sha256::digest(&self.data).as_slice() == sha256.as_slice(),
            (None, None) => false,
        }
    }
}

impl Store {
    /// Creates an upload unless the tenant already has `max_in_progress` uploads in progress
    /// (None then). A zero-length file is complete at once (`pending`).
    pub async fn create_upload(&self, upload: &NewUpload<'_>) -> Result<Option<AttachmentRow>, StoreError> {
        let mut tx = self.pool.begin().await?;
        // One tenant's creations take turns, so two at once cannot both pass the limit.
        sqlx::query!("SELECT pg_advisory_xact_lock(hashtextextended('uploads:' || $1, 11))", upload.tenant_id)
            .execute(&mut *tx)
            .await?;
        let id = sqlx::query_scalar!(
            r#"INSERT INTO attachments (id, tenant_id, session_id, filename, content_type, size_bytes, metadata,
                                        status, expected_sha256, request_id, trace_id, expires_at)
               SELECT $1, $2, $3, $4, $5, $6::bigint, $7, CASE WHEN $6::bigint = 0 THEN 'pending' ELSE 'uploading' END,
                      $8, $9, $10, $11
               WHERE (SELECT count(*) FROM attachments
                      WHERE tenant_id = $2 AND status = 'uploading' AND expires_at > now()) < $12
               RETURNING id"#,
            Uuid::now_v7(),
            upload.tenant_id,
            upload.session_id,
            upload.filename,
            upload.content_type,
            upload.size_bytes,
            upload.metadata,
            upload.expected_sha256,
            upload.request_id,
            upload.trace_id,
            upload.expires_at,
            upload.max_in_progress,
        )
        .fetch_optional(&mut *tx)
        .await?;
        tx.commit().await?;
        match id {
            Some(id) => self.attachment(upload.tenant_id, id).await,
            None => Ok(None),
        }
    }

    /// The tenant's upload or attachment (another tenant's is not found).
    pub async fn attachment(&self, tenant_id: &str, id: Uuid) -> Result<Option<AttachmentRow>, StoreError> {
        Ok(sqlx::query_as!(
            AttachmentRow,
            r#"SELECT id, tenant_id, session_id, filename, content_type, size_bytes, received_bytes, metadata,
                      status AS "status: AttachmentStatus", expected_sha256, sha256, verdict,
                      storage AS "storage: AttachmentStorage", object_key, request_id, trace_id, expires_at,
                      created_at, scanned_at
               FROM attachments WHERE id = $1 AND tenant_id = $2"#,
            id,
            tenant_id,
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A writer of the chunks of tenant's upload `id`: each kept (readable, so the scan can
    /// follow) as soon as it is appended and all durable once [`ChunkWriter::commit`] returns,
    /// or (with `all_or_nothing`) none kept until then, for a request whose checksum must match
    /// before any of it is kept.
    pub async fn chunk_writer(&self, tenant_id: &str, id: Uuid, all_or_nothing: bool) -> Result<ChunkWriter, StoreError> {
        let tx = if all_or_nothing { Some(self.pool.begin().await?) } else { None };
        Ok(ChunkWriter { pool: self.pool.clone(), tenant_id: tenant_id.to_string(), id, tx, not_flushed: false })
    }

    /// Declares the length of an upload that deferred it (and the SHA-256 its bytes must
    /// have, if known); it becomes `pending` if every byte is already in. Returns false when
    /// the length was already known or is below what arrived.
    pub async fn set_upload_length(
        &self,
        tenant_id: &str,
        id: Uuid,
        size_bytes: i64,
        expected_sha256: Option<&str>,
    ) -> Result<bool, StoreError> {
        let updated = sqlx::query!(
            r#"UPDATE attachments
               SET size_bytes = $3, expected_sha256 = COALESCE($4, expected_sha256),
                   status = CASE WHEN received_bytes = $3 THEN 'pending' ELSE 'uploading' END,
                   updated_at = now()
               WHERE id = $1 AND tenant_id = $2 AND status = 'uploading' AND size_bytes IS NULL
                 AND received_bytes <= $3"#,
            id,
            tenant_id,
            size_bytes,
            expected_sha256,
        )
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(updated == 1)
    }

    /// Removes an upload still in progress (tus termination). Returns whether there was one.
    pub async fn terminate_upload(&self, tenant_id: &str, id: Uuid) -> Result<bool, StoreError> {
        let deleted =
            sqlx::query!("DELETE FROM attachments WHERE id = $1 AND tenant_id = $2 AND status = 'uploading'", id, tenant_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
        Ok(deleted == 1)
    }

    /// The chunks of a file not yet stored that hold bytes from `from` up to `to` (exclusive),
    /// in order, as the database sends them (the file is never held whole). A chunk once
    /// stored never changes, so a reader following an upload may read what is there now and
    /// come back for the rest; one call reads one snapshot, so a file stored meanwhile is
    /// read whole from its chunks or not at all.
    pub fn upload_chunks(&self, id: Uuid, from: i64, to: i64) -> BoxStream<'_, Result<UploadChunk, StoreError>> {
        sqlx::query_as!(
            UploadChunk,
            "SELECT start_offset, data, crc32c, sha256 FROM upload_chunks
             WHERE attachment_id = $1 AND start_offset + octet_length(data) > $2 AND start_offset < $3
             ORDER BY start_offset",
            id,
            from,
            to,
        )
        .fetch(&self.pool)
        .map_err(StoreError::from)
        .boxed()
    }

    /// Keeps a clean file's bytes in its own row (a small file): the chunks, joined.
    pub async fn store_attachment_inline(&self, id: Uuid) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            r#"UPDATE attachments
               SET content = (SELECT COALESCE(string_agg(data, ''::bytea ORDER BY start_offset), ''::bytea)
                              FROM upload_chunks WHERE attachment_id = $1),
                   storage = 'inline', updated_at = now()
               WHERE id = $1 AND status IN ('pending', 'clean') AND storage IS NULL"#,
            id,
        )
        .execute(&mut *tx)
        .await?;
        drop_unneeded_chunks(&mut tx, id).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Notes that a clean file's bytes are in S3 under `object_key`. False if the file is
    /// gone (or was stored otherwise): the object is then nobody's.
    pub async fn store_attachment_object(&self, id: Uuid, object_key: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query!(
            "UPDATE attachments SET storage = 's3', object_key = $2, updated_at = now()
             WHERE id = $1 AND status IN ('pending', 'clean') AND storage IS NULL",
            id,
            object_key,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        drop_unneeded_chunks(&mut tx, id).await?;
        tx.commit().await?;
        Ok(updated == 1)
    }

    /// Records how the scan ended and drops the chunks, which nothing will read again. A
    /// retried call changes nothing more. Returns whether the file was still pending. The
    /// chunks of a file still arriving are kept (a scan that gave up on an upload its client
    /// may yet resume), and so are those of a clean file not stored yet (they serve it).
    pub async fn record_scan(&self, id: Uuid, record: &ScanRecord<'_>) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let updated = sqlx::query!(
            r#"UPDATE attachments
               SET status = $2, sha256 = COALESCE($3, sha256), verdict = $4, scanned_at = now(), updated_at = now(),
                   content = CASE WHEN $2 = 'clean' THEN content END
               WHERE id = $1 AND status = 'pending'"#,
            id,
            record.status.as_str(),
            record.sha256,
            record.verdict,
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        drop_unneeded_chunks(&mut tx, id).await?;
        tx.commit().await?;
        Ok(updated == 1)
    }

    /// Up to `len` bytes of an inline attachment's content from `start` (0-based).
    pub async fn inline_content(&self, id: Uuid, start: i64, len: i64) -> Result<Vec<u8>, StoreError> {
        Ok(sqlx::query_scalar!(
            r#"SELECT substring(content FROM ($2::bigint + 1)::int FOR ($3::bigint)::int) AS "data!"
               FROM attachments WHERE id = $1 AND storage = 'inline'"#,
            id,
            start,
            len,
        )
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or_default())
    }

    /// Pending files (any tenant's) that have not moved for `quiet_for`: their scan may have
    /// lost its workflow. Oldest first.
    pub async fn stalled_pending_uploads(&self, quiet_for: Duration, limit: i64) -> Result<Vec<UploadRef>, StoreError> {
        Ok(sqlx::query_as!(
            UploadRef,
            r#"SELECT tenant_id, id AS attachment_id, session_id, request_id, trace_id
               FROM attachments WHERE status = 'pending' AND updated_at < now() - make_interval(secs => $1)
               ORDER BY updated_at LIMIT $2"#,
            quiet_for.as_secs_f64(),
            limit,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// The files a turn's message carries, in the order sent.
    pub async fn turn_attachment_ids(&self, tenant_id: &str, turn_id: Uuid) -> Result<Vec<Uuid>, StoreError> {
        Ok(sqlx::query_scalar!("SELECT attachment_ids FROM turns WHERE id = $1 AND tenant_id = $2", turn_id, tenant_id)
            .fetch_optional(&self.pool)
            .await?
            .unwrap_or_default())
    }

    /// Keeps a text-like file's text (cut at the configured size) for the prompts of the
    /// messages that carry it.
    pub async fn set_attachment_text(&self, id: Uuid, text: &str, truncated: bool) -> Result<(), StoreError> {
        sqlx::query!("UPDATE attachments SET text = $2, text_truncated = $3 WHERE id = $1", id, text, truncated)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The files carried by the session's messages up to `turn_id`'s, with what the model may
    /// be given of each, in turn then sending order.
    pub async fn conversation_attachments(
        &self,
        tenant_id: &str,
        session_id: Uuid,
        turn_id: Uuid,
    ) -> Result<Vec<PromptAttachment>, StoreError> {
        Ok(sqlx::query_as!(
            PromptAttachment,
            r#"SELECT t.id AS "turn_id!", a.id AS attachment_id, a.filename, a.content_type, a.received_bytes AS size_bytes,
                      a.status AS "status: AttachmentStatus", a.verdict, a.text, a.text_truncated
               FROM turns t
               CROSS JOIN LATERAL unnest(t.attachment_ids) WITH ORDINALITY AS u(attachment_id, ord)
               JOIN attachments a ON a.id = u.attachment_id AND a.tenant_id = t.tenant_id
               WHERE t.tenant_id = $1 AND t.session_id = $2 AND cardinality(t.attachment_ids) > 0
                 AND t.seq <= (SELECT seq FROM turns WHERE id = $3 AND tenant_id = $1)
               ORDER BY t.seq, u.ord"#,
            tenant_id,
            session_id,
            turn_id,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks a pending file as moved (the scan is working on it), so the sweep leaves it be.
    pub async fn touch_upload(&self, id: Uuid) -> Result<(), StoreError> {
        sqlx::query!("UPDATE attachments SET updated_at = now() WHERE id = $1 AND status = 'pending'", id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// Appends an upload's chunks (see [`Store::chunk_writer`]). Dropped without a commit, an
/// all-or-nothing writer keeps nothing, and another may lose its last chunks to a database
/// crash (they were never reported to the client).
pub struct ChunkWriter {
    pool: sqlx::PgPool,
    tenant_id: String,
    id: Uuid,
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    /// Whether chunks were committed without waiting for the disk.
    not_flushed: bool,
}

impl ChunkWriter {
    /// Stores a chunk that starts at `start_offset` (with its [`UploadChunk::checksum`]), if
    /// the upload is there now and still takes bytes; the chunk that completes the upload makes
    /// it `pending`, in the same statement. The caller has checked that the chunk fits the
    /// declared length.
    pub async fn append(&mut self, start_offset: i64, data: &[u8]) -> Result<Appended, StoreError> {
        // A chunk committed on its own does not wait for its WAL to reach the disk (a megabyte
        // each, while clamd writes the same bytes to its own disk: 0.03–0.3 s of a 100 MiB
        // upload's ~0.8 s send on 2 cores); `commit` makes them all durable at once. In a transaction the
        // server's setting stays: the transaction's commit is the durable one.
        let commit_mode = self.tx.is_none().then_some("off");
        let query = sqlx::query!(
            r#"WITH commit_mode AS (
                   SELECT set_config('synchronous_commit', COALESCE($6, current_setting('synchronous_commit')), true)),
               moved AS (
                   UPDATE attachments
                   SET received_bytes = received_bytes + octet_length($4::bytea),
                       status = CASE WHEN received_bytes + octet_length($4::bytea) = size_bytes THEN 'pending'
                                     ELSE 'uploading' END,
                       updated_at = now()
                   WHERE id = $1 AND tenant_id = $2 AND status = 'uploading' AND received_bytes = $3
                     AND EXISTS (SELECT FROM commit_mode)
                   RETURNING id, received_bytes, status),
               chunk AS (
                   INSERT INTO upload_chunks (attachment_id, start_offset, data, crc32c)
                   SELECT id, $3, $4::bytea, $5 FROM moved WHERE octet_length($4::bytea) > 0)
               SELECT received_bytes, status AS "status: AttachmentStatus" FROM moved"#,
            self.id,
            self.tenant_id,
            start_offset,
            data,
            UploadChunk::checksum(data),
            commit_mode,
        );
        let stored = match &mut self.tx {
            Some(tx) => query.fetch_optional(&mut **tx).await?,
            None => query.fetch_optional(&self.pool).await?,
        };
        Ok(match stored {
            Some(row) => {
                self.not_flushed |= self.tx.is_none();
                Appended::Stored { received_bytes: row.received_bytes, status: row.status }
            }
            None => Appended::OffsetMoved,
        })
    }

    /// Makes what was appended durable: before the client is told an offset, the bytes
    /// below it must survive a crash of the database.
    pub async fn commit(self) -> Result<(), StoreError> {
        if let Some(tx) = self.tx {
            tx.commit().await?;
        }
        if self.not_flushed {
            // A write committed synchronously flushes the WAL up to its own commit record,
            // and with it every chunk committed before.
            sqlx::query!("UPDATE attachments SET updated_at = now() WHERE id = $1", self.id).execute(&self.pool).await?;
        }
        Ok(())
    }
}

/// Drops a file's received chunks once nothing needs them: they are kept while the file is
/// still arriving, while it waits for its verdict (a file stored before its verdict keeps them
/// for the scan's record step) and while a clean file is served from them, not yet stored.
async fn drop_unneeded_chunks(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>, id: Uuid) -> Result<(), StoreError> {
    sqlx::query!(
        "DELETE FROM upload_chunks WHERE attachment_id = $1
         AND NOT EXISTS (SELECT 1 FROM attachments WHERE id = $1
                         AND (status IN ('uploading', 'pending') OR (status = 'clean' AND storage IS NULL)))",
        id
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &[u8], crc32c: Option<i32>, sha256: Option<Vec<u8>>) -> UploadChunk {
        UploadChunk { start_offset: 0, data: data.to_vec(), crc32c, sha256 }
    }

    #[test]
    fn a_chunk_is_checked_against_its_crc32c_or_else_its_sha256() {
        let data = b"123456789";
        assert_eq!(UploadChunk::checksum(data) as u32, 0xe306_9283, "CRC-32C (iSCSI)");
        assert!(chunk(data, Some(UploadChunk::checksum(data)), None).is_as_received());
        assert!(!chunk(b"123456780", Some(UploadChunk::checksum(data)), None).is_as_received());
        let sha256 = Sha256::digest(data).to_vec();
        assert!(chunk(data, None, Some(sha256.clone())).is_as_received(), "stored before chunks had a CRC32C");
        assert!(!chunk(b"123456780", None, Some(sha256)).is_as_received());
        assert!(!chunk(data, None, None).is_as_received());
    }
}
