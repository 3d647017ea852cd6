//! `soma-chaos`: crash drills against real processes on loopback. Each drill prints its
//! counts (attempted, completed, lost, duplicated) and the run exits non-zero if anything was
//! lost or duplicated. `--quick` runs a few trials of each (the test command does); the full
//! drills are run by hand through `ops/chaos`.

use std::collections::{BTreeSet, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use futures::StreamExt;
use soma_bench::{Stack, StackArgs, StackClient, WAIT};
use soma_devllm::DevProviderOptions;
use soma_tests::SseClient;

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
    /// Run only these drills (1–4); all by default.
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

/// A provider slow enough that a drill can strike mid-stream.
fn streaming_provider() -> DevProviderOptions {
    DevProviderOptions {
        time_to_first_token: Duration::from_millis(50),
        token_interval: Duration::from_millis(25),
        extra_words: 60,
        ..Default::default()
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

/// Drill 1: SIGKILL the worker at a random point of a streaming turn, start a new one.
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
        let (session, turn, _) = client.send(None, &message).await?;
        let mut stream = client.events(&session, None).await;
        // The reply streams for about two seconds; strike somewhere in it.
        let strike = Duration::from_millis(random_below(2_000));
        let follower = tokio::spawn({
            let client = client.clone();
            async move { client.follow_turn(&mut stream, &turn, &message, Instant::now()).await }
        });
        tokio::time::sleep(strike).await;
        stack.kill_worker();
        stack.start_worker()?;
        let followed = follower.await?;
        let stored = messages(&pool, &session).await?;
        let replies: Vec<&String> = stored.iter().filter(|m| m.0 == "assistant").map(|m| &m.1).collect();
        match (followed.end.as_deref(), replies.as_slice()) {
            (Some("turn.complete"), [reply]) if **reply == followed.shown => counts.completed += 1,
            (Some("turn.complete"), [_]) => {
                eprintln!(
                    "trial {trial}: the stream showed {:?}, the store has {:?}",
                    followed.shown, replies
                );
                counts.duplicated += 1;
            }
            (_, many) if many.len() > 1 => counts.duplicated += 1,
            (end, _) => {
                eprintln!("trial {trial}: turn ended {end:?} with {} replies", replies.len());
                counts.lost += 1;
            }
        }
    }
    counts.print("drill 1, worker SIGKILL mid-stream", started.elapsed());
    pool.close().await;
    stack.finish().await;
    Ok(counts)
}

/// One SSE client that reconnects with Last-Event-ID whenever its stream breaks, recording
/// every event id it receives, until `stop` is set and it has seen `until_id`.
async fn reconnecting_client(
    client: StackClient,
    session: String,
    stop: tokio::sync::watch::Receiver<Option<i64>>,
) -> (Vec<i64>, usize) {
    let url = client.api.events_url(&session);
    let (mut received, mut reconnects, mut last) = (Vec::new(), 0usize, None::<i64>);
    loop {
        let mut stream = match SseClient::try_connect(&client.api.http, &url, &client.api.key, last).await {
            Ok(stream) => stream,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if !received.is_empty() {
            reconnects += 1;
        }
        loop {
            if let Some(until) = *stop.borrow()
                && last.is_some_and(|l| l >= until)
            {
                return (received, reconnects);
            }
            match stream.next_event(Duration::from_millis(500)).await {
                Some(event) => {
                    received.push(event.id);
                    last = Some(event.id);
                }
                None => {
                    // Either idle for a moment or the api went away: a fresh connection
                    // tells which, and resumes after `last` either way.
                    break;
                }
            }
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
    let stack = Stack::start("chaos3", &args.stack, fast).await?;
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
            client.post(None, &format!("pg restart {i}"), Some(&format!("pg-{i}"))).await
        }));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut accepted, mut refused, mut wrong) = (Vec::new(), 0, Vec::new());
    for send in sends {
        match send.await? {
            Ok((202, body)) => accepted.push(body["turn_id"].as_str().unwrap_or_default().to_string()),
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
    let pool = connect_retrying(&stack.database_url).await?;
    let mut counts = Counts { attempted: accepted.len(), ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT t.id::text, t.status, (SELECT count(*) FROM messages m WHERE m.turn_id = t.id AND m.role = 'assistant')
             FROM turns t",
        )
        .fetch_all(&pool)
        .await?;
        let by_id: HashMap<String, (String, i64)> =
            rows.into_iter().map(|(id, status, replies)| (id, (status, replies))).collect();
        let finished = accepted
            .iter()
            .filter(|id| by_id.get(*id).is_some_and(|(status, _)| status == "completed"))
            .count();
        if finished == accepted.len() || Instant::now() > deadline {
            counts.completed = accepted
                .iter()
                .filter(|id| by_id.get(*id).is_some_and(|(s, r)| s == "completed" && *r == 1))
                .count();
            counts.duplicated = by_id.values().filter(|(_, replies)| *replies > 1).count();
            counts.lost = accepted.len() - finished;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "drill 3: {messages_n} messages sent, {} accepted (202), {refused} refused (503) while PostgreSQL was away for {} s",
        accepted.len(),
        outage.as_secs()
    );
    counts.print("drill 3, PostgreSQL restart under load", started.elapsed());
    pool.close().await;
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
    let stack = Stack::start("chaos4", &args.stack, fast).await?;
    let client = stack.client.clone();
    let posts = (0..n).map(|_| {
        let client = client.clone();
        async move { client.post(None, "storm", Some("one-key")).await }
    });
    let results: Vec<_> = futures::stream::iter(posts).buffer_unordered(n).collect().await;
    let mut turns = BTreeSet::new();
    let mut counts = Counts { attempted: n, ..Default::default() };
    for result in results {
        match result {
            Ok((202, body)) => {
                counts.completed += 1;
                turns.insert(body["turn_id"].as_str().unwrap_or_default().to_string());
            }
            Ok((status, body)) => eprintln!("storm: {status} {body}"),
            Err(err) => eprintln!("storm: {err}"),
        }
    }
    let pool = sqlx::PgPool::connect(&stack.database_url).await?;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM turns").fetch_one(&pool).await?;
    wait_until(&pool, "SELECT count(*) = 1 FROM messages WHERE role = 'assistant'").await?;
    counts.duplicated = (stored as usize).saturating_sub(1) + turns.len().saturating_sub(1);
    counts.lost = usize::from(stored == 0);
    println!(
        "drill 4: {} of {n} POSTs got 202, {} distinct turn ids, {stored} stored turns",
        counts.completed,
        turns.len()
    );
    counts.print("drill 4, concurrent POSTs with one Idempotency-Key", started.elapsed());
    pool.close().await;
    stack.finish().await;
    Ok(counts)
}
