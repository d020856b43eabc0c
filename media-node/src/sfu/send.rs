//! The subscriber-side send path. The engine builds each forwarded RTP packet itself, protects
//! it with the leg's SRTP context and queues it for the socket, instead of handing it to `rtc`'s
//! `write_rtp`, whose handler pipeline and interceptor chain move every packet through a queue
//! per stage (about half the node's CPU per forwarded packet, profiled in `moim-bench sfu`).
//!
//! What the interceptors did for those packets is done here, per packet and without allocating
//! beyond the protected datagram itself:
//! - transport-wide sequence numbers ([`TWCC`](rtc::sdp::extmap::TRANSPORT_CC_URI)), with each
//!   send recorded for the congestion controller (which still reads the feedback);
//! - a history of what was sent ([`SentRing`]), from which NACKs are answered, as RTX when the
//!   leg negotiated it;
//! - the counters and timestamp mapping of RTCP sender reports ([`SenderStats`]).

use bytes::{BufMut, Bytes, BytesMut};
use rtc::rtcp::sender_report::SenderReport;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Fixed RTP header: version, flags, sequence number, timestamp, SSRC (RFC 3550 §5.1).
const FIXED_HEADER: usize = 12;
/// The one-byte header extension profile (RFC 8285 §4.2).
const ONE_BYTE_PROFILE: u16 = 0xBEDE;

/// One outgoing RTP packet, before protection.
pub struct RtpOut<'a> {
    /// Payload type on the subscriber's leg.
    pub payload_type: u8,
    /// Marker bit.
    pub marker: bool,
    /// Sequence number.
    pub sequence_number: u16,
    /// Timestamp.
    pub timestamp: u32,
    /// SSRC.
    pub ssrc: u32,
    /// A prefix written before the payload (the RTX original sequence number); may be empty.
    pub payload_prefix: &'a [u8],
    /// Payload.
    pub payload: &'a [u8],
}

/// Whether an extension id can be written in the one-byte form (RFC 8285 §4.2: ids 1-14).
pub fn one_byte_id(id: u8) -> bool {
    (1..=14).contains(&id)
}

/// Header extensions for one packet: at most this many (the forwarded ones and TWCC).
pub const MAX_EXTENSIONS: usize = 4;

/// Header extensions collected for one packet, without allocating.
#[derive(Default)]
pub struct Extensions {
    items: [(u8, Bytes); MAX_EXTENSIONS],
    len: usize,
}

impl Extensions {
    /// Adds one; ignored when it cannot be written in the one-byte form (id 1-14, 1-16 bytes)
    /// or when full.
    pub fn push(&mut self, id: u8, value: Bytes) {
        if self.len < MAX_EXTENSIONS && one_byte_id(id) && (1..=16).contains(&value.len()) {
            self.items[self.len] = (id, value);
            self.len += 1;
        }
    }

    fn as_slice(&self) -> &[(u8, Bytes)] {
        &self.items[..self.len]
    }
}

/// Writes `p` (RFC 3550 header, RFC 8285 one-byte extensions, then the payload). `twcc` is the
/// transport-wide sequence number and its id (the caller checks [`one_byte_id`]).
pub fn marshal(p: &RtpOut<'_>, exts: &Extensions, twcc: Option<(u8, u16)>) -> BytesMut {
    let twcc_len = if twcc.is_some() { 3 } else { 0 };
    let ext_bytes: usize = exts
        .as_slice()
        .iter()
        .map(|(_, v)| 1 + v.len())
        .sum::<usize>()
        + twcc_len;
    let ext_words = ext_bytes.div_ceil(4);
    let body = p.payload_prefix.len() + p.payload.len();
    let has_ext = ext_bytes > 0;
    let header = FIXED_HEADER + if has_ext { 4 + ext_words * 4 } else { 0 };
    let mut buf = BytesMut::with_capacity(header + body);
    buf.put_u8(0x80 | if has_ext { 0x10 } else { 0 });
    buf.put_u8((u8::from(p.marker) << 7) | (p.payload_type & 0x7f));
    buf.put_u16(p.sequence_number);
    buf.put_u32(p.timestamp);
    buf.put_u32(p.ssrc);
    if has_ext {
        buf.put_u16(ONE_BYTE_PROFILE);
        // At most 4 extensions of at most 17 bytes each: the word count fits.
        buf.put_u16(ext_words as u16);
        for (id, value) in exts.as_slice() {
            buf.put_u8((id << 4) | (value.len() as u8 - 1));
            buf.put_slice(value);
        }
        if let Some((id, seq)) = twcc {
            buf.put_u8((id << 4) | 1);
            buf.put_u16(seq);
        }
        buf.put_bytes(0, ext_words * 4 - ext_bytes);
    }
    buf.put_slice(p.payload_prefix);
    buf.put_slice(p.payload);
    buf
}

