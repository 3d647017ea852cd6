//! Uploads end to end, against the real clamd (with the project's EICAR signature) and the S3
//! endpoint `ops/test` starts, real Temporal and PostgreSQL: EICAR quarantined and never
//! served, clean files whole and by range, tus resume, checksum, expiry and limits, a large
//! file through S3, another tenant's 404, clamd stopped and started again. Run through
//! `ops/test`.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use soma_client::upload::TUS_VERSION;
use soma_client::{Client, TusUpload};
use soma_contract::api::Attachment;
use soma_contract::events::AttachmentStatusChanged;
use soma_contract::{AttachmentStatus, AttachmentStorage, SessionEvent};
use soma_devllm::DevProviderOptions;
use soma_workflows::UploadScanWorkflow;
use serde_json::json;
use soma_tests::{DEADLINE, Expect, KEY_A, KEY_B, TestApp, Typed, eventually};

/// The EICAR test file: every antivirus reports it, and it harms nothing.
const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
const WAIT: Duration = Duration::from_secs(60);

async fn app(name: &str, configure: impl FnOnce(&mut soma_core::Config)) -> TestApp {
    TestApp::spawn_with(name, DevProviderOptions::default(), configure).await
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Bytes that compress badly and repeat nowhere, like a real file.
fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect()
}

async fn scanned(api: &Client, id: Uuid) -> Attachment {
    let attachment = api.wait_for_scan(id, WAIT).await.expect("status readable");
    assert!(attachment.status.is_final(), "the scan did not finish within {WAIT:?}: {attachment:?}");
    attachment
}

async fn download(api: &Client, id: Uuid, range: Option<&str>) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let response = api.request(Method::GET, &format!("/v1/attachments/{id}"));
    let response = match range {
        Some(range) => response.header("Range", range),
        None => response,
    };
    let response = response.send().await.unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

async fn upload(api: &Client, bytes: &[u8], pairs: &[(&str, &str)]) -> TusUpload {
    let upload = api.tus_create(bytes.len() as u64, pairs).await.expect("upload created");
    let offset = api.tus_append(&upload, 0, bytes.to_vec()).await.expect("bytes taken");
    assert_eq!(offset, bytes.len() as u64);
    upload
}

