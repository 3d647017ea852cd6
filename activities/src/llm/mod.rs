//! `LlmActivities`: the model's reply, streamed from the provider into the session's events.
//! Holds the provider's client and the store the deltas go to.

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio::time::{Instant, sleep_until};

use soma_contract::events::{LlmComplete, LlmDelta, LlmRetry};
use soma_contract::{SessionEvent, TurnRef};
use soma_core::store::{Store, StoreError};
use soma_workflows::activities::{StreamOutcome, defs};

pub use client::{ChatMessage, LlmChunk, LlmClient, LlmError};

use crate::failure::Classify;

/// How often a long activity heartbeats; well inside the step's heartbeat timeout.
const HEARTBEAT_EVERY: Duration = Duration::from_millis(500);

pub struct LlmActivitiesImpl {
    store: Store,
    llm: LlmClient,
    /// After a delta is written, later ones are batched for this long before the next write.
    coalesce: Duration,
}

impl LlmActivitiesImpl {
    pub fn new(store: Store, llm: LlmClient, coalesce: Duration) -> Self {
        Self { store, llm, coalesce }
    }
}

#[activities]
impl LlmActivitiesImpl {
    #[activity(definition = defs::StreamReply)]
    pub async fn stream_reply(
        self: Arc<Self>,
        ctx: ActivityContext,
        turn: TurnRef,
    ) -> Result<StreamOutcome, ActivityError> {
        let store = &self.store;
        let attempt = ctx.info().attempt.max(1);
        if attempt > 1 {
            tracing::warn!(session_id = %turn.session_id, turn_id = %turn.turn_id, request_id = %turn.request_id,
                           attempt, "LLM call retried");
            if store.has_streamed_deltas(&turn.tenant_id, turn.session_id, turn.turn_id).await.classify()? {
                // Tell readers to throw away what an earlier attempt streamed.
                let retry = SessionEvent::LlmRetry(LlmRetry {
                    attempt,
                    discard_partial: true,
                    reason: "the provider stream was interrupted; restarting the reply".into(),
                });
                store.append_events(&turn.scope(), &[retry]).await.classify()?;
            }
        }
        let history: Vec<ChatMessage> = store
            .conversation_until(&turn.tenant_id, turn.session_id, turn.turn_id)
            .await
            .classify()?
            .into_iter()
            .map(|line| ChatMessage { role: line.role.as_str().to_string(), content: line.content })
            .collect();
        if history.is_empty() {
            // Not even this turn's own message: the turn is gone.
            return Err(StoreError::TurnNotFound).classify();
        }
        let idempotency_key = format!("{}:{attempt}", turn.turn_id);
        let mut stream = Box::pin(self.llm.stream_chat(&history, &idempotency_key).await.classify()?);

        let mut writer = DeltaWriter { store, turn: &turn, attempt, count: 0, pending: String::new() };
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
                        // after a quiet spell (the first one, say) is written at once.
                        let due = last_write + self.coalesce;
                        if Instant::now() >= due {
                            write_at = None;
                            writer.write().await?;
                            last_write = Instant::now();
                        } else if write_at.is_none() {
                            write_at = Some(due);
                        }
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
                    writer.write().await?;
                    last_write = Instant::now();
                }
                _ = sleep_until(heartbeat_at) => {
                    heartbeat_at = Instant::now() + HEARTBEAT_EVERY;
                    ctx.record_heartbeat(writer.count).await?;
                }
            }
        }
        writer.write().await?;
        let complete = SessionEvent::LlmComplete(LlmComplete {
            attempt,
            delta_count: writer.count,
            finish_reason: finish_reason.clone(),
            model: self.llm.model().to_string(),
        });
        store.append_events(&turn.scope(), &[complete]).await.classify()?;
        Ok(StreamOutcome { attempt, delta_count: writer.count, finish_reason })
    }
}

/// Buffers streamed text and writes it as `llm.delta` events numbered within the attempt.
struct DeltaWriter<'a> {
    store: &'a Store,
    turn: &'a TurnRef,
    attempt: u32,
    count: u32,
    pending: String,
}

impl DeltaWriter<'_> {
    async fn write(&mut self) -> Result<(), ActivityError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let delta =
            SessionEvent::LlmDelta(LlmDelta { text: std::mem::take(&mut self.pending), attempt: self.attempt, index: self.count });
        self.store.append_events(&self.turn.scope(), &[delta]).await.classify()?;
        self.count += 1;
        Ok(())
    }
}
