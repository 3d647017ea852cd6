//! Every request gets an id and a trace id. The id is the caller's `X-Request-Id` if it sent a
//! sane one, else a new UUID; it is returned in the `X-Request-Id` response header and in error
//! bodies, and every log line of the request carries it. The trace id is the caller's W3C
//! `traceparent` trace if it sent one, else a new one; it goes into the events and audit rows
//! the request causes, so one request's effects can be found together.

use axum::body::{Body, to_bytes};
use axum::extract::{FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header::CONTENT_LENGTH};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::error::{ApiError, ErrorBody};

pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// The request's ids; handlers take it as an argument.
#[derive(Debug, Clone)]
pub struct RequestIds {
    pub request_id: String,
    /// 32 lowercase hex digits, as in W3C Trace Context.
    pub trace_id: String,
}

impl RequestIds {
    fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = headers
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic()))
            .map(str::to_string)
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let trace_id = headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .and_then(trace_id_of)
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        Self { request_id, trace_id }
    }
}

/// The trace id of a `traceparent` header (`00-<trace>-<span>-<flags>`), if it is valid.
fn trace_id_of(traceparent: &str) -> Option<String> {
    let trace = traceparent.trim().split('-').nth(1)?;
    let valid = trace.len() == 32
        && trace.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && trace.bytes().any(|b| b != b'0');
    valid.then(|| trace.to_string())
}

impl<S: Send + Sync> FromRequestParts<S> for RequestIds {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<RequestIds>()
            .cloned()
            .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("the request-id layer is missing")))
    }
}

pub async fn propagate(mut request: Request, next: Next) -> Response {
    let ids = RequestIds::from_headers(request.headers());
    let id = ids.request_id.clone();
    request.extensions_mut().insert(ids);
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(),
                                   path = %request.uri().path(), session_id = tracing::field::Empty);
    let mut response = async move {
        let response = next.run(request).await;
        tracing::info!(status = response.status().as_u16(), "request done");
        response
    }
    .instrument(span)
    .await;
    if response.extensions().get::<ErrorBody>().is_some() {
        response = with_request_id_in_body(response, &id).await;
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}

async fn with_request_id_in_body(response: Response, id: &str) -> Response {
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, 64 * 1024).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let mut value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert("request_id".into(), id.into());
    }
    let bytes = serde_json::to_vec(&value).unwrap_or_else(|_| bytes.to_vec());
    parts.headers.remove(CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_gives_its_trace_and_garbage_gives_a_new_one() {
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id_of(&format!("00-{trace}-00f067aa0ba902b7-01")).as_deref(), Some(trace));
        assert_eq!(trace_id_of("00-00000000000000000000000000000000-00f067aa0ba902b7-01"), None);
        assert_eq!(trace_id_of("00-NOTHEX-00f067aa0ba902b7-01"), None);
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static("garbage"));
        assert_eq!(RequestIds::from_headers(&headers).trace_id.len(), 32);
    }
}
