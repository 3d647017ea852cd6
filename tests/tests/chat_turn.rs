//! End-to-end: chat turns over HTTP, run by real workers on the real Temporal dev server,
//! streamed from real PostgreSQL. Run through `ops/test`.

use std::time::Duration;

use axum::http::StatusCode;
use serde_json::json;
use soma_contract::SessionEvent;
use soma_core::store::TurnSession;
use soma_core::temporal::{EagerStart, EagerStarts};
use soma_devllm::{DevProviderOptions, Fault};
use soma_client::{EventStream, SseEvent};
use soma_tests::{DEADLINE, Expect, KEY_A, KEY_B, TestApp, Typed, eventually, shown_reply};
use soma_workflows::ChatTurnWorkflow;
use temporalio_client::UntypedWorkflow;
use temporalio_client::WorkflowFetchHistoryOptions;

fn fast_provider() -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(5),
        ..Default::default()
    }
}

/// A provider slow enough for a test to act while the reply streams.
fn slow_provider(extra_words: usize) -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(50),
        extra_words,
        ..Default::default()
    }
}

fn kinds(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}


#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_streams_deltas_and_stores_the_concatenated_reply() {
    let app = TestApp::spawn("stream", fast_provider()).await;
    let _worker = app.start_worker();

    let (session_id, turn_id, workflow_id) = app.send(None, "Hello there").await;
    assert_eq!(workflow_id, format!("chat/{session_id}/{turn_id}"));
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;

    let kinds = kinds(&events);
    assert_eq!(kinds.first(), Some(&"message.user"));
    assert_eq!(&kinds[kinds.len() - 2..], &["llm.complete", "turn.complete"]);
    assert!(kinds[1..kinds.len() - 2].iter().all(|k| *k == "llm.delta"), "{kinds:?}");
    assert!(kinds.len() > 4, "expected several deltas: {kinds:?}");
    assert!(events.windows(2).all(|w| w[0].id < w[1].id), "event ids increase");
    let first = &events[0];
    assert_eq!(first.data.meta.session_id.to_string(), session_id);
    assert!(first.is_of_turn(&turn_id));
    assert_eq!(first.data.meta.tenant_id, "tenant-a");
    assert_eq!(first.data.meta.trace_id.as_ref().map(String::len), Some(32), "the request's trace id");
    let SessionEvent::MessageUser(user) = first.event() else { panic!("{first:?}") };
    assert_eq!(user.content, "Hello there");

    let reply = shown_reply(&events);
    assert!(reply.contains("Hello there"), "{reply}");
    let messages = app.messages(&session_id).await;
    assert_eq!(
        messages,
        vec![
            ("user".into(), "Hello there".into(), "complete".into()),
            ("assistant".into(), reply, "complete".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumed_stream_has_no_gap_or_duplicate() {
    let app = TestApp::spawn("resume", DevProviderOptions { extra_words: 30, ..fast_provider() }).await;
    let _worker = app.start_worker();
    let (session_id, _, _) = app.send(None, "resume me").await;

    let mut first = app.events(&session_id, None).await;
    let seen = first.take(5, DEADLINE).await;
    drop(first); // the client disconnects mid-turn
    let last_id = seen.last().unwrap().id;
    let rest = app.events(&session_id, Some(last_id)).await.until("turn.complete", DEADLINE).await;

    let all = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;
    let resumed: Vec<i64> = seen.iter().chain(&rest).map(|e| e.id).collect();
    let stored: Vec<i64> = all.iter().map(|e| e.id).collect();
    assert_eq!(resumed, stored, "resumed stream must equal the stored events exactly");

    // `?after=` works the same, for clients that cannot send headers.
    let after = seen[1].id;
    let request = app.api.request(reqwest::Method::GET, &format!("/v1/session/{session_id}/events?after={after}"));
    let from_query = EventStream::open(request).await.unwrap().until("turn.complete", DEADLINE).await;
    assert_eq!(from_query.iter().map(|e| e.id).collect::<Vec<_>>(), stored[2..].to_vec());
    let (status, error) =
        app.get(KEY_A, &format!("/v1/session/{session_id}/events?after=not-a-number")).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("invalid_query")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_idempotency_key_gives_one_turn() {
    let app = TestApp::spawn("idempotent", fast_provider()).await;
    let _worker = app.start_worker();

    let body = json!({ "message": "only once" });
    let (status_1, first) = app.post_message(body.clone(), Some("key-123")).await;
    let (status_2, second) = app.post_message(body, Some("key-123")).await;
    assert_eq!((status_1, status_2), (202, 202));
    assert_eq!(first, second, "a repeated key returns the same turn");

    let session_id = first["session_id"].as_str().unwrap();
    app.events(session_id, None).await.until("turn.complete", DEADLINE).await;
    assert_eq!(app.count("turns").await, 1);
    assert_eq!(app.count("sessions").await, 1);
    assert_eq!(app.messages(session_id).await.len(), 2);
    assert_eq!(app.provider.requests(), 1, "the provider was asked once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_failure_mid_stream_is_retried_and_answered_once() {
    let provider = DevProviderOptions { fault: Some(Fault::BreakAfter(3)), faulty_requests: 1, ..fast_provider() };
    let app = TestApp::spawn("provider-failure", provider).await;
    let _worker = app.start_worker();

    let (session_id, _, _) = app.send(None, "please survive").await;
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;

    let kinds = kinds(&events);
    let retry = kinds.iter().position(|k| *k == "llm.retry").expect("an llm.retry event");
    assert!(kinds[..retry].contains(&"llm.delta"), "partial deltas before the retry: {kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "llm.retry").count(), 1);
    let SessionEvent::LlmRetry(retry) = events[retry].event() else { unreachable!() };
    assert_eq!(retry.attempt, 2);
    let reply = shown_reply(&events);
    assert!(reply.contains("please survive"), "{reply}");

    let messages = app.messages(&session_id).await;
    let assistant: Vec<_> = messages.iter().filter(|m| m.0 == "assistant").collect();
    assert_eq!(assistant.len(), 1, "exactly one assistant message");
    assert_eq!(assistant[0].1, reply, "the stored reply is what the stream showed");
    assert_eq!(app.provider.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_survives_its_worker_being_replaced() {
    let app = TestApp::spawn("worker-crash", slow_provider(40)).await;
    let first_worker = app.start_worker();

    let (session_id, _, _) = app.send(None, "crash test").await;
    let mut stream = app.events(&session_id, None).await;
    let before = stream.until("llm.delta", DEADLINE).await;
    first_worker.kill();
    let _second_worker = app.start_worker();
    let after = stream.until("turn.complete", DEADLINE).await;

    let events: Vec<SseEvent> = before.into_iter().chain(after).collect();
    assert!(kinds(&events).contains(&"llm.retry"), "the restarted stream is announced");
    let reply = shown_reply(&events);
    assert!(reply.contains("crash test"), "{reply}");
    let messages = app.messages(&session_id).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    assert_eq!(messages[1], ("assistant".into(), reply, "complete".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_back_to_back_are_answered_in_order() {
    let app = TestApp::spawn("ordering", DevProviderOptions { extra_words: 10, ..fast_provider() }).await;
    let _worker = app.start_worker();

    let (session_id, first_turn, _) = app.send(None, "first").await;
    let (_, second_turn, _) = app.send(Some(&session_id), "second").await;
    let mut stream = app.events(&session_id, None).await;
    let first = stream.until("turn.complete", DEADLINE).await;
    let second = stream.until("turn.complete", DEADLINE).await;

    // The first turn's memory writes run on after its end (not awaited), so their events may
    // come at any time; the turns' own events never interleave.
    let conversation = |events: &[SseEvent]| events.iter().filter(|e| e.kind != "memory.write").cloned().collect::<Vec<_>>();
    assert!(conversation(&first).iter().all(|e| e.is_of_turn(&first_turn)), "turns never interleave");
    assert!(conversation(&second).iter().all(|e| e.is_of_turn(&second_turn)));
    let messages = app.messages(&session_id).await;
    let order: Vec<(&str, bool)> = messages.iter().map(|m| (m.0.as_str(), m.1.contains("second"))).collect();
    assert_eq!(order, vec![("user", false), ("assistant", false), ("user", true), ("assistant", true)]);
    assert!(
        messages[3].1.contains("(1 earlier user messages"),
        "the second reply saw the first turn: {}",
        messages[3].1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_4xx_and_starts_nothing() {
    let app = TestApp::spawn("bad-input", fast_provider()).await;
    let _worker = app.start_worker();
    let oversized = "x".repeat(app.config.max_message_bytes + 1);
    let unknown_session = uuid::Uuid::new_v4().to_string();

    let cases: Vec<(&str, String, &str, u16, &str)> = vec![
        ("malformed JSON", "{\"message\": ".into(), KEY_A, 400, "invalid_json"),
        ("not an object", "[1, 2]".into(), KEY_A, 400, "invalid_request"),
        ("empty message", json!({ "message": "" }).to_string(), KEY_A, 400, "empty_message"),
        ("blank message", json!({ "message": "  \n " }).to_string(), KEY_A, 400, "empty_message"),
        ("missing message", json!({}).to_string(), KEY_A, 400, "invalid_request"),
        ("oversized message", json!({ "message": oversized }).to_string(), KEY_A, 413, "payload_too_large"),
        ("message of the wrong type", json!({ "message": 42 }).to_string(), KEY_A, 400, "invalid_request"),
        ("a NUL character", json!({ "message": "a\u{0}b" }).to_string(), KEY_A, 400, "invalid_text"),
        (
            "session_id not a uuid",
            json!({ "message": "hi", "session_id": "abc" }).to_string(),
            KEY_A,
            400,
            "invalid_request",
        ),
        (
            "unknown field",
            json!({ "message": "hi", "colour": "red" }).to_string(),
            KEY_A,
            400,
            "invalid_request",
        ),
        (
            "unknown session",
            json!({ "message": "hi", "session_id": unknown_session }).to_string(),
            KEY_A,
            404,
            "session_not_found",
        ),
        ("no API key", json!({ "message": "hi" }).to_string(), "", 401, "unauthorized"),
        ("wrong API key", json!({ "message": "hi" }).to_string(), "nope", 401, "unauthorized"),
    ];
    for (what, body, key, status, code) in cases {
        let (got, error) = app.post_message_raw(key, body, None).await;
        assert_eq!(got, status, "{what}: {error}");
        assert_eq!(error["code"], code, "{what}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {error}");
        assert!(error["request_id"].as_str().is_some(), "{what}: {error}");
    }
    let (status, error) = app.post_message(json!({ "message": "hi" }), Some(&"k".repeat(300))).await;
    assert_eq!((status, error["code"].as_str()), (400, Some("invalid_idempotency_key")));

    for table in ["sessions", "turns", "messages", "session_events"] {
        assert_eq!(app.count(table).await, 0, "{table} must be untouched");
    }
    assert_eq!(app.provider.requests(), 0);

    // Another tenant's session does not exist for you.
    let (session_id, _, _) = app.send(None, "tenant A's secret").await;
    for path in [format!("/v1/sessions/{session_id}/messages"), format!("/v1/session/{session_id}/events")] {
        let (status, error) = app.get(KEY_B, &path).await;
        assert_eq!((status, error["code"].as_str()), (404, Some("session_not_found")), "{path}");
    }
    let (status, body) = app.get(KEY_B, "/v1/sessions").await;
    assert_eq!(status, 200);
    assert_eq!(body["sessions"], json!([]));
    let (status, body) = app.get(KEY_A, "/v1/sessions?limit=1").await;
    assert_eq!(status, 200);
    assert_eq!(body["sessions"][0]["id"], session_id.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_turn_has_no_bigger_history_than_the_first() {
    let provider = DevProviderOptions {
        time_to_first_token: Duration::ZERO,
        token_interval: Duration::ZERO,
        ..Default::default()
    };
    let app = TestApp::spawn("history-size", provider).await;
    let _worker = app.start_worker();

    let mut session_id: Option<String> = None;
    let mut sizes = Vec::new();
    let mut stream = None;
    for turn in 1..=20 {
        let (session, _, workflow_id) = app.send(session_id.as_deref(), &format!("turn number {turn}")).await;
        let stream = match &mut stream {
            Some(stream) => stream,
            None => stream.insert(app.events(&session, None).await),
        };
        stream.until("turn.complete", DEADLINE).await;
        session_id = Some(session);
        let description = app
            .temporal
            .get_workflow_handle::<UntypedWorkflow>(workflow_id)
            .describe(Default::default())
            .await
            .unwrap();
        let info = description.raw_description.workflow_execution_info.unwrap();
        sizes.push(info.history_size_bytes);
    }
    let (first, last) = (sizes[0] as f64, sizes[19] as f64);
    assert!(last <= first * 1.2, "turn 20's history is {last} bytes, turn 1's {first}: {sizes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_chat_turn_history_replays_deterministically() {
    let app = TestApp::spawn("replay", fast_provider()).await;
    let _worker = app.start_worker();
    let (session_id, _, workflow_id) = app.send(None, "record me").await;
    app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;

    let handle = app.temporal.get_workflow_handle::<ChatTurnWorkflow>(workflow_id);
    // The workflow completes just after turn.complete is written; wait for its result.
    handle.get_result(Default::default()).await.expect("workflow completed");
    let history = handle.fetch_history(WorkflowFetchHistoryOptions::default());
    soma_tests::histories::replayer().replay_workflow(history).await.expect("replays without non-determinism");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_turn_keeps_the_partial_reply() {
    let app = TestApp::spawn("cancel", slow_provider(200)).await;
    let _worker = app.start_worker();
    let (session_id, turn_id, _) = app.send(None, "a long one").await;
    let mut stream = app.events(&session_id, None).await;
    let mut events = stream.until("llm.delta", DEADLINE).await;

    let (status, body) = app.cancel(&session_id).await;
    assert_eq!(status, 202, "{body}");
    events.extend(stream.until("turn.cancelled", DEADLINE).await);
    assert!(!kinds(&events).contains(&"turn.complete"));
    assert!(events.iter().all(|e| e.is_of_turn(&turn_id)));

    let messages = app.messages(&session_id).await;
    assert_eq!(messages.len(), 2, "{messages:?}");
    let (role, content, status) = &messages[1];
    assert_eq!((role.as_str(), status.as_str()), ("assistant", "cancelled"));
    assert_eq!(content, &shown_reply(&events), "the kept reply is what was streamed");
    assert!(content.split(' ').count() < 200, "the stream stopped early");

    // Nothing left to cancel.
    let (status, body) = app.cancel(&session_id).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("no_running_turn")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_turn_whose_workflow_never_started_is_answered_before_the_next() {
    let app = TestApp::spawn("orphan", fast_provider()).await;
    let _worker = app.start_worker();
    // What an API that died between storing a turn and starting its workflow leaves behind.
    let orphan = app.store_turn(TurnSession::New(uuid::Uuid::now_v7()), "sent just before a crash").await;
    let (session_id, turn_id) = (orphan.session_id, orphan.turn_id);
    sqlx::query("UPDATE turns SET created_at = now() - interval '1 minute', updated_at = now() - interval '1 minute'")
        .execute(app.store.pool())
        .await
        .unwrap();
    let session_id = session_id.to_string();

    let (_, next_turn, _) = app.send(Some(&session_id), "sent after the crash").await;
    let mut stream = app.events(&session_id, None).await;
    let first = stream.until("turn.complete", DEADLINE).await;
    // (The first turn's memory writes run on after its end: their memory.write may come first.)
    let second: Vec<SseEvent> =
        stream.until("turn.complete", DEADLINE).await.into_iter().filter(|e| e.kind != "memory.write").collect();

    assert!(first[0].is_of_turn(&turn_id.to_string()));
    assert!(second[0].is_of_turn(&next_turn));
    let users: Vec<String> =
        app.messages(&session_id).await.into_iter().filter(|m| m.0 == "user").map(|m| m.1).collect();
    assert_eq!(users, vec!["sent just before a crash", "sent after the crash"]);
    let recovered = app.audit(&turn_id.to_string()).await;
    assert!(
        recovered.iter().any(|(action, outcome, actor)| action == "turn.recover"
            && outcome.starts_with("started")
            && actor == "recovery"),
        "the recovery is audited: {recovered:?}"
    );
}

/// A worker takes a turn's start at its eager-start address (the api's way in ops/dev) and
/// answers it; a second start of the same turn (an api retrying) changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_starts_a_turn_handed_to_it() {
    let app = TestApp::spawn("eager", fast_provider()).await;
    let _worker = app.start_worker();
    let turn = app.store_turn(TurnSession::New(uuid::Uuid::now_v7()), "started by the worker").await;
    let starts = EagerStarts::from_config(&app.config).unwrap().expect("the tests configure an address");
    // The worker listens once it has registered with Temporal.
    eventually("the worker takes the start", || async { matches!(starts.start(turn.turn_id).await, EagerStart::Started) })
        .await;
    let again = starts.start(turn.turn_id).await;
    assert!(matches!(again, EagerStart::Started), "a second start is a no-op: {again:?}");
    let unknown = starts.start(uuid::Uuid::now_v7()).await;
    assert!(matches!(&unknown, EagerStart::NotTaken(why) if why.contains("404")), "{unknown:?}");

    let session_id = turn.session_id.to_string();
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;
    assert!(events[0].is_of_turn(&turn.turn_id.to_string()));
    let ends = events.iter().filter(|e| e.kind == "turn.complete").count();
    assert_eq!(ends, 1, "{:?}", kinds(&events));
    let users: Vec<String> =
        app.messages(&session_id).await.into_iter().filter(|m| m.0 == "user").map(|m| m.1).collect();
    assert_eq!(users, vec!["started by the worker"]);
}

/// When no worker takes starts at the configured address, or one fails to, the api starts the
/// turn itself: the message is accepted (202) and answered. When the worker says Temporal
/// failed, the api does not ask Temporal again: 503 with the JSON error, the turn taken back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_is_started_by_the_api_when_no_worker_takes_it() {
    // Nothing listens at the api's eager-start address; the worker listens nowhere.
    let app = TestApp::spawn("no_eager", fast_provider()).await;
    let _worker = app.start_worker_with(|config| config.eager_start_addr.clear());
    let (session_id, turn_id, _) = app.send(None, "nobody took the start").await;
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;
    assert!(events[0].is_of_turn(&turn_id));

    // A stand-in worker at that address, answering every start with `answer`.
    let answer = std::sync::Arc::new(std::sync::Mutex::new(StatusCode::INTERNAL_SERVER_ERROR));
    let answering = answer.clone();
    let stand_in = axum::Router::new().fallback(move || {
        let status = *answering.lock().unwrap();
        async move { (status, "oops") }
    });
    let listener = tokio::net::TcpListener::bind(app.config.eager_start_addr.as_str()).await.unwrap();
    tokio::spawn(async move { axum::serve(listener, stand_in).await });
    // It cannot act (500): the api starts the turn.
    let (status, body) = app.post_message(json!({"session_id": session_id, "message": "the worker failed"}), None).await;
    assert_eq!(status, 202, "{body}");
    let turn_id = body["turn_id"].as_str().unwrap().to_string();
    let after = events.last().map(|e| e.id);
    let events = app.events(&session_id, after).await.until("turn.complete", DEADLINE).await;
    let last = events.last().unwrap();
    assert!(last.is_of_turn(&turn_id), "the second turn ended: {:?}", kinds(&events));

    // Temporal failed it (503): nothing is accepted.
    *answer.lock().unwrap() = StatusCode::SERVICE_UNAVAILABLE;
    let turns = app.count("turns").await;
    let (status, body) = app.post_message(json!({"session_id": session_id, "message": "Temporal failed"}), None).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["message"].as_str().is_some_and(|m| m.contains("workflow service")), "{body}");
    assert_eq!(app.count("turns").await, turns, "the turn was taken back");
}