/// One packet sent on a down-track, kept to answer NACKs.
#[derive(Clone)]
pub struct Sent {
    /// Its sequence number on the down-track.
    pub sequence_number: u16,
    /// Its timestamp.
    pub timestamp: u32,
    /// Its marker bit.
    pub marker: bool,
    /// Its payload (shared with every other subscriber's copy when unchanged).
    pub payload: Bytes,
    /// When it was last resent (a NACK repeated within [`RESEND_MIN_GAP`] is not answered).
    pub resent_at: Option<Instant>,
}

/// Least time between two resends of one packet: a subscriber that repeats its NACK before
/// the first resend could have reached it gets nothing more (mediasoup waits the RTT; this
/// floor covers loopback and LAN round trips, where RTT-based dedupe alone would not bound it).
pub const RESEND_MIN_GAP: std::time::Duration = std::time::Duration::from_millis(40);

/// Share of a down-track's forwarded bytes it may spend on resends, and the most it may save
/// up: a subscriber's retransmissions cost at most about half again its stream (libwebrtc
/// similarly caps the retransmission bitrate). Real loss repair needs a few percent.
pub const RESEND_SHARE: f64 = 0.5;
/// See [`RESEND_SHARE`]: the budget's burst, in payload bytes (about a keyframe's worth of a
/// 720p layer, so a burst of loss at a keyframe is repaired at once).
pub const RESEND_BURST_BYTES: f64 = 48.0 * 1024.0;

/// How many resend bytes a down-track may still spend: earned as it forwards, spent as it
/// resends, capped at [`RESEND_BURST_BYTES`].
pub struct ResendBudget {
    credit: f64,
}

impl Default for ResendBudget {
    fn default() -> Self {
        Self {
            credit: RESEND_BURST_BYTES,
        }
    }
}

impl ResendBudget {
    /// `bytes` of new media went out.
    pub fn earn(&mut self, bytes: usize) {
        self.credit = (self.credit + bytes as f64 * RESEND_SHARE).min(RESEND_BURST_BYTES);
    }

    /// Takes `bytes` for a resend if the budget has them.
    pub fn spend(&mut self, bytes: usize) -> bool {
        let ok = self.credit >= bytes as f64;
        if ok {
            self.credit -= bytes as f64;
        }
        ok
    }
}

/// The last `N` items of a stream of packets, by sequence number: what a down-track sent (to
/// answer a subscriber's NACK) and what crossed a relay link (to answer the far node's).
pub struct SeqRing<T> {
    slots: Vec<Option<(u16, T)>>,
}

/// What a down-track sent.
pub type SentRing = SeqRing<Sent>;

impl<T> SeqRing<T> {
    /// Holds the last `size` items (at least one; a power of two keeps a wrap of the 16-bit
    /// sequence numbers from aliasing).
    pub fn new(size: u16) -> Self {
        Self {
            slots: (0..size.max(1)).map(|_| None).collect(),
        }
    }

    fn slot(&self, seq: u16) -> usize {
        usize::from(seq) % self.slots.len()
    }

    /// Keeps `item` as `seq`, replacing what it wraps onto.
    pub fn record(&mut self, seq: u16, item: T) {
        let i = self.slot(seq);
        self.slots[i] = Some((seq, item));
    }

    /// The item recorded as `seq`, if it is still held.
    pub fn get(&self, seq: u16) -> Option<&T> {
        self.slots[self.slot(seq)]
            .as_ref()
            .filter(|(s, _)| *s == seq)
            .map(|(_, item)| item)
    }

    /// The item recorded as `seq`, if it is still held, to change.
    pub fn get_mut(&mut self, seq: u16) -> Option<&mut T> {
        let i = self.slot(seq);
        self.slots[i]
            .as_mut()
            .filter(|(s, _)| *s == seq)
            .map(|(_, item)| item)
    }
}

/// What an RTCP sender report says about one down-track (RFC 3550 §6.4.1).
#[derive(Default)]
pub struct SenderStats {
    packets: u32,
    octets: u32,
    /// The last new timestamp sent and when: the report maps wall-clock time onto it.
    last_timestamp: Option<(u32, Instant)>,
    /// When the last report went out.
    pub last_report: Option<Instant>,
}

impl SenderStats {
    /// Counts one packet (a retransmission is not counted: RFC 3550 counts original packets).
    pub fn on_sent(&mut self, timestamp: u32, payload_len: usize, now: Instant) {
        self.packets = self.packets.wrapping_add(1);
        self.octets = self.octets.wrapping_add(payload_len as u32);
        // The first packet of a frame fixes the mapping; later packets of the same frame left
        // later only because the frame took time to send.
        if self.last_timestamp.is_none_or(|(t, _)| t != timestamp) {
            self.last_timestamp = Some((timestamp, now));
        }
    }

