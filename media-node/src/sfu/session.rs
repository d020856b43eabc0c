//! A session: one participant on this node (a WebSocket client, a WHIP publisher or a WHEP
//! viewer), with its identity, rights, legs and what it asked for.

use super::PeerId;
use moim_wire::signal::{ParticipantInfo, TrackSource};
use std::collections::HashMap;
use std::time::Instant;

/// What kind of client a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionKind {
    /// The web client over WebSocket signalling.
    WebSocket,
    /// A WHIP publisher.
    Whip,
    /// A WHEP viewer.
    Whep,
}

pub(super) struct Session {
    pub(super) kind: SessionKind,
    pub(super) resource: String,
    pub(super) room: String,
    pub(super) participant: ParticipantInfo,
    pub(super) can_publish: bool,
    pub(super) can_subscribe: bool,
    pub(super) publish_peer: Option<PeerId>,
    pub(super) subscribe_peer: Option<PeerId>,
    /// A subscribe offer is out and unanswered.
    pub(super) offer_outstanding: bool,
    /// The track set changed while an offer was out.
    pub(super) reoffer: bool,
    /// Sources the client declared for its tracks, by client track id.
    pub(super) declared_sources: HashMap<String, TrackSource>,
    /// Wanted rendered size per track id.
    pub(super) layer_wish: HashMap<String, (u32, u32)>,
    pub(super) joined_at: Instant,
    pub(super) first_media_sent: bool,
    /// What it may still send as chat.
    pub(super) chat: ChatBudget,
}

/// Chat messages a participant may send per second, sustained.
pub const CHAT_PER_SECOND: f64 = 5.0;
/// Chat messages a participant may send in a burst.
pub const CHAT_BURST: f64 = 10.0;

/// A token bucket over one participant's chat ([`CHAT_PER_SECOND`], [`CHAT_BURST`]): chat goes
/// to the whole room and every relay link, so one sender must not flood everyone's outbox
/// (a reader whose outbox fills is dropped). Refusals are counted so the sender is told once a
/// second, not once per message.
pub(super) struct ChatBudget {
    tokens: f64,
    at: Option<Instant>,
    told_at: Option<Instant>,
}

impl Default for ChatBudget {
    fn default() -> Self {
        Self {
            tokens: CHAT_BURST,
            at: None,
            told_at: None,
        }
    }
}

/// What [`ChatBudget::take`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ChatVerdict {
    /// Send it.
    Send,
    /// Drop it and tell the sender (the first refusal in a second).
    Refuse,
    /// Drop it; the sender was told within the last second.
    Drop,
}

impl ChatBudget {
    /// Takes one message's worth at `now`.
    pub(super) fn take(&mut self, now: Instant) -> ChatVerdict {
        let elapsed = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.tokens = (self.tokens + elapsed * CHAT_PER_SECOND).min(CHAT_BURST);
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return ChatVerdict::Send;
        }
        if self
            .told_at
            .is_some_and(|t| now.saturating_duration_since(t) < std::time::Duration::from_secs(1))
        {
            return ChatVerdict::Drop;
        }
        self.told_at = Some(now);
        ChatVerdict::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn chat_budget_allows_a_burst_then_the_rate_and_tells_once_a_second() {
        let t0 = Instant::now();
        let mut b = ChatBudget::default();
        for _ in 0..CHAT_BURST as usize {
            assert_eq!(b.take(t0), ChatVerdict::Send);
        }
        assert_eq!(b.take(t0), ChatVerdict::Refuse);
        assert_eq!(b.take(t0), ChatVerdict::Drop);
        // 200 ms later one more message's worth has come in.
        assert_eq!(b.take(t0 + Duration::from_millis(200)), ChatVerdict::Send);
        assert_eq!(b.take(t0 + Duration::from_millis(200)), ChatVerdict::Drop);
        assert_eq!(b.take(t0 + Duration::from_millis(1100)), ChatVerdict::Send);
        let sent = (0..100)
            .map(|i| b.take(t0 + Duration::from_millis(1100 + 10 * i)))
            .filter(|v| *v == ChatVerdict::Send)
            .count();
        // What was left (3.5 messages' worth) and one more second's 5.
        assert!((5..=9).contains(&sent), "{sent}");
    }
}
