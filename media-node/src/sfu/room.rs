//! A room on this node: its members (local sessions, and participants of other nodes by the
//! relay link they come over), its tracks, and who is speaking.

use super::cascade::LinkId;
use super::speaker::SpeakerDetector;
use super::{SessionId, TrackKey};
use moim_wire::signal::ParticipantInfo;
use std::time::Instant;

pub(super) struct Room {
    pub(super) sessions: Vec<SessionId>,
    /// A room opened for a viewer before anyone joined here (WHEP of a room whose
    /// publisher is on another node) stays this long without participants.
    pub(super) keep_until: Option<Instant>,
    /// Participants on other nodes, by the link they come over.
    pub(super) remote: Vec<(LinkId, ParticipantInfo)>,
    pub(super) tracks: Vec<TrackKey>,
    pub(super) speakers: SpeakerDetector,
    pub(super) next_participant: u64,
}
