//! An up-track: a track published in a room, from a local publisher or relayed from another
//! node; its simulcast layers, what each carries, and who receives it.

use super::cascade;
use super::keyframe::VideoCodec;
use super::send::SeqRing;
use super::{DownKey, PeerId, SessionId};
use bytes::Bytes;
use moim_wire::signal::{ParticipantInfo, TrackSource};
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// One simulcast layer (or the only one) of an up-track.
pub(super) struct Layer {
    pub(super) rid: String,
    pub(super) ssrc: Option<u32>,
    pub(super) bytes: u64,
    /// RTP payload bits per second (smoothed); 0 after a window without packets: a layer
    /// that stopped (turned off at its publisher, held back on a relay link) is not flowing,
    /// rather than flowing ever more slowly.
    pub(super) bps: f64,
    /// What it carried before it last stopped, until it has flowed a full window again (its
    /// first window back is partial): what it costs once it flows again.
    pub(super) stopped_at_bps: f64,
    /// Packets counted since the last roll, and packets per second (smoothed): what a layer
    /// costs on a relay link is its payload plus each packet's headers.
    pub(super) packets: u64,
    pub(super) pps: f64,
    /// When its last packet arrived here.
    pub(super) last_at: Option<Instant>,
    /// What crossed relay links of this layer (a local track's), to answer link NACKs; made
    /// when the layer is first relayed.
    pub(super) relayed: Option<SeqRing<Bytes>>,
}

impl Layer {
    /// A layer `rid` (empty: not simulcast), its SSRC when known.
    pub(super) fn new(rid: String, ssrc: Option<u32>) -> Self {
        Self {
            rid,
            ssrc,
            bytes: 0,
            bps: 0.0,
            stopped_at_bps: 0.0,
            packets: 0,
            pps: 0.0,
            last_at: None,
            relayed: None,
        }
    }
}

/// Datagrams kept per layer of a local track for link NACKs (about a second of the top layer;
/// a power of two).
pub const RELAY_HISTORY: u16 = 256;

/// Smallest gap between two keyframe requests for one layer of a track, whether they go to
/// its publisher (a PLI) or upstream over a relay link: each makes an encoder send a keyframe,
/// several times the size of another frame.
pub(super) const KEYFRAME_REQUEST_GAP: Duration = Duration::from_millis(500);

/// When each layer of a track last had a keyframe asked for.
#[derive(Debug, Default)]
pub(super) struct KeyframeThrottle {
    last: HashMap<u8, Instant>,
}

impl KeyframeThrottle {
    /// Whether a keyframe of `layer` may be asked for at `now`; if so, it counts as asked.
    pub(super) fn allow(&mut self, layer: u8, now: Instant) -> bool {
        if self
            .last
            .get(&layer)
            .is_some_and(|at| now.saturating_duration_since(*at) < KEYFRAME_REQUEST_GAP)
        {
            return false;
        }
        self.last.insert(layer, now);
        true
    }

    /// Forgets every layer's last request: the publisher's media returns after a gap (a path
    /// that broke and healed, an ICE restart), and what was asked meanwhile may never have
    /// reached it. Subscribers waiting for a keyframe ask again at the next look (100 ms)
    /// rather than up to [`KEYFRAME_REQUEST_GAP`] later.
    pub(super) fn forget(&mut self) {
        self.last.clear();
    }
}

/// A layer whose packets come again after this long without any has come back (its
/// publisher's path broke and healed, or the layer was off): see [`KeyframeThrottle::forget`].
pub(super) const LAYER_RESUME_GAP: Duration = Duration::from_millis(250);

/// A layer being forwarded that has been silent this long, while a lower one still flows, has
/// been dropped by its publisher (a browser sheds its top layers when short of CPU or
/// bandwidth): subscribers step down at once rather than after the rate window (seconds).
pub(super) const LAYER_STALL: Duration = Duration::from_millis(400);

/// The layer rates as the layer choice should see them at `now`: the forwarded layer `current`
/// counts as not flowing when it has stalled while a lower layer kept flowing.
pub(super) fn rates_seen(t: &UpTrack, current: Option<u8>, now: Instant) -> Vec<f64> {
    let mut bps = cascade::layer_rates(t);
    let recent = |l: &Layer| {
        l.last_at
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_STALL)
    };
    if let Some(c) = current.map(usize::from)
        && t.layers.get(c).is_some_and(|l| !recent(l))
        && t.layers[..c.min(t.layers.len())].iter().any(recent)
        && let Some(b) = bps.get_mut(c)
    {
        *b = 0.0;
    }
    bps
}

