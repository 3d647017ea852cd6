//! `turns`: accepted messages waiting for, or being answered by, their workflow.

use std::time::Duration;

use serde_json::json;
use uuid::Uuid;

use soma_contract::{TurnRef, TurnStatus};

use super::{AuditEntry, Requester, Store, StoreError};

/// Which session a new turn goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnSession {
    /// Start a session with this (fresh) id.
    New(Uuid),
    /// Continue the tenant's session.
    Existing(Uuid),
}

impl TurnSession {
    pub fn id(self) -> Uuid {
        match self {
            TurnSession::New(id) | TurnSession::Existing(id) => id,
        }
    }
}

/// A message to accept as a new turn. The caller chooses the IDs (the workflow ID derives
/// from them); a repeated Idempotency-Key returns the first turn's instead.
#[derive(Debug, Clone)]
pub struct NewTurn<'a> {
    pub tenant_id: &'a str,
    pub session: TurnSession,
    pub turn_id: Uuid,
    pub workflow_id: &'a str,
    pub idempotency_key: Option<&'a str>,
    pub message: &'a str,
    pub persona_id: Option<&'a str>,
    /// The tenant's uploaded files the message carries, in order.
    pub attachments: &'a [Uuid],
    /// Refuse the turn ([`StoreError::SessionBusy`]) while another turn of the session is open.
    pub refuse_if_busy: bool,
    /// Who sent it, in which request.
    pub by: Requester<'a>,
}

/// The accepted turn. `created` is false when an Idempotency-Key matched an earlier turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedTurn {
    pub turn: TurnRef,
    pub workflow_id: String,
    /// The session's newest event id when the turn was accepted.
    pub stream_after: i64,
    pub created: bool,
}

/// What an activity reads about its turn.
#[derive(Debug, Clone)]
pub struct TurnRow {
    pub seq: i32,
    pub user_message: String,
    pub persona_id: Option<String>,
    pub status: TurnStatus,
}

/// What [`Store::begin_turn`] found.
#[derive(Debug, Clone)]
pub enum TurnStart {
    /// Running, with its user message stored.
    Begun(BegunTurn),
    /// A turn accepted before it is still open: nothing was written.
    WaitForEarlier,
    /// No such turn (of this tenant).
    Missing,
}

#[derive(Debug, Clone)]
pub struct BegunTurn {
    pub seq: i32,
    pub user_message: String,
    pub persona_id: Option<String>,
    /// How many files the message carries.
    pub attachments: i32,
    pub message_id: Uuid,
}

/// A turn that has not finished, with the workflow that runs it.
#[derive(Debug, Clone)]
pub struct OpenTurn {
    pub turn_id: Uuid,
    pub workflow_id: String,
}

/// A turn as its workflow is started: its reference, its message (the workflow's memo shows
/// it) and where it stands.
#[derive(Debug, Clone)]
pub struct TurnToStart {
    pub turn: TurnRef,
    pub message: String,
    pub status: TurnStatus,
}

/// An open turn that has not moved for a while, for the recovery sweep.
#[derive(Debug, Clone)]
pub struct StalledTurn {
    pub turn: TurnRef,
    pub workflow_id: String,
    pub status: TurnStatus,
}

