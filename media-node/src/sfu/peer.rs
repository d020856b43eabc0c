//! One peer connection of a session (a publish or a subscribe leg): its rtc
//! `RTCPeerConnection`, the interceptors each role needs, the addresses it was seen at, what
//! its subscriber reports (loss, REMB, GCC's estimate), and the send path for media the engine
//! builds itself ([`send_rtp`], see [`super::send`]). Datagrams out go to a bounded queue of
//! [`Transmit`]s.

use super::deliver::{DeliverRtcp, KeyframeRequests};
use super::keyframe::VideoCodec;
use super::send::{Extensions, RtpOut};
use super::uptrack::UpTrack;
use super::{DownKey, SessionId, TrackKey};
use crate::error::{Error, Result};
use bytes::BytesMut;
use rtc::interceptor::{
    CongestionControlBuilder, ExternalSend, ExternalSends, Gcc, NackGeneratorBuilder,
    ReceiverReportBuilder, Registry, Slot,
};
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::transport::{CandidateConfig, CandidateHostConfig, RTCIceCandidate};
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RtpCodecKind};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Silence after which a connection counts as disconnected.
pub(super) const ICE_DISCONNECTED_AFTER: Duration = Duration::from_secs(12);
/// Further silence after which it has failed and its session ends.
pub(super) const ICE_FAILED_AFTER: Duration = Duration::from_secs(18);
/// Send records waiting for a subscriber's congestion controller, at most. It takes them on each
/// feedback (every 50-100 ms from a browser); a leg whose feedback stops records no more.
pub(super) const MAX_PENDING_CC_SENDS: usize = 4096;
/// Bound on datagrams waiting to be sent; beyond it the oldest are dropped (UDP semantics).
pub const MAX_QUEUED_TRANSMITS: usize = 65_536;
/// Addresses remembered per peer connection (ICE may move between candidate pairs).
pub(super) const MAX_ADDRS_PER_PEER: usize = 4;
/// Send-side estimate a new subscriber connection starts from: enough for a 720p layer plus
/// audio, so a subscriber on a good path sees full quality at once; congestion lowers it.
pub(super) const GCC_INITIAL_BPS: f64 = 2_500_000.0;
/// The lowest send-side estimate GCC may reach.
pub const GCC_MIN_BPS: f64 = 100_000.0;
pub(super) const GCC_MAX_BPS: f64 = 50_000_000.0;

