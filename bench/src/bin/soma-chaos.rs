//! `soma-chaos`: crash drills against real processes on loopback. Each drill prints its
//! counts (attempted, completed, lost, duplicated) and the run exits non-zero if anything was
//! lost or duplicated. `--quick` runs a few trials of each (the test command does); the full
//! drills are run by hand through `ops/chaos`.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use soma_bench::{FollowedTurn, Stack, StackArgs, StackClient, WAIT};
use soma_contract::SessionEvent;
use soma_devllm::DevProviderOptions;
use soma_client::Followed;

#[derive(Parser)]
#[command(about = "Soma crash drills (run them through ops/chaos)")]
struct Args {
    #[command(flatten)]
    stack: StackArgs,
    /// Shell command that stops PostgreSQL (drill 3 needs it and --pg-start).
    #[arg(long, env = "SOMA_PG_STOP")]
    pg_stop: Option<String>,
    /// Shell command that starts PostgreSQL again.
    #[arg(long, env = "SOMA_PG_START")]
    pg_start: Option<String>,
    /// Shell command that stops clamd (drill 9 needs it and --clamd-start).
    #[arg(long, env = "SOMA_CLAMD_STOP")]
    clamd_stop: Option<String>,
    /// Shell command that starts clamd again.
    #[arg(long, env = "SOMA_CLAMD_START")]
    clamd_start: Option<String>,
    /// Shell command that stops the Temporal dev server (drill 11 needs it and
    /// --temporal-start; its state must be file-backed).
    #[arg(long, env = "SOMA_TEMPORAL_STOP")]
    temporal_stop: Option<String>,
    /// Shell command that starts the Temporal dev server again.
    #[arg(long, env = "SOMA_TEMPORAL_START")]
    temporal_start: Option<String>,
    /// Run only these drills (1–11); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<u32>,
}

#[derive(Debug, Default)]
struct Counts {
    attempted: usize,
    completed: usize,
    lost: usize,
    duplicated: usize,
}

impl Counts {
    fn print(&self, drill: &str, took: Duration) {
        println!(
            "{drill}: attempted {}, completed {}, lost {}, duplicated {} ({:.0} s)",
            self.attempted,
            self.completed,
            self.lost,
            self.duplicated,
            took.as_secs_f64()
        );
    }
}

/// A number in `0..n` that differs from run to run (no rand dependency for one draw).
fn random_below(n: u64) -> u64 {
    let bytes = uuid::Uuid::new_v4().as_u128();
    (bytes % u128::from(n.max(1))) as u64
}

/// Filler words in each reply of the streaming provider.
const STREAMING_EXTRA_WORDS: usize = 60;

/// A provider slow enough that a drill can strike mid-stream.
fn streaming_provider() -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(50),
        token_interval: Duration::from_millis(25),
        extra_words: STREAMING_EXTRA_WORDS,
        ..Default::default()
    }
}

/// What a client saw of one turn, judged against what it should have seen.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    /// The whole reply once, one end, every event once.
    Whole,
    /// Less than the whole reply, or no end.
    Missing(String),
    /// Something twice: text, an event id, an end, or the provider's work for one attempt.
    Twice(String),
}

/// Judges a turn as its client saw it: `expected` is the reply the provider sends, which a
/// client that honours `llm.retry` must show exactly once.
fn judge(followed: &FollowedTurn, expected: &str) -> Seen {
    let ids: BTreeSet<i64> = followed.events.iter().map(|e| e.id).collect();
    if ids.len() != followed.events.len() {
        return Seen::Twice("an event id was delivered twice".into());
    }
    let ends = followed.events.iter().filter(|e| e.typed().is_some_and(|e| e.ends_turn())).count();
    let user_messages =
        followed.events.iter().filter(|e| matches!(e.typed(), Some(SessionEvent::MessageUser(_)))).count();
    if ends > 1 || user_messages > 1 {
        return Seen::Twice(format!("{ends} turn ends, {user_messages} user messages"));
    }
    if followed.end.as_deref() != Some("turn.complete") {
        return Seen::Missing(format!("the turn ended {:?}", followed.end));
    }
    let shown = followed.shown.text();
    if shown == expected {
        Seen::Whole
    } else if shown.len() > expected.len() {
        Seen::Twice(format!("shown {shown:?}"))
    } else {
        Seen::Missing(format!("shown {shown:?}"))
    }
}

impl Counts {
    /// Counts a trial: completed when it was seen whole, else lost or duplicated.
    fn add(&mut self, trial: impl std::fmt::Display, seen: Seen) {
        if self.note(trial, seen) {
            self.completed += 1;
        }
    }

