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

impl Room {
    /// An empty room; `keep_until`: opened for a viewer expected by then.
    pub(super) fn new(keep_until: Option<Instant>) -> Self {
        Self {
            sessions: Vec::new(),
            keep_until,
            remote: Vec::new(),
            tracks: Vec::new(),
            speakers: SpeakerDetector::default(),
            next_participant: 0,
        }
    }

    /// The id of the next participant to join here (`p1`, `p2`, …; never reused).
    pub(super) fn next_participant_id(&mut self) -> String {
        self.next_participant += 1;
        format!("p{}", self.next_participant)
    }
}
