//! An up-track: a track published in a room, from a local publisher or relayed from another
//! node; its simulcast layers, what each carries, and who receives it.

use super::cascade;
use super::keyframe::VideoCodec;
use super::{DownKey, PeerId, SessionId};
use moim_wire::signal::{ParticipantInfo, TrackSource};
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub(super) struct Layer {
    pub(super) rid: String,
    pub(super) ssrc: Option<u32>,
    pub(super) bytes: u64,
    pub(super) bps: f64,
    /// When its last packet arrived here.
    pub(super) last_at: Option<Instant>,
}

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
    pub(super) last_pli: HashMap<u32, Instant>,
}

pub(super) fn layer_index(rid: &str, order: usize) -> u8 {
    match rid {
        "q" | "l" | "low" | "0" => 0,
        "h" | "m" | "mid" | "1" => 1,
        "f" | "high" | "2" => 2,
        _ => order.min(2) as u8,
    }
}
