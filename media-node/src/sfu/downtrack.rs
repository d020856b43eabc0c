//! A down-track: one up-track as one subscriber receives it: the layer it gets, the sequence
//! and timestamp rewriting, the VP8 numbering, the leg's payload type and extensions, what was
//! sent (for NACKs) and the sender-report counters.

use super::forwarder::{Forwarder, Verdict};
use super::layers::LayerSelector;
use super::peer::{LegMapping, Peer, Transmit, resolve_leg, send_rtp};
use super::send::{Extensions, RESEND_MIN_GAP, ResendBudget, RtpOut, SenderStats, Sent, SentRing};
use super::uptrack::UpTrack;
use super::vp8::Vp8Munger;
use super::{PeerId, SessionId, TrackKey};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::VecDeque;
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
    /// What it may still spend on resends (see [`super::send::RESEND_SHARE`]).
    pub(super) resend: ResendBudget,
}

/// Retransmission buffer per outgoing video stream, in packets (a power of two).
pub const NACK_BUFFER_PACKETS: u16 = 512;

/// Period of RTCP sender reports per down-track (RFC 3550 allows 5 s; browsers send one a
/// second, and audio/video sync waits for the first).
const SENDER_REPORT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// What [`DownTrack::forward`] sent.
pub(super) struct Forwarded {
    /// Payload bytes.
    pub(super) bytes: usize,
    /// It completed a layer switch after the first layer was chosen (a switch to count).
    pub(super) counted_switch: bool,
    /// How long that switch waited for its keyframe.
    pub(super) switch_wait: Option<std::time::Duration>,
}