impl Store {
    /// Records an accepted message as a turn, in one transaction: the session is created or
    /// locked, the turn gets the next place in it, and the acceptance is audited. A repeated
    /// Idempotency-Key returns the first turn and writes nothing.
    pub async fn accept_turn(&self, new: &NewTurn<'_>) -> Result<AcceptedTurn, StoreError> {
        if let Some(existing) = self.turn_by_idempotency_key(new).await? {
            return Ok(existing);
        }
        // One statement, one round trip (this is on the way to the first token): take the turn's
        // place (locking the session row), store the turn, create its session if it starts one,
        // audit. A new session is created only with its turn, so a lost idempotency race leaves
        // nothing behind.
        let new_session = matches!(new.session, TurnSession::New(_));
        let session_id = new.session.id();
        let row = sqlx::query!(
            r#"WITH continued AS (
                   UPDATE sessions SET turn_count = turn_count + 1, updated_at = now()
                   WHERE NOT $12 AND id = $3 AND tenant_id = $2 AND deleted_at IS NULL
                     AND NOT ($11 AND EXISTS (SELECT 1 FROM open_turns WHERE session_id = $3 AND tenant_id = $2))
                   RETURNING turn_count),
               place AS (SELECT 1 AS seq WHERE $12 UNION ALL SELECT turn_count FROM continued),
               turn AS (
                   INSERT INTO turns (id, tenant_id, session_id, seq, idempotency_key, user_message, persona_id,
                                      request_id, trace_id, workflow_id, stream_after, attachment_ids)
                   SELECT $1, $2, $3, place.seq, $4, $5, $6, $7, $8, $9,
                          (SELECT coalesce(max(id), 0) FROM session_events WHERE session_id = $3), $13
                   FROM place
                   ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
                   RETURNING seq, stream_after),
               created AS (
                   INSERT INTO sessions (id, tenant_id, persona_id, turn_count)
                   SELECT $3, $2, $6, 1 FROM turn WHERE $12),
               audit AS (
                   SELECT record_audit($2, $7, $8, $3, $1, $10, 'turn.accept', 'accepted',
                                       jsonb_build_object('seq', seq, 'workflow_id', $9::text,
                                                          'message_bytes', octet_length($5)), NULL)
                   FROM turn)
               SELECT (SELECT seq FROM turn) AS seq, (SELECT stream_after FROM turn) AS stream_after,
                      (SELECT count(*) FROM audit) AS "audited!",
                      $12 OR EXISTS (SELECT 1 FROM sessions WHERE id = $3 AND tenant_id = $2 AND deleted_at IS NULL)
                          AS "session_found!""#,
            new.turn_id,
            new.tenant_id,
            session_id,
            new.idempotency_key,
            new.message,
            new.persona_id,
            new.by.request_id,
            new.by.trace_id,
            new.workflow_id,
            new.by.actor,
            new.refuse_if_busy,
            new_session,
            new.attachments,
        )
        .fetch_one(&self.pool)
        .await?;
        let Some(stream_after) = row.stream_after else {
            if !row.session_found {
                return Err(StoreError::SessionNotFound);
            }
            // A concurrent request with the same key won (ours changed nothing), or the
            // session was busy and the caller asked not to queue.
            return match self.turn_by_idempotency_key(new).await? {
                Some(existing) => Ok(existing),
                None => Err(StoreError::SessionBusy),
            };
        };
        Ok(AcceptedTurn {
            turn: TurnRef {
                tenant_id: new.tenant_id.to_string(),
                session_id,
                turn_id: new.turn_id,
                request_id: new.by.request_id.to_string(),
                trace_id: new.by.trace_id.map(str::to_string),
            },
            workflow_id: new.workflow_id.to_string(),
            stream_after,
            created: true,
        })
    }

    async fn turn_by_idempotency_key(&self, new: &NewTurn<'_>) -> Result<Option<AcceptedTurn>, StoreError> {
        let Some(key) = new.idempotency_key else { return Ok(None) };
        let row = sqlx::query!(
            r#"SELECT session_id, id, workflow_id AS "workflow_id!", request_id, trace_id, stream_after FROM turns
               WHERE tenant_id = $1 AND idempotency_key = $2"#,
            new.tenant_id,
            key,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| AcceptedTurn {
            turn: TurnRef {
                tenant_id: new.tenant_id.to_string(),
                session_id: row.session_id,
                turn_id: row.id,
                request_id: row.request_id,
                trace_id: row.trace_id,
            },
            workflow_id: row.workflow_id,
            stream_after: row.stream_after,
            created: false,
        }))
    }

    pub async fn turn(&self, tenant_id: &str, turn_id: Uuid) -> Result<TurnRow, StoreError> {
        sqlx::query_as!(
            TurnRow,
            r#"SELECT seq, user_message, persona_id, status AS "status: TurnStatus" FROM turns
               WHERE id = $1 AND tenant_id = $2"#,
            turn_id,
            tenant_id,
        )
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::TurnNotFound)
    }

    /// A turn by its id alone, as a worker starting its workflow for the api reads it (the
    /// api says which turn, the database what it is).
    pub async fn turn_to_start(&self, turn_id: Uuid) -> Result<Option<TurnToStart>, StoreError> {
        let row = sqlx::query!(
            r#"SELECT tenant_id, session_id, request_id, trace_id, user_message, status AS "status: TurnStatus"
               FROM turns WHERE id = $1"#,
            turn_id,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|row| TurnToStart {
            turn: TurnRef {
                tenant_id: row.tenant_id,
                session_id: row.session_id,
                turn_id,
                request_id: row.request_id,
                trace_id: row.trace_id,
            },
            message: row.user_message,
            status: row.status,
        }))
    }

    /// Begins a turn, in one statement (it is on the way to the first token): unless a turn
    /// accepted before it is still open, marks it running and stores its user message (once;
    /// `message_id` is the new message's id if it is new). Safe to repeat.
    pub async fn begin_turn(&self, tenant_id: &str, turn_id: Uuid, message_id: Uuid) -> Result<TurnStart, StoreError> {
        let row = sqlx::query!(
            r#"WITH this AS (
                   SELECT id, session_id, seq, status, user_message, persona_id, cardinality(attachment_ids) AS attachments,
                          status = 'queued' AND earlier_turn_open($2, id) AS waits
                   FROM turns WHERE id = $1 AND tenant_id = $2),
               started AS (
                   UPDATE turns t SET status = 'running', updated_at = now()
                   FROM this WHERE t.id = this.id AND this.status = 'queued' AND NOT this.waits),
               message AS (
                   INSERT INTO messages (id, tenant_id, session_id, turn_id, role, content, status)
                   SELECT $3, $2, session_id, id, 'user', user_message, 'complete' FROM this WHERE NOT waits
                   ON CONFLICT (turn_id, role) DO NOTHING
                   RETURNING id)
               SELECT seq, user_message, persona_id, waits AS "waits!", attachments AS "attachments!",
                      coalesce((SELECT id FROM message),
                               (SELECT id FROM messages WHERE turn_id = $1 AND role = 'user' AND tenant_id = $2))
                          AS message_id
               FROM this"#,
            turn_id,
            tenant_id,
            message_id,
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            None => TurnStart::Missing,
            Some(row) if row.waits => TurnStart::WaitForEarlier,
            Some(row) => TurnStart::Begun(BegunTurn {
                seq: row.seq,
                user_message: row.user_message,
                persona_id: row.persona_id,
                attachments: row.attachments,
                message_id: row.message_id.ok_or(StoreError::TurnNotFound)?,
            }),
        })
    }

    /// Whether a turn accepted before this one in its session has not finished yet.
    pub async fn has_unfinished_earlier_turns(&self, tenant_id: &str, turn_id: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar!(r#"SELECT earlier_turn_open($1, $2) AS "open!""#, tenant_id, turn_id)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn set_turn_status(
        &self,
        tenant_id: &str,
        turn_id: Uuid,
        status: TurnStatus,
    ) -> Result<(), StoreError> {
        sqlx::query!(
            "UPDATE turns SET status = $3, updated_at = now() WHERE id = $1 AND tenant_id = $2",
            turn_id,
            tenant_id,
            status as TurnStatus,
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Takes back a turn whose workflow could not be started (the client got an error, not a
    /// 202), so it neither blocks the session nor answers a retried Idempotency-Key; a session
    /// the turn started goes with it.
    pub async fn withdraw_turn(&self, turn: &TurnRef, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let withdrawn = sqlx::query_scalar!(
            "DELETE FROM turns WHERE id = $1 AND tenant_id = $2 AND status = 'queued' RETURNING id",
            turn.turn_id,
            turn.tenant_id,
        )
        .fetch_optional(&mut *tx)
        .await?;
        sqlx::query!(
            "DELETE FROM sessions s WHERE s.id = $1 AND s.tenant_id = $2
               AND NOT EXISTS (SELECT 1 FROM turns t WHERE t.session_id = s.id)",
            turn.session_id,
            turn.tenant_id,
        )
        .execute(&mut *tx)
        .await?;
        let details = json!({ "withdrawn": withdrawn.is_some() });
        AuditEntry::for_turn(turn, actor, "turn.accept", "withdrawn: workflow could not be started", details)
            .insert(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The session's open turns, oldest first: the one running, then those queued behind it.
    pub async fn open_turns(&self, tenant_id: &str, session_id: Uuid) -> Result<Vec<OpenTurn>, StoreError> {
        Ok(sqlx::query_as!(
            OpenTurn,
            r#"SELECT id AS "turn_id!", workflow_id AS "workflow_id!" FROM open_turns
               WHERE session_id = $1 AND tenant_id = $2
               ORDER BY seq"#,
            session_id,
            tenant_id,
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Open turns of every tenant that have not changed for `quiet_for`, oldest first: a turn
    /// whose workflow never started, or whose workflow ended without recording its end.
    pub async fn stalled_turns(&self, quiet_for: Duration, limit: i64) -> Result<Vec<StalledTurn>, StoreError> {
        let rows = sqlx::query!(
            r#"SELECT tenant_id AS "tenant_id!", session_id AS "session_id!", id AS "id!",
                      request_id AS "request_id!", trace_id, workflow_id AS "workflow_id!",
                      status AS "status!: TurnStatus"
               FROM open_turns
               WHERE updated_at < now() - make_interval(secs => $1)
               ORDER BY updated_at LIMIT $2"#,
            quiet_for.as_secs_f64(),
            limit,
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| StalledTurn {
                turn: TurnRef {
                    tenant_id: row.tenant_id,
                    session_id: row.session_id,
                    turn_id: row.id,
                    request_id: row.request_id,
                    trace_id: row.trace_id,
                },
                workflow_id: row.workflow_id,
                status: row.status,
            })
            .collect())
    }
}
