//! End-to-end: the API a browser UI needs. Stream tokens, CORS, JSON errors for every
//! rejection, the OpenAPI document, and what happens to a whole session (busy policies,
//! delete, reset, export and import). Run through `ops/test`.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use soma_client::{ClientError, EventStream};
use soma_contract::SessionEvent;
use soma_contract::api::{IfBusy, PostMessage};
use soma_devllm::DevProviderOptions;
use soma_tests::{DEADLINE, Expect, KEY_A, KEY_B, TestApp, Typed, shown_reply};
use temporalio_client::{UntypedWorkflow, WorkflowExecutionStatus};
use uuid::Uuid;

fn fast_provider() -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(5),
        ..Default::default()
    }
}

/// A reply that streams for several seconds.
fn slow_provider() -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(30),
        extra_words: 200,
        ..Default::default()
    }
}

fn message(session: Option<Uuid>, text: &str, if_busy: IfBusy) -> PostMessage {
    PostMessage { session_id: session, message: text.into(), persona_id: None, attachments: vec![], if_busy }
}

/// Asserts the response is the API's JSON error with `code`, and returns its status.
async fn json_error(response: reqwest::Response, code: &str) -> u16 {
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(body["code"], code, "{status} {body}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(body["request_id"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    status
}

/// The session's events after `after`, opened with a stream token instead of the key.
async fn events_with_token(app: &TestApp, session: Uuid, token: &str, last_event_id: Option<i64>) -> reqwest::Response {
    let mut request = app.api.http.get(format!("{}/v1/session/{session}/events?token={token}", app.api.base_url()));
    if let Some(id) = last_event_id {
        request = request.header("Last-Event-ID", id.to_string());
    }
    request.send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_token_opens_its_own_session_and_nothing_else() {
    let app = TestApp::spawn("stream-token", fast_provider()).await;
    let _worker = app.start_worker();
    let a = app.api.say(None, "session A").await.unwrap();
    let b = app.api.say(None, "session B").await.unwrap();
    let token = app.api.stream_token(a.session_id).await.unwrap();
    assert!(token.expires_at > chrono::Utc::now());

    // It opens A's stream, and resumes it like EventSource does: the same URL with Last-Event-ID.
    let response = events_with_token(&app, a.session_id, &token.token, None).await;
    let mut first = EventStream::from_response(response).await.unwrap();
    let seen = first.take(3, DEADLINE).await;
    drop(first);
    let response = events_with_token(&app, a.session_id, &token.token, Some(seen[2].id)).await;
    let rest = EventStream::from_response(response).await.unwrap().until("turn.complete", DEADLINE).await;
    let stored = app.events(&a.session_id.to_string(), None).await.until("turn.complete", DEADLINE).await;
    let resumed: Vec<i64> = seen.iter().chain(&rest).map(|e| e.id).collect();
    assert_eq!(resumed, stored.iter().map(|e| e.id).collect::<Vec<_>>(), "no gap, no duplicate");

    // Not B's stream, not another tenant's view of A, not any other call.
    let response = events_with_token(&app, b.session_id, &token.token, None).await;
    assert_eq!(json_error(response, "invalid_token").await, 401);
    for garbage in ["nonsense", "st1.e30.AAAA"] {
        let response = events_with_token(&app, a.session_id, garbage, None).await;
        assert_eq!(json_error(response, "invalid_token").await, 401);
    }
    let as_key = app.api.with_key(&token.token);
    let refused = as_key.say(Some(a.session_id), "with a token").await.unwrap_err();
    assert_eq!(refused.code(), Some("unauthorized"));
    let response = app
        .api
        .http
        .post(format!("{}/v1/session/message?token={}", app.api.base_url(), token.token))
        .json(&json!({ "message": "with a token", "session_id": a.session_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(response, "unauthorized").await, 401);
    let response = as_key.request(Method::GET, &format!("/v1/sessions/{}/messages", a.session_id)).send().await.unwrap();
    assert_eq!(json_error(response, "unauthorized").await, 401);
    // Another tenant cannot mint one for A.
    let other = app.api.with_key(KEY_B).stream_token(a.session_id).await.unwrap_err();
    assert_eq!(other.code(), Some("session_not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_stream_token_is_refused_and_a_new_one_resumes_the_stream() {
    let app = TestApp::spawn_with("token-expiry", slow_provider(), |config| config.stream_token_ttl_secs = 1).await;
    let _worker = app.start_worker();
    let accepted = app.api.say(None, "a long one").await.unwrap();
    let session = accepted.session_id;
    let token = app.api.stream_token(session).await.unwrap();
    let response = events_with_token(&app, session, &token.token, None).await;
    let seen = EventStream::from_response(response).await.unwrap().take(4, DEADLINE).await;

    // Reconnecting with the old token works until it expires, then is refused with a JSON 401.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let response = events_with_token(&app, session, &token.token, Some(seen[3].id)).await;
        if response.status() == 401 {
            break response;
        }
        assert!(tokio::time::Instant::now() < deadline, "the token never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(json_error(refused, "token_expired").await, 401);

    // A new token resumes where the client was, with ?after=.
    let fresh = app.api.stream_token(session).await.unwrap();
    let url = format!("{}/v1/session/{session}/events?token={}&after={}", app.api.base_url(), fresh.token, seen[3].id);
    let rest = EventStream::open(app.api.http.get(url)).await.unwrap().until("turn.complete", DEADLINE).await;
    let stored = app.events(&session.to_string(), None).await.until("turn.complete", DEADLINE).await;
    let resumed: Vec<i64> = seen.iter().chain(&rest).map(|e| e.id).collect();
    assert_eq!(resumed, stored.iter().map(|e| e.id).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_lets_the_configured_origin_in_and_no_other() {
    let app = TestApp::spawn_with("cors", fast_provider(), |config| {
        config.cors_allowed_origins = "http://ui.example:8080".into();
    })
    .await;
    let preflight = |origin: &'static str| {
        app.api
            .http
            .request(Method::OPTIONS, format!("{}/v1/session/message", app.api.base_url()))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "POST")
            .header("Access-Control-Request-Headers", "content-type,x-api-key,idempotency-key")
            .send()
    };
    let allowed = preflight("http://ui.example:8080").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    let header = |r: &reqwest::Response, name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    assert_eq!(header(&allowed, "access-control-allow-origin").as_deref(), Some("http://ui.example:8080"));
    let allowed_headers = header(&allowed, "access-control-allow-headers").unwrap_or_default();
    assert!(allowed_headers.contains("x-api-key") && allowed_headers.contains("idempotency-key"), "{allowed_headers}");
    assert_eq!(header(&allowed, "access-control-allow-credentials"), None, "no cookies");

    let refused = preflight("http://evil.example").await.unwrap();
    assert_eq!(header(&refused, "access-control-allow-origin"), None);

    // A real request from the UI's origin can read X-Request-Id.
    let response = app
        .api
        .request(Method::GET, "/v1/sessions")
        .header("Origin", "http://ui.example:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(header(&response, "access-control-expose-headers").unwrap_or_default().to_lowercase().contains("x-request-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_is_a_json_error() {
    let app = TestApp::spawn("json-errors", fast_provider()).await;
    let api = &app.api;
    let url = |path: &str| format!("{}{path}", api.base_url());

    let unknown_route = api.request(Method::GET, "/v1/no-such-thing").send().await.unwrap();
    assert_eq!(json_error(unknown_route, "not_found").await, 404);
    let wrong_method = api.request(Method::DELETE, "/v1/session/message").send().await.unwrap();
    assert_eq!(json_error(wrong_method, "method_not_allowed").await, 405);
    let huge = api
        .request(Method::POST, "/v1/session/message")
        .header("Content-Type", "application/json")
        .body(vec![b' '; 5 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(huge, "payload_too_large").await, 413);
    let not_json = api
        .request(Method::POST, "/v1/session/message")
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(not_json, "unsupported_media_type").await, 415);
    let bad_header = api
        .request(Method::POST, "/v1/session/message")
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", reqwest::header::HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap())
        .body(json!({ "message": "hi" }).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(bad_header, "invalid_idempotency_key").await, 400);
    let session = api.say(None, "hi").await.unwrap().session_id;
    let bad_resume = api
        .request(Method::GET, &format!("/v1/session/{session}/events"))
        .header("Last-Event-ID", "yesterday")
        .send()
        .await
        .unwrap();
    assert_eq!(json_error(bad_resume, "invalid_last_event_id").await, 400);
    let bad_query = api.http.get(url("/v1/sessions?limit=lots")).header("X-API-Key", KEY_A).send().await.unwrap();
    assert_eq!(json_error(bad_query, "invalid_query").await, 400);
    let no_key = api.http.get(url("/v1/sessions")).send().await.unwrap();
    assert_eq!(json_error(no_key, "unauthorized").await, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_route_and_every_listed_route_is_served() {
    let app = TestApp::spawn("openapi", fast_provider()).await;
    let response = app.api.http.get(format!("{}/openapi.json", app.api.base_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", document["openapi"]);

    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().unwrap() {
            let responses = operation["responses"].as_object().expect("responses");
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    let schema = &response["content"]["application/json"]["schema"]["$ref"];
                    let readiness = path == "/v1/ready";
                    assert!(readiness || schema == "#/components/schemas/ErrorBody", "{method} {path} {status}: {response}");
                }
            }
            operations.push((method.to_uppercase(), path.clone()));
        }
    }
    // Every listed operation is routed: not the unknown-route or wrong-method answer.
    for (method, path) in &operations {
        let concrete = path.replace("{id}", &Uuid::new_v4().to_string()).replace("{file}", "app.js");
        let method: Method = method.parse().unwrap();
        let mut request = app.api.http.request(method.clone(), format!("{}{concrete}", app.api.base_url()));
        if method == Method::POST {
            request = request.header("Content-Type", "application/json").body("{}");
        }
        let response = tokio::time::timeout(Duration::from_secs(10), request.send()).await.unwrap().unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(status != 405 && body["message"] != "route not found", "{method} {path} is listed but not served: {status} {body}");
    }
    for expected in [
        ("POST", "/v1/session/message"),
        ("GET", "/v1/session/{id}/events"),
        ("POST", "/v1/session/{id}/stream-token"),
        ("DELETE", "/v1/sessions/{id}"),
        ("POST", "/v1/sessions/import"),
        ("GET", "/openapi.json"),
        ("GET", "/ui"),
    ] {
        assert!(operations.contains(&(expected.0.to_string(), expected.1.to_string())), "{expected:?} missing");
    }

    // And nothing is served that is not listed: routes are only added through `routes!`, which
    // documents them. A `.route(` call would add one silently.
    let http = concat!(env!("CARGO_MANIFEST_DIR"), "/../api/src/http");
    for entry in std::fs::read_dir(http).unwrap() {
        let path = entry.unwrap().path();
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            !source.contains(".route(") && !source.contains(".nest("),
            "{} adds a route the OpenAPI document would not list; use routes!",
            path.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_session_rejects_or_interrupts_as_asked() {
    let app = TestApp::spawn("if-busy", slow_provider()).await;
    let _worker = app.start_worker();
    let first = app.api.say(None, "the long one").await.unwrap();
    let session = first.session_id;
    let mut stream = app.events(&session.to_string(), None).await;
    stream.until("llm.delta", DEADLINE).await;

    // reject: 409 and nothing changes.
    let turns_before = app.count("turns").await;
    let refused = app.api.send(&message(Some(session), "not now", IfBusy::Reject), None).await.unwrap_err();
    assert!(matches!(&refused, ClientError::Api { status: 409, .. }), "{refused}");
    assert_eq!(refused.code(), Some("session_busy"));
    assert_eq!(app.count("turns").await, turns_before, "a rejected message is not stored");

    // interrupt: the running turn is cancelled (its partial reply kept), this one answered next.
    let urgent = app.api.send(&message(Some(session), "urgent", IfBusy::Interrupt), None).await.unwrap();
    let rest = stream.until("turn.complete", DEADLINE).await;
    let first_end = rest.iter().find(|e| e.is_of_turn(&first.turn_id.to_string()) && e.event().ends_turn()).unwrap();
    assert_eq!(first_end.kind, "turn.cancelled");
    assert!(rest.last().unwrap().is_of_turn(&urgent.turn_id.to_string()), "the interrupting turn completes");
    let messages = app.messages(&session.to_string()).await;
    let statuses: Vec<(&str, &str)> = messages.iter().map(|m| (m.0.as_str(), m.2.as_str())).collect();
    assert_eq!(statuses, [("user", "complete"), ("assistant", "cancelled"), ("user", "complete"), ("assistant", "complete")]);
    assert!(messages[3].1.contains("urgent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_session_stops_its_turn_ends_its_streams_and_removes_its_data() {
    let app = TestApp::spawn("delete", slow_provider()).await;
    let _worker = app.start_worker();
    let doomed = app.api.say(None, "delete me mid-reply").await.unwrap();
    let kept = app.api.say(None, "keep me").await.unwrap();
    let mut stream = app.events(&doomed.session_id.to_string(), None).await;
    stream.until("llm.delta", DEADLINE).await;

    let deletion = app.api.delete(doomed.session_id).await.unwrap();
    // Gone for every request at once.
    let gone = app.api.all_messages(doomed.session_id).await.unwrap_err();
    assert_eq!(gone.code(), Some("session_not_found"));
    assert_eq!(app.api.delete(doomed.session_id).await.unwrap_err().code(), Some("session_not_found"));
    // The stream sees the turn cancelled, then session.deleted, then ends.
    let rest = stream.until("session.deleted", DEADLINE).await;
    assert!(rest.iter().any(|e| e.kind == "turn.cancelled"), "{:?}", rest.iter().map(|e| &e.kind).collect::<Vec<_>>());
    assert!(stream.next_event(Duration::from_secs(2)).await.is_none(), "the stream ended");

    let handle = app.temporal.get_workflow_handle::<UntypedWorkflow>(deletion.workflow_id.clone());
    handle.get_result(Default::default()).await.expect("the deletion completes");
    let turn = app.temporal.get_workflow_handle::<UntypedWorkflow>(doomed.workflow_id.clone());
    assert_eq!(turn.describe(Default::default()).await.unwrap().status(), WorkflowExecutionStatus::Canceled);
    for table in ["sessions", "turns", "messages", "session_events"] {
        let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE {} = $1",
            if table == "sessions" { "id" } else { "session_id" }))
            .bind(doomed.session_id)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
        assert_eq!(rows, 0, "{table} still holds the deleted session");
    }
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM audit_log WHERE session_id = $1 AND action = 'session.delete' ORDER BY id",
    )
    .bind(doomed.session_id)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert_eq!(actions, ["requested", "completed"]);
    // The other session is untouched.
    app.events(&kept.session_id.to_string(), None).await.until("turn.complete", DEADLINE).await;
    assert_eq!(app.messages(&kept.session_id.to_string()).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_clears_the_conversation_and_the_session_goes_on() {
    let app = TestApp::spawn("reset", fast_provider()).await;
    let _worker = app.start_worker();
    let first = app.api.say(None, "remember this").await.unwrap();
    let session = first.session_id;
    let mut stream = app.events(&session.to_string(), None).await;
    stream.until("turn.complete", DEADLINE).await;

    let reset = app.api.reset(session).await.unwrap();
    assert_eq!(reset.removed_messages, 2);
    let event = stream.until("session.reset", DEADLINE).await.pop().unwrap();
    assert!(matches!(event.event(), SessionEvent::SessionReset(r) if r.removed_messages == 2));
    assert!(app.messages(&session.to_string()).await.is_empty());

    let next = app.api.say(Some(session), "start again").await.unwrap();
    let events = stream.until("turn.complete", DEADLINE).await;
    // (The first turn's memory writes run on after its end: their memory.write may come.)
    assert!(events.iter().filter(|e| e.kind != "memory.write").all(|e| e.is_of_turn(&next.turn_id.to_string())));
    assert!(shown_reply(&events).contains("(0 earlier user messages"), "the model no longer sees the old turn");

    // Not while a turn runs.
    app.provider.update_options(|o| {
        o.token_interval = Duration::from_millis(30);
        o.extra_words = 200;
    });
    app.api.say(Some(session), "a long one").await.unwrap();
    stream.until("llm.delta", DEADLINE).await;
    assert_eq!(app.api.reset(session).await.unwrap_err().code(), Some("session_busy"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exported_session_imports_intact_and_a_bad_export_changes_nothing() {
    let app = TestApp::spawn("export-import", fast_provider()).await;
    let _worker = app.start_worker();
    let first = app.api.say(None, "first *question*").await.unwrap();
    let session = first.session_id;
    let mut stream = app.events(&session.to_string(), None).await;
    stream.until("turn.complete", DEADLINE).await;
    app.api.say(Some(session), "second, with \"quotes\" and\nnew lines").await.unwrap();
    stream.until("turn.complete", DEADLINE).await;

    let export = app.api.export(session).await.unwrap();
    assert_eq!(export.lines().count(), 5, "a session line and four messages:\n{export}");
    let imported = app.api.with_key(KEY_B).import(export.clone()).await.unwrap();
    assert_eq!((imported.turns, imported.messages), (2, 4));
    let original = app.api.all_messages(session).await.unwrap();
    let copy = app.api.with_key(KEY_B).all_messages(imported.session_id).await.unwrap();
    let view = |messages: &[soma_contract::api::Message]| {
        messages.iter().map(|m| (m.turn_seq, m.role, m.content.clone(), m.status)).collect::<Vec<_>>()
    };
    assert_eq!(view(&copy), view(&original), "the conversation moved intact");
    assert_eq!(app.api.with_key(KEY_B).export(imported.session_id).await.unwrap().lines().count(), 5);
    // The importer's copy is the importer's: tenant A does not see it.
    assert_eq!(app.api.all_messages(imported.session_id).await.unwrap_err().code(), Some("session_not_found"));

    let sessions_before = app.count("sessions").await;
    let header = export.lines().next().unwrap();
    let bad = [
        String::new(),
        "not json".to_string(),
        export.lines().skip(1).collect::<Vec<_>>().join("\n"),
        format!("{header}\n{{\"type\":\"message\",\"turn\":1,\"role\":\"assistant\",\"content\":\"x\",\"status\":\"complete\",\"created_at\":\"2026-01-01T00:00:00Z\"}}"),
        format!("{header}\n{header}"),
    ];
    for body in bad {
        let err = app.api.import(body.clone()).await.unwrap_err();
        assert_eq!(err.code(), Some("invalid_export"), "{body:?}: {err}");
    }
    assert_eq!(app.count("sessions").await, sessions_before, "nothing imported");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_config_shows_what_a_ui_needs_and_no_secret() {
    let app = TestApp::spawn_with("runtime-config", fast_provider(), |config| {
        config.llm_api_key = soma_core::Secret::new("sk-very-secret");
        config.temporal_ui_url = "http://127.0.0.1:8233".into();
    })
    .await;
    let response = app.api.request(Method::GET, "/v1/runtime-config").send().await.unwrap();
    let text = response.text().await.unwrap();
    assert!(!text.contains("sk-very-secret") && !text.contains("postgres://"), "{text}");
    let config = app.api.runtime_config().await.unwrap();
    assert_eq!(config.model.as_deref(), Some(soma_devllm::MODEL));
    assert_eq!(config.max_message_bytes, app.config.max_message_bytes);
    assert_eq!(config.temporal_ui_url.as_deref(), Some("http://127.0.0.1:8233"));
    assert_eq!(app.api.with_key("wrong").runtime_config().await.unwrap_err().code(), Some("unauthorized"));
}
