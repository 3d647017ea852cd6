//! Tool calls end to end (real Temporal and PostgreSQL, the dev provider asking for tools, an
//! HTTP tool server the tests start): the model's calls, their workflows, policy, approvals,
//! profiles (retries, timeouts), cancellation, bad input, and the parent's history bound.
//! Run through `ops/test`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use serde_json::{Value, json};
use uuid::Uuid;

use soma_activities::tools::runners::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use soma_contract::{ApprovalDecision, SessionEvent, ToolCallStatus, ToolKind};
use soma_core::store::CatalogTool;
use soma_devllm::DevProviderOptions;
use soma_client::SseEvent;
use soma_tests::{Expect, KEY_B, TestApp, Typed, eventually, shown_reply};
use soma_workflows::{ChatTurnWorkflow, ToolExecutionWorkflow};
use temporalio_client::{WorkflowExecutionStatus, WorkflowFetchHistoryOptions};

const DEADLINE: Duration = Duration::from_secs(60);
const SECRET: &str = "test-hmac-secret";

fn fast_provider() -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(5),
        ..Default::default()
    }
}

async fn spawn(name: &str) -> TestApp {
    TestApp::spawn_with(name, fast_provider(), |config| {
        config.tool_hmac_secret = soma_core::Secret::new(SECRET);
    })
    .await
}

