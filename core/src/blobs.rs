//! The S3 bucket clean attachments above the inline size are kept in (AWS S3, MinIO, or
//! `moto` in the dev stack), through `aws-sdk-s3`. Objects are written in parts as their bytes
//! come and read back as a stream: a file is never held whole.

use bytes::Bytes;
use futures::Stream;
use futures::stream::BoxStream;
use futures::StreamExt;

use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};

use crate::config::Config;

/// S3 parts are at least 5 MiB (but the last); larger parts mean fewer requests.
const PART_BYTES: usize = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
#[error("S3 ({operation}): {message}")]
pub struct BlobError {
    pub operation: &'static str,
    pub message: String,
}

/// Turns the SDK's error for `operation` into ours, with the whole chain of causes.
fn blob_error<E, R>(operation: &'static str) -> impl Fn(aws_sdk_s3::error::SdkError<E, R>) -> BlobError
where
    E: std::error::Error + 'static,
    R: std::fmt::Debug,
{
    move |err| BlobError { operation, message: aws_sdk_s3::error::DisplayErrorContext(&err).to_string() }
}

/// A bucket.
#[derive(Clone, Debug)]
pub struct BlobStore {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl BlobStore {
    /// The configured bucket: `s3_endpoint` (empty: AWS itself), `s3_region`, `s3_bucket`
    /// and the static keys (empty: the SDK's usual environment lookup is not used; set them).
    pub fn from_config(config: &Config) -> Self {
        let credentials = Credentials::new(
            config.s3_access_key_id.clone(),
            config.s3_secret_access_key.expose(),
            None,
            None,
            "soma-config",
        );
        let mut builder = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(Region::new(config.s3_region.clone()))
            .credentials_provider(credentials)
            // Checksums only where S3 requires them: S3-compatible servers differ on the rest.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if !config.s3_endpoint.trim().is_empty() {
            // Self-hosted S3 (MinIO, moto) takes the bucket in the path, not the host name.
            builder = builder.endpoint_url(config.s3_endpoint.trim()).force_path_style(true);
        }
        Self { client: aws_sdk_s3::Client::from_conf(builder.build()), bucket: config.s3_bucket.clone() }
    }

    /// Writes `key` from a stream of bytes, in parts; writing the same key again replaces it
    /// whole (a retried write leaves one object). Returns the bytes written. A write that
    /// fails halfway aborts its parts: no object appears.
    pub async fn put<E: std::fmt::Display>(
        &self,
        key: &str,
        content_type: &str,
        mut bytes: impl Stream<Item = Result<Bytes, E>> + Unpin,
    ) -> Result<u64, BlobError> {
        let mut part = Vec::with_capacity(PART_BYTES);
        // A file that fits in one part is one plain PUT.
        if fill(&mut part, &mut bytes).await? {
            let len = part.len() as u64;
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type(content_type)
                .body(ByteStream::from(part))
                .send()
                .await
                .map_err(blob_error("put object"))?;
            return Ok(len);
        }
        let upload = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            // Each part carries its CRC32, checked by the bucket as it arrives; the completed
            // object's checksum is then built from the parts' (COMPOSITE) instead of read from
            // every byte again at completion.
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .send()
            .await
            .map_err(blob_error("create multipart upload"))?;
        let upload_id = upload.upload_id().unwrap_or_default().to_string();
        let result = async {
            let mut parts = Vec::new();
            let mut written = 0u64;
            while !part.is_empty() {
                let number = parts.len() as i32 + 1;
                written += part.len() as u64;
                let body = ByteStream::from(std::mem::replace(&mut part, Vec::with_capacity(PART_BYTES)));
                let uploaded = self
                    .client
                    .upload_part()
                    .bucket(&self.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .checksum_algorithm(ChecksumAlgorithm::Crc32)
                    .body(body)
                    .send()
                    .await
                    .map_err(blob_error("upload part"))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(uploaded.e_tag)
                        .set_checksum_crc32(uploaded.checksum_crc32)
                        .build(),
                );
                fill(&mut part, &mut bytes).await?;
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
                .send()
                .await
                .map_err(blob_error("complete multipart upload"))?;
            Ok(written)
        }
        .await;
        if result.is_err() {
            // Parts of an unfinished upload cost storage until aborted.
            let _ = self.client.abort_multipart_upload().bucket(&self.bucket).key(key).upload_id(&upload_id).send().await;
        }
        result
    }

    /// The object's bytes from `start` to `end` inclusive (all of it without a range), as a
    /// stream.
    pub async fn get(&self, key: &str, range: Option<(u64, u64)>) -> Result<BoxStream<'static, Result<Bytes, BlobError>>, BlobError> {
        let mut request = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some((start, end)) = range {
            request = request.range(format!("bytes={start}-{end}"));
        }
        let object = request.send().await.map_err(blob_error("get object"))?;
        let chunks = futures::stream::unfold(object.body, |mut body| async move {
            let chunk = body.next().await?;
            Some((chunk.map_err(|err| BlobError { operation: "read object", message: err.to_string() }), body))
        });
        Ok(chunks.boxed())
    }

    /// Removes `key`; removing one that is not there succeeds (S3's own rule), so a retried
    /// cleanup is harmless.
    pub async fn delete(&self, key: &str) -> Result<(), BlobError> {
        self.client.delete_object().bucket(&self.bucket).key(key).send().await.map_err(blob_error("delete object"))?;
        Ok(())
    }

    /// Whether the bucket answers (readiness).
    pub async fn check(&self) -> Result<(), BlobError> {
        self.client.head_bucket().bucket(&self.bucket).send().await.map_err(blob_error("head bucket"))?;
        Ok(())
    }

    /// How many multipart uploads of `key` were begun and neither completed nor aborted (for
    /// tests and checks: each keeps its parts, which cost storage).
    pub async fn unfinished_uploads(&self, key: &str) -> Result<usize, BlobError> {
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&self.bucket)
            .prefix(key)
            .send()
            .await
            .map_err(blob_error("list multipart uploads"))?;
        Ok(listed.uploads().len())
    }

    /// Whether `key` is there (for tests and checks).
    pub async fn exists(&self, key: &str) -> Result<bool, BlobError> {
        match self.client.head_object().bucket(&self.bucket).key(key).send().await {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(err) => Err(blob_error("head object")(err)),
        }
    }
}

/// Moves bytes from `bytes` into `part` until it holds a part's worth or the stream ends;
/// returns whether it ended.
async fn fill<E: std::fmt::Display>(
    part: &mut Vec<u8>,
    bytes: &mut (impl Stream<Item = Result<Bytes, E>> + Unpin),
) -> Result<bool, BlobError> {
    while part.len() < PART_BYTES {
        match bytes.next().await {
            Some(chunk) => {
                part.extend_from_slice(&chunk.map_err(|err| BlobError { operation: "read source", message: err.to_string() })?)
            }
            None => return Ok(true),
        }
    }
    Ok(false)
}