    /// The report for `ssrc` at `now` (`wall` is the wall clock at the same moment), or `None`
    /// before anything was sent.
    pub fn report(
        &self,
        ssrc: u32,
        clock_rate: u32,
        now: Instant,
        wall: SystemTime,
    ) -> Option<SenderReport> {
        let (timestamp, at) = self.last_timestamp?;
        let elapsed = now.saturating_duration_since(at).as_secs_f64();
        Some(SenderReport {
            ssrc,
            ntp_time: ntp_time(wall),
            rtp_time: timestamp.wrapping_add((elapsed * f64::from(clock_rate)) as u32),
            packet_count: self.packets,
            octet_count: self.octets,
            ..Default::default()
        })
    }
}

/// Seconds from 1900 (NTP's epoch) to 1970.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// `wall` as a 64-bit NTP timestamp (32.32 fixed point since 1900).
pub fn ntp_time(wall: SystemTime) -> u64 {
    let since = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::shared::marshal::Unmarshal;
    use std::time::Duration;

    fn packet<'a>(payload: &'a [u8], prefix: &'a [u8]) -> RtpOut<'a> {
        RtpOut {
            payload_type: 96,
            marker: true,
            sequence_number: 65535,
            timestamp: 0xdead_beef,
            ssrc: 0x1234_5678,
            payload_prefix: prefix,
            payload,
        }
    }

    #[test]
    fn marshal_round_trips_through_rtcs_parser() {
        let mut exts = Extensions::default();
        exts.push(1, Bytes::from_static(&[0x85]));
        exts.push(3, Bytes::from_static(&[1, 2, 3]));
        let buf = marshal(&packet(b"payload", &[]), &exts, Some((5, 0xabcd)));
        let mut b = buf.freeze();
        let p = rtc::rtp::Packet::unmarshal(&mut b).expect("parses");
        assert_eq!(p.header.payload_type, 96);
        assert!(p.header.marker);
        assert_eq!(p.header.sequence_number, 65535);
        assert_eq!(p.header.timestamp, 0xdead_beef);
        assert_eq!(p.header.ssrc, 0x1234_5678);
        assert_eq!(p.header.get_extension(1).as_deref(), Some(&[0x85][..]));
        assert_eq!(p.header.get_extension(3).as_deref(), Some(&[1, 2, 3][..]));
        assert_eq!(
            p.header.get_extension(5).as_deref(),
            Some(&[0xab, 0xcd][..])
        );
        assert_eq!(&p.payload[..], b"payload");
    }

    #[test]
    fn marshal_without_extensions_has_no_extension_bit_and_keeps_the_prefix() {
        let buf = marshal(&packet(b"xy", &[0x12, 0x34]), &Extensions::default(), None);
        assert_eq!(buf[0], 0x80);
        assert_eq!(buf.len(), 12 + 4);
        let p = rtc::rtp::Packet::unmarshal(&mut buf.freeze()).expect("parses");
        assert_eq!(&p.payload[..], &[0x12, 0x34, b'x', b'y']);
    }

    #[test]
    fn extensions_that_do_not_fit_the_one_byte_form_are_left_out() {
        let mut exts = Extensions::default();
        exts.push(15, Bytes::from_static(&[1]));
        exts.push(2, Bytes::new());
        exts.push(2, Bytes::from(vec![0; 17]));
        for id in 1..=6 {
            exts.push(id, Bytes::from_static(&[9]));
        }
        assert_eq!(exts.as_slice().len(), MAX_EXTENSIONS);
        assert!(
            exts.as_slice()
                .iter()
                .all(|(id, v)| (1..=4).contains(id) && v.len() == 1)
        );
    }

    #[test]
    fn ring_answers_only_for_packets_it_still_holds() {
        let mut ring = SentRing::new(4);
        for seq in [65534u16, 65535, 0, 1, 2] {
            ring.record(
                seq,
                Sent {
                    sequence_number: seq,
                    timestamp: u32::from(seq),
                    marker: false,
                    payload: Bytes::from_static(b"p"),
                    resent_at: None,
                },
            );
        }
        assert!(ring.get(65534).is_none(), "overwritten by 2");
        assert_eq!(ring.get(65535).map(|s| s.timestamp), Some(65535));
        assert_eq!(ring.get(2).map(|s| s.timestamp), Some(2));
        assert!(ring.get(3).is_none(), "never sent");
    }

    #[test]
    fn sender_report_extrapolates_from_the_first_packet_of_the_last_frame() {
        let t0 = Instant::now();
        let mut s = SenderStats::default();
        assert!(s.report(1, 90_000, t0, SystemTime::now()).is_none());
        s.on_sent(1000, 100, t0);
        s.on_sent(1000, 50, t0 + Duration::from_millis(5));
        let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let r = s
            .report(7, 90_000, t0 + Duration::from_millis(100), wall)
            .expect("report");
        assert_eq!(r.ssrc, 7);
        assert_eq!(r.packet_count, 2);
        assert_eq!(r.octet_count, 150);
        assert_eq!(r.rtp_time, 1000 + 9000);
        assert_eq!(r.ntp_time >> 32, 1_700_000_000 + NTP_UNIX_OFFSET);
        assert_eq!(r.ntp_time & 0xffff_ffff, 0);
    }
}
