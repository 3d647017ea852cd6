//! Attachments: a clean file's bytes (whole or a `Range`), and any file's status. Only the
//! owner's tenant sees a file at all; only a `clean` one is ever served.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use uuid::Uuid;

use soma_contract::AttachmentStatus;
use soma_contract::AttachmentStorage;
use soma_contract::api::{Attachment, ErrorBody};
use soma_core::store::AttachmentRow;

use crate::auth::Principal;
use crate::http::uploads::attachment_view;
use crate::{ApiContext, ApiError};

/// The tenant's file named by the route's `{id}` (`what`: "attachment" or "upload", as the 404
/// says); another tenant's, or an id that is not a UUID, is 404.
pub(crate) async fn owned(ctx: &ApiContext, principal: &Principal, id: &str, what: &'static str) -> Result<AttachmentRow, ApiError> {
    let id: Uuid = id.parse().map_err(|_| ApiError::NotFound(what))?;
    ctx.store.attachment(&principal.tenant_id, id).await?.ok_or(ApiError::NotFound(what))
}

/// Where a file is: uploading, pending its scan, clean, quarantined (and what was found) or failed.
#[utoipa::path(get, path = "/v1/attachments/{id}/status", tag = "uploads",
    params(("id" = Uuid, Path, description = "The attachment")),
    responses(
        (status = 200, description = "The file and its scan's verdict", body = Attachment),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such file for this tenant", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn status(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<Json<Attachment>, ApiError> {
    Ok(Json(attachment_view(&owned(&ctx, &principal, &id, "attachment").await?)))
}

/// A clean file's bytes, streamed: whole, or one `Range` (206). `ETag` is its SHA-256.
#[utoipa::path(get, path = "/v1/attachments/{id}", tag = "uploads",
    params(("id" = Uuid, Path, description = "The attachment"),
           ("Range" = Option<String>, Header, description = "`bytes=start-end`, `bytes=start-` or `bytes=-suffix`")),
    responses(
        (status = 200, description = "The whole file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The requested range (`Content-Range`)", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "`If-None-Match` names this file's ETag"),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such file for this tenant", body = ErrorBody),
        (status = 409, description = "`attachment_pending` (not scanned yet) or `attachment_quarantined`: not served", body = ErrorBody),
        (status = 416, description = "The range is outside the file", body = ErrorBody),
        (status = 503, description = "The database or the bucket is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn download(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let row = owned(&ctx, &principal, &id, "attachment").await?;
    match row.status {
        AttachmentStatus::Clean => {}
        AttachmentStatus::Uploading | AttachmentStatus::Pending => {
            return Err(ApiError::Conflict {
                code: "attachment_pending",
                message: "the file has not been scanned yet: GET its /status, or follow its session's attachment.status".into(),
            });
        }
        AttachmentStatus::Quarantined | AttachmentStatus::Failed => {
            return Err(ApiError::Conflict {
                code: "attachment_quarantined",
                message: format!(
                    "the file is {} ({}) and is never served",
                    row.status,
                    row.verdict.as_deref().unwrap_or("no reason recorded")
                ),
            });
        }
    }
    let length = row.received_bytes as u64;
    let etag = format!("\"{}\"", row.sha256.as_deref().unwrap_or_default());
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.split(',').any(|t| t.trim() == etag)) {
        return Ok(StatusCode::NOT_MODIFIED.into_response());
    }
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        None => None,
        Some(value) => parse_range(value, length).map_err(|()| ApiError::RangeNotSatisfiable(length))?,
    };
    let (start, end) = range.unwrap_or((0, length.saturating_sub(1)));
    let body = if length == 0 { Body::empty() } else { content(&ctx, &principal, row.clone(), start, end, range).await? };
    let mut response = body.into_response();
    *response.status_mut() = if range.is_some() { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
    let headers = response.headers_mut();
    let sent = if length == 0 { 0 } else { end + 1 - start };
    headers.insert(header::CONTENT_LENGTH, sent.into());
    if range.is_some() {
        headers.insert(header::CONTENT_RANGE, header_value(&format!("bytes {start}-{end}/{length}")));
    }
    headers.insert(header::CONTENT_TYPE, header_value(&row.content_type));
    headers.insert(header::CONTENT_DISPOSITION, content_disposition(&row.filename));
    headers.insert(header::ETAG, header_value(&etag));
    headers.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    // Uploaded content is never rendered as a page of this origin.
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    Ok(response)
}

