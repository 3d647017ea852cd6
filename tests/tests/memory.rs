//! Memory end to end (real Temporal and PostgreSQL; the built-in memory and a SomaBrain test
//! server that follows its contract): recall in a later turn's prompt, tenant isolation, writes
//! that ride out an outage and arrive once each, dead letters and their replay, a slow or
//! degraded backend. Run through `ops/test`.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use soma_client::SseEvent;
use soma_contract::events::{MemoryRecall, MemoryWrite};
use soma_contract::{MemoryWriteStatus, MemoryWriteRef, RecallStatus, SessionEvent};
use soma_core::{MemoryBackendKind, Secret};
use soma_devllm::DevProviderOptions;
use soma_tests::somabrain::{BRAIN_TOKEN, BrainMode, FakeSomaBrain};
use soma_tests::{Expect, KEY_A, KEY_ADMIN, KEY_B, TestApp, Typed, eventually};
use soma_workflows::{MemoryWriteInput, MemoryWriteWorkflow};

const DEADLINE: Duration = Duration::from_secs(60);

fn fast_provider() -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(5),
        ..Default::default()
    }
}

/// An app whose memory is the SomaBrain test server, with short retries.
async fn spawn_with_brain(name: &str, brain: &FakeSomaBrain, budget_secs: u64) -> TestApp {
    let url = brain.url.clone();
    TestApp::spawn_with(name, fast_provider(), move |config| {
        config.memory_backend = MemoryBackendKind::Somabrain;
        config.somabrain_url = url;
        config.somabrain_token = Secret::new(BRAIN_TOKEN);
        config.memory_recall_timeout_ms = 400;
        config.memory_retry_max_interval_secs = 1;
        config.memory_retry_budget_secs = budget_secs;
    })
    .await
}

