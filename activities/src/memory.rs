//! `MemoryActivities`: recall for a turn's prompt, and each memory write's steps, holding the
//! memory backend, the store and the policy. Each is safe to run again: the write's key makes
//! the backend write idempotent, statuses only move forward, events and audit rows are keyed.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use serde_json::json;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};

use soma_contract::events::{MemoryRecall, MemoryWrite, RecalledMemory};
use soma_contract::memory::{MemoryPayload, MemoryRetry, memory_key};
use soma_contract::{
    AttachmentStatus, DeadLetterStatus, MemoryRole, MemoryWriteRef, MemoryWriteStatus, MessageStatus, RecallStatus, Role,
    SessionEvent, TurnRef,
};
use soma_core::memory::{MemoryBackend, MemoryError};
use soma_contract::api::{MaintenanceBatch, MemoryItem};
use soma_core::store::{AuditEntry, DeadLetterFilter, MAINTENANCE_ACTOR, MemoryWriteRow, Store, StoreError};
use soma_workflows::activities::{DeadLetterInput, defs};
use soma_workflows::{MemoryWriteInput, MemoryWriteWorkflow};

use crate::failure::Classify;
use crate::policy::{Decision, MEMORY_WRITE, Policy, PolicyInput};
use crate::session::WORKER_ACTOR;

/// About this many characters make a token, for the recall's token budget.
const CHARS_PER_TOKEN: usize = 4;
/// How much of a recalled memory `memory.recall` shows.
const PREVIEW_CHARS: usize = 120;

/// What memory needs from the deployment.
#[derive(Debug, Clone)]
pub struct MemorySettings {
    pub namespace: String,
    pub recall_top_k: u32,
    pub recall_token_budget: u32,
    pub recall_timeout: Duration,
    pub retry: MemoryRetry,
    /// Remember the text of the clean files a user's message carries.
    pub remember_attachments: bool,
}

pub struct MemoryActivitiesImpl {
    store: Store,
    backend: MemoryBackend,
    policy: Arc<Policy>,
    settings: MemorySettings,
}

impl MemoryActivitiesImpl {
    pub fn new(store: Store, backend: MemoryBackend, policy: Arc<Policy>, settings: MemorySettings) -> Self {
        Self { store, backend, policy, settings }
    }

    async fn write_row(&self, write: &MemoryWriteRef) -> Result<Option<MemoryWriteRow>, ActivityError> {
        self.store.memory_write(&write.tenant_id, &write.key).await.classify()
    }

    /// Emits `memory.write` on the write's stream (if its session is still there).
    async fn announce(&self, write: &MemoryWriteRef, event: MemoryWrite) -> Result<(), StoreError> {
        match write.scope() {
            Some(scope) => self.store.append_events(&scope, &[SessionEvent::MemoryWrite(event)]).await,
            None => Ok(()),
        }
    }

    /// Records how a write ended, for the audit log (once per outcome).
    async fn audit(&self, write: &MemoryWriteRef, outcome: MemoryWriteStatus, details: serde_json::Value) -> Result<(), StoreError> {
        let entry = AuditEntry::for_memory_write(write, WORKER_ACTOR, MEMORY_WRITE, outcome.as_str(), details);
        // A replayed write may end the same way again: one row per dead letter, not per key.
        let once = format!("{}:memory.write:{outcome}:{}", write.key, write.request_id);
        self.store.audit(&entry.once(once)).await
    }
}

/// Something to remember: a message, or a tool's result.
pub struct Remembered {
    /// The message's or the tool call's ID.
    pub id: Uuid,
    /// The payload's `type`.
    pub kind: &'static str,
    pub role: MemoryRole,
    pub content: String,
    pub persona_id: Option<String>,
    /// When it was stored: part of its key, so every retry writes the same memory.
    pub stored_at: DateTime<Utc>,
}

/// Where a remembered item comes from: its session, turn and request.
pub struct Origin {
    pub tenant_id: String,
    pub session_id: Uuid,
    pub turn_id: Option<Uuid>,
    pub request_id: String,
    pub trace_id: Option<String>,
}

impl From<&TurnRef> for Origin {
    fn from(turn: &TurnRef) -> Self {
        Origin {
            tenant_id: turn.tenant_id.clone(),
            session_id: turn.session_id,
            turn_id: Some(turn.turn_id),
            request_id: turn.request_id.clone(),
            trace_id: turn.trace_id.clone(),
        }
    }
}

