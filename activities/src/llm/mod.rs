//! `LlmActivities`: the model's reply, streamed from the provider into the session's events.
//! Holds the provider's client and the store the deltas go to.

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio::time::{Instant, sleep_until};

use serde_json::{Value, json};
use uuid::Uuid;

use soma_contract::events::{LlmComplete, LlmDelta, LlmRetry};
use soma_contract::{AttachmentStatus, Role, SessionEvent, ToolCallStatus, TurnRef};
use soma_core::store::{ModelToolCall, PromptAttachment, RoundCall, Store, StoreError};
use soma_workflows::ToolExecutionWorkflow;
use soma_workflows::activities::{ReplyRound, StreamOutcome, defs};

pub use client::{ChatMessage, LlmChunk, LlmClient, LlmError};

use crate::failure::Classify;

/// How often a long activity heartbeats; well inside the step's heartbeat timeout.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

/// How much of a tool's output the model is sent (the whole stays in `tool_calls`).
const TOOL_OUTPUT_TO_MODEL_BYTES: usize = 16 * 1024;
/// How much of a message's files' text the model is given, in all.
const ATTACHMENTS_TO_MODEL_BYTES: usize = 32 * 1024;

pub struct LlmActivitiesImpl {
    store: Store,
    llm: LlmClient,
    /// After a delta is written, later ones are batched for this long before the next write.
    coalesce: Duration,
    /// Rounds of tool calls a turn may make; the model call after the last is offered none.
    max_tool_rounds: u32,
}

impl LlmActivitiesImpl {
    pub fn new(store: Store, llm: LlmClient, coalesce: Duration, max_tool_rounds: u32) -> Self {
        Self { store, llm, coalesce, max_tool_rounds }
    }

    /// The conversation for the model call of `round`: what the turn recalled from memory (a
    /// system message), the session's messages up to this turn's, then each earlier round's
    /// tool calls and their results.
    async fn conversation(&self, turn: &TurnRef, round: u32) -> Result<Vec<ChatMessage>, StoreError> {
        let (recalled, lines, files) = tokio::try_join!(
            self.store.turn_recall(&turn.tenant_id, turn.turn_id),
            self.store.conversation_until(&turn.tenant_id, turn.session_id, turn.turn_id),
            self.store.conversation_attachments(&turn.tenant_id, turn.session_id, turn.turn_id),
        )?;
        let mut messages: Vec<ChatMessage> = recalled.as_ref().and_then(memory_message).into_iter().collect();
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        messages.extend(lines.into_iter().map(|line| {
            let mut content = line.content;
            if line.role == Role::User {
                let carried: Vec<&PromptAttachment> = files.iter().filter(|f| f.turn_id == line.turn_id).collect();
                content.push_str(&attachments_text(&carried));
            }
            ChatMessage::text(line.role.as_str(), content)
        }));
        if round == 0 || messages.is_empty() {
            return Ok(messages);
        }
        let calls = self.store.round_calls(&turn.tenant_id, turn.turn_id, round as i32).await?;
        for round_calls in calls.chunk_by(|a, b| a.round == b.round) {
            messages.push(ChatMessage {
                role: "assistant".into(),
                content: None,
                tool_calls: round_calls
                    .iter()
                    .map(|call| {
                        json!({ "id": call.provider_call_id, "type": "function",
                                "function": { "name": call.tool_name, "arguments": call.arguments } })
                    })
                    .collect(),
                tool_call_id: None,
            });
            for call in round_calls {
                messages.push(ChatMessage {
                    role: "tool".into(),
                    content: Some(tool_message(call)),
                    tool_calls: Vec::new(),
                    tool_call_id: Some(call.provider_call_id.clone()),
                });
            }
        }
        Ok(messages)
    }

    /// The tenant's enabled tools as OpenAI functions, or none on the last round allowed.
    async fn offered_tools(&self, turn: &TurnRef, round: u32) -> Result<Vec<Value>, StoreError> {
        if round >= self.max_tool_rounds {
            return Ok(Vec::new());
        }
        Ok(self
            .store
            .tenant_tools(&turn.tenant_id)
            .await?
            .into_iter()
            .filter(|tool| tool.enabled)
            .map(|tool| {
                json!({ "type": "function", "function": {
                    "name": tool.name, "description": tool.description, "parameters": tool.input_schema } })
            })
            .collect())
    }
}