impl DownTrack {
    /// Sends `packet` (of `track`'s `layer`) to the subscriber on `peer` if this down-track
    /// takes it now: the leg is negotiated and connected, the forwarder passes it (the layer
    /// being forwarded, or a keyframe of the one being switched to), with its sequence number,
    /// timestamp and VP8 numbering rewritten into one continuous stream. What went out is kept
    /// for NACKs and counted for sender reports.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn forward(
        &mut self,
        peer: &mut Peer,
        track: &UpTrack,
        layer: u8,
        packet: &rtc::rtp::Packet,
        keyframe: bool,
        now: Instant,
        transmits: &mut VecDeque<Transmit>,
    ) -> Option<Forwarded> {
        if !peer.connected || !self.negotiated {
            return None;
        }
        // The leg is resolved before the forwarder sees the packet: a keyframe that cannot be
        // sent yet (the subscriber's renegotiation is still under way) must not count as the
        // switch point, or the subscriber would wait for the next keyframe.
        if self.leg.is_none() {
            // Resolved once per negotiation, not per packet; not negotiated (yet): nothing can
            // be sent on this leg.
            let leg = resolve_leg(peer, self.sender, track)?;
            if track.kind == RtpCodecKind::Video && self.sent.is_none() {
                self.sent = Some(SentRing::new(NACK_BUFFER_PACKETS));
            }
            self.leg = Some(leg);
        }
        let Verdict::Forward {
            seq,
            timestamp,
            switched,
        } = self.forwarder.on_packet(
            layer,
            packet.header.sequence_number,
            packet.header.timestamp,
            keyframe,
            now,
        )
        else {
            return None;
        };
        let counted_switch = switched && self.layer_switched_at.is_some();
        let mut switch_wait = None;
        if switched {
            self.layer_switched_at = Some(now);
            switch_wait = self.forwarder.last_switch_wait();
            tracing::debug!(track = %track.id, layer, waited = ?switch_wait, "switched");
        }
        let leg = self.leg.as_ref()?;
        let payload = if leg.vp8 {
            if switched {
                self.vp8.begin(&packet.payload);
            }
            self.vp8
                .rewrite(&packet.payload)
                .unwrap_or_else(|| packet.payload.clone())
        } else {
            packet.payload.clone()
        };
        let mut exts = Extensions::default();
        for (from, to) in &leg.ext_map {
            if let Some(v) = packet.header.get_extension(*from) {
                exts.push(*to, v);
            }
        }
        let out = RtpOut {
            payload_type: leg.payload_type,
            marker: packet.header.marker,
            sequence_number: seq,
            timestamp,
            ssrc: self.ssrc,
            payload_prefix: &[],
            payload: &payload,
        };
        tracing::trace!(
            track = %track.id,
            layer,
            in_seq = packet.header.sequence_number,
            seq,
            timestamp,
            marker = packet.header.marker,
            head = ?&packet.payload[..packet.payload.len().min(6)],
            "forward"
        );
        if let Err(e) = send_rtp(peer, transmits, &out, &exts, leg.twcc_ext, now) {
            tracing::debug!(error = %e, seq, switched, "send refused");
            if switched {
                self.forwarder.undo_switch();
            }
            return None;
        }
        let bytes = payload.len();
        self.stats.on_sent(timestamp, bytes, now);
        self.resend.earn(bytes);
        if let Some(ring) = self.sent.as_mut() {
            ring.record(
                seq,
                Sent {
                    sequence_number: seq,
                    timestamp,
                    marker: packet.header.marker,
                    payload,
                    resent_at: None,
                },
            );
        }
        Some(Forwarded {
            bytes,
            counted_switch,
            switch_wait: switch_wait.filter(|_| counted_switch),
        })
    }

    /// Resends the packets `seqs` names that this down-track still holds: on the RTX stream
    /// when the leg negotiated one (RFC 4588), else as the same packet again. A packet resent
    /// less than [`RESEND_MIN_GAP`] ago is skipped, and resends stop when the down-track's
    /// [`ResendBudget`] is spent, so a subscriber that NACKs everything costs at most about
    /// half again its stream. Returns how many went out and how many the limits refused.
    pub(super) fn answer_nack(
        &mut self,
        peer: &mut Peer,
        seqs: impl Iterator<Item = u16>,
        now: Instant,
        transmits: &mut VecDeque<Transmit>,
    ) -> (usize, usize) {
        let DownTrack {
            leg: Some(leg),
            sent: Some(ring),
            rtx_seq,
            ssrc,
            resend,
            ..
        } = self
        else {
            return (0, 0);
        };
        let (mut resent, mut refused) = (0, 0);
        for seq in seqs {
            let Some(sent) = ring.get_mut(seq) else {
                continue;
            };
            if sent
                .resent_at
                .is_some_and(|at| now.saturating_duration_since(at) < RESEND_MIN_GAP)
                || !resend.spend(sent.payload.len())
            {
                refused += 1;
                continue;
            }
            sent.resent_at = Some(now);
            let sent = &*sent;
            let osn = seq.to_be_bytes();
            let out = match leg.rtx {
                Some((payload_type, rtx_ssrc)) => {
                    let s = *rtx_seq;
                    *rtx_seq = s.wrapping_add(1);
                    RtpOut {
                        payload_type,
                        marker: sent.marker,
                        sequence_number: s,
                        timestamp: sent.timestamp,
                        ssrc: rtx_ssrc,
                        payload_prefix: &osn,
                        payload: &sent.payload,
                    }
                }
                None => RtpOut {
                    payload_type: leg.payload_type,
                    marker: sent.marker,
                    sequence_number: seq,
                    timestamp: sent.timestamp,
                    ssrc: *ssrc,
                    payload_prefix: &[],
                    payload: &sent.payload,
                },
            };
            match send_rtp(
                peer,
                transmits,
                &out,
                &Extensions::default(),
                leg.twcc_ext,
                now,
            ) {
                Ok(()) => resent += 1,
                Err(e) => {
                    tracing::debug!(error = %e, seq, "retransmission refused");
                    break;
                }
            }
        }
        (resent, refused)
    }

    /// The RTCP sender report this down-track is due (RFC 3550 §6.4.1: what was sent and which
    /// RTP time matches which wall-clock time, for the subscriber's audio/video sync), once a
    /// second once something was sent.
    pub(super) fn sender_report(
        &mut self,
        now: Instant,
        wall: std::time::SystemTime,
    ) -> Option<rtc::rtcp::sender_report::SenderReport> {
        if self
            .stats
            .last_report
            .is_some_and(|t| now.saturating_duration_since(t) < SENDER_REPORT_INTERVAL)
        {
            return None;
        }
        let leg = self.leg.as_ref()?;
        let report = self.stats.report(self.ssrc, leg.clock_rate, now, wall)?;
        self.stats.last_report = Some(now);
        Some(report)
    }
}
