//! The API's one error type. Every error is a JSON body `{code, message, request_id}` (the
//! contract's `ErrorBody`) with a stable `code`; a 5xx logs its cause and shows none of it.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use soma_core::memory::MemoryError;
use soma_core::store::StoreError;

use crate::stream_token::TokenRefusal;

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
