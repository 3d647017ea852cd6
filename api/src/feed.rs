//! Session feeds: however many clients follow a session through this process, its new events
//! are read once and broadcast to them. One task reads for every session the process follows:
//! each Postgres notification names the sessions that got events, and one query reads all of
//! them after where each was ([`Store::events_after_each`]). Each client first catches up from
//! the database after its own `Last-Event-ID`, then takes the broadcast, skipping what it
//! already sent; a client too slow for the broadcast catches up from the database again. So
//! 1,000 clients on 50 sessions cost one read per notification, not 50 or 1,000.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, mpsc, watch};
use uuid::Uuid;

use soma_core::store::StoredEvent;
use soma_core::wakeups::Woken;
use soma_core::{SessionWakeups, Store};

/// Events a slow client may fall behind before it re-reads from the database.
const BROADCAST_CAPACITY: usize = 1024;
/// Events read per query (per session, when the feed reads many sessions at once).
pub const PAGE: i64 = 500;

/// An event as its SSE frame's parts, rendered once however many clients receive it.
#[derive(Debug)]
pub struct RenderedEvent {
    pub id: i64,
    pub kind: String,
    /// The contract's `EventData`, as JSON.
    pub data: String,
    /// The whole SSE frame, written as it is to every client (a shared buffer, not a copy).
    pub frame: bytes::Bytes,
}

impl RenderedEvent {
    /// `data` is the contract's `EventData`: `{type, meta, payload}`.
    pub fn render(event: StoredEvent) -> RenderedEvent {
        let id = event.id;
        let data = event.into_data();
        let json = serde_json::to_string(&data).expect("event data serializes");
        // Compact JSON has no line breaks, so `data:` is one line.
        let frame = format!("id: {id}\nevent: {}\ndata: {json}\n\n", data.kind).into();
        RenderedEvent { id, kind: data.kind, data: json, frame }
    }

    /// Whether it is the last event of its session's stream (`session.deleted`).
    pub fn ends_stream(&self) -> bool {
        soma_contract::SessionEvent::kind_ends_stream(&self.kind)
    }
}

/// A session's broadcast, shared by the clients of this process that follow it. The feed's
/// reader stops reading the session once the last of them is gone.
pub struct SessionFeed {
    events: broadcast::Sender<Arc<RenderedEvent>>,
}

impl SessionFeed {
    /// Subscribe before catching up from the database, so nothing committed meanwhile is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RenderedEvent>> {
        self.events.subscribe()
    }
}

/// A followed session: whose it is, the last event read, and its broadcast while it has clients.
struct Followed {
    tenant_id: String,
    cursor: i64,
    feed: Weak<SessionFeed>,
}

struct Shared {
    store: Store,
    sessions: Mutex<HashMap<Uuid, Followed>>,
    /// Sessions to read now, whatever the notifications say (one just followed).
    read_now: mpsc::UnboundedSender<Uuid>,
}

pub struct Feeds {
    shared: Arc<Shared>,
    capacity: usize,
}

impl Feeds {
    /// The feeds of this process, and the task that reads for them.
    pub fn new(store: Store, wakeups: Arc<SessionWakeups>) -> Self {
        let (read_now, reads) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared { store, sessions: Mutex::default(), read_now });
        tokio::spawn(read_followed_sessions(shared.clone(), wakeups.subscribe_all(), reads));
        Self { shared, capacity: BROADCAST_CAPACITY }
    }

    /// How many events a client may fall behind before it re-reads from the database (tests
    /// make it tiny to drive that path).
    pub fn with_broadcast_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// The session's feed, started if no client of this process follows it yet. The caller
    /// has checked that the session belongs to `tenant_id`.
    pub async fn feed(
        &self,
        tenant_id: &str,
        session_id: Uuid,
    ) -> Result<Arc<SessionFeed>, soma_core::store::StoreError> {
        let live = |sessions: &HashMap<Uuid, Followed>| sessions.get(&session_id).and_then(|f| f.feed.upgrade());
        if let Some(feed) = live(&self.shared.sessions.lock().expect("feeds lock")) {
            return Ok(feed);
        }
        let cursor = self.shared.store.last_event_id(tenant_id, session_id).await?;
        let mut sessions = self.shared.sessions.lock().expect("feeds lock");
        if let Some(feed) = live(&sessions) {
            return Ok(feed); // another client started it meanwhile
        }
        let feed = Arc::new(SessionFeed { events: broadcast::channel(self.capacity).0 });
        let followed = Followed { tenant_id: tenant_id.to_string(), cursor, feed: Arc::downgrade(&feed) };
        sessions.insert(session_id, followed);
        // A notification that came between reading the cursor and following the session found
        // nobody following it: read once now.
        let _ = self.shared.read_now.send(session_id);
        Ok(feed)
    }
}

