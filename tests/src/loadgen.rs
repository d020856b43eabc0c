//! A WebRTC load generator on the sans-I/O `rtc` core: real ICE, DTLS and SRTP sessions that
//! publish synthetic simulcast VP8 and Opus over WHIP and play them back over WHEP (or over a
//! signalling session that stays open: Janus's API, [`crate::signalled`]'s WebSockets).
//!
//! Every packet carries the microsecond it was sent (since [`epoch`]) so that receivers in the
//! same process measure one-way forwarding latency. The VP8 payloads carry just enough of a real
//! payload descriptor and frame header for an SFU to find keyframes; nothing decodes them.
//!
//! To keep the generator from becoming the bottleneck, subscribers come in two kinds:
//! *full* ones hand every datagram to their peer connection (SRTP decryption, NACK, TWCC and
//! receiver reports, latency samples), and *light* ones complete ICE and DTLS the same way but
//! count media from the clear RTP header without decrypting it. The node does the same work for
//! both.

use anyhow::{Context, bail};
use bytes::{BufMut, Bytes, BytesMut};
use media_node::sfu::deliver::DeliverRtcp;
use media_node::sfu::engine::add_host_candidate;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, register_default_interceptors,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp::header::{Extension, Header};
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpSenderId, RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

/// Where clients of a media-node bind.
const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The instant every send timestamp counts from.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_micros() as u64
}

/// One simulcast layer of the synthetic publisher.
#[derive(Debug, Clone, Copy)]
pub struct LayerSpec {
    /// RTP stream id.
    pub rid: &'static str,
    /// Target bitrate, bits per second.
    pub bitrate_bps: u32,
}

/// The three layers a browser sends for a 720p camera (quarter, half, full).
pub const SIMULCAST_720P: [LayerSpec; 3] = [
    LayerSpec {
        rid: "q",
        bitrate_bps: 150_000,
    },
    LayerSpec {
        rid: "h",
        bitrate_bps: 500_000,
    },
    LayerSpec {
        rid: "f",
        bitrate_bps: 1_700_000,
    },
];

const FPS: u32 = 30;
const AUDIO_PACKET_INTERVAL: Duration = Duration::from_millis(20);
const AUDIO_PAYLOAD_BYTES: usize = 80;
const MAX_PAYLOAD_BYTES: usize = 1_100;
const KEYFRAME_SIZE_FACTOR: usize = 4;
const AUDIO_MAGIC: u8 = 0xAA;

/// What a client has seen, shared with whoever runs the benchmark.
#[derive(Default, Debug)]
pub struct Counters {
    /// ICE and DTLS completed.
    pub connected: AtomicBool,
    /// The connection failed or closed.
    pub failed: AtomicBool,
    /// Media packets sent (publisher).
    pub sent: AtomicU64,
    /// Media packets the publisher's own peer connection refused to send.
    pub send_errors: AtomicU64,
    /// Keyframe requests received (publisher).
    pub plis: AtomicU64,
    /// Distinct media packets received (subscriber).
    pub received: AtomicU64,
    /// Media packets the sequence numbers say should have arrived (subscriber).
    pub expected: AtomicU64,
    /// Media bytes received, RTP headers included (subscriber).
    pub bytes: AtomicU64,
    /// When the first video packet arrived, in microseconds since [`epoch`] (0: none yet; full
    /// subscribers only).
    pub first_video_us: AtomicU64,
    /// One-way latency samples in microseconds (full subscribers only).
    pub latency_us: Mutex<Vec<u32>>,
    /// A publisher with its microphone off: it sends no audio packets (as a muted client
    /// with Opus DTX sends almost none).
    pub audio_muted: AtomicBool,
}