/// A datagram to send.
#[derive(Debug)]
pub struct Transmit {
    /// Destination.
    pub to: SocketAddr,
    /// Payload.
    pub data: BytesMut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Role {
    Publish,
    Subscribe,
}

pub(super) struct Peer {
    pub(super) pc: RTCPeerConnection,
    pub(super) session: SessionId,
    pub(super) role: Role,
    /// Local ICE ufrags, the current one last (an ICE restart adds one; datagrams with an
    /// older one still find the peer until it is dropped).
    pub(super) ufrags: Vec<(String, String)>,
    /// The remote ufrag of the last offer taken (a publish re-offer with another restarts ICE).
    pub(super) remote_ufrag: Option<String>,
    pub(super) addrs: Vec<SocketAddr>,
    pub(super) connected: bool,
    pub(super) created_at: Instant,
    pub(super) timeout: Option<Instant>,
    /// Publisher side: client track id to published track.
    pub(super) inbound: HashMap<String, TrackKey>,
    /// Subscriber side: outgoing SSRC (primary) to down-track.
    pub(super) downs_by_ssrc: HashMap<u32, DownKey>,
    pub(super) chat: Option<usize>,
    pub(super) chat_open: bool,
    /// Loss the subscriber reports (EWMA of RTCP fraction lost).
    pub(super) loss: f32,
    /// REMB estimate from the subscriber, bits per second.
    pub(super) remb_bps: Option<f64>,
    /// Send-side GCC estimate from TWCC feedback (see [`DeliverRtcp`]).
    pub(super) gcc_bps: Arc<AtomicU64>,
    /// Keyframe requests from the far end (see [`DeliverRtcp`]).
    pub(super) keyframe_requests: KeyframeRequests,
    /// Next transport-wide sequence number (subscribe legs: media goes out past `rtc`'s
    /// interceptors, see [`super::send`]).
    pub(super) twcc_seq: u16,
    /// Where sends are recorded for the congestion controller (subscribe legs).
    pub(super) cc_sends: Option<ExternalSends>,
}

impl Peer {
    /// A peer connection for one direction of `session`, with ICE credentials `ufrag` and `pwd`. Every interceptor costs two moves of each packet
    /// through its queue, so each role gets only the ones it uses: a publish leg receives
    /// (NACK generator, TWCC feedback, receiver reports). A subscribe leg's media goes out
    /// past the chain ([`super::send`]): the engine answers NACKs, numbers packets for TWCC and
    /// sends sender reports itself, and only GCC stays, reading the feedback and the sends the
    /// engine records for it. Both negotiate the same feedback.
    pub(super) fn new(
        session: SessionId,
        role: Role,
        ufrag: String,
        pwd: &str,
        now: Instant,
    ) -> Result<Self> {
        let mut media = MediaEngine::default();
        media.register_default_codecs().map_err(Error::rtc)?;
        let deliver = DeliverRtcp::default();
        let estimate = deliver.estimate();
        let keyframes = deliver.keyframes();
        let registry = Registry::new().with(Slot::from(14_000), deliver);
        let cc_sends = ExternalSends::default();
        for parameter in ["", "pli"] {
            media.register_feedback(
                RTCPFeedback {
                    typ: "nack".to_owned(),
                    parameter: parameter.to_owned(),
                },
                RtpCodecKind::Video,
            );
        }
        configure_simulcast_extension_headers(&mut media).map_err(Error::rtc)?;
        let registry = match role {
            // Ask publishers for what the node lost; report arrivals for their estimator.
            Role::Publish => configure_twcc_receiver_only(registry, &mut media)
                .map_err(Error::rtc)?
                .with(Slot::NackGenerator, NackGeneratorBuilder::new().build())
                .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build()),
            // Estimate the subscriber's path with send-side GCC (browsers that negotiate
            // transport-cc send no REMB). No pacer: publishers already paced what we forward,
            // and a pacer would add queueing delay.
            Role::Subscribe => {
                // Only for the media engine (transport-cc negotiated): a subscribe leg
                // receives no RTP to report arrivals of.
                let _ = configure_twcc_receiver_only(Registry::new(), &mut media)
                    .map_err(Error::rtc)?;
                registry.with(
                    Slot::CongestionControl,
                    CongestionControlBuilder::new(Gcc::new(
                        GCC_INITIAL_BPS,
                        GCC_MIN_BPS,
                        GCC_MAX_BPS,
                    ))
                    .with_external_sends(cc_sends.clone())
                    .build(),
                )
            }
        };
        media
            .register_header_extension(
                rtc::rtp_transceiver::rtp_sender::RTCRtpHeaderExtensionCapability {
                    uri: rtc::sdp::extmap::AUDIO_LEVEL_URI.to_owned(),
                },
                RtpCodecKind::Audio,
                None,
            )
            .map_err(Error::rtc)?;
        let settings = SettingEngineBuilder::new()
            .with_lite(true)
            .with_ice_credentials(ufrag.clone(), pwd.to_owned())
            .with_include_loopback_candidate(true)
            // Browsers send consent checks every 4-6 s (RFC 7675); the library's 5 s default
            // flaps on that jitter. Disconnected after 12 s of silence, failed (and the
            // session dropped) after 30 s.
            .with_ice_timeouts(Some(ICE_DISCONNECTED_AFTER), Some(ICE_FAILED_AFTER), None)
            .build();
        let pc = RTCPeerConnectionBuilder::new()
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(Error::rtc)?;
        Ok(Self {
            pc,
            session,
            role,
            ufrags: vec![(ufrag, pwd.to_owned())],
            remote_ufrag: None,
            addrs: Vec::new(),
            connected: false,
            created_at: now,
            timeout: None,
            inbound: HashMap::new(),
            downs_by_ssrc: HashMap::new(),
            chat: None,
            chat_open: false,
            loss: 0.0,
            remb_bps: None,
            gcc_bps: estimate,
            keyframe_requests: keyframes,
            twcc_seq: 0,
            cc_sends: (role == Role::Subscribe).then_some(cc_sends),
        })
    }

    /// What the path to this peer can carry: the lower of the REMB and GCC estimates.
    pub(super) fn available_bps(&self) -> Option<f64> {
        let gcc = f64::from_bits(self.gcc_bps.load(Ordering::Relaxed));
        let gcc = (gcc > 0.0).then_some(gcc);
        match (self.remb_bps, gcc) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Clone)]
pub(super) struct LegMapping {
    pub(super) payload_type: u8,
    /// (publisher id, subscriber id) for extensions worth carrying over.
    pub(super) ext_map: Vec<(u8, u8)>,
    /// The track is VP8: descriptors are rewritten across layer switches.
    pub(super) vp8: bool,
    /// The transport-wide sequence number's extension id, when negotiated.
    pub(super) twcc_ext: Option<u8>,
    /// RTX payload type and SSRC, when negotiated: NACKed packets are resent on it.
    pub(super) rtx: Option<(u8, u32)>,
    /// RTP clock rate, for sender reports.
    pub(super) clock_rate: u32,
}

/// Header extensions carried from publisher to subscriber (rewritten to the subscriber's ids).
/// MID, RID and transport-wide sequence numbers belong to one leg and are never copied.
pub(super) const FORWARDED_EXTENSIONS: &[&str] = &[
    rtc::sdp::extmap::AUDIO_LEVEL_URI,
    rtc::sdp::extmap::ABS_SEND_TIME_URI,
    rtc::sdp::extmap::VIDEO_ORIENTATION_URI,
];

