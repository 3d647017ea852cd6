//! Uploads: tus 1.0.0 at `/v1/uploads` (core, creation, creation-with-upload,
//! creation-defer-length, termination, checksum, expiration) and a plain multipart
//! `POST /v1/uploads` for small files.
//!
//! Received bytes go to the store in chunks as they arrive (durable once acknowledged,
//! readable by any api process), so an upload resumes after a restart, on any process, and
//! memory use does not grow with the file. A tus upload's `UploadScanWorkflow` starts when the
//! upload is created and scans the chunks as they are stored; the request that completes the
//! file signals it (`received`), starting it if need be. Nothing is served before the scan
//! says `clean`.

use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use soma_contract::api::{Attachment, ErrorBody};
use soma_contract::AttachmentStatus;
use soma_core::store::{Appended, AttachmentRow, NewUpload};
use soma_workflows::UploadScanWorkflow;

use crate::auth::Principal;
use crate::extract::AppQuery;
use crate::http::attachments::owned;
use crate::request_ids::RequestIds;
use crate::{ApiContext, ApiError};

pub const TUS_VERSION: &str = "1.0.0";
const TUS_EXTENSIONS: &str = "creation,creation-with-upload,creation-defer-length,termination,checksum,expiration";
const TUS_CHECKSUMS: &str = "sha1,sha256";
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";

pub const TUS_RESUMABLE: HeaderName = HeaderName::from_static("tus-resumable");
const TUS_VERSION_HEADER: HeaderName = HeaderName::from_static("tus-version");
const TUS_EXTENSION: HeaderName = HeaderName::from_static("tus-extension");
const TUS_MAX_SIZE: HeaderName = HeaderName::from_static("tus-max-size");
const TUS_CHECKSUM_ALGORITHM: HeaderName = HeaderName::from_static("tus-checksum-algorithm");
pub const UPLOAD_OFFSET: HeaderName = HeaderName::from_static("upload-offset");
pub const UPLOAD_LENGTH: HeaderName = HeaderName::from_static("upload-length");
const UPLOAD_DEFER_LENGTH: HeaderName = HeaderName::from_static("upload-defer-length");
pub const UPLOAD_METADATA: HeaderName = HeaderName::from_static("upload-metadata");
const UPLOAD_CHECKSUM: HeaderName = HeaderName::from_static("upload-checksum");
pub const UPLOAD_EXPIRES: HeaderName = HeaderName::from_static("upload-expires");

/// The headers a browser client on another origin sends and reads (CORS).
pub const TUS_REQUEST_HEADERS: [HeaderName; 6] =
    [TUS_RESUMABLE, UPLOAD_OFFSET, UPLOAD_LENGTH, UPLOAD_DEFER_LENGTH, UPLOAD_METADATA, UPLOAD_CHECKSUM];
pub const TUS_RESPONSE_HEADERS: [HeaderName; 9] = [
    TUS_RESUMABLE,
    TUS_VERSION_HEADER,
    TUS_EXTENSION,
    TUS_MAX_SIZE,
    UPLOAD_OFFSET,
    UPLOAD_LENGTH,
    UPLOAD_METADATA,
    UPLOAD_EXPIRES,
    header::LOCATION,
];

/// The tus protocol around every upload route: a request must speak tus 1.0.0 (412 with the
/// versions we speak otherwise), except discovery (`OPTIONS`) and plain multipart; every
/// response says `Tus-Resumable`.
pub async fn tus_protocol(request: Request, next: Next) -> Response {
    let exempt = request.method() == Method::OPTIONS || is_multipart(request.headers());
    let version = request.headers().get(&TUS_RESUMABLE).and_then(|v| v.to_str().ok());
    let mut response = if exempt || version == Some(TUS_VERSION) {
        next.run(request).await
    } else {
        let message = match version {
            None => "tus requests need the Tus-Resumable: 1.0.0 header".to_string(),
            Some(other) => format!("tus version {other:?} is not supported; this server speaks {TUS_VERSION}"),
        };
        let mut refused = ApiError::PreconditionFailed { code: "tus_version_unsupported", message }.into_response();
        refused.headers_mut().insert(TUS_VERSION_HEADER, HeaderValue::from_static(TUS_VERSION));
        refused
    };
    response.headers_mut().insert(TUS_RESUMABLE, HeaderValue::from_static(TUS_VERSION));
    response
}

