//! A fake-time harness for the engine, for tests in this crate and in `media-node/tests/`:
//! engines, WebRTC clients (rtc's own `RTCPeerConnection`, in memory) that publish and
//! subscribe through the engines' signalling API, and relay links between engines, all
//! stepped together in rounds of [`ROUND`] of fake time. No sockets, no threads, no sleeps:
//! a scenario of seconds runs in milliseconds, and the same seed of events gives the same run.
//!
//! What moves in a round ([`Net::step`]): every client's datagrams into its node, every
//! node's timers, every node's datagrams to its clients, every node's signalling messages to
//! its clients (a subscribe offer is answered at once, as the web client does), and every
//! relay link's control messages and media datagrams to the far node. [`Net::impair`] can drop
//! or hold back any datagram on the way (client paths and relay links).
//!
//! As quinn-proto steps two endpoints with `Pair` and str0m's tests drive two peers over one
//! shared `common.rs`, this drives N engines and M clients.

use super::deliver::DeliverRtcp;
use super::engine::{Engine, EngineConfig, SessionId, add_host_candidate};
use crate::metrics::Metrics;
use crate::relay::proto::{Control, Datagram};
use moim_wire::JoinClaims;
use moim_wire::admin::{RelayLink, RoomAssignment};
use moim_wire::signal::ServerMessage;
use rtc::interceptor::{Registry, Slot};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::register_default_interceptors;
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::event::RTCPeerConnectionEvent;
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::peer_connection::{RTCPeerConnection, RTCPeerConnectionBuilder};
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{NackPair, TransportLayerNack};
use rtc::rtp_transceiver::RTCRtpSenderId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// Fake time that passes per round.
pub const ROUND: Duration = Duration::from_millis(5);

/// Index of a node in [`Net::nodes`].
pub type NodeIx = usize;
/// Index of a client in [`Net::clients`].
pub type ClientIx = usize;

/// Where a datagram is going, for [`Net::impair`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    /// From a node to one of its clients.
    ToClient(ClientIx),
    /// From a client to its node.
    FromClient(ClientIx),
    /// A relay media datagram from one node to another.
    Relay {
        /// Sending node.
        from: NodeIx,
        /// Receiving node.
        to: NodeIx,
    },
}

/// A node under test.
pub struct TestNode {
    /// The engine.
    pub engine: Engine,
    /// Its media address.
    pub addr: SocketAddr,
}

/// A WebRTC client of one node: a WebSocket participant with rtc's peer connections.
pub struct Client {
    /// The node it joined.
    pub node: NodeIx,
    /// Its session there.
    pub session: SessionId,
    /// The address of its publish connection.
    pub pub_addr: SocketAddr,
    /// The address of its subscribe connection (a browser's two connections use two ports).
    pub sub_addr: SocketAddr,
    /// The publish connection, once it publishes.
    pub publish: Option<RTCPeerConnection>,
    /// The subscribe connection (the node's offer).
    pub subscribe: Option<RTCPeerConnection>,
    /// Each connection has reached `connected`: (publish, subscribe).
    pub connected: (bool, bool),
    /// Keyframe requests (PLI) the publish connection received.
    pub plis: usize,
    /// RTP received on the subscribe connection: (ssrc, sequence number).
    pub received: Vec<(u32, u16)>,
    /// Every signalling message the node sent it, in order.
    pub signals: Vec<ServerMessage>,
    /// The video sender, once it publishes video.
    pub video: Option<RTCRtpSenderId>,
    /// SSRC of its video.
    pub video_ssrc: u32,
    next_seq: u16,
}

impl Client {
    /// Subscribe offers received so far.
    pub fn offers(&self) -> usize {
        self.signals
            .iter()
            .filter(|m| matches!(m, ServerMessage::SubscribeOffer { .. }))
            .count()
    }

    /// Distinct RTP streams received with media (SSRCs).
    pub fn streams(&self) -> Vec<u32> {
        let mut s: Vec<u32> = self.received.iter().map(|(ssrc, _)| *ssrc).collect();
        s.sort_unstable();
        s.dedup();
        s
    }

    /// Sequence numbers received on stream `ssrc`, in arrival order.
    pub fn seqs(&self, ssrc: u32) -> Vec<u16> {
        self.received
            .iter()
            .filter(|(s, _)| *s == ssrc)
            .map(|(_, q)| *q)
            .collect()
    }
}

