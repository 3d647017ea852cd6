//! `soma`, the command line of Soma Orchestrator: chat with streamed replies (resumed across
//! dropped connections without repeating text), list, read, cancel, delete, reset, export and
//! import sessions. Everything goes through the public API with the Rust client.

pub mod chat;
pub mod output;
pub mod settings;
pub mod upload;

use std::io::Read;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use uuid::Uuid;

use soma_client::{Client, ClientError};
use soma_contract::api::IfBusy;

use crate::output::Output;

const AFTER_HELP: &str = "\
Connecting:
  soma reads the API's address and key from --api-url/--api-key, else SOMA_API_URL and
  SOMA_API_KEY, else the .soma/dev.env that `ops/dev up` writes (looked for in this directory
  and its parents).

Exit codes:
  0  done
  1  the API could not be reached, or answered with a server error
  2  wrong usage (a bad flag or argument)
  3  the API refused the request (unknown session, busy session, bad input, wrong key)
  4  the turn failed (its error is printed)
  5  the turn was cancelled
  6  an uploaded file was quarantined or failed its scan

Examples:
  soma chat \"What is Temporal?\"          a new session, the reply streamed as it is written
  soma chat --session ID \"And then?\"     go on in a session
  soma chat                              an interactive loop; Ctrl-C stops a reply, Ctrl-D quits
  soma chat --approvals approve \"…\"     approve every tool call that asks (ask: y/n at a terminal)
  soma tools                             the tools the model may call
  soma tool approve ID                   decide a tool call waiting for approval (or deny)
  soma upload report.pdf notes.md        upload (resumable; run it again to resume), then the scan's verdict
  soma chat --attach ID \"Summarise it\" a message with an uploaded file
  soma recall favourite colour           what memory recalls for a query
  soma dead-letters replay --all         replay what ran out of retries (with an admin key)
  soma sessions --json | jq .            scripts read --json
  soma export ID > chat.jsonl && soma import chat.jsonl
  soma completions bash > /etc/bash_completion.d/soma";

