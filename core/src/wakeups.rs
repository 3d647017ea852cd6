//! Wake-ups from Postgres `LISTEN/NOTIFY`: one listening connection per process. Each commit
//! of events notifies once, naming the sessions that got new events (comma separated). Two
//! ways to listen:
//!
//! - [`subscribe`](SessionWakeups::subscribe): one session's watch, for a worker's activity
//!   waiting on that session;
//! - [`subscribe_all`](SessionWakeups::subscribe_all): every notification, for an api process
//!   that reads all the sessions it follows at once.
//!
//! Readers re-read the database when woken, so a lost notification costs latency, never an
//! event: after the listening connection drops, everyone is woken to re-read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::store::{EVENTS_CHANNEL, Store};

/// What a notification says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Woken {
    /// These sessions got new events.
    Sessions(Arc<[Uuid]>),
    /// Any session may have: the connection dropped, or a listener fell behind.
    All,
}

pub struct SessionWakeups {
    senders: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
    all: broadcast::Sender<Woken>,
}

impl Default for SessionWakeups {
    fn default() -> Self {
        SessionWakeups { senders: Mutex::default(), all: broadcast::channel(4096).0 }
    }
}

impl SessionWakeups {
    /// A receiver that changes whenever the session gets new events. Subscribe before
    /// reading, so nothing committed after the read can be missed.
    pub fn subscribe(&self, session_id: Uuid) -> watch::Receiver<u64> {
        let mut senders = self.senders.lock().expect("wakeups lock");
        if let Some(sender) = senders.get(&session_id) {
            return sender.subscribe();
        }
        // Forget sessions nobody waits on any more, now and then.
        if senders.len() >= 1024 && senders.len().is_power_of_two() {
            senders.retain(|_, sender| sender.receiver_count() > 0);
        }
        let (sender, receiver) = watch::channel(0);
        senders.insert(session_id, sender);
        receiver
    }

    /// Every notification. A receiver that falls behind gets `Lagged`: treat it as [`Woken::All`].
    pub fn subscribe_all(&self) -> broadcast::Receiver<Woken> {
        self.all.subscribe()
    }

    fn wake(&self, sessions: Arc<[Uuid]>) {
        {
            let mut senders = self.senders.lock().expect("wakeups lock");
            for session_id in sessions.iter() {
                if let Some(sender) = senders.get(session_id) {
                    if sender.receiver_count() == 0 {
                        senders.remove(session_id);
                    } else {
                        sender.send_modify(|n| *n += 1);
                    }
                }
            }
        }
        let _ = self.all.send(Woken::Sessions(sessions));
    }

    fn wake_all(&self) {
        for sender in self.senders.lock().expect("wakeups lock").values() {
            sender.send_modify(|n| *n += 1);
        }
        let _ = self.all.send(Woken::All);
    }

    /// Listens for event notifications until the process ends, reconnecting on failure.
    /// Returns once the first LISTEN is in place, so callers may rely on it.
    pub async fn start(self: &Arc<Self>, store: &Store) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(store.pool()).await?;
        listener.listen(EVENTS_CHANNEL).await?;
        let wakeups = self.clone();
        let pool = store.pool().clone();
        tokio::spawn(async move {
            loop {
                match listener.try_recv().await {
                    Ok(Some(notification)) => wakeups.wake(parse_sessions(notification.payload())),
                    // The connection dropped; sqlx reconnects on the next call. Whatever
                    // was notified meanwhile is unknown, so everyone re-reads.
                    Ok(None) => wakeups.wake_all(),
                    Err(err) => {
                        tracing::warn!(error = %err, "event listener lost Postgres; reconnecting");
                        wakeups.wake_all();
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        if let Ok(fresh) = PgListener::connect_with(&pool).await {
                            listener = fresh;
                            if listener.listen(EVENTS_CHANNEL).await.is_ok() {
                                wakeups.wake_all();
                            }
                        }
                    }
                }
            }
        });
        Ok(())
    }
}

/// The sessions a notification names: one id, or several comma separated.
fn parse_sessions(payload: &str) -> Arc<[Uuid]> {
    payload.split(',').filter_map(|id| id.trim().parse().ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_one_session_or_several() {
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        assert_eq!(&*parse_sessions(&a.to_string()), &[a]);
        assert_eq!(&*parse_sessions(&format!("{a},{b}")), &[a, b]);
        assert!(parse_sessions("").is_empty());
    }
}
