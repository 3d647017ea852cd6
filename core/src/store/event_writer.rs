//! Group commit for event appends. A worker streams many replies at once, each writing a delta
//! every few milliseconds; writing each in a statement and a commit of its own costs Postgres a
//! commit, a WAL flush and a NOTIFY per delta, and every api process a read. Here one task per
//! process writes, at most once per window: it takes every append waiting and commits them in
//! one statement (one round trip, one NOTIFY naming the sessions). An append that finds the
//! writer idle for a window goes out at once, alone, so a single stream's latency is
//! unchanged; under load, the appends of a window go together. Only deltas wait for the
//! window: any other event (a tool call, a step's end, a turn's end) is what a workflow's next
//! step waits on, so it goes at once and takes the deltas waiting with it.
//!
//! Each caller's append returns once its rows are committed, so an activity only goes on (and
//! Temporal only hears it finished) once its events are durable. Per-session order holds: each
//! statement takes its sessions' locks before drawing ids, as a lone append did.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::StoreError;
use super::events::{EventRow, insert_event_rows};

/// At most this many rows in one statement.
const MAX_ROWS: usize = 2000;

struct Append {
    rows: Vec<EventRow>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

impl Append {
    fn may_wait(&self) -> bool {
        self.rows.iter().all(EventRow::may_wait)
    }
}

/// The process's event writer; cheap to clone.
#[derive(Clone)]
pub(super) struct EventWriter {
    queue: mpsc::UnboundedSender<Append>,
}

impl EventWriter {
    /// Starts the writer task on `pool`, committing at most once per `window`. It ends when
    /// the last handle is dropped.
    pub(super) fn start(pool: PgPool, window: Duration) -> Self {
        let (queue, appends) = mpsc::unbounded_channel();
        tokio::spawn(write(pool, window, appends));
        EventWriter { queue }
    }

    /// Appends `rows` and returns once they are committed (or could not be).
    pub(super) async fn append(&self, rows: Vec<EventRow>) -> Result<(), StoreError> {
        let (done, result) = oneshot::channel();
        self.queue.send(Append { rows, done }).map_err(|_| StoreError::WriterGone)?;
        result.await.map_err(|_| StoreError::WriterGone)?
    }
}

async fn write(pool: PgPool, window: Duration, mut appends: mpsc::UnboundedReceiver<Append>) {
    let mut last_commit = Instant::now() - window;
    while let Some(first) = appends.recv().await {
        let mut rows = first.rows.len();
        let mut wait = first.may_wait();
        let mut batch = vec![first];
        // Busy with deltas: let the rest of the window's appends come, and go with them; an
        // append that may not wait ends the window at once.
        let window_ends = last_commit + window;
        while wait && rows < MAX_ROWS {
            tokio::select! {
                _ = tokio::time::sleep_until(window_ends) => break,
                next = appends.recv() => {
                    let Some(next) = next else { break };
                    rows += next.rows.len();
                    wait = next.may_wait();
                    batch.push(next);
                }
            }
        }
        while rows < MAX_ROWS {
            let Ok(next) = appends.try_recv() else { break };
            rows += next.rows.len();
            batch.push(next);
        }
        last_commit = Instant::now();
        commit(&pool, batch).await;
    }
}

/// Commits a batch and tells each caller how it went. When the batch fails for a reason other
/// than the database being away (a row another append's session no longer accepts, say), each
/// append is written alone, so one bad append cannot fail the others.
async fn commit(pool: &PgPool, batch: Vec<Append>) {
    let rows: Vec<EventRow> = batch.iter().flat_map(|append| append.rows.iter().cloned()).collect();
    match insert_event_rows(pool, &rows).await {
        Ok(()) => batch.into_iter().for_each(|append| drop(append.done.send(Ok(())))),
        Err(err) if batch.len() > 1 && !is_connection_trouble(&err) => {
            for append in batch {
                let result = insert_event_rows(pool, &append.rows).await.map_err(StoreError::from);
                let _ = append.done.send(result);
            }
        }
        Err(err) => {
            let shared = Arc::new(err);
            for append in batch {
                let _ = append.done.send(Err(StoreError::Shared(shared.clone())));
            }
        }
    }
}

/// Whether the database could not be reached (every append would fail alike).
fn is_connection_trouble(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
}
