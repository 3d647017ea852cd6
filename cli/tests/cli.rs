//! The `soma` binary against a real stack: what it prints is what was stored, it resumes a cut
//! connection without repeating text, `--json` parses, and its exit codes say what happened.
//! Run through `ops/test`.

use std::process::{Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use soma_devllm::{DevProviderOptions, Fault};
use soma_tests::{CuttableProxy, DEADLINE, KEY_A, TestApp, eventually};

fn soma(api_url: &str, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"));
    command
        .args(args)
        .env("SOMA_API_URL", api_url)
        .env("SOMA_API_KEY", KEY_A)
        .env("NO_COLOR", "1")
        .current_dir(std::env::temp_dir()) // no .soma/dev.env to find
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn run(api_url: &str, args: &[&str]) -> Output {
    tokio::time::timeout(DEADLINE, soma(api_url, args).output()).await.expect("soma finished").unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn fast() -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(5),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soma_chat_prints_the_reply_that_is_stored() {
    let app = TestApp::spawn("cli-chat", fast()).await;
    let _worker = app.start_worker();
    let url = app.api.base_url().to_string();

    let output = run(&url, &["chat", "Hello", "from", "the", "CLI"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let sessions = app.api.sessions(None, None).await.unwrap();
    let session = sessions.sessions[0].id;
    let stored = app.api.all_messages(session).await.unwrap();
    assert_eq!(stored[0].content, "Hello from the CLI");
    assert_eq!(stdout(&output), format!("{}\n", stored[1].content), "what was printed is what was stored");

    // --json: one object a script can read; going on in the same session.
    let output = run(&url, &["--json", "chat", "--session", &session.to_string(), "again"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let result: Value = serde_json::from_str(stdout(&output).trim()).expect("one JSON object");
    let stored = app.api.all_messages(session).await.unwrap();
    assert_eq!(result["status"], "completed");
    assert_eq!(result["reply"], stored[3].content.as_str());
    assert_eq!(result["session_id"], session.to_string());

    let history = run(&url, &["--json", "history", &session.to_string()]).await;
    let history: Value = serde_json::from_str(stdout(&history).trim()).unwrap();
    assert_eq!(history.as_array().map(Vec::len), Some(4));
    let listed = run(&url, &["sessions"]).await;
    assert!(stdout(&listed).contains(&session.to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soma_chat_resumes_a_cut_connection_without_repeating_text() {
    let slow = DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(25),
        extra_words: 80,
        ..Default::default()
    };
    let app = TestApp::spawn("cli-resume", slow).await;
    let _worker = app.start_worker();
    let proxy = CuttableProxy::start(app.api_addr()).await;

    for json in [false, true] {
        let mut args = vec!["chat", "through a flaky network"];
        if json {
            args.insert(0, "--json");
        }
        let child = soma(&proxy.url(), &args).spawn().unwrap();
        // Cut while the reply streams: once some of it is stored.
        let deadline = tokio::time::Instant::now() + DEADLINE;
        let started = app.count("session_events").await;
        while app.count("session_events").await < started + 6 {
            assert!(tokio::time::Instant::now() < deadline, "the reply never started");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        proxy.cut();
        let output = tokio::time::timeout(DEADLINE, child.wait_with_output()).await.unwrap().unwrap();
        assert_eq!(output.status.code(), Some(0), "{output:?}");
        let session = app.api.sessions(Some(1), None).await.unwrap().sessions[0].id;
        let stored = app.api.all_messages(session).await.unwrap();
        let reply = &stored[1].content;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if json {
            let result: Value = serde_json::from_str(stdout(&output).trim()).unwrap();
            assert_eq!(result["reply"], reply.as_str());
            assert!(result["reconnects"].as_u64().is_some_and(|n| n >= 1), "{result}");
        } else {
            assert_eq!(stdout(&output), format!("{reply}\n"), "no text repeated or missing; stderr: {stderr}");
            assert!(stderr.contains("resuming"), "the reconnect is said: {stderr}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soma_exit_codes_say_what_happened() {
    let refusing = DevProviderOptions {
        fault: Some(Fault::Status { status: 401, retry_after_secs: None }),
        faulty_requests: 100,
        ..fast()
    };
    let app = TestApp::spawn("cli-exit-codes", refusing).await;
    let _worker = app.start_worker();
    let url = app.api.base_url().to_string();

    let failed = run(&url, &["chat", "this will fail"]).await;
    assert_eq!(failed.status.code(), Some(4), "a failed turn: {failed:?}");
    assert!(String::from_utf8_lossy(&failed.stderr).contains("401"), "its error is printed");

    let unknown = run(&url, &["history", &uuid::Uuid::new_v4().to_string()]).await;
    assert_eq!(unknown.status.code(), Some(3), "refused: {unknown:?}");
    let mut wrong_key = soma(&url, &["sessions"]);
    wrong_key.env("SOMA_API_KEY", "wrong");
    assert_eq!(wrong_key.output().await.unwrap().status.code(), Some(3));
    let unreachable = run("http://127.0.0.1:9", &["sessions"]).await;
    assert_eq!(unreachable.status.code(), Some(1), "{unreachable:?}");
    let usage = run(&url, &["chat", "--if-busy", "sometimes", "hi"]).await;
    assert_eq!(usage.status.code(), Some(2));
    let not_a_session = run(&url, &["--json", "history", "not-a-uuid"]).await;
    assert_eq!(not_a_session.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soma_exports_and_imports_a_session() {
    let app = TestApp::spawn("cli-export", fast()).await;
    let _worker = app.start_worker();
    let url = app.api.base_url().to_string();
    assert_eq!(run(&url, &["chat", "keep this conversation"]).await.status.code(), Some(0));
    let session = app.api.sessions(Some(1), None).await.unwrap().sessions[0].id;

    let export = run(&url, &["export", &session.to_string()]).await;
    assert_eq!(export.status.code(), Some(0));
    let file = std::env::temp_dir().join(format!("soma-export-{session}.jsonl"));
    std::fs::write(&file, &export.stdout).unwrap();
    let imported = run(&url, &["--json", "import", file.to_str().unwrap()]).await;
    std::fs::remove_file(&file).unwrap();
    assert_eq!(imported.status.code(), Some(0), "{imported:?}");
    let result: Value = serde_json::from_str(stdout(&imported).trim()).unwrap();
    let copy: uuid::Uuid = result["session_id"].as_str().unwrap().parse().unwrap();
    let contents = |messages: Vec<soma_contract::api::Message>| {
        messages.into_iter().map(|m| (m.role, m.content)).collect::<Vec<_>>()
    };
    assert_eq!(
        contents(app.api.all_messages(copy).await.unwrap()),
        contents(app.api.all_messages(session).await.unwrap())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soma_chat_shows_tool_calls_and_decides_approvals_as_told() {
    let app = TestApp::spawn_with("cli-tools", fast(), |config| {
        config.approval_required_tools = "current_time".into();
    })
    .await;
    let _worker = app.start_worker();
    let url = app.api.base_url().to_string();

    // The worker puts the built-in tools in the catalog as it starts.
    eventually("the built-in tools in the catalog", || async { stdout(&run(&url, &["tools"]).await).contains("http_fetch") })
        .await;
    let listed = run(&url, &["tools"]).await;
    assert!(stdout(&listed).contains("calculator"), "{listed:?}");
    assert!(stdout(&listed).contains("(needs approval)"), "{listed:?}");

    // The model calls the calculator; the CLI shows the call and its result.
    let output = run(&url, &["chat", "What is 17*23?"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let notes = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(notes.contains("(tool calculator") && notes.contains("succeeded: 391"), "{notes}");
    assert!(stdout(&output).contains("391"));

    // --approvals deny answers the approval request; the tool does not run.
    let output = run(&url, &["chat", "--approvals", "deny", "[[tool:current_time {}]]"]).await;
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let notes = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(notes.contains("(tool current_time denied"), "{notes}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soma_recalls_memories_and_an_operator_replays_dead_letters() {
    use soma_tests::somabrain::{BRAIN_TOKEN, BrainMode, FakeSomaBrain};
    let brain = FakeSomaBrain::start().await;
    let brain_url = brain.url.clone();
    let app = TestApp::spawn_with("cli-memory", fast(), move |config| {
        config.memory_backend = soma_core::MemoryBackendKind::Somabrain;
        config.somabrain_url = brain_url;
        config.somabrain_token = soma_core::Secret::new(BRAIN_TOKEN);
        config.memory_retry_max_interval_secs = 1;
    })
    .await;
    let _worker = app.start_worker();
    let url = app.api.base_url().to_string();

    // The backend refuses the writes: they become dead letters.
    brain.set_mode(BrainMode::Refuses);
    assert_eq!(run(&url, &["chat", "Quokkas live on Rottnest Island"]).await.status.code(), Some(0));
    eventually("two dead letters", || async { app.count("dead_letters").await >= 2 }).await;

    // Only an admin key lists them.
    let refused = run(&url, &["dead-letters", "--admin-key", KEY_A]).await;
    assert_eq!(refused.status.code(), Some(3), "a tenant key is refused: {refused:?}");
    let admin = soma_tests::KEY_ADMIN;
    let listed = run(&url, &["dead-letters", "--admin-key", admin]).await;
    assert_eq!(listed.status.code(), Some(0), "{listed:?}");
    assert_eq!(stdout(&listed).matches("memory_write").count(), 2, "{}", stdout(&listed));
    assert!(stdout(&listed).contains("422"), "the error shows: {}", stdout(&listed));

    // The cause is fixed; one command replays them; recall then finds the message.
    brain.set_mode(BrainMode::Healthy);
    let replayed = run(&url, &["--json", "dead-letters", "--admin-key", admin, "replay", "--all"]).await;
    let replayed: Value = serde_json::from_str(stdout(&replayed).trim()).unwrap();
    assert_eq!(replayed["replayed"].as_array().map(Vec::len), Some(2), "{replayed}");
    eventually("soma recall to find the replayed message", || async {
        stdout(&run(&url, &["recall", "quokkas", "Rottnest"]).await).contains("Rottnest")
    })
    .await;
    let empty = run(&url, &["dead-letters", "--admin-key", admin]).await;
    assert!(String::from_utf8_lossy(&empty.stderr).contains("no open dead letters"), "{empty:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soma_upload_resumes_a_run_cut_short_and_prints_each_verdict() {
    let app = TestApp::spawn("cli-upload", fast()).await;
    let _worker = app.start_worker();
    let url = app.api.base_url().to_string();
    let dir = std::env::temp_dir().join(format!("soma-cli-upload-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("state");
    let with_state = |args: &[&str]| {
        let mut command = soma(&url, args);
        command.env("XDG_STATE_HOME", &state);
        command
    };

    // A large file, the first run killed once some of it is in.
    let big = dir.join("big.bin");
    let bytes: Vec<u8> = (0..40 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&big, &bytes).unwrap();
    let mut first = with_state(&["upload", big.to_str().unwrap()]).spawn().unwrap();
    let state_file = state.join("soma/uploads.json");
    let client = app.api.clone();
    let location = std::cell::RefCell::new(None::<String>);
    eventually("the first run has sent some bytes", || async {
        let Ok(text) = std::fs::read_to_string(&state_file) else { return false };
        let Some(found) = serde_json::from_str::<Value>(&text).ok().and_then(|v| {
            v["uploads"].as_object().and_then(|m| m.values().next()).and_then(|l| l.as_str().map(str::to_string))
        }) else {
            return false;
        };
        let upload = soma_client::TusUpload { location: found.clone(), length: 0 };
        let sent = client.tus_offset(&upload).await.unwrap_or(0);
        *location.borrow_mut() = Some(found);
        sent > 0
    })
    .await;
    first.kill().await.unwrap();
    let upload = soma_client::TusUpload { location: location.borrow().clone().unwrap(), length: 0 };
    let had = app.api.tus_offset(&upload).await.unwrap();
    assert!(had < bytes.len() as u64, "killed before the end ({had} bytes in)");

    let output = tokio::time::timeout(DEADLINE, with_state(&["upload", big.to_str().unwrap()]).output()).await.unwrap().unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("resuming") && stderr.contains("MiB/s") && stderr.contains("ETA"), "{stderr}");
    let printed = stdout(&output);
    assert!(printed.contains("clean"), "{printed}");
    let id: uuid::Uuid = upload.id().unwrap();
    assert!(printed.starts_with(&id.to_string()), "the same upload went on: {printed}");
    let attachment = app.api.attachment(id).await.unwrap();
    use sha2::Digest;
    assert_eq!(attachment.sha256.as_deref(), Some(hex::encode(sha2::Sha256::digest(&bytes)).as_str()));

    // EICAR: quarantined, said so, exit code 6; --json for scripts.
    let eicar = dir.join("eicar.txt");
    std::fs::write(&eicar, br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*").unwrap();
    let output = run(&url, &["--json", "upload", eicar.to_str().unwrap()]).await;
    assert_eq!(output.status.code(), Some(6), "{output:?}");
    let result: Value = serde_json::from_str(stdout(&output).trim()).expect("JSON");
    assert_eq!(result[0]["status"], "quarantined");
    assert!(result[0]["verdict"].as_str().unwrap().starts_with("Soma.Test.EICAR"));
    std::fs::remove_dir_all(&dir).ok();
}
