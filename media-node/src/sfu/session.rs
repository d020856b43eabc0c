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
    pub(super) can_chat: bool,
    pub(super) publish_peer: Option<PeerId>,
    pub(super) subscribe_peer: Option<PeerId>,
    /// A subscribe offer is out and unanswered.
    pub(super) offer_outstanding: bool,
    /// The track set changed while an offer was out.
    pub(super) reoffer: bool,
    /// Sources the client declared for its tracks, by client track id.
    pub(super) declared_sources: HashMap<String, TrackSource>,
    /// Declared tracks muted before their media arrived (at most the declared ones).
    pub(super) muted_early: std::collections::HashSet<String>,
    /// Wanted rendered size per track id.
    pub(super) layer_wish: HashMap<String, (u32, u32)>,
    /// Last-N: video only from this many recent speakers, plus the pinned participants.
    pub(super) last_n: Option<LastN>,
    pub(super) joined_at: Instant,
    pub(super) first_media_sent: bool,
    /// What it may still send as chat.
    pub(super) chat: Budget,
    /// Offers and ICE restarts it may still ask for (each costs an SDP parse and a
    /// renegotiation of a peer connection).
    pub(super) negotiations: Budget,
}

/// A subscriber's last-N choice (`ClientMessage::LastN`).
#[derive(Debug, Clone, Default)]
pub(super) struct LastN {
    pub(super) n: usize,
    pub(super) pinned: Vec<String>,
}

/// Most recent speakers a subscriber may ask for.
pub const MAX_LAST_N: u32 = 100;
/// Pinned participants a subscriber may name.
pub const MAX_PINNED: usize = 16;

/// Chat messages a participant may send per second, sustained.
pub const CHAT_PER_SECOND: f64 = 5.0;
/// Chat messages a participant may send in a burst.
pub const CHAT_BURST: f64 = 10.0;

/// Publish offers and ICE restarts a participant may ask for per second, sustained.
pub const NEGOTIATIONS_PER_SECOND: f64 = 1.0;
/// Publish offers and ICE restarts a participant may ask for in a burst (joining with camera,
/// mic and screen takes three; a few network changes in a row a few more).
pub const NEGOTIATIONS_BURST: f64 = 10.0;

/// A token bucket over one kind of request from one participant. For chat
/// ([`CHAT_PER_SECOND`], [`CHAT_BURST`]): chat goes to the whole room and every relay link, so
/// one sender must not flood everyone's outbox (a reader whose outbox fills is dropped). For
/// negotiations ([`NEGOTIATIONS_PER_SECOND`], [`NEGOTIATIONS_BURST`]): each parses SDP and
/// renegotiates a peer connection on the engine's one thread. Refusals are counted so the
/// sender is told once a second, not once per message.
pub(super) struct Budget {
    per_second: f64,
    burst: f64,
    tokens: f64,
    at: Option<Instant>,
    told_at: Option<Instant>,
}

impl Budget {
    /// A full bucket of `burst`, refilled at `per_second`.
    pub(super) fn new(per_second: f64, burst: f64) -> Self {
        Self {
            per_second,
            burst,
            tokens: burst,
            at: None,
            told_at: None,
        }
    }

    /// The chat budget.
    pub(super) fn chat() -> Self {
        Self::new(CHAT_PER_SECOND, CHAT_BURST)
    }

    /// The negotiation budget.
    pub(super) fn negotiations() -> Self {
        Self::new(NEGOTIATIONS_PER_SECOND, NEGOTIATIONS_BURST)
    }
}

/// What [`Budget::take`] decided.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Send it.
    Send,
    /// Drop it and tell the sender (the first refusal in a second).
    Refuse,
    /// Drop it; the sender was told within the last second.
    Drop,
}

impl Budget {
    /// Takes one request's worth at `now`.
    pub(super) fn take(&mut self, now: Instant) -> Verdict {
        let elapsed = self
            .at
            .map_or(0.0, |at| now.saturating_duration_since(at).as_secs_f64());
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Send;
        }
        if self
            .told_at
            .is_some_and(|t| now.saturating_duration_since(t) < std::time::Duration::from_secs(1))
        {
            return Verdict::Drop;
        }
        self.told_at = Some(now);
        Verdict::Refuse
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn chat_budget_allows_a_burst_then_the_rate_and_tells_once_a_second() {
        let t0 = Instant::now();
        let mut b = Budget::chat();
        for _ in 0..CHAT_BURST as usize {
            assert_eq!(b.take(t0), Verdict::Send);
        }
        assert_eq!(b.take(t0), Verdict::Refuse);
        assert_eq!(b.take(t0), Verdict::Drop);
        // 200 ms later one more message's worth has come in.
        assert_eq!(b.take(t0 + Duration::from_millis(200)), Verdict::Send);
        assert_eq!(b.take(t0 + Duration::from_millis(200)), Verdict::Drop);
        assert_eq!(b.take(t0 + Duration::from_millis(1100)), Verdict::Send);
        let sent = (0..100)
            .map(|i| b.take(t0 + Duration::from_millis(1100 + 10 * i)))
            .filter(|v| *v == Verdict::Send)
            .count();
        // What was left (3.5 messages' worth) and one more second's 5.
        assert!((5..=9).contains(&sent), "{sent}");
    }
}