impl Counters {
    /// Counts a media packet not seen before.
    fn count_new(&self, bytes: u64) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Notes that a video packet arrived (the first one stays).
    fn saw_video(&self) {
        if self.first_video_us.load(Ordering::Relaxed) == 0 {
            let now = micros_since_epoch(Instant::now()).max(1);
            let _ =
                self.first_video_us
                    .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    /// Time from `start` to the first video packet, if one has arrived.
    pub fn time_to_video(&self, start: Instant) -> Option<Duration> {
        let at = self.first_video_us.load(Ordering::Relaxed);
        (at != 0).then(|| {
            Duration::from_micros(at).saturating_sub(start.saturating_duration_since(epoch()))
        })
    }
}

/// A running client; stops when dropped.
pub struct Client {
    /// Its counters.
    pub counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
    /// The WHIP or WHEP resource URL, for `DELETE`.
    pub resource: Option<String>,
    /// Told when the client is dropped: a signalling session that outlives the offer/answer
    /// (a WebSocket of [`crate::signalled`]) says goodbye and ends.
    pub on_drop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Client {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.task.abort();
        if let Some(tx) = self.on_drop.take() {
            let _ = tx.send(());
        }
    }
}

/// What a signalling session that stays open tells a running client (see [`Signals`]).
pub enum Signal {
    /// A remote ICE candidate that arrived after the description (trickle ICE).
    Candidate(RTCIceCandidateInit),
    /// A new offer from the server (renegotiation); the answer goes back on the sender.
    Offer(String, tokio::sync::oneshot::Sender<anyhow::Result<String>>),
}

/// The receiving end a client reads [`Signal`]s from.
pub type Signals = tokio::sync::mpsc::UnboundedReceiver<Signal>;

/// Loss and distinct packets per SSRC, from extended sequence numbers and a 1024-packet
/// window of what has been seen (so retransmissions are not counted twice).
#[derive(Default)]
struct SeqTracker {
    max: Option<u64>,
    seen: [u64; 16],
}

impl SeqTracker {
    /// Records `seq`; returns (new packets expected, whether this one is new).
    fn record(&mut self, seq: u16) -> (u64, bool) {
        const WINDOW: u64 = 1024;
        let Some(max) = self.max else {
            let ext = (1u64 << 32) + u64::from(seq);
            self.max = Some(ext);
            self.seen = [0; 16];
            self.mark(ext);
            return (1, true);
        };
        let delta = i64::from(seq.wrapping_sub(max as u16) as i16);
        let ext = (max as i64 + delta) as u64;
        if ext > max {
            let advance = ext - max;
            if advance >= WINDOW {
                self.seen = [0; 16];
            } else {
                for s in max + 1..=ext {
                    self.clear(s);
                }
            }
            self.max = Some(ext);
            self.mark(ext);
            (advance, true)
        } else if max - ext >= WINDOW || self.is_marked(ext) {
            (0, false)
        } else {
            self.mark(ext);
            (0, true)
        }
    }
    fn mark(&mut self, ext: u64) {
        let i = (ext % 1024) as usize;
        self.seen[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, ext: u64) {
        let i = (ext % 1024) as usize;
        self.seen[i / 64] &= !(1 << (i % 64));
    }
    fn is_marked(&self, ext: u64) -> bool {
        let i = (ext % 1024) as usize;
        self.seen[i / 64] & (1 << (i % 64)) != 0
    }
}

fn new_peer_connection(now: Instant) -> anyhow::Result<RTCPeerConnection> {
    let mut media = MediaEngine::default();
    media.register_default_codecs()?;
    configure_simulcast_extension_headers(&mut media)?;
    let registry = Registry::new().with(Slot::from(14_000), DeliverRtcp::default());
    let registry = register_default_interceptors(registry, &mut media)?;
    Ok(RTCPeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)?)
}

/// Sets `pc`'s offer as its local description with one host candidate on `addr`; returns it.
fn local_offer(pc: &mut RTCPeerConnection, addr: SocketAddr) -> anyhow::Result<String> {
    let offer = pc.create_offer(None)?;
    pc.set_local_description(Instant::now(), offer)?;
    add_host_candidate(pc, addr)?;
    Ok(pc.local_description().context("no local description")?.sdp)
}

/// Posts an offer to `url` (WHIP or WHEP); returns the answer and the resource's Location.
async fn post_offer(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    sdp: String,
) -> anyhow::Result<(String, String)> {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/sdp")
        .body(sdp)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await?;
    if !status.is_success() {
        bail!("{url}: {status}: {body}");
    }
    Ok((body, location.context("no Location header")?))
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("{}{location}", base.trim_end_matches('/'))
    }
}

/// The `a=mid` of each media section, in order.
fn mids(sdp: &str) -> Vec<String> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=mid:"))
        .map(|m| m.trim().to_owned())
        .collect()
}