struct TestLink {
    a: NodeIx,
    b: NodeIx,
    /// The link's id at `a` and at `b`.
    id_a: u64,
    id_b: u64,
    up: bool,
}

/// Decides the fate of one datagram: `true` drops it.
pub type Impairment = Box<dyn FnMut(Hop, &[u8]) -> bool>;

/// Engines, clients and links, stepped together in fake time.
pub struct Net {
    /// Now, in fake time.
    pub now: Instant,
    /// The nodes.
    pub nodes: Vec<TestNode>,
    /// The clients.
    pub clients: Vec<Client>,
    links: Vec<TestLink>,
    next_link: u64,
    impair: Option<Impairment>,
    /// Relay media datagrams carried per (from, to) node pair.
    pub relay_media: HashMap<(NodeIx, NodeIx), usize>,
    /// Relay control messages carried, in order: (from, to, message).
    pub relay_control: Vec<(NodeIx, NodeIx, Control)>,
    /// Loss-repair feedback carried as datagrams (NACKs, keyframe requests): (from, to, it).
    pub relay_feedback: Vec<(NodeIx, NodeIx, Control)>,
    /// Probes the nodes asked of their links: (node, bits per second asked, careful).
    pub relay_probes: Vec<(NodeIx, f64, bool)>,
    /// Payload size of the video packets [`Net::send_video`] sends (the VP8 header padded
    /// with zeros; at least the header's 9 bytes).
    pub video_size: usize,
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

/// A join token's claims for `identity` in `room`, publishing and subscribing.
pub fn claims(identity: &str, room: &str) -> JoinClaims {
    JoinClaims {
        identity: identity.into(),
        room: room.into(),
        name: String::new(),
        can_publish: true,
        can_subscribe: true,
        can_chat: None,
        exp: u64::MAX / 2,
        nbf: None,
    }
}

/// A VP8 payload of one whole frame (payload descriptor S=1, partition 0; the frame header's
/// P bit says key or inter frame).
pub fn vp8(keyframe: bool) -> bytes::Bytes {
    bytes::Bytes::from(vec![
        0x10,
        if keyframe { 0x00 } else { 0x01 },
        0x9d,
        0x01,
        0x2a,
        0,
        0,
        0,
        0,
    ])
}

/// A client-side peer connection with rtc's default interceptors (NACK, reports, TWCC), as a
/// browser has.
pub fn client_pc(now: Instant) -> RTCPeerConnection {
    let mut media = MediaEngine::default();
    media
        .register_default_codecs()
        .unwrap_or_else(|e| panic!("codecs: {e}"));
    let registry = Registry::new().with(Slot::from(14_000), DeliverRtcp::default());
    let registry = register_default_interceptors(registry, &mut media)
        .unwrap_or_else(|e| panic!("interceptors: {e}"));
    RTCPeerConnectionBuilder::new()
        .with_media_engine(media)
        .with_interceptor_registry(registry)
        .build(now)
        .unwrap_or_else(|e| panic!("client peer connection: {e}"))
}

impl Net {
    /// An empty network at a fresh instant.
    pub fn new() -> Self {
        Self {
            now: Instant::now(),
            nodes: Vec::new(),
            clients: Vec::new(),
            links: Vec::new(),
            next_link: 1,
            impair: None,
            relay_media: HashMap::new(),
            relay_control: Vec::new(),
            relay_feedback: Vec::new(),
            relay_probes: Vec::new(),
            video_size: 0,
        }
    }

    /// Adds a node `id` in `region` (room limits of 50, 100 sessions).
    pub fn node(&mut self, id: &str, region: &str) -> NodeIx {
        let ix = self.nodes.len();
        let addr: SocketAddr = format!("10.0.{}.1:5000", ix + 1)
            .parse()
            .unwrap_or_else(|e| panic!("{e}"));
        let engine = Engine::new(
            EngineConfig {
                local_addr: addr,
                candidate_addr: addr,
                max_room_participants: 50,
                max_sessions: 100,
                node_id: id.into(),
                region: region.into(),
                connect_timeout: Duration::from_secs(30),
                relay_fit: true,
            },
            Metrics::new(),
        );
        self.nodes.push(TestNode { engine, addr });
        ix
    }

    /// Drops every datagram `f` says to drop, from now on.
    pub fn impair(&mut self, f: impl FnMut(Hop, &[u8]) -> bool + 'static) {
        self.impair = Some(Box::new(f));
    }