/// Records the memory write `item` owes (once per key, in the platform's payload shape) and
/// starts its `MemoryWriteWorkflow` without waiting for it, unless the write has already ended.
/// Returns whether a workflow was started (or joined).
pub async fn owe_memory_write(
    store: &Store,
    ctx: &ActivityContext,
    settings: &MemorySettings,
    origin: &Origin,
    item: Remembered,
) -> Result<bool, ActivityError> {
    let key = memory_key(&origin.tenant_id, &settings.namespace, origin.session_id, item.role, item.stored_at, &item.content);
    let payload = MemoryPayload {
        id: item.id,
        kind: item.kind.into(),
        role: item.role,
        content: item.content,
        attachments: Vec::new(),
        session_id: Some(origin.session_id),
        persona_id: item.persona_id,
        metadata: json!({ "tenant_id": origin.tenant_id, "turn_id": origin.turn_id,
                          "request_id": origin.request_id, "created_at": item.stored_at }),
        idempotency_key: key.clone(),
    };
    let write = MemoryWriteRef {
        tenant_id: origin.tenant_id.clone(),
        key: key.clone(),
        session_id: Some(origin.session_id),
        turn_id: origin.turn_id,
        request_id: origin.request_id.clone(),
        trace_id: origin.trace_id.clone(),
    };
    if store.stage_memory_write(&write, Some(item.role), &json!(payload)).await.classify()? != MemoryWriteStatus::Pending {
        return Ok(false);
    }
    let options = MemoryWriteWorkflow::start_options(&ctx.info().task_queue, &write);
    let input = MemoryWriteInput { write, retry: settings.retry };
    soma_core::temporal::start_once(&ctx.client(), MemoryWriteWorkflow::run, input, options).await.classify()?;
    Ok(true)
}

/// The memories that fit in `budget_chars`, best first; the one that crosses the budget is cut.
fn within_budget(hits: Vec<MemoryItem>, budget_chars: usize) -> Vec<MemoryItem> {
    let mut left = budget_chars;
    let mut kept = Vec::new();
    for mut hit in hits {
        if left == 0 {
            break;
        }
        let chars = hit.content.chars().count();
        if chars > left {
            hit.content = hit.content.chars().take(left).collect::<String>() + "…";
        }
        left = left.saturating_sub(chars);
        kept.push(hit);
    }
    kept
}

fn preview(content: &str) -> String {
    let mut preview: String = content.chars().take(PREVIEW_CHARS).collect();
    if content.chars().count() > PREVIEW_CHARS {
        preview.push('…');
    }
    preview
}

#[activities]
impl MemoryActivitiesImpl {
    #[activity(definition = defs::ReplayDeadLetters)]
    pub async fn replay_dead_letters(self: Arc<Self>, ctx: ActivityContext) -> Result<MaintenanceBatch, ActivityError> {
        if !self.backend.is_ready().await {
            let summary = format!("the {} memory backend does not answer yet: nothing replayed", self.backend.name());
            return Ok(MaintenanceBatch { items: 0, more: false, summary });
        }
        let batch = 100;
        let filter = DeadLetterFilter { limit: batch, ..Default::default() };
        let letters = self.store.dead_letters(&filter).await.classify()?;
        let request_id = ctx.info().workflow_id.clone().unwrap_or_default();
        let mut replayed = 0u64;
        for letter in &letters {
            let resolution = Some("the memory backend answers again");
            let details = json!({ "workflow_id": MemoryWriteWorkflow::workflow_id(&letter.key) });
            let by = MAINTENANCE_ACTOR;
            let request = (request_id.as_str(), None);
            let resolved = self
                .store
                .resolve_dead_letter(letter.id, DeadLetterStatus::Replayed, by, resolution, request, details)
                .await
                .classify()?;
            if !resolved {
                continue;
            }
            let write = letter.memory_write(&request_id, None);
            let options = MemoryWriteWorkflow::start_options(&ctx.info().task_queue, &write);
            let input = MemoryWriteInput { write, retry: self.settings.retry };
            // If this fails the replay stays recorded: the worker's sweep starts the owed write.
            soma_core::temporal::start_once(&ctx.client(), MemoryWriteWorkflow::run, input, options).await.classify()?;
            replayed += 1;
        }
        let more = letters.len() as i64 >= batch;
        Ok(MaintenanceBatch { items: replayed, more, summary: format!("{replayed} dead letters replayed") })
    }

