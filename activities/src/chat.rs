//! The chat turn's activities (declared in `soma_workflows::activities`). Each is safe to run
//! more than once: every write is keyed by the turn (and, for deltas, by attempt and index).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use temporalio_common::error::ApplicationFailure;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio::time::{Instant, sleep_until};
use uuid::Uuid;

use soma_core::SessionWakeups;
use soma_core::store::{AuditEntry, NewEvent, Store, StoreError};
use soma_core::temporal::start_chat_turn;
use soma_workflows::activities::defs;
use soma_workflows::{
    AssistantMessageInput, FinishTurnInput, StreamOutcome, TurnRef, TurnStatus, event_kind,
};

use crate::llm::{ChatMessage, LlmChunk, LlmClient, LlmError};

/// An earlier turn still queued after this long has its workflow (re)started, in case it
/// never was.
const ORPHAN_AFTER_SECS: f64 = 10.0;

/// How often a long activity heartbeats; well inside the workflow's heartbeat timeouts.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

pub struct ChatTurnActivities {
    store: Store,
    wakeups: Arc<SessionWakeups>,
    llm: LlmClient,
    /// Deltas after the first are batched for this long before they are written.
    coalesce: Duration,
}

impl ChatTurnActivities {
    pub fn new(store: Store, wakeups: Arc<SessionWakeups>, llm: LlmClient, coalesce: Duration) -> Self {
        Self { store, wakeups, llm, coalesce }
    }

    async fn append(&self, turn: &TurnRef, events: Vec<NewEvent>) -> Result<(), ActivityError> {
        self.store.append_events(turn, &events).await.map_err(retryable)?;
        Ok(())
    }
}

