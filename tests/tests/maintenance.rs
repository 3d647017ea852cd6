//! The periodic jobs and what operators see: schedules made once by any number of workers and
//! steered from the admin API, each job's real effects, and every workflow findable by its
//! session in Temporal's visibility.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::Method;
use temporalio_client::{WorkflowListOptions, WorkflowStartOptions};
use uuid::Uuid;

use soma_contract::api::{MaintenanceReport, ScheduleList};
use soma_contract::{MaintenanceJob, SessionEvent};
use soma_core::Config;
use soma_core::schedules::{ScheduleConfig, default_schedules};
use soma_devllm::DevProviderOptions;
use soma_tests::{DEADLINE, Expect, KEY_ADMIN, TestApp, Typed, eventually, shown_reply};
use soma_workflows::MaintenanceWorkflow;

/// The default schedules under IDs of this test's own (they live in the namespace).
fn own_schedules(config: &Config) -> Vec<ScheduleConfig> {
    default_schedules()
        .into_iter()
        .map(|schedule| ScheduleConfig { id: format!("{}-{}", config.task_queue, schedule.id), ..schedule })
        .collect()
}

async fn delete_schedules(app: &TestApp) {
    for schedule in &app.config.schedules {
        let _ = app.temporal.get_schedule_handle(&schedule.id).delete(Default::default()).await;
    }
}

/// Runs one job to its end on the test's worker, as its schedule would.
async fn run_job(app: &TestApp, job: MaintenanceJob) -> MaintenanceReport {
    let id = format!("test-{job}-{}", Uuid::new_v4());
    let options = WorkflowStartOptions::new(app.config.task_queue.clone(), id).build();
    let handle = app.temporal.start_workflow(MaintenanceWorkflow::run, job, options).await.unwrap();
    handle.get_result(Default::default()).await.unwrap()
}

/// IDs of the workflows a visibility query finds.
async fn listed(app: &TestApp, query: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut stream = app.temporal.list_workflows(query, WorkflowListOptions::default());
    while let Some(execution) = stream.next().await {
        found.push(execution.unwrap().id().to_string());
    }
    found
}

/// What [`listed`] finds with `prefix` once there are at least `at_least` (visibility lags).
async fn listed_at_least(app: &TestApp, query: &str, prefix: &str, at_least: usize) -> Vec<String> {
    let with_prefix = |found: &[String]| -> Vec<String> { found.iter().filter(|id| id.starts_with(prefix)).cloned().collect() };
    with_prefix(&listed_once(app, query, |found| with_prefix(found).len() >= at_least).await)
}

