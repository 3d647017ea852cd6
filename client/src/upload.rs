//! Uploads from Rust: a tus 1.0.0 client (create, offset, append, resume) and the
//! attachment routes. The `soma upload` command, the tests, the benchmark and the drills use it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use reqwest::{Body, Method};
use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeekExt};
use uuid::Uuid;

use soma_contract::api::Attachment;

use crate::{Client, ClientError, check, decode};

pub const TUS_VERSION: &str = "1.0.0";
const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Bytes per read of the file while a PATCH streams it.
const READ_BYTES: usize = 256 * 1024;
/// How often [`Client::upload_file`] reports progress while a request streams the file.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// How often [`Client::upload_file`] resumes after a broken request before giving up.
const RESUME_ATTEMPTS: u32 = 30;

/// A tus upload: its URL (path on the API) and length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TusUpload {
    pub location: String,
    pub length: u64,
}

impl TusUpload {
    /// The attachment's id: the last part of the upload's URL.
    pub fn id(&self) -> Result<Uuid, ClientError> {
        self.location
            .rsplit('/')
            .next()
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| ClientError::Decode(format!("upload location {:?} does not end in an id", self.location)))
    }
}

/// Progress of [`Client::upload_file`]: bytes handed to the connection while a request goes,
/// the server's offset after each.
#[derive(Debug, Clone, Copy)]
pub struct UploadProgress {
    pub sent: u64,
    pub length: u64,
    /// Requests that broke and were resumed from the server's offset.
    pub resumed: u32,
}

/// `Upload-Metadata`: `key base64(value)` pairs.
fn metadata(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{k} {}", BASE64.encode(v))).collect::<Vec<_>>().join(",")
}

fn header_u64(response: &reqwest::Response, name: &str) -> Result<u64, ClientError> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| ClientError::Decode(format!("the answer has no {name}")))
}

impl Client {
    /// A tus request to `path`.
    pub fn tus(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.request(method, path).header("Tus-Resumable", TUS_VERSION)
    }

