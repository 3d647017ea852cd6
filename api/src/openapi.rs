//! The OpenAPI 3.1 document, served at `/openapi.json`. Paths come from the handlers' own
//! `#[utoipa::path]` annotations, collected as the routes are registered (`http::router`), so a
//! route is in the document by construction; its bodies are the contract's types.

use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use soma_contract::api::ErrorBody;
use soma_contract::{EventData, EventMeta, SessionEvent};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Soma Orchestrator API",
        description = "Starts chat turns as durable Temporal workflows and streams their progress over \
                       server-sent events. Every error is an `ErrorBody`.",
    ),
    modifiers(&Security),
    components(schemas(ErrorBody, EventData, EventMeta, SessionEvent)),
    tags(
        (name = "chat", description = "Sending messages and following their turns"),
        (name = "sessions", description = "Conversations: list, history, delete, reset, export, import"),
        (name = "tools", description = "The tool catalog, direct tool calls, approvals"),
        (name = "uploads", description = "Resumable uploads (tus 1.0.0), multipart uploads, attachments and their scans"),
        (name = "operations", description = "Health, readiness, configuration, this document, the console"),
    )
)]
pub struct ApiDoc;

/// `api_key` (`X-API-Key`), `bearer` (the same key as `Authorization: Bearer`), and
/// `stream_token` (`?token=`, only for a session's event stream).
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("api_key", SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))));
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        components
            .add_security_scheme("stream_token", SecurityScheme::ApiKey(ApiKey::Query(ApiKeyValue::new("token"))));
    }
}
