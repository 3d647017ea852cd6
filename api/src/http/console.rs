//! The web console at `/ui`: plain JavaScript modules, HTML and CSS under `api/ui/`, embedded
//! in the binary (no build step). It uses only the public API, with stream tokens for its
//! `EventSource`, so it is also the reference client for a web UI on another origin.

use axum::extract::Path;
use axum::http::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, X_CONTENT_TYPE_OPTIONS};
use axum::response::{IntoResponse, Response};

use soma_contract::api::ErrorBody;

use crate::ApiError;

/// The console's files: name, content type, content.
const FILES: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../../ui/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../../ui/api.js")),
    ("markdown.js", "text/javascript; charset=utf-8", include_str!("../../ui/markdown.js")),
    ("ops.js", "text/javascript; charset=utf-8", include_str!("../../ui/ops.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("../../ui/style.css")),
    // tus-js-client 4.3.1 from npm (MIT), unmodified: the console's resumable uploads.
    ("tus.min.js", "text/javascript; charset=utf-8", include_str!("../../ui/tus.min.js")),
];

/// Scripts only from this origin, none inline: even if model output were ever turned into HTML,
/// no script in it would run. `connect-src` allows the API itself (same origin).
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                      img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn serve(name: &str) -> Result<Response, ApiError> {
    let (_, content_type, body) =
        FILES.iter().find(|(file, _, _)| *file == name).ok_or(ApiError::NotFound("file"))?;
    Ok((
        [
            (CONTENT_TYPE, *content_type),
            (CACHE_CONTROL, "no-cache"),
            (CONTENT_SECURITY_POLICY, POLICY),
            (X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        *body,
    )
        .into_response())
}

/// The console.
#[utoipa::path(get, path = "/ui", tag = "operations",
    responses((status = 200, description = "The console's page", content_type = "text/html", body = String)))]
pub async fn index() -> Result<Response, ApiError> {
    serve("index.html")
}

/// One of the console's files.
#[utoipa::path(get, path = "/ui/{file}", tag = "operations",
    params(("file" = String, Path, description = "`app.js`, `style.css`, …")),
    responses(
        (status = 200, description = "The file", content_type = "text/javascript", body = String),
        (status = 404, description = "No such file", body = ErrorBody),
    ))]
pub async fn file(Path(name): Path<String>) -> Result<Response, ApiError> {
    serve(&name)
}