#[derive(Debug, Parser)]
#[command(name = "soma", version, about = "Chat with Soma Orchestrator and manage its sessions", after_help = AFTER_HELP)]
pub struct Cli {
    /// The API's base URL, e.g. http://127.0.0.1:20020.
    #[arg(long, global = true, env = "SOMA_API_URL")]
    pub api_url: Option<String>,
    /// The API key.
    #[arg(long, global = true, env = "SOMA_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// An admin key, for `soma dead-letters` and `soma tools --refresh`.
    #[arg(long, global = true, env = "SOMA_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Print JSON (one object per command) for scripts, instead of text for people.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send a message and stream the reply as it is written. Without a message: an interactive
    /// loop, one line a message, in one session.
    Chat {
        /// The session to go on in; a new one without it.
        #[arg(long)]
        session: Option<Uuid>,
        /// What to do while a turn of the session is running: wait behind it, interrupt it
        /// (its partial reply is kept as cancelled), or refuse.
        #[arg(long, value_enum, default_value_t = Busy::Queue)]
        if_busy: Busy,
        /// Tool calls that wait for approval: ask (y/n, at a terminal; otherwise they wait
        /// for `soma tool approve|deny`), approve or deny them all.
        #[arg(long, value_enum, default_value_t = Approvals::Ask)]
        approvals: Approvals,
        /// An uploaded file (its id, from `soma upload`) to go with the message; repeat for more.
        #[arg(long = "attach", value_name = "ID")]
        attachments: Vec<Uuid>,
        /// The message; several words are joined with spaces.
        message: Vec<String>,
    },
    /// Upload files over tus (resumable: run the same command again to go on after an
    /// interruption), with a progress bar; prints each one's scan verdict.
    Upload {
        /// The session the files are for (its stream hears their verdicts).
        #[arg(long)]
        session: Option<Uuid>,
        #[arg(required = true)]
        files: Vec<std::path::PathBuf>,
    },
    /// The tools the model (and `POST /v1/tool/request`) may use.
    Tools {
        /// First refresh the catalog from the MCP servers (needs an admin key).
        #[arg(long)]
        refresh: bool,
    },
    /// Decide a tool call that waits for approval, or show a call.
    Tool {
        #[command(subcommand)]
        action: ToolAction,
    },
    /// What memory recalls for a query (what the model would be given).
    Recall {
        /// Only this session's memories.
        #[arg(long)]
        session: Option<Uuid>,
        /// What to look for; several words are joined with spaces.
        query: Vec<String>,
    },
    /// Work that ran out of retries or failed for good (memory writes): list, replay, discard.
    /// Needs an admin key.
    DeadLetters {
        #[command(subcommand)]
        action: Option<DeadLetterAction>,
    },
    /// The periodic jobs (Temporal Schedules): list with next and last runs, trigger now,
    /// pause, unpause. Needs an admin key.
    Schedules {
        #[command(subcommand)]
        action: Option<ScheduleAction>,
    },
    /// The audit log, oldest first: what happened to a session or because of a request, what
    /// an actor did (filters combine). Needs an admin key.
    Audit {
        #[arg(long)]
        session: Option<Uuid>,
        /// The request's `X-Request-Id`.
        #[arg(long)]
        request: Option<String>,
        #[arg(long)]
        tenant: Option<String>,
        /// `key:…`, `admin:…`, `worker`, `recovery`, …
        #[arg(long)]
        actor: Option<String>,
        /// An action (`session.delete`) or a family (`schedule.*`).
        #[arg(long)]
        action: Option<String>,
        /// Rows after this id (the `more:` line of the previous page).
        #[arg(long)]
        after: Option<i64>,
        /// How many (1 to 1000).
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// The tenant's sessions, most recently active first.
    Sessions {
        /// How many (1 to 200).
        #[arg(long, default_value_t = 20)]
        limit: i64,
    },
    /// A session's conversation.
    History { session: Uuid },
    /// Cancel the session's running turn; its partial reply is kept as cancelled.
    Cancel { session: Uuid },
    /// Delete a session: its turns are cancelled, its streams end, its data is removed.
    Delete { session: Uuid },
    /// Clear a session's conversation and keep the session.
    Reset { session: Uuid },
    /// Write a session as JSON lines to standard output.
    Export { session: Uuid },
    /// Import an export (a file, or - for standard input) as a new session.
    Import { file: String },
    /// Print a completion script for a shell.
    Completions { shell: clap_complete::Shell },
}

/// `soma tool …`.
#[derive(Debug, Subcommand)]
pub enum ToolAction {
    /// Let the call run.
    Approve {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Refuse it; the model hears the reason.
    Deny {
        id: Uuid,
        #[arg(long)]
        reason: Option<String>,
    },
    /// A call with its whole output.
    Show { id: Uuid },
}

/// `soma schedules …`.
#[derive(Debug, Subcommand)]
pub enum ScheduleAction {
    /// Run the job now, once (also while paused).
    Trigger { id: String },
    /// Stop its ticks until unpaused.
    Pause {
        id: String,
        /// Why (the Temporal UI shows it).
        #[arg(long)]
        note: Option<String>,
    },
    /// Start its ticks again.
    Unpause {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
}

/// `soma dead-letters …`.
#[derive(Debug, Subcommand)]
pub enum DeadLetterAction {
    /// Start one again under its idempotency key, or every open one with --all.
    Replay {
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<Uuid>,
        #[arg(long)]
        all: bool,
    },
    /// Give up on one, saying why (audited).
    Discard {
        id: Uuid,
        #[arg(long)]
        reason: String,
    },
}

/// `--approvals`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Approvals {
    Ask,
    Approve,
    Deny,
}

/// `--if-busy`.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Busy {
    Queue,
    Interrupt,
    Reject,
}

impl From<Busy> for IfBusy {
    fn from(busy: Busy) -> Self {
        match busy {
            Busy::Queue => IfBusy::Queue,
            Busy::Interrupt => IfBusy::Interrupt,
            Busy::Reject => IfBusy::Reject,
        }
    }
}

/// How a command ended, as its exit code says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done = 0,
    Unreachable = 1,
    Refused = 3,
    TurnFailed = 4,
    TurnCancelled = 5,
    /// An uploaded file was quarantined or failed its scan.
    Rejected = 6,
}

impl From<Outcome> for ExitCode {
    fn from(outcome: Outcome) -> Self {
        ExitCode::from(outcome as u8)
    }
}