    /// No more impairment.
    pub fn clear_impairment(&mut self) {
        self.impair = None;
    }

    /// Brings up a relay link between `a` and `b` (as the driver does after the hello
    /// exchange; `a` dialled). Returns the link's id at `a` and at `b`.
    pub fn link(&mut self, a: NodeIx, b: NodeIx) -> (u64, u64) {
        let (id_a, id_b) = (self.next_link, self.next_link + 1);
        self.next_link += 2;
        let (a_id, a_region) = self.identity(a);
        let (b_id, b_region) = self.identity(b);
        let now = self.now;
        self.nodes[a]
            .engine
            .relay_up(id_a, b_id, b_region, true, now);
        self.nodes[b]
            .engine
            .relay_up(id_b, a_id, a_region, false, now);
        self.links.push(TestLink {
            a,
            b,
            id_a,
            id_b,
            up: true,
        });
        (id_a, id_b)
    }

    /// Takes the link between `a` and `b` down on both sides (a dead path).
    pub fn unlink(&mut self, a: NodeIx, b: NodeIx) {
        let now = self.now;
        for l in self
            .links
            .iter_mut()
            .filter(|l| l.up && ((l.a, l.b) == (a, b) || (l.a, l.b) == (b, a)))
        {
            l.up = false;
            self.nodes[l.a].engine.relay_down(l.id_a, now);
            self.nodes[l.b].engine.relay_down(l.id_b, now);
        }
    }

    /// Relay links up between `a` and `b`, as each side counts them.
    pub fn links_between(&self, a: NodeIx, b: NodeIx) -> usize {
        self.links
            .iter()
            .filter(|l| l.up && ((l.a, l.b) == (a, b) || (l.a, l.b) == (b, a)))
            .count()
    }

    fn identity(&self, n: NodeIx) -> (String, String) {
        let st = self.nodes[n].engine.status();
        (st.node_id, st.region)
    }

    /// The operator's plan for `room` on `node`: relay links to `peers` (`(peer, upstream)`).
    pub fn assign(&mut self, node: NodeIx, room: &str, peers: &[(NodeIx, bool)]) {
        let links = peers
            .iter()
            .map(|&(p, upstream)| RelayLink {
                peer: self.identity(p).0,
                address: None,
                upstream,
            })
            .collect();
        let now = self.now;
        let a = RoomAssignment {
            meeting: format!("test/{room}"),
            generation: 1,
            reserved: 10,
            max_participants: None,
            webinar: false,
            links,
            ..RoomAssignment::default()
        };
        self.nodes[node]
            .engine
            .assign(room, a, now)
            .unwrap_or_else(|e| panic!("assign: {e}"));
    }

    /// A participant `identity` joins `room` on `node` over WebSocket signalling.
    pub fn join(&mut self, node: NodeIx, room: &str, identity: &str) -> ClientIx {
        let ix = self.clients.len();
        let now = self.now;
        let (session, joined) = self.nodes[node]
            .engine
            .ws_join(&claims(identity, room), now)
            .unwrap_or_else(|e| panic!("join: {e}"));
        let addr = |port: u16| -> SocketAddr {
            format!("10.1.{}.{}:{port}", node + 1, ix + 1)
                .parse()
                .unwrap_or_else(|e| panic!("{e}"))
        };
        self.clients.push(Client {
            node,
            session,
            pub_addr: addr(6000),
            sub_addr: addr(6001),
            publish: None,
            subscribe: None,
            connected: (false, false),
            plis: 0,
            received: Vec::new(),
            signals: vec![joined],
            video: None,
            video_ssrc: 0,
            next_seq: 100,
        });
        self.route_signals();
        ix
    }

    /// The client leaves (its WebSocket closes).
    pub fn leave(&mut self, c: ClientIx) {
        let (node, session) = (self.clients[c].node, self.clients[c].session);
        let now = self.now;
        self.nodes[node].engine.leave(session, now);
        self.clients[c].publish = None;
        self.clients[c].subscribe = None;
    }

