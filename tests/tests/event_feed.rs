//! The per-session event feed against real PostgreSQL: a client that falls behind the
//! broadcast reads what it missed from the database, and gets every event once, in order.
//! Run through `ops/test`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::json;
use soma_api::feed::{Feeds, follow};
use soma_core::SessionWakeups;
use soma_core::store::{NewEvent, NewTurn};
use soma_tests::{DEADLINE, TestApp};
use soma_workflows::{TurnRef, event_kind};

fn delta(turn: &TurnRef, n: usize) -> Vec<NewEvent> {
    vec![NewEvent {
        kind: event_kind::LLM_DELTA,
        payload: json!({ "text": format!("{n} "), "attempt": 1, "index": n }),
        dedupe_key: format!("{}:feed-test:{n}", turn.turn_id),
    }]
}

#[tokio::test]
async fn a_client_that_falls_behind_the_broadcast_catches_up_from_the_database() {
    let app = TestApp::spawn("lagging_client", Default::default()).await;
    let store = app.store.clone();
    // A stored turn to hang events on; no workflow is started for it.
    let accepted = store
        .accept_turn(&NewTurn {
            tenant_id: "tenant-a",
            session_id: None,
            idempotency_key: None,
            message: "feed test",
            persona_id: None,
            request_id: "feed-test",
        })
        .await
        .unwrap();
    let turn = TurnRef {
        tenant_id: "tenant-a".into(),
        session_id: accepted.session_id,
        turn_id: accepted.turn_id,
        request_id: accepted.request_id,
    };
    let wakeups = Arc::new(SessionWakeups::default());
    wakeups.start(&store).await.unwrap();
    // Room for two events: a client that misses more than that has lagged.
    let feeds = Feeds::new(store.clone(), wakeups).with_broadcast_capacity(2);
    let feed = feeds.feed(&turn.tenant_id, turn.session_id).await.unwrap();
    let (_closing, closing) = tokio::sync::watch::channel(false);
    let mut client =
        Box::pin(follow(store.clone(), turn.tenant_id.clone(), turn.session_id, 0, feed.clone(), closing));

    // The client takes the first event, then stops reading while ten more are appended.
    store.append_events(&turn, &delta(&turn, 0)).await.unwrap();
    let first = tokio::time::timeout(DEADLINE, client.next()).await.unwrap().unwrap();
    let mut probe = feed.subscribe();
    for n in 1..=10 {
        store.append_events(&turn, &delta(&turn, n)).await.unwrap();
    }
    // The feed broadcasts in order: once the last one is out, the client has lagged.
    let last_id = loop {
        match tokio::time::timeout(DEADLINE, probe.recv()).await.expect("the feed broadcasts") {
            Ok(event)
                if serde_json::from_str::<serde_json::Value>(&event.data).unwrap()["payload"]["index"]
                    == 10 =>
            {
                break event.id;
            }
            Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
            Err(err) => panic!("feed closed: {err}"),
        }
    };

    let mut ids = vec![first.id];
    let mut texts = vec![first.data.clone()];
    while *ids.last().unwrap() < last_id {
        let event = tokio::time::timeout(Duration::from_secs(10), client.next())
            .await
            .expect("the lagging client gets the events it missed")
            .expect("stream open");
        ids.push(event.id);
        texts.push(event.data.clone());
    }
    assert_eq!(ids.len(), 11, "every event once: {ids:?}");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "in order: {ids:?}");
    for (n, text) in texts.iter().enumerate() {
        let data: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(data["payload"]["index"], n, "event {n} is {text}");
    }
    // Nothing more arrives (the two events still in the broadcast were already sent).
    let extra = tokio::time::timeout(Duration::from_millis(300), client.next()).await;
    assert!(extra.is_err(), "no duplicate after catching up: {extra:?}");
}