struct VideoLayer {
    spec: LayerSpec,
    ssrc: u32,
    seq: u16,
    keyframe_due: bool,
}

struct Publishing {
    video: RTCRtpSenderId,
    audio: RTCRtpSenderId,
    layers: Vec<VideoLayer>,
    audio_ssrc: u32,
    audio_seq: u16,
    video_pt: u8,
    audio_pt: u8,
    /// Extension ids negotiated on each sender (video: mid, rid; audio: mid), and the mid
    /// values per section.
    mid_id: Option<u8>,
    rid_id: Option<u8>,
    audio_mid_id: Option<u8>,
    video_mid: Bytes,
    audio_mid: Bytes,
    next_frame: Instant,
    next_audio: Instant,
    /// The `next_audio` the last audio packet was sent for (one packet per interval).
    audio_sent_for: Instant,
    frame: u32,
}

enum Role {
    Publisher(Box<Publishing>),
    Subscriber { full: bool },
}

/// Starts a publisher of synthetic simulcast video (three layers) and audio over WHIP.
pub async fn publish(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    token: &str,
    layers: &[LayerSpec],
) -> anyhow::Result<Client> {
    let url = format!("{}/whip/{room}", base.trim_end_matches('/'));
    publish_with(LOOPBACK, layers, |offer| async move {
        let (answer, location) = post_offer(http, &url, token, offer).await?;
        Ok((answer, Some(absolute(base, &location))))
    })
    .await
}

/// Starts a publisher of synthetic simulcast video and audio on a socket bound to `ip`, whose
/// offer `signal` takes to a server, returning the server's answer and, if it has one, the
/// session's resource URL.
pub async fn publish_with<F, Fut>(
    ip: IpAddr,
    layers: &[LayerSpec],
    signal: F,
) -> anyhow::Result<Client>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<(String, Option<String>)>>,
{
    publish_signalled(ip, layers, signal, None).await
}

/// [`publish_with`], and afterwards the client takes trickled candidates and new offers from
/// `signals` (if given).
pub async fn publish_signalled<F, Fut>(
    ip: IpAddr,
    layers: &[LayerSpec],
    signal: F,
    signals: Option<Signals>,
) -> anyhow::Result<Client>
where
    F: FnOnce(String) -> Fut,
    Fut: Future<Output = anyhow::Result<(String, Option<String>)>>,
{
    let sock = UdpSocket::bind((ip, 0)).await?;
    let addr = sock.local_addr()?;
    let mut pc = new_peer_connection(Instant::now())?;
    let vp8 = RTCRtpCodec {
        mime_type: "video/VP8".into(),
        clock_rate: 90_000,
        ..Default::default()
    };
    let opus = RTCRtpCodec {
        mime_type: "audio/opus".into(),
        clock_rate: 48_000,
        channels: 2,
        ..Default::default()
    };
    let mut video_layers = Vec::new();
    let encodings = layers
        .iter()
        .map(|spec| {
            let ssrc = rand::random::<u32>();
            video_layers.push(VideoLayer {
                spec: *spec,
                ssrc,
                seq: rand::random(),
                keyframe_due: true,
            });
            RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    rid: spec.rid.to_owned(),
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec: vp8.clone(),
                ..Default::default()
            }
        })
        .collect();
    let video = pc.add_track(MediaStreamTrack::new(
        "loadgen".into(),
        "camera".into(),
        "camera".into(),
        RtpCodecKind::Video,
        encodings,
    ))?;
    let audio_ssrc = rand::random::<u32>();
    let audio = pc.add_track(MediaStreamTrack::new(
        "loadgen".into(),
        "microphone".into(),
        "microphone".into(),
        RtpCodecKind::Audio,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(audio_ssrc),
                ..Default::default()
            },
            codec: opus,
            ..Default::default()
        }],
    ))?;
    let offer = local_offer(&mut pc, addr)?;
    let (answer, resource) = signal(offer).await?;
    pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(answer)?)?;

    let local = pc.local_description().context("local")?.sdp;
    let section_mids = mids(&local);
    let mut pt = |id: RTCRtpSenderId, mime: &str| -> anyhow::Result<(u8, Option<u8>, Option<u8>)> {
        let mut s = pc.rtp_sender(id).context("sender")?;
        let p = s.get_parameters();
        let pt = p
            .rtp_parameters
            .codecs
            .iter()
            .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
            .map(|c| c.payload_type)
            .with_context(|| format!("{mime} not negotiated"))?;
        let ext = |uri: &str| {
            p.rtp_parameters
                .header_extensions
                .iter()
                .find(|h| h.uri == uri)
                .map(|h| h.id as u8)
        };
        Ok((
            pt,
            ext(rtc::sdp::extmap::SDES_MID_URI),
            ext(rtc::sdp::extmap::SDES_RTP_STREAM_ID_URI),
        ))
    };
    let (video_pt, mid_id, rid_id) = pt(video, "video/VP8")?;
    let (audio_pt, audio_mid_id, _) = pt(audio, "audio/opus")?;
    let now = Instant::now();
    let role = Role::Publisher(Box::new(Publishing {
        video,
        audio,
        layers: video_layers,
        audio_ssrc,
        audio_seq: rand::random(),
        video_pt,
        audio_pt,
        mid_id,
        rid_id,
        audio_mid_id,
        video_mid: Bytes::from(section_mids.first().cloned().unwrap_or_default()),
        audio_mid: Bytes::from(section_mids.get(1).cloned().unwrap_or_default()),
        next_frame: now,
        next_audio: now,
        audio_sent_for: now,
        frame: 0,
    }));
    Ok(spawn(pc, sock, role, resource, signals))
}