#[tokio::test(flavor = "multi_thread")]
async fn eicar_is_quarantined_with_its_signature_never_served_and_announced_on_the_session() {
    let app = app("eicar", |_| {}).await;
    let _worker = app.start_worker();
    let (session_id, _, _) = app.send(None, "hello").await;
    let mut events = app.events(&session_id, None).await;
    let pairs = [("filename", "eicar.com"), ("filetype", "application/octet-stream"), ("session_id", &session_id)];
    let id = upload(&app.api, EICAR, &pairs).await.id().unwrap();

    let attachment = scanned(&app.api, id).await;
    assert_eq!(attachment.status, AttachmentStatus::Quarantined);
    let verdict = attachment.verdict.clone().unwrap_or_default();
    assert!(verdict.starts_with("Soma.Test.EICAR"), "the signature is named: {verdict}");
    assert_eq!(attachment.sha256.as_deref(), Some(sha256_hex(EICAR).as_str()));

    let (status, _, body) = download(&app.api, id, None).await;
    assert_eq!(status, 409, "a quarantined file is never served");
    assert!(String::from_utf8_lossy(&body).contains("attachment_quarantined"));
    let (status, _, _) = download(&app.api, id, Some("bytes=0-3")).await;
    assert_eq!(status, 409, "not a byte of it, by range either");
    assert_eq!(app.count("upload_chunks").await, 0, "the scanned bytes are dropped");

    let seen = events.until("attachment.status", WAIT).await;
    let SessionEvent::AttachmentStatusChanged(changed) = seen.last().unwrap().event() else { unreachable!() };
    assert_eq!(changed, AttachmentStatusChanged {
        attachment_id: id,
        filename: "eicar.com".into(),
        status: AttachmentStatus::Quarantined,
        size_bytes: EICAR.len() as i64,
        sha256: Some(sha256_hex(EICAR)),
        verdict: Some(verdict),
    });
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'upload.scan' AND outcome = 'quarantined'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(audited, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_changed_after_it_arrived_fails_the_scan_and_is_never_served() {
    let app = app("corrupt_chunk", |_| {}).await;
    // No worker yet: the scan reads the chunks only after one was changed.
    let file = random_bytes(2 * 1024 * 1024 + 17);
    let id = upload(&app.api, &file, &[("filename", "changed.bin")]).await.id().unwrap();
    let changed = sqlx::query("UPDATE upload_chunks SET data = set_byte(data, 10, 255 - get_byte(data, 10)) WHERE attachment_id = $1 AND start_offset > 0")
        .bind(id)
        .execute(app.store.pool())
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(changed, 2, "the file is in three chunks");
    let _worker = app.start_worker();
    let attachment = scanned(&app.api, id).await;
    assert_eq!(attachment.status, AttachmentStatus::Failed, "{attachment:?}");
    let reason = attachment.verdict.clone().unwrap_or_default();
    assert!(reason.contains("at offset 1048576 is not the one received"), "{reason}");
    let (status, _, _) = download(&app.api, id, None).await;
    assert_eq!(status, 409, "a file whose bytes changed is never served");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clean_file_downloads_whole_and_by_range_for_its_tenant_only() {
    let app = app("clean", |_| {}).await;
    let _worker = app.start_worker();
    let text = b"Quarterly numbers: revenue 42, costs 17.\n".repeat(20);
    let accepted = app.api.upload_multipart("numbers.txt", text.clone(), None).await.expect("multipart accepted");
    assert_eq!(accepted.sha256.as_deref(), Some(sha256_hex(&text).as_str()), "the SHA-256 as received");
    assert_eq!(accepted.size_bytes, Some(text.len() as i64));
    assert_eq!(accepted.content_type, "text/plain");
    assert_eq!(accepted.url, format!("/v1/attachments/{}", accepted.id));

    let attachment = scanned(&app.api, accepted.id).await;
    assert_eq!(attachment.status, AttachmentStatus::Clean, "{attachment:?}");
    let (status, headers, body) = download(&app.api, accepted.id, None).await;
    assert_eq!(status, 200);
    assert_eq!(body, text);
    assert_eq!(headers["etag"], format!("\"{}\"", sha256_hex(&text)).as_str());
    assert_eq!(headers["content-type"], "text/plain");
    assert!(headers["content-disposition"].to_str().unwrap().contains("numbers.txt"));

    let (status, headers, body) = download(&app.api, accepted.id, Some("bytes=10-19")).await;
    assert_eq!(status, 206);
    assert_eq!(body, &text[10..20]);
    assert_eq!(headers["content-range"], format!("bytes 10-19/{}", text.len()).as_str());
    let (status, _, body) = download(&app.api, accepted.id, Some("bytes=-5")).await;
    assert_eq!((status, body.as_slice()), (206, &text[text.len() - 5..]));
    let (status, headers, _) = download(&app.api, accepted.id, Some(&format!("bytes={}-", text.len()))).await;
    assert_eq!(status, 416);
    assert_eq!(headers["content-range"], format!("bytes */{}", text.len()).as_str());

    let other = app.api.with_key(KEY_B);
    let (status, _, _) = download(&other, accepted.id, None).await;
    assert_eq!(status, 404, "another tenant does not see it");
    assert_eq!(other.attachment(accepted.id).await.unwrap_err().status(), Some(404));
    let head = other.tus(Method::HEAD, &format!("/v1/uploads/{}", accepted.id)).send().await.unwrap();
    assert_eq!(head.status().as_u16(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn tus_speaks_the_protocol_resumes_after_a_broken_request_and_refuses_bad_checksums() {
    let app = app("tus", |config| config.upload_chunk_bytes = 64 * 1024).await;
    let _worker = app.start_worker();
    let api = &app.api;

    let options = api.request(Method::OPTIONS, "/v1/uploads").send().await.unwrap();
    assert_eq!(options.status().as_u16(), 204);
    assert_eq!(options.headers()["tus-version"], TUS_VERSION);
    let extensions = options.headers()["tus-extension"].to_str().unwrap().to_string();
    for extension in ["creation", "creation-with-upload", "termination", "checksum", "expiration"] {
        assert!(extensions.split(',').any(|e| e == extension), "{extension} in {extensions}");
    }
    assert_eq!(options.headers()["tus-checksum-algorithm"], "sha1,sha256");
    assert!(options.headers().contains_key("tus-max-size"));

    let without_version = api.request(Method::POST, "/v1/uploads").header("Upload-Length", "10").send().await.unwrap();
    assert_eq!(without_version.status().as_u16(), 412);
    assert_eq!(without_version.headers()["tus-version"], TUS_VERSION);

    let file = random_bytes(300 * 1024);
    let upload = api.tus_create(file.len() as u64, &[("filename", "data.bin")]).await.unwrap();
    assert_eq!(api.tus_offset(&upload).await.unwrap(), 0);

    // A request that breaks off after 200 KiB (a moment after sending them, as a network
    // would): the server keeps what arrived.
    let sent = file[..200 * 1024].to_vec();
    let broken = futures::stream::iter(vec![
        Ok::<_, std::io::Error>(bytes::Bytes::from(sent)),
        Err(std::io::Error::other("the network went away")),
    ])
    .then(|item| async move {
        if item.is_err() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        item
    });
    let result = api.tus_append(&upload, 0, reqwest::Body::wrap_stream(broken)).await;
    assert!(result.is_err(), "the request broke");
    // The server may still be storing what arrived before the break: the offset settles.
    let mut offset = api.tus_offset(&upload).await.unwrap();
    let settle_by = tokio::time::Instant::now() + DEADLINE;
    loop {
        assert!(tokio::time::Instant::now() < settle_by, "the offset did not settle within {DEADLINE:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = api.tus_offset(&upload).await.unwrap();
        if now == offset {
            break;
        }
        offset = now;
    }
    assert!(offset > 0 && offset <= 200 * 1024, "the bytes that arrived are kept: offset {offset}");

    let patch = |offset: u64, body: Vec<u8>, content_type: &str| {
        api.tus(Method::PATCH, &upload.location)
            .header("Content-Type", content_type)
            .header("Upload-Offset", offset)
            .body(body)
    };
    let stale = patch(0, file[..10].to_vec(), "application/offset+octet-stream").send().await.unwrap();
    assert_eq!(stale.status().as_u16(), 409, "an offset that is not the server's");
    let wrong_type = patch(offset, file[offset as usize..].to_vec(), "application/octet-stream").send().await.unwrap();
    assert_eq!(wrong_type.status().as_u16(), 415);
    let too_long = patch(offset, random_bytes(file.len() - offset as usize + 1), "application/offset+octet-stream");
    assert_eq!(too_long.send().await.unwrap().status().as_u16(), 413, "bytes beyond the length");

    let rest = file[offset as usize..].to_vec();
    let wrong_sum = format!("sha256 {}", base64_of(&Sha256::digest(b"something else")));
    let mismatch = patch(offset, rest.clone(), "application/offset+octet-stream")
        .header("Upload-Checksum", wrong_sum)
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status().as_u16(), 460);
    assert_eq!(api.tus_offset(&upload).await.unwrap(), offset, "nothing of a mismatching request is kept");
    let unknown = patch(offset, rest.clone(), "application/offset+octet-stream").header("Upload-Checksum", "md5 AAAA");
    assert_eq!(unknown.send().await.unwrap().status().as_u16(), 400);

    let sha1 = {
        use sha1::Digest as _;
        sha1::Sha1::digest(&rest)
    };
    let done = patch(offset, rest, "application/offset+octet-stream")
        .header("Upload-Checksum", format!("sha1 {}", base64_of(&sha1)))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status().as_u16(), 204);
    assert_eq!(done.headers()["upload-offset"], file.len().to_string().as_str());
    assert_eq!(done.headers()["tus-resumable"], TUS_VERSION);

    let id = upload.id().unwrap();
    assert_eq!(scanned(api, id).await.status, AttachmentStatus::Clean);
    let (status, _, body) = download(api, id, None).await;
    assert_eq!(status, 200);
    assert_eq!(sha256_hex(&body), sha256_hex(&file), "the stored file is the one sent");
    let terminate = api.tus(Method::DELETE, &upload.location).send().await.unwrap();
    assert_eq!(terminate.status().as_u16(), 409, "a finished upload is kept");
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_expiry_and_termination() {
    let app = app("limits", |config| {
        config.upload_max_bytes = 1024 * 1024;
        config.upload_max_in_progress = 2;
        config.upload_expiry_secs = 2;
    })
    .await;
    let api = &app.api;
    let too_big = api.tus_create(1024 * 1024 + 1, &[]).await.unwrap_err();
    assert_eq!(too_big.status(), Some(413));
    let bad_metadata = api.tus(Method::POST, "/v1/uploads").header("Upload-Length", "3").header("Upload-Metadata", "filename ***");
    assert_eq!(bad_metadata.send().await.unwrap().status().as_u16(), 400);
    let foreign_session = format!("{}", Uuid::now_v7());
    let unknown = api.tus_create(3, &[("session_id", &foreign_session)]).await.unwrap_err();
    assert_eq!(unknown.status(), Some(404), "a session that is not the tenant's");

    let first = api.tus_create(10, &[]).await.unwrap();
    let second = api.tus_create(10, &[]).await.unwrap();
    let third = api.tus_create(10, &[]).await.unwrap_err();
    assert_eq!((third.status(), third.code()), (Some(429), Some("too_many_uploads")));
    let other_tenant = app.api.with_key(KEY_B).tus_create(10, &[]).await;
    assert!(other_tenant.is_ok(), "the limit is per tenant");

    let terminated = api.tus(Method::DELETE, &first.location).send().await.unwrap();
    assert_eq!(terminated.status().as_u16(), 204);
    assert_eq!(api.tus_offset(&first).await.unwrap_err().status(), Some(404), "terminated: gone");
    assert!(api.tus_create(10, &[]).await.is_ok(), "a terminated upload frees its place");

    // HEAD answers 410 once the upload's 2 s are up (a HEAD answer has no body to say why).
    eventually("the unfinished upload expires", || async {
        api.tus_offset(&second).await.is_err_and(|err| err.status() == Some(410))
    })
    .await;
    let expired = api.tus_append(&second, 0, b"0123456789".to_vec()).await.unwrap_err();
    assert_eq!((expired.status(), expired.code()), (Some(410), Some("upload_expired")));
    assert!(api.tus_create(10, &[]).await.is_ok(), "expired uploads do not count");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_large_file_lands_in_s3_and_downloads_intact() {
    let app = app("s3", |config| config.attachment_inline_max_bytes = 64 * 1024).await;
    let _worker = app.start_worker();
    let file = random_bytes(20 * 1024 * 1024 + 123);
    let path = std::env::temp_dir().join(format!("soma-s3-{}.bin", Uuid::now_v7()));
    std::fs::write(&path, &file).unwrap();
    let mut reported = Vec::new();
    let upload = app.api.upload_file(&path, None, None, |progress| reported.push(progress.sent)).await.expect("uploaded");
    std::fs::remove_file(&path).ok();
    assert_eq!(reported.first(), Some(&0), "{reported:?}");
    assert_eq!(reported.last(), Some(&(file.len() as u64)), "{reported:?}");
    assert!(reported.is_sorted(), "progress only grows: {reported:?}");
    let id = upload.id().unwrap();

    let attachment = scanned(&app.api, id).await;
    assert_eq!(attachment.status, AttachmentStatus::Clean, "{attachment:?}");
    let row = stored(&app, id).await;
    assert_eq!(row.storage, Some(AttachmentStorage::S3));
    assert_eq!(row.object_key.as_deref(), Some(format!("attachments/tenant-a/{id}").as_str()));
    assert_eq!(chunks_of(&app, id).await, 0, "the received bytes are dropped once it is in S3");

    let response = app.api.download(id, None).await.unwrap();
    let mut hasher = Sha256::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        hasher.update(chunk.unwrap());
    }
    assert_eq!(hex::encode(hasher.finalize()), sha256_hex(&file), "the same bytes came back");
    let (status, _, body) = download(&app.api, id, Some("bytes=10000000-10000099")).await;
    assert_eq!((status, body.as_slice()), (206, &file[10_000_000..10_000_100]), "a range straight from S3");

    // An infected file never reaches the bucket: no object, and no parts left behind.
    let mut infected = random_bytes(20 * 1024 * 1024);
    infected.extend_from_slice(EICAR);
    let path = std::env::temp_dir().join(format!("soma-s3-{}.bin", Uuid::now_v7()));
    std::fs::write(&path, &infected).unwrap();
    let upload = app.api.upload_file(&path, None, None, |_| {}).await.expect("uploaded");
    std::fs::remove_file(&path).ok();
    let bad = upload.id().unwrap();
    let attachment = scanned(&app.api, bad).await;
    assert_eq!(attachment.status, AttachmentStatus::Quarantined, "{attachment:?}");
    assert!(attachment.verdict.unwrap_or_default().starts_with("Soma.Test.EICAR"));
    let blobs = soma_core::blobs::BlobStore::from_config(&app.config);
    for (id, kept) in [(id, true), (bad, false)] {
        let key = format!("attachments/tenant-a/{id}");
        assert_eq!(blobs.exists(&key).await.unwrap(), kept, "{key}");
        assert_eq!(blobs.unfinished_uploads(&key).await.unwrap(), 0, "{key}");
    }
}

/// The file's row once the scan's last step has stored it.
async fn stored(app: &TestApp, id: Uuid) -> soma_core::store::AttachmentRow {
    eventually("the clean file is stored", || async {
        app.store.attachment("tenant-a", id).await.unwrap().unwrap().storage.is_some()
    })
    .await;
    app.store.attachment("tenant-a", id).await.unwrap().unwrap()
}

/// How many received chunks of the file are kept.
async fn chunks_of(app: &TestApp, id: Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM upload_chunks WHERE attachment_id = $1")
        .bind(id)
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

/// A clean file is usable at once: until the store step has put it in S3 it is served from
/// the bytes as received, whole and by range. With S3 away the step retries (the file stays
/// served); when S3 answers again it lands there, with no manual step.
#[tokio::test(flavor = "multi_thread")]
async fn a_clean_file_is_served_from_postgres_until_it_is_in_s3() {
    let app = app("unstored", |config| config.attachment_inline_max_bytes = 64 * 1024).await;
    let no_s3 = app.start_worker_with(|config| config.s3_endpoint = "http://127.0.0.1:9".into());
    let file = random_bytes(3 * 1024 * 1024 + 321);
    let path = std::env::temp_dir().join(format!("soma-unstored-{}.bin", Uuid::now_v7()));
    std::fs::write(&path, &file).unwrap();
    let upload = app.api.upload_file(&path, None, None, |_| {}).await.expect("uploaded");
    std::fs::remove_file(&path).ok();
    let id = upload.id().unwrap();

    let attachment = scanned(&app.api, id).await;
    assert_eq!((attachment.status, attachment.storage), (AttachmentStatus::Clean, None), "{attachment:?}");
    assert!(chunks_of(&app, id).await > 1, "served from the chunks as received");
    let (status, headers, body) = download(&app.api, id, None).await;
    assert_eq!(status, 200);
    assert!(body == file, "the same bytes came back from the chunks ({} of {})", body.len(), file.len());
    assert_eq!(headers["etag"], format!("\"{}\"", sha256_hex(&file)).as_str());
    let across = 1024 * 1024 - 10;
    let (status, headers, body) = download(&app.api, id, Some(&format!("bytes={across}-{}", across + 2 * 1024 * 1024))).await;
    assert_eq!(status, 206);
    assert!(body == file[across..=across + 2 * 1024 * 1024], "a range across three chunks");
    assert_eq!(headers["content-length"], (2 * 1024 * 1024 + 1).to_string().as_str());
    let (status, _, body) = download(&app.api, id, Some("bytes=-7")).await;
    assert_eq!((status, body.as_slice()), (206, &file[file.len() - 7..]));
    assert_eq!(app.store.attachment("tenant-a", id).await.unwrap().unwrap().storage, None, "S3 is still away");

    // S3 is back (a worker that reaches it): the retried step stores the file.
    drop(no_s3);
    let _worker = app.start_worker();
    let row = stored(&app, id).await;
    assert_eq!(row.storage, Some(AttachmentStorage::S3));
    assert_eq!(chunks_of(&app, id).await, 0);
    let (status, _, body) = download(&app.api, id, None).await;
    assert!(status == 200 && body == file, "the same bytes came back from S3");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'upload.store'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(audited, 0, "nothing failed for good");
}

/// Stops the real clamd (the command `ops/test` exports) and starts it again when dropped,
/// even if the test fails.
struct ClamdStopped;

impl ClamdStopped {
    fn stop() -> Option<ClamdStopped> {
        let stop = std::env::var("SOMA_CLAMD_STOP").ok()?;
        let status = std::process::Command::new("sh").arg("-c").arg(stop).status().expect("sh runs");
        assert!(status.success(), "clamd stopped");
        Some(ClamdStopped)
    }
}

impl Drop for ClamdStopped {
    fn drop(&mut self) {
        let start = std::env::var("SOMA_CLAMD_START").expect("SOMA_CLAMD_START is set beside SOMA_CLAMD_STOP");
        let status = std::process::Command::new("sh").arg("-c").arg(start).status().expect("sh runs");
        assert!(status.success(), "clamd started again");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_file_waits_pending_while_clamd_is_down_and_is_scanned_when_it_returns() {
    let app = app("clamd_down", |_| {}).await;
    let _worker = app.start_worker();
    let Some(stopped) = ClamdStopped::stop() else {
        eprintln!("SOMA_CLAMD_STOP is not set (run through ops/test): skipped");
        return;
    };
    let file = b"a report written while the scanner was away".to_vec();
    let id = upload(&app.api, &file, &[("filename", "report.txt"), ("filetype", "text/plain")]).await.id().unwrap();
    // The scan has tried clamd, failed, and will try again: nothing is decided meanwhile.
    let scan = app.temporal.get_workflow_handle::<UploadScanWorkflow>(UploadScanWorkflow::workflow_id(id));
    eventually("the scan's first attempt failed on the stopped clamd", || async {
        let description = scan.describe(Default::default()).await;
        description.is_ok_and(|d| d.raw().pending_activities.iter().any(|a| a.attempt >= 2))
    })
    .await;
    assert_eq!(app.api.attachment(id).await.unwrap().status, AttachmentStatus::Pending, "nothing decided without clamd");
    let (status, _, _) = download(&app.api, id, None).await;
    assert_eq!(status, 409, "a pending file is not served");
    let (status, ready) = app.get(KEY_A, "/v1/ready").await;
    assert_eq!((status, &ready["checks"]["clamd"]["status"]), (200, &json!("degraded")), "{ready}");
    assert!(ready["checks"]["clamd"]["error"].as_str().unwrap().contains("uploads stay pending"), "{ready}");

    drop(stopped);
    let attachment = scanned(&app.api, id).await;
    let (_, ready) = app.get(KEY_A, "/v1/ready").await;
    assert_eq!((&ready["checks"]["clamd"]["status"], &ready["checks"]["s3"]["status"]), (&json!("ok"), &json!("ok")));
    assert_eq!(attachment.status, AttachmentStatus::Clean, "scanned once clamd returned, with no one acting");
    assert_eq!(download(&app.api, id, None).await.2, file);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_message_waits_for_its_files_scans_gives_the_model_the_clean_text_and_refuses_the_rest() {
    let app = app("chat_files", |_| {}).await;
    let _worker = app.start_worker();
    let (session_id, _, _) = app.send(None, "hello").await;
    let session: Uuid = session_id.parse().unwrap();
    let notes = b"# Launch notes\nThe launch code word is PERIWINKLE.\n".to_vec();
    let clean = app.api.upload_multipart("notes.md", notes, Some(session)).await.unwrap();
    let pdf = soma_tests::tiny_pdf("The vault word is AZALEA.");
    let brief = app.api.upload_multipart("brief.pdf", pdf, Some(session)).await.unwrap();
    let infected = upload(&app.api, EICAR, &[("filename", "payload.txt"), ("filetype", "text/plain")]).await.id().unwrap();

    let unknown = soma_contract::api::PostMessage {
        session_id: Some(session),
        message: "read this".into(),
        persona_id: None,
        attachments: vec![soma_contract::api::AttachmentRef { id: Uuid::now_v7() }],
        if_busy: Default::default(),
    };
    assert_eq!(app.api.send(&unknown, None).await.unwrap_err().status(), Some(404), "a file that is not the tenant's");
    let other = soma_contract::api::PostMessage {
        attachments: vec![soma_contract::api::AttachmentRef { id: clean.id }],
        ..unknown.clone()
    };
    assert_eq!(app.api.with_key(KEY_B).send(&other, None).await.unwrap_err().status(), Some(404));

    let message = soma_contract::api::PostMessage {
        attachments: vec![
            soma_contract::api::AttachmentRef { id: clean.id },
            soma_contract::api::AttachmentRef { id: brief.id },
            soma_contract::api::AttachmentRef { id: infected },
        ],
        message: "What is the code word in my notes?".into(),
        ..unknown
    };
    let accepted = app.api.send(&message, None).await.expect("accepted while the scans may still run");
    let mut events = app.events(&session_id, Some(accepted.stream_after)).await;
    // The first turn may still be ending: read on to this turn's end.
    let mut seen = Vec::new();
    while !seen.last().is_some_and(|e: &soma_client::SseEvent| e.data.meta.turn_id == Some(accepted.turn_id)) {
        seen.extend(events.until("turn.complete", WAIT).await);
    }
    let statuses: Vec<(Uuid, AttachmentStatus)> = seen
        .iter()
        .filter(|e| e.data.meta.turn_id == Some(accepted.turn_id))
        .filter_map(|e| match e.event() {
            SessionEvent::AttachmentStatusChanged(changed) => Some((changed.attachment_id, changed.status)),
            _ => None,
        })
        .collect();
    assert_eq!(
        statuses,
        vec![(clean.id, AttachmentStatus::Clean), (brief.id, AttachmentStatus::Clean), (infected, AttachmentStatus::Quarantined)],
        "the turn says which files it has, after their scans"
    );
    let prompt = app.provider.user_messages().into_iter().rev().find(|m| m.contains("code word in my notes")).unwrap();
    assert!(prompt.contains("PERIWINKLE") && prompt.contains("[Attached file notes.md (text/markdown):]"), "{prompt}");
    assert!(prompt.contains("payload.txt was refused") && !prompt.contains("EICAR-STANDARD"), "{prompt}");
    assert!(prompt.contains("[Attached file brief.pdf (application/pdf):]") && prompt.contains("AZALEA"), "{prompt}");

    // The clean files' text is remembered with the message (the infected one's never is).
    eventually("the notes and the PDF remembered as attachments", || async {
        let (_, found) = app.get(KEY_A, "/v1/memory/recall?q=PERIWINKLE%20AZALEA").await;
        let contents: Vec<String> =
            found["memories"].as_array().into_iter().flatten().filter_map(|m| m["content"].as_str().map(String::from)).collect();
        contents.iter().any(|c| c.starts_with("notes.md: ") && c.contains("PERIWINKLE"))
            && contents.iter().any(|c| c.starts_with("brief.pdf: ") && c.contains("AZALEA"))
    })
    .await;
    let (_, found) = app.get(KEY_A, "/v1/memory/recall?q=EICAR").await;
    assert!(!found.to_string().contains("EICAR-STANDARD"), "{found}");
}

/// How far the scan steps (`scan_upload`) of a file's workflow got: (started, completed).
async fn scan_steps(app: &TestApp, id: Uuid) -> (usize, usize) {
    use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
    let handle = app.temporal.get_workflow_handle::<UploadScanWorkflow>(UploadScanWorkflow::workflow_id(id));
    let Ok(events) = handle.fetch_history(Default::default()).collect::<Vec<_>>().await.into_iter().collect::<Result<Vec<_>, _>>()
    else {
        return (0, 0); // not started yet
    };
    let mut scans = std::collections::HashSet::new();
    let (mut started, mut completed) = (0, 0);
    for event in &events {
        match &event.attributes {
            Some(Attributes::ActivityTaskScheduledEventAttributes(a))
                if a.activity_type.as_ref().is_some_and(|t| t.name.ends_with("scan_upload")) =>
            {
                scans.insert(event.event_id);
            }
            Some(Attributes::ActivityTaskStartedEventAttributes(a)) if scans.contains(&a.scheduled_event_id) => started += 1,
            Some(Attributes::ActivityTaskCompletedEventAttributes(a)) if scans.contains(&a.scheduled_event_id) => {
                completed += 1
            }
            _ => {}
        }
    }
    (started, completed)
}

/// Whether the file's scan step is running now (a running activity is in the workflow's
/// description; its history shows it only once it ends).
async fn scan_running(app: &TestApp, id: Uuid) -> bool {
    use temporalio_common::protos::temporal::api::enums::v1::PendingActivityState;
    let handle = app.temporal.get_workflow_handle::<UploadScanWorkflow>(UploadScanWorkflow::workflow_id(id));
    let Ok(description) = handle.describe(Default::default()).await else { return false };
    description.raw().pending_activities.iter().any(|activity| {
        activity.state() == PendingActivityState::Started
            && activity.activity_type.as_ref().is_some_and(|t| t.name.ends_with("scan_upload"))
    })
}

/// A tus upload's scan starts with the upload and reads each chunk as it is stored: its one
/// scan step runs before the last byte is sent, and the file is read once. An upload that
/// pauses longer than the scan's patience is let go (nothing recorded, its bytes kept) and
/// scanned from its first byte once the rest arrives.
#[tokio::test(flavor = "multi_thread")]
async fn a_scan_follows_its_upload_and_starts_over_after_a_pause() {
    let app = app("follow", |config| {
        config.attachment_inline_max_bytes = 64 * 1024;
        config.upload_follow_patience_ms = 2_000;
    })
    .await;
    let _worker = app.start_worker();
    let file = random_bytes(3 * 1024 * 1024 + 77);
    let first = 1024 * 1024;

    // Followed: the scan step is running while the upload is still arriving, and is the only one.
    let upload = app.api.tus_create(file.len() as u64, &[("filename", "followed.bin")]).await.unwrap();
    let id = upload.id().unwrap();
    app.api.tus_append(&upload, 0, file[..first].to_vec()).await.unwrap();
    eventually("the scan step runs before the last byte", || async { scan_running(&app, id).await }).await;
    assert_eq!(app.store.attachment("tenant-a", id).await.unwrap().unwrap().status, AttachmentStatus::Uploading);
    app.api.tus_append(&upload, first as u64, file[first..].to_vec()).await.unwrap();
    let attachment = scanned(&app.api, id).await;
    assert_eq!(attachment.status, AttachmentStatus::Clean, "{attachment:?}");
    assert_eq!(attachment.sha256.as_deref(), Some(sha256_hex(&file).as_str()));
    assert_eq!(scan_steps(&app, id).await, (1, 1), "one scan step read the file as it came");
    let response = app.api.download(id, None).await.unwrap();
    assert_eq!(response.bytes().await.unwrap().as_ref(), file.as_slice(), "the same bytes came back");

    // Paused: the step lets go, the bytes stay, and the rest brings a scan from the first byte.
    let upload = app.api.tus_create(file.len() as u64, &[("filename", "paused.bin")]).await.unwrap();
    let paused = upload.id().unwrap();
    app.api.tus_append(&upload, 0, file[..first].to_vec()).await.unwrap();
    eventually("the scan step lets go of the paused upload", || async { scan_steps(&app, paused).await.1 == 1 }).await;
    let row = app.store.attachment("tenant-a", paused).await.unwrap().unwrap();
    assert_eq!((row.status, row.received_bytes), (AttachmentStatus::Uploading, first as i64), "nothing recorded");
    let offset = app.api.tus_append(&upload, first as u64, file[first..].to_vec()).await.unwrap();
    assert_eq!(offset, file.len() as u64, "the bytes before the pause were kept");
    let attachment = scanned(&app.api, paused).await;
    assert_eq!(attachment.status, AttachmentStatus::Clean, "{attachment:?}");
    assert_eq!(attachment.sha256.as_deref(), Some(sha256_hex(&file).as_str()));
    assert_eq!(scan_steps(&app, paused).await, (2, 2), "the let-go step, then the whole file");
}
