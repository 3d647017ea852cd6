//! Extractors whose rejections are [`ApiError`]s, so every bad input gets the API's JSON error
//! body: a JSON body, a query string, and a session that must belong to the caller.

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::auth::Principal;
use crate::{ApiContext, ApiError};

/// The session id in a route's `{id}`; anything that is not a UUID is an unknown session.
async fn session_in_path(parts: &mut Parts, ctx: &ApiContext) -> Result<Uuid, ApiError> {
    let Path(raw) =
        Path::<String>::from_request_parts(parts, ctx).await.map_err(|_| ApiError::NotFound("session"))?;
    raw.parse().map_err(|_| ApiError::NotFound("session"))
}

/// 404 unless `tenant_id` has the session; names it in the request's log line.
async fn ensure_session(ctx: &ApiContext, tenant_id: &str, session_id: Uuid) -> Result<(), ApiError> {
    if !ctx.store.session_exists(tenant_id, session_id).await? {
        return Err(ApiError::NotFound("session"));
    }
    tracing::Span::current().record("session_id", tracing::field::display(session_id));
    Ok(())
}

/// A JSON request body: 415 without a JSON content type, 400 `invalid_json` when it does not
/// parse, 400 `invalid_request` when it has the wrong shape.
pub struct AppJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let is_json = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|mime| {
                let mime = mime.trim();
                mime.eq_ignore_ascii_case("application/json") || mime.ends_with("+json")
            });
        if !is_json {
            return Err(ApiError::UnsupportedMediaType("JSON (Content-Type: application/json)"));
        }
        let body = axum::body::Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { message: "the request body is too large".into() }
            } else {
                ApiError::bad_request("invalid_body", rejection.body_text())
            }
        })?;
        serde_json::from_slice(&body).map(AppJson).map_err(|err| {
            use serde_json::error::Category;
            match err.classify() {
                Category::Syntax | Category::Eof | Category::Io => {
                    ApiError::bad_request("invalid_json", format!("request body is not valid JSON: {err}"))
                }
                Category::Data => ApiError::bad_request("invalid_request", format!("invalid request: {err}")),
            }
        })
    }
}

/// An optional JSON body (`Option<AppJson<T>>`): none when the request has no body at all
/// (no Content-Type, no or a zero Content-Length); otherwise as [`AppJson`].
impl<T: DeserializeOwned, S: Send + Sync> axum::extract::OptionalFromRequest<S> for AppJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Option<Self>, ApiError> {
        let headers = request.headers();
        let sized = headers
            .get(axum::http::header::CONTENT_LENGTH)
            .is_some_and(|length| length.as_bytes() != b"0");
        let chunked = headers.get(axum::http::header::TRANSFER_ENCODING).is_some();
        if headers.get(CONTENT_TYPE).is_none() && !sized && !chunked {
            return Ok(None);
        }
        <Self as FromRequest<S>>::from_request(request, state).await.map(Some)
    }
}

/// A query string: 400 `invalid_query` when it does not parse.
pub struct AppQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for AppQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| AppQuery(value))
            .map_err(|rejection| ApiError::bad_request("invalid_query", rejection.body_text()))
    }
}

/// The session named by the route's `{id}`, belonging to the caller's tenant: anything else,
/// including another tenant's session or an id that is not a UUID, is 404 `session_not_found`.
pub struct OwnedSession {
    pub principal: Principal,
    pub session_id: Uuid,
}

impl FromRequestParts<ApiContext> for OwnedSession {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        let principal = Principal::from_request_parts(parts, ctx).await?;
        let session_id = session_in_path(parts, ctx).await?;
        ensure_session(ctx, &principal.tenant_id, session_id).await?;
        Ok(OwnedSession { principal, session_id })
    }
}

/// A reader of the session named by the route's `{id}`: an API key of its tenant, or a stream
/// token minted for exactly this session (`?token=`, for `EventSource`, which cannot send
/// headers). The token opens this stream and nothing else: no other route takes it.
pub struct SessionReader {
    pub tenant_id: String,
    pub session_id: Uuid,
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

impl FromRequestParts<ApiContext> for SessionReader {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, ctx: &ApiContext) -> Result<Self, ApiError> {
        let session_id = session_in_path(parts, ctx).await?;
        let AppQuery(TokenQuery { token }) = AppQuery::from_request_parts(parts, ctx).await?;
        let tenant_id = match token {
            Some(token) => {
                ctx.stream_tokens.verify(&token, session_id, chrono::Utc::now()).map_err(ApiError::StreamToken)?
            }
            None => Principal::from_request_parts(parts, ctx).await?.tenant_id,
        };
        ensure_session(ctx, &tenant_id, session_id).await?;
        Ok(SessionReader { tenant_id, session_id })
    }
}