/// Starts a WHEP subscriber to `room`; `full` decrypts and measures latency (see the module
/// documentation).
pub async fn subscribe(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    token: &str,
    full: bool,
) -> anyhow::Result<Client> {
    let sock = UdpSocket::bind((LOOPBACK, 0)).await?;
    let addr = sock.local_addr()?;
    let mut pc = new_peer_connection(Instant::now())?;
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        pc.add_transceiver_from_kind(
            kind,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                streams: vec![],
                send_encodings: vec![],
            }),
        )?;
    }
    let url = format!("{}/whep/{room}", base.trim_end_matches('/'));
    let offer = local_offer(&mut pc, addr)?;
    let (answer, location) = post_offer(http, &url, token, offer).await?;
    pc.set_remote_description(Instant::now(), RTCSessionDescription::answer(answer)?)?;
    Ok(spawn(
        pc,
        sock,
        Role::Subscriber { full },
        Some(absolute(base, &location)),
        None,
    ))
}

/// Starts a subscriber on a socket bound to `ip` that answers a server's offer (as Janus's
/// VideoRoom makes one for each subscriber); returns it and the answer to send back.
pub async fn subscribe_to_offer(
    ip: IpAddr,
    offer: String,
    full: bool,
) -> anyhow::Result<(Client, String)> {
    subscribe_to_offer_signalled(ip, offer, full, None).await
}

/// [`subscribe_to_offer`], and afterwards the client takes trickled candidates and new offers
/// from `signals` (if given).
pub async fn subscribe_to_offer_signalled(
    ip: IpAddr,
    offer: String,
    full: bool,
    signals: Option<Signals>,
) -> anyhow::Result<(Client, String)> {
    let sock = UdpSocket::bind((ip, 0)).await?;
    let addr = sock.local_addr()?;
    let mut pc = new_peer_connection(Instant::now())?;
    pc.set_remote_description(Instant::now(), RTCSessionDescription::offer(offer)?)?;
    let answer = pc.create_answer(None)?;
    pc.set_local_description(Instant::now(), answer)?;
    add_host_candidate(&mut pc, addr)?;
    let sdp = pc.local_description().context("no local description")?.sdp;
    Ok((
        spawn(pc, sock, Role::Subscriber { full }, None, signals),
        sdp,
    ))
}