fn kinds(events: &[SseEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn results(events: &[SseEvent]) -> Vec<soma_contract::events::ToolResult> {
    events
        .iter()
        .filter_map(|e| match e.event() {
            SessionEvent::ToolResult(result) => Some(result),
            _ => None,
        })
        .collect()
}

/// A tool server: checks every request's signature, counts requests by idempotency key and
/// records when each began and ended. `/echo` answers the inputs, `/slow/{ms}` after a while,
/// `/flaky/{n}` fails its first n requests per key with 503, `/big/{bytes}` answers that much.
#[derive(Clone, Default)]
struct ToolServer {
    requests: Arc<Mutex<HashMap<String, usize>>>,
    spans: Arc<Mutex<Vec<(Instant, Instant)>>>,
    bad_signatures: Arc<Mutex<usize>>,
}

impl ToolServer {
    async fn start() -> (ToolServer, String) {
        let server = ToolServer::default();
        let app = axum::Router::new().route("/{kind}/{arg}", post(handle)).with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (server, base)
    }

    fn requests(&self, key: &str) -> usize {
        self.requests.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

async fn handle(
    State(server): State<ToolServer>,
    Path((kind, arg)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let began = Instant::now();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let timestamp: i64 = header(TIMESTAMP_HEADER).parse().unwrap_or_default();
    if header(SIGNATURE_HEADER) != sign(SECRET, timestamp, &body) {
        *server.bad_signatures.lock().unwrap() += 1;
        return (StatusCode::UNAUTHORIZED, "bad signature".into());
    }
    let key = header("idempotency-key");
    let seen = {
        let mut requests = server.requests.lock().unwrap();
        let n = requests.entry(key).or_default();
        *n += 1;
        *n
    };
    let answer = match kind.as_str() {
        "slow" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap())).await;
            (StatusCode::OK, String::from_utf8_lossy(&body).into_owned())
        }
        "flaky" if seen <= arg.parse::<usize>().unwrap() => (StatusCode::SERVICE_UNAVAILABLE, "try again".into()),
        "big" => (StatusCode::OK, "x".repeat(arg.parse().unwrap())),
        _ => (StatusCode::OK, String::from_utf8_lossy(&body).into_owned()),
    };
    server.spans.lock().unwrap().push((began, Instant::now()));
    answer
}

/// An HTTP tool at `endpoint`, taking any object.
fn http_tool(name: &str, endpoint: &str) -> CatalogTool {
    let mut tool = CatalogTool::builtin(name, "a test tool", json!({"type": "object"}));
    tool.kind = ToolKind::Http;
    tool.endpoint = Some(endpoint.to_string());
    tool
}

async fn turn_events(app: &TestApp, message: &str, last: &str) -> (String, Vec<SseEvent>) {
    let (session_id, _, _) = app.send(None, message).await;
    let events = app.events(&session_id, None).await.until(last, DEADLINE).await;
    (session_id, events)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_calls_the_calculator_and_answers_with_its_result() {
    let app = spawn("calculator").await;
    let _worker = app.start_worker();

    let (session_id, events) = turn_events(&app, "What is 17*23?", "turn.complete").await;
    let kinds = kinds(&events);
    let call = kinds.iter().position(|k| *k == "tool.call").expect("a tool.call");
    let result = kinds.iter().position(|k| *k == "tool.result").expect("a tool.result");
    assert!(call < result, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|k| **k == "llm.complete").count(), 2, "two rounds: {kinds:?}");
    let results = results(&events);
    assert_eq!(results[0].tool, "calculator");
    assert_eq!(results[0].status, ToolCallStatus::Succeeded);
    assert_eq!(results[0].output.as_deref(), Some("391"));
    let reply = shown_reply(&events);
    assert!(reply.contains("391"), "the model answers with the result: {reply}");
    let messages = app.messages(&session_id).await;
    assert_eq!(messages[1], ("assistant".into(), reply, "complete".into()));

    // The call is its own workflow, findable by its readable ID; both histories replay.
    let call_id = results[0].tool_call_id;
    let temporal = &app.temporal;
    let tool_workflow = ToolExecutionWorkflow::workflow_id(session_id.parse().unwrap(), call_id);
    let view = app.api.tool_call(call_id).await.unwrap();
    assert_eq!(view.workflow_id, tool_workflow);
    assert_eq!(view.output.as_deref(), Some("391"));
    let replayer = soma_tests::histories::replayer();
    let tool_handle = temporal.get_workflow_handle::<ToolExecutionWorkflow>(tool_workflow);
    tool_handle.get_result(Default::default()).await.expect("the tool's workflow completed");
    let tool_history = tool_handle.fetch_history(WorkflowFetchHistoryOptions::default());
    replayer.replay_workflow(tool_history).await.expect("the tool's history replays");
    let chat_workflow = events[0].data.meta.turn_id.map(|t| format!("chat/{session_id}/{t}")).unwrap();
    let chat_handle = temporal.get_workflow_handle::<ChatTurnWorkflow>(chat_workflow);
    chat_handle.get_result(Default::default()).await.expect("the turn's workflow completed");
    let chat_history = chat_handle.fetch_history(WorkflowFetchHistoryOptions::default());
    replayer.replay_workflow(chat_history).await.expect("the turn's history replays");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_calls_of_one_round_run_at_once_and_every_request_is_signed() {
    let app = spawn("parallel").await;
    let (server, base) = ToolServer::start().await;
    app.store.put_tool(&http_tool("slow_a", &format!("{base}/slow/1500"))).await.unwrap();
    app.store.put_tool(&http_tool("slow_b", &format!("{base}/slow/1500"))).await.unwrap();
    let _worker = app.start_worker();

    let message = r#"Run both [[tool:slow_a {"n":1}]] [[tool:slow_b {"n":2}]]"#;
    let (_, events) = turn_events(&app, message, "turn.complete").await;
    let results = results(&events);
    assert_eq!(results.len(), 2);
    assert!(results.iter().all(|r| r.status == ToolCallStatus::Succeeded), "{results:?}");
    let spans = server.spans.lock().unwrap().clone();
    assert_eq!(spans.len(), 2);
    assert!(spans[0].0 < spans[1].1 && spans[1].0 < spans[0].1, "the two calls overlap in time");
    assert_eq!(*server.bad_signatures.lock().unwrap(), 0, "the server verified every signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denials_failures_retries_and_timeouts_become_results_not_failed_turns() {
    let app = spawn("outcomes").await;
    let (server, base) = ToolServer::start().await;
    // Blocked by ops/policy/soma.rego.
    app.store.put_tool(&http_tool("forbidden_tool", &format!("{base}/echo/x"))).await.unwrap();
    let mut flaky = http_tool("flaky", &format!("{base}/flaky/2"));
    flaky.max_attempts = 3;
    app.store.put_tool(&flaky).await.unwrap();
    let mut slow = http_tool("too_slow", &format!("{base}/slow/5000"));
    slow.timeout_ms = 1000;
    slow.max_attempts = 1;
    app.store.put_tool(&slow).await.unwrap();
    let _worker = app.start_worker();

    let message = r#"[[tool:forbidden_tool {}]] [[tool:flaky {"k":1}]] [[tool:too_slow {}]]"#;
    let (session_id, events) = turn_events(&app, message, "turn.complete").await;
    let by_tool: HashMap<String, _> = results(&events).into_iter().map(|r| (r.tool.clone(), r)).collect();
    let denied = &by_tool["forbidden_tool"];
    assert_eq!(denied.status, ToolCallStatus::Denied);
    assert!(denied.reason.as_deref().unwrap().contains("blocked by policy"), "{denied:?}");
    assert_eq!(by_tool["flaky"].status, ToolCallStatus::Succeeded, "retried by its profile, then answered");
    assert_eq!(server.requests(&by_tool["flaky"].tool_call_id.to_string()), 3);
    assert_eq!(by_tool["too_slow"].status, ToolCallStatus::TimedOut);
    assert_eq!(server.requests(&denied.tool_call_id.to_string()), 0, "a denied tool never runs");
    assert!(shown_reply(&events).contains("3 results"), "the model heard of all three");
    let audit: Vec<(String, String)> = sqlx::query_as(
        "SELECT details->>'tool', outcome FROM audit_log WHERE action = 'tool.execute' AND session_id = $1 ORDER BY 1",
    )
    .bind(session_id.parse::<Uuid>().unwrap())
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert_eq!(
        audit,
        [("flaky".into(), "succeeded".into()), ("forbidden_tool".into(), "denied".into()), ("too_slow".into(), "timed_out".into())]
    );
}

/// Waits for the session's next `tool.approval_required` and returns the call's ID.
async fn approval_asked(app: &TestApp, session_id: &str) -> Uuid {
    let events = app.events(session_id, None).await.until("tool.approval_required", DEADLINE).await;
    match events.last().unwrap().event() {
        SessionEvent::ToolApprovalRequired(asked) => asked.tool_call_id,
        other => panic!("{other:?}"),
    }
}

/// Puts the tool `guarded` (the tool server's echo, approval required, denied after
/// `approval_timeout_ms` without a decision) and starts the server it calls.
async fn guarded_tool(app: &TestApp, approval_timeout_ms: i32) -> ToolServer {
    let (server, base) = ToolServer::start().await;
    let mut guarded = http_tool("guarded", &format!("{base}/echo/x"));
    guarded.requires_approval = true;
    guarded.approval_timeout_ms = approval_timeout_ms;
    app.store.put_tool(&guarded).await.unwrap();
    server
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_needs_approval_waits_for_a_person_of_its_tenant() {
    let app = spawn("approval").await;
    let server = guarded_tool(&app, 2000).await;
    let _worker = app.start_worker();

    // Approved: it runs. Another tenant cannot decide; a second decision is a conflict.
    let (session_id, _, _) = app.send(None, r#"[[tool:guarded {"a":1}]]"#).await;
    let call = approval_asked(&app, &session_id).await;
    let other = app.api.with_key(KEY_B).decide_tool(call, true, None).await.unwrap_err();
    assert_eq!(other.status(), Some(404));
    // A reason Postgres cannot store is a bad request, not an outage, and decides nothing.
    let nul = app.api.decide_tool(call, false, Some("a\u{0}b")).await.unwrap_err();
    assert_eq!((nul.status(), nul.code()), (Some(400), Some("invalid_text")));
    app.api.decide_tool(call, true, Some("looks fine")).await.unwrap();
    let again = app.api.decide_tool(call, false, None).await.unwrap_err();
    assert_eq!(again.status(), Some(409));
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;
    assert_eq!(results(&events)[0].status, ToolCallStatus::Succeeded);
    assert_eq!(server.requests(&call.to_string()), 1);

    // Denied: it does not run, and the reason reaches the model.
    let (session_id, _, _) = app.send(None, r#"[[tool:guarded {"a":2}]]"#).await;
    let call = approval_asked(&app, &session_id).await;
    app.api.decide_tool(call, false, Some("not today")).await.unwrap();
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;
    let result = &results(&events)[0];
    assert_eq!(result.status, ToolCallStatus::Denied);
    assert!(result.reason.as_deref().unwrap().contains("not today"), "{result:?}");
    assert_eq!(server.requests(&call.to_string()), 0);

    // No decision in time counts as a denial; deciding afterwards is a conflict.
    let (session_id, _, _) = app.send(None, r#"[[tool:guarded {"a":3}]]"#).await;
    let call = approval_asked(&app, &session_id).await;
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;
    assert_eq!(results(&events)[0].status, ToolCallStatus::TimedOut);
    assert_eq!(app.api.decide_tool(call, true, None).await.unwrap_err().status(), Some(409));
    assert_eq!(app.api.decide_tool(Uuid::now_v7(), true, None).await.unwrap_err().status(), Some(404));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decision_recorded_but_never_signalled_is_delivered_by_the_sweep() {
    let app = TestApp::spawn_with("undelivered-decision", fast_provider(), |config| {
        config.tool_hmac_secret = soma_core::Secret::new(SECRET);
        config.turn_recovery_interval_ms = 500;
        config.turn_recovery_quiet_ms = 1_000;
    })
    .await;
    let server = guarded_tool(&app, 60_000).await;
    let _worker = app.start_worker();

    // What an api that died after recording the approval, before signalling it, leaves.
    let (session_id, turn_id, _) = app.send(None, r#"[[tool:guarded {"a":1}]]"#).await;
    let call = approval_asked(&app, &session_id).await;
    let started = Instant::now();
    app.store
        .decide_tool_call("tenant-a", call, ApprovalDecision::Approved, "key:test", Some("then the api died"))
        .await
        .unwrap();

    // The sweep delivers it: the call runs once, long before its approval would time out.
    let events = app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;
    assert_eq!(results(&events)[0].status, ToolCallStatus::Succeeded);
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert_eq!(server.requests(&call.to_string()), 1);
    let audit = app.audit(&turn_id).await;
    let recovered: Vec<_> = audit.iter().filter(|(action, _, _)| action == "tool.approval.recover").collect();
    assert_eq!(recovered.len(), 1, "{audit:?}");
    assert_eq!((recovered[0].1.as_str(), recovered[0].2.as_str()), ("approved", "recovery"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_the_turn_cancels_its_running_tool() {
    let app = spawn("cancel-tool").await;
    let (server, base) = ToolServer::start().await;
    let mut slow = http_tool("very_slow", &format!("{base}/slow/20000"));
    slow.timeout_ms = 60_000;
    app.store.put_tool(&slow).await.unwrap();
    let _worker = app.start_worker();

    let (session_id, _, _) = app.send(None, "[[tool:very_slow {}]]").await;
    let mut stream = app.events(&session_id, None).await;
    let before = stream.until("tool.call", DEADLINE).await;
    let call = match before.last().unwrap().event() {
        SessionEvent::ToolCall(call) => call.tool_call_id,
        other => panic!("{other:?}"),
    };
    // Cancel once the tool is really running: its request has reached the tool server.
    let deadline = Instant::now() + DEADLINE;
    while server.requests(&call.to_string()) == 0 {
        assert!(Instant::now() < deadline, "the tool never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let started = Instant::now();
    assert_eq!(app.cancel(&session_id).await.0, 202);
    let events = stream.until("turn.cancelled", DEADLINE).await;
    assert!(started.elapsed() < Duration::from_secs(15), "the tool did not hold the turn");
    assert_eq!(results(&events)[0].status, ToolCallStatus::Cancelled);
    let temporal = &app.temporal;
    let workflow = ToolExecutionWorkflow::workflow_id(session_id.parse().unwrap(), call);
    let described = temporal
        .get_workflow_handle::<ToolExecutionWorkflow>(workflow)
        .describe(Default::default())
        .await
        .unwrap();
    assert_eq!(described.status(), WorkflowExecutionStatus::Canceled, "the tool's workflow is cancelled too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tool_requests_are_refused_and_run_nothing() {
    let app = spawn("bad-tools").await;
    let _worker = app.start_worker();
    let (session_id, _, _) = app.send(None, "hello").await;
    let session: Uuid = session_id.parse().unwrap();
    app.events(&session_id, None).await.until("turn.complete", DEADLINE).await;

    let refused = |err: soma_client::ClientError| (err.status(), err.code().map(str::to_string));
    let unknown = app.api.request_tool(session, "no_such_tool", json!({})).await.unwrap_err();
    assert_eq!(refused(unknown), (Some(400), Some("unknown_tool".into())));
    let invalid = app.api.request_tool(session, "calculator", json!({"expression": 5})).await.unwrap_err();
    assert_eq!(refused(invalid), (Some(400), Some("invalid_inputs".into())));
    let elsewhere = app.api.request_tool(Uuid::now_v7(), "calculator", json!({"expression": "1+1"})).await.unwrap_err();
    assert_eq!(elsewhere.status(), Some(404));
    let nul = app.api.request_tool(session, "calculator", json!({"expression": "1\u{0}+1"})).await.unwrap_err();
    assert_eq!(refused(nul), (Some(400), Some("invalid_text".into())));

    // Switched off for tenant A only: gone from its catalog, refused; tenant B still has it.
    app.store.set_tool_override("tenant-a", "current_time", Some(false), None).await.unwrap();
    let names = |list: soma_contract::api::ToolList| list.tools.into_iter().map(|t| t.name).collect::<Vec<_>>();
    assert!(!names(app.api.tools().await.unwrap()).contains(&"current_time".to_string()));
    assert!(names(app.api.with_key(KEY_B).tools().await.unwrap()).contains(&"current_time".to_string()));
    let disabled = app.api.request_tool(session, "current_time", json!({})).await.unwrap_err();
    assert_eq!(refused(disabled), (Some(400), Some("tool_disabled".into())));
    assert_eq!(app.count("tool_calls").await, 0, "nothing was stored, nothing ran");

    // A good direct request runs, and its result comes on the session's stream.
    let accepted = app.api.request_tool(session, "calculator", json!({"expression": "2^10"})).await.unwrap();
    let events = app.events(&session_id, None).await.until("tool.result", DEADLINE).await;
    let result = results(&events).pop().unwrap();
    assert_eq!((result.tool_call_id, result.output.as_deref()), (accepted.tool_call_id, Some("1024")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_rounds_of_large_outputs_leave_the_turn_history_small() {
    let app = TestApp::spawn_with("tool-history", fast_provider(), |config| {
        config.tool_hmac_secret = soma_core::Secret::new(SECRET);
        config.max_tool_rounds = 10;
    })
    .await;
    let (_server, base) = ToolServer::start().await;
    app.store.put_tool(&http_tool("big", &format!("{base}/big/1048576"))).await.unwrap();
    let _worker = app.start_worker();

    let (session_id, events) = turn_events(&app, r#"[[rounds:10]] [[tool:big {}]]"#, "turn.complete").await;
    assert_eq!(results(&events).len(), 10, "ten rounds of one call each");
    let temporal = &app.temporal;
    let turn = events[0].data.meta.turn_id.unwrap();
    let described = temporal
        .get_workflow_handle::<ChatTurnWorkflow>(format!("chat/{session_id}/{turn}"))
        .describe(Default::default())
        .await
        .unwrap();
    let bytes = described.raw_description.workflow_execution_info.as_ref().unwrap().history_size_bytes;
    assert!(bytes < 64 * 1024, "the turn's history is {bytes} bytes");
}

/// An MCP server (streamable HTTP, `rmcp`) with one tool, `add`, and `multiply` while
/// `offers_multiply` is set.
#[derive(Clone, Default)]
struct AddServer {
    offers_multiply: Arc<std::sync::atomic::AtomicBool>,
}

impl rmcp::ServerHandler for AddServer {
    fn get_info(&self) -> rmcp::model::ServerConfig {
        rmcp::model::ServerConfig::new(rmcp::model::ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _: Option<rmcp::model::PaginatedRequestParams>,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::ListToolsResult, rmcp::ErrorData> {
        let schema = json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                            "required": ["a", "b"]});
        let schema = Arc::new(schema.as_object().unwrap().clone());
        let mut tools = vec![rmcp::model::Tool::new("add", "Adds two numbers", schema.clone())];
        if self.offers_multiply.load(std::sync::atomic::Ordering::SeqCst) {
            tools.push(rmcp::model::Tool::new("multiply", "Multiplies two numbers", schema));
        }
        Ok(rmcp::model::ListToolsResult::with_all_items(tools))
    }

    async fn call_tool(
        &self,
        request: rmcp::model::CallToolRequestParams,
        _: rmcp::service::RequestContext<rmcp::RoleServer>,
    ) -> Result<rmcp::model::CallToolResponse, rmcp::ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let number = |k: &str| args.get(k).and_then(Value::as_f64).unwrap_or_default();
        let sum = number("a") + number("b");
        Ok(rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(sum.to_string())]).into())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_servers_tool_is_listed_and_called_like_any_other() {
    use rmcp::transport::streamable_http_server::{
        StreamableHttpServerConfig, StreamableHttpService, session::local::LocalSessionManager,
    };
    let server = AddServer::default();
    let offers_multiply = server.offers_multiply.clone();
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        LocalSessionManager::default().into(),
        StreamableHttpServerConfig::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, axum::Router::new().nest_service("/mcp", service)).await });

    let app = TestApp::spawn_with("mcp", fast_provider(), |config| config.mcp_servers = format!("demo={url}")).await;
    let _worker = app.start_worker();
    eventually("the MCP server's tools in the catalog", || async {
        app.api.tools().await.unwrap().tools.iter().any(|t| t.name == "demo__add")
    })
    .await;
    let listed = app.api.tools().await.unwrap().tools;
    let add = listed.iter().find(|t| t.name == "demo__add").expect("the MCP tool is in the catalog");
    assert_eq!(add.kind, ToolKind::Mcp);
    assert_eq!(add.input_schema["required"], json!(["a", "b"]));

    let (_, events) = turn_events(&app, r#"[[tool:demo__add {"a":2,"b":3}]]"#, "turn.complete").await;
    let result = &results(&events)[0];
    assert_eq!((result.status, result.output.as_deref()), (ToolCallStatus::Succeeded, Some("5")), "{result:?}");

    // The server offers another tool: a refresh on demand (admin key) lists it; when the server
    // stops offering it, the next refresh removes it.
    let refresh = |key: &'static str| {
        let api = app.api.with_key(key);
        async move {
            let response = api.request(reqwest::Method::POST, "/v1/admin/tools/refresh").send().await.unwrap();
            (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    assert_eq!(refresh(soma_tests::KEY_A).await.0, 401, "a tenant key does not refresh the catalog");
    offers_multiply.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, refreshed) = refresh(soma_tests::KEY_ADMIN).await;
    assert_eq!(status, 200, "{refreshed}");
    assert_eq!(refreshed["servers"], json!([{ "name": "demo", "tools": 2 }]), "{refreshed}");
    let names = |tools: Vec<soma_contract::api::ToolInfo>| tools.into_iter().map(|t| t.name).collect::<Vec<_>>();
    assert!(names(app.api.tools().await.unwrap().tools).contains(&"demo__multiply".to_string()));
    offers_multiply.store(false, std::sync::atomic::Ordering::SeqCst);
    let (_, refreshed) = refresh(soma_tests::KEY_ADMIN).await;
    assert_eq!(refreshed["retired"], 1, "{refreshed}");
    let listed = names(app.api.tools().await.unwrap().tools);
    assert!(listed.contains(&"demo__add".to_string()) && !listed.contains(&"demo__multiply".to_string()), "{listed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opa_server_decides_when_configured_with_the_platforms_input() {
    // A stand-in OPA: its data API, denying the calculator and recording what it was asked.
    let asked: Arc<Mutex<Vec<Value>>> = Arc::default();
    let seen = asked.clone();
    let opa = axum::Router::new().route(
        "/v1/data/soma/allow",
        post(move |axum::Json(body): axum::Json<Value>| {
            let seen = seen.clone();
            async move {
                let allow = body["input"]["resource"] != "calculator";
                seen.lock().unwrap().push(body["input"].clone());
                axum::Json(json!({ "result": allow }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, opa).await });
    let app = TestApp::spawn_with("opa", fast_provider(), |config| config.policy_opa_url = url).await;
    let _worker = app.start_worker();

    let (_, events) = turn_events(&app, "What is 6*7?", "turn.complete").await;
    let result = &results(&events)[0];
    assert_eq!(result.status, ToolCallStatus::Denied, "{result:?}");
    let asked = asked.lock().unwrap().clone();
    let actions: Vec<&str> = asked.iter().map(|i| i["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["conversation.send", "tool.execute"]);
    assert_eq!(asked[1]["tenant"], "tenant-a");
    assert_eq!(asked[1]["resource"], "calculator");
    assert_eq!(asked[1]["context"]["inputs"], json!({"expression": "6*7"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tools_concurrency_limit_holds_within_a_tenant() {
    let app = spawn("concurrency").await;
    let (server, base) = ToolServer::start().await;
    let mut single = http_tool("one_at_a_time", &format!("{base}/slow/800"));
    single.max_concurrent = 1;
    app.store.put_tool(&single).await.unwrap();
    let _worker = app.start_worker();

    let message = r#"[[tool:one_at_a_time {"n":1}]] [[tool:one_at_a_time {"n":2}]]"#;
    let (_, events) = turn_events(&app, message, "turn.complete").await;
    assert!(results(&events).iter().all(|r| r.status == ToolCallStatus::Succeeded));
    let mut spans = server.spans.lock().unwrap().clone();
    spans.sort();
    assert_eq!(spans.len(), 2);
    assert!(spans[0].1 <= spans[1].0, "the second call waited for the first's slot: {spans:?}");
}