/// One client's events after `after`: first what the database has, then the session's feed,
/// skipping what was already sent; when the client falls behind the feed it reads from the
/// database again. Ends after the session's last event (`session.deleted`), when the feed
/// ends, or when `closing` turns true.
pub fn follow(
    store: Store,
    tenant_id: String,
    session_id: Uuid,
    mut after: i64,
    feed: Arc<SessionFeed>,
    mut closing: watch::Receiver<bool>,
) -> impl Stream<Item = Arc<RenderedEvent>> {
    // Subscribe before the first read: whatever commits after it comes through the feed.
    let mut live = feed.subscribe();
    async_stream::stream! {
        let _feed = feed; // keeps the session's feed running while this client follows it
        // Armed once for the client's whole stream, not once per event.
        let mut closed = std::pin::pin!(async move { drop(closing.wait_for(|closing| *closing).await) });
        let mut catching_up = true;
        loop {
            if catching_up {
                let page = next_page(&store, &tenant_id, session_id, after).await;
                catching_up = page.len() as i64 == PAGE;
                for event in page {
                    after = event.id;
                    let rendered = Arc::new(RenderedEvent::render(event));
                    let last = rendered.ends_stream();
                    yield rendered;
                    if last {
                        return;
                    }
                }
                continue;
            }
            tokio::select! {
                received = live.recv() => match received {
                    Ok(event) if event.id <= after => {}
                    Ok(event) => {
                        after = event.id;
                        let last = event.ends_stream();
                        yield event;
                        if last {
                            return;
                        }
                    }
                    // Too slow for the broadcast: read what was missed from the database.
                    Err(broadcast::error::RecvError::Lagged(_)) => catching_up = true,
                    Err(broadcast::error::RecvError::Closed) => break,
                },
                // The client reconnects to another (or the restarted) API with Last-Event-ID.
                () = &mut closed => break,
            }
        }
    }
}

/// Reads the new events of every followed session that a notification names (all of them
/// when a notification may have been missed), in one query per round, and broadcasts them.
async fn read_followed_sessions(
    shared: Arc<Shared>,
    mut woken: broadcast::Receiver<Woken>,
    mut read_now: mpsc::UnboundedReceiver<Uuid>,
) {
    let (mut pending, mut everything) = (HashSet::new(), false);
    loop {
        if pending.is_empty() && !everything {
            tokio::select! {
                notification = woken.recv() => match notification {
                    Ok(Woken::Sessions(ids)) => pending.extend(ids.iter().copied()),
                    Ok(Woken::All) | Err(broadcast::error::RecvError::Lagged(_)) => everything = true,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                Some(id) = read_now.recv() => { pending.insert(id); }
            }
        }
        // Whatever else came meanwhile goes in the same read.
        loop {
            match woken.try_recv() {
                Ok(Woken::Sessions(ids)) => pending.extend(ids.iter().copied()),
                Ok(Woken::All) | Err(broadcast::error::TryRecvError::Lagged(_)) => everything = true,
                Err(_) => break,
            }
        }
        while let Ok(id) = read_now.try_recv() {
            pending.insert(id);
        }
        let cursors: Vec<(Uuid, String, i64)> = {
            let mut sessions = shared.sessions.lock().expect("feeds lock");
            sessions.retain(|_, followed| followed.feed.strong_count() > 0);
            sessions
                .iter()
                .filter(|(id, _)| everything || pending.contains(*id))
                .map(|(id, followed)| (*id, followed.tenant_id.clone(), followed.cursor))
                .collect()
        };
        pending.clear();
        everything = false;
        if cursors.is_empty() {
            continue;
        }
        let events = read_retrying(&shared.store, &cursors).await;
        let mut read_per_session: HashMap<Uuid, i64> = HashMap::new();
        let mut sessions = shared.sessions.lock().expect("feeds lock");
        for event in events {
            *read_per_session.entry(event.session_id).or_default() += 1;
            let Some(followed) = sessions.get_mut(&event.session_id) else { continue };
            if event.id <= followed.cursor {
                continue;
            }
            followed.cursor = event.id;
            if let Some(feed) = followed.feed.upgrade() {
                // No receivers is fine: a client may be between catch-up and subscribing.
                let _ = feed.events.send(Arc::new(RenderedEvent::render(event)));
            }
        }
        // A full page: there may be more; read it at once.
        pending.extend(read_per_session.into_iter().filter(|(_, n)| *n == PAGE).map(|(id, _)| id));
    }
}

/// Up to [`PAGE`] new events of each session, in session then id order; while the database
/// fails, waits and tries again (readers have nothing better to do than wait for it).
async fn read_retrying(store: &Store, cursors: &[(Uuid, String, i64)]) -> Vec<StoredEvent> {
    loop {
        match store.events_after_each(cursors, PAGE).await {
            Ok(events) => return events,
            Err(err) => {
                tracing::warn!(error = %err, sessions = cursors.len(), "reading events failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The session's next [`PAGE`] of events after `after`, for one client catching up.
pub async fn next_page(store: &Store, tenant_id: &str, session_id: Uuid, after: i64) -> Vec<StoredEvent> {
    read_retrying(store, &[(session_id, tenant_id.to_string(), after)]).await
}
