//! Dynacast: a publisher sends only the simulcast layers someone wants.
//!
//! Every housekeeping round the engine looks, per local video track, at the highest layer any
//! subscriber here wants for its tile size ([`super::layers::LayerSelector::wanted`], not the
//! layer congestion allows: a subscriber held low by its link still wants the layer when its
//! link recovers) and at the relay links that take the track. The publisher is told the
//! highest layer to send (`publish_layers`); its client turns the encodings above it off, and
//! the whole track off when nobody wants it. Up is at once, down only after the lower demand
//! has held for [`DOWN_AFTER`] (a tile that shrinks and grows back, a subscriber rejoining).
//!
//! Relay links count like subscribers: a far node subscribes, per relayed track, the layers
//! its own subscribers are on and the highest their tiles want
//! ([`Engine::sync_relay_subscriptions`]), and nothing when all of them paused it; the layers
//! a link subscribes are its demand here. So a layer nobody on any node wants stops at the
//! publisher, and comes back when a far tile grows (the far node subscribes it, this node
//! raises `publish_layers` at once).

use super::TrackKey;
use super::engine::Engine;
use moim_wire::signal::ServerMessage;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::time::{Duration, Instant};

/// How long a lower demand must hold before the publisher is told to send less.
pub const DOWN_AFTER: Duration = Duration::from_secs(2);

/// What one local track's publisher was last told.
#[derive(Debug, Clone)]
pub(super) struct Dynacast {
    /// The track's id on the publisher's side (its `MediaStreamTrack.id`).
    pub(super) publisher_track: String,
    /// The highest layer the publisher sends (None: the track is off). It starts sending all.
    sent: Option<u8>,
    /// Since when the demand has been below `sent`.
    lower_since: Option<Instant>,
}

impl Dynacast {
    /// A track of `layers` layers that its publisher sends in full.
    pub(super) fn new(publisher_track: String, layers: usize) -> Self {
        Self {
            publisher_track,
            sent: Some(layers.saturating_sub(1).min(u8::MAX as usize) as u8),
            lower_since: None,
        }
    }

    /// With `wanted` the highest layer wanted at `now`: the new highest layer to tell the
    /// publisher, if it changes.
    pub(super) fn update(&mut self, wanted: Option<u8>, now: Instant) -> Option<Option<u8>> {
        if wanted == self.sent {
            self.lower_since = None;
            return None;
        }
        // Option orders None below any layer.
        if wanted > self.sent {
            self.lower_since = None;
            self.sent = wanted;
            return Some(wanted);
        }
        let since = *self.lower_since.get_or_insert(now);
        if now.saturating_duration_since(since) < DOWN_AFTER {
            return None;
        }
        self.lower_since = None;
        self.sent = wanted;
        Some(wanted)
    }
}

impl Engine {
    /// Tells publishers which layers of their video tracks are wanted (see the module doc).
    pub(super) fn dynacast(&mut self, now: Instant) {
        let keys: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.kind == RtpCodecKind::Video && t.dynacast.is_some())
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            let Some(t) = self.tracks.get(&key) else {
                continue;
            };
            let top = t.layers.len().saturating_sub(1).min(u8::MAX as usize) as u8;
            // Here: the tile sizes; over relay links: the layers the far nodes subscribe,
            // which follow their subscribers' tile sizes.
            let here = t
                .downs
                .iter()
                .filter_map(|d| self.downs.get(d))
                .filter_map(|d| d.selector.wanted())
                .max();
            let far = t.relay_subs.iter().map(|(_, l)| *l).max();
            let wanted = here.max(far).map(|w| w.min(top));
            let session = t.session;
            let Some(t) = self.tracks.get_mut(&key) else {
                continue;
            };
            let Some(d) = t.dynacast.as_mut() else {
                continue;
            };
            if let Some(max_layer) = d.update(wanted, now) {
                let track_id = d.publisher_track.clone();
                tracing::debug!(track = key, ?max_layer, "dynacast");
                self.metrics.dynacast_updates.inc();
                self.signal(
                    session,
                    ServerMessage::PublishLayers {
                        track_id,
                        max_layer,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_at_once_down_after_the_demand_held() {
        let t0 = Instant::now();
        let mut d = Dynacast::new("cam".into(), 3);
        assert_eq!(d.update(Some(2), t0), None, "starts sending all");
        assert_eq!(d.update(Some(0), t0), None);
        assert_eq!(d.update(Some(0), t0 + Duration::from_secs(1)), None);
        // Back up before the hold: nothing said, and the hold starts again.
        assert_eq!(d.update(Some(2), t0 + Duration::from_millis(1500)), None);
        assert_eq!(d.update(Some(0), t0 + Duration::from_secs(2)), None);
        assert_eq!(
            d.update(Some(0), t0 + Duration::from_secs(4)),
            Some(Some(0))
        );
        assert_eq!(d.update(None, t0 + Duration::from_secs(5)), None);
        assert_eq!(d.update(None, t0 + Duration::from_secs(7)), Some(None));
        assert_eq!(
            d.update(Some(1), t0 + Duration::from_secs(7)),
            Some(Some(1)),
            "up at once"
        );
    }
}
