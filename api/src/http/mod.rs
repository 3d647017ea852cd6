//! Routes, one module per resource. Every route is registered through `routes!`, which also
//! puts its `#[utoipa::path]` into the OpenAPI document: a route cannot be served and
//! undocumented (a test checks that no route is added any other way).

mod admin;
pub(crate) mod attachments;
mod config;
mod console;
mod events;
mod health;
mod memory;
mod metrics;
pub(crate) mod messages;
mod schedules;
pub(crate) mod sessions;
mod tools;
pub(crate) mod uploads;

use axum::Json;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};
use utoipa::OpenApi;
use utoipa::openapi::OpenApi as Document;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::ApiDoc;
use crate::{ApiContext, ApiError};

/// The largest request body read: an import of a long session. A message is held to
/// `max_message_bytes` by its handler, with a clearer error.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// The API's routes and the OpenAPI document that describes them.
pub fn router(ctx: ApiContext) -> (Router, Document) {
    let (routes, mut document) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(messages::post_message))
        .routes(routes!(events::stream))
        .routes(routes!(events::stream_token))
        .routes(routes!(sessions::cancel_turn))
        .routes(routes!(sessions::list))
        .routes(routes!(sessions::messages))
        .routes(routes!(sessions::delete))
        .routes(routes!(sessions::reset))
        .routes(routes!(sessions::export))
        .routes(routes!(sessions::import))
        .routes(routes!(tools::list))
        .routes(routes!(tools::request))
        .routes(routes!(tools::show))
        .routes(routes!(tools::approve))
        .routes(routes!(tools::deny))
        .routes(routes!(memory::recall))
        .routes(routes!(memory::feedback))
        .routes(routes!(admin::list))
        .routes(routes!(admin::replay_all))
        .routes(routes!(admin::replay))
        .routes(routes!(admin::discard))
        .routes(routes!(admin::refresh_tools))
        .routes(routes!(admin::audit))
        .routes(routes!(schedules::list))
        .routes(routes!(schedules::trigger))
        .routes(routes!(schedules::pause))
        .routes(routes!(schedules::unpause))
        .routes(routes!(metrics::metrics))
        .routes(routes!(attachments::download))
        .routes(routes!(attachments::status))
        .merge(upload_routes())
        .routes(routes!(config::runtime_config))
        .routes(routes!(health::health))
        .routes(routes!(health::ready))
        .routes(routes!(openapi_document))
        .routes(routes!(console::index))
        .routes(routes!(console::file))
        .split_for_parts();
    document.info.version = env!("CARGO_PKG_VERSION").into();
    let served = std::sync::Arc::new(document.clone());
    let cors = cors(&ctx);
    let router = routes
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::Extension(served))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(ctx);
    (outside_cors_preflight(router, cors), document)
}

/// The CORS layer answers every `OPTIONS` itself, as a preflight; a plain `OPTIONS` (no
/// `Access-Control-Request-Method`: tus discovery) goes to the routes instead.
fn outside_cors_preflight(router: Router, cors: CorsLayer) -> Router {
    use tower::ServiceExt;
    let with_cors = router.clone().layer(cors);
    Router::new().fallback_service(tower::service_fn(move |request: axum::extract::Request| {
        let preflight = request.method() != Method::OPTIONS
            || request.headers().contains_key(axum::http::header::ACCESS_CONTROL_REQUEST_METHOD);
        let service = if preflight { with_cors.clone() } else { router.clone() };
        service.oneshot(request)
    }))
}

/// The tus routes, inside the tus protocol layer; their bodies are as large as an upload is
/// allowed to be (each handler enforces its own limit as the bytes arrive).
fn upload_routes() -> OpenApiRouter<ApiContext> {
    OpenApiRouter::new()
        .routes(routes!(uploads::discover))
        .routes(routes!(uploads::create))
        .routes(routes!(uploads::offset))
        .routes(routes!(uploads::append))
        .routes(routes!(uploads::terminate))
        .layer(axum::middleware::from_fn(uploads::tus_protocol))
        .layer(DefaultBodyLimit::disable())
}

/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", body = Object)))]
async fn openapi_document(axum::Extension(document): axum::Extension<std::sync::Arc<Document>>) -> Json<Document> {
    Json((*document).clone())
}

/// CORS for a UI on another origin: the configured origins only (none by default), no cookies
/// (keys and stream tokens travel in headers and the URL), `X-Request-Id` readable by scripts.
fn cors(ctx: &ApiContext) -> CorsLayer {
    let origins: Vec<_> = ctx.config.cors_origins().filter_map(|o| o.parse().ok()).collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::HEAD, Method::PATCH, Method::OPTIONS])
        .allow_headers(
            [
                HeaderName::from_static("content-type"),
                HeaderName::from_static("x-api-key"),
                HeaderName::from_static("authorization"),
                HeaderName::from_static("idempotency-key"),
                HeaderName::from_static("last-event-id"),
                HeaderName::from_static("x-request-id"),
                HeaderName::from_static("traceparent"),
                HeaderName::from_static("range"),
            ]
            .into_iter()
            .chain(uploads::TUS_REQUEST_HEADERS)
            .collect::<Vec<_>>(),
        )
        .expose_headers(
            [HeaderName::from_static("x-request-id"), HeaderName::from_static("etag"), HeaderName::from_static("content-range")]
                .into_iter()
                .chain(uploads::TUS_RESPONSE_HEADERS)
                .collect::<Vec<_>>(),
        )
        .max_age(std::time::Duration::from_secs(600))
}