fn is_multipart(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().to_ascii_lowercase().starts_with("multipart/form-data"))
}

fn has_content_type(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// What this server supports of tus (discovery).
#[utoipa::path(options, path = "/v1/uploads", tag = "uploads",
    responses((status = 204, description = "tus discovery: `Tus-Version`, `Tus-Extension`, `Tus-Max-Size`, `Tus-Checksum-Algorithm`")))]
pub async fn discover(State(ctx): State<ApiContext>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let headers = response.headers_mut();
    headers.insert(TUS_VERSION_HEADER, HeaderValue::from_static(TUS_VERSION));
    headers.insert(TUS_EXTENSION, HeaderValue::from_static(TUS_EXTENSIONS));
    headers.insert(TUS_MAX_SIZE, ctx.config.upload_max_bytes.into());
    headers.insert(TUS_CHECKSUM_ALGORITHM, HeaderValue::from_static(TUS_CHECKSUMS));
    response
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UploadQuery {
    /// (multipart) The session the file is for: its stream hears the scan's verdict.
    session_id: Option<Uuid>,
}

/// Creates an upload. tus (`Tus-Resumable: 1.0.0`): `Upload-Length` or `Upload-Defer-Length: 1`,
/// `Upload-Metadata` (`filename`, `filetype`, `session_id`, optional `sha256` hex), and with
/// `Content-Type: application/offset+octet-stream` the first bytes too → 201 with `Location`.
/// Multipart (`multipart/form-data`, a `file` field; small files): the whole file → 202 once
/// it is stored and queued for its scan.
#[utoipa::path(post, path = "/v1/uploads", tag = "uploads",
    params(UploadQuery,
           ("Tus-Resumable" = Option<String>, Header, pattern = r"^1\.0\.0$", description = "tus: 1.0.0 (not for multipart)"),
           ("Upload-Length" = Option<u64>, Header, description = "tus: the file's length"),
           ("Upload-Defer-Length" = Option<String>, Header, pattern = "^1$", description = "tus: 1 when the length comes later"),
           ("Upload-Metadata" = Option<String>, Header, description = "tus: `key base64(value)` pairs, comma separated")),
    request_body(content(("application/offset+octet-stream"), ("multipart/form-data")),
                 description = "tus: the first bytes (optional); multipart: a `file` field"),
    responses(
        (status = 201, description = "tus: created; `Location` is the upload's URL, `Upload-Offset` the bytes taken"),
        (status = 202, description = "multipart: stored and queued for the scan", body = Attachment),
        (status = 400, description = "Missing or bad `Upload-Length`/`Upload-Metadata`, no `file` field", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "`session_id` is not one of the tenant's sessions", body = ErrorBody),
        (status = 412, description = "Not tus 1.0.0 (`Tus-Version` says what is)", body = ErrorBody),
        (status = 413, description = "Over `Tus-Max-Size` (or the multipart limit)", body = ErrorBody),
        (status = 415, description = "Neither tus nor multipart", body = ErrorBody),
        (status = 429, description = "The tenant has too many uploads in progress", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn create(
    State(ctx): State<ApiContext>,
    principal: Principal,
    ids: RequestIds,
    AppQuery(query): AppQuery<UploadQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    if is_multipart(request.headers()) {
        return multipart(ctx, principal, ids, query.session_id, request).await;
    }
    let headers = request.headers();
    let length = match (header_u64(headers, &UPLOAD_LENGTH)?, headers.get(&UPLOAD_DEFER_LENGTH)) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("invalid_upload", "send Upload-Length or Upload-Defer-Length, not both"));
        }
        (Some(length), None) => Some(length),
        (None, Some(defer)) if defer.as_bytes() == b"1" => None,
        (None, _) => {
            return Err(ApiError::bad_request("invalid_upload", "Upload-Length (or Upload-Defer-Length: 1) is required"));
        }
    };
    if let Some(length) = length {
        within_max_size(&ctx, length)?;
    }
    let metadata = parse_metadata(headers.get(&UPLOAD_METADATA))?;
    let text = |key: &str| metadata.get(key).and_then(Value::as_str).map(str::to_string);
    let session_id = match text("session_id") {
        Some(raw) => Some(raw.parse().map_err(|_| ApiError::NotFound("session"))?),
        None => None,
    };
    let expected_sha256 = text("sha256");
    if let Some(sha) = &expected_sha256
        && !(sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return Err(ApiError::bad_request("invalid_upload", "Upload-Metadata sha256 must be 64 hex digits"));
    }
    let filename = text("filename").or_else(|| text("name")).unwrap_or_else(|| "upload".into());
    let content_type = text("filetype").or_else(|| text("type")).unwrap_or_else(|| "application/octet-stream".into());
    let with_upload = has_content_type(headers, OFFSET_OCTET_STREAM);
    let checksum = checksum(headers)?;
    let row = create_row(&ctx, &principal, &ids, session_id, &filename, &content_type, length, metadata, expected_sha256.as_deref())
        .await?;
    let location = format!("/v1/uploads/{}", row.id);
    let received = if with_upload {
        receive(&ctx, &row, 0, checksum, request.into_body().into_data_stream()).await?
    } else {
        Received { received_bytes: 0, status: row.status }
    };
    if received.status == AttachmentStatus::Pending {
        scan_received(&ctx, &row).await?;
    } else if let Err(err) = follow_upload(&ctx, &row).await {
        // The scan then starts with the last byte, reading the file whole.
        tracing::warn!(attachment_id = %row.id, error = %err, "could not start the scan that follows the upload");
    }
    let mut response = StatusCode::CREATED.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_str(&location).map_err(anyhow::Error::from)?);
    headers.insert(UPLOAD_OFFSET, received.received_bytes.into());
    headers.insert(UPLOAD_EXPIRES, http_date(row.expires_at));
    Ok(response)
}

