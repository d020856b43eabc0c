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
}
