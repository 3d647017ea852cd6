//! The API's one error type. Every error is a JSON body `{code, message, request_id}` (the
//! contract's `ErrorBody`) with a stable `code`; a 5xx logs its cause and shows none of it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use soma_core::memory::MemoryError;
use soma_core::store::StoreError;

use crate::stream_token::TokenRefusal;

/// tus's status for a checksum that does not match (not in HTTP's registry).
const CHECKSUM_MISMATCH: StatusCode = match StatusCode::from_u16(460) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("{}", match .0 {
        TokenRefusal::Invalid => "the stream token is not valid for this session",
        TokenRefusal::Expired => "the stream token has expired: mint a new one and resume with ?after=",
    })]
    StreamToken(TokenRefusal),
    #[error("{0} not found")]
    NotFound(&'static str),
    #[error("this method is not allowed here")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    #[error("{message}")]
    PayloadTooLarge { message: String },
    /// A protocol the request does not speak (tus: `Tus-Resumable`).
    #[error("{message}")]
    PreconditionFailed { code: &'static str, message: String },
    /// Was here and is not any more (an expired upload).
    #[error("{message}")]
    Gone { code: &'static str, message: String },
    /// tus checksum extension: the request's bytes do not match its `Upload-Checksum`.
    #[error("the checksum does not match the bytes sent: nothing of this request was kept")]
    ChecksumMismatch,
    /// A `Range` outside the resource (its length is in `Content-Range`).
    #[error("the range is outside the file's {0} bytes")]
    RangeNotSatisfiable(u64),
    #[error("{message}")]
    TooManyRequests { code: &'static str, message: String },
    #[error("the body must be {0}")]
    UnsupportedMediaType(&'static str),
    #[error("{what} is unavailable")]
    Unavailable { what: &'static str, cause: anyhow::Error },
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest { code, message: message.into() }
    }

    /// Temporal could not be reached, or refused what was asked of it: 503.
    pub fn workflow_service(cause: impl Into<anyhow::Error>) -> Self {
        Self::Unavailable { what: "the workflow service", cause: cause.into() }
    }

    pub fn session_busy() -> Self {
        Self::Conflict { code: "session_busy", message: "a turn of this session is running".into() }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            Self::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::StreamToken(TokenRefusal::Invalid) => (StatusCode::UNAUTHORIZED, "invalid_token"),
            Self::StreamToken(TokenRefusal::Expired) => (StatusCode::UNAUTHORIZED, "token_expired"),
            Self::NotFound("session") => (StatusCode::NOT_FOUND, "session_not_found"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            Self::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            Self::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            Self::PreconditionFailed { code, .. } => (StatusCode::PRECONDITION_FAILED, code),
            Self::Gone { code, .. } => (StatusCode::GONE, code),
            Self::ChecksumMismatch => (CHECKSUM_MISMATCH, "checksum_mismatch"),
            Self::RangeNotSatisfiable(_) => (StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable"),
            Self::TooManyRequests { code, .. } => (StatusCode::TOO_MANY_REQUESTS, code),
            Self::UnsupportedMediaType(_) => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"),
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "dependency_unavailable"),
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        }
    }
}

/// The memory backend away is a 503; its refusal of our own request is our fault (500).
impl From<MemoryError> for ApiError {
    fn from(err: MemoryError) -> Self {
        match err {
            MemoryError::Unavailable { .. } => Self::Unavailable { what: "the memory backend", cause: err.into() },
            MemoryError::Refused(_) => Self::Internal(err.into()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::SessionNotFound => Self::NotFound("session"),
            StoreError::TurnNotFound => Self::NotFound("turn"),
            StoreError::ToolCallNotFound => Self::NotFound("tool call"),
            StoreError::SessionBusy => Self::session_busy(),
            StoreError::Database(cause) => Self::Unavailable { what: "the database", cause: cause.into() },
            other @ (StoreError::Shared(_) | StoreError::WriterGone) => {
                Self::Unavailable { what: "the database", cause: anyhow::anyhow!(other.to_string()) }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        match &self {
            Self::Unavailable { what, cause } => tracing::error!(error = ?cause, "{what} is unavailable"),
            Self::Internal(cause) => tracing::error!(error = ?cause, "internal error"),
            _ => {}
        }
        // The request id is added by the request-id middleware, which sees this marker.
        let mut response =
            (status, Json(json!({ "code": code, "message": self.to_string() }))).into_response();
        response.extensions_mut().insert(ErrorBody);
        if let Self::RangeNotSatisfiable(length) = self {
            let range = format!("bytes */{length}");
            if let Ok(value) = axum::http::HeaderValue::from_str(&range) {
                response.headers_mut().insert(axum::http::header::CONTENT_RANGE, value);
            }
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            // The rest of the body was not read: the connection cannot carry another request.
            response.headers_mut().insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
        }
        response
    }
}

/// Marks a response whose JSON body is an [`ApiError`], so the middleware can add the
/// request id to it.
#[derive(Clone, Copy)]
pub struct ErrorBody;