/// The bytes from `start` to `end` (inclusive) of a clean file, wherever they are now: its
/// received chunks until the scan's last step has stored it, then its row or its S3 object.
/// A file stored (its chunks dropped) between the reads of its row and of its chunks is
/// looked up again.
async fn content(
    ctx: &ApiContext,
    principal: &Principal,
    mut row: AttachmentRow,
    start: u64,
    end: u64,
    range: Option<(u64, u64)>,
) -> Result<Body, ApiError> {
    loop {
        match (row.storage, &row.object_key) {
            (Some(AttachmentStorage::S3), Some(key)) => {
                let stream = ctx
                    .blobs
                    .get(key, range)
                    .await
                    .map_err(|err| ApiError::Unavailable { what: "the attachment bucket", cause: err.into() })?;
                return Ok(Body::from_stream(stream.map(|chunk| chunk.map_err(std::io::Error::other))));
            }
            (Some(_), _) => {
                return Ok(Body::from(ctx.store.inline_content(row.id, start as i64, (end + 1 - start) as i64).await?));
            }
            (None, _) => {
                // One query reads one snapshot: if its first chunk is there, so is the rest.
                let (store, id) = (ctx.store.clone(), row.id);
                let chunks = async_stream::stream! {
                    let mut chunks = store.upload_chunks(id, start as i64, end as i64 + 1);
                    while let Some(chunk) = chunks.next().await {
                        yield chunk;
                    }
                };
                let mut chunks = Box::pin(chunks.peekable());
                if chunks.as_mut().peek().await.is_some() {
                    let bytes = chunks.map(move |chunk| {
                        let chunk = chunk.map_err(std::io::Error::other)?;
                        let (from, len) = (chunk.start_offset as u64, chunk.data.len() as u64);
                        let skip = start.saturating_sub(from) as usize;
                        let take = ((end + 1).min(from + len) - from) as usize;
                        Ok::<_, std::io::Error>(bytes::Bytes::from(chunk.data).slice(skip..take))
                    });
                    return Ok(Body::from_stream(bytes));
                }
                let id = row.id.to_string();
                row = owned(ctx, principal, &id, "attachment").await?;
                if row.storage.is_none() {
                    return Err(ApiError::Internal(anyhow::anyhow!("the clean file {id} has neither chunks nor storage")));
                }
            }
        }
    }
}

fn header_value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or(HeaderValue::from_static("application/octet-stream"))
}

/// `attachment; filename="…"; filename*=UTF-8''…`: the ASCII name for old clients, the exact
/// one for the rest.
fn content_disposition(filename: &str) -> HeaderValue {
    let ascii: String =
        filename.chars().map(|c| if (c.is_ascii_graphic() && c != '"' && c != '\\') || c == ' ' { c } else { '_' }).collect();
    let encoded: String = filename
        .bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-._~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect();
    header_value(&format!("attachment; filename=\"{ascii}\"; filename*=UTF-8''{encoded}"))
}

/// One range of `bytes=…` within `length` bytes, as `(first, last)` inclusive. `Ok(None)`:
/// serve the whole file (a header this server does not take up, such as several ranges);
/// `Err`: unsatisfiable (416).
fn parse_range(value: &str, length: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(spec) = value.trim().strip_prefix("bytes=") else { return Ok(None) };
    if spec.contains(',') {
        return Ok(None);
    }
    let Some((first, last)) = spec.trim().split_once('-') else { return Ok(None) };
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let range = match (first.trim().is_empty(), last.trim().is_empty()) {
        // The last N bytes.
        (true, false) => {
            let suffix = number(last).ok_or(())?;
            if suffix == 0 || length == 0 {
                return Err(());
            }
            (length.saturating_sub(suffix), length - 1)
        }
        (false, true) => (number(first).ok_or(())?, length.saturating_sub(1)),
        (false, false) => {
            let (first, last) = (number(first).ok_or(())?, number(last).ok_or(())?);
            if last < first {
                return Err(());
            }
            (first, last.min(length.saturating_sub(1)))
        }
        (true, true) => return Err(()),
    };
    if range.0 >= length {
        return Err(());
    }
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok(Some((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Ok(Some((90, 99))));
        assert_eq!(parse_range("bytes=95-200", 100), Ok(Some((95, 99))));
        assert_eq!(parse_range("bytes=-200", 100), Ok(Some((0, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Err(()));
        assert_eq!(parse_range("bytes=5-1", 100), Err(()));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), Ok(None));
        assert_eq!(parse_range("items=0-1", 100), Ok(None));
    }

    #[test]
    fn any_filename_makes_a_safe_header() {
        let value = content_disposition("résumé \"final\".pdf");
        let text = value.to_str().unwrap();
        assert!(text.starts_with("attachment; filename=\"r_sum_ _final_.pdf\""), "{text}");
        assert!(text.contains("filename*=UTF-8''r%C3%A9sum%C3%A9%20%22final%22.pdf"), "{text}");
    }
}