async fn post_json(app: &TestApp, key: &str, path: &str, body: Value) -> (u16, Value) {
    let response = app.api.with_key(key).request(reqwest::Method::POST, path).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

fn recalls(events: &[SseEvent]) -> Vec<MemoryRecall> {
    events
        .iter()
        .filter_map(|e| match e.event() {
            SessionEvent::MemoryRecall(recall) => Some(recall),
            _ => None,
        })
        .collect()
}

/// Reads the session's stream until `n` `memory.write` events have come.
async fn memory_writes(app: &TestApp, session_id: &str, n: usize) -> Vec<MemoryWrite> {
    let mut stream = app.events(session_id, None).await;
    let mut writes = Vec::new();
    while writes.len() < n {
        let events = stream.until("memory.write", DEADLINE).await;
        if let Some(SessionEvent::MemoryWrite(write)) = events.last().map(|e| e.event()) {
            writes.push(write);
        }
    }
    writes
}

/// A session's turn, run to its end: its events.
async fn turn(app: &TestApp, session: Option<&str>, message: &str) -> (String, Vec<SseEvent>) {
    let (session_id, _, _) = app.send(session, message).await;
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;
    (session_id, events)
}

#[tokio::test]
async fn a_remembered_message_is_recalled_into_a_later_prompt_within_its_tenant_only() {
    let app = TestApp::spawn("memory_recall", fast_provider()).await;
    let _worker = app.start_worker();

    let (first, events) = turn(&app, None, "My favourite colour is teal, like the sea in Lisbon").await;
    assert!(recalls(&events).is_empty(), "nothing to recall yet: no memory.recall event");
    let writes = memory_writes(&app, &first, 2).await;
    assert!(writes.iter().all(|w| w.status == MemoryWriteStatus::Delivered), "{writes:?}");
    let user_key = writes.iter().find(|w| w.key.contains("/user/")).expect("the user message's write").key.clone();
    assert!(user_key.starts_with(&format!("tenant-a/default/{first}/user/")), "{user_key}");

    // The recall endpoint finds it for its tenant, and never for another.
    let (status, found) = app.get(KEY_A, "/v1/memory/recall?q=favourite%20colour").await;
    assert_eq!(status, 200, "{found}");
    let contents: Vec<&str> = found["memories"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(contents.iter().any(|c| c.contains("teal")), "{found}");
    assert_eq!(found["backend"], "postgres");
    let (status, other) = app.get(KEY_B, "/v1/memory/recall?q=favourite%20colour").await;
    assert_eq!((status, other["memories"].as_array().map(Vec::len)), (200, Some(0)), "{other}");

    // Tenant B asking the same question is told nothing of tenant A's memories.
    let seen_before = app.provider.system_messages().len();
    let other_session = app.api.with_key(KEY_B).say(None, "What is my favourite colour?").await.unwrap();
    let mut b_stream = app.api.with_key(KEY_B).events(other_session.session_id, None).await.unwrap();
    let b_events = b_stream.until("turn.complete", DEADLINE).await;
    assert!(recalls(&b_events).is_empty());
    assert!(app.provider.system_messages()[seen_before..].iter().all(|m| !m.contains("teal")));

    // Tenant A, in a new session: recalled, recorded with the turn, and in the prompt.
    let (second, events) = turn(&app, None, "What is my favourite colour?").await;
    let recall = recalls(&events).pop().expect("a memory.recall event");
    assert_eq!(recall.status, RecallStatus::Recalled);
    assert!(recall.memories.iter().any(|m| m.key == user_key), "{recall:?}");
    let prompts = app.provider.system_messages();
    assert!(prompts.last().is_some_and(|m| m.contains("Relevant memories") && m.contains("teal")), "{prompts:?}");
    let recorded: Option<Value> = sqlx::query_scalar(
        "SELECT recalled FROM turns WHERE session_id = $1::uuid",
    )
    .bind(&second)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert!(recorded.unwrap().to_string().contains(&user_key));

    // The model can look memory up itself: the built-in tool memory_recall, for its tenant.
    let (_, events) = turn(&app, None, r#"[[tool:memory_recall {"query":"favourite colour"}]]"#).await;
    let result = events
        .iter()
        .find_map(|e| match e.event() {
            SessionEvent::ToolResult(result) => Some(result),
            _ => None,
        })
        .expect("a tool.result");
    assert!(result.output.as_deref().is_some_and(|o| o.contains("teal")), "{result:?}");

    // Bad requests change nothing.
    let (status, latest) = app.get(KEY_A, "/v1/memory/recall").await;
    assert_eq!((status, latest["memories"].as_array().map(|m| !m.is_empty())), (200, Some(true)), "no q: the latest");
    assert_eq!(app.get(KEY_A, "/v1/memory/recall?q=teal&top_k=0").await.0, 400);
    let (status, body) = post_json(&app, KEY_A, "/v1/memory/feedback", json!({ "key": user_key, "utility": 3 })).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_feedback")));
    let (status, _) = post_json(&app, KEY_B, "/v1/memory/feedback", json!({ "key": user_key, "utility": 1 })).await;
    assert_eq!(status, 404, "another tenant's memory");
    let (status, body) = post_json(&app, KEY_A, "/v1/memory/feedback", json!({ "key": user_key, "utility": 1 })).await;
    assert_eq!((status, body["accepted"].as_bool()), (200, Some(true)));
}

#[tokio::test]
async fn writes_ride_out_a_backend_outage_and_arrive_once_each_while_turns_complete() {
    let brain = FakeSomaBrain::start().await;
    let app = spawn_with_brain("memory_outage", &brain, 3600).await;
    let _worker = app.start_worker();
    brain.set_mode(BrainMode::Down);

    // Turns complete while the backend is down; recall says memory was unavailable.
    let mut sessions = Vec::new();
    for n in 0..3 {
        let (session, events) = turn(&app, None, &format!("Remember the number {n} for the outage test")).await;
        let recall = recalls(&events).pop().expect("memory.recall says memory was unavailable");
        assert_eq!(recall.status, RecallStatus::Unavailable, "{recall:?}");
        sessions.push(session);
    }
    // Their writes are retried, each failure recorded.
    eventually("every write retried at least twice", || async {
        let retried: i64 = sqlx::query_scalar("SELECT count(*) FROM memory_writes WHERE status = 'pending' AND attempts >= 2")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
        retried == 6
    })
    .await;
    assert!(brain.accepted().is_empty());

    brain.set_mode(BrainMode::Healthy);
    for session in &sessions {
        let writes = memory_writes(&app, session, 2).await;
        assert!(writes.iter().all(|w| w.status == MemoryWriteStatus::Delivered && w.attempts >= 2), "{writes:?}");
    }
    // Each of the six messages reached the backend exactly once, under its own key.
    let accepted = brain.accepted();
    assert_eq!(accepted.len(), 6, "{accepted:?}");
    assert!(accepted.values().all(|n| *n == 1), "a write accepted twice: {accepted:?}");
    assert!(brain.requests().values().all(|n| *n >= 3), "each was retried: {:?}", brain.requests());
    assert_eq!(brain.stored("tenant-a").len(), 6);
    assert_eq!(app.count("dead_letters").await, 0);

    // Starting a delivered write again (a duplicate start) sends nothing.
    let key = accepted.keys().next().unwrap().clone();
    let session_id: Uuid = key.split('/').nth(2).unwrap().parse().unwrap();
    let write = MemoryWriteRef {
        tenant_id: "tenant-a".into(),
        key: key.clone(),
        session_id: Some(session_id),
        turn_id: None,
        request_id: "duplicate".into(),
        trace_id: None,
    };
    let options = MemoryWriteWorkflow::start_options(&app.config.task_queue, &write);
    let input = MemoryWriteInput { write, retry: app.config.memory_retry() };
    let handle = app.temporal.start_workflow(MemoryWriteWorkflow::run, input, options).await.unwrap();
    let ended = handle.get_result(Default::default()).await.unwrap();
    assert_eq!(ended, MemoryWriteStatus::Delivered);
    assert_eq!(brain.accepted()[&key], 1);

    // A slow backend: recall gives up in time, the turn goes on; a degraded one says so.
    brain.set_mode(BrainMode::Slow(Duration::from_secs(2)));
    let (_, events) = turn(&app, None, "Remember the number 7 please").await;
    let recall = recalls(&events).pop().unwrap();
    assert_eq!(recall.status, RecallStatus::Unavailable);
    assert!(recall.reason.unwrap().contains("did not answer within 400 ms"));
    brain.set_mode(BrainMode::Degraded);
    let (_, events) = turn(&app, None, "Which number should I remember for the outage test?").await;
    let recall = recalls(&events).pop().unwrap();
    assert_eq!(recall.status, RecallStatus::Degraded, "{recall:?}");
    assert!(!recall.memories.is_empty(), "degraded recall still answers: {recall:?}");
}

#[tokio::test]
async fn a_refused_or_expired_write_becomes_a_dead_letter_that_a_replay_delivers_once() {
    let brain = FakeSomaBrain::start().await;
    let app = spawn_with_brain("memory_dead_letters", &brain, 4).await;
    let _worker = app.start_worker();

    // A permanent refusal (422): dead-lettered at once, not retried.
    brain.set_mode(BrainMode::Refuses);
    let (refused_session, _) = turn(&app, None, "Something the backend refuses").await;
    let writes = memory_writes(&app, &refused_session, 2).await;
    assert!(writes.iter().all(|w| w.status == MemoryWriteStatus::DeadLettered && w.attempts == 1), "{writes:?}");
    assert!(writes[0].reason.as_deref().unwrap().contains("422"), "{writes:?}");

    // A backend down longer than the write's budget (4 s here): dead-lettered too.
    brain.set_mode(BrainMode::Down);
    let (expired_session, _) = turn(&app, None, "Something written during a long outage").await;
    let writes = memory_writes(&app, &expired_session, 2).await;
    assert!(writes.iter().all(|w| w.status == MemoryWriteStatus::DeadLettered && w.attempts >= 2), "{writes:?}");

    // Operators list them (admin key only), with payload, error and attempts.
    assert_eq!(app.get(KEY_A, "/v1/admin/dead-letters").await.0, 401, "a tenant key is not an admin key");
    let (status, listed) = app.get(KEY_ADMIN, "/v1/admin/dead-letters?kind=memory_write&tenant_id=tenant-a").await;
    assert_eq!(status, 200, "{listed}");
    let letters = listed["dead_letters"].as_array().unwrap().clone();
    assert_eq!(letters.len(), 4, "{listed}");
    assert!(letters.iter().all(|l| l["payload"]["type"] == "conversation_event" && l["status"] == "open"));
    let audited: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'memory.write' AND outcome = 'dead_lettered'")
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(audited, 4);

    // The cause is fixed: one replayed by ID, the rest all at once; each delivered once.
    brain.set_mode(BrainMode::Healthy);
    let first = letters[0]["id"].as_str().unwrap();
    let (status, replayed) = post_json(&app, KEY_ADMIN, &format!("/v1/admin/dead-letters/{first}/replay"), json!(null)).await;
    assert_eq!(status, 200, "{replayed}");
    let (status, again) = post_json(&app, KEY_ADMIN, &format!("/v1/admin/dead-letters/{first}/replay"), json!(null)).await;
    assert_eq!((status, again["code"].as_str()), (409, Some("not_open")));
    let (status, rest) = post_json(&app, KEY_ADMIN, "/v1/admin/dead-letters/replay", json!({ "tenant_id": "tenant-a" })).await;
    assert_eq!((status, rest["replayed"].as_array().map(Vec::len)), (200, Some(3)), "{rest}");
    let keys: Vec<String> = letters.iter().map(|l| l["key"].as_str().unwrap().to_string()).collect();
    eventually("every replayed write delivered", || async {
        let accepted = brain.accepted();
        keys.iter().all(|key| accepted.contains_key(key))
    })
    .await;
    let accepted: HashMap<String, usize> = brain.accepted();
    assert!(keys.iter().all(|key| accepted[key] == 1), "{accepted:?}");
    let (_, open) = app.get(KEY_ADMIN, "/v1/admin/dead-letters").await;
    assert_eq!(open["dead_letters"].as_array().map(Vec::len), Some(0), "{open}");
    let (_, replayed) = app.get(KEY_ADMIN, "/v1/admin/dead-letters?status=replayed").await;
    assert!(replayed["dead_letters"].as_array().unwrap().iter().all(|l| l["resolved_by"] == "admin:ops"));

    // Discarding needs an open letter and a reason.
    brain.set_mode(BrainMode::Refuses);
    let (session, _) = turn(&app, None, "Another refused one").await;
    memory_writes(&app, &session, 2).await;
    let (_, listed) = app.get(KEY_ADMIN, "/v1/admin/dead-letters").await;
    let id = listed["dead_letters"][0]["id"].as_str().unwrap().to_string();
    let path = format!("/v1/admin/dead-letters/{id}/discard");
    let (status, body) = post_json(&app, KEY_ADMIN, &path, json!({ "reason": "  " })).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_reason")));
    let (status, body) = post_json(&app, KEY_ADMIN, &path, json!({ "reason": "test data" })).await;
    assert_eq!((status, body["status"].as_str(), body["resolution"].as_str()), (200, Some("discarded"), Some("test data")));
    assert_eq!(post_json(&app, KEY_ADMIN, &path, json!({ "reason": "twice" })).await.0, 409);
    let missing = format!("/v1/admin/dead-letters/{}/replay", Uuid::now_v7());
    assert_eq!(post_json(&app, KEY_ADMIN, &missing, json!(null)).await.0, 404);
}

#[tokio::test]
async fn a_tenant_the_policy_keeps_out_of_memory_is_never_remembered() {
    const KEY: &str = "test-key-no-memory";
    let app = TestApp::spawn_with("memory_denied", fast_provider(), |config| {
        config.api_keys = format!("tenant-without-memory:{}", soma_api::auth::hash_key(KEY));
    })
    .await;
    let _worker = app.start_worker();
    let api = app.api.with_key(KEY);
    let accepted = api.say(None, "Please forget this right away").await.unwrap();
    let mut stream = api.events(accepted.session_id, None).await.unwrap();
    let mut denied = Vec::new();
    while denied.len() < 2 {
        let events = stream.until("memory.write", DEADLINE).await;
        if let Some(SessionEvent::MemoryWrite(write)) = events.last().map(|e| e.event()) {
            denied.push(write);
        }
    }
    assert!(denied.iter().all(|w| w.status == MemoryWriteStatus::Denied), "{denied:?}");
    assert!(denied[0].reason.as_deref().unwrap().contains("does not keep memories"), "{denied:?}");
    assert_eq!(app.count("memories").await, 0);
    assert_eq!(app.count("dead_letters").await, 0, "a denial is not retried or dead-lettered");
    let audited: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'memory.write' AND outcome = 'denied'")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(audited, 2);
}

#[tokio::test]
async fn a_tool_whose_results_are_remembered_is_recalled_later() {
    let app = TestApp::spawn("memory_tool_results", fast_provider()).await;
    let _worker = app.start_worker();
    // The worker writes the built-ins as it starts; the calculator's results are to be remembered.
    eventually("the built-in tools in the catalog", || async {
        app.store.tenant_tool("tenant-a", "calculator").await.unwrap().is_some()
    })
    .await;
    let mut calculator = app.store.tenant_tool("tenant-a", "calculator").await.unwrap().unwrap();
    calculator.remember_results = true;
    app.store.put_tool(&calculator).await.unwrap();

    let (session, _) = turn(&app, None, "What is 17*23?").await;
    let writes = memory_writes(&app, &session, 3).await;
    let tool = writes.iter().find(|w| w.role == Some(soma_contract::MemoryRole::Tool)).expect("the tool result's write");
    assert_eq!(tool.status, MemoryWriteStatus::Delivered, "{writes:?}");
    let (status, found) = app.get(KEY_A, "/v1/memory/recall?q=calculator").await;
    assert_eq!(status, 200);
    let contents: Vec<&str> = found["memories"].as_array().unwrap().iter().filter_map(|m| m["content"].as_str()).collect();
    assert!(contents.iter().any(|c| c.starts_with("calculator(") && c.ends_with("→ 391")), "{found}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nul_character_in_recall_or_feedback_is_a_bad_request_not_an_outage() {
    let app = TestApp::spawn("recall_nul", fast_provider()).await;
    let (status, body) = app.get(KEY_A, "/v1/memory/recall?q=a%00b").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "{body}");
    let (status, body) = post_json(&app, KEY_A, "/v1/memory/feedback", json!({ "key": "a\u{0}b", "utility": 0.5 })).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_feedback")), "{body}");
}
