//! A down-track: one up-track as one subscriber receives it: the layer it gets, the sequence
//! and timestamp rewriting, the VP8 numbering, the leg's payload type and extensions, what was
//! sent (for NACKs) and the sender-report counters.

use super::forwarder::Forwarder;
use super::layers::LayerSelector;
use super::peer::LegMapping;
use super::send::{SenderStats, SentRing};
use super::vp8::Vp8Munger;
use super::{PeerId, SessionId, TrackKey};
use rtc::rtp_transceiver::RTCRtpSenderId;
use std::time::Instant;

pub(super) struct DownTrack {
    pub(super) track: TrackKey,
    pub(super) session: SessionId,
    pub(super) peer: PeerId,
    pub(super) sender: RTCRtpSenderId,
    pub(super) ssrc: u32,
    pub(super) forwarder: Forwarder,
    /// Picture ID and TL0PICIDX continuity across layer switches (VP8 only).
    pub(super) vp8: Vp8Munger,
    pub(super) selector: LayerSelector,
    /// Payload type and extension map on the subscriber's leg, resolved after negotiation.
    pub(super) leg: Option<LegMapping>,
    pub(super) layer_switched_at: Option<Instant>,
    /// The subscriber has accepted the offer carrying this down-track. Until then nothing is
    /// sent on it: a keyframe sent to a browser that does not know the stream yet is lost,
    /// and the subscriber would wait for the next one.
    pub(super) negotiated: bool,
    /// What was sent, to answer NACKs from (video only; made when the leg is resolved).
    pub(super) sent: Option<SentRing>,
    /// Sender report counters.
    pub(super) stats: SenderStats,
    /// Next sequence number on the RTX stream.
    pub(super) rtx_seq: u16,
}
