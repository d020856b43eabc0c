//! The bandwidth split: which simulcast layer each down-track gets, every housekeeping round.
//!
//! A subscriber's estimate (the lower of GCC's and its REMB, see [`Peer::available_bps`]) pays
//! for what it receives unlayered first (audio, single-layer video); the rest is split evenly
//! between the simulcast videos it receives, and each down-track's [`LayerSelector`] chooses
//! within its share, its wanted size and the loss the subscriber reports. What changes is a
//! new target layer on the down-track's forwarder; the switch happens at the next keyframe of
//! that layer, which the caller asks for ([`allocate`] returns who needs one).
//!
//! [`LayerSelector`]: super::layers::LayerSelector

use super::downtrack::DownTrack;
use super::layers::LinkState;
use super::peer::Peer;
use super::uptrack::{UpTrack, rates_seen};
use super::{DownKey, PeerId, TrackKey};
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashMap;
use std::time::Instant;

/// Sets each down-track's target layer; returns the down-tracks of connected subscribers whose
/// forwarder waits for a keyframe (a request made before the connection is up would be lost,
/// and would hold back, through the keyframe throttle, the one that counts).
pub(super) fn allocate(
    downs: &mut HashMap<DownKey, DownTrack>,
    tracks: &HashMap<TrackKey, UpTrack>,
    peers: &HashMap<PeerId, Peer>,
    now: Instant,
) -> Vec<DownKey> {
    let layered = |t: &UpTrack| t.kind == RtpCodecKind::Video && t.layers.len() > 1;
    // Per subscriber: simulcast videos received, and what everything else it receives carries.
    let mut budget: HashMap<PeerId, (usize, f64)> = HashMap::new();
    for d in downs.values() {
        let Some(t) = tracks.get(&d.track) else {
            continue;
        };
        let entry = budget.entry(d.peer).or_default();
        if layered(t) {
            entry.0 += 1;
        } else {
            entry.1 += t.layers.first().map_or(0.0, |l| l.bps);
        }
    }
    let mut need_keyframe = Vec::new();
    for (&k, d) in downs.iter_mut() {
        let Some(t) = tracks.get(&d.track) else {
            continue;
        };
        let peer = peers.get(&d.peer);
        if layered(t) {
            let link = peer
                .map(|p| LinkState {
                    available_bps: p.available_bps().map(|b| {
                        let (videos, other_bps) = budget.get(&d.peer).copied().unwrap_or_default();
                        (b - other_bps).max(0.0) / videos.max(1) as f64
                    }),
                    loss: p.loss,
                })
                .unwrap_or_default();
            let bps = rates_seen(t, d.forwarder.current_layer(), now);
            let chosen = d.selector.decide(link, &bps, now);
            if chosen != d.forwarder.target_layer() {
                tracing::debug!(
                    track = d.track,
                    from = ?d.forwarder.target_layer(),
                    to = ?chosen,
                    current = ?d.forwarder.current_layer(),
                    ?bps,
                    available = ?link.available_bps,
                    loss = link.loss,
                    "layer target"
                );
                d.forwarder.set_target(chosen);
            }
        } else if t.kind == RtpCodecKind::Video {
            // One layer: forwarded, or paused while its tile is not shown.
            let target = d.selector.wanted().map(|_| 0);
            if target != d.forwarder.target_layer() {
                d.forwarder.set_target(target);
            }
        }
        if peer.is_some_and(|p| p.connected) && d.forwarder.needs_keyframe() {
            need_keyframe.push(k);
        }
    }
    need_keyframe
}