    #[activity(definition = defs::RecallForTurn)]
    pub async fn recall_for_turn(self: Arc<Self>, _ctx: ActivityContext, turn: TurnRef) -> Result<RecallStatus, ActivityError> {
        let query = self.store.turn(&turn.tenant_id, turn.turn_id).await.classify()?.user_message;
        let settings = &self.settings;
        let recall = self.backend.recall(&turn.tenant_id, &query, None, settings.recall_top_k);
        let (status, hits, reason) = match tokio::time::timeout(settings.recall_timeout, recall).await {
            Ok(Ok(recalled)) => {
                let budget = settings.recall_token_budget as usize * CHARS_PER_TOKEN;
                let status = if recalled.degraded { RecallStatus::Degraded } else { RecallStatus::Recalled };
                let reason = recalled.degraded.then(|| recalled.reasons.join("; "));
                (status, within_budget(recalled.hits, budget), reason)
            }
            Ok(Err(err)) => (RecallStatus::Unavailable, Vec::new(), Some(err.to_string())),
            Err(_) => {
                let waited = settings.recall_timeout.as_millis();
                (RecallStatus::Unavailable, Vec::new(), Some(format!("memory did not answer within {waited} ms")))
            }
        };
        if hits.is_empty() && status == RecallStatus::Recalled {
            // Nothing relevant: nothing to record.
            return Ok(status);
        }
        if !hits.is_empty() {
            let recalled: Vec<_> =
                hits.iter().map(|h| json!({ "key": h.key, "score": h.score, "content": h.content })).collect();
            self.store.set_turn_recall(&turn.tenant_id, turn.turn_id, &json!(recalled)).await.classify()?;
        }
        if let Some(reason) = &reason {
            tracing::warn!(turn_id = %turn.turn_id, %status, %reason, "recall for the turn was not complete");
        }
        let memories =
            hits.iter().map(|h| RecalledMemory { key: h.key.clone(), score: h.score, preview: preview(&h.content) }).collect();
        let event = SessionEvent::MemoryRecall(MemoryRecall { status, memories, reason });
        self.store.append_events(&turn.scope(), &[event]).await.classify()?;
        Ok(status)
    }

    #[activity(definition = defs::RememberTurn)]
    pub async fn remember_turn(self: Arc<Self>, ctx: ActivityContext, turn: TurnRef) -> Result<u32, ActivityError> {
        let messages = self.store.turn_messages(&turn.tenant_id, turn.turn_id).await.classify()?;
        let origin = Origin::from(&turn);
        let mut started = 0;
        let mut items = Vec::new();
        // The user's message always; the reply only when it was finished.
        for message in messages.into_iter().filter(|m| m.role == Role::User || m.status == MessageStatus::Complete) {
            if message.role == Role::User && self.settings.remember_attachments {
                // The text of the clean files it carries, under the message's time.
                let files = self.store.conversation_attachments(&turn.tenant_id, turn.session_id, turn.turn_id).await.classify()?;
                for file in files.into_iter().filter(|f| f.turn_id == turn.turn_id && f.status == AttachmentStatus::Clean) {
                    let Some(text) = file.text else { continue };
                    items.push(Remembered {
                        id: file.attachment_id,
                        kind: MemoryPayload::ATTACHMENT,
                        role: MemoryRole::User,
                        content: format!("{}: {text}", file.filename),
                        persona_id: message.persona_id.clone(),
                        stored_at: message.created_at,
                    });
                }
            }
            items.push(Remembered {
                id: message.id,
                kind: MemoryPayload::CONVERSATION_EVENT,
                role: message.role.into(),
                content: message.content,
                persona_id: message.persona_id,
                stored_at: message.created_at,
            });
        }
        for item in items {
            started += u32::from(owe_memory_write(&self.store, &ctx, &self.settings, &origin, item).await?);
        }
        Ok(started)
    }

