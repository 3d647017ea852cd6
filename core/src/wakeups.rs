//! Per-session wake-ups from Postgres `LISTEN/NOTIFY`: one listening connection per process,
//! fanned out only to the waiters of the notified session. Waiters re-read the database when
//! woken, so a lost notification costs latency, never an event: after the listening
//! connection drops, every waiter is woken to re-read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgListener;
use tokio::sync::watch;
use uuid::Uuid;

use crate::store::{EVENTS_CHANNEL, Store};

#[derive(Default)]
pub struct SessionWakeups {
    senders: Mutex<HashMap<Uuid, watch::Sender<u64>>>,
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

    pub fn wake(&self, session_id: Uuid) {
        let mut senders = self.senders.lock().expect("wakeups lock");
        if let Some(sender) = senders.get(&session_id) {
            if sender.receiver_count() == 0 {
                senders.remove(&session_id);
            } else {
                sender.send_modify(|n| *n += 1);
            }
        }
    }

    pub fn wake_all(&self) {
        let senders = self.senders.lock().expect("wakeups lock");
        for sender in senders.values() {
            sender.send_modify(|n| *n += 1);
        }
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
                    Ok(Some(notification)) => {
                        if let Ok(session_id) = notification.payload().parse() {
                            wakeups.wake(session_id);
                        }
                    }
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