#[activities]
impl ChatTurnActivities {
    #[activity(definition = defs::WaitForEarlierTurns)]
    pub async fn wait_for_earlier_turns(
        self: Arc<Self>,
        ctx: ActivityContext,
        turn: TurnRef,
    ) -> Result<(), ActivityError> {
        // A turn that is gone fails the step at once instead of waiting for ever.
        self.store.turn(&turn).await.map_err(store_failure)?;
        let mut woken = self.wakeups.subscribe(turn.session_id);
        let mut ensured = HashSet::new();
        loop {
            let earlier = self.store.unfinished_earlier_turns(&turn).await.map_err(retryable)?;
            if earlier.is_empty() {
                return Ok(());
            }
            // An earlier turn whose workflow never started (its API died between storing the
            // turn and starting the workflow) would block the session for ever: start it.
            for stuck in earlier.iter().filter(|e| e.age_seconds > ORPHAN_AFTER_SECS) {
                if !ensured.insert(stuck.turn_id) {
                    continue;
                }
                let earlier_turn = TurnRef {
                    tenant_id: turn.tenant_id.clone(),
                    session_id: turn.session_id,
                    turn_id: stuck.turn_id,
                    request_id: stuck.request_id.clone(),
                };
                start_chat_turn(&ctx.client(), &ctx.info().task_queue, &stuck.workflow_id, earlier_turn)
                    .await
                    .map_err(|err| ActivityError::from(anyhow::Error::new(err)))?;
                tracing::info!(session_id = %turn.session_id, turn_id = %stuck.turn_id, "ensured an earlier turn's workflow runs");
            }
            ctx.record_heartbeat(()).await?;
            // A finishing turn appends its `turn.*` event, which wakes us; the timeout is
            // only a backstop (and keeps heartbeats flowing).
            tokio::select! {
                _ = ctx.cancelled() => return Err(ActivityError::cancelled()),
                _ = woken.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    #[activity(definition = defs::BeginTurn)]
    pub async fn begin_turn(
        self: Arc<Self>,
        _ctx: ActivityContext,
        turn: TurnRef,
    ) -> Result<bool, ActivityError> {
        // Both reads at once: this is on the way to the first token.
        let read_turn = async { self.store.turn(&turn).await.map_err(store_failure) };
        let read_earlier = async { self.store.unfinished_earlier_turns(&turn).await.map_err(retryable) };
        let (row, earlier) = futures::try_join!(read_turn, read_earlier)?;
        if row.status == "queued" && !earlier.is_empty() {
            return Ok(false);
        }
        self.store.mark_turn_running(&turn).await.map_err(retryable)?;
        let message_id = self
            .store
            .insert_message(&turn, "user", &row.user_message, "complete")
            .await
            .map_err(retryable)?;
        let event = NewEvent {
            kind: event_kind::MESSAGE_USER,
            payload: json!({
                "message_id": message_id,
                "role": "user",
                "content": row.user_message,
                "persona_id": row.persona_id,
                "seq": row.seq,
            }),
            dedupe_key: format!("{}:{}", turn.turn_id, event_kind::MESSAGE_USER),
        };
        self.append(&turn, vec![event]).await?;
        Ok(true)
    }

    #[activity(definition = defs::StreamLlmReply)]
    pub async fn stream_llm_reply(
        self: Arc<Self>,
        ctx: ActivityContext,
        turn: TurnRef,
    ) -> Result<StreamOutcome, ActivityError> {
        let attempt = ctx.info().attempt.max(1);
        if attempt > 1 {
            tracing::warn!(session_id = %turn.session_id, turn_id = %turn.turn_id, request_id = %turn.request_id,
                           attempt, "LLM call retried");
            if self.store.has_streamed_deltas(&turn).await.map_err(retryable)? {
                // Tell readers to throw away what an earlier attempt streamed.
                let retry = NewEvent {
                    kind: event_kind::LLM_RETRY,
                    payload: json!({ "attempt": attempt, "discard_partial": true,
                                     "reason": "the provider stream was interrupted; restarting the reply" }),
                    dedupe_key: format!("{}:{}:{attempt}", turn.turn_id, event_kind::LLM_RETRY),
                };
                self.append(&turn, vec![retry]).await?;
            }
        }
        let history: Vec<ChatMessage> = self
            .store
            .conversation_until(&turn)
            .await
            .map_err(retryable)?
            .into_iter()
            .map(|line| ChatMessage { role: line.role, content: line.content })
            .collect();
        if history.is_empty() {
            // Not even this turn's own message: the turn is gone.
            return Err(store_failure(StoreError::TurnNotFound));
        }
        let idempotency_key = format!("{}:{attempt}", turn.turn_id);
        let mut stream =
            Box::pin(self.llm.stream_chat(&history, &idempotency_key).await.map_err(llm_failure)?);

        let mut writer = DeltaWriter {
            turn: &turn,
            attempt,
            count: 0,
            pending: String::new(),
            last_flush: Instant::now() - self.coalesce,
        };
        let mut flush_at: Option<Instant> = None;
        let mut heartbeat_at = Instant::now() + HEARTBEAT_EVERY;
        let mut finish_reason = String::from("stop");
        loop {
            let flush_deadline = flush_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600));
            tokio::select! {
                biased;
                _ = ctx.cancelled() => {
                    // Keep what was streamed so far: it becomes the cancelled reply.
                    writer.flush(&self).await?;
                    return Err(ActivityError::cancelled());
                }
                item = stream.next() => match item {
                    Some(Ok(LlmChunk::Delta(text))) => {
                        writer.pending.push_str(&text);
                        // At most one write per coalescing window, but a token that arrives
                        // after a quiet spell (the first one, say) is written at once.
                        let due = writer.last_flush + self.coalesce;
                        if Instant::now() >= due {
                            flush_at = None;
                            writer.flush(&self).await?;
                        } else if flush_at.is_none() {
                            flush_at = Some(due);
                        }
                    }
                    Some(Ok(LlmChunk::Finished { reason })) => finish_reason = reason,
                    Some(Err(err)) => {
                        writer.flush(&self).await?;
                        return Err(llm_failure(err));
                    }
                    None => break,
                },
                _ = sleep_until(flush_deadline), if flush_at.is_some() => {
                    flush_at = None;
                    writer.flush(&self).await?;
                }
                _ = sleep_until(heartbeat_at) => {
                    heartbeat_at = Instant::now() + HEARTBEAT_EVERY;
                    ctx.record_heartbeat(writer.count).await?;
                }
            }
        }
        writer.flush(&self).await?;
        let complete = NewEvent {
            kind: event_kind::LLM_COMPLETE,
            payload: json!({ "attempt": attempt, "delta_count": writer.count,
                             "finish_reason": finish_reason, "model": self.llm.model() }),
            dedupe_key: format!("{}:{}", turn.turn_id, event_kind::LLM_COMPLETE),
        };
        self.append(&turn, vec![complete]).await?;
        Ok(StreamOutcome { attempt, delta_count: writer.count, finish_reason })
    }

    #[activity(definition = defs::PersistAssistantMessage)]
    pub async fn persist_assistant_message(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: AssistantMessageInput,
    ) -> Result<Option<Uuid>, ActivityError> {
        let text = self.store.streamed_reply(&input.turn).await.map_err(retryable)?;
        if text.is_empty() && input.status != TurnStatus::Completed {
            return Ok(None);
        }
        let status = match input.status {
            TurnStatus::Completed => "complete",
            TurnStatus::Cancelled => "cancelled",
            TurnStatus::Failed => "failed",
        };
        let id =
            self.store.insert_message(&input.turn, "assistant", &text, status).await.map_err(retryable)?;
        Ok(Some(id))
    }

    #[activity(definition = defs::FinishTurn)]
    pub async fn finish_turn(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: FinishTurnInput,
    ) -> Result<(), ActivityError> {
        let turn = &input.turn;
        // Status first: the event below wakes the session's next turn, which reads it.
        self.store.set_turn_status(turn, input.status).await.map_err(retryable)?;
        let mut events = Vec::new();
        if input.status == TurnStatus::Failed {
            events.push(NewEvent {
                kind: event_kind::ERROR,
                payload: json!({ "code": "turn_failed",
                                 "message": input.reason.clone().unwrap_or_else(|| "the turn failed".into()) }),
                dedupe_key: format!("{}:{}", turn.turn_id, event_kind::ERROR),
            });
        }
        events.push(NewEvent {
            kind: input.status.event_kind(),
            payload: json!({ "status": input.status, "assistant_message_id": input.assistant_message_id,
                             "reason": input.reason }),
            dedupe_key: format!("{}:turn.end", turn.turn_id),
        });
        self.append(turn, events).await?;
        tracing::info!(session_id = %turn.session_id, turn_id = %turn.turn_id, request_id = %turn.request_id,
                       status = input.status.as_str(), reason = input.reason.as_deref(), "turn finished");
        self.store
            .audit(&AuditEntry {
                tenant_id: &turn.tenant_id,
                request_id: Some(&turn.request_id),
                session_id: Some(turn.session_id),
                turn_id: Some(turn.turn_id),
                actor: "worker",
                action: "turn.finish",
                outcome: input.status.as_str(),
                details: json!({ "reason": input.reason, "assistant_message_id": input.assistant_message_id }),
                dedupe_key: Some(format!("{}:turn.finish", turn.turn_id)),
            })
            .await
            .map_err(retryable)?;
        Ok(())
    }
}

/// Buffers deltas and writes them as `llm.delta` events keyed by attempt and index.
struct DeltaWriter<'a> {
    turn: &'a TurnRef,
    attempt: u32,
    count: u32,
    pending: String,
    last_flush: Instant,
}