    #[activity(definition = defs::CheckMemoryWrite)]
    pub async fn check_memory_write(
        self: Arc<Self>,
        _ctx: ActivityContext,
        write: MemoryWriteRef,
    ) -> Result<bool, ActivityError> {
        let Some(row) = self.write_row(&write).await? else {
            // Its session was deleted since: nothing is owed any more.
            return Ok(false);
        };
        let role = row.role.map(MemoryRole::as_str).unwrap_or("unknown");
        let input = PolicyInput {
            tenant: &write.tenant_id,
            persona_id: None,
            action: MEMORY_WRITE,
            resource: role,
            context: json!({ "session_id": write.session_id, "turn_id": write.turn_id, "key": write.key }),
        };
        let Decision::Deny(reason) = self.policy.decide(&input).await else {
            return Ok(true);
        };
        let store = &self.store;
        store
            .set_memory_write_status(&write.tenant_id, &write.key, MemoryWriteStatus::Denied, 0, Some(&reason))
            .await
            .classify()?;
        self.audit(&write, MemoryWriteStatus::Denied, json!({ "key": write.key, "reason": reason })).await.classify()?;
        let event =
            MemoryWrite { key: write.key.clone(), role: row.role, status: MemoryWriteStatus::Denied, attempts: 0, reason: Some(reason) };
        self.announce(&write, event).await.classify()?;
        Ok(false)
    }

    #[activity(definition = defs::Remember)]
    pub async fn remember(self: Arc<Self>, ctx: ActivityContext, write: MemoryWriteRef) -> Result<(), ActivityError> {
        let Some(row) = self.write_row(&write).await? else {
            return Ok(());
        };
        let attempt = ctx.info().attempt as i32;
        if row.status != MemoryWriteStatus::Delivered {
            let payload: MemoryPayload = serde_json::from_value(row.payload.clone())
                .map_err(|e| MemoryError::Refused(format!("the stored payload is not a memory: {e}")))
                .classify()?;
            if let Err(err) = self.backend.remember(&write.tenant_id, &payload, &write.request_id).await {
                // Best effort: the failure itself is what Temporal retries.
                let message = err.to_string();
                let recorded = self
                    .store
                    .set_memory_write_status(&write.tenant_id, &write.key, MemoryWriteStatus::Pending, attempt, Some(&message))
                    .await;
                if let Err(db) = recorded {
                    tracing::warn!(key = %write.key, error = %db, "could not record a memory write's failed attempt");
                }
                return Err(err).classify();
            }
            self.store
                .set_memory_write_status(&write.tenant_id, &write.key, MemoryWriteStatus::Delivered, attempt, None)
                .await
                .classify()?;
        }
        let event = MemoryWrite {
            key: write.key.clone(),
            role: row.role,
            status: MemoryWriteStatus::Delivered,
            attempts: attempt.max(row.attempts) as u32,
            reason: None,
        };
        self.announce(&write, event).await.classify()
    }

    #[activity(definition = defs::DeadLetterMemoryWrite)]
    pub async fn dead_letter_memory_write(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: DeadLetterInput,
    ) -> Result<(), ActivityError> {
        let DeadLetterInput { write, reason } = input;
        let Some(dead_letter_id) =
            self.store.dead_letter_memory_write(&write.tenant_id, &write.key, &reason).await.classify()?
        else {
            return Ok(());
        };
        let row = self.write_row(&write).await?;
        let (role, attempts) = row.map(|r| (r.role, r.attempts)).unwrap_or((None, 0));
        let details = json!({ "key": write.key, "dead_letter_id": dead_letter_id, "reason": reason, "attempts": attempts });
        self.audit(&write, MemoryWriteStatus::DeadLettered, details).await.classify()?;
        let event = MemoryWrite {
            key: write.key.clone(),
            role,
            status: MemoryWriteStatus::DeadLettered,
            attempts: attempts as u32,
            reason: Some(reason),
        };
        self.announce(&write, event).await.classify()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hit(content: &str) -> MemoryItem {
        MemoryItem { key: content.into(), content: content.into(), score: 1.0, session_id: None, role: None, created_at: None }
    }

    #[test]
    fn recall_keeps_the_best_memories_that_fit_the_budget() {
        let kept = within_budget(vec![hit("aaaa"), hit("bbbbbb"), hit("cc")], 7);
        let contents: Vec<_> = kept.iter().map(|h| h.content.as_str()).collect();
        assert_eq!(contents, ["aaaa", "bbb…"]);
        assert!(within_budget(vec![hit("aaaa")], 0).is_empty());
    }
}