/// The payload type, extension ids and RTX stream `track` has on a subscriber's leg, once
/// negotiated.
pub(super) fn resolve_leg(
    peer: &mut Peer,
    sender: RTCRtpSenderId,
    track: &UpTrack,
) -> Option<LegMapping> {
    let codec = track.codec.as_ref()?;
    let mut rtp_sender = peer.pc.rtp_sender(sender)?;
    let params = rtp_sender.get_parameters();
    let codecs = &params.rtp_parameters.codecs;
    let chosen = codecs
        .iter()
        .find(|c| {
            c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type)
                && c.rtp_codec.sdp_fmtp_line == codec.sdp_fmtp_line
        })
        .or_else(|| {
            codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(&codec.mime_type))
        })?;
    let payload_type = chosen.payload_type;
    let ext_id = |uri: &str| {
        params
            .rtp_parameters
            .header_extensions
            .iter()
            .find(|h| h.uri == uri)
            .and_then(|h| u8::try_from(h.id).ok())
    };
    let ext_map = track
        .ext_uris
        .iter()
        .filter(|(_, uri)| FORWARDED_EXTENSIONS.contains(&uri.as_str()))
        .filter_map(|(id, uri)| Some((*id, ext_id(uri)?)))
        .collect();
    let apt = format!("apt={payload_type}");
    let rtx_pt = codecs
        .iter()
        .find(|c| {
            c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx")
                && c.rtp_codec
                    .sdp_fmtp_line
                    .split(';')
                    .any(|f| f.trim() == apt)
        })
        .map(|c| c.payload_type);
    let rtx_ssrc = params
        .encodings
        .first()
        .and_then(|e| e.rtp_coding_parameters.rtx.as_ref())
        .map(|r| r.ssrc);
    Some(LegMapping {
        payload_type,
        ext_map,
        vp8: track.video_codec == VideoCodec::Vp8,
        twcc_ext: ext_id(rtc::sdp::extmap::TRANSPORT_CC_URI)
            .filter(|id| super::send::one_byte_id(*id)),
        rtx: rtx_pt.zip(rtx_ssrc),
        clock_rate: chosen.rtp_codec.clock_rate,
    })
}

/// Protects `out` with the peer's SRTP context and queues it for the socket, numbered for
/// transport-wide congestion control when the leg negotiated it (see [`super::send`]).
pub(super) fn send_rtp(
    peer: &mut Peer,
    transmits: &mut VecDeque<Transmit>,
    out: &RtpOut<'_>,
    exts: &Extensions,
    twcc_ext: Option<u8>,
    now: Instant,
) -> std::result::Result<(), rtc::shared::error::Error> {
    let Some((addr, srtp)) = peer.pc.rtp_send_path() else {
        return Err(rtc::shared::error::Error::Other(
            "no selected pair or SRTP keys yet".to_owned(),
        ));
    };
    let twcc = twcc_ext.map(|id| (id, peer.twcc_seq));
    let plain = super::send::marshal(out, exts, twcc);
    let protected = srtp.encrypt_rtp(&plain)?;
    if let Some((_, seq)) = twcc {
        peer.twcc_seq = seq.wrapping_add(1);
        if let Some(sends) = &peer.cc_sends {
            let mut sends = sends.lock().unwrap_or_else(|e| e.into_inner());
            if sends.len() < MAX_PENDING_CC_SENDS {
                sends.push(ExternalSend {
                    ssrc: out.ssrc,
                    sequence_number: out.sequence_number,
                    twcc_sequence_number: seq,
                    size: plain.len(),
                    departure: now,
                });
            }
        }
    }
    push_transmit(transmits, addr, protected);
    Ok(())
}

/// Adds the one host candidate at `addr` to `pc`'s local description (no trickle: the
/// candidate goes out in the SDP). Used for the node's own legs and by test clients.
pub fn add_host_candidate(pc: &mut RTCPeerConnection, addr: SocketAddr) -> Result<()> {
    let candidate = CandidateHostConfig {
        base_config: CandidateConfig {
            network: "udp".to_owned(),
            address: addr.ip().to_string(),
            port: addr.port(),
            component: 1,
            ..Default::default()
        },
        ..Default::default()
    }
    .new_candidate_host()
    .map_err(Error::rtc)?;
    let init = RTCIceCandidate::from(&candidate)
        .to_json()
        .map_err(Error::rtc)?;
    pc.add_local_candidate(init).map_err(Error::rtc)
}

/// Queues a datagram, dropping the oldest when the queue is full (the socket is far behind).
pub(super) fn push_transmit(transmits: &mut VecDeque<Transmit>, to: SocketAddr, data: BytesMut) {
    if transmits.len() >= MAX_QUEUED_TRANSMITS {
        transmits.pop_front();
    }
    transmits.push_back(Transmit { to, data });
}
