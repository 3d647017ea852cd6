//! Per-session event feeds: however many clients follow a session through this process, one
//! task reads the session's new events once per wake-up and broadcasts them. Each client first
//! catches up from the database after its own `Last-Event-ID`, then takes the broadcast,
//! skipping what it already sent; a client too slow for the broadcast catches up from the
//! database again. So 1,000 clients on 50 sessions cost 50 reads per wake-up, not 1,000.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use soma_core::store::StoredEvent;
use soma_core::{SessionWakeups, Store};

/// Events a slow client may fall behind before it re-reads from the database.
const BROADCAST_CAPACITY: usize = 1024;
/// Events read per query.
pub const PAGE: i64 = 500;

/// An event as its SSE frame's parts, rendered once however many clients receive it.
#[derive(Debug)]
pub struct RenderedEvent {
    pub id: i64,
    pub kind: String,
    pub data: String,
}

impl RenderedEvent {
    /// `data` is the contract's `EventData`: `{type, meta, payload}`.
    pub fn render(event: StoredEvent) -> RenderedEvent {
        let id = event.id;
        let data = event.into_data();
        let json = serde_json::to_string(&data).expect("event data serializes");
        RenderedEvent { id, kind: data.kind, data: json }
    }

    /// Whether it is the last event of its session's stream (`session.deleted`).
    pub fn ends_stream(&self) -> bool {
        soma_contract::SessionEvent::kind_ends_stream(&self.kind)
    }

    pub fn to_sse(&self) -> axum::response::sse::Event {
        axum::response::sse::Event::default().id(self.id.to_string()).event(&self.kind).data(&self.data)
    }
}

pub struct SessionFeed {
    events: broadcast::Sender<Arc<RenderedEvent>>,
    task: tokio::task::JoinHandle<()>,
}

impl SessionFeed {
    /// Subscribe before catching up from the database, so nothing committed meanwhile is missed.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RenderedEvent>> {
        self.events.subscribe()
    }
}

impl Drop for SessionFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct Feeds {
    store: Store,
    wakeups: Arc<SessionWakeups>,
    feeds: Mutex<HashMap<Uuid, Weak<SessionFeed>>>,
    capacity: usize,
}

impl Feeds {
    pub fn new(store: Store, wakeups: Arc<SessionWakeups>) -> Self {
        Self { store, wakeups, feeds: Mutex::default(), capacity: BROADCAST_CAPACITY }
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
        if let Some(feed) = self.feeds.lock().expect("feeds lock").get(&session_id).and_then(Weak::upgrade) {
            return Ok(feed);
        }
        // Wake-ups first, then the cursor: anything committed after the cursor was read wakes us.
        let woken = self.wakeups.subscribe(session_id);
        let cursor = self.store.last_event_id(tenant_id, session_id).await?;
        let mut feeds = self.feeds.lock().expect("feeds lock");
        if let Some(feed) = feeds.get(&session_id).and_then(Weak::upgrade) {
            return Ok(feed); // another client started it meanwhile
        }
        let (events, _) = broadcast::channel(self.capacity);
        let task = tokio::spawn(read_new_events(
            self.store.clone(),
            tenant_id.to_string(),
            session_id,
            cursor,
            woken,
            events.clone(),
        ));
        let feed = Arc::new(SessionFeed { events, task });
        feeds.retain(|_, feed| feed.strong_count() > 0);
        feeds.insert(session_id, Arc::downgrade(&feed));
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
                _ = async { drop(closing.wait_for(|closing| *closing).await) } => break,
            }
        }
    }
}

async fn read_new_events(
    store: Store,
    tenant_id: String,
    session_id: Uuid,
    mut cursor: i64,
    mut woken: tokio::sync::watch::Receiver<u64>,
    events: broadcast::Sender<Arc<RenderedEvent>>,
) {
    loop {
        let page = next_page(&store, &tenant_id, session_id, cursor).await;
        let full = page.len() as i64 == PAGE;
        for event in page {
            cursor = event.id;
            // No receivers is fine: a client may be between catch-up and subscribing.
            let _ = events.send(Arc::new(RenderedEvent::render(event)));
        }
        if !full && woken.changed().await.is_err() {
            return;
        }
    }
}

/// The session's next [`PAGE`] of events after `after`; while the database fails, waits and
/// tries again (the caller has nothing better to do than wait for it).
pub async fn next_page(store: &Store, tenant_id: &str, session_id: Uuid, after: i64) -> Vec<StoredEvent> {
    loop {
        match store.events_after(tenant_id, session_id, after, PAGE).await {
            Ok(page) => return page,
            Err(err) => {
                tracing::warn!(error = %err, %session_id, "reading events failed; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}
