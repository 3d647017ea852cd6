//! `SessionActivities`: a turn's writes to its session (messages, statuses, events, audit),
//! holding the store. Each is safe to run more than once: every write is keyed by the turn.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use temporalio_macros::activities;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use uuid::Uuid;

use soma_contract::events::{ErrorCode, ErrorEvent, TurnEnd, UserMessage};
use soma_contract::events::SessionDeleted;
use soma_contract::{MessageStatus, Role, SessionEvent, SessionRef, TurnOutcome, TurnRef, TurnStatus};
use soma_core::SessionWakeups;
use soma_core::store::{AttachmentRow, AuditEntry, Requester, Store, StoreError, TurnStart};
use soma_workflows::activities::{AssistantMessageInput, FinishTurnInput, TurnBegin, defs};
use temporalio_client::errors::WorkflowInteractionError;
use temporalio_client::{UntypedWorkflow, WorkflowCancelOptions};

use crate::failure::Classify;
use crate::maintenance::SessionPurger;
use crate::policy::{CONVERSATION_SEND, Decision, Policy, PolicyInput};

/// How long a wait goes without re-reading, if no wake-up comes; also its heartbeat period.
const WAIT_RECHECK: Duration = Duration::from_secs(2);

/// Who the audit log names for what the workflows do.
pub const WORKER_ACTOR: &str = "worker";

pub struct SessionActivitiesImpl {
    store: Store,
    wakeups: Arc<SessionWakeups>,
    policy: Arc<Policy>,
    /// Removes a deleted session with its files (and memories, if configured).
    purger: SessionPurger,
}

impl SessionActivitiesImpl {
    /// `wakeups` must be listening (`SessionWakeups::start`) for waits to end promptly.
    pub fn new(store: Store, wakeups: Arc<SessionWakeups>, policy: Arc<Policy>, purger: SessionPurger) -> Self {
        Self { store, wakeups, policy, purger }
    }

    /// Waits, heartbeating, while `still()` holds: re-checked whenever the session has news
    /// (a turn's end event wakes it) and every few seconds as a backstop.
    async fn wait_while<F, Fut>(&self, ctx: &ActivityContext, session_id: Uuid, still: F) -> Result<(), ActivityError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<bool, StoreError>>,
    {
        // Subscribe before reading: news that comes after the read wakes us.
        let mut woken = self.wakeups.subscribe(session_id);
        while still().await.classify()? {
            ctx.record_heartbeat(()).await?;
            tokio::select! {
                _ = ctx.cancelled() => return Err(ActivityError::cancelled()),
                _ = woken.changed() => {}
                _ = tokio::time::sleep(WAIT_RECHECK) => {}
            }
        }
        Ok(())
    }
}

#[activities]
impl SessionActivitiesImpl {
    #[activity(definition = defs::BeginTurn)]
    pub async fn begin_turn(
        self: Arc<Self>,
        _ctx: ActivityContext,
        turn: TurnRef,
    ) -> Result<TurnBegin, ActivityError> {
        let begun = match self.store.begin_turn(&turn.tenant_id, turn.turn_id, Uuid::now_v7()).await.classify()? {
            TurnStart::Begun(begun) => begun,
            TurnStart::WaitForEarlier => return Ok(TurnBegin::WaitForEarlier),
            // Gone: fails the step at once rather than waiting for ever.
            TurnStart::Missing => return Err(StoreError::TurnNotFound).classify(),
        };
        let event = SessionEvent::MessageUser(UserMessage {
            message_id: begun.message_id,
            role: Role::User,
            content: begun.user_message.clone(),
            persona_id: begun.persona_id.clone(),
            seq: begun.seq,
        });
        self.store.append_events(&turn.scope(), &[event]).await.classify()?;
        let session = turn.session_id.to_string();
        let input = PolicyInput {
            tenant: &turn.tenant_id,
            persona_id: begun.persona_id.as_deref(),
            action: CONVERSATION_SEND,
            resource: &session,
            context: json!({ "turn_id": turn.turn_id, "message_bytes": begun.user_message.len() }),
        };
        Ok(match self.policy.decide(&input).await {
            Decision::Allow if begun.attachments > 0 => TurnBegin::BegunWithAttachments,
            Decision::Allow => TurnBegin::Begun,
            Decision::Deny(reason) => TurnBegin::Denied { reason },
        })
    }

    #[activity(definition = defs::AwaitAttachments)]
    pub async fn await_attachments(self: Arc<Self>, ctx: ActivityContext, turn: TurnRef) -> Result<(), ActivityError> {
        let attachments = || async {
            let mut rows = Vec::new();
            for id in self.store.turn_attachment_ids(&turn.tenant_id, turn.turn_id).await? {
                // A file deleted since (with its session) is gone: nothing to wait for.
                rows.extend(self.store.attachment(&turn.tenant_id, id).await?);
            }
            Ok::<_, StoreError>(rows)
        };
        // A scan's verdict is announced on its upload's session, which wakes this wait; files
        // uploaded on their own are seen at the next re-check.
        self.wait_while(&ctx, turn.session_id, || async { Ok(attachments().await?.iter().any(|a| !a.status.is_final())) })
            .await?;
        let events: Vec<SessionEvent> = attachments()
            .await
            .classify()?
            .iter()
            .map(AttachmentRow::status_event)
            .collect();
        self.store.append_events(&turn.scope(), &events).await.classify()
    }

