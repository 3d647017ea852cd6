//! End-to-end: what happens when the provider, Temporal or a workflow fails. A refusal fails
//! the turn at once, visibly; a transient failure is retried; nothing is left half done.
//! Run through `ops/test`.

use std::time::{Duration, Instant};

use serde_json::json;
use soma_contract::events::ErrorCode;
use soma_contract::SessionEvent;
use soma_devllm::{DevProviderOptions, Fault};
use soma_client::SseEvent;
use soma_tests::{DEADLINE, Expect, TestApp, Typed, shown_reply};
use temporalio_client::{UntypedWorkflow, WorkflowExecutionStatus, WorkflowTerminateOptions};

fn provider_failing(fault: Fault, requests: usize) -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(5),
        fault: Some(fault),
        faulty_requests: requests,
        ..Default::default()
    }
}

fn kinds(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

/// Waits for the workflow to close and returns how it ended.
async fn closed_status(app: &TestApp, workflow_id: &str) -> WorkflowExecutionStatus {
    let handle = app.temporal.get_workflow_handle::<UntypedWorkflow>(workflow_id.to_string());
    let _ = handle.get_result(Default::default()).await;
    handle.describe(Default::default()).await.unwrap().status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_refuses_the_key_fails_the_turn_at_once() {
    let app = TestApp::spawn("refused", provider_failing(Fault::Status { status: 401, retry_after_secs: None }, 100))
        .await;
    let _worker = app.start_worker();
    let started = Instant::now();
    let (session_id, turn_id, workflow_id) = app.send(None, "hello?").await;
    let events = app.events(&session_id, None).await.until("turn.failed", DEADLINE).await;

    assert!(started.elapsed() < Duration::from_secs(10), "not retried for long: {:?}", started.elapsed());
    assert_eq!(app.provider.requests(), 1, "a refusal is not retried");
    assert_eq!(kinds(&events), ["message.user", "error", "turn.failed"]);
    let SessionEvent::Error(error) = events[1].event() else { unreachable!() };
    assert_eq!(error.code, ErrorCode::TurnFailed);
    assert!(error.message.contains("401"), "the error says why: {}", error.message);
    let SessionEvent::TurnFailed(end) = events[2].event() else { unreachable!() };
    assert!(end.reason.is_some_and(|r| r.contains("401")));

    let audit = app.audit(&turn_id).await;
    assert!(audit.iter().any(|(action, outcome, actor)| action == "turn.finish"
        && outcome == "failed"
        && actor == "worker"));
    assert_eq!(closed_status(&app, &workflow_id).await, WorkflowExecutionStatus::Failed, "visible in Temporal");
    let messages = app.messages(&session_id).await;
    assert_eq!(messages.len(), 1, "only the user's message: {messages:?}");

    // The session is not blocked: the next message is answered (the provider is still refusing,
    // so it fails too, but it runs).
    let (_, next_turn, _) = app.send(Some(&session_id), "again").await;
    let next = app.events(&session_id, Some(events[2].id)).await.until("turn.failed", DEADLINE).await;
    // (The first turn's user message is remembered after its end: its memory.write may come.)
    assert!(next.iter().filter(|e| e.kind != "memory.write").all(|e| e.is_of_turn(&next_turn)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_provider_is_asked_again_after_its_retry_after() {
    let fault = Fault::Status { status: 429, retry_after_secs: Some(3) };
    let app = TestApp::spawn("rate-limited", provider_failing(fault, 1)).await;
    let _worker = app.start_worker();
    let started = Instant::now();
    let (session_id, _, _) = app.send(None, "patience").await;
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;

    assert_eq!(app.provider.requests(), 2);
    // The step's own backoff would ask again after 1 s; the provider asked for 3.
    assert!(started.elapsed() >= Duration::from_secs(3), "Retry-After honoured: {:?}", started.elapsed());
    assert!(!kinds(&events).contains(&"llm.retry"), "nothing was streamed before the retry");
    assert!(shown_reply(&events).contains("patience"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_server_errors_are_retried_until_it_answers() {
    let fault = Fault::Status { status: 500, retry_after_secs: None };
    let app = TestApp::spawn("server-errors", provider_failing(fault, 2)).await;
    let _worker = app.start_worker();
    let (session_id, turn_id, _) = app.send(None, "third time lucky").await;
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;

    assert_eq!(app.provider.requests(), 3);
    assert!(shown_reply(&events).contains("third time lucky"));
    let audit = app.audit(&turn_id).await;
    assert!(audit.iter().any(|(action, outcome, _)| action == "turn.finish" && outcome == "completed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_chunk_restarts_the_reply_and_the_partial_text_is_dropped() {
    let app = TestApp::spawn("malformed", provider_failing(Fault::MalformedAfter(3), 1)).await;
    let _worker = app.start_worker();
    let (session_id, _, _) = app.send(None, "garbled").await;
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;

    let kinds = kinds(&events);
    let retry = kinds.iter().position(|k| *k == "llm.retry").expect("an llm.retry");
    assert!(kinds[..retry].contains(&"llm.delta"), "the first attempt streamed before the garbage");
    let reply = shown_reply(&events);
    assert_eq!(reply, soma_devllm::reply_text("garbled", 0, 0), "the whole reply once");
    let messages = app.messages(&session_id).await;
    assert_eq!(messages[1].1, reply, "the stored reply is the retried attempt's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_provider_is_abandoned_and_asked_again() {
    let stall = Duration::from_secs(30);
    let app = TestApp::spawn_with("stalled", provider_failing(Fault::StallAfter { tokens: 3, stall }, 1), |config| {
        config.llm_stall_timeout_ms = 1_000;
    })
    .await;
    let _worker = app.start_worker();
    let started = Instant::now();
    let (session_id, _, _) = app.send(None, "are you there").await;
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;

    assert!(started.elapsed() < stall, "did not wait out the stall: {:?}", started.elapsed());
    assert!(kinds(&events).contains(&"llm.retry"));
    assert_eq!(shown_reply(&events), soma_devllm::reply_text("are you there", 0, 0));
    assert_eq!(app.provider.requests(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_whose_workflow_cannot_start_is_refused_and_leaves_nothing() {
    // A namespace the server does not have: every start fails.
    let app = TestApp::spawn_with("unstartable", Default::default(), |config| {
        config.temporal_namespace = "soma-test-no-such-namespace".into();
    })
    .await;
    let body = json!({ "message": "lost in space" });
    for _ in 0..2 {
        let (status, error) = app.post_message(body.clone(), Some("same-key")).await;
        assert_eq!((status, error["code"].as_str()), (503, Some("dependency_unavailable")), "{error}");
    }
    for table in ["sessions", "turns", "messages", "session_events"] {
        assert_eq!(app.count(table).await, 0, "{table}: the refused message left nothing behind");
    }
    let outcomes: Vec<String> =
        sqlx::query_scalar("SELECT outcome FROM audit_log WHERE action = 'turn.accept' ORDER BY id")
            .fetch_all(app.store.pool())
            .await
            .unwrap();
    assert_eq!(
        outcomes,
        ["accepted", "withdrawn: workflow could not be started", "accepted", "withdrawn: workflow could not be started"],
        "each attempt is audited, and the retried key started afresh"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_whose_workflow_was_terminated_is_recorded_as_failed_and_the_session_goes_on() {
    let slow = DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(20),
        extra_words: 100,
        ..Default::default()
    };
    let app = TestApp::spawn_with("terminated", slow, |config| {
        config.turn_recovery_interval_ms = 500;
        config.turn_recovery_quiet_ms = 1_000;
    })
    .await;
    let _worker = app.start_worker();
    let (session_id, turn_id, workflow_id) = app.send(None, "terminate me").await;
    let (_, next_turn, _) = app.send(Some(&session_id), "then me").await;
    let mut stream = app.events(&session_id, None).await;
    let mut events = stream.until("llm.delta", DEADLINE).await;

    // What an operator does in the Temporal UI: terminate the workflow.
    app.temporal
        .get_workflow_handle::<UntypedWorkflow>(workflow_id.clone())
        .terminate(WorkflowTerminateOptions::builder().reason("operator test").build())
        .await
        .unwrap();
    events.extend(stream.until("turn.failed", DEADLINE).await);
    let SessionEvent::TurnFailed(end) = events.last().unwrap().event() else { unreachable!() };
    assert!(end.reason.is_some_and(|r| r.contains("Terminated")));
    assert!(events.iter().any(|e| matches!(e.event(), SessionEvent::Error(_))), "an error event says why");
    let audit = app.audit(&turn_id).await;
    assert!(audit.iter().any(|(action, outcome, actor)| action == "turn.recover"
        && outcome.starts_with("failed")
        && actor == "recovery"));

    // The queued turn behind it runs now.
    let next = stream.until("turn.complete", DEADLINE).await;
    assert!(next.iter().all(|e| e.is_of_turn(&next_turn)));
}