    /// The client publishes one VP8 video track with SSRC `ssrc`.
    pub fn publish_video(&mut self, c: ClientIx, ssrc: u32) {
        let now = self.now;
        let mut pc = client_pc(now);
        let codec = RTCRtpCodec {
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            ..Default::default()
        };
        let track = MediaStreamTrack::new(
            format!("s{ssrc}"),
            format!("cam{ssrc}"),
            format!("cam{ssrc}"),
            RtpCodecKind::Video,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        );
        let sender = pc.add_track(track).unwrap_or_else(|e| panic!("track: {e}"));
        let offer = pc
            .create_offer(None)
            .unwrap_or_else(|e| panic!("offer: {e}"));
        pc.set_local_description(now, offer)
            .unwrap_or_else(|e| panic!("local: {e}"));
        add_host_candidate(&mut pc, self.clients[c].pub_addr).unwrap_or_else(|e| panic!("{e}"));
        let sdp = pc
            .local_description()
            .unwrap_or_else(|| panic!("no local description"))
            .sdp;
        let (node, session) = (self.clients[c].node, self.clients[c].session);
        let answer = self.nodes[node]
            .engine
            .ws_publish(session, sdp, vec![], now)
            .unwrap_or_else(|e| panic!("publish: {e}"));
        pc.set_remote_description(
            now,
            RTCSessionDescription::answer(answer).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("remote: {e}"));
        let cl = &mut self.clients[c];
        cl.publish = Some(pc);
        cl.video = Some(sender);
        cl.video_ssrc = ssrc;
    }

    /// One VP8 frame in one packet from the client's video track.
    pub fn send_video(&mut self, c: ClientIx, keyframe: bool) {
        let (now, size) = (self.now, self.video_size);
        let cl = &mut self.clients[c];
        let (Some(pc), Some(sender)) = (cl.publish.as_mut(), cl.video) else {
            return;
        };
        let Some(mut s) = pc.rtp_sender(sender) else {
            return;
        };
        let pkt = rtc::rtp::Packet {
            header: rtc::rtp::header::Header {
                version: 2,
                payload_type: 96,
                sequence_number: cl.next_seq,
                timestamp: u32::from(cl.next_seq).wrapping_mul(3000),
                ssrc: cl.video_ssrc,
                marker: true,
                ..Default::default()
            },
            payload: {
                let mut p = vp8(keyframe).to_vec();
                p.resize(p.len().max(size), 0);
                p.into()
            },
        };
        cl.next_seq = cl.next_seq.wrapping_add(1);
        let _ = s.write_rtp(now, pkt);
    }

    /// The client's subscriber sends a NACK for `seqs` of stream `media_ssrc`.
    pub fn nack(&mut self, c: ClientIx, media_ssrc: u32, seqs: &[u16]) {
        let now = self.now;
        let Some(pc) = self.clients[c].subscribe.as_mut() else {
            return;
        };
        let Some(receiver) = pc.get_receivers().next() else {
            return;
        };
        let nack = TransportLayerNack {
            sender_ssrc: 1,
            media_ssrc,
            nacks: seqs
                .iter()
                .map(|&packet_id| NackPair {
                    packet_id,
                    lost_packets: 0,
                })
                .collect(),
        };
        if let Some(mut rx) = pc.rtp_receiver(receiver) {
            let _ = rx.write_rtcp(now, vec![Box::new(nack)]);
        }
    }

    /// The client's subscriber asks for a keyframe (PLI) of stream `media_ssrc`.
    pub fn pli(&mut self, c: ClientIx, media_ssrc: u32) {
        let now = self.now;
        let Some(pc) = self.clients[c].subscribe.as_mut() else {
            return;
        };
        let Some(receiver) = pc.get_receivers().next() else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 1,
            media_ssrc,
        };
        if let Some(mut rx) = pc.rtp_receiver(receiver) {
            let _ = rx.write_rtcp(now, vec![Box::new(pli)]);
        }
    }

    /// Delivers the engines' signalling to their clients; answers subscribe offers.
    fn route_signals(&mut self) {
        let now = self.now;
        for n in 0..self.nodes.len() {
            while let Some((session, msg)) = self.nodes[n].engine.poll_signal() {
                let Some(c) = self
                    .clients
                    .iter()
                    .position(|c| c.node == n && c.session == session)
                else {
                    continue;
                };
                if let ServerMessage::SubscribeOffer { sdp } = &msg {
                    let cl = &mut self.clients[c];
                    let pc = cl.subscribe.get_or_insert_with(|| client_pc(now));
                    let answered = RTCSessionDescription::offer(sdp.clone())
                        .ok()
                        .and_then(|o| pc.set_remote_description(now, o).ok())
                        .and_then(|()| {
                            if pc.local_description().is_none() {
                                add_host_candidate(pc, cl.sub_addr).ok()?;
                            }
                            let a = pc.create_answer(None).ok()?;
                            pc.set_local_description(now, a).ok()?;
                            pc.local_description().map(|d| d.sdp)
                        });
                    if let Some(answer) = answered {
                        let _ = self.nodes[n]
                            .engine
                            .ws_subscribe_answer(session, answer, now);
                    }
                }
                self.clients[c].signals.push(msg);
            }
            self.nodes[n].engine.drop_overflowed(now);
        }
    }