impl Outcome {
    fn of(err: &ClientError) -> Outcome {
        match err {
            ClientError::Api { status, .. } if (400..500).contains(status) => Outcome::Refused,
            _ => Outcome::Unreachable,
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> Outcome {
    let out = Output::new(cli.json);
    if let Command::Completions { shell } = cli.command {
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "soma", &mut std::io::stdout());
        return Outcome::Done;
    }
    let (key, kind) = match cli.command {
        Command::DeadLetters { .. } | Command::Schedules { .. } | Command::Audit { .. } | Command::Tools { refresh: true } => {
            (cli.admin_key, settings::KeyKind::Admin)
        }
        _ => (cli.api_key, settings::KeyKind::Tenant),
    };
    let client = match settings::client(cli.api_url, key, kind) {
        Ok(client) => client,
        Err(err) => {
            out.error(&format!("{err:#}"));
            return Outcome::Refused;
        }
    };
    match execute(&client, cli.command, &out).await {
        Ok(outcome) => outcome,
        Err(err) => {
            out.error(&err.to_string());
            Outcome::of(&err)
        }
    }
}

async fn execute(client: &Client, command: Command, out: &Output) -> Result<Outcome, ClientError> {
    match command {
        Command::Chat { session, if_busy, approvals, attachments, message } => {
            let message = (!message.is_empty()).then(|| message.join(" "));
            return chat::run(client, session, if_busy.into(), approvals, attachments, message, out).await;
        }
        Command::Upload { session, files } => return upload::run(client, &files, session, out).await,
        Command::Tools { refresh: true } => {
            let refreshed = client.refresh_tools().await?;
            out.json_or(&refreshed, || {
                println!("{} tools in the catalog, {} retired", refreshed.tools, refreshed.retired);
                for server in &refreshed.servers {
                    match &server.error {
                        None => println!("  MCP server {}: {} tools", server.name, server.tools),
                        Some(error) => println!("  MCP server {}: not listed ({error}); its tools kept", server.name),
                    }
                }
            });
        }
        Command::Tools { refresh: false } => {
            let list = client.tools().await?;
            out.json_or(&list, || {
                for tool in &list.tools {
                    let approval = if tool.requires_approval { "  (needs approval)" } else { "" };
                    println!("{:<24} {:<8} {}{approval}", tool.name, tool.kind, tool.description);
                }
            });
        }
        Command::Tool { action: ToolAction::Show { id } } => {
            let call = client.tool_call(id).await?;
            out.json_or(&call, || {
                println!("{} {}({}) {}", call.tool_call_id, call.tool, call.arguments, call.status);
                if let Some(output) = call.output.as_deref().or(call.error.as_deref()) {
                    println!("{output}");
                }
            });
        }
        Command::Tool { action: ToolAction::Approve { id, reason } } => {
            let decided = client.decide_tool(id, true, reason.as_deref()).await?;
            out.json_or(&decided, || println!("approved tool call {id}"));
        }
        Command::Tool { action: ToolAction::Deny { id, reason } } => {
            let decided = client.decide_tool(id, false, reason.as_deref()).await?;
            out.json_or(&decided, || println!("denied tool call {id}"));
        }
        Command::Recall { session, query } => {
            let recalled = client.recall(&query.join(" "), session).await?;
            out.json_or(&recalled, || {
                for memory in &recalled.memories {
                    println!("{:.3}  {}  {}", memory.score, memory.key, memory.content);
                }
                if recalled.memories.is_empty() {
                    out.note("nothing remembered matches");
                }
                if recalled.degraded {
                    out.note("the memory backend answered from part of its storage (degraded)");
                }
            });
        }
        Command::DeadLetters { action: None } => {
            let list = client.dead_letters().await?;
            out.json_or(&list, || {
                for letter in &list.dead_letters {
                    let when = letter.created_at.format("%Y-%m-%d %H:%M:%S");
                    println!("{}  {}  {}  {} attempts  {}", letter.id, when, letter.kind, letter.attempts, letter.key);
                    println!("    {}", letter.error);
                }
                if list.dead_letters.is_empty() {
                    out.note("no open dead letters");
                }
            });
        }
        Command::DeadLetters { action: Some(DeadLetterAction::Replay { id, .. }) } => {
            let replayed = client.replay_dead_letters(id).await?;
            out.json_or(&replayed, || {
                for letter in &replayed.replayed {
                    println!("replayed {}  (workflow {})", letter.id, letter.workflow_id);
                }
                if replayed.replayed.is_empty() {
                    out.note("nothing to replay");
                }
            });
        }
        Command::DeadLetters { action: Some(DeadLetterAction::Discard { id, reason }) } => {
            let letter = client.discard_dead_letter(id, &reason).await?;
            out.json_or(&letter, || println!("discarded {id}: {reason}"));
        }
        Command::Schedules { action: None } => {
            let list = client.schedules().await?;
            out.json_or(&list, || {
                for schedule in &list.schedules {
                    print_schedule(schedule);
                }
                if list.schedules.is_empty() {
                    out.note("no schedules yet (a worker creates them when it starts)");
                }
            });
        }
        Command::Schedules { action: Some(action) } => {
            let (id, verb, note) = match action {
                ScheduleAction::Trigger { id } => (id, "trigger", None),
                ScheduleAction::Pause { id, note } => (id, "pause", note),
                ScheduleAction::Unpause { id, note } => (id, "unpause", note),
            };
            let schedule = client.steer_schedule(&id, verb, note).await?;
            out.json_or(&schedule, || print_schedule(&schedule));
        }
        Command::Audit { session, request, tenant, actor, action, after, limit } => {
            let mut query = vec![("limit", limit.to_string())];
            let filters = [
                ("session_id", session.map(|s| s.to_string())),
                ("request_id", request),
                ("tenant_id", tenant),
                ("actor", actor),
                ("action", action),
                ("after", after.map(|a| a.to_string())),
            ];
            query.extend(filters.into_iter().filter_map(|(name, value)| value.map(|v| (name, v))));
            let list = client.audit(&query).await?;
            out.json_or(&list, || {
                for record in &list.records {
                    let when = record.created_at.format("%Y-%m-%d %H:%M:%S");
                    let session = record.session_id.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
                    println!("{}  {when}  {}  {}  {}  {}  {session}", record.id, record.tenant_id, record.actor, record.action, record.outcome);
                    if record.details.as_object().is_some_and(|d| !d.is_empty()) {
                        println!("    {}", record.details);
                    }
                }
                match list.next_after {
                    Some(next) => out.note(&format!("more: --after {next}")),
                    None if list.records.is_empty() => out.note("no matching audit rows"),
                    None => {}
                }
            });
        }
        Command::Sessions { limit } => {
            let list = client.sessions(Some(limit), None).await?;
            out.json_or(&list, || {
                for s in &list.sessions {
                    println!("{}  {:>3} turns  {}", s.id, s.turn_count, s.updated_at.format("%Y-%m-%d %H:%M:%S"));
                }
                if list.sessions.is_empty() {
                    out.note("no sessions yet: soma chat \"hello\" starts one");
                }
            });
        }
        Command::History { session } => {
            let messages = client.all_messages(session).await?;
            out.json_or(&messages, || {
                for m in &messages {
                    let status = if m.status == soma_contract::MessageStatus::Complete {
                        String::new()
                    } else {
                        format!(" ({})", m.status)
                    };
                    println!("{}{status}: {}", out.role(m.role), m.content);
                }
            });
        }
        Command::Cancel { session } => {
            let cancel = client.cancel(session).await?;
            out.json_or(&cancel, || println!("cancelling turn {}", cancel.turn_id));
        }
        Command::Delete { session } => {
            let deletion = client.delete(session).await?;
            out.json_or(&deletion, || println!("deleting session {} ({})", deletion.session_id, deletion.workflow_id));
        }
        Command::Reset { session } => {
            let reset = client.reset(session).await?;
            out.json_or(&reset, || println!("cleared {} messages", reset.removed_messages));
        }
        Command::Export { session } => print!("{}", client.export(session).await?),
        Command::Import { file } => {
            let jsonl = if file == "-" {
                let mut text = String::new();
                std::io::stdin().read_to_string(&mut text).map_err(|e| ClientError::Decode(e.to_string()))?;
                text
            } else {
                std::fs::read_to_string(&file).map_err(|e| ClientError::Decode(format!("{file}: {e}")))?
            };
            let imported = client.import(jsonl).await?;
            out.json_or(&imported, || {
                println!(
                    "imported as session {} ({} turns, {} messages)",
                    imported.session_id, imported.turns, imported.messages
                )
            });
        }
        Command::Completions { .. } => unreachable!("handled before connecting"),
    }
    Ok(Outcome::Done)
}

/// One schedule, for people: what, when, and its latest runs.
fn print_schedule(schedule: &soma_contract::api::ScheduleView) {
    let state = if schedule.paused { "paused" } else { "active" };
    println!("{}  {}  {}  {}  {} runs", schedule.id, schedule.job, schedule.spec, state, schedule.runs);
    if let Some(note) = &schedule.note {
        println!("    note: {note}");
    }
    if let Some(next) = schedule.next_runs.first() {
        println!("    next: {}", next.format("%Y-%m-%d %H:%M:%S UTC"));
    }
    for run in schedule.recent_runs.iter().rev().take(3) {
        let when = run.started_at.map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()).unwrap_or_default();
        println!("    ran:  {when}  {}", run.workflow_id);
    }
}
