//! `soma chat`: sends a message and streams its turn's reply as it is written. A dropped
//! connection is resumed after the last event seen, so no text is shown twice or missed; a
//! restarted reply (`llm.retry`) is announced and shown again whole. Ctrl-C during a reply
//! cancels the turn (its partial reply is kept as cancelled). Tool calls are shown as they
//! run; one that waits for approval is asked about (y/n) at a terminal, or decided by
//! `--approvals`.

use std::io::IsTerminal;

use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader, Lines, Stdin};
use uuid::Uuid;

use soma_client::{Client, ClientError, Followed};
use soma_contract::{SessionEvent, ShownReply};
use soma_contract::api::{AttachmentRef, IfBusy, MessageAccepted, PostMessage};

use crate::{Approvals, Outcome};
use crate::output::Output;

/// How often a message is sent again (with the same Idempotency-Key, so at most one turn is
/// made) when the API cannot be reached.
const SEND_TRIES: usize = 3;

/// What `--json` prints for a turn.
#[derive(Debug, Serialize)]
pub struct TurnResult {
    pub session_id: Uuid,
    pub turn_id: Uuid,
    pub workflow_id: String,
    /// `completed`, `failed` or `cancelled`.
    pub status: String,
    /// The reply as stored: the last attempt's text.
    pub reply: String,
    /// Why it failed, for a failed turn.
    pub error: Option<String>,
    /// How often the stream's connection was resumed.
    pub reconnects: usize,
}

/// Standard input, read a line at a time: the messages of the interactive loop and the
/// answers to approval questions share it.
type Input = Lines<BufReader<Stdin>>;

pub async fn run(
    client: &Client,
    session: Option<Uuid>,
    if_busy: IfBusy,
    approvals: Approvals,
    attachments: Vec<Uuid>,
    message: Option<String>,
    out: &Output,
) -> Result<Outcome, ClientError> {
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    match message {
        Some(text) => {
            let message = Outgoing { text: &text, attachments: &attachments };
            Ok(turn(client, session, if_busy, approvals, &mut input, message, out).await?.1)
        }
        None => interactive(client, session, if_busy, approvals, attachments, &mut input, out).await,
    }
}

/// A message to send: its text and the uploaded files it carries.
#[derive(Clone, Copy)]
struct Outgoing<'a> {
    text: &'a str,
    attachments: &'a [Uuid],
}

/// One line a message, in one session, until end of input or Ctrl-C at the prompt.
async fn interactive(
    client: &Client,
    mut session: Option<Uuid>,
    if_busy: IfBusy,
    approvals: Approvals,
    mut attachments: Vec<Uuid>,
    lines: &mut Input,
    out: &Output,
) -> Result<Outcome, ClientError> {
    let prompt = std::io::stdin().is_terminal();
    let mut outcome = Outcome::Done;
    loop {
        if prompt {
            eprint!("you> ");
        }
        let line = tokio::select! {
            line = lines.next_line() => line.map_err(|e| ClientError::Decode(e.to_string()))?,
            _ = tokio::signal::ctrl_c() => None,
        };
        let Some(line) = line else { return Ok(outcome) };
        if line.trim().is_empty() {
            continue;
        }
        // The files go with the first message.
        let message = Outgoing { text: &line, attachments: &attachments };
        let (id, ended) = turn(client, session, if_busy, approvals, lines, message, out).await?;
        attachments.clear();
        session = Some(id);
        outcome = ended;
    }
}