    /// Counts what went wrong in a trial, if anything; true when nothing did.
    fn note(&mut self, trial: impl std::fmt::Display, seen: Seen) -> bool {
        match seen {
            Seen::Whole => return true,
            Seen::Missing(what) => {
                eprintln!("{trial}: missing: {what}");
                self.lost += 1;
            }
            Seen::Twice(what) => {
                eprintln!("{trial}: twice: {what}");
                self.duplicated += 1;
            }
        }
        false
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runs = |drill: u32| args.only.is_empty() || args.only.contains(&drill);
    let (mut passed, mut failed) = (0, 0);
    let mut tally = |counts: Counts| {
        if counts.lost + counts.duplicated == 0 && counts.completed == counts.attempted {
            passed += 1;
        } else {
            failed += 1;
        }
    };
    if runs(1) {
        tally(worker_kills(&args).await?);
    }
    if runs(2) {
        tally(api_kills(&args).await?);
    }
    if runs(3) {
        tally(postgres_restart(&args).await?);
    }
    if runs(4) {
        tally(idempotency_storm(&args).await?);
    }
    if runs(5) {
        tally(deletions_with_worker_kill(&args).await?);
    }
    if runs(6) {
        tally(tools_with_worker_kill(&args).await?);
    }
    if runs(7) {
        tally(memory_outage_with_worker_kill(&args).await?);
    }
    if runs(8) {
        tally(upload_with_api_kill(&args).await?);
    }
    if runs(9) {
        tally(scans_through_clamd_outage(&args).await?);
    }
    if runs(10) {
        tally(eicar_storm(&args).await?);
    }
    if runs(11) {
        match (&args.temporal_stop, &args.temporal_start) {
            (Some(stop), Some(start)) => tally(temporal_restart(&args, stop, start).await?),
            _ => println!("drill 11 skipped: the Temporal server is not one ops/ scripts started (no --temporal-stop/--temporal-start)"),
        }
    }
    println!("chaos drills: {passed} passed, {failed} failed");
    anyhow::ensure!(failed == 0, "a drill lost, duplicated or did not finish something (counts above)");
    Ok(())
}

/// The stored messages of a session: `(role, content)`.
async fn messages(pool: &sqlx::PgPool, session_id: &str) -> anyhow::Result<Vec<(String, String)>> {
    let session: uuid::Uuid = session_id.parse()?;
    Ok(sqlx::query_as("SELECT role, content FROM messages WHERE session_id = $1 ORDER BY created_at")
        .bind(session)
        .fetch_all(pool)
        .await?)
}

/// Drill 1: SIGKILL the worker at a random point of a streaming turn, start a new one; every
/// third turn is sent while no worker runs at all.
async fn worker_kills(args: &Args) -> anyhow::Result<Counts> {
    let trials = if args.stack.quick { 3 } else { 50 };
    let started = Instant::now();
    let mut stack = Stack::start("chaos1", &args.stack, streaming_provider()).await?;
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let client = stack.client.clone();
    let mut counts = Counts::default();
    for trial in 0..trials {
        counts.attempted += 1;
        let message = format!("worker kill {trial}");
        // Every third message is sent while no worker runs: no one takes its eager start, so
        // the api starts it through the task queue, and the next worker answers it.
        let no_worker = trial % 3 == 2;
        if no_worker {
            stack.kill_worker();
        }
        let (session, turn, _) = client.send(None, &message).await?;
        if no_worker {
            stack.start_worker()?;
        }
        let mut stream = client.events(&session, None).await;
        // The reply streams for about two seconds; strike somewhere in it.
        let strike = Duration::from_millis(random_below(2_000));
        let follower = tokio::spawn({
            let (client, turn, message) = (client.clone(), turn.clone(), message.clone());
            async move { client.follow_turn(&mut stream, &turn, &message, Instant::now()).await }
        });
        tokio::time::sleep(strike).await;
        stack.kill_worker();
        stack.start_worker()?;
        let followed = follower.await?;
        let expected = soma_devllm::reply_text(&message, 0, STREAMING_EXTRA_WORDS);
        let stored = messages(&pool, &session).await?;
        let stored_reply = stored.iter().find(|m| m.0 == "assistant").map(|m| m.1.as_str());
        // The provider keys each attempt's request `{turn}:{attempt}`.
        let twice_completed: Vec<_> =
            stack.provider.completed_twice().into_iter().filter(|(key, _)| key.starts_with(&turn)).collect();
        let seen = match judge(&followed, &expected) {
            Seen::Whole if !twice_completed.is_empty() => {
                Seen::Twice(format!("provider streams completed twice: {twice_completed:?}"))
            }
            Seen::Whole if stored_reply != Some(expected.as_str()) => {
                Seen::Missing(format!("the stored reply is {stored_reply:?}"))
            }
            seen => seen,
        };
        counts.add(format!("trial {trial}"), seen);
    }
    counts.print("drill 1, worker SIGKILL mid-stream", started.elapsed());
    pool.close().await;
    stack.finish().await;
    Ok(counts)
}

/// One SSE client that follows the session across broken connections (resuming with
/// Last-Event-ID), recording every event id it receives, until `stop` is set and it has seen
/// that id. Returns the ids and how often it reconnected.
async fn reconnecting_client(
    client: StackClient,
    session: String,
    stop: tokio::sync::watch::Receiver<Option<i64>>,
) -> (Vec<i64>, usize) {
    let mut follow = client.api.follow(session.parse().expect("a session id"), 0);
    let mut received = Vec::new();
    loop {
        if let Some(until) = *stop.borrow()
            && follow.last_id() >= until
        {
            return (received, follow.reconnects);
        }
        // Bounded, so the stop condition is looked at while the stream is quiet.
        match tokio::time::timeout(Duration::from_millis(500), follow.next()).await {
            Ok(Ok(Some(Followed::Event(event)))) => received.push(event.id),
            Ok(Ok(Some(Followed::Reconnecting { .. }))) | Err(_) => {}
            Ok(Ok(None)) | Ok(Err(_)) => return (received, follow.reconnects),
        }
    }
}

/// Drill 2: kill the api while clients stream, restart it; clients resume with Last-Event-ID.
async fn api_kills(args: &Args) -> anyhow::Result<Counts> {
    let (clients_n, restarts) = if args.stack.quick { (10, 2) } else { (50, 20) };
    let started = Instant::now();
    let mut stack = Stack::start("chaos2", &args.stack, streaming_provider()).await?;
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let client = stack.client.clone();
    let (session, _, _) = client.send(None, "api kill 0").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(None);
    let followers: Vec<_> = (0..clients_n)
        .map(|_| tokio::spawn(reconnecting_client(client.clone(), session.clone(), stop_rx.clone())))
        .collect();
    for round in 1..=restarts {
        tokio::time::sleep(Duration::from_millis(300 + random_below(700))).await;
        stack.kill_api();
        stack.start_api().await?;
        // Keep turns streaming across the restarts.
        client.send(Some(&session), &format!("api kill {round}")).await?;
    }
    // Let the last turn finish, then tell the clients where the stream ends.
    wait_until(&pool, "SELECT count(*) = 0 FROM turns WHERE status IN ('queued', 'running')").await?;
    let session_uuid: uuid::Uuid = session.parse()?;
    let stored: Vec<i64> =
        sqlx::query_scalar("SELECT id FROM session_events WHERE session_id = $1 ORDER BY id")
            .bind(session_uuid)
            .fetch_all(&pool)
            .await?;
    stop_tx.send_replace(stored.last().copied());
    let mut counts = Counts::default();
    let mut reconnects = 0;
    for follower in followers {
        let (received, client_reconnects) = tokio::time::timeout(WAIT, follower).await??;
        reconnects += client_reconnects;
        counts.attempted += 1;
        let unique: BTreeSet<i64> = received.iter().copied().collect();
        let duplicated = received.len() - unique.len();
        let missing = stored.iter().filter(|id| !unique.contains(id)).count();
        counts.duplicated += duplicated;
        counts.lost += missing;
        if duplicated == 0 && missing == 0 && received.windows(2).all(|w| w[0] < w[1]) {
            counts.completed += 1;
        }
    }
    println!("drill 2: {reconnects} reconnects over {restarts} api restarts, {} stored events", stored.len());
    counts.print(
        "drill 2, api SIGKILL under streaming clients (lost/duplicated count events)",
        started.elapsed(),
    );
    pool.close().await;
    stack.finish().await;
    Ok(counts)
}

async fn wait_until(pool: &sqlx::PgPool, condition: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        if let Ok(true) = sqlx::query_scalar::<_, bool>(condition).fetch_one(pool).await {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out waiting for: {condition}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Drill 3: take PostgreSQL away for longer than the api waits for a connection, under a
/// steady load of messages, then start it again. Every 202 is answered exactly once; a
/// message sent while the database is away gets a 503 with a JSON error, never a 500 or a
/// dropped connection.
async fn postgres_restart(args: &Args) -> anyhow::Result<Counts> {
    let command = |c: &Option<String>| c.clone().filter(|command| !command.trim().is_empty());
    let (Some(stop), Some(start)) = (command(&args.pg_stop), command(&args.pg_start)) else {
        anyhow::bail!(
            "drill 3 needs SOMA_PG_STOP and SOMA_PG_START (ops/chaos sets them for its own cluster)"
        );
    };
    // One message every 100 ms; the outage outlasts the api's 5 s wait for a connection.
    let (messages_n, stop_at, outage) =
        if args.stack.quick { (80, 5, Duration::from_secs(6)) } else { (200, 50, Duration::from_secs(8)) };
    let started = Instant::now();
    let fast = DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(5),
        ..Default::default()
    };
    let mut stack = Stack::start("chaos3", &args.stack, fast).await?;
    let client = stack.client.clone();
    let started_at = || async {
        let pool = connect_retrying(&stack.database_url).await?;
        let at: String =
            sqlx::query_scalar("SELECT pg_postmaster_start_time()::text").fetch_one(&pool).await?;
        pool.close().await;
        anyhow::Ok(at)
    };
    let before_restart = started_at().await?;
    let mut sends = Vec::new();
    let mut outage_task = None;
    for i in 0..messages_n {
        if i == stop_at {
            let (stop, start) = (stop.clone(), start.clone());
            outage_task = Some(tokio::task::spawn_blocking(move || {
                let stopped = Command::new("bash").arg("-c").arg(&stop).status()?.success();
                std::thread::sleep(outage);
                let started = Command::new("bash").arg("-c").arg(&start).status()?.success();
                anyhow::ensure!(stopped && started, "stopping or starting PostgreSQL failed");
                anyhow::Ok(())
            }));
        }
        // Each message on its own task, so a slow answer does not slow the load.
        let client = client.clone();
        sends.push(tokio::spawn(async move {
            client.post(&format!("pg restart {i}"), Some(&format!("pg-{i}"))).await
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut accepted, mut refused, mut wrong) = (Vec::new(), 0, Vec::new());
    for (i, send) in sends.into_iter().enumerate() {
        match send.await? {
            Ok((202, body)) => {
                let field = |name: &str| body[name].as_str().unwrap_or_default().to_string();
                accepted.push((field("session_id"), field("turn_id"), format!("pg restart {i}")));
            }
            Ok((503, body)) if body["code"] == "dependency_unavailable" => refused += 1,
            Ok((status, body)) => wrong.push(format!("{status} {body}")),
            Err(err) => wrong.push(err.to_string()),
        }
    }
    if let Some(outage_task) = outage_task {
        outage_task.await??;
    }
    anyhow::ensure!(started_at().await? != before_restart, "PostgreSQL was not restarted");
    anyhow::ensure!(
        wrong.is_empty(),
        "drill 3: {} messages got neither a 202 nor a 503 with a JSON error: {wrong:?}",
        wrong.len()
    );
    // Every accepted message, as a client reading its session's stream sees it.
    let mut counts = Counts { attempted: accepted.len(), ..Default::default() };
    let judged: Vec<(String, Seen)> = futures::stream::iter(accepted.iter().map(|(session, turn, message)| {
        let client = client.clone();
        async move {
            let mut stream = client.events(session, None).await;
            let followed = client.follow_turn(&mut stream, turn, message, Instant::now()).await;
            (format!("turn {turn}"), judge(&followed, &soma_devllm::reply_text(message, 0, 0)))
        }
    }))
    .buffer_unordered(20)
    .collect()
    .await;
    for (turn, seen) in judged {
        counts.add(turn, seen);
    }
    println!(
        "drill 3: {messages_n} messages sent, {} accepted (202), {refused} refused (503) while PostgreSQL was away for {} s",
        accepted.len(),
        outage.as_secs()
    );
    counts.print("drill 3, PostgreSQL restart under load", started.elapsed());
    stack.finish().await;
    Ok(counts)
}

async fn connect_retrying(url: &str) -> anyhow::Result<sqlx::PgPool> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sqlx::PgPool::connect(url).await {
            Ok(pool) => return Ok(pool),
            Err(err) if Instant::now() > deadline => return Err(err.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Drill 4: many concurrent POSTs with one Idempotency-Key make exactly one turn.
async fn idempotency_storm(args: &Args) -> anyhow::Result<Counts> {
    let n = if args.stack.quick { 100 } else { 1_000 };
    let started = Instant::now();
    let fast = DevProviderOptions {
        time_to_first_token: Duration::ZERO,
        token_interval: Duration::ZERO,
        ..Default::default()
    };
    let mut stack = Stack::start("chaos4", &args.stack, fast).await?;
    let client = stack.client.clone();
    let posts = (0..n).map(|_| {
        let client = client.clone();
        async move { client.post("storm", Some("one-key")).await }
    });
    let results: Vec<_> = futures::stream::iter(posts).buffer_unordered(n).collect().await;
    let mut answers = BTreeSet::new();
    let mut counts = Counts { attempted: n, ..Default::default() };
    for result in results {
        match result {
            Ok((202, body)) => {
                counts.completed += 1;
                let field = |name: &str| body[name].as_str().unwrap_or_default().to_string();
                answers.insert((field("session_id"), field("turn_id")));
            }
            Ok((status, body)) => eprintln!("storm: {status} {body}"),
            Err(err) => eprintln!("storm: {err}"),
        }
    }
    // What clients could see twice: different turns in the answers, the provider asked more
    // than once, the turn's stream showing it twice.
    counts.duplicated = answers.len().saturating_sub(1);
    let Some((session, turn)) = answers.first() else {
        counts.lost = 1;
        counts.print("drill 4, concurrent POSTs with one Idempotency-Key", started.elapsed());
        stack.finish().await;
        return Ok(counts);
    };
    let mut stream = client.events(session, None).await;
    let followed = client.follow_turn(&mut stream, turn, "storm", Instant::now()).await;
    // The 202s were counted as completed above; the stream only adds what is missing or twice.
    counts.note("storm", judge(&followed, &soma_devllm::reply_text("storm", 0, 0)));
    let provider_calls = stack.provider.requests();
    counts.duplicated += provider_calls.saturating_sub(1);
    println!(
        "drill 4: {} of {n} POSTs got 202, {} distinct turns answered, the provider asked {provider_calls} time(s)",
        counts.completed,
        answers.len()
    );
    counts.print("drill 4, concurrent POSTs with one Idempotency-Key", started.elapsed());
    stack.finish().await;
    Ok(counts)
}

/// Drill 5: delete sessions while their turns stream, SIGKILL the worker during the deletions,
/// start a new one. Each deleted session's stream ends with `session.deleted` exactly once and
/// its rows are gone; a session nobody deleted is untouched.
async fn deletions_with_worker_kill(args: &Args) -> anyhow::Result<Counts> {
    let n = if args.stack.quick { 4 } else { 20 };
    let started = Instant::now();
    let mut stack = Stack::start("chaos5", &args.stack, streaming_provider()).await?;
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let client = stack.client.clone();
    let bystander = client.api.say(None, "leave me be").await?;
    let mut doomed = Vec::new();
    for i in 0..n {
        doomed.push(client.api.say(None, &format!("delete me {i}")).await?.session_id);
    }
    // Each session's stream, read to its end.
    let followers: Vec<_> = doomed
        .iter()
        .map(|session| {
            let mut follow = client.api.follow(*session, 0);
            tokio::spawn(async move {
                let mut ids = Vec::new();
                let mut deleted = 0;
                while let Ok(Ok(Some(item))) = tokio::time::timeout(WAIT, follow.next()).await {
                    if let Followed::Event(event) = item {
                        ids.push(event.id);
                        deleted += usize::from(event.kind == "session.deleted");
                    }
                }
                (ids, deleted)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await; // the turns are streaming
    for session in &doomed {
        client.api.delete(*session).await?;
    }
    tokio::time::sleep(Duration::from_millis(random_below(1_500))).await;
    stack.kill_worker();
    stack.start_worker()?;

    let mut counts = Counts { attempted: n, ..Default::default() };
    for (session, follower) in doomed.iter().zip(followers) {
        let (ids, deleted) = tokio::time::timeout(WAIT * 2, follower).await??;
        let unique: BTreeSet<i64> = ids.iter().copied().collect();
        // The rows go a few seconds after session.deleted (streams get time to deliver it).
        let deadline = Instant::now() + WAIT;
        let rows_left = loop {
            let rows: i64 = sqlx::query_scalar(
                "SELECT (SELECT count(*) FROM sessions WHERE id = $1) + (SELECT count(*) FROM turns WHERE session_id = $1)
                      + (SELECT count(*) FROM messages WHERE session_id = $1)
                      + (SELECT count(*) FROM session_events WHERE session_id = $1)",
            )
            .bind(session)
            .fetch_one(&pool)
            .await?;
            if rows == 0 || Instant::now() > deadline {
                break rows;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let seen = if unique.len() != ids.len() || deleted > 1 {
            Seen::Twice(format!("{deleted} session.deleted, {} ids twice", ids.len() - unique.len()))
        } else if deleted == 0 || rows_left > 0 {
            Seen::Missing(format!("session.deleted seen {deleted} times, {rows_left} rows left"))
        } else {
            Seen::Whole
        };
        counts.add(format!("session {session}"), seen);
    }
    // The session nobody deleted still answers, whole.
    let mut stream = client.events(&bystander.session_id.to_string(), None).await;
    let followed = client.follow_turn(&mut stream, &bystander.turn_id.to_string(), "leave me be", Instant::now()).await;
    let expected = soma_devllm::reply_text("leave me be", 0, STREAMING_EXTRA_WORDS);
    counts.note("the bystander session", judge(&followed, &expected));
    println!("drill 5: {n} sessions deleted mid-turn, the worker SIGKILLed during their deletions");
    counts.print("drill 5, worker SIGKILL during session deletions", started.elapsed());
    pool.close().await;
    stack.finish().await;
    Ok(counts)
}

/// A tool endpoint with a side effect that honours `Idempotency-Key`, as a real one must: a
/// repeated key gets the first answer and is not applied again. It counts applications and
/// requests per key, so a drill sees what a tool call did however often it was sent.
#[derive(Clone, Default)]
struct EffectServer {
    applied: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
    requests: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>>,
}

impl EffectServer {
    async fn start() -> anyhow::Result<(EffectServer, String)> {
        let server = EffectServer::default();
        let app = axum::Router::new()
            .route("/effect/{ms}", axum::routing::post(effect))
            .with_state(server.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((server, base))
    }
}

async fn effect(
    axum::extract::State(server): axum::extract::State<EffectServer>,
    axum::extract::Path(ms): axum::extract::Path<u64>,
    headers: axum::http::HeaderMap,
) -> String {
    let key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    *server.requests.lock().unwrap().entry(key.clone()).or_default() += 1;
    // The effect takes a while: a worker killed meanwhile leaves the request unanswered.
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let mut applied = server.applied.lock().unwrap();
    let count = applied.entry(key.clone()).or_default();
    if *count == 0 {
        *count = 1;
    }
    format!("applied {key}")
}

/// Drill 6: SIGKILL the worker while a turn's tools run, one of them waiting for approval;
/// approve it while no worker runs; start a new worker. Every call must end with one result,
/// its effect applied exactly once, and the approval sent during the outage must count.
async fn tools_with_worker_kill(args: &Args) -> anyhow::Result<Counts> {
    let trials = if args.stack.quick { 2 } else { 10 };
    let started = Instant::now();
    let (server, base) = EffectServer::start().await?;
    let mut stack = Stack::start("chaos6", &args.stack, DevProviderOptions::default()).await?;
    let store = soma_core::Store::connect_lazy(&stack.database_url, 2)?;
    let tool = |name: &str, ms: u64, approval: bool| {
        let mut tool = soma_core::store::CatalogTool::builtin(name, "a drill's tool", serde_json::json!({"type": "object"}));
        tool.kind = soma_contract::ToolKind::Http;
        tool.endpoint = Some(format!("{base}/effect/{ms}"));
        tool.timeout_ms = 5_000;
        tool.max_attempts = 10;
        tool.requires_approval = approval;
        tool.approval_timeout_ms = 300_000;
        tool
    };
    store.put_tool(&tool("slow_effect", 1_500, false)).await?;
    store.put_tool(&tool("approved_effect", 200, true)).await?;
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let api = stack.client.api.clone();
    let mut counts = Counts::default();
    for trial in 0..trials {
        let message = format!(r#"[[tool:slow_effect {{"trial":{trial}}}]] [[tool:approved_effect {{"trial":{trial}}}]]"#);
        let (session, _, _) = stack.client.send(None, &message).await?;
        let session_id: uuid::Uuid = session.parse()?;
        counts.attempted += 2;
        // Wait for the approval request: the slow tool is running by then.
        let waiting = wait_for_kind(&stack.client, &session, "tool.approval_required").await?;
        let Some(SessionEvent::ToolApprovalRequired(asked)) = waiting.typed() else {
            anyhow::bail!("trial {trial}: no approval request");
        };
        tokio::time::sleep(Duration::from_millis(random_below(1_000))).await;
        stack.kill_worker();
        // Approved while no worker runs: the decision waits in Temporal.
        api.decide_tool(asked.tool_call_id, true, None).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stack.start_worker()?;
        wait_for_kind(&stack.client, &session, "turn.complete").await?;

        let calls: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, status FROM tool_calls WHERE session_id = $1 ORDER BY tool_name")
                .bind(session_id)
                .fetch_all(&pool)
                .await?;
        for (id, status) in calls {
            let seen = tool_call_seen(&pool, &server, id, &status).await?;
            let key = id.to_string();
            let requests = server.requests.lock().unwrap().get(&key).copied().unwrap_or(0);
            if requests > 1 {
                eprintln!("trial {trial}: call {key} was sent {requests} times (the key kept its effect once)");
            }
            counts.add(format!("trial {trial} call {key}"), seen);
        }
    }
    stack.finish().await;
    counts.print("6. worker SIGKILL while tools run and one waits for approval (approved during the outage)", started.elapsed());
    Ok(counts)
}

/// Drill 7: the memory backend (a SomaBrain server that follows its contract) down for a while
/// under a steady load of turns, the worker SIGKILLed once in the middle. Every turn must
/// complete while it is down; afterwards every stored message must be remembered exactly once
/// (one memory per message ID: a write retried under another key would show twice), and no
/// write may end as a dead letter (none was made to fail for good).
async fn memory_outage_with_worker_kill(args: &Args) -> anyhow::Result<Counts> {
    use soma_tests::somabrain::{BRAIN_TOKEN, BrainMode, FakeSomaBrain};
    let (outage, turns) = if args.stack.quick { (Duration::from_secs(12), 8) } else { (Duration::from_secs(120), 60) };
    let started = Instant::now();
    let brain = FakeSomaBrain::start().await;
    let env = vec![
        ("SOMA_MEMORY_BACKEND", "somabrain".to_string()),
        ("SOMA_SOMABRAIN_URL", brain.url.clone()),
        ("SOMA_SOMABRAIN_TOKEN", BRAIN_TOKEN.to_string()),
        ("SOMA_MEMORY_RETRY_MAX_INTERVAL_SECS", "2".to_string()),
        ("SOMA_MEMORY_RECALL_TIMEOUT_MS", "300".to_string()),
    ];
    let provider = DevProviderOptions {
        time_to_first_token: Duration::from_millis(20),
        token_interval: Duration::from_millis(5),
        ..Default::default()
    };
    let mut stack = Stack::start_with("chaos7", &args.stack, provider, env).await?;
    brain.set_mode(BrainMode::Down);
    let outage_began = Instant::now();
    let mut killed = false;
    for i in 0..turns {
        stack.client.complete_turn(None, &format!("outage turn {i}: remember the word parsnip{i}")).await?;
        if !killed && outage_began.elapsed() >= outage / 2 {
            // The writes owed so far are between retries: kill the worker that runs them.
            stack.kill_worker();
            tokio::time::sleep(Duration::from_millis(500)).await;
            stack.start_worker()?;
            killed = true;
        }
        let pace = outage.mul_f64((i + 1) as f64 / turns as f64);
        tokio::time::sleep(pace.saturating_sub(outage_began.elapsed())).await;
    }
    tokio::time::sleep(outage.saturating_sub(outage_began.elapsed())).await;
    brain.set_mode(BrainMode::Healthy);

    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let mut counts = Counts::default();
    let unfinished: i64 = sqlx::query_scalar("SELECT count(*) FROM turns WHERE status <> 'completed'").fetch_one(&pool).await?;
    if unfinished > 0 {
        eprintln!("{unfinished} turns did not complete while memory was down");
        counts.lost += unfinished as usize;
    }
    let expected: Vec<(uuid::Uuid,)> =
        sqlx::query_as("SELECT id FROM messages WHERE role = 'user' OR status = 'complete'").fetch_all(&pool).await?;
    counts.attempted = expected.len();
    let stored_ids = || -> std::collections::HashMap<String, usize> {
        let mut ids = std::collections::HashMap::new();
        for memory in brain.stored("bench") {
            *ids.entry(memory["id"].as_str().unwrap_or_default().to_string()).or_default() += 1;
        }
        ids
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while expected.iter().any(|(id,)| !stored_ids().contains_key(&id.to_string())) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stored = stored_ids();
    for (id,) in &expected {
        let seen = match stored.get(&id.to_string()).copied().unwrap_or(0) {
            0 => Seen::Missing(format!("message {id} was never remembered")),
            1 => Seen::Whole,
            n => Seen::Twice(format!("message {id} is remembered {n} times")),
        };
        counts.add(format!("message {id}"), seen);
    }
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters").fetch_one(&pool).await?;
    if dead > 0 {
        eprintln!("{dead} writes were dead-lettered, though none failed for good");
        counts.lost += dead as usize;
    }
    let resent = brain.accepted().values().filter(|n| **n > 1).count();
    if resent > 0 {
        eprintln!("{resent} writes reached the backend twice under their key (it kept each once)");
    }
    pool.close().await;
    stack.finish().await;
    let drill = format!(
        "7. memory backend down for {} s under steady turns, worker SIGKILL in the middle",
        outage.as_secs()
    );
    counts.print(&drill, started.elapsed());
    Ok(counts)
}

/// Reads the session's stream from the start until an event of `kind`.
async fn wait_for_kind(client: &StackClient, session: &str, kind: &str) -> anyhow::Result<soma_client::SseEvent> {
    let mut stream = client.events(session, None).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match stream.next_event(deadline.saturating_duration_since(Instant::now())).await {
            Some(event) if event.kind == kind => return Ok(event),
            Some(_) => {}
            None => break,
        }
    }
    anyhow::bail!("no {kind} on session {session} within 120 s")
}

/// Runs a shell command given to the drills (stopping or starting a service).
fn shell(command: &str) -> anyhow::Result<()> {
    let status = Command::new("sh").arg("-c").arg(command).status()?;
    anyhow::ensure!(status.success(), "{command} failed");
    Ok(())
}

/// Whether the api serves the attachment's bytes (anything but 409 and 404 counts as served).
async fn served(client: &soma_client::Client, id: uuid::Uuid) -> bool {
    match client.download(id, None).await {
        Ok(_) => true,
        Err(err) => !matches!(err.status(), Some(409 | 404)),
    }
}

/// Drill 8: SIGKILL the api in the middle of a large tus upload and start it again: the client
/// resumes from the server's offset, and the stored file's SHA-256 is the sent file's.
async fn upload_with_api_kill(args: &Args) -> anyhow::Result<Counts> {
    let (mib, trials) = if args.stack.quick { (20, 1) } else { (100, 3) };
    let started = Instant::now();
    let mut stack = Stack::start("chaos8", &args.stack, DevProviderOptions::default()).await?;
    let api = stack.client.api.clone();
    let dir = std::env::temp_dir().join(format!("soma-chaos8-{}", stack.run_id));
    std::fs::create_dir_all(&dir)?;
    let mut counts = Counts::default();
    for trial in 0..trials {
        counts.attempted += 1;
        let path = dir.join(format!("upload-{trial}.bin"));
        let sha256 = soma_bench::files::random_file(&path, mib * 1024 * 1024, trial as u64 + 11)?;
        let upload = api.tus_create_for_file(&path, None).await?;
        let sending = tokio::spawn({
            let (api, path, upload) = (api.clone(), path.clone(), upload.clone());
            async move { api.upload_file(&path, None, Some(upload), |_| {}).await }
        });
        // Strike once between a tenth and a half of the file is in.
        let strike_at = (mib * 1024 * 1024) as u64 * (10 + random_below(40)) / 100;
        while api.tus_offset(&upload).await.unwrap_or(0) < strike_at {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stack.kill_api();
        tokio::time::sleep(Duration::from_millis(300)).await;
        stack.start_api().await?;
        let seen = match sending.await? {
            Err(err) => Seen::Missing(format!("the upload gave up: {err}")),
            Ok(upload) => {
                let attachment = api.wait_for_scan(upload.id()?, WAIT).await?;
                let stored = match api.download(attachment.id, None).await {
                    Ok(response) => Some(soma_bench::files::sha256_of(response.bytes_stream()).await?),
                    Err(_) => None,
                };
                match (attachment.status, stored) {
                    (soma_contract::AttachmentStatus::Clean, Some(stored)) if stored == sha256 => Seen::Whole,
                    (status, stored) => Seen::Missing(format!("{status}, stored SHA-256 {stored:?}, sent {sha256}")),
                }
            }
        };
        std::fs::remove_file(&path).ok();
        counts.add(format!("trial {trial} (api killed at {strike_at} bytes)"), seen);
    }
    counts.print(&format!("drill 8, api SIGKILL mid-upload ({mib} MiB over tus)"), started.elapsed());
    std::fs::remove_dir_all(&dir).ok();
    stack.finish().await;
    Ok(counts)
}

/// Drill 9: clamd stopped while files are uploaded: none is served while pending, and all are
/// scanned (clean) once it is back, with no one acting.
async fn scans_through_clamd_outage(args: &Args) -> anyhow::Result<Counts> {
    let (Some(stop), Some(start)) = (&args.clamd_stop, &args.clamd_start) else {
        anyhow::bail!("drill 9 needs --clamd-stop and --clamd-start (ops/chaos sets them)");
    };
    let (outage, files) = if args.stack.quick { (Duration::from_secs(8), 5) } else { (Duration::from_secs(30), 20) };
    let started = Instant::now();
    let mut stack = Stack::start("chaos9", &args.stack, DevProviderOptions::default()).await?;
    let api = stack.client.api.clone();
    let mut counts = Counts::default();
    shell(stop)?;
    let down_since = Instant::now();
    let mut ids = Vec::new();
    for i in 0..files {
        let bytes = format!("file {i} uploaded while the scanner was away\n").into_bytes();
        ids.push(api.upload_multipart(&format!("outage-{i}.txt"), bytes, None).await?.id);
        counts.attempted += 1;
    }
    let mut served_early = 0;
    while down_since.elapsed() < outage {
        for &id in &ids {
            if served(&api, id).await {
                served_early += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    shell(start)?;
    for (i, &id) in ids.iter().enumerate() {
        let attachment = api.wait_for_scan(id, WAIT).await?;
        let seen = if served_early > 0 {
            Seen::Twice(format!("{served_early} downloads answered while clamd was away"))
        } else if attachment.status == soma_contract::AttachmentStatus::Clean && served(&api, id).await {
            Seen::Whole
        } else {
            Seen::Missing(format!("{} after clamd returned", attachment.status))
        };
        counts.add(format!("file {i}"), seen);
    }
    counts.print(&format!("drill 9, clamd down {} s during scans", outage.as_secs()), started.elapsed());
    stack.finish().await;
    Ok(counts)
}

/// Drill 10: EICAR uploaded many times at once: every one quarantined, none ever served.
async fn eicar_storm(args: &Args) -> anyhow::Result<Counts> {
    const EICAR: &[u8] = br"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    let uploads = if args.stack.quick { 10 } else { 100 };
    let started = Instant::now();
    let mut stack = Stack::start("chaos10", &args.stack, DevProviderOptions::default()).await?;
    let api = stack.client.api.clone();
    let sent = (0..uploads).map(|i| {
        let api = api.clone();
        async move {
            let upload = api.tus_create(EICAR.len() as u64, &[("filename", &format!("eicar-{i}.com"))]).await?;
            // Polled for bytes while pending: none may come out.
            let served_pending = served(&api, upload.id()?).await;
            api.tus_append(&upload, 0, EICAR.to_vec()).await?;
            let attachment = api.wait_for_scan(upload.id()?, WAIT).await?;
            anyhow::Ok((attachment, served_pending || served(&api, upload.id()?).await))
        }
    });
    let mut counts = Counts::default();
    for (i, result) in futures::future::join_all(sent).await.into_iter().enumerate() {
        counts.attempted += 1;
        let (attachment, was_served) = result?;
        let seen = match (attachment.status, was_served) {
            (_, true) => Seen::Twice("its bytes were served".into()),
            (soma_contract::AttachmentStatus::Quarantined, false) => Seen::Whole,
            (status, false) => Seen::Missing(format!("{status}, not quarantined")),
        };
        counts.add(format!("upload {i}"), seen);
    }
    counts.print(&format!("drill 10, EICAR uploaded {uploads} times at once: quarantined, never served"), started.elapsed());
    stack.finish().await;
    Ok(counts)
}

/// Drill 11: restart the Temporal server itself (the dev server, its state in a file) while
/// turns stream, tool calls run and files are scanned, and while a 2 s schedule ticks. Every
/// accepted turn completes once (shown once, one end), every tool effect is applied once with
/// one result, every file ends clean and served, and the schedule starts each tick at most
/// once and goes on ticking after the restart.
async fn temporal_restart(args: &Args, stop: &str, start: &str) -> anyhow::Result<Counts> {
    let (turns, files, outage) = if args.stack.quick { (4, 3, Duration::from_secs(3)) } else { (12, 10, Duration::from_secs(10)) };
    let started = Instant::now();
    let (server, base) = EffectServer::start().await?;
    let schedule_id = format!("chaos11-tick-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let schedules = format!(r#"[{{id="{schedule_id}",job="publish_metrics",every_secs=2}}]"#);
    let mut stack = Stack::start_with("chaos11", &args.stack, streaming_provider(), vec![("SOMA_SCHEDULES", schedules)]).await?;
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let store = soma_core::Store::connect_lazy(&stack.database_url, 2)?;
    let mut tool = soma_core::store::CatalogTool::builtin("restart_effect", "a drill's tool", serde_json::json!({"type": "object"}));
    tool.kind = soma_contract::ToolKind::Http;
    tool.endpoint = Some(format!("{base}/effect/1000"));
    tool.timeout_ms = 5_000;
    tool.max_attempts = 20;
    store.put_tool(&tool).await?;
    let client = stack.client.clone();
    let api = client.api.clone();
    let mut counts = Counts::default();

    // Turns mid-stream (every other one calls the tool first), files mid-scan.
    let mut followers = Vec::new();
    for turn in 0..turns {
        let message = if turn % 2 == 0 {
            format!("temporal restart {turn}")
        } else {
            format!(r#"[[tool:restart_effect {{"turn":{turn}}}]] temporal restart {turn}"#)
        };
        let (session, turn_id, _) = client.send(None, &message).await?;
        let mut stream = client.events(&session, None).await;
        let client = client.clone();
        followers.push(tokio::spawn(async move {
            let followed = client.follow_turn(&mut stream, &turn_id, &message, Instant::now()).await;
            (message, session, followed)
        }));
    }
    let mut uploads = Vec::new();
    for i in 0..files {
        let bytes = format!("file {i} scanned across a Temporal restart\n").into_bytes();
        uploads.push(api.upload_multipart(&format!("restart-{i}.txt"), bytes, None).await?.id);
    }
    tokio::time::sleep(Duration::from_millis(random_below(1_500))).await;
    let down_at = chrono::Utc::now();
    shell(stop)?;
    tokio::time::sleep(outage).await;
    shell(start)?;
    let up_at = chrono::Utc::now();
    let down_secs = (up_at - down_at).num_milliseconds() as f64 / 1000.0;

    for follower in followers {
        let (message, session, followed) = follower.await?;
        counts.attempted += 1;
        let seen = if message.starts_with("[[tool:") {
            tool_turn_seen(&pool, &server, &session, &followed).await?
        } else {
            judge(&followed, &soma_devllm::reply_text(&message, 0, STREAMING_EXTRA_WORDS))
        };
        counts.add(format!("turn {message:?}"), seen);
    }
    for (i, id) in uploads.into_iter().enumerate() {
        counts.attempted += 1;
        let attachment = api.wait_for_scan(id, WAIT).await?;
        let seen = if attachment.status == soma_contract::AttachmentStatus::Clean && served(&api, id).await {
            Seen::Whole
        } else {
            Seen::Missing(format!("file {i}: {} after the restart", attachment.status))
        };
        counts.add(format!("file {i}"), seen);
    }

    // The schedule: wait for three ticks after the restart (a minute at most), then count
    // each tick's runs.
    let temporal = soma_core::temporal::connect(&soma_core::Config::load(None)?, Duration::from_secs(30)).await?;
    let query = format!("TemporalScheduledById = '{schedule_id}'");
    let deadline = Instant::now() + Duration::from_secs(60);
    let (runs_per_tick, after_restart) = loop {
        let mut runs_per_tick: std::collections::BTreeMap<String, usize> = Default::default();
        let mut after_restart = 0;
        let mut listed = temporal.list_workflows(query.clone(), Default::default());
        while let Some(run) = listed.next().await {
            let run = run?;
            *runs_per_tick.entry(run.id().to_string()).or_default() += 1;
            if run.start_time().is_some_and(|t| chrono::DateTime::<chrono::Utc>::from(t) > up_at) {
                after_restart += 1;
            }
        }
        if after_restart >= 3 || Instant::now() > deadline {
            break (runs_per_tick, after_restart);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let _ = temporal.get_schedule_handle(&schedule_id).delete(Default::default()).await;
    counts.attempted += 1;
    let twice: Vec<_> = runs_per_tick.iter().filter(|(_, runs)| **runs > 1).collect();
    let seen = if !twice.is_empty() {
        Seen::Twice(format!("ticks started more than once: {twice:?}"))
    } else if after_restart == 0 {
        Seen::Missing(format!("no run after the restart ({} ticks before it)", runs_per_tick.len()))
    } else {
        Seen::Whole
    };
    println!("drill 11: schedule {schedule_id}: {} ticks run, {after_restart} after the restart", runs_per_tick.len());
    counts.add("schedule", seen);
    let drill = format!("drill 11, Temporal stopped and started again ({down_secs:.1} s without it) under turns, tools, scans and a schedule");
    counts.print(&drill, started.elapsed());
    pool.close().await;
    stack.finish().await;
    Ok(counts)
}

/// A turn that called the drill's tool: one turn end, and its one call judged by
/// [`tool_call_seen`].
async fn tool_turn_seen(pool: &sqlx::PgPool, server: &EffectServer, session: &str, followed: &FollowedTurn) -> anyhow::Result<Seen> {
    if followed.end.as_deref() != Some("turn.complete") {
        return Ok(Seen::Missing(format!("the turn ended {:?}", followed.end)));
    }
    let session_id: uuid::Uuid = session.parse()?;
    let calls: Vec<(uuid::Uuid, String)> = sqlx::query_as("SELECT id, status FROM tool_calls WHERE session_id = $1")
        .bind(session_id)
        .fetch_all(pool)
        .await?;
    match calls.as_slice() {
        [(id, status)] => tool_call_seen(pool, server, *id, status).await,
        _ => Ok(Seen::Missing(format!("{} tool calls", calls.len()))),
    }
}

/// One tool call at the drills' effect endpoint: succeeded, its effect applied once, one
/// `tool.result` on the stream.
async fn tool_call_seen(pool: &sqlx::PgPool, server: &EffectServer, id: uuid::Uuid, status: &str) -> anyhow::Result<Seen> {
    let results: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM session_events WHERE kind = 'tool.result' AND (payload->>'tool_call_id')::uuid = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await?;
    let applied = server.applied.lock().unwrap().get(&id.to_string()).copied().unwrap_or(0);
    Ok(if status != "succeeded" || applied == 0 || results == 0 {
        Seen::Missing(format!("status {status}, applied {applied}, {results} results"))
    } else if applied > 1 || results > 1 {
        Seen::Twice(format!("applied {applied}, {results} results"))
    } else {
        Seen::Whole
    })
}