    fn dropped(&mut self, hop: Hop, data: &[u8]) -> bool {
        self.impair.as_mut().is_some_and(|f| f(hop, data))
    }

    /// One round: see the module doc.
    pub fn step(&mut self) {
        let now = self.now;
        // Clients to nodes.
        for c in 0..self.clients.len() {
            let mut out = Vec::new();
            let cl = &mut self.clients[c];
            for (pc, addr) in [
                (cl.publish.as_mut(), cl.pub_addr),
                (cl.subscribe.as_mut(), cl.sub_addr),
            ] {
                let Some(pc) = pc else { continue };
                while let Some(m) = pc.poll_write() {
                    out.push((addr, m.message));
                }
            }
            let node = self.clients[c].node;
            for (addr, d) in out {
                if !self.dropped(Hop::FromClient(c), &d) {
                    self.nodes[node].engine.handle_datagram(now, addr, &d);
                }
            }
        }
        // Timers, then relay traffic (which may queue more for clients).
        for n in 0..self.nodes.len() {
            self.nodes[n].engine.handle_timeout(now);
        }
        self.carry_relay();
        // Nodes to clients.
        for n in 0..self.nodes.len() {
            let node_addr = self.nodes[n].addr;
            while let Some(tx) = self.nodes[n].engine.poll_transmit() {
                let Some(c) = self
                    .clients
                    .iter()
                    .position(|c| c.pub_addr == tx.to || c.sub_addr == tx.to)
                else {
                    continue;
                };
                if self.dropped(Hop::ToClient(c), &tx.data) {
                    continue;
                }
                let cl = &mut self.clients[c];
                let pc = if tx.to == cl.pub_addr {
                    cl.publish.as_mut()
                } else {
                    cl.subscribe.as_mut()
                };
                if let Some(pc) = pc {
                    let _ = pc.handle_read(TaggedBytesMut {
                        now,
                        transport: TransportContext {
                            local_addr: tx.to,
                            peer_addr: node_addr,
                            ecn: None,
                            transport_protocol: TransportProtocol::UDP,
                        },
                        message: tx.data,
                    });
                }
            }
        }
        self.route_signals();
        // Clients' own timers and what they received.
        for cl in &mut self.clients {
            for (i, pc) in [cl.publish.as_mut(), cl.subscribe.as_mut()]
                .into_iter()
                .enumerate()
            {
                let Some(pc) = pc else { continue };
                if pc.poll_timeout().is_some_and(|d| d <= now) {
                    let _ = pc.handle_timeout(now);
                }
                while let Some(ev) = pc.poll_event() {
                    if let RTCPeerConnectionEvent::OnConnectionStateChangeEvent(
                        RTCPeerConnectionState::Connected,
                    ) = ev
                    {
                        if i == 0 {
                            cl.connected.0 = true;
                        } else {
                            cl.connected.1 = true;
                        }
                    }
                }
                while let Some(m) = pc.poll_read() {
                    match m.message {
                        RTCMessage::RtcpPacket(_, packets) if i == 0 => {
                            cl.plis += packets
                                .iter()
                                .filter(|p| {
                                    p.as_any().downcast_ref::<PictureLossIndication>().is_some()
                                })
                                .count();
                        }
                        RTCMessage::RtpPacket(_, p) if i == 1 => {
                            cl.received.push((p.header.ssrc, p.header.sequence_number));
                        }
                        _ => {}
                    }
                }
            }
        }
        self.now += ROUND;
    }

