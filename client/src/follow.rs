//! Following a session's stream across broken connections: when the connection drops (an api
//! restarted, a network blip, a silent connection), reconnect with `Last-Event-ID` and go on,
//! so the caller sees every event once, in order, with a notice that it reconnected.

use std::time::Duration;

use uuid::Uuid;

use crate::sse::{EventStream, Next, SseEvent};
use crate::{Client, ClientError};

/// The server sends a heartbeat every 15 s: a connection silent for longer is broken.
const SILENCE: Duration = Duration::from_secs(40);
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// What following yields.
#[derive(Debug)]
pub enum Followed {
    Event(SseEvent),
    /// The connection broke; reconnecting after the last event seen. Events go on once it is
    /// back (a UI shows a banner meanwhile).
    Reconnecting { after: i64, why: String },
}

pub struct Follow {
    client: Client,
    session_id: Uuid,
    last_id: i64,
    stream: Option<EventStream>,
    backoff: Duration,
    /// A connection broke and has not been replaced yet.
    broken: bool,
    ended: bool,
    /// Connections made after the first.
    pub reconnects: usize,
}

impl Follow {
    pub(crate) fn new(client: Client, session_id: Uuid, after: i64) -> Self {
        Follow {
            client,
            session_id,
            last_id: after,
            stream: None,
            backoff: FIRST_BACKOFF,
            broken: false,
            ended: false,
            reconnects: 0,
        }
    }

    /// The id of the last event yielded.
    pub fn last_id(&self) -> i64 {
        self.last_id
    }

    /// The next event (or reconnect notice); `None` after the session's last event
    /// (`session.deleted`). An error is one that reconnecting cannot mend: the key is refused,
    /// the session is gone.
    pub async fn next(&mut self) -> Result<Option<Followed>, ClientError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            let Some(stream) = self.stream.as_mut() else {
                match self.client.events(self.session_id, Some(self.last_id)).await {
                    Ok(stream) => {
                        if std::mem::take(&mut self.broken) {
                            self.reconnects += 1;
                        }
                        self.backoff = FIRST_BACKOFF;
                        self.stream = Some(stream);
                    }
                    Err(err) if err.is_permanent() => return Err(err),
                    Err(_) => {
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                }
                continue;
            };
            let why = match stream.next(SILENCE).await? {
                Next::Event(event) => {
                    self.last_id = event.id;
                    self.ended = event.typed().is_some_and(|e| e.ends_stream());
                    return Ok(Some(Followed::Event(event)));
                }
                Next::Idle => "the connection went silent",
                Next::Closed => "the connection closed",
            };
            self.stream = None;
            self.broken = true;
            return Ok(Some(Followed::Reconnecting { after: self.last_id, why: why.into() }));
        }
    }
}