fn spawn(
    pc: RTCPeerConnection,
    sock: UdpSocket,
    role: Role,
    resource: Option<String>,
    signals: Option<Signals>,
) -> Client {
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let task = tokio::spawn(run(pc, sock, role, counters.clone(), stop.clone(), signals));
    Client {
        counters,
        stop,
        task,
        resource,
        on_drop: None,
    }
}

/// Applies a signal from a signalling session to `pc`.
fn apply(pc: &mut RTCPeerConnection, signal: Signal) {
    match signal {
        Signal::Candidate(c) => {
            let _ = pc.add_remote_candidate(c);
        }
        Signal::Offer(sdp, reply) => {
            let answer = (|| {
                let now = Instant::now();
                pc.set_remote_description(now, RTCSessionDescription::offer(sdp)?)?;
                let answer = pc.create_answer(None)?;
                pc.set_local_description(now, answer)?;
                Ok(pc.local_description().context("no local description")?.sdp)
            })();
            let _ = reply.send(answer);
        }
    }
}

/// Where the send timestamp sits in a payload this module built.
fn timestamp_offset(payload: &[u8]) -> Option<usize> {
    match *payload.first()? {
        AUDIO_MAGIC | 0x00 => Some(1),
        0x10 => Some(if payload.get(1)? & 1 == 0 { 11 } else { 4 }),
        _ => None,
    }
}

fn read_timestamp(payload: &[u8]) -> Option<u64> {
    let at = timestamp_offset(payload)?;
    let b: [u8; 8] = payload.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(b))
}

fn is_rtp(d: &[u8]) -> bool {
    // RFC 7983: 128..=191 is RTP or RTCP; RTCP packet types are 192..=223 (RFC 5761).
    d.len() >= 12 && (128..=191).contains(&d[0]) && !(192..=223).contains(&d[1])
}