    /// Moves every relay message and datagram queued on the nodes to the far end of its link.
    fn carry_relay(&mut self) {
        use super::engine::cascade::RelayOut;
        let now = self.now;
        // Several passes: a hub passes on what it just received in the same round.
        for _ in 0..4 {
            let mut moved = false;
            for n in 0..self.nodes.len() {
                while let Some(out) = self.nodes[n].engine.poll_relay() {
                    moved = true;
                    let link = match &out {
                        RelayOut::Control { link, .. }
                        | RelayOut::Media { link, .. }
                        | RelayOut::Close { link, .. } => *link,
                        // Padding is the link task's, not the engine's.
                        RelayOut::Probe { bps, careful, .. } => {
                            self.relay_probes.push((n, *bps, *careful));
                            continue;
                        }
                    };
                    let Some(l) = self.links.iter().position(|l| {
                        l.up && ((l.a == n && l.id_a == link) || (l.b == n && l.id_b == link))
                    }) else {
                        continue;
                    };
                    let (to, to_link) = {
                        let l = &self.links[l];
                        if l.a == n {
                            (l.b, l.id_b)
                        } else {
                            (l.a, l.id_a)
                        }
                    };
                    match out {
                        RelayOut::Control { msg, .. } => {
                            self.relay_control.push((n, to, (*msg).clone()));
                            self.nodes[to].engine.relay_control(to_link, *msg, now);
                        }
                        RelayOut::Media { datagram, .. } => {
                            if self.dropped(Hop::Relay { from: n, to }, &datagram) {
                                continue;
                            }
                            match Datagram::decode(datagram.clone()) {
                                Ok(Datagram::Media(_)) => {
                                    *self.relay_media.entry((n, to)).or_default() += 1;
                                }
                                Ok(Datagram::Feedback(msg)) => {
                                    self.relay_feedback.push((n, to, *msg));
                                }
                                Ok(Datagram::Padding(_)) | Err(_) => {}
                            }
                            self.nodes[to].engine.relay_media(to_link, datagram, now);
                        }
                        RelayOut::Close { .. } => {
                            self.links[l].up = false;
                            let (a, ia, b, ib) = {
                                let l = &self.links[l];
                                (l.a, l.id_a, l.b, l.id_b)
                            };
                            self.nodes[a].engine.relay_down(ia, now);
                            self.nodes[b].engine.relay_down(ib, now);
                        }
                        RelayOut::Probe { .. } => {}
                    }
                }
            }
            if !moved {
                break;
            }
        }
    }

    /// Runs rounds for `d` of fake time.
    pub fn run(&mut self, d: Duration) {
        let rounds = d.as_millis() / ROUND.as_millis();
        for _ in 0..rounds {
            self.step();
        }
    }

    /// Runs rounds for `d`, sending a video frame from `publisher` every `every` rounds (a
    /// keyframe when it was asked for one since the last frame, as an encoder does, and the
    /// first frame).
    pub fn run_with_video(&mut self, d: Duration, publisher: ClientIx, every: u32) {
        self.run_with_videos(d, &[publisher], every);
    }

    /// [`Net::run_with_video`] for several publishers at once.
    pub fn run_with_videos(&mut self, d: Duration, publishers: &[ClientIx], every: u32) {
        let rounds = d.as_millis() / ROUND.as_millis();
        let mut plis: Vec<usize> = publishers.iter().map(|&p| self.clients[p].plis).collect();
        let mut first: Vec<bool> = publishers
            .iter()
            .map(|&p| self.clients[p].next_seq == 100)
            .collect();
        for i in 0..rounds {
            self.step();
            if i % u128::from(every.max(1)) != 0 {
                continue;
            }
            for (j, &p) in publishers.iter().enumerate() {
                if self.clients[p].connected.0 {
                    let key = first[j] || self.clients[p].plis > plis[j];
                    plis[j] = self.clients[p].plis;
                    first[j] = false;
                    self.send_video(p, key);
                }
            }
        }
    }

    /// Runs rounds until `done` holds, for at most `max`; returns whether it held.
    pub fn run_until(&mut self, max: Duration, mut done: impl FnMut(&Net) -> bool) -> bool {
        let rounds = max.as_millis() / ROUND.as_millis();
        for _ in 0..rounds {
            if done(self) {
                return true;
            }
            self.step();
        }
        done(self)
    }
}

/// Whether a relay datagram carries media (not loss-repair feedback).
pub fn is_relay_media(datagram: &[u8]) -> bool {
    matches!(
        Datagram::decode(bytes::Bytes::copy_from_slice(datagram)),
        Ok(Datagram::Media(_))
    )
}