    /// Creates a tus upload of `length` bytes with `Upload-Metadata` pairs (`filename`,
    /// `filetype`, `session_id`, `sha256`).
    pub async fn tus_create(&self, length: u64, pairs: &[(&str, &str)]) -> Result<TusUpload, ClientError> {
        let response = self
            .tus(Method::POST, "/v1/uploads")
            .header("Upload-Length", length)
            .header("Upload-Metadata", metadata(pairs))
            .send()
            .await?;
        let response = check(response).await?;
        let location = response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| ClientError::Decode("the created upload has no Location".into()))?;
        Ok(TusUpload { location: location.to_string(), length })
    }

    /// The server's offset of an upload (`HEAD`).
    pub async fn tus_offset(&self, upload: &TusUpload) -> Result<u64, ClientError> {
        let response = check(self.tus(Method::HEAD, &upload.location).send().await?).await?;
        header_u64(&response, "upload-offset")
    }

    /// Sends `body` from `offset` (`PATCH`); returns the new offset.
    pub async fn tus_append(&self, upload: &TusUpload, offset: u64, body: impl Into<Body>) -> Result<u64, ClientError> {
        self.tus_patch(self.tus_patch_request(upload, offset).body(body)).await
    }

    /// A `PATCH` of an upload from `offset`, its body still to give.
    fn tus_patch_request(&self, upload: &TusUpload, offset: u64) -> reqwest::RequestBuilder {
        self.tus(Method::PATCH, &upload.location)
            .header("Content-Type", OFFSET_OCTET_STREAM)
            .header("Upload-Offset", offset)
    }

    /// Sends a `PATCH`; returns the server's new offset.
    async fn tus_patch(&self, request: reqwest::RequestBuilder) -> Result<u64, ClientError> {
        header_u64(&check(request.send().await?).await?, "upload-offset")
    }

    /// Creates a tus upload for a file: its name, type and length, for `session` if given.
    pub async fn tus_create_for_file(&self, path: &Path, session: Option<Uuid>) -> Result<TusUpload, ClientError> {
        let length = tokio::fs::metadata(path)
            .await
            .map_err(|err| ClientError::Decode(format!("{}: {err}", path.display())))?
            .len();
        let filename = path.file_name().and_then(|n| n.to_str()).unwrap_or("upload");
        let session = session.map(|s| s.to_string());
        let mut pairs = vec![("filename", filename), ("filetype", content_type_of(filename))];
        if let Some(session) = &session {
            pairs.push(("session_id", session));
        }
        self.tus_create(length, &pairs).await
    }

    /// Uploads a file over tus: the rest of the file in one streamed `PATCH` (as tus-js-client
    /// does by default; the server keeps every chunk as it arrives, so a broken request loses
    /// nothing it stored), resuming from the server's offset when a request breaks (the API
    /// restarting, say); `resume` continues an upload begun earlier. Calls `progress` every
    /// [`PROGRESS_EVERY`] while the bytes go, and after each request.
    pub async fn upload_file(
        &self,
        path: &Path,
        session: Option<Uuid>,
        resume: Option<TusUpload>,
        mut progress: impl FnMut(UploadProgress),
    ) -> Result<TusUpload, ClientError> {
        let io = |err: std::io::Error| ClientError::Decode(format!("{}: {err}", path.display()));
        let length = tokio::fs::metadata(path).await.map_err(io)?.len();
        let upload = match resume {
            Some(upload) => TusUpload { length, ..upload },
            None => self.tus_create_for_file(path, session).await?,
        };
        let mut offset = self.tus_offset(&upload).await?;
        let mut resumed = 0;
        progress(UploadProgress { sent: offset, length, resumed });
        while offset < length {
            let mut file = tokio::fs::File::open(path).await.map_err(io)?;
            file.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
            let sent = Arc::new(AtomicU64::new(offset));
            let rest = length - offset;
            let request = self
                .tus_patch_request(&upload, offset)
                .header("Content-Length", rest)
                .body(counted_body(file.take(rest), sent.clone()));
            let answer = self.tus_patch(request);
            tokio::pin!(answer);
            let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + PROGRESS_EVERY, PROGRESS_EVERY);
            let answer = loop {
                tokio::select! {
                    answer = &mut answer => break answer,
                    _ = ticks.tick() => progress(UploadProgress { sent: sent.load(Ordering::Relaxed), length, resumed }),
                }
            };
            match answer {
                Ok(next) => offset = next,
                Err(err) if !err.is_permanent() || err.status() == Some(409) => {
                    resumed += 1;
                    if resumed > RESUME_ATTEMPTS {
                        return Err(err);
                    }
                    // Wait for the API to come back, then go on from what it has.
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    match self.tus_offset(&upload).await {
                        Ok(server) => offset = server,
                        Err(err) if err.is_permanent() => return Err(err),
                        Err(_) => {}
                    }
                }
                Err(err) => return Err(err),
            }
            progress(UploadProgress { sent: offset, length, resumed });
        }
        Ok(upload)
    }

    /// A file as a plain multipart upload (small files): stored and queued for its scan.
    pub async fn upload_multipart(
        &self,
        filename: &str,
        bytes: Vec<u8>,
        session: Option<Uuid>,
    ) -> Result<Attachment, ClientError> {
        let part = reqwest::multipart::Part::bytes(bytes)
            .file_name(filename.to_string())
            .mime_str(content_type_of(filename))
            .map_err(ClientError::Http)?;
        let form = reqwest::multipart::Form::new().part("file", part);
        let mut request = self.request(Method::POST, "/v1/uploads").multipart(form);
        if let Some(session) = session {
            request = request.query(&[("session_id", session)]);
        }
        decode(request.send().await?).await
    }

    /// An attachment and its scan's verdict.
    pub async fn attachment(&self, id: Uuid) -> Result<Attachment, ClientError> {
        decode(self.request(Method::GET, &format!("/v1/attachments/{id}/status")).send().await?).await
    }

    /// Polls the attachment until its scan has said its last word (or `wait` passes).
    pub async fn wait_for_scan(&self, id: Uuid, wait: Duration) -> Result<Attachment, ClientError> {
        let started = tokio::time::Instant::now();
        loop {
            let attachment = self.attachment(id).await?;
            if attachment.status.is_final() || started.elapsed() >= wait {
                return Ok(attachment);
            }
            // Most scans end within seconds of the last byte: look often then, rarely after.
            let pause = if started.elapsed() < Duration::from_secs(5) { 25 } else { 250 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// `GET /v1/attachments/{id}`, with a `Range` if given: the response, to stream.
    pub async fn download(&self, id: Uuid, range: Option<&str>) -> Result<reqwest::Response, ClientError> {
        let mut request = self.request(Method::GET, &format!("/v1/attachments/{id}"));
        if let Some(range) = range {
            request = request.header("Range", range);
        }
        check(request.send().await?).await
    }
}

/// `reader` as a request body, read [`READ_BYTES`] at a time, adding to `sent` what it hands
/// to the connection.
fn counted_body(reader: impl AsyncRead + Unpin + Send + 'static, sent: Arc<AtomicU64>) -> Body {
    Body::wrap_stream(futures::stream::try_unfold(reader, move |mut reader| {
        let sent = sent.clone();
        async move {
            let mut buffer = BytesMut::zeroed(READ_BYTES);
            let read = reader.read(&mut buffer).await?;
            if read == 0 {
                return Ok::<_, std::io::Error>(None);
            }
            buffer.truncate(read);
            sent.fetch_add(read as u64, Ordering::Relaxed);
            Ok(Some((buffer.freeze(), reader)))
        }
    }))
}

/// A content type from a file name's extension, for the common kinds; else octet-stream.
pub fn content_type_of(filename: &str) -> &'static str {
    let extension = filename.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match extension.as_str() {
        "txt" | "log" => "text/plain",
        "md" | "markdown" => "text/markdown",
        "json" => "application/json",
        "csv" => "text/csv",
        "pdf" => "application/pdf",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "zip" => "application/zip",
        "html" | "htm" => "text/html",
        _ => "application/octet-stream",
    }
}
