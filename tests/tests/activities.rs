//! Activities run directly (the SDK's `ActivityEnvironment`, no Temporal server) against real
//! PostgreSQL: what a retry, an attempt number or a refusal does to a single step, where
//! driving a whole turn would be slower and less precise. Run through `ops/test`.

use std::sync::Arc;
use std::time::Duration;

use soma_activities::{LlmActivitiesImpl, LlmClient, SessionActivitiesImpl, SessionPurger};
use soma_contract::events::LlmDelta;
use soma_contract::{SessionEvent, TurnOutcome};
use soma_core::SessionWakeups;
use soma_core::store::{SessionMemories, TurnSession};
use soma_devllm::{DevProviderOptions, Fault};
use soma_tests::TestApp;
use soma_workflows::activities::{FinishTurnInput, ReplyRound, TurnBegin};
use temporalio_sdk::activities::ActivityError;
use temporalio_sdk::testing::{ActivityEnvironment, ActivityEnvironmentError, TestActivityInfoOptions};
use uuid::Uuid;

fn session_activities(app: &TestApp) -> ActivityEnvironment {
    let blobs = soma_core::blobs::BlobStore::from_config(&app.config);
    let purger = SessionPurger::new(app.store.clone(), blobs, SessionMemories::Keep);
    let activities =
        SessionActivitiesImpl::new(app.store.clone(), Arc::new(SessionWakeups::default()), soma_tests::project_policy(), purger);
    ActivityEnvironment::builder_with_default().register_activities(activities).build()
}

/// The kinds of a session's stored events, in order.
async fn stored_kinds(app: &TestApp, session_id: Uuid) -> Vec<String> {
    let events = app.store.events_after_each(&[(session_id, "tenant-a".into(), 0)], 100).await.unwrap();
    events.into_iter().map(|e| e.kind).collect()
}

#[tokio::test]
async fn begin_turn_waits_for_an_earlier_open_turn_and_runs_once_however_often_retried() {
    let app = TestApp::spawn("begin-turn", Default::default()).await;
    let env = session_activities(&app);
    let first = app.store_turn(TurnSession::New(Uuid::now_v7()), "first").await;
    let second = app.store_turn(TurnSession::Existing(first.session_id), "second").await;

    let began = env.run(SessionActivitiesImpl::begin_turn, second.clone()).await.unwrap();
    assert_eq!(began, TurnBegin::WaitForEarlier, "the second turn waits for the first");
    assert_eq!(app.count("messages").await, 0, "waiting writes nothing");

    for _ in 0..3 {
        assert_eq!(env.run(SessionActivitiesImpl::begin_turn, first.clone()).await.unwrap(), TurnBegin::Begun);
    }
    assert_eq!(app.count("messages").await, 1, "one user message however often it ran");
    assert_eq!(stored_kinds(&app, first.session_id).await, ["message.user"]);
}

#[tokio::test]
async fn a_turn_end_recorded_twice_is_stored_once() {
    let app = TestApp::spawn("finish-twice", Default::default()).await;
    let env = session_activities(&app);
    let turn = app.store_turn(TurnSession::New(Uuid::now_v7()), "fail me").await;
    let input = FinishTurnInput {
        turn: turn.clone(),
        status: TurnOutcome::Failed,
        assistant_message_id: None,
        reason: Some("the provider refused".into()),
        code: None,
    };
    env.run(SessionActivitiesImpl::finish_turn, input.clone()).await.unwrap();
    env.run(SessionActivitiesImpl::finish_turn, input).await.unwrap();

    assert_eq!(stored_kinds(&app, turn.session_id).await, ["error", "turn.failed"]);
    let finishes: Vec<_> = app.audit(&turn.turn_id.to_string()).await.into_iter().filter(|a| a.0 == "turn.finish").collect();
    assert_eq!(finishes, [("turn.finish".into(), "failed".into(), "worker".into())]);
}

#[tokio::test]
async fn a_retried_llm_attempt_announces_the_retry_and_a_refusal_is_not_retried() {
    let refusing = DevProviderOptions {
        fault: Some(Fault::Status { status: 401, retry_after_secs: None }),
        faulty_requests: 1,
        ..Default::default()
    };
    let app = TestApp::spawn("llm-attempt", refusing).await;
    let turn = app.store_turn(TurnSession::New(Uuid::now_v7()), "hello").await;
    session_activities(&app).run(SessionActivitiesImpl::begin_turn, turn.clone()).await.unwrap();
    // What attempt 1 streamed before it broke.
    let partial = SessionEvent::LlmDelta(LlmDelta { text: "Hel".into(), attempt: 1, index: 0, round: 0, compacted: false });
    app.store.append_events(&turn.scope(), &[partial]).await.unwrap();

    let llm = LlmClient::new(&app.provider.base_url(), "", soma_devllm::MODEL, Duration::from_secs(5));
    let env = ActivityEnvironment::builder_with_default()
        .register_activities(LlmActivitiesImpl::new(app.store.clone(), llm, Duration::from_millis(15), 4))
        .info(TestActivityInfoOptions::builder().attempt(2).build())
        .build();
    let result = env.run(LlmActivitiesImpl::stream_reply, ReplyRound { turn: turn.clone(), round: 0 }).await;

    match result {
        Err(ActivityEnvironmentError::Activity(ActivityError::Application(failure))) => {
            assert!(failure.is_non_retryable(), "a refusal fails the step at once");
            assert!(failure.to_string().contains("401"), "{failure}");
        }
        other => panic!("expected a permanent failure, got {other:?}"),
    }
    assert_eq!(stored_kinds(&app, turn.session_id).await, ["message.user", "llm.delta", "llm.retry"]);
}