impl DeltaWriter<'_> {
    async fn flush(&mut self, activities: &ChatTurnActivities) -> Result<(), ActivityError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let text = std::mem::take(&mut self.pending);
        let event = NewEvent {
            kind: event_kind::LLM_DELTA,
            payload: json!({ "text": text, "attempt": self.attempt, "index": self.count }),
            dedupe_key: format!(
                "{}:{}:{}:{}",
                self.turn.turn_id,
                event_kind::LLM_DELTA,
                self.attempt,
                self.count
            ),
        };
        activities.append(self.turn, vec![event]).await?;
        self.count += 1;
        self.last_flush = Instant::now();
        Ok(())
    }
}

/// A dependency failure: Temporal retries it with the step's backoff.
fn retryable(err: StoreError) -> ActivityError {
    ActivityError::from(anyhow::Error::new(err))
}

/// A missing turn will not appear on retry; anything else might.
fn store_failure(err: StoreError) -> ActivityError {
    match err {
        StoreError::TurnNotFound | StoreError::SessionNotFound => {
            ApplicationFailure::non_retryable(err).into()
        }
        other => retryable(other),
    }
}

fn llm_failure(err: LlmError) -> ActivityError {
    match err {
        LlmError::Rejected(_) => ApplicationFailure::non_retryable(err).into(),
        LlmError::Transient(_) => ActivityError::from(anyhow::Error::new(err)),
    }
}