/// Where an upload is: `Upload-Offset` (the bytes the server has), `Upload-Length` (or
/// `Upload-Defer-Length`), `Upload-Metadata`, `Upload-Expires`.
#[utoipa::path(head, path = "/v1/uploads/{id}", tag = "uploads",
    params(("id" = Uuid, Path, description = "The upload (its attachment's id)"), ("Tus-Resumable" = String, Header, pattern = r"^1\.0\.0$", description = "The tus version: 1.0.0 (412 otherwise)")),
    responses(
        (status = 200, description = "The upload's offset and length"),
        (status = 401, description = "No or a wrong API key (a HEAD answer carries no body)", body = ErrorBody),
        (status = 404, description = "No such upload for this tenant", body = ErrorBody),
        (status = 410, description = "The upload expired before it was finished", body = ErrorBody),
        (status = 412, description = "Not tus 1.0.0", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn offset(State(ctx): State<ApiContext>, principal: Principal, Path(id): Path<String>) -> Result<Response, ApiError> {
    let row = upload_row(&ctx, &principal, &id).await?;
    let mut response = StatusCode::OK.into_response();
    let headers = response.headers_mut();
    headers.insert(UPLOAD_OFFSET, row.received_bytes.into());
    match row.size_bytes {
        Some(length) => headers.insert(UPLOAD_LENGTH, length.into()),
        None => headers.insert(UPLOAD_DEFER_LENGTH, HeaderValue::from_static("1")),
    };
    if let Some(metadata) = encode_metadata(&row.metadata) {
        headers.insert(UPLOAD_METADATA, metadata);
    }
    if row.status == AttachmentStatus::Uploading {
        headers.insert(UPLOAD_EXPIRES, http_date(row.expires_at));
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// Sends bytes from `Upload-Offset` (`Content-Type: application/offset+octet-stream`), with
/// `Upload-Checksum` (`sha1` or `sha256`, base64) if wanted. The request that completes the
/// file starts its scan.
#[utoipa::path(patch, path = "/v1/uploads/{id}", tag = "uploads",
    params(("id" = Uuid, Path, description = "The upload"), ("Tus-Resumable" = String, Header, pattern = r"^1\.0\.0$", description = "The tus version: 1.0.0 (412 otherwise)"),
           ("Upload-Offset" = u64, Header, description = "Where these bytes start: the server's offset (409 otherwise)"),
           ("Upload-Checksum" = Option<String>, Header, description = "`sha1` or `sha256`, a space, the base64 digest of this request's bytes")),
    request_body(content = Vec<u8>, content_type = "application/offset+octet-stream"),
    responses(
        (status = 204, description = "Taken: `Upload-Offset` is the new offset"),
        (status = 400, description = "Missing `Upload-Offset`, an unsupported checksum algorithm", body = ErrorBody),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such upload for this tenant", body = ErrorBody),
        (status = 409, description = "`Upload-Offset` is not the server's offset (HEAD to find it)", body = ErrorBody),
        (status = 410, description = "The upload expired", body = ErrorBody),
        (status = 412, description = "Not tus 1.0.0", body = ErrorBody),
        (status = 413, description = "Bytes beyond the upload's length", body = ErrorBody),
        (status = 415, description = "Not `application/offset+octet-stream`", body = ErrorBody),
        (status = 460, description = "The checksum does not match: nothing of this request was kept", body = ErrorBody),
        (status = 503, description = "The database or Temporal is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn append(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let headers = request.headers();
    if !has_content_type(headers, OFFSET_OCTET_STREAM) {
        return Err(ApiError::UnsupportedMediaType(OFFSET_OCTET_STREAM));
    }
    let offset = header_u64(headers, &UPLOAD_OFFSET)?
        .ok_or_else(|| ApiError::bad_request("invalid_upload", "Upload-Offset is required"))?;
    let checksum = checksum(headers)?;
    let declared_length = header_u64(headers, &UPLOAD_LENGTH)?;
    let mut row = upload_row(&ctx, &principal, &id).await?;
    if row.received_bytes as u64 != offset {
        return Err(offset_moved(row.received_bytes));
    }
    if let Some(length) = declared_length {
        within_max_size(&ctx, length)?;
        match row.size_bytes {
            Some(known) if known as u64 != length => {
                return Err(ApiError::bad_request("invalid_upload", format!("the upload's length is {known}, not {length}")));
            }
            Some(_) => {}
            None => {
                if !ctx.store.set_upload_length(&row.tenant_id, row.id, length as i64, None).await? {
                    return Err(ApiError::bad_request("invalid_upload", "Upload-Length is below the bytes already sent"));
                }
                row = upload_row(&ctx, &principal, &id).await?;
            }
        }
    }
    if let (Some(length), Some(sent)) = (row.size_bytes, header_u64(headers, &header::CONTENT_LENGTH)?)
        && offset + sent > length as u64
    {
        return Err(beyond_length(length));
    }
    let received = if row.status == AttachmentStatus::Uploading {
        receive(&ctx, &row, offset as i64, checksum, request.into_body().into_data_stream()).await?
    } else {
        Received { received_bytes: row.received_bytes, status: row.status }
    };
    if received.status == AttachmentStatus::Pending {
        scan_received(&ctx, &row).await?;
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response.headers_mut().insert(UPLOAD_OFFSET, received.received_bytes.into());
    response.headers_mut().insert(UPLOAD_EXPIRES, http_date(row.expires_at));
    Ok(response)
}

/// Abandons an unfinished upload and its bytes (tus termination).
#[utoipa::path(delete, path = "/v1/uploads/{id}", tag = "uploads",
    params(("id" = Uuid, Path, description = "The upload"), ("Tus-Resumable" = String, Header, pattern = r"^1\.0\.0$", description = "The tus version: 1.0.0 (412 otherwise)")),
    responses(
        (status = 204, description = "Terminated: its bytes are gone"),
        (status = 401, description = "No or a wrong API key", body = ErrorBody),
        (status = 404, description = "No such upload for this tenant", body = ErrorBody),
        (status = 409, description = "`upload_complete`: every byte is in; the file is scanned and kept", body = ErrorBody),
        (status = 412, description = "Not tus 1.0.0", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    ),
    security(("api_key" = []), ("bearer" = []))
)]
pub async fn terminate(
    State(ctx): State<ApiContext>,
    principal: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = owned(&ctx, &principal, &id, "upload").await?;
    if ctx.store.terminate_upload(&principal.tenant_id, row.id).await? {
        return Ok(StatusCode::NO_CONTENT);
    }
    Err(ApiError::Conflict {
        code: "upload_complete",
        message: "every byte of this upload is in: it is scanned and kept, not terminated".into(),
    })
}

/// The plain multipart upload: the `file` field, streamed to the store as it arrives.
async fn multipart(
    ctx: ApiContext,
    principal: Principal,
    ids: RequestIds,
    session_id: Option<Uuid>,
    request: Request,
) -> Result<Response, ApiError> {
    let mut form = Multipart::from_request(request, &ctx)
        .await
        .map_err(|rejection| ApiError::bad_request("invalid_multipart", rejection.body_text()))?;
    let limit = ctx.config.upload_multipart_max_bytes;
    while let Some(field) = form.next_field().await.map_err(multipart_error)? {
        if field.name() != Some("file") {
            continue;
        }
        let filename = field.file_name().unwrap_or("upload").to_string();
        let content_type = field.content_type().unwrap_or("application/octet-stream").to_string();
        let metadata = serde_json::json!({ "filename": filename, "filetype": content_type });
        let row =
            create_row(&ctx, &principal, &ids, session_id, &filename, &content_type, None, metadata_map(metadata), None)
                .await?;
        let bytes = field.map(|chunk| chunk.map_err(|err| err.body_text()));
        let mut whole = Sha256::new();
        let hashed = bytes.map(|chunk| {
            if let Ok(data) = &chunk {
                whole.update(data);
            }
            chunk
        });
        let received = match receive_limited(&ctx, &row, hashed, limit).await {
            Ok(received) => received,
            Err(err) => {
                // A refused or broken multipart upload leaves nothing behind.
                let _ = ctx.store.terminate_upload(&row.tenant_id, row.id).await;
                return Err(err);
            }
        };
        let sha256 = hex::encode(whole.finalize());
        ctx.store.set_upload_length(&row.tenant_id, row.id, received, Some(&sha256)).await?;
        let row = ctx.store.attachment(&row.tenant_id, row.id).await?.ok_or(ApiError::NotFound("upload"))?;
        scan_received(&ctx, &row).await?;
        return Ok((StatusCode::ACCEPTED, Json(attachment_view(&row))).into_response());
    }
    Err(ApiError::bad_request("invalid_multipart", "the form has no `file` field"))
}

fn multipart_error(err: axum::extract::multipart::MultipartError) -> ApiError {
    ApiError::bad_request("invalid_multipart", err.body_text())
}

/// Stores a multipart file's bytes, refusing it past `limit`. Returns its length.
async fn receive_limited(
    ctx: &ApiContext,
    row: &AttachmentRow,
    bytes: impl Stream<Item = Result<Bytes, String>> + Unpin,
    limit: u64,
) -> Result<i64, ApiError> {
    let mut writer = ctx.store.chunk_writer(&row.tenant_id, row.id, false).await?;
    let mut pieces = Pieces::new(bytes, ctx.config.upload_chunk_bytes);
    let mut offset = 0i64;
    while let Some(piece) = pieces.next().await {
        let piece = piece.map_err(|message| ApiError::bad_request("invalid_multipart", message))?;
        if offset as u64 + piece.len() as u64 > limit {
            return Err(ApiError::PayloadTooLarge {
                message: format!("multipart uploads take at most {limit} bytes; send larger files over tus"),
            });
        }
        match writer.append(offset, &piece).await? {
            Appended::Stored { received_bytes, .. } => offset = received_bytes,
            Appended::OffsetMoved => return Err(offset_moved(offset)),
        }
    }
    writer.commit().await?;
    Ok(offset)
}

/// Creates the upload's row, within the tenant's limit on uploads in progress.
#[allow(clippy::too_many_arguments)]
async fn create_row(
    ctx: &ApiContext,
    principal: &Principal,
    ids: &RequestIds,
    session_id: Option<Uuid>,
    filename: &str,
    content_type: &str,
    length: Option<u64>,
    metadata: Map<String, Value>,
    expected_sha256: Option<&str>,
) -> Result<AttachmentRow, ApiError> {
    if let Some(session_id) = session_id
        && !ctx.store.session_exists(&principal.tenant_id, session_id).await?
    {
        return Err(ApiError::NotFound("session"));
    }
    let expires_at = Utc::now() + chrono::Duration::seconds(ctx.config.upload_expiry_secs as i64);
    let upload = NewUpload {
        tenant_id: &principal.tenant_id,
        session_id,
        filename,
        content_type,
        size_bytes: length.map(|l| l as i64),
        metadata: Value::Object(metadata),
        expected_sha256,
        request_id: &ids.request_id,
        trace_id: Some(&ids.trace_id),
        expires_at,
        max_in_progress: i64::from(ctx.config.upload_max_in_progress),
    };
    let row = ctx.store.create_upload(&upload).await?.ok_or_else(|| ApiError::TooManyRequests {
        code: "too_many_uploads",
        message: format!(
            "the tenant has {} uploads in progress already: finish or terminate one first",
            ctx.config.upload_max_in_progress
        ),
    })?;
    tracing::info!(attachment_id = %row.id, %filename, length, "upload created");
    Ok(row)
}

/// Where an upload got to.
struct Received {
    received_bytes: i64,
    status: AttachmentStatus,
}

/// A tus request's checksum: the digest its bytes must have, and that algorithm's hash of
/// the bytes so far.
enum Checksum {
    Sha1 { expected: Vec<u8>, hash: sha1::Sha1 },
    Sha256 { expected: Vec<u8>, hash: Sha256 },
}

impl Checksum {
    fn update(&mut self, bytes: &[u8]) {
        match self {
            Checksum::Sha1 { hash, .. } => hash.update(bytes),
            Checksum::Sha256 { hash, .. } => hash.update(bytes),
        }
    }

    fn matches(self) -> bool {
        match self {
            Checksum::Sha1 { expected, hash } => hash.finalize().as_slice() == expected.as_slice(),
            Checksum::Sha256 { expected, hash } => hash.finalize().as_slice() == expected.as_slice(),
        }
    }
}

fn checksum(headers: &HeaderMap) -> Result<Option<Checksum>, ApiError> {
    let Some(value) = headers.get(&UPLOAD_CHECKSUM) else { return Ok(None) };
    let bad = || ApiError::bad_request("invalid_checksum", "Upload-Checksum must be `<algorithm> <base64 digest>`");
    let (algorithm, digest) = value.to_str().ok().and_then(|v| v.split_once(' ')).ok_or_else(bad)?;
    let digest = BASE64.decode(digest.trim()).map_err(|_| bad())?;
    match algorithm {
        "sha1" => Ok(Some(Checksum::Sha1 { expected: digest, hash: sha1::Sha1::new() })),
        "sha256" => Ok(Some(Checksum::Sha256 { expected: digest, hash: Sha256::new() })),
        other => Err(ApiError::bad_request(
            "checksum_algorithm_unsupported",
            format!("checksum algorithm {other:?} is not supported ({TUS_CHECKSUMS})"),
        )),
    }
}

/// Stores a tus request's bytes from `offset`. Without a checksum each chunk is kept as soon
/// as it is stored, and a request cut short keeps what arrived (the client resumes from
/// there); with one, all of them are kept only if the checksum matches (460 otherwise).
/// Either way what is kept is durable when this returns.
async fn receive<E: std::fmt::Display>(
    ctx: &ApiContext,
    row: &AttachmentRow,
    offset: i64,
    mut checksum: Option<Checksum>,
    body: impl Stream<Item = Result<Bytes, E>> + Unpin,
) -> Result<Received, ApiError> {
    let mut writer = ctx.store.chunk_writer(&row.tenant_id, row.id, checksum.is_some()).await?;
    let mut pieces = Pieces::new(body, ctx.config.upload_chunk_bytes);
    let mut received = Received { received_bytes: offset, status: row.status };
    let mut next = pieces.next().await;
    while let Some(piece) = next.take() {
        let piece = match piece {
            Ok(piece) => piece,
            Err(err) => {
                // The client went away: what arrived is kept (unless a checksum must match).
                tracing::info!(attachment_id = %row.id, error = %err, offset = received.received_bytes, "upload request cut short");
                if checksum.is_none() {
                    writer.commit().await?;
                    return Ok(received);
                }
                return Err(ApiError::bad_request("upload_interrupted", format!("the request body broke off: {err}")));
            }
        };
        if let Some(length) = row.size_bytes
            && received.received_bytes + piece.len() as i64 > length
        {
            return Err(beyond_length(length));
        }
        if let Some(checksum) = &mut checksum {
            checksum.update(&piece);
        }
        // The next piece arrives while this one is stored.
        let (stored, following) = tokio::join!(writer.append(received.received_bytes, &piece), pieces.next());
        match stored? {
            Appended::Stored { received_bytes, status } => received = Received { received_bytes, status },
            Appended::OffsetMoved => return Err(offset_moved(received.received_bytes)),
        }
        next = following;
    }
    if !checksum.is_none_or(Checksum::matches) {
        // The writer is dropped uncommitted: nothing of this request is kept.
        return Err(ApiError::ChecksumMismatch);
    }
    writer.commit().await?;
    Ok(received)
}

/// Cuts a body into pieces of `size` bytes (the last one shorter), so each is stored as one
/// chunk and memory holds at most one piece.
struct Pieces<S, E> {
    body: S,
    size: usize,
    buffer: BytesMut,
    done: bool,
    /// The body's error, handed out after the bytes that came before it.
    error: Option<E>,
}

impl<S, E> Pieces<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    fn new(body: S, size: usize) -> Self {
        Self { body, size, buffer: BytesMut::new(), done: false, error: None }
    }

    async fn next(&mut self) -> Option<Result<Bytes, E>> {
        while !self.done && self.buffer.len() < self.size {
            match self.body.next().await {
                Some(Ok(data)) => self.buffer.extend_from_slice(&data),
                Some(Err(err)) => {
                    self.done = true;
                    self.error = Some(err);
                }
                None => self.done = true,
            }
        }
        if self.buffer.is_empty() {
            return self.error.take().map(Err);
        }
        let take = self.buffer.len().min(self.size);
        Some(Ok(self.buffer.split_to(take).freeze()))
    }
}

/// Starts the file's scan as its upload is created: it scans the bytes as they are stored.
/// Starting it again (a retried request) is fine.
async fn follow_upload(ctx: &ApiContext, row: &AttachmentRow) -> Result<(), ApiError> {
    let upload = row.upload_ref();
    let options = UploadScanWorkflow::start_options(&ctx.config.task_queue, &upload, &row.filename);
    soma_core::temporal::start_once(&ctx.temporal, UploadScanWorkflow::run, upload, options)
        .await
        .map_err(ApiError::workflow_service)
}

/// Tells the file's scan that every byte is in (starting it if it is not running); sending it
/// again (a retried request) is fine.
async fn scan_received(ctx: &ApiContext, row: &AttachmentRow) -> Result<(), ApiError> {
    UploadScanWorkflow::send_received(&ctx.temporal, &ctx.config.task_queue, &row.upload_ref(), &row.filename)
        .await
        .map_err(ApiError::workflow_service)
}

/// The tenant's upload named by the route: 404 for anything else, 410 once expired.
async fn upload_row(ctx: &ApiContext, principal: &Principal, id: &str) -> Result<AttachmentRow, ApiError> {
    let row = owned(ctx, principal, id, "upload").await?;
    if row.is_expired(Utc::now()) {
        return Err(ApiError::Gone { code: "upload_expired", message: "the upload expired before it was finished".into() });
    }
    Ok(row)
}

fn within_max_size(ctx: &ApiContext, length: u64) -> Result<(), ApiError> {
    let max = ctx.config.upload_max_bytes;
    if length > max {
        return Err(ApiError::PayloadTooLarge { message: format!("the upload is {length} bytes; Tus-Max-Size is {max}") });
    }
    Ok(())
}

fn offset_moved(offset: i64) -> ApiError {
    ApiError::Conflict {
        code: "offset_mismatch",
        message: format!("the upload is at offset {offset}: HEAD it and send from there"),
    }
}

fn beyond_length(length: i64) -> ApiError {
    ApiError::PayloadTooLarge { message: format!("the upload's length is {length} bytes: nothing past it is taken") }
}

fn header_u64(headers: &HeaderMap, name: &HeaderName) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| ApiError::bad_request("invalid_upload", format!("{name} must be a non-negative integer"))),
    }
}

/// `Upload-Metadata`: comma-separated `key base64(value)` pairs (a key alone has no value).
fn parse_metadata(header: Option<&HeaderValue>) -> Result<Map<String, Value>, ApiError> {
    let mut metadata = Map::new();
    let Some(header) = header else { return Ok(metadata) };
    let bad = |why: String| ApiError::bad_request("invalid_metadata", format!("Upload-Metadata: {why}"));
    let text = header.to_str().map_err(|_| bad("not ASCII".into()))?;
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        if key.is_empty() || metadata.contains_key(key) {
            return Err(bad(format!("key {key:?} is empty or repeated")));
        }
        let value = BASE64.decode(value.trim()).map_err(|_| bad(format!("the value of {key:?} is not base64")))?;
        let value = String::from_utf8(value).map_err(|_| bad(format!("the value of {key:?} is not UTF-8")))?;
        if value.contains('\0') {
            return Err(bad(format!("the value of {key:?} holds a NUL character")));
        }
        metadata.insert(key.to_string(), Value::String(value));
    }
    Ok(metadata)
}