/// A track published in a room: from a publisher here, or relayed from another node.
pub(super) struct UpTrack {
    pub(super) id: String,
    /// The publishing session; 0 for a track relayed from another node.
    pub(super) session: SessionId,
    /// Room it is published in.
    pub(super) room: String,
    /// Who publishes it (for relayed tracks, the far participant).
    pub(super) owner: ParticipantInfo,
    /// The publisher's connection and receiver (local tracks only).
    pub(super) peer: PeerId,
    pub(super) receiver: Option<RTCRtpReceiverId>,
    /// Set for a track that arrives over a relay link.
    pub(super) relay: Option<cascade::RelayedTrack>,
    /// Relay links that take layers of this (local) track: (link, layer).
    pub(super) relay_subs: Vec<(cascade::LinkId, u8)>,
    pub(super) kind: RtpCodecKind,
    pub(super) source: TrackSource,
    pub(super) codec: Option<RTCRtpCodec>,
    pub(super) video_codec: VideoCodec,
    pub(super) layers: Vec<Layer>,
    /// Header extension URIs by id on the publisher's leg.
    pub(super) ext_uris: HashMap<u8, String>,
    pub(super) audio_level_id: Option<u8>,
    pub(super) downs: Vec<DownKey>,
    /// Keyframe requests for this track, to its publisher or upstream.
    pub(super) keyframes: KeyframeThrottle,
    /// What its publisher was told to send (local video of a WebSocket participant).
    pub(super) dynacast: Option<super::dynacast::Dynacast>,
    /// Muted by its publisher (here, or as the relay link said).
    pub(super) muted: bool,
}

impl UpTrack {
    /// Turns the bytes and packets counted per layer since the last call (`secs` ago) into
    /// each layer's rates.
    pub(super) fn roll_rates(&mut self, secs: f64) {
        for l in &mut self.layers {
            l.roll(secs);
        }
    }
}

impl Layer {
    /// Turns the bytes and packets counted since the last call (`secs` ago) into the rates,
    /// smoothed over two windows; a window without any stops them.
    fn roll(&mut self, secs: f64) {
        let smooth = |old: f64, new: f64| {
            if old == 0.0 {
                new
            } else {
                old * 0.5 + new * 0.5
            }
        };
        if self.bytes == 0 {
            if self.bps > 0.0 {
                self.stopped_at_bps = self.bps;
            }
            (self.bps, self.pps, self.packets) = (0.0, 0.0, 0);
            return;
        }
        if self.bps > 0.0 {
            self.stopped_at_bps = 0.0;
        }
        self.bps = smooth(self.bps, self.bytes as f64 * 8.0 / secs);
        self.pps = smooth(self.pps, self.packets as f64 / secs);
        self.bytes = 0;
        self.packets = 0;
    }
}

/// The layer index of a simulcast `rid` (`q`/`h`/`f` and the usual aliases), else by order.
pub(super) fn layer_index(rid: &str, order: usize) -> u8 {
    match rid {
        "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "1" => 1,
        "f" | "high" | "2" => 2,
        _ => order.min(2) as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_that_stops_has_no_rate_and_costs_what_it_carried_until_back_a_full_window() {
        let mut l = Layer::new("f".into(), None);
        let window = |l: &mut Layer, bytes: u64| {
            (l.bytes, l.packets) = (bytes, bytes / 1000);
            l.roll(1.0);
            (l.bps, l.stopped_at_bps)
        };
        assert_eq!(window(&mut l, 187_500), (1_500_000.0, 0.0));
        // A window without packets: not flowing at all (it used to halve each second, and a
        // layer turned off looked like one flowing at a few kbit/s for ten seconds).
        assert_eq!(window(&mut l, 0), (0.0, 1_500_000.0));
        assert_eq!(window(&mut l, 0), (0.0, 1_500_000.0));
        // Back for part of a window: flowing, and what it carried before is remembered.
        assert_eq!(window(&mut l, 50_000), (400_000.0, 1_500_000.0));
        // A full window later its own rate counts.
        assert_eq!(window(&mut l, 187_500), (950_000.0, 0.0));
    }
}