/// What [`listed`] finds once `done` holds for it, or at the deadline (visibility lags, and
/// workflows other than the awaited ones may show up first).
async fn listed_once(app: &TestApp, query: &str, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let found = listed(app, query).await;
        if done(&found) || tokio::time::Instant::now() > deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_starting_at_once_make_each_schedule_once_and_tick_once() {
    let app = TestApp::spawn_with("schedules_once", DevProviderOptions::default(), |config| {
        config.schedules = own_schedules(config);
        // A fast clock, so that ticks can be counted.
        config.schedules[0].every_secs = Some(2);
    })
    .await;
    let started = Instant::now();
    let (a, b, c) = tokio::join!(
        soma_worker::prepare_temporal(&app.config, &app.temporal),
        soma_worker::prepare_temporal(&app.config, &app.temporal),
        soma_worker::prepare_temporal(&app.config, &app.temporal),
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let _worker = app.start_worker(); // a fourth start, while the ticks run

    let (status, body) = app.get(KEY_ADMIN, "/v1/admin/schedules").await;
    assert_eq!(status, 200, "{body}");
    let list: ScheduleList = serde_json::from_value(body).unwrap();
    let ids: Vec<_> = list.schedules.iter().map(|s| s.id.clone()).collect();
    let expected: Vec<_> = app.config.schedules.iter().map(|s| s.id.clone()).collect();
    assert_eq!(ids, expected);
    let by_job = |job| list.schedules.iter().find(|s| s.job == job).unwrap();
    assert_eq!(by_job(MaintenanceJob::PublishMetrics).spec, "every 2s");
    assert_eq!(by_job(MaintenanceJob::CleanupSessions).spec, "every 3600s");
    assert!(by_job(MaintenanceJob::RetryDeadLetters).paused, "dead letters are not replayed unless an operator says so");
    assert!(!by_job(MaintenanceJob::CompactDeltas).paused);

    // Every tick starts one run, however many workers made the schedule: a few ticks' worth of
    // runs, against the ticks of the time they took.
    let prefix = &app.config.schedules[0].id;
    let query = format!("TaskQueue = '{}' AND SomaKind = 'maintenance'", app.config.task_queue);
    let runs = listed_at_least(&app, &query, prefix, 4).await;
    let elapsed = started.elapsed().as_secs_f64();
    assert!(runs.len() >= 4, "the schedule did not tick: {runs:?}");
    let ticks = (elapsed / 2.0).ceil() as usize + 1;
    assert!(runs.len() <= ticks, "{} runs in {elapsed:.1} s of a 2 s schedule: ticks were duplicated: {runs:?}", runs.len());
    assert_eq!(runs.iter().collect::<HashSet<_>>().len(), runs.len());
    delete_schedules(&app).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_triggers_pauses_and_unpauses_a_schedule() {
    let app = TestApp::spawn_with("schedules_steer", DevProviderOptions::default(), |config| {
        // Paused, so that no tick of the clock lands beside the trigger (it runs while paused).
        config.schedules = own_schedules(config).into_iter().map(|s| ScheduleConfig { paused: true, ..s }).collect();
    })
    .await;
    let _worker = app.start_worker();
    let metrics = app.config.schedules.iter().find(|s| s.job == MaintenanceJob::PublishMetrics).unwrap().id.clone();
    eventually("the worker made the schedules", || async {
        app.get(KEY_ADMIN, "/v1/admin/schedules").await.1["schedules"].as_array().is_some_and(|s| s.len() == 5)
    })
    .await;

    // A tenant key is not an operator's; an unknown schedule is 404.
    let (status, _) = app.call(soma_tests::KEY_A, Method::POST, &format!("/v1/admin/schedules/{metrics}/trigger")).await;
    assert_eq!(status, 401);
    let (status, body) = app.call(KEY_ADMIN, Method::POST, "/v1/admin/schedules/no-such-job/trigger").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    // Trigger: the job runs once, and its gauges are served.
    let (status, body) = app.call(KEY_ADMIN, Method::POST, &format!("/v1/admin/schedules/{metrics}/trigger")).await;
    assert_eq!(status, 202, "{body}");
    eventually("the gauges are published", || async {
        let text = app.api.request(Method::GET, "/metrics").send().await.unwrap().text().await.unwrap();
        text.contains("# TYPE soma_turns_running gauge") && text.contains("soma_dead_letters_open 0")
    })
    .await;
    let query = format!("TaskQueue = '{}'", app.config.task_queue);
    let runs = listed_at_least(&app, &query, &metrics, 1).await;
    assert_eq!(runs.len(), 1, "one trigger, one run: {runs:?}");

    // Pause with a reason, then unpause; both audited.
    let path = format!("/v1/admin/schedules/{metrics}/pause");
    let response = app
        .api
        .with_key(KEY_ADMIN)
        .request(Method::POST, &path)
        .json(&serde_json::json!({ "note": "database maintenance" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let paused: serde_json::Value = response.json().await.unwrap();
    assert_eq!((paused["paused"].as_bool(), paused["note"].as_str()), (Some(true), Some("database maintenance")));
    assert_eq!(paused["next_runs"], serde_json::json!([]));
    let (status, unpaused) = app.call(KEY_ADMIN, Method::POST, &format!("/v1/admin/schedules/{metrics}/unpause")).await;
    assert_eq!((status, unpaused["paused"].as_bool()), (200, Some(false)));
    assert!(!unpaused["next_runs"].as_array().unwrap().is_empty());
    let (status, audit) = app.get(KEY_ADMIN, "/v1/admin/audit?action=schedule.*").await;
    assert_eq!(status, 200, "{audit}");
    let audited: Vec<&str> = audit["records"].as_array().unwrap().iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(audited, ["schedule.trigger", "schedule.pause", "schedule.unpause"]);
    assert_eq!(audit["records"][1]["details"]["note"], "database maintenance", "{audit}");
    delete_schedules(&app).await;
}

/// A session with a finished turn and a clean file kept in S3; returns (session, file).
async fn session_with_file(app: &TestApp, text: &str) -> (Uuid, Uuid) {
    let (session, _, _) = app.send(None, text).await;
    let session: Uuid = session.parse().unwrap();
    let mut events = app.events(&session.to_string(), None).await;
    events.until("turn.complete", DEADLINE).await;
    let file = app.api.upload_multipart("notes.txt", text.as_bytes().to_vec(), Some(session)).await.unwrap();
    let scanned = app.api.wait_for_scan(file.id, DEADLINE).await.unwrap();
    assert_eq!(scanned.status, soma_contract::AttachmentStatus::Clean);
    (session, file.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_exactly_the_expired_sessions_with_their_files_and_memories() {
    let app = TestApp::spawn_with("cleanup_sessions", DevProviderOptions::default(), |config| {
        config.attachment_inline_max_bytes = 4; // every file goes to S3
        config.forget_memories_with_session = true;
    })
    .await;
    let _worker = app.start_worker();
    let (old, old_file) = session_with_file(&app, "an old conversation").await;
    let (recent, recent_file) = session_with_file(&app, "a recent conversation").await;
    let memories = |session: Uuid| {
        let pool = app.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT count(*) FROM memories WHERE session_id = $1")
                .bind(session)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    eventually("both sessions' messages remembered", || async { memories(old).await >= 2 && memories(recent).await >= 2 })
        .await;
    sqlx::query("UPDATE sessions SET updated_at = now() - interval '31 days' WHERE id = $1")
        .bind(old)
        .execute(app.store.pool())
        .await
        .unwrap();
    let blobs = soma_core::blobs::BlobStore::from_config(&app.config);
    let key = |file| soma_activities::uploads::object_key("tenant-a", file);
    // A clean file goes to S3 just after its verdict.
    eventually("both files in S3", || async {
        blobs.exists(&key(old_file)).await.unwrap() && blobs.exists(&key(recent_file)).await.unwrap()
    })
    .await;

    let report = run_job(&app, MaintenanceJob::CleanupSessions).await;
    assert_eq!(report.items, 1, "{report:?}");
    assert!(report.summary.contains("1 sessions deleted (1 S3 objects)"), "{report:?}");

    for table in ["sessions", "turns", "messages", "session_events", "attachments"] {
        let column = if table == "sessions" { "id" } else { "session_id" };
        let count = |session: Uuid| {
            let sql = format!("SELECT count(*) FROM {table} WHERE {column} = $1");
            let pool = app.store.pool().clone();
            async move { sqlx::query_scalar::<_, i64>(&sql).bind(session).fetch_one(&pool).await.unwrap() }
        };
        assert_eq!(count(old).await, 0, "{table} still holds the expired session's rows");
        assert!(count(recent).await > 0, "{table} lost the recent session's rows");
    }
    assert_eq!(memories(old).await, 0, "the expired session's memories are left");
    assert!(memories(recent).await >= 2, "the recent session's memories are gone");
    assert!(!blobs.exists(&key(old_file)).await.unwrap(), "the expired session's S3 object is left");
    assert!(blobs.exists(&key(recent_file)).await.unwrap(), "the recent session's S3 object is gone");
    let (status, _) = app.get(soma_tests::KEY_A, &format!("/v1/session/{old}/messages")).await;
    assert_eq!(status, 404);
    let audited: Vec<(String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT action, outcome, details FROM audit_log WHERE session_id = $1 AND action IN ('session.expire', 'session.delete') ORDER BY id",
    )
    .bind(old)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    let actions: Vec<(&str, &str)> = audited.iter().map(|(a, o, _)| (a.as_str(), o.as_str())).collect();
    assert_eq!(actions, [("session.expire", "requested"), ("session.delete", "completed")]);
    assert!(audited[1].2["memories_forgotten"].as_u64() >= Some(2), "{audited:?}");

    // Nothing left to do: a second run deletes nothing.
    assert_eq!(run_job(&app, MaintenanceJob::CleanupSessions).await.items, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_is_gap_free_across_a_compaction() {
    let provider = DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(40),
        extra_words: 12,
        ..Default::default()
    };
    let app = TestApp::spawn_with("compact_deltas", provider, |config| config.compact_deltas_after_secs = 0).await;
    let _worker = app.start_worker();
    let (session, _, _) = app.send(None, "tell me about compaction").await;
    let before_compaction = app.events(&session, None).await.until("turn.complete", DEADLINE).await;
    let reply = shown_reply(&before_compaction);
    let deltas: Vec<i64> = before_compaction.iter().filter(|e| e.kind == "llm.delta").map(|e| e.id).collect();
    assert!(deltas.len() >= 5, "too few deltas to compact: {}", deltas.len());

    let report = run_job(&app, MaintenanceJob::CompactDeltas).await;
    assert_eq!(report.items, 1, "{report:?}");
    let stored = app.messages(&session).await;
    assert!(stored.iter().any(|(role, content, _)| role == "assistant" && *content == reply), "{stored:?}");

    // Before, inside and after the compacted range: the reply shown is the whole reply, each
    // event arrives once, and nothing else is missed.
    let first_delta = before_compaction.iter().position(|e| e.kind == "llm.delta").unwrap();
    let positions = [before_compaction[first_delta - 1].id, deltas[deltas.len() / 2], *deltas.last().unwrap()];
    for position in positions {
        let resumed = app.events(&session, Some(position)).await.until("turn.complete", DEADLINE).await;
        let ids: Vec<i64> = resumed.iter().map(|e| e.id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]) && ids[0] > position, "from {position}: {ids:?}");
        let mut seen: Vec<_> = before_compaction.iter().filter(|e| e.id <= position).cloned().collect();
        seen.extend(resumed.iter().cloned());
        assert_eq!(shown_reply(&seen), reply, "resumed from {position}");
        let others = |events: &[soma_client::SseEvent]| -> Vec<i64> {
            events.iter().filter(|e| e.id > position && e.kind != "llm.delta").map(|e| e.id).collect()
        };
        assert_eq!(others(&resumed), others(&before_compaction), "resumed from {position}: an event went missing");
        let compacted = resumed.iter().filter(|e| matches!(e.event(), SessionEvent::LlmDelta(d) if d.compacted)).count();
        assert_eq!(compacted, usize::from(position < *deltas.last().unwrap()));
    }
    // Done once: the next run finds nothing.
    assert_eq!(run_job(&app, MaintenanceJob::CompactDeltas).await.items, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_uploads_are_removed_and_fresh_ones_kept() {
    let app = TestApp::spawn("expire_uploads", DevProviderOptions::default()).await;
    let _worker = app.start_worker();
    let stale = app.api.tus_create(100, &[("filename", "stale.bin")]).await.unwrap().id().unwrap();
    let fresh = app.api.tus_create(100, &[("filename", "fresh.bin")]).await.unwrap().id().unwrap();
    sqlx::query("UPDATE attachments SET expires_at = now() - interval '1 minute' WHERE id = $1")
        .bind(stale)
        .execute(app.store.pool())
        .await
        .unwrap();
    let report = run_job(&app, MaintenanceJob::ExpireUploads).await;
    assert_eq!(report.items, 1, "{report:?}");
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM attachments").fetch_all(app.store.pool()).await.unwrap();
    assert_eq!(left, [fresh]);
    let chunks: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'upload.expire'").fetch_one(app.store.pool()).await.unwrap();
    assert_eq!(chunks, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_workflows_are_found_by_its_session_id() {
    let app = TestApp::spawn("visibility", DevProviderOptions::default()).await;
    let _worker = app.start_worker();
    let (session, turn, workflow_id) = app.send(None, "what is the time in the visibility store").await;
    app.events(&session, None).await.until("turn.complete", DEADLINE).await;
    let call = app.api.request_tool(session.parse().unwrap(), "current_time", serde_json::json!({})).await.unwrap();
    let query = format!("SessionId = '{session}'");
    // The turn's memory writes carry the session id too, and may be listed before the tool call.
    let awaited = [workflow_id.clone(), call.workflow_id.clone()];
    let found = listed_once(&app, &query, |found| awaited.iter().all(|id| found.contains(id))).await;
    assert!(found.contains(&workflow_id), "{found:?}");
    assert!(found.contains(&call.workflow_id), "{found:?}");
    let chat = listed(&app, &format!("{query} AND SomaKind = 'chat' AND TenantId = 'tenant-a'")).await;
    assert_eq!(chat, [workflow_id.clone()], "turn {turn}");
    let described = app
        .temporal
        .get_workflow_handle::<soma_workflows::ChatTurnWorkflow>(&workflow_id)
        .describe(Default::default())
        .await
        .unwrap();
    let summary: String = described.memo().get("summary").unwrap().unwrap();
    assert_eq!(summary, "what is the time in the visibility store");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_reads_by_session_request_and_action_page_by_page() {
    let app = TestApp::spawn("audit_read", DevProviderOptions::default()).await;
    let _worker = app.start_worker();
    let (first, _, _) = app.send(None, "first").await;
    let (second, _, _) = app.send(None, "second").await;
    for session in [&first, &second] {
        app.events(session, None).await.until("turn.complete", DEADLINE).await;
    }
    let records = |body: &serde_json::Value| body["records"].as_array().unwrap().clone();

    // A session's rows, and only its own: the turn accepted, then finished.
    let (status, body) = app.get(KEY_ADMIN, &format!("/v1/admin/audit?session_id={first}")).await;
    assert_eq!(status, 200, "{body}");
    let rows = records(&body);
    assert!(rows.iter().all(|r| r["session_id"] == first.as_str()), "{body}");
    let actions: Vec<&str> = rows.iter().map(|r| r["action"].as_str().unwrap()).collect();
    assert_eq!(actions.first(), Some(&"turn.accept"), "{actions:?}");
    assert!(actions.contains(&"turn.finish"), "{actions:?}");

    // The request that accepted the turn finds its rows, across the api and the worker.
    let request_id = rows[0]["request_id"].as_str().unwrap().to_string();
    let (_, body) = app.get(KEY_ADMIN, &format!("/v1/admin/audit?request_id={request_id}")).await;
    assert!(!records(&body).is_empty() && records(&body).iter().all(|r| r["request_id"] == request_id.as_str()), "{body}");

    // A family of actions, one row per page: every turn.* row once, in order, then the end.
    let mut seen = Vec::new();
    let mut after = 0;
    loop {
        let (_, body) = app.get(KEY_ADMIN, &format!("/v1/admin/audit?action=turn.*&limit=1&after={after}")).await;
        let page = records(&body);
        assert!(page.len() <= 1, "{body}");
        seen.extend(page.iter().map(|r| r["id"].as_i64().unwrap()));
        match body["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    let (_, all) = app.get(KEY_ADMIN, "/v1/admin/audit?action=turn.*").await;
    let all: Vec<i64> = records(&all).iter().map(|r| r["id"].as_i64().unwrap()).collect();
    assert_eq!(seen, all, "paging gives every row once");
    assert!(all.len() >= 4, "two turns accepted and finished: {all:?}");

    // Only an admin reads it; bad paging is a 400.
    let (status, _) = app.get(soma_tests::KEY_A, "/v1/admin/audit").await;
    assert_eq!(status, 401);
    let (status, body) = app.get(KEY_ADMIN, "/v1/admin/audit?limit=0").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_limit")));
    let (status, body) = app.get(KEY_ADMIN, "/v1/admin/audit?after=-1").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_after")));
}