/// What a user message's files add to it: each clean text-like file's text (within
/// [`ATTACHMENTS_TO_MODEL_BYTES`] for the message), and a line for each file the model is not
/// given and why.
fn attachments_text(files: &[&PromptAttachment]) -> String {
    let mut text = String::new();
    let mut budget = ATTACHMENTS_TO_MODEL_BYTES;
    for file in files {
        let name = &file.filename;
        match (&file.status, &file.text) {
            (AttachmentStatus::Clean, Some(content)) => {
                let (shown, cut) = crate::tools::preview(content, budget);
                budget = budget.saturating_sub(shown.len());
                let cut = if cut || file.text_truncated { "\n[the rest of the file is not shown]" } else { "" };
                text.push_str(&format!("\n\n[Attached file {name} ({}):]\n{shown}{cut}\n[End of {name}]", file.content_type));
            }
            (AttachmentStatus::Clean, None) => text.push_str(&format!(
                "\n\n[Attached file {name} ({}, {} bytes): not text, so its content is not shown]",
                file.content_type, file.size_bytes
            )),
            (status, _) => text.push_str(&format!(
                "\n\n[Attached file {name} was refused and is not shown: {status} ({})]",
                file.verdict.as_deref().unwrap_or("no reason recorded")
            )),
        }
    }
    text
}

/// The system message that gives the model what the turn recalled (`turns.recalled`).
fn memory_message(recalled: &Value) -> Option<ChatMessage> {
    let lines: Vec<String> = recalled
        .as_array()?
        .iter()
        .filter_map(|memory| memory["content"].as_str())
        .map(|content| format!("- {}", content.replace('\n', " ")))
        .collect();
    if lines.is_empty() {
        return None;
    }
    Some(ChatMessage::text(
        "system",
        format!("Relevant memories from earlier conversations, most relevant first:\n{}", lines.join("\n")),
    ))
}

/// What the model is told a call gave: its output, or what became of it.
fn tool_message(call: &RoundCall) -> String {
    match (call.status, &call.output) {
        (ToolCallStatus::Succeeded, Some(output)) => {
            let (text, cut) = crate::tools::preview(output, TOOL_OUTPUT_TO_MODEL_BYTES);
            if cut { format!("{text}\n[output cut at {} KiB]", TOOL_OUTPUT_TO_MODEL_BYTES / 1024) } else { text }
        }
        (status, _) => format!(
            "The tool call did not run to a result ({status}): {}",
            call.error.as_deref().unwrap_or("no reason given")
        ),
    }
}

/// A tool call being streamed: its pieces put together.
#[derive(Default)]
struct PendingCall {
    id: Option<String>,
    name: String,
    arguments: String,
}