async fn run(
    mut pc: RTCPeerConnection,
    sock: UdpSocket,
    mut role: Role,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
    mut signals: Option<Signals>,
) {
    let local = match sock.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let mut remote: Option<SocketAddr> = None;
    let mut trackers: HashMap<u32, SeqTracker> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let mut connected = false;
    while !stop.load(Ordering::Relaxed) {
        while let Some(m) = pc.poll_write() {
            let to = m.transport.peer_addr;
            remote = Some(to);
            let _ = sock.send_to(&m.message, to).await;
        }
        while let Some(ev) = pc.poll_event() {
            if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) = ev {
                match state {
                    RTCPeerConnectionState::Connected => {
                        connected = true;
                        counters.connected.store(true, Ordering::Relaxed);
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        counters.failed.store(true, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        }
        while let Some(m) = pc.poll_read() {
            match (m.message, &mut role) {
                (RTCMessage::RtcpPacket(_, packets), Role::Publisher(p)) => {
                    for pkt in &packets {
                        if let Some(pli) = pkt.as_any().downcast_ref::<PictureLossIndication>() {
                            counters.plis.fetch_add(1, Ordering::Relaxed);
                            for l in &mut p.layers {
                                if l.ssrc == pli.media_ssrc {
                                    l.keyframe_due = true;
                                }
                            }
                        }
                    }
                }
                (RTCMessage::RtpPacket(_, pkt), Role::Subscriber { .. }) => {
                    let (expected, new) = trackers
                        .entry(pkt.header.ssrc)
                        .or_default()
                        .record(pkt.header.sequence_number);
                    counters.expected.fetch_add(expected, Ordering::Relaxed);
                    if new {
                        counters.count_new(pkt.payload.len() as u64 + 12);
                        if pkt.payload.first().is_some_and(|&b| b != AUDIO_MAGIC) {
                            counters.saw_video();
                        }
                        if let Some(sent) = read_timestamp(&pkt.payload) {
                            let us = micros_since_epoch(Instant::now()).saturating_sub(sent);
                            if let Ok(mut v) = counters.latency_us.lock() {
                                v.push(us.min(u64::from(u32::MAX)) as u32);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
        let now = Instant::now();
        let mut deadline = pc
            .poll_timeout()
            .unwrap_or(now + Duration::from_millis(100))
            .min(now + Duration::from_millis(100));
        if let (Role::Publisher(p), true) = (&role, connected) {
            deadline = deadline.min(p.next_frame).min(p.next_audio);
        }
        if deadline > now {
            tokio::select! {
                r = sock.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    let data = &buf[..n];
                    if let (Role::Subscriber { full: false }, true) = (&role, connected && is_rtp(data)) {
                        // Light subscriber: count from the clear header, do not decrypt.
                        let seq = u16::from_be_bytes([data[2], data[3]]);
                        let ssrc = u32::from_be_bytes([data[8], data[9], data[10], data[11]]);
                        let (expected, new) = trackers.entry(ssrc).or_default().record(seq);
                        counters.expected.fetch_add(expected, Ordering::Relaxed);
                        if new {
                            counters.count_new(n as u64);
                        }
                        continue;
                    }
                    let _ = pc.handle_read(TaggedBytesMut {
                        now: Instant::now(),
                        transport: TransportContext {
                            local_addr: local,
                            peer_addr: from,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: BytesMut::from(data),
                    });
                    continue;
                }
                signal = async {
                    match signals.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    match signal {
                        Some(signal) => apply(&mut pc, signal),
                        None => signals = None,
                    }
                    continue;
                }
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
        let now = Instant::now();
        if pc.poll_timeout().is_some_and(|t| t <= now) {
            let _ = pc.handle_timeout(now);
        }
        if let (Role::Publisher(p), true) = (&mut role, connected) {
            send_due(&mut pc, p, &counters, now);
        }
    }
    let _ = pc.close();
    while let Some(m) = pc.poll_write() {
        if let Some(to) = remote {
            let _ = sock.send_to(&m.message, to).await;
        }
    }
}

fn extensions(mid_id: Option<u8>, mid: &Bytes, rid: Option<(u8, &str)>) -> Vec<Extension> {
    let mut out = Vec::with_capacity(2);
    if let Some(id) = mid_id
        && !mid.is_empty()
    {
        out.push(Extension {
            id,
            payload: mid.clone(),
        });
    }
    if let Some((id, rid)) = rid {
        out.push(Extension {
            id,
            payload: Bytes::copy_from_slice(rid.as_bytes()),
        });
    }
    out
}

/// Sends one packet on `sender`, counting it as sent or refused.
fn write(
    pc: &mut RTCPeerConnection,
    sender: RTCRtpSenderId,
    now: Instant,
    header: Header,
    payload: Bytes,
    counters: &Counters,
) {
    let sent = pc.rtp_sender(sender).is_some_and(|mut s| {
        s.write_rtp(now, rtc::rtp::Packet { header, payload })
            .is_ok()
    });
    let counter = if sent {
        &counters.sent
    } else {
        &counters.send_errors
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

fn send_due(pc: &mut RTCPeerConnection, p: &mut Publishing, counters: &Counters, now: Instant) {
    let stamp = micros_since_epoch(now);
    if now >= p.next_audio {
        p.next_audio += AUDIO_PACKET_INTERVAL;
        if p.next_audio < now {
            p.next_audio = now + AUDIO_PACKET_INTERVAL;
        }
    }
    if p.next_audio > p.audio_sent_for && !counters.audio_muted.load(Ordering::Relaxed) {
        p.audio_sent_for = p.next_audio;
        let mut payload = BytesMut::with_capacity(AUDIO_PAYLOAD_BYTES);
        payload.put_u8(AUDIO_MAGIC);
        payload.put_u64(stamp);
        payload.resize(AUDIO_PAYLOAD_BYTES, 0);
        let header = Header {
            version: 2,
            payload_type: p.audio_pt,
            sequence_number: p.audio_seq,
            timestamp: (stamp / 1000 * 48) as u32,
            ssrc: p.audio_ssrc,
            extension: p.audio_mid_id.is_some(),
            extension_profile: 0xBEDE,
            extensions: extensions(p.audio_mid_id, &p.audio_mid, None),
            ..Default::default()
        };
        p.audio_seq = p.audio_seq.wrapping_add(1);
        write(pc, p.audio, now, header, payload.freeze(), counters);
    }
    if now < p.next_frame {
        return;
    }
    p.next_frame += Duration::from_secs(1) / FPS;
    if p.next_frame < now {
        p.next_frame = now + Duration::from_secs(1) / FPS;
    }
    p.frame = p.frame.wrapping_add(1);
    let rtp_ts = (stamp * 90 / 1000) as u32;
    for li in 0..p.layers.len() {
        let key = std::mem::take(&mut p.layers[li].keyframe_due);
        let spec = p.layers[li].spec;
        let mut left = (spec.bitrate_bps / 8 / FPS) as usize;
        if key {
            left *= KEYFRAME_SIZE_FACTOR;
        }
        let exts = extensions(p.mid_id, &p.video_mid, p.rid_id.map(|id| (id, spec.rid)));
        let mut first = true;
        while left > 0 {
            let chunk = left.min(MAX_PAYLOAD_BYTES);
            left -= chunk;
            let mut payload = BytesMut::with_capacity(chunk.max(24));
            if first {
                payload.put_u8(0x10); // S bit, partition 0
                if key {
                    // P bit clear (keyframe), then the start code and 1280x720.
                    payload
                        .put_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a, 0x00, 0x05, 0xd0, 0x02]);
                } else {
                    payload.put_slice(&[0x01, 0x00, 0x00]);
                }
            } else {
                payload.put_u8(0x00);
            }
            payload.put_u64(stamp);
            payload.resize(chunk.max(payload.len()), 0);
            let l = &mut p.layers[li];
            let header = Header {
                version: 2,
                payload_type: p.video_pt,
                sequence_number: l.seq,
                timestamp: rtp_ts,
                ssrc: l.ssrc,
                marker: left == 0,
                extension: !exts.is_empty(),
                extension_profile: 0xBEDE,
                extensions: exts.clone(),
                ..Default::default()
            };
            l.seq = l.seq.wrapping_add(1);
            first = false;
            write(pc, p.video, now, header, payload.freeze(), counters);
        }
    }
}

/// Waits until every client's connection is up; fails if one fails or `timeout` passes.
pub async fn wait_connected(clients: &[Client], timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let up = clients
            .iter()
            .filter(|c| c.counters.connected.load(Ordering::Relaxed))
            .count();
        if up == clients.len() {
            return Ok(());
        }
        if clients
            .iter()
            .any(|c| c.counters.failed.load(Ordering::Relaxed))
        {
            bail!("a load-generator connection failed");
        }
        if Instant::now() > deadline {
            bail!("only {up} of {} connections completed", clients.len());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Forwarding latencies the (full) subscribers measured, in milliseconds, sorted.
pub fn latencies_ms(subs: &[Client]) -> Vec<f64> {
    let mut v: Vec<f64> = subs
        .iter()
        .flat_map(|s| {
            s.counters
                .latency_us
                .lock()
                .map(|v| {
                    v.iter()
                        .map(|&us| f64::from(us) / 1000.0)
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_tracker_counts_loss_duplicates_and_wrap() {
        let mut t = SeqTracker::default();
        let mut expected = 0;
        let mut received = 0;
        for seq in [
            65_530u16, 65_531, 65_533, 65_533, 65_535, 0, 1, 1, 65_534, 3,
        ] {
            let (e, new) = t.record(seq);
            expected += e;
            received += u64::from(new);
        }
        // 65530..=3 is 10 packets; 65532 and 2 never arrived; 65533 and 1 came twice.
        assert_eq!(expected, 10);
        assert_eq!(received, 8);
    }

    #[test]
    fn timestamps_round_trip_through_payloads() {
        let mut key = vec![0x10, 0x00, 0, 0, 0x9d, 0x01, 0x2a, 0, 5, 0xd0, 2];
        key.extend(7u64.to_be_bytes());
        assert_eq!(read_timestamp(&key), Some(7));
        let mut delta = vec![0x10, 0x01, 0, 0];
        delta.extend(8u64.to_be_bytes());
        assert_eq!(read_timestamp(&delta), Some(8));
        let mut cont = vec![0x00];
        cont.extend(9u64.to_be_bytes());
        assert_eq!(read_timestamp(&cont), Some(9));
        assert_eq!(read_timestamp(&[0x55, 1, 2]), None);
    }
}
