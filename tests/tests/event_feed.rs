//! The per-session event feed against real PostgreSQL: a client that falls behind the
//! broadcast reads what it missed from the database, and gets every event once, in order.
//! Run through `ops/test`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use soma_api::feed::{Feeds, follow};
use soma_contract::events::LlmDelta;
use soma_contract::{SessionEvent, TurnRef};
use soma_core::SessionWakeups;
use soma_core::store::TurnSession;
use soma_tests::{DEADLINE, TestApp};

fn delta(n: u32) -> Vec<SessionEvent> {
    vec![SessionEvent::LlmDelta(LlmDelta { text: format!("{n} "), attempt: 1, index: n, round: 0, compacted: false })]
}

/// The index of a rendered `llm.delta`, read back through the contract.
fn delta_index(rendered: &soma_api::feed::RenderedEvent) -> u32 {
    let data: soma_contract::EventData = serde_json::from_str(&rendered.data).unwrap();
    match data.event().unwrap() {
        SessionEvent::LlmDelta(delta) => delta.index,
        other => panic!("not a delta: {other:?}"),
    }
}

#[tokio::test]
async fn a_client_that_falls_behind_the_broadcast_catches_up_from_the_database() {
    let app = TestApp::spawn("lagging_client", Default::default()).await;
    let store = app.store.clone();
    // A stored turn to hang events on; no workflow is started for it.
    let turn: TurnRef = app.store_turn(TurnSession::New(uuid::Uuid::now_v7()), "feed test").await;
    let wakeups = Arc::new(SessionWakeups::default());
    wakeups.start(&store).await.unwrap();
    // Room for two events: a client that misses more than that has lagged.
    let feeds = Feeds::new(store.clone(), wakeups).with_broadcast_capacity(2);
    let feed = feeds.feed(&turn.tenant_id, turn.session_id).await.unwrap();
    let (_closing, closing) = tokio::sync::watch::channel(false);
    let mut client =
        Box::pin(follow(store.clone(), turn.tenant_id.clone(), turn.session_id, 0, feed.clone(), closing));

    // The client takes the first event, then stops reading while ten more are appended.
    store.append_events(&turn.scope(), &delta(0)).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, client.next()).await.unwrap().unwrap();
    let mut probe = feed.subscribe();
    for n in 1..=10 {
        store.append_events(&turn.scope(), &delta(n)).await.unwrap();
    }
    // The feed broadcasts in order: once the last one is out, the client has lagged.
    let last_id = loop {
        match tokio::time::timeout(DEADLINE, probe.recv()).await.expect("the feed broadcasts") {
            Ok(event) if delta_index(&event) == 10 => break event.id,
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(err) => panic!("feed closed: {err}"),
        }
    };

    let mut ids = vec![first.id];
    let mut indexes = vec![delta_index(&first)];
    while *ids.last().unwrap() < last_id {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("the lagging client gets the events it missed")
            .expect("stream open");
        ids.push(event.id);
        indexes.push(delta_index(&event));
    }
    assert_eq!(ids.len(), 11, "every event once: {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    assert_eq!(indexes, (0..=10).collect::<Vec<u32>>(), "each delta once, in order");
    // Nothing more arrives (the two events still in the broadcast were already sent).
    let extra = tokio::time::timeout(Duration::from_millis(300), client.next()).await;
    assert!(extra.is_err(), "no duplicate after catching up: {extra:?}");
}