fn metadata_map(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn encode_metadata(metadata: &Value) -> Option<HeaderValue> {
    let pairs: Vec<String> = metadata
        .as_object()?
        .iter()
        .map(|(key, value)| format!("{key} {}", BASE64.encode(value.as_str().unwrap_or_default())))
        .collect();
    HeaderValue::from_str(&pairs.join(",")).ok()
}

/// An HTTP date (RFC 9110), as `Upload-Expires` carries it.
pub fn http_date(at: DateTime<Utc>) -> HeaderValue {
    HeaderValue::from_str(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()).unwrap_or(HeaderValue::from_static(""))
}

/// An attachment as the API shows it.
pub fn attachment_view(row: &AttachmentRow) -> Attachment {
    Attachment {
        id: row.id,
        filename: row.filename.clone(),
        content_type: row.content_type.clone(),
        size_bytes: row.size_bytes,
        received_bytes: row.received_bytes,
        status: row.status,
        sha256: row.sha256.clone().or_else(|| row.expected_sha256.clone()),
        verdict: row.verdict.clone(),
        session_id: row.session_id,
        url: format!("/v1/attachments/{}", row.id),
        workflow_id: UploadScanWorkflow::workflow_id(row.id),
        created_at: row.created_at,
        scanned_at: row.scanned_at,
        storage: row.storage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_read_as_tus_writes_it() {
        let header = HeaderValue::from_static("filename d29ybGRfZG9taW5hdGlvbl9wbGFuLnBkZg==,is_confidential");
        let metadata = parse_metadata(Some(&header)).unwrap();
        assert_eq!(metadata["filename"], "world_domination_plan.pdf");
        assert_eq!(metadata["is_confidential"], "");
        assert!(parse_metadata(Some(&HeaderValue::from_static("filename !!!"))).is_err());
        assert!(parse_metadata(Some(&HeaderValue::from_static("a YQ==,a YQ=="))).is_err());
    }

    #[tokio::test]
    async fn pieces_hold_at_most_one_chunk_and_keep_bytes_before_a_break() {
        let body = futures::stream::iter(vec![
            Ok::<_, String>(Bytes::from_static(b"abc")),
            Ok(Bytes::from_static(b"defgh")),
            Err("cut".to_string()),
        ]);
        let mut pieces = Pieces::new(body, 4);
        assert_eq!(pieces.next().await.unwrap().unwrap(), "abcd");
        assert_eq!(pieces.next().await.unwrap().unwrap(), "efgh");
        assert!(pieces.next().await.unwrap().is_err());
        assert!(pieces.next().await.is_none());
    }
}
