//! The reply as a client shows it while events arrive: each round's text, where a retried
//! round (`llm.retry`) replaces what that round streamed so far. The CLI, the tests and the
//! crash drills all read replies through this, so "what the user saw" means one thing.

use crate::events::SessionEvent;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShownReply {
    rounds: Vec<String>,
}

impl ShownReply {
    /// Applies one event; returns whether the shown text changed.
    pub fn apply(&mut self, event: &SessionEvent) -> bool {
        match event {
            SessionEvent::LlmDelta(delta) if delta.compacted => {
                let round = self.round(delta.round);
                let changed = *round != delta.text;
                round.clone_from(&delta.text);
                changed
            }
            SessionEvent::LlmDelta(delta) => {
                self.round(delta.round).push_str(&delta.text);
                true
            }
            SessionEvent::LlmRetry(retry) if retry.discard_partial => {
                let round = self.round(retry.round);
                let changed = !round.is_empty();
                round.clear();
                changed
            }
            _ => false,
        }
    }

    /// The whole reply: the rounds' texts in order.
    pub fn text(&self) -> String {
        self.rounds.concat()
    }

    /// Forgets everything (a new turn begins).
    pub fn clear(&mut self) {
        self.rounds.clear();
    }

    fn round(&mut self, round: u32) -> &mut String {
        let index = round as usize;
        if self.rounds.len() <= index {
            self.rounds.resize(index + 1, String::new());
        }
        &mut self.rounds[index]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{LlmDelta, LlmRetry};

    fn delta(round: u32, attempt: u32, text: &str) -> SessionEvent {
        SessionEvent::LlmDelta(LlmDelta { text: text.into(), attempt, index: 0, round, compacted: false })
    }

    #[test]
    fn a_retry_replaces_only_its_own_round() {
        let mut shown = ShownReply::default();
        shown.apply(&delta(0, 1, "Let me compute. "));
        shown.apply(&delta(1, 1, "It is 39"));
        shown.apply(&SessionEvent::LlmRetry(LlmRetry {
            attempt: 2,
            discard_partial: true,
            reason: "cut".into(),
            round: 1,
        }));
        shown.apply(&delta(1, 2, "It is 391."));
        assert_eq!(shown.text(), "Let me compute. It is 391.");
    }

    #[test]
    fn a_compacted_delta_replaces_what_its_round_had() {
        let whole = SessionEvent::LlmDelta(LlmDelta { text: "It is 391.".into(), attempt: 2, index: 0, round: 0, compacted: true });
        let mut inside = ShownReply::default();
        inside.apply(&delta(0, 2, "It is"));
        inside.apply(&whole);
        let mut before = ShownReply::default();
        before.apply(&whole);
        assert_eq!(inside.text(), "It is 391.");
        assert_eq!(before.text(), "It is 391.");
    }
}