#[activities]
impl LlmActivitiesImpl {
    #[activity(definition = defs::StreamReply)]
    pub async fn stream_reply(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: ReplyRound,
    ) -> Result<StreamOutcome, ActivityError> {
        let ReplyRound { turn, round } = input;
        let store = &self.store;
        let attempt = ctx.info().attempt.max(1);
        if attempt > 1 {
            tracing::warn!(session_id = %turn.session_id, turn_id = %turn.turn_id, request_id = %turn.request_id,
                           attempt, "LLM call retried");
            if store.has_streamed_deltas(&turn.tenant_id, turn.session_id, turn.turn_id, round).await.classify()? {
                // Tell readers to throw away what an earlier attempt streamed.
                let retry = SessionEvent::LlmRetry(LlmRetry {
                    attempt,
                    discard_partial: true,
                    reason: "the provider stream was interrupted; restarting the reply".into(),
                    round,
                });
                store.append_events(&turn.scope(), &[retry]).await.classify()?;
            }
        }
        let history = self.conversation(&turn, round).await.classify()?;
        if history.is_empty() {
            // Not even this turn's own message: the turn is gone.
            return Err(StoreError::TurnNotFound).classify();
        }
        let tools = self.offered_tools(&turn, round).await.classify()?;
        let idempotency_key =
            if round == 0 { format!("{}:{attempt}", turn.turn_id) } else { format!("{}:r{round}:{attempt}", turn.turn_id) };
        let mut stream = Box::pin(self.llm.stream_chat(&history, &tools, &idempotency_key).await.classify()?);

        let mut writer = DeltaWriter { store, turn: &turn, attempt, round, count: 0, pending: String::new() };
        let mut calls: Vec<PendingCall> = Vec::new();
        let mut last_write = Instant::now() - self.coalesce;
        let mut write_at: Option<Instant> = None;
        let mut heartbeat_at = Instant::now() + HEARTBEAT_EVERY;
        let mut finish_reason = String::from("stop");
        loop {
            let write_deadline = write_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = ctx.cancelled() => {
                    // Keep what was streamed so far: it becomes the cancelled reply.
                    writer.write().await?;
                    return Err(ActivityError::cancelled());
                }
                item = stream.next() => match item {
                    Some(Ok(LlmChunk::Delta(text))) => {
                        writer.pending.push_str(&text);
                        // At most one write per coalescing window, but a token that arrives
                        // after a quiet spell (the first one, say) is written at once. The
                        // window runs from a write's start: under load the write itself waits
                        // for the event writer's window, and a window counted from its end
                        // would hold the next token back for a second one.
                        let due = last_write + self.coalesce;
                        if Instant::now() >= due {
                            write_at = None;
                            last_write = Instant::now();
                            writer.write().await?;
                        } else if write_at.is_none() {
                            write_at = Some(due);
                        }
                    }
                    Some(Ok(LlmChunk::ToolCall { index, id, name, arguments })) => {
                        if calls.len() <= index {
                            calls.resize_with(index + 1, PendingCall::default);
                        }
                        let call = &mut calls[index];
                        call.id = call.id.take().or(id);
                        if let Some(name) = name {
                            call.name.push_str(&name);
                        }
                        call.arguments.push_str(&arguments);
                    }
                    Some(Ok(LlmChunk::Finished { reason })) => finish_reason = reason,
                    Some(Err(err)) => {
                        writer.write().await?;
                        return Err(err).classify();
                    }
                    None => break,
                },
                _ = sleep_until(write_deadline), if write_at.is_some() => {
                    write_at = None;
                    last_write = Instant::now();
                    writer.write().await?;
                }
                _ = sleep_until(heartbeat_at) => {
                    heartbeat_at = Instant::now() + HEARTBEAT_EVERY;
                    ctx.record_heartbeat(writer.count).await?;
                }
            }
        }
        writer.write().await?;
        // The calls are stored before `llm.complete`: a reader that sees the end of the round
        // finds them. A retried attempt gets the first attempt's IDs back.
        let model_calls: Vec<ModelToolCall> = calls
            .into_iter()
            .enumerate()
            .filter(|(_, call)| !call.name.is_empty())
            .map(|(index, call)| {
                let id = Uuid::now_v7();
                ModelToolCall {
                    id,
                    workflow_id: ToolExecutionWorkflow::workflow_id(turn.session_id, id),
                    provider_call_id: call.id.unwrap_or_else(|| format!("call_{round}_{index}")),
                    tool_name: call.name,
                    arguments: call.arguments,
                }
            })
            .collect();
        let tool_calls = if model_calls.is_empty() {
            Vec::new()
        } else {
            store
                .record_round_calls(
                    &turn.tenant_id,
                    turn.session_id,
                    turn.turn_id,
                    &turn.request_id,
                    turn.trace_id.as_deref(),
                    round as i32,
                    &model_calls,
                )
                .await
                .classify()?
        };
        let complete = SessionEvent::LlmComplete(LlmComplete {
            attempt,
            delta_count: writer.count,
            finish_reason: finish_reason.clone(),
            model: self.llm.model().to_string(),
            round,
        });
        store.append_events(&turn.scope(), &[complete]).await.classify()?;
        Ok(StreamOutcome { attempt, delta_count: writer.count, finish_reason, tool_calls })
    }
}

/// Buffers streamed text and writes it as `llm.delta` events numbered within the attempt.
struct DeltaWriter<'a> {
    store: &'a Store,
    turn: &'a TurnRef,
    attempt: u32,
    round: u32,
    count: u32,
    pending: String,
}

impl DeltaWriter<'_> {
    async fn write(&mut self) -> Result<(), ActivityError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let delta =
            SessionEvent::LlmDelta(LlmDelta {
            text: std::mem::take(&mut self.pending),
            attempt: self.attempt,
            index: self.count,
            round: self.round,
            compacted: false,
        });
        self.store.append_events(&self.turn.scope(), &[delta]).await.classify()?;
        self.count += 1;
        Ok(())
    }
}