/// Sends `message` and follows its turn to the end. Returns the session and how the turn ended.
async fn turn(
    client: &Client,
    session: Option<Uuid>,
    if_busy: IfBusy,
    approvals: Approvals,
    input: &mut Input,
    message: Outgoing<'_>,
    out: &Output,
) -> Result<(Uuid, Outcome), ClientError> {
    let body = PostMessage {
        session_id: session,
        message: message.text.to_string(),
        persona_id: None,
        attachments: message.attachments.iter().map(|&id| AttachmentRef { id }).collect(),
        if_busy,
    };
    let accepted = send(client, &body).await?;
    if session.is_none() {
        out.note(&format!("session {}", accepted.session_id));
    }
    let turn_id = accepted.turn_id.to_string();
    let mut follow = client.follow(accepted.session_id, accepted.stream_after);
    let (mut reply, mut error, mut cancel_sent) = (ShownReply::default(), None, false);
    let outcome = loop {
        let next = tokio::select! {
            next = follow.next() => next?,
            _ = tokio::signal::ctrl_c(), if !cancel_sent => {
                cancel_sent = true;
                out.note("\n(cancelling…)");
                client.cancel(accepted.session_id).await?;
                continue;
            }
        };
        let event = match next {
            None => break Outcome::Refused, // the session was deleted meanwhile
            Some(Followed::Reconnecting { .. }) => {
                out.note("\n(connection lost; resuming where it broke…)");
                continue;
            }
            Some(Followed::Event(event)) if event.is_of_turn(&turn_id) => event,
            Some(Followed::Event(_)) => continue, // an earlier turn still finishing
        };
        match event.typed() {
            Some(delta @ SessionEvent::LlmDelta(_)) => {
                reply.apply(&delta);
                if let SessionEvent::LlmDelta(delta) = delta {
                    out.stream(&delta.text);
                }
            }
            Some(retry @ SessionEvent::LlmRetry(_)) => {
                reply.apply(&retry);
                out.note("\n(the reply restarted; here it is again)");
            }
            Some(SessionEvent::ToolCall(call)) => out.note(&format!("(tool {}({}))", call.tool, call.arguments)),
            Some(SessionEvent::ToolResult(result)) => {
                let detail = result.output.or(result.reason).unwrap_or_default();
                out.note(&format!("(tool {} {}: {})", result.tool, result.status, detail.chars().take(200).collect::<String>()));
            }
            Some(SessionEvent::ToolApprovalRequired(asked)) => {
                let approve = match approvals {
                    Approvals::Approve => Some(true),
                    Approvals::Deny => Some(false),
                    Approvals::Ask if std::io::stdin().is_terminal() => {
                        eprint!("approve tool {}({})? [y/N] ", asked.tool, asked.arguments);
                        let answer = input.next_line().await.map_err(|e| ClientError::Decode(e.to_string()))?;
                        Some(answer.is_some_and(|a| matches!(a.trim(), "y" | "Y" | "yes")))
                    }
                    Approvals::Ask => {
                        out.note(&format!(
                            "(tool {} waits for approval: soma tool approve {} | soma tool deny {})",
                            asked.tool, asked.tool_call_id, asked.tool_call_id
                        ));
                        None
                    }
                };
                if let Some(approve) = approve {
                    client.decide_tool(asked.tool_call_id, approve, None).await?;
                }
            }
            Some(SessionEvent::Error(failure)) => error = Some(failure.message),
            Some(SessionEvent::TurnComplete(_)) => break Outcome::Done,
            Some(SessionEvent::TurnFailed(_)) => break Outcome::TurnFailed,
            Some(SessionEvent::TurnCancelled(_)) => break Outcome::TurnCancelled,
            _ => {}
        }
    };
    let status = match outcome {
        Outcome::Done => "completed",
        Outcome::TurnFailed => "failed",
        Outcome::TurnCancelled => "cancelled",
        _ => "deleted",
    };
    out.stream("\n");
    if let Some(error) = &error {
        out.error(error);
    } else if outcome == Outcome::TurnCancelled {
        out.note("(cancelled)");
    }
    let result = TurnResult {
        session_id: accepted.session_id,
        turn_id: accepted.turn_id,
        workflow_id: accepted.workflow_id,
        status: status.into(),
        reply: reply.text(),
        error,
        reconnects: follow.reconnects,
    };
    out.json_or(&result, || {});
    Ok((accepted.session_id, outcome))
}

/// Sends a message, trying again with the same Idempotency-Key when the API is unreachable.
async fn send(client: &Client, body: &PostMessage) -> Result<MessageAccepted, ClientError> {
    let key = Uuid::new_v4().to_string();
    let mut tries = 0;
    loop {
        tries += 1;
        match client.send(body, Some(&key)).await {
            Err(ClientError::Http(_)) if tries < SEND_TRIES => {
                tokio::time::sleep(std::time::Duration::from_millis(500 * tries as u64)).await;
            }
            result => return result,
        }
    }
}