    #[activity(definition = defs::WaitForEarlierTurns)]
    pub async fn wait_for_earlier_turns(
        self: Arc<Self>,
        ctx: ActivityContext,
        turn: TurnRef,
    ) -> Result<(), ActivityError> {
        // A turn that is gone fails the step at once instead of waiting for ever.
        self.store.turn(&turn.tenant_id, turn.turn_id).await.classify()?;
        self.wait_while(&ctx, turn.session_id, || self.store.has_unfinished_earlier_turns(&turn.tenant_id, turn.turn_id))
            .await
    }

    #[activity(definition = defs::PersistAssistantMessage)]
    pub async fn persist_assistant_message(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: AssistantMessageInput,
    ) -> Result<Option<Uuid>, ActivityError> {
        store_reply(&self.store, &input.turn, input.status).await.classify()
    }

    #[activity(definition = defs::FinishTurn)]
    pub async fn finish_turn(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: FinishTurnInput,
    ) -> Result<(), ActivityError> {
        record_turn_end(&self.store, &input, WORKER_ACTOR).await.classify()
    }

    #[activity(definition = defs::CancelOpenTurns)]
    pub async fn cancel_open_turns(
        self: Arc<Self>,
        ctx: ActivityContext,
        session: SessionRef,
    ) -> Result<u32, ActivityError> {
        let open = self.store.open_turns(&session.tenant_id, session.session_id).await.classify()?;
        let client = ctx.client();
        for turn in &open {
            let reason = format!("the session is being deleted (request {})", session.request_id);
            let cancel = client
                .get_workflow_handle::<UntypedWorkflow>(turn.workflow_id.clone())
                .cancel(WorkflowCancelOptions::builder().reason(reason).build())
                .await;
            match cancel {
                // Already closed: it has recorded its end, or the recovery sweep will.
                Ok(()) | Err(WorkflowInteractionError::NotFound(_)) => {}
                Err(err) => return Err(err).classify(),
            }
        }
        Ok(open.len() as u32)
    }

    #[activity(definition = defs::WaitForOpenTurns)]
    pub async fn wait_for_open_turns(
        self: Arc<Self>,
        ctx: ActivityContext,
        session: SessionRef,
    ) -> Result<(), ActivityError> {
        self.wait_while(&ctx, session.session_id, || {
            self.store.session_has_open_turn(&session.tenant_id, session.session_id)
        })
        .await
    }

    #[activity(definition = defs::AnnounceSessionDeleted)]
    pub async fn announce_session_deleted(
        self: Arc<Self>,
        _ctx: ActivityContext,
        session: SessionRef,
    ) -> Result<(), ActivityError> {
        let event = SessionEvent::SessionDeleted(SessionDeleted {});
        self.store.append_events(&session.scope(), &[event]).await.classify()?;
        Ok(())
    }

    #[activity(definition = defs::PurgeSession)]
    pub async fn purge_session(
        self: Arc<Self>,
        _ctx: ActivityContext,
        session: SessionRef,
    ) -> Result<bool, ActivityError> {
        let by = Requester {
            actor: &session.actor,
            request_id: &session.request_id,
            trace_id: session.trace_id.as_deref(),
        };
        Ok(self.purger.purge(&session.tenant_id, session.session_id, by).await?.session)
    }
}

/// Stores the reply the newest attempt streamed as the turn's assistant message, once. A turn
/// cut short keeps what was streamed (as `cancelled` or `failed`), or no message if nothing
/// was. Also used by the recovery sweep for turns whose workflow ended without doing it.
pub async fn store_reply(
    store: &Store,
    turn: &TurnRef,
    outcome: TurnOutcome,
) -> Result<Option<Uuid>, soma_core::store::StoreError> {
    let text = store.streamed_reply(&turn.tenant_id, turn.session_id, turn.turn_id).await?;
    if text.is_empty() && outcome != TurnOutcome::Completed {
        return Ok(None);
    }
    let status = MessageStatus::from(outcome);
    let id =
        store.insert_message(&turn.tenant_id, turn.session_id, turn.turn_id, Role::Assistant, &text, status).await?;
    Ok(Some(id))
}

/// Records how a turn ended: its status, an audit row, then its `error` (if it failed) and
/// `turn.*` events, last, so a client that sees the end finds everything else recorded. Each
/// write is keyed, so recording the same end again changes nothing. Also used by the recovery
/// sweep for turns whose workflow ended without doing it.
pub async fn record_turn_end(
    store: &Store,
    input: &FinishTurnInput,
    actor: &str,
) -> Result<(), soma_core::store::StoreError> {
    let turn = &input.turn;
    // Status first: the events below wake the session's next turn, which reads it.
    store.set_turn_status(&turn.tenant_id, turn.turn_id, TurnStatus::from(input.status)).await?;
    let details = json!({ "reason": input.reason, "assistant_message_id": input.assistant_message_id });
    let entry = AuditEntry::for_turn(turn, actor, "turn.finish", input.status.as_str(), details);
    store.audit(&entry.once(format!("{}:turn.finish", turn.turn_id))).await?;
    let mut events = Vec::new();
    if input.status == TurnOutcome::Failed {
        events.push(SessionEvent::Error(ErrorEvent {
            code: input.code.unwrap_or(ErrorCode::TurnFailed),
            message: input.reason.clone().unwrap_or_else(|| "the turn failed".into()),
        }));
    }
    events.push(SessionEvent::turn_end(TurnEnd {
        status: input.status,
        assistant_message_id: input.assistant_message_id,
        reason: input.reason.clone(),
    }));
    store.append_events(&turn.scope(), &events).await?;
    tracing::info!(session_id = %turn.session_id, turn_id = %turn.turn_id, request_id = %turn.request_id,
                   status = %input.status, reason = input.reason.as_deref(), "turn finished");
    Ok(())
}
