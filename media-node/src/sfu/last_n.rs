//! Last-N: a subscriber receives video only from the N participants who spoke most recently,
//! plus the ones it pinned (`ClientMessage::LastN`), and the node switches as speakers change.
//!
//! The choice only decides which video down-tracks are *wanted*: the others are paused as an
//! off-screen tile is ([`super::layers::LayerSelector::wanted`] is `None`), so the bandwidth
//! split, the keyframe on resuming and dynacast (a video nobody wants stops at its publisher)
//! all follow from it. The order comes from the room's [`super::speaker::SpeakerDetector`],
//! which hears relayed audio too: a speaker on another node counts like one here. Until N
//! participants have spoken, the earliest publishers in the room fill the rest.

use super::engine::Engine;
use super::layers::layer_for_height;
use super::session::{LastN, MAX_LAST_N, MAX_PINNED};
use super::{DownKey, SessionId};
use crate::error::{Error, Result};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashSet;

/// Longest participant id a pin may name (ids are short: `p12`, or a relayed one's).
const MAX_PARTICIPANT_ID_BYTES: usize = 256;

/// The participants whose video `me` receives: the pinned ones, then the `n` most recent
/// speakers, then (while fewer than `n` are chosen) the video publishers in the order they
/// came. `me` is never counted.
pub(super) fn selection(
    choice: &LastN,
    recent: &[String],
    publishers: &[String],
    me: &str,
) -> HashSet<String> {
    let mut out: HashSet<String> = choice.pinned.iter().cloned().collect();
    let mut chosen = 0;
    let candidates = recent.iter().chain(publishers);
    for p in candidates {
        if chosen >= choice.n {
            break;
        }
        if p == me || choice.pinned.contains(p) || out.contains(p) {
            continue;
        }
        out.insert(p.clone());
        chosen += 1;
    }
    out
}

impl Engine {
    /// Sets (or with `n: None` clears) `session`'s last-N choice and applies it at once.
    pub fn ws_last_n(
        &mut self,
        session: SessionId,
        n: Option<u32>,
        pinned: Vec<String>,
    ) -> Result<()> {
        if n.is_some_and(|n| n > MAX_LAST_N) {
            return Err(Error::BadRequest(format!("last_n is at most {MAX_LAST_N}")));
        }
        if pinned.len() > MAX_PINNED {
            return Err(Error::BadRequest(format!(
                "at most {MAX_PINNED} pinned participants"
            )));
        }
        if pinned.iter().any(|p| p.len() > MAX_PARTICIPANT_ID_BYTES) {
            return Err(Error::BadRequest(format!(
                "participant ids are at most {MAX_PARTICIPANT_ID_BYTES} bytes"
            )));
        }
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        s.last_n = n.map(|n| LastN {
            n: n as usize,
            pinned,
        });
        self.refresh_wanted(session);
        Ok(())
    }

    /// Re-applies the last-N choices of `room`'s subscribers (its speakers or its publishers
    /// changed).
    pub(super) fn refresh_last_n(&mut self, room: &str) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let choosers: Vec<SessionId> = r
            .sessions
            .iter()
            .copied()
            .filter(|s| self.sessions.get(s).is_some_and(|s| s.last_n.is_some()))
            .collect();
        for s in choosers {
            self.refresh_wanted(s);
        }
    }

    /// Sets what `session` wants of each video it receives: nothing for a publisher outside
    /// its last-N, else the layer its tile size asks for (the top one without a size).
    pub(super) fn refresh_wanted(&mut self, session: SessionId) {
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let selected = s.last_n.as_ref().and_then(|choice| {
            let room = self.rooms.get(&s.room)?;
            let mut publishers: Vec<String> = Vec::new();
            for t in room.tracks.iter().filter_map(|k| self.tracks.get(k)) {
                if t.kind == RtpCodecKind::Video && !publishers.contains(&t.owner.id) {
                    publishers.push(t.owner.id.clone());
                }
            }
            Some(selection(
                choice,
                room.speakers.recent(),
                &publishers,
                &s.participant.id,
            ))
        });
        let downs: Vec<DownKey> = s
            .subscribe_peer
            .and_then(|p| self.peers.get(&p))
            .map(|p| p.downs_by_ssrc.values().copied().collect())
            .unwrap_or_default();
        for k in downs {
            let Some(d) = self.downs.get_mut(&k) else {
                continue;
            };
            let Some(t) = self.tracks.get(&d.track) else {
                continue;
            };
            if t.kind != RtpCodecKind::Video {
                continue;
            }
            let layers = t.layers.len().max(1) as u8;
            let by_size = match s.layer_wish.get(&t.id) {
                Some(&(_, h)) => layer_for_height(h, layers),
                None => Some(layers - 1),
            };
            let wanted = match &selected {
                Some(sel) if !sel.contains(&t.owner.id) => None,
                _ => by_size,
            };
            d.selector.set_wanted(wanted);
            // Pausing takes effect at once; what to resume on is the next allocation's choice.
            if wanted.is_none() && d.forwarder.target_layer().is_some() {
                d.forwarder.set_target(None);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_owned()).collect()
    }

    fn sorted(s: HashSet<String>) -> Vec<String> {
        let mut v: Vec<String> = s.into_iter().collect();
        v.sort();
        v
    }

    #[test]
    fn recent_speakers_first_then_pins_then_the_earliest_publishers() {
        let publishers = ids(&["p1", "p2", "p3", "p4", "p5"]);
        let two = LastN {
            n: 2,
            pinned: vec![],
        };
        // Nobody spoke yet: the earliest publishers fill it, never oneself.
        assert_eq!(
            sorted(selection(&two, &[], &publishers, "p1")),
            ["p2", "p3"]
        );
        // Speakers come first, most recent first.
        let recent = ids(&["p5", "p4"]);
        assert_eq!(
            sorted(selection(&two, &recent, &publishers, "p1")),
            ["p4", "p5"]
        );
        // A pin is extra: it does not take one of the n.
        let pinned = LastN {
            n: 1,
            pinned: ids(&["p2"]),
        };
        assert_eq!(
            sorted(selection(&pinned, &recent, &publishers, "p1")),
            ["p2", "p5"]
        );
        // Zero: only the pins.
        let none = LastN {
            n: 0,
            pinned: ids(&["p3"]),
        };
        assert_eq!(sorted(selection(&none, &recent, &publishers, "p1")), ["p3"]);
    }
}
