//! The sans-I/O media engine: every room, session and peer connection of a node.
//!
//! In: UDP datagrams ([`Engine::handle_datagram`]), signalling requests (the `ws_*`, `whip`,
//! `whep` methods), and the clock ([`Engine::handle_timeout`]). Out: datagrams
//! ([`Engine::poll_transmit`]), signalling messages ([`Engine::poll_signal`]) and sessions that
//! ended ([`Engine::poll_closed`]). All peer connections share one UDP port: a datagram is routed
//! by its source address, or, for the first STUN binding request from a new address, by the
//! ICE username fragment the node gave that connection.
//!
//! Each WebSocket participant has a publish connection (the client offers its tracks) and a
//! subscribe connection (the node offers everyone else's tracks and the `chat` data channel,
//! and re-offers when they change). A WHIP session is a publish connection alone, a WHEP
//! session a subscribe connection alone whose offer comes from the client.

use super::forwarder::Forwarder;
use super::keyframe::VideoCodec;
use super::layers::{LayerSelector, layer_for_height};
use super::send::SenderStats;
use super::speaker::parse_audio_level;
use super::stun;
use super::vp8::Vp8Munger;
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use bytes::BytesMut;
use moim_wire::JoinClaims;
use moim_wire::admin::RoomAssignment;
use moim_wire::signal::{
    ChatFrame, MAX_CHAT_BYTES, ParticipantInfo, PublishedTrackInfo, ServerMessage, TrackInfo,
    TrackSource,
};
use moim_wire::status::NodeStatus;
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::event::{RTCDataChannelEvent, RTCPeerConnectionEvent, RTCTrackEvent};
use rtc::peer_connection::message::{RTCMessage, TaggedRTCMessage};
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::RTCRtpReceiverId;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodingParameters, RTCRtpEncodingParameters, RTCRtpRtxParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use super::SessionId;
use super::downtrack::DownTrack;
pub use super::downtrack::NACK_BUFFER_PACKETS;
use super::peer::{MAX_ADDRS_PER_PEER, Peer, Role, push_transmit};
pub use super::peer::{MAX_QUEUED_TRANSMITS, Transmit, add_host_candidate};
use super::room::Room;
pub use super::session::SessionKind;
use super::session::{Budget, Session, Verdict};
use super::uptrack::{Layer, UpTrack, layer_index};
use super::{DownKey, PeerId, TrackKey};

/// Housekeeping period: layer decisions, speaker reports, rate meters, timeouts.
const HOUSEKEEPING: Duration = Duration::from_millis(100);
/// Bound on signalling messages waiting for the driver (it takes them all every turn, so only
/// one turn's burst counts). Beyond it: an `active_speakers` report is dropped (the next one
/// supersedes it); any other message is not queued and its session is closed instead
/// ([`Engine::drop_overflowed`]), because a participant that silently missed a
/// `subscribe_offer` or a `participant_left` would be wrong about the room from then on,
/// while one that reconnects gets it whole.
pub const MAX_QUEUED_SIGNALS: usize = 65_536;

/// Limits and addresses the engine works with.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The address the UDP socket is bound to.
    pub local_addr: SocketAddr,
    /// The address put in ICE candidates (the node's public address).
    pub candidate_addr: SocketAddr,
    /// Most participants in one room.
    pub max_room_participants: usize,
    /// Most sessions on the node.
    pub max_sessions: usize,
    /// Node id and region, for `/status`.
    pub node_id: String,
    /// Region, for `/status`.
    pub region: String,
    /// How long a new connection may take to connect before its session is dropped.
    pub connect_timeout: Duration,
    /// Relay links hold back layers that do not fit their estimate (`--relay-fit`).
    pub relay_fit: bool,
}

/// The media engine of one node.
pub struct Engine {
    pub(super) cfg: EngineConfig,
    pub(super) metrics: Metrics,
    pub(super) sessions: HashMap<SessionId, Session>,
    pub(super) by_resource: HashMap<String, SessionId>,
    pub(super) peers: HashMap<PeerId, Peer>,
    pub(super) by_ufrag: HashMap<String, PeerId>,
    pub(super) by_addr: HashMap<SocketAddr, PeerId>,
    pub(super) rooms: HashMap<String, Room>,
    pub(super) tracks: HashMap<TrackKey, UpTrack>,
    pub(super) downs: HashMap<DownKey, DownTrack>,
    pub(super) next_id: u64,
    pub(super) timers: BinaryHeap<Reverse<(Instant, PeerId)>>,
    pub(super) dirty: VecDeque<PeerId>,
    pub(super) dirty_set: HashSet<PeerId>,
    pub(super) scratch_events: Vec<RTCPeerConnectionEvent>,
    pub(super) scratch_peers: Vec<PeerId>,
    pub(super) scratch_reads: Vec<RTCMessage>,
    pub(super) transmits: VecDeque<Transmit>,
    pub(super) signals: VecDeque<(SessionId, ServerMessage)>,
    pub(super) closed: VecDeque<SessionId>,
    pub(super) next_housekeeping: Option<Instant>,
    pub(super) draining: bool,
    /// SIGTERM: draining for good.
    pub(super) terminating: bool,
    pub(super) rate_window: RateWindow,
    /// Rooms the operator placed here (bounded by how many meetings it places on one node).
    pub(super) assignments: HashMap<String, RoomAssignment>,
    /// Relay links to other nodes.
    pub(super) links: HashMap<cascade::LinkId, cascade::LinkState>,
    /// Messages and media for relay links, drained by the driver (bounded, see
    /// [`cascade::RELAY_OUT_MAX`]).
    pub(super) relay_out: VecDeque<cascade::RelayOut>,
    /// While a relay link goes down: what left, per room, told in one message each at the end
    /// (see [`Engine::gone`]).
    pub(super) gone_batch: Option<BTreeMap<String, Gone>>,
    /// Sessions that missed a message to a full signal queue (closed by the driver's next
    /// [`Engine::drop_overflowed`]).
    pub(super) overflowed: HashSet<SessionId>,
    pub(super) max_queued_signals: usize,
}

/// Participants and tracks that went away together.
#[derive(Default)]
pub(super) struct Gone {
    pub(super) participants: Vec<String>,
    pub(super) tracks: Vec<String>,
}

#[derive(Default)]
pub(super) struct RateWindow {
    pub(super) since: Option<Instant>,
    pub(super) bytes_in: u64,
    pub(super) bytes_out: u64,
    pub(super) ingress_bps: f64,
    pub(super) egress_bps: f64,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Longest track id a client may name (browsers use 36-character UUIDs).
pub const MAX_TRACK_ID_BYTES: usize = 256;

/// A track id a client names is refused when longer than [`MAX_TRACK_ID_BYTES`].
fn check_track_id(track_id: &str) -> Result<()> {
    if track_id.len() > MAX_TRACK_ID_BYTES {
        return Err(Error::BadRequest(format!(
            "track ids are at most {MAX_TRACK_ID_BYTES} bytes"
        )));
    }
    Ok(())
}
/// Most tracks a participant may declare (camera, mic, screen and screen audio, re-published
/// a few times).
pub const MAX_DECLARED_SOURCES: usize = 64;

/// Most media sections an offer may carry: the tracks of one publish connection (m-sections
/// are recycled, never removed, so this bounds a publisher's tracks for good).
pub const MAX_MEDIA_SECTIONS: usize = 16;
/// Most simulcast layers (`a=rid` lines) one media section may offer.
pub const MAX_SIMULCAST_LAYERS: usize = 3;

/// Refuses an offer larger than a browser ever sends, before rtc parses it.
fn check_offer_shape(sdp: &str) -> Result<()> {
    let mut sections = 0;
    let mut rids = 0;
    for line in sdp.lines() {
        if line.starts_with("m=") {
            sections += 1;
            rids = 0;
            if sections > MAX_MEDIA_SECTIONS {
                return Err(Error::BadRequest(format!(
                    "an offer may carry at most {MAX_MEDIA_SECTIONS} media sections"
                )));
            }
        } else if line.starts_with("a=rid:") {
            rids += 1;
            if rids > MAX_SIMULCAST_LAYERS {
                return Err(Error::BadRequest(format!(
                    "a media section may offer at most {MAX_SIMULCAST_LAYERS} simulcast layers (a=rid)"
                )));
            }
        }
    }
    Ok(())
}

/// Most chat bytes waiting unacknowledged on a participant's data channel: a message that
/// would go over is not delivered to it (counted in `moim_chat_undelivered_total`).
pub const CHAT_BUFFER_MAX: usize = 256 * 1024;

/// Most local ICE ufrags kept per peer (each ICE restart adds one).
const MAX_UFRAGS: usize = 4;

/// The first `a=ice-ufrag:` of an SDP.
fn sdp_ice_ufrag(sdp: &str) -> Option<String> {
    sdp.lines()
        .find_map(|l| l.trim_end().strip_prefix("a=ice-ufrag:"))
        .map(str::to_owned)
}

/// The track ids (second part of `a=msid`) an offer still sends: those of media sections that
/// are not `inactive` or `recvonly` (a track removed with `removeTrack` leaves its section
/// behind, without its msid or with an inactive direction).
pub(crate) fn sdp_sending_track_ids(sdp: &str) -> HashSet<String> {
    let mut out = HashSet::new();
    for section in sdp.split("\nm=").skip(1) {
        let lines: Vec<&str> = section.lines().map(str::trim_end).collect();
        if lines
            .iter()
            .any(|l| *l == "a=inactive" || *l == "a=recvonly")
        {
            continue;
        }
        for l in &lines {
            if let Some(track) = l
                .strip_prefix("a=msid:")
                .and_then(|v| v.split_whitespace().nth(1))
            {
                out.insert(track.to_owned());
            }
        }
    }
    out
}

fn random_hex(bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}

pub use super::cascade;

/// Codec mime types (`video/VP8`, `audio/opus`, ...) in an SDP's `a=rtpmap` lines.
pub fn offered_codecs(sdp: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut kind = "";
    for line in sdp.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            kind = m.split(' ').next().unwrap_or("");
        } else if let Some(map) = line.strip_prefix("a=rtpmap:")
            && let Some(name) = map
                .split_whitespace()
                .nth(1)
                .and_then(|e| e.split('/').next())
        {
            let mime = format!("{kind}/{name}");
            if !out.iter().any(|m| m.eq_ignore_ascii_case(&mime)) {
                out.push(mime);
            }
        }
    }
    out
}

impl Engine {
    /// A new engine with no sessions.
    pub fn new(cfg: EngineConfig, metrics: Metrics) -> Self {
        Self {
            cfg,
            metrics,
            sessions: HashMap::new(),
            by_resource: HashMap::new(),
            peers: HashMap::new(),
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            rooms: HashMap::new(),
            tracks: HashMap::new(),
            downs: HashMap::new(),
            next_id: 1,
            timers: BinaryHeap::new(),
            dirty: VecDeque::new(),
            dirty_set: HashSet::new(),
            scratch_events: Vec::new(),
            scratch_peers: Vec::new(),
            scratch_reads: Vec::new(),
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            closed: VecDeque::new(),
            next_housekeeping: None,
            draining: false,
            terminating: false,
            rate_window: RateWindow::default(),
            assignments: HashMap::new(),
            links: HashMap::new(),
            relay_out: VecDeque::new(),
            gone_batch: None,
            overflowed: HashSet::new(),
            max_queued_signals: MAX_QUEUED_SIGNALS,
        }
    }

    pub(super) fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    // ----- peer connection set-up -------------------------------------------------------

    pub(super) fn create_peer(
        &mut self,
        session: SessionId,
        role: Role,
        now: Instant,
    ) -> Result<PeerId> {
        let ufrag = random_hex(8);
        let peer = Peer::new(session, role, ufrag.clone(), &random_hex(16), now)?;
        let id = self.next_id();
        self.by_ufrag.insert(ufrag, id);
        self.peers.insert(id, peer);
        Ok(id)
    }

    /// Gives `peer` fresh local ICE credentials for its next ICE restart, and routes datagrams
    /// with the new ufrag to it (at most [`MAX_UFRAGS`] are kept per peer).
    pub(super) fn fresh_ice_credentials(&mut self, peer_id: PeerId) {
        let Some(p) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let ufrag = random_hex(8);
        let pwd = random_hex(16);
        p.pc.set_ice_restart_credentials(ufrag.clone(), pwd.clone());
        if p.ufrags.len() >= MAX_UFRAGS {
            let (old, _) = p.ufrags.remove(0);
            self.by_ufrag.remove(&old);
        }
        p.ufrags.push((ufrag.clone(), pwd));
        self.by_ufrag.insert(ufrag, peer_id);
        self.metrics.ice_restarts.inc();
    }

    /// Takes one publish offer's or ICE restart's worth of `session`'s negotiation budget.
    fn take_negotiation(&mut self, session: SessionId, now: Instant) -> Result<()> {
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        if s.negotiations.take(now) == Verdict::Send {
            return Ok(());
        }
        self.metrics.negotiations_refused.inc();
        Err(Error::RateLimited(
            "renegotiation: at most 1 publish offer or ICE restart a second (bursts of 10)",
        ))
    }

    /// A WebSocket participant's network changed: restart ICE on its subscribe connection with
    /// fresh credentials (a new subscribe offer). Its publish connection restarts with its next
    /// offer.
    pub fn ws_ice_restart(&mut self, session: SessionId, now: Instant) -> Result<()> {
        self.take_negotiation(session, now)?;
        let s = self.sessions.get(&session).ok_or(Error::NotFound)?;
        let Some(peer) = s.subscribe_peer else {
            return Ok(());
        };
        self.fresh_ice_credentials(peer);
        if let Some(p) = self.peers.get_mut(&peer) {
            p.pc.restart_ice();
        }
        self.offer_subscriber(session, now)
    }

    /// Applies a client's offer to `peer`; [`Engine::finish_answer`] then produces the answer.
    pub(super) fn answer_offer(&mut self, peer: PeerId, sdp: String, now: Instant) -> Result<()> {
        check_offer_shape(&sdp)?;
        // A re-offer with new ICE credentials restarts ICE: answer with fresh ones of ours.
        let ufrag = sdp_ice_ufrag(&sdp);
        let p = self.peers.get_mut(&peer).ok_or(Error::NotFound)?;
        let restart = p.remote_ufrag.is_some() && ufrag.is_some() && p.remote_ufrag != ufrag;
        p.remote_ufrag = ufrag;
        if restart {
            self.fresh_ice_credentials(peer);
        }
        let offer = RTCSessionDescription::offer(sdp).map_err(|e| Error::Sdp(e.to_string()))?;
        let p = self.peers.get_mut(&peer).ok_or(Error::NotFound)?;
        p.pc.set_remote_description(now, offer)
            .map_err(|e| Error::Sdp(e.to_string()))
    }

    pub(super) fn finish_answer(&mut self, peer: PeerId, now: Instant) -> Result<String> {
        let mut pc = self.peers.remove(&peer).ok_or(Error::NotFound)?;
        let result = (|| {
            add_host_candidate(&mut pc.pc, self.cfg.candidate_addr)?;
            let answer = pc.pc.create_answer(None).map_err(Error::rtc)?;
            pc.pc
                .set_local_description(now, answer)
                .map_err(Error::rtc)?;
            pc.pc
                .local_description()
                .map(|d| d.sdp)
                .ok_or_else(|| Error::rtc("no local description"))
        })();
        self.peers.insert(peer, pc);
        self.mark_dirty(peer);
        result
    }

    // ----- sessions -----------------------------------------------------------------------

    pub(super) fn admit(
        &mut self,
        claims: &JoinClaims,
        kind: SessionKind,
        now: Instant,
    ) -> Result<SessionId> {
        let room_exists = self.rooms.contains_key(&claims.room);
        if self.draining && !room_exists {
            self.metrics.reject("draining");
            return Err(Error::Draining);
        }
        if self.sessions.len() >= self.cfg.max_sessions {
            self.metrics.reject("capacity");
            return Err(Error::AtCapacity);
        }
        // One WebSocket session per identity in a room: the newer one wins (a page that
        // rejoins after losing its socket, another tab), as LiveKit does. WHIP and WHEP may
        // share a token (a public viewer link), so only their own caps apply.
        if kind == SessionKind::WebSocket {
            let older = self.rooms.get(&claims.room).and_then(|r| {
                r.sessions.iter().copied().find(|id| {
                    self.sessions.get(id).is_some_and(|s| {
                        s.kind == SessionKind::WebSocket
                            && s.participant.identity == claims.identity
                    })
                })
            });
            if let Some(older) = older {
                self.signal(
                    older,
                    ServerMessage::Error {
                        code: "replaced".into(),
                        message: "this identity joined the room again (another tab or device); this session ends".into(),
                    },
                );
                self.metrics.reject("replaced");
                self.remove_session(older, now);
            }
        }
        let max_room = match self.assignments.get(&claims.room) {
            Some(a) => a
                .max_participants
                .map_or(self.cfg.max_room_participants, |m| m as usize)
                .min(self.cfg.max_room_participants),
            None => self.cfg.max_room_participants,
        };
        let id = self.next_id();
        let room = self
            .rooms
            .entry(claims.room.clone())
            .or_insert_with(|| Room::new(None));
        if room.sessions.len() >= max_room {
            self.metrics.reject("room_full");
            return Err(Error::RoomFull);
        }
        let participant_id = room.next_participant_id();
        let resource = random_hex(16);
        room.sessions.push(id);
        self.by_resource.insert(resource.clone(), id);
        self.sessions.insert(
            id,
            Session {
                kind,
                resource,
                room: claims.room.clone(),
                participant: ParticipantInfo {
                    id: participant_id,
                    identity: claims.identity.clone(),
                    name: if claims.name.is_empty() {
                        claims.identity.clone()
                    } else {
                        claims.name.clone()
                    },
                    hand_raised: false,
                },
                can_publish: claims.can_publish,
                can_subscribe: claims.can_subscribe,
                can_chat: claims.may_chat(),
                publish_peer: None,
                subscribe_peer: None,
                offer_outstanding: false,
                reoffer: false,
                declared_sources: HashMap::new(),
                muted_early: Default::default(),
                layer_wish: HashMap::new(),
                last_n: None,
                joined_at: now,
                first_media_sent: false,
                chat: Budget::chat(),
                negotiations: Budget::negotiations(),
            },
        );
        self.ensure_housekeeping(now);
        if !room_exists {
            self.relay_room_opened(&claims.room);
        }
        if let Some(p) = self.sessions.get(&id).map(|s| s.participant.clone()) {
            self.relay_participant_joined(&claims.room, &p);
        }
        Ok(id)
    }

    pub(super) fn ensure_housekeeping(&mut self, now: Instant) {
        if self.next_housekeeping.is_none() {
            self.next_housekeeping = Some(now + HOUSEKEEPING);
        }
    }

    pub(super) fn room_tracks_info(&self, room: &str, except: SessionId) -> Vec<TrackInfo> {
        self.rooms
            .get(room)
            .map(|r| {
                r.tracks
                    .iter()
                    .filter_map(|k| self.tracks.get(k))
                    .filter(|t| t.session != except)
                    .filter_map(|t| self.track_info(t))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn track_info(&self, t: &UpTrack) -> Option<TrackInfo> {
        Some(TrackInfo {
            track_id: t.id.clone(),
            participant_id: t.owner.id.clone(),
            kind: if t.kind == RtpCodecKind::Audio {
                "audio"
            } else {
                "video"
            }
            .to_owned(),
            source: t.source,
            layers: t.layers.len().max(1) as u8,
            muted: t.muted,
        })
    }

    /// A participant muted or unmuted its track `track_id` (its own id): the room hears of it,
    /// here and over the relay links. A declared track whose media has not arrived yet starts
    /// muted when it does.
    pub fn ws_mute(&mut self, session: SessionId, track_id: &str, muted: bool) -> Result<()> {
        check_track_id(track_id)?;
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        let key = s
            .publish_peer
            .and_then(|p| self.peers.get(&p))
            .and_then(|p| p.inbound.get(track_id))
            .copied();
        let Some(key) = key else {
            if !s.declared_sources.contains_key(track_id) {
                return Err(Error::BadRequest(format!(
                    "no published track {track_id:?} to mute"
                )));
            }
            if muted {
                s.muted_early.insert(track_id.to_owned());
            } else {
                s.muted_early.remove(track_id);
            }
            return Ok(());
        };
        self.set_muted(key, muted);
        Ok(())
    }

    /// Marks track `key` muted or not and tells the room here and the links it is announced on
    /// (not the link it came from: see [`Engine::relay_muted`]).
    pub(super) fn set_muted(&mut self, key: TrackKey, muted: bool) {
        let Some(t) = self.tracks.get_mut(&key) else {
            return;
        };
        if t.muted == muted {
            return;
        }
        t.muted = muted;
        let msg = ServerMessage::TrackMuted {
            track_id: t.id.clone(),
            participant_id: t.owner.id.clone(),
            muted,
        };
        let room = t.room.clone();
        self.broadcast(&room, 0, &msg);
        self.relay_muted(key);
    }

    pub(super) fn signal(&mut self, session: SessionId, msg: ServerMessage) {
        if self.signals.len() >= self.max_queued_signals {
            self.metrics.signals_dropped.inc();
            if !matches!(msg, ServerMessage::ActiveSpeakers { .. }) {
                self.overflowed.insert(session);
            }
            return;
        }
        self.signals.push_back((session, msg));
    }

    /// Closes the sessions that missed a message because the signal queue was full (see
    /// [`MAX_QUEUED_SIGNALS`]); the driver calls it after taking the signals.
    pub fn drop_overflowed(&mut self, now: Instant) {
        for s in std::mem::take(&mut self.overflowed) {
            tracing::warn!(
                session = s,
                "signal queue full; closing the session so it rejoins whole"
            );
            self.remove_session(s, now);
        }
    }

    /// Lowers the signal queue's bound (tests: a full queue without 65,536 messages).
    #[doc(hidden)]
    pub fn set_max_queued_signals(&mut self, n: usize) {
        self.max_queued_signals = n;
    }

    /// Tells each room in `batch` what went, in one message of each kind (a single one as the
    /// single-item message).
    pub(super) fn tell_gone(&mut self, batch: BTreeMap<String, Gone>) {
        for (room, gone) in batch {
            match <[String; 1]>::try_from(gone.tracks) {
                Ok([track_id]) => {
                    self.broadcast(&room, 0, &ServerMessage::TrackUnpublished { track_id });
                }
                Err(v) if v.is_empty() => {}
                Err(track_ids) => {
                    self.broadcast(&room, 0, &ServerMessage::TracksUnpublished { track_ids });
                }
            }
            match <[String; 1]>::try_from(gone.participants) {
                Ok([participant_id]) => {
                    self.broadcast(&room, 0, &ServerMessage::ParticipantLeft { participant_id });
                }
                Err(v) if v.is_empty() => {}
                Err(participant_ids) => {
                    let msg = ServerMessage::ParticipantsLeft { participant_ids };
                    self.broadcast(&room, 0, &msg);
                }
            }
        }
    }

    pub(super) fn broadcast(&mut self, room: &str, except: SessionId, msg: &ServerMessage) {
        let targets: Vec<SessionId> = self
            .rooms
            .get(room)
            .map(|r| {
                r.sessions
                    .iter()
                    .copied()
                    .filter(|&s| s != except)
                    .collect()
            })
            .unwrap_or_default();
        for s in targets {
            if self
                .sessions
                .get(&s)
                .is_some_and(|s| s.kind == SessionKind::WebSocket)
            {
                self.signal(s, msg.clone());
            }
        }
    }

    /// Admits a WebSocket participant. Returns its session and the `joined` message; the
    /// subscribe offer follows through [`Engine::poll_signal`].
    pub fn ws_join(
        &mut self,
        claims: &JoinClaims,
        now: Instant,
    ) -> Result<(SessionId, ServerMessage)> {
        let id = self.admit(claims, SessionKind::WebSocket, now)?;
        let (room, me, can_publish, can_subscribe, can_chat) = {
            let s = &self.sessions[&id];
            (
                s.room.clone(),
                s.participant.clone(),
                s.can_publish,
                s.can_subscribe,
                s.can_chat,
            )
        };
        let participants = self.rooms[&room]
            .sessions
            .iter()
            .filter(|&&s| s != id)
            .filter_map(|s| self.sessions.get(s))
            .map(|s| s.participant.clone())
            .chain(self.rooms[&room].remote.iter().map(|(_, p)| p.clone()))
            .collect();
        let tracks = self.room_tracks_info(&room, id);
        self.broadcast(
            &room,
            id,
            &ServerMessage::ParticipantJoined {
                participant: me.clone(),
            },
        );
        // Everyone gets a subscribe connection: it carries the chat channel even for
        // participants who may not receive media.
        let result = (|| {
            let peer = self.create_peer(id, Role::Subscribe, now)?;
            if let Some(s) = self.sessions.get_mut(&id) {
                s.subscribe_peer = Some(peer);
            }
            if let Some(p) = self.peers.get_mut(&peer) {
                let dc = p.pc.create_data_channel("chat", None).map_err(Error::rtc)?;
                p.chat = Some(dc.id());
            }
            if can_subscribe {
                let keys: Vec<TrackKey> = self.rooms[&room].tracks.clone();
                for k in keys {
                    self.add_down_track(k, id);
                }
            }
            self.offer_subscriber(id, now)
        })();
        if let Err(e) = result {
            self.remove_session(id, now);
            return Err(e);
        }
        Ok((
            id,
            ServerMessage::Joined {
                participant_id: me.id,
                room,
                participants,
                tracks,
                can_publish,
                can_subscribe,
                can_chat,
            },
        ))
    }

    /// Handles a WebSocket participant's publish offer; returns the SDP answer.
    pub fn ws_publish(
        &mut self,
        session: SessionId,
        sdp: String,
        tracks: Vec<PublishedTrackInfo>,
        now: Instant,
    ) -> Result<String> {
        self.take_negotiation(session, now)?;
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        if !s.can_publish {
            return Err(Error::Forbidden("token does not allow publishing"));
        }
        for t in &tracks {
            check_track_id(&t.track_id)?;
        }
        if s.declared_sources.len() + tracks.len().min(16) > MAX_DECLARED_SOURCES {
            // Forget declarations of tracks no longer published (a screen share started and
            // stopped many times), keeping what the publish connection still carries.
            let live: HashSet<&String> = s
                .publish_peer
                .and_then(|p| self.peers.get(&p))
                .map(|p| p.inbound.keys().collect())
                .unwrap_or_default();
            s.declared_sources.retain(|id, _| live.contains(id));
        }
        for t in tracks.into_iter().take(16) {
            if s.declared_sources.len() >= MAX_DECLARED_SOURCES
                && !s.declared_sources.contains_key(&t.track_id)
            {
                return Err(Error::BadRequest(format!(
                    "at most {MAX_DECLARED_SOURCES} tracks may be declared per participant"
                )));
            }
            s.declared_sources.insert(t.track_id, t.source);
        }
        let peer = match s.publish_peer {
            Some(p) => p,
            None => {
                let p = self.create_peer(session, Role::Publish, now)?;
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.publish_peer = Some(p);
                }
                p
            }
        };
        let sending = sdp_sending_track_ids(&sdp);
        self.answer_offer(peer, sdp, now)?;
        let answer = self.finish_answer(peer, now)?;
        // Declared tracks the re-offer no longer sends (a screen share stopped): unpublished
        // for everyone now, not when the connection closes. (Only declared ones: their ids are
        // the offer's msids, which a track the client did not declare may lack.)
        let Some(s) = self.sessions.get_mut(&session) else {
            return Ok(answer);
        };
        let stopped: Vec<String> = self
            .peers
            .get(&peer)
            .map(|p| {
                p.inbound
                    .keys()
                    .filter(|id| s.declared_sources.contains_key(*id) && !sending.contains(*id))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for id in &stopped {
            s.declared_sources.remove(id);
        }
        for id in stopped {
            self.unpublish_inbound(peer, &id, now);
        }
        Ok(answer)
    }

    /// Applies a WebSocket participant's answer to the node's subscribe offer.
    pub fn ws_subscribe_answer(
        &mut self,
        session: SessionId,
        sdp: String,
        now: Instant,
    ) -> Result<()> {
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        if !s.offer_outstanding {
            return Err(Error::BadRequest(
                "no subscribe offer is outstanding".into(),
            ));
        }
        let peer = s.subscribe_peer.ok_or(Error::NotFound)?;
        let answer = RTCSessionDescription::answer(sdp).map_err(|e| Error::Sdp(e.to_string()))?;
        let p = self.peers.get_mut(&peer).ok_or(Error::NotFound)?;
        p.pc.set_remote_description(now, answer)
            .map_err(|e| Error::Sdp(e.to_string()))?;
        let downs: Vec<DownKey> = p.downs_by_ssrc.values().copied().collect();
        let mut accepted = Vec::new();
        for k in downs {
            if let Some(d) = self.downs.get_mut(&k) {
                d.leg = None;
                if !d.negotiated {
                    d.negotiated = true;
                    accepted.push(k);
                }
            }
        }
        // New streams start at a keyframe asked for now, not at one sent before the
        // subscriber knew them (a subscriber not yet connected gets it when it connects).
        if self.peers.get(&peer).is_some_and(|p| p.connected) {
            for k in accepted {
                self.request_keyframe_for(k, now);
            }
        }
        self.mark_dirty(peer);
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        s.offer_outstanding = false;
        if std::mem::take(&mut s.reoffer) {
            self.offer_subscriber(session, now)?;
        }
        Ok(())
    }

    /// Records the largest size a participant renders a track at.
    pub fn ws_layer_preference(
        &mut self,
        session: SessionId,
        track_id: &str,
        max_width: u32,
        max_height: u32,
    ) -> Result<()> {
        check_track_id(track_id)?;
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        if s.layer_wish.len() >= 256 && !s.layer_wish.contains_key(track_id) {
            return Err(Error::BadRequest("too many layer preferences".into()));
        }
        s.layer_wish
            .insert(track_id.to_owned(), (max_width, max_height));
        // What it wants of each video follows from the sizes and its last-N choice.
        self.refresh_wanted(session);
        Ok(())
    }

    /// Relays a chat message from `session` to its room.
    pub fn chat(&mut self, session: SessionId, text: &str, now: Instant) -> Result<()> {
        if text.len() > MAX_CHAT_BYTES {
            return Err(Error::BadRequest(format!(
                "chat message longer than {MAX_CHAT_BYTES} bytes"
            )));
        }
        if text.trim().is_empty() {
            return Err(Error::BadRequest("empty chat message".into()));
        }
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        if !s.can_chat {
            return Err(Error::Forbidden("token does not allow chat"));
        }
        match s.chat.take(now) {
            Verdict::Send => {}
            Verdict::Refuse => {
                self.metrics.chat_refused.inc();
                return Err(Error::RateLimited(
                    "chat: at most 5 messages a second (bursts of 10); messages over it were dropped",
                ));
            }
            Verdict::Drop => {
                self.metrics.chat_refused.inc();
                return Ok(());
            }
        }
        let s = &self.sessions[&session];
        let frame = ChatFrame {
            from: s.participant.id.clone(),
            name: s.participant.name.clone(),
            text: text.to_owned(),
            ts_ms: unix_ms(),
        };
        let room = s.room.clone();
        self.metrics.chat_messages.inc();
        self.relay_chat(&room, s.participant.clone(), &frame);
        self.deliver_chat(&room, &frame, now);
        Ok(())
    }

    /// A participant raised or lowered a hand: the room on this node hears of it
    /// (`hand_raised`), and later joiners see it in `joined`. Not carried over relay links.
    /// Shares the chat rate limit (a hand toggled in a loop is a flood like any other).
    pub fn ws_raise_hand(&mut self, session: SessionId, raised: bool, now: Instant) -> Result<()> {
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        if s.participant.hand_raised == raised {
            return Ok(());
        }
        match s.chat.take(now) {
            Verdict::Send => {}
            Verdict::Refuse | Verdict::Drop => {
                self.metrics.chat_refused.inc();
                return Err(Error::RateLimited(
                    "raise_hand: shares chat's limit of 5 a second (bursts of 10)",
                ));
            }
        }
        s.participant.hand_raised = raised;
        let msg = ServerMessage::HandRaised {
            participant_id: s.participant.id.clone(),
            raised,
        };
        let room = s.room.clone();
        self.broadcast(&room, 0, &msg);
        Ok(())
    }

    /// Gives a chat message to every WebSocket participant of `room` on this node.
    pub(super) fn deliver_chat(&mut self, room: &str, frame: &ChatFrame, now: Instant) {
        let targets: Vec<SessionId> = self
            .rooms
            .get(room)
            .map(|r| r.sessions.clone())
            .unwrap_or_default();
        // Serializing a struct of strings and an integer cannot fail.
        let json = serde_json::to_string(frame).unwrap_or_default();
        for t in targets {
            let Some(ts) = self.sessions.get(&t) else {
                continue;
            };
            if ts.kind != SessionKind::WebSocket {
                continue;
            }
            let sent = ts.subscribe_peer.and_then(|p| {
                let peer = self.peers.get_mut(&p)?;
                if !peer.chat_open {
                    return None;
                }
                let mut dc = peer.pc.data_channel(peer.chat?)?;
                if dc.outstanding_bytes() + json.len() > CHAT_BUFFER_MAX {
                    // It cannot take chat as fast as the room sends it: this message is not
                    // delivered to it (and not queued as a signal, whose outbox would fill).
                    return Some(Err(()));
                }
                Some(dc.send_text(now, json.clone()).map_err(|_| ()))
            });
            if let (Some(Ok(())), Some(p)) = (sent, ts.subscribe_peer) {
                self.mark_dirty(p);
            } else if let Some(Err(())) = sent {
                self.metrics.chat_undelivered.inc();
            } else {
                self.signal(
                    t,
                    ServerMessage::Chat {
                        from: frame.from.clone(),
                        name: frame.name.clone(),
                        text: frame.text.clone(),
                        ts_ms: frame.ts_ms,
                    },
                );
            }
        }
    }

    /// Starts a WHIP session: answers the publisher's offer. Returns the session, its
    /// resource id (the tail of the `Location` URL) and the SDP answer.
    pub fn whip(
        &mut self,
        claims: &JoinClaims,
        sdp: String,
        now: Instant,
    ) -> Result<(SessionId, String, String)> {
        if !claims.can_publish {
            self.metrics.reject("forbidden");
            return Err(Error::Forbidden("token does not allow publishing"));
        }
        RTCSessionDescription::offer(sdp.clone()).map_err(|e| Error::Sdp(e.to_string()))?;
        let id = self.admit(claims, SessionKind::Whip, now)?;
        let result = (|| {
            let peer = self.create_peer(id, Role::Publish, now)?;
            if let Some(s) = self.sessions.get_mut(&id) {
                s.publish_peer = Some(peer);
            }
            self.answer_offer(peer, sdp, now)?;
            self.finish_answer(peer, now)
        })();
        match result {
            Ok(answer) => {
                let (room, me) = {
                    let s = &self.sessions[&id];
                    (s.room.clone(), s.participant.clone())
                };
                self.broadcast(
                    &room,
                    id,
                    &ServerMessage::ParticipantJoined { participant: me },
                );
                Ok((id, self.sessions[&id].resource.clone(), answer))
            }
            Err(e) => {
                self.remove_session(id, now);
                Err(e)
            }
        }
    }

    /// Starts a WHEP session: answers the viewer's offer with the room's newest publisher's
    /// audio and video.
    pub fn whep(
        &mut self,
        claims: &JoinClaims,
        sdp: String,
        now: Instant,
    ) -> Result<(SessionId, String, String)> {
        if !claims.can_subscribe {
            self.metrics.reject("forbidden");
            return Err(Error::Forbidden("token does not allow subscribing"));
        }
        RTCSessionDescription::offer(sdp.clone()).map_err(|e| Error::Sdp(e.to_string()))?;
        // The newest publisher's tracks, at most one audio and one video.
        let mut picks: Vec<TrackKey> = Vec::new();
        if let Some(room) = self.rooms.get(&claims.room) {
            let mut by_kind: HashMap<RtpCodecKind, TrackKey> = HashMap::new();
            for k in &room.tracks {
                if let Some(t) = self.tracks.get(k)
                    && t.codec.is_some()
                    && t.source != TrackSource::Screen
                {
                    by_kind.insert(t.kind, *k);
                }
            }
            picks.extend(by_kind.into_values());
        }
        if picks.is_empty() {
            if !self.links.is_empty() {
                // The publisher may be on a linked node: ask for the room; the caller retries.
                self.relay_prefetch(&claims.room, now);
                return Err(Error::RelayPending);
            }
            self.metrics.reject("no_publisher");
            return Err(Error::NoPublisher(claims.room.clone()));
        }
        // An SFU forwards, it does not transcode: a track whose codec the viewer did not
        // offer cannot be played, and saying so beats a silent black video.
        let offered = offered_codecs(&sdp);
        let mut refused = Vec::new();
        picks.retain(|k| {
            let Some(codec) = self.tracks.get(k).and_then(|t| t.codec.as_ref()) else {
                return false;
            };
            let ok = offered
                .iter()
                .any(|m| m.eq_ignore_ascii_case(&codec.mime_type));
            if !ok {
                refused.push(codec.mime_type.clone());
            }
            ok
        });
        if picks.is_empty() {
            self.metrics.reject("unsupported_codec");
            return Err(Error::UnsupportedCodec(refused.join(", ")));
        }
        let id = self.admit(claims, SessionKind::Whep, now)?;
        let result = (|| {
            let peer = self.create_peer(id, Role::Subscribe, now)?;
            if let Some(s) = self.sessions.get_mut(&id) {
                s.subscribe_peer = Some(peer);
            }
            self.answer_offer(peer, sdp, now)?;
            for k in picks {
                self.add_down_track(k, id);
            }
            self.finish_answer(peer, now)
        })();
        match result {
            Ok(answer) => Ok((id, self.sessions[&id].resource.clone(), answer)),
            Err(e) => {
                self.remove_session(id, now);
                Err(e)
            }
        }
    }

    /// Ends the WHIP or WHEP session behind a resource id (the `DELETE` on its Location).
    pub fn delete_resource(&mut self, resource: &str, now: Instant) -> Result<()> {
        let id = *self.by_resource.get(resource).ok_or(Error::NotFound)?;
        self.remove_session(id, now);
        Ok(())
    }

    /// Ends a session (the client left or its socket closed).
    pub fn leave(&mut self, session: SessionId, now: Instant) {
        self.remove_session(session, now);
    }

    /// Stops taking new rooms for good (SIGTERM): [`Engine::undrain`] is refused from now on.
    pub fn terminate(&mut self) {
        self.terminating = true;
        self.drain();
    }

    /// Takes new rooms again after a drain the operator asked for. Refused once the process is
    /// stopping.
    pub fn undrain(&mut self) -> Result<(), Error> {
        if self.terminating {
            return Err(Error::Draining);
        }
        if self.draining {
            self.draining = false;
            self.metrics.draining.set(0);
            tracing::info!("taken back into service: new rooms are accepted again");
        }
        Ok(())
    }

    /// The room's share moved to another node: every participant in `room` is told to
    /// reconnect at `url`, and the room's assignment is let go. Returns how many were told.
    pub fn move_room(&mut self, room: &str, url: &str) -> usize {
        self.assignments.remove(room);
        let sessions: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.kind == SessionKind::WebSocket && s.room == room)
            .map(|(id, _)| *id)
            .collect();
        for s in &sessions {
            self.signal(
                *s,
                ServerMessage::Draining {
                    url: Some(url.to_owned()),
                },
            );
        }
        tracing::info!(%room, %url, told = sessions.len(), "room moved: participants sent on");
        sessions.len()
    }

    /// Stops taking new rooms; existing rooms continue.
    pub fn drain(&mut self) {
        self.draining = true;
        self.metrics.draining.set(1);
        let sessions: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.kind == SessionKind::WebSocket)
            .map(|(id, _)| *id)
            .collect();
        for s in sessions {
            self.signal(s, ServerMessage::Draining { url: None });
        }
    }

    /// True once draining started.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Number of sessions (for drain completion).
    pub fn session_count(&self) -> usize {
        self.sessions.len()
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// What `session`'s subscribe leg can carry, as the node estimates it (GCC from the
    /// subscriber's TWCC feedback, or its REMB: the lower), bits per second.
    pub fn send_estimate_bps(&self, session: SessionId) -> Option<f64> {
        let peer = self.sessions.get(&session)?.subscribe_peer?;
        self.peers.get(&peer)?.available_bps()
    }

    /// The node's load, for `/status`.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            node_id: self.cfg.node_id.clone(),
            region: self.cfg.region.clone(),
            ready: !self.draining,
            draining: self.draining,
            terminating: self.terminating,
            rooms: self.rooms.len() as u64,
            participants: self.sessions.len() as u64,
            published_tracks: self.tracks.len() as u64,
            forwarded_streams: self.downs.len() as u64,
            ingress_bps: self.rate_window.ingress_bps as u64,
            egress_bps: self.rate_window.egress_bps as u64,
            cpu_cores: 0.0,
            uptime_secs: 0,
            room_participants: self
                .rooms
                .iter()
                .map(|(k, r)| (k.clone(), r.sessions.len() as u64))
                .collect(),
            assignments: self
                .assignments
                .iter()
                .map(|(k, a)| (k.clone(), a.generation))
                .collect(),
        }
    }

    /// Takes the operator's assignment of `room`. An assignment older (by Meeting generation)
    /// than the one held is ignored, so a delayed push cannot undo a newer plan. Returns whether
    /// it was taken.
    pub fn assign(&mut self, room: &str, assignment: RoomAssignment, now: Instant) -> Result<bool> {
        assignment
            .validate(room)
            .map_err(|m| Error::BadRequest(m.into()))?;
        if let Some(held) = self.assignments.get(room)
            && held.generation > assignment.generation
        {
            return Ok(false);
        }
        if !self.assignments.contains_key(room) && self.draining {
            return Err(Error::Draining);
        }
        self.assignments.insert(room.to_owned(), assignment);
        self.relay_assigned(room, now);
        Ok(true)
    }

    /// Where `room`'s participants go if this node stops answering: the meeting's other
    /// nodes (nearest first) and the operator's rejoin URL, from the room's assignment (none
    /// for a room the operator did not assign), and this node's region.
    pub fn resume_info(&self, room: &str) -> (Vec<String>, Option<String>, String) {
        let a = self.assignments.get(room);
        (
            a.map(|a| a.fallbacks.clone()).unwrap_or_default(),
            a.and_then(|a| a.rejoin_url.clone()),
            self.cfg.region.clone(),
        )
    }

    /// Releases `room`: participants already in it stay until they leave, and the room falls
    /// back to the node's own limits. Returns whether the room was assigned.
    pub fn release(&mut self, room: &str) -> bool {
        self.assignments.remove(room).is_some()
    }

    pub(super) fn remove_session(&mut self, id: SessionId, now: Instant) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        self.by_resource.remove(&s.resource);
        // Tracks this session published go away for everyone.
        let published: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.session == id)
            .map(|(k, _)| *k)
            .collect();
        for k in published {
            self.remove_track(k, now);
        }
        // Down-tracks this session received.
        let mine: Vec<DownKey> = self
            .downs
            .iter()
            .filter(|(_, d)| d.session == id)
            .map(|(k, _)| *k)
            .collect();
        for d in mine {
            if let Some(down) = self.downs.remove(&d)
                && let Some(t) = self.tracks.get_mut(&down.track)
            {
                t.downs.retain(|x| *x != d);
            }
        }
        for p in [s.publish_peer, s.subscribe_peer].into_iter().flatten() {
            if let Some(mut peer) = self.peers.remove(&p) {
                let _ = peer.pc.close();
                while let Some(msg) = peer.pc.poll_write() {
                    push_transmit(&mut self.transmits, msg.transport.peer_addr, msg.message);
                }
                for (u, _) in &peer.ufrags {
                    self.by_ufrag.remove(u);
                }
                for a in peer.addrs {
                    self.by_addr.remove(&a);
                }
            }
        }
        self.relay_participant_left(&s.room, &s.participant.id);
        let mut emptied = false;
        if let Some(room) = self.rooms.get_mut(&s.room) {
            room.sessions.retain(|x| *x != id);
            room.speakers.remove(&s.participant.id);
            emptied = room.sessions.is_empty();
        }
        if emptied {
            self.close_if_idle(&s.room, now);
        }
        self.broadcast(
            &s.room,
            id,
            &ServerMessage::ParticipantLeft {
                participant_id: s.participant.id.clone(),
            },
        );
        self.closed.push_back(id);
    }

    /// Publisher `peer` no longer sends its track `track_id`: it goes away for everyone.
    fn unpublish_inbound(&mut self, peer: PeerId, track_id: &str, now: Instant) {
        let key = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.inbound.remove(track_id));
        if let Some(k) = key {
            self.remove_track(k, now);
        }
    }

    pub(super) fn remove_track(&mut self, key: TrackKey, now: Instant) {
        let Some(t) = self.tracks.remove(&key) else {
            return;
        };
        let session_room = Some(t.room.clone());
        self.relay_track_removed(key, &t);
        let mut reoffer: HashSet<SessionId> = HashSet::new();
        for d in &t.downs {
            if let Some(down) = self.downs.remove(d) {
                if let Some(peer) = self.peers.get_mut(&down.peer) {
                    peer.downs_by_ssrc.remove(&down.ssrc);
                    let _ = peer.pc.remove_track(down.sender);
                }
                reoffer.insert(down.session);
            }
        }
        if let Some(room) = session_room {
            if let Some(r) = self.rooms.get_mut(&room) {
                r.tracks.retain(|k| *k != key);
            }
            // A chosen publisher gone: the next one fills its place in last-N.
            self.refresh_last_n(&room);
            match self.gone_batch.as_mut() {
                Some(batch) => batch.entry(room).or_default().tracks.push(t.id.clone()),
                None => self.broadcast(
                    &room,
                    t.session,
                    &ServerMessage::TrackUnpublished {
                        track_id: t.id.clone(),
                    },
                ),
            }
        }
        for s in reoffer {
            if self
                .sessions
                .get(&s)
                .is_some_and(|s| s.kind == SessionKind::WebSocket)
            {
                let _ = self.offer_subscriber(s, now);
            }
        }
    }

    /// Adds a down-track of `track` to `session`'s subscribe connection.
    pub(super) fn add_down_track(&mut self, track: TrackKey, session: SessionId) {
        let Some(t) = self.tracks.get(&track) else {
            return;
        };
        let Some(codec) = t.codec.clone() else { return };
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        if t.session == session || !s.can_subscribe {
            return;
        }
        let Some(peer_id) = s.subscribe_peer else {
            return;
        };
        let stream_id = t.owner.id.clone();
        let ssrc = rand::random::<u32>();
        let is_video = t.kind == RtpCodecKind::Video;
        let media = MediaStreamTrack::new(
            stream_id,
            t.id.clone(),
            format!("{:?}", t.source),
            t.kind,
            vec![RTCRtpEncodingParameters {
                rtp_coding_parameters: RTCRtpCodingParameters {
                    ssrc: Some(ssrc),
                    rtx: is_video.then(|| RTCRtpRtxParameters {
                        ssrc: rand::random(),
                    }),
                    ..Default::default()
                },
                codec,
                ..Default::default()
            }],
        );
        let layers = t.layers.len().max(1) as u8;
        let s_kind = s.kind;
        let rates = cascade::layer_rates(t);
        let wish = s.layer_wish.get(&t.id).map(|(_, h)| *h);
        let key = self.next_id();
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let sender = match peer.pc.add_track(media) {
            Ok(sender) => sender,
            Err(e) => {
                tracing::warn!(session, error = %e, "cannot add down-track");
                return;
            }
        };
        peer.downs_by_ssrc.insert(ssrc, key);
        let mut selector = LayerSelector::new(layers);
        if let Some(h) = wish {
            selector.set_wanted(layer_for_height(h, layers));
        }
        selector.start_on_flowing(&rates);
        let forwarder = if is_video {
            Forwarder::video(selector.chosen())
        } else {
            Forwarder::audio()
        };
        self.downs.insert(
            key,
            DownTrack {
                track,
                session,
                peer: peer_id,
                sender,
                ssrc,
                forwarder,
                vp8: Vp8Munger::default(),
                selector,
                leg: None,
                layer_switched_at: None,
                sent: None,
                stats: SenderStats::default(),
                rtx_seq: rand::random(),
                resend: Default::default(),
                // WHEP answers carry the down-tracks at once; WebSocket subscribers accept
                // them with their next answer.
                negotiated: s_kind != SessionKind::WebSocket,
            },
        );
        if let Some(t) = self.tracks.get_mut(&track) {
            t.downs.push(key);
        }
        if self
            .sessions
            .get(&session)
            .is_some_and(|s| s.last_n.is_some())
        {
            self.refresh_wanted(session);
        }
        self.sync_relay_subscriptions(track);
    }

    /// Sends a (re-)offer on the subscribe connection, or queues one if an offer is out.
    pub(super) fn offer_subscriber(&mut self, session: SessionId, now: Instant) -> Result<()> {
        let s = self.sessions.get_mut(&session).ok_or(Error::NotFound)?;
        if s.kind != SessionKind::WebSocket {
            return Ok(());
        }
        if s.offer_outstanding {
            s.reoffer = true;
            return Ok(());
        }
        let peer_id = s.subscribe_peer.ok_or(Error::NotFound)?;
        let first = self
            .peers
            .get(&peer_id)
            .is_some_and(|p| p.pc.local_description().is_none());
        let mut peer = self.peers.remove(&peer_id).ok_or(Error::NotFound)?;
        let result = (|| {
            let offer = peer.pc.create_offer(None).map_err(Error::rtc)?;
            peer.pc
                .set_local_description(now, offer)
                .map_err(Error::rtc)?;
            if first {
                add_host_candidate(&mut peer.pc, self.cfg.candidate_addr)?;
            }
            peer.pc
                .local_description()
                .map(|d| d.sdp)
                .ok_or_else(|| Error::rtc("no local description"))
        })();
        self.peers.insert(peer_id, peer);
        let sdp = result?;
        if let Some(s) = self.sessions.get_mut(&session) {
            s.offer_outstanding = true;
        }
        self.signal(session, ServerMessage::SubscribeOffer { sdp });
        self.mark_dirty(peer_id);
        Ok(())
    }

    // ----- the packet path -----------------------------------------------------------------

    pub(super) fn mark_dirty(&mut self, peer: PeerId) {
        if self.dirty_set.insert(peer) {
            self.dirty.push_back(peer);
        }
    }

    /// Feeds one UDP datagram received from `from`.
    pub fn handle_datagram(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let peer_id = match self.by_addr.get(&from) {
            Some(p) => *p,
            None => {
                // A new tuple: only a binding request that verifies with the password of the
                // ufrag it names binds it (see `stun`).
                let Some(ufrag) = stun::local_ufrag(data) else {
                    self.metrics.unmatched_datagrams.inc();
                    return;
                };
                let Some((p, peer)) = self
                    .by_ufrag
                    .get(ufrag)
                    .and_then(|p| Some((*p, self.peers.get_mut(p)?)))
                else {
                    self.metrics.unmatched_datagrams.inc();
                    return;
                };
                let verified = peer
                    .ufrags
                    .iter()
                    .find(|(u, _)| u == ufrag)
                    .is_some_and(|(_, pwd)| stun::binding_request_verifies(data, pwd));
                if !verified {
                    self.metrics.unmatched_datagrams.inc();
                    return;
                }
                if peer.addrs.len() >= MAX_ADDRS_PER_PEER {
                    let old = peer.addrs.remove(0);
                    self.by_addr.remove(&old);
                }
                peer.addrs.push(from);
                self.by_addr.insert(from, p);
                p
            }
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                // The address clients sent to: ICE matches it against the node's candidate,
                // which is the advertised (public) address when a NAT or a Service maps it.
                local_addr: self.cfg.candidate_addr,
                peer_addr: from,
                ecn: None,
                transport_protocol: TransportProtocol::UDP,
            },
            message: BytesMut::from(data),
        };
        if let Err(e) = peer.pc.handle_read(msg) {
            tracing::debug!(peer = peer_id, error = %e, "datagram refused");
        }
        self.mark_dirty(peer_id);
        self.process(now);
    }

    /// Sends what commands (relayed media, chat, signalling) queued on peer connections. The
    /// socket paths do this themselves; without it, media from a relay link would wait for the
    /// next socket event or timer (measured: 14-29 ms at p50 per hop).
    pub fn flush(&mut self, now: Instant) {
        self.process(now);
    }

    /// Drains every peer connection touched since the last call.
    pub(super) fn process(&mut self, now: Instant) {
        // Events and reads are collected first (the handlers need the whole engine), into
        // buffers kept between calls; the peer itself stays in its map.
        let mut events = std::mem::take(&mut self.scratch_events);
        let mut reads = std::mem::take(&mut self.scratch_reads);
        while let Some(peer_id) = self.dirty.pop_front() {
            self.dirty_set.remove(&peer_id);
            let Some(peer) = self.peers.get_mut(&peer_id) else {
                continue;
            };
            while let Some(msg) = peer.pc.poll_write() {
                push_transmit(&mut self.transmits, msg.transport.peer_addr, msg.message);
            }
            while let Some(e) = peer.pc.poll_event() {
                events.push(e);
            }
            while let Some(TaggedRTCMessage { message, .. }) = peer.pc.poll_read() {
                reads.push(message);
            }
            let keyframe_requests = peer.keyframe_requests.take();
            let timeout = peer.pc.poll_timeout();
            if timeout != peer.timeout {
                peer.timeout = timeout;
                if let Some(t) = timeout {
                    self.timers.push(Reverse((t, peer_id)));
                }
            }
            for e in events.drain(..) {
                self.on_event(peer_id, e, now);
            }
            for m in reads.drain(..) {
                self.on_message(peer_id, m, now);
            }
            for ssrc in keyframe_requests {
                self.keyframe_request_from_subscriber(peer_id, ssrc, now);
            }
        }
        self.scratch_events = events;
        self.scratch_reads = reads;
    }

    pub(super) fn on_event(
        &mut self,
        peer_id: PeerId,
        event: RTCPeerConnectionEvent,
        now: Instant,
    ) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                let Some(peer) = self.peers.get_mut(&peer_id) else {
                    return;
                };
                tracing::debug!(peer = peer_id, %state, "connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        let reconnected = std::mem::replace(&mut peer.connected, true);
                        // Ask publishers for keyframes so the new subscriber starts at once.
                        // (Not when a publisher reconnects: measured, that used up the
                        // keyframe throttle just before its subscribers reconnected, and they
                        // then waited for their decoders to ask: see BENCHMARKS.md.)
                        if peer.role == Role::Subscribe {
                            let downs: Vec<DownKey> =
                                peer.downs_by_ssrc.values().copied().collect();
                            for d in downs {
                                // Back after an ICE restart: what went out meanwhile may have
                                // gone to the old path, a keyframe included, so each stream
                                // waits for a new keyframe (and keeps asking for one, past the
                                // throttle, until it has one) instead of sending frames that
                                // cannot be decoded.
                                if reconnected && let Some(dt) = self.downs.get_mut(&d) {
                                    dt.forwarder.resync();
                                }
                                self.request_keyframe_for(d, now);
                            }
                        }
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        let session = peer.session;
                        self.remove_session(session, now);
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init)) => {
                self.on_track_open(
                    peer_id,
                    init.track_id.to_string(),
                    init.receiver_id,
                    init.ssrc,
                    init.rid.map(|r| r.to_string()),
                    now,
                );
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnClose(track_id)) => {
                self.unpublish_inbound(peer_id, &track_id.to_string(), now);
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnOpen(id)) => {
                if let Some(p) = self.peers.get_mut(&peer_id)
                    && p.chat == Some(id)
                {
                    p.chat_open = true;
                }
            }
            RTCPeerConnectionEvent::OnDataChannel(RTCDataChannelEvent::OnClose(id)) => {
                if let Some(p) = self.peers.get_mut(&peer_id)
                    && p.chat == Some(id)
                {
                    p.chat_open = false;
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_track_open(
        &mut self,
        peer_id: PeerId,
        track_id: String,
        receiver: RTCRtpReceiverId,
        ssrc: u32,
        rid: Option<String>,
        now: Instant,
    ) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        if peer.role != Role::Publish {
            return;
        }
        let session = peer.session;
        if let Some(&key) = peer.inbound.get(&track_id) {
            // Another simulcast layer of a known track.
            if let Some(t) = self.tracks.get_mut(&key) {
                let rid = rid.unwrap_or_default();
                if let Some(l) = t.layers.iter_mut().find(|l| l.rid == rid) {
                    l.ssrc = Some(ssrc);
                }
            }
            return;
        }
        let (kind, codec, rids, ext_uris) = {
            let Some(mut rx) = peer.pc.rtp_receiver(receiver) else {
                return;
            };
            let kind = rx.track().kind();
            let rids: Vec<String> = rx
                .track()
                .codings()
                .iter()
                .map(|c| c.rtp_coding_parameters.rid.to_string())
                .filter(|r| !r.is_empty())
                .collect();
            let params = rx.get_parameters();
            let codec = params
                .rtp_parameters
                .codecs
                .first()
                .map(|c| c.rtp_codec.clone());
            let ext_uris: HashMap<u8, String> = params
                .rtp_parameters
                .header_extensions
                .iter()
                .map(|h| (h.id as u8, h.uri.clone()))
                .collect();
            (kind, codec, rids, ext_uris)
        };
        let Some(s) = self.sessions.get(&session) else {
            return;
        };
        let source =
            s.declared_sources
                .get(&track_id)
                .copied()
                .unwrap_or(if kind == RtpCodecKind::Audio {
                    TrackSource::Microphone
                } else {
                    TrackSource::Camera
                });
        let room = s.room.clone();
        let owner = s.participant.clone();
        // Only a WebSocket participant hears `publish_layers` (WHIP has no channel for it).
        let signalled = matches!(s.kind, super::session::SessionKind::WebSocket);
        let muted_early = s.muted_early.contains(&track_id);
        let mut layers: Vec<Layer> = if rids.is_empty() {
            vec![Layer::new(String::new(), Some(ssrc))]
        } else {
            let mut v: Vec<(u8, String)> = rids
                .iter()
                .enumerate()
                .map(|(i, r)| (layer_index(r, i), r.clone()))
                .collect();
            v.sort();
            v.into_iter()
                .map(|(_, rid)| Layer::new(rid, None))
                .collect()
        };
        if let Some(r) = rid
            && let Some(l) = layers.iter_mut().find(|l| l.rid == r)
        {
            l.ssrc = Some(ssrc);
        }
        let key = self.next_id();
        let audio_level_id = ext_uris
            .iter()
            .find(|(_, u)| u.as_str() == rtc::sdp::extmap::AUDIO_LEVEL_URI)
            .map(|(id, _)| *id);
        let video_codec = codec
            .as_ref()
            .map(|c| VideoCodec::from_mime(&c.mime_type))
            .unwrap_or(VideoCodec::Other);
        let public_id = format!("t{key}");
        let layers_len = layers.len();
        self.tracks.insert(
            key,
            UpTrack {
                id: public_id,
                session,
                room: room.clone(),
                owner,
                peer: peer_id,
                receiver: Some(receiver),
                relay: None,
                relay_subs: Vec::new(),
                kind,
                source,
                codec,
                video_codec,
                layers,
                ext_uris,
                audio_level_id,
                downs: Vec::new(),
                keyframes: Default::default(),
                dynacast: (signalled && kind == RtpCodecKind::Video)
                    .then(|| super::dynacast::Dynacast::new(track_id.clone(), layers_len)),
                muted: muted_early,
            },
        );
        if let Some(p) = self.peers.get_mut(&peer_id) {
            p.inbound.insert(track_id, key);
        }
        if let Some(r) = self.rooms.get_mut(&room) {
            r.tracks.push(key);
        }
        self.relay_announce_to_all(key);
        if let Some(info) = self.tracks.get(&key).and_then(|t| self.track_info(t)) {
            self.broadcast(
                &room,
                session,
                &ServerMessage::TrackPublished { track: info },
            );
        }
        let subscribers: Vec<SessionId> = self
            .rooms
            .get(&room)
            .map(|r| r.sessions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|&s| {
                s != session
                    && self
                        .sessions
                        .get(&s)
                        .is_some_and(|s| s.kind == SessionKind::WebSocket)
            })
            .collect();
        for s in subscribers {
            self.add_down_track(key, s);
            if let Err(e) = self.offer_subscriber(s, now) {
                tracing::warn!(session = s, error = %e, "cannot re-offer");
            }
        }
    }

    pub(super) fn on_message(&mut self, peer_id: PeerId, msg: RTCMessage, now: Instant) {
        match msg {
            RTCMessage::RtpPacket(track_id, packet) => self.on_rtp(peer_id, &track_id, packet, now),
            RTCMessage::RtcpPacket(_, packets) => self.on_rtcp(peer_id, packets, now),
            RTCMessage::DataChannelMessage(_, m) => {
                let Some(session) = self.peers.get(&peer_id).map(|p| p.session) else {
                    return;
                };
                if m.data.len() > MAX_CHAT_BYTES * 2 {
                    return;
                }
                match serde_json::from_slice::<ChatFrame>(&m.data) {
                    Ok(frame) => {
                        if let Err(e) = self.chat(session, &frame.text, now) {
                            self.signal(
                                session,
                                ServerMessage::Error {
                                    code: e.code().into(),
                                    message: e.to_string(),
                                },
                            );
                        }
                    }
                    Err(_) => self.signal(
                        session,
                        ServerMessage::Error {
                            code: "bad_request".into(),
                            message: "chat frames are JSON objects with a text field".into(),
                        },
                    ),
                }
            }
            _ => {}
        }
    }

    pub(super) fn on_rtp(
        &mut self,
        peer_id: PeerId,
        track_id: &str,
        packet: rtc::rtp::Packet,
        now: Instant,
    ) {
        let Some(key) = self
            .peers
            .get(&peer_id)
            .and_then(|p| p.inbound.get(track_id))
            .copied()
        else {
            return;
        };
        let Some(t) = self.tracks.get_mut(&key) else {
            return;
        };
        let payload_len = packet.payload.len() as u64;
        self.metrics.packets_in.inc();
        self.metrics.bytes_in.inc_by(payload_len);
        self.rate_window.bytes_in += payload_len;
        let ssrc = packet.header.ssrc;
        let layer = match t.layers.iter().position(|l| l.ssrc == Some(ssrc)) {
            Some(i) => i,
            None => {
                // A layer whose first packet we have not matched yet: ask the receiver.
                let rid = self.peers.get_mut(&peer_id).and_then(|p| {
                    p.pc.rtp_receiver(t.receiver?)
                        .and_then(|r| r.track().rid(ssrc).map(|r| r.to_string()))
                });
                match rid.and_then(|rid| t.layers.iter().position(|l| l.rid == rid)) {
                    Some(i) => {
                        t.layers[i].ssrc = Some(ssrc);
                        i
                    }
                    None => return,
                }
            }
        };
        self.deliver(key, layer, &packet, None, now);
    }

    /// Forwards a packet of `key`'s `layer` (from its publisher or a relay link) to its
    /// subscribers here and to relay links that take that layer.
    /// `raw` is the packet's bytes when it came over a relay link as is.
    pub(super) fn deliver(
        &mut self,
        key: TrackKey,
        layer: usize,
        packet: &rtc::rtp::Packet,
        raw: Option<&bytes::Bytes>,
        now: Instant,
    ) {
        let Some(t) = self.tracks.get_mut(&key) else {
            return;
        };
        let Some(l) = t.layers.get_mut(layer) else {
            return;
        };
        l.bytes += packet.payload.len() as u64;
        l.packets += 1;
        let resumed = l.last_at.is_some_and(|at| {
            now.saturating_duration_since(at) >= super::uptrack::LAYER_RESUME_GAP
        });
        l.last_at = Some(now);
        if resumed {
            t.keyframes.forget();
        }
        if t.codec.is_none() {
            return;
        }
        // Active speaker.
        if let Some(id) = t.audio_level_id
            && let Some(level) = packet
                .header
                .get_extension(id)
                .as_deref()
                .and_then(parse_audio_level)
            && let Some(room) = self.rooms.get_mut(&t.room)
        {
            room.speakers.on_level(&t.owner.id, level, now);
        }
        let keyframe = t.kind == RtpCodecKind::Video && t.video_codec.is_keyframe(&packet.payload);
        // Borrowed out and put back rather than cloned: no allocation per packet.
        // `forward_to` never changes a track's subscriber list.
        let downs = std::mem::take(&mut t.downs);
        for &d in &downs {
            self.forward_to(d, layer as u8, packet, keyframe, now);
        }
        if let Some(t) = self.tracks.get_mut(&key) {
            t.downs = downs;
        }
        self.relay_forward(key, layer as u8, packet, raw);
    }

    pub(super) fn forward_to(
        &mut self,
        down_key: DownKey,
        layer: u8,
        packet: &rtc::rtp::Packet,
        keyframe: bool,
        now: Instant,
    ) {
        let Some(down) = self.downs.get_mut(&down_key) else {
            return;
        };
        let (Some(peer), Some(track)) =
            (self.peers.get_mut(&down.peer), self.tracks.get(&down.track))
        else {
            return;
        };
        let Some(sent) = down.forward(
            peer,
            track,
            layer,
            packet,
            keyframe,
            now,
            &mut self.transmits,
        ) else {
            return;
        };
        if sent.counted_switch {
            self.metrics.layer_switches.inc();
            if let Some(wait) = sent.switch_wait {
                self.metrics
                    .layer_switch_wait_seconds
                    .observe(wait.as_secs_f64());
            }
        }
        let len = sent.bytes as u64;
        self.metrics.packets_out.inc();
        self.metrics.bytes_out.inc_by(len);
        self.rate_window.bytes_out += len;
        if let Some(s) = self.sessions.get_mut(&down.session)
            && !s.first_media_sent
        {
            s.first_media_sent = true;
            self.metrics
                .join_seconds
                .observe(now.saturating_duration_since(s.joined_at).as_secs_f64());
        }
    }

    /// Resends what a subscriber NACKed, from what its down-track still holds.
    pub(super) fn answer_nack(&mut self, peer_id: PeerId, nack: &TransportLayerNack, now: Instant) {
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(down) = peer
            .downs_by_ssrc
            .get(&nack.media_ssrc)
            .and_then(|d| self.downs.get_mut(d))
        else {
            return;
        };
        let seqs = nack.nacks.iter().flat_map(|pair| pair.into_iter());
        let (resent, refused) = down.answer_nack(peer, seqs, now, &mut self.transmits);
        self.metrics.retransmits.inc_by(resent as u64);
        self.metrics.retransmits_refused.inc_by(refused as u64);
    }

    /// RTCP sender reports for every down-track due one (see [`DownTrack::sender_report`]).
    pub(super) fn send_sender_reports(&mut self, now: Instant) {
        let wall = SystemTime::now();
        let mut touched = std::mem::take(&mut self.scratch_peers);
        for down in self.downs.values_mut() {
            let Some(report) = down.sender_report(now, wall) else {
                continue;
            };
            let Some(mut sender) = self
                .peers
                .get_mut(&down.peer)
                .and_then(|p| p.pc.rtp_sender(down.sender))
            else {
                continue;
            };
            match sender.write_rtcp(now, vec![Box::new(report)]) {
                Ok(()) => touched.push(down.peer),
                Err(e) => tracing::debug!(error = %e, "sender report refused"),
            }
        }
        for p in touched.drain(..) {
            self.mark_dirty(p);
        }
        self.scratch_peers = touched;
    }

    pub(super) fn on_rtcp(
        &mut self,
        peer_id: PeerId,
        packets: Vec<Box<dyn rtc::rtcp::Packet>>,
        now: Instant,
    ) {
        for p in packets {
            let any = p.as_any();
            // PLI and FIR are taken before the library routes RTCP (see [`DeliverRtcp`]).
            if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                self.metrics.nacks.inc();
                self.answer_nack(peer_id, nack, now);
            } else if let Some(rr) = any.downcast_ref::<ReceiverReport>() {
                if let Some(peer) = self.peers.get_mut(&peer_id) {
                    for r in &rr.reports {
                        if peer.downs_by_ssrc.contains_key(&r.ssrc) {
                            let lost = f32::from(r.fraction_lost) / 256.0;
                            peer.loss = peer.loss * 0.5 + lost * 0.5;
                        }
                    }
                }
            } else if let Some(remb) = any.downcast_ref::<ReceiverEstimatedMaximumBitrate>()
                && let Some(peer) = self.peers.get_mut(&peer_id)
            {
                peer.remb_bps = Some(f64::from(remb.bitrate));
            }
        }
    }

    pub(super) fn keyframe_request_from_subscriber(
        &mut self,
        peer_id: PeerId,
        ssrc: u32,
        now: Instant,
    ) {
        if let Some(d) = self
            .peers
            .get(&peer_id)
            .and_then(|p| p.downs_by_ssrc.get(&ssrc))
            .copied()
        {
            self.request_keyframe_for(d, now);
        }
    }

    /// Asks the publisher for a keyframe of the layer `down` is on or switching to.
    pub(super) fn request_keyframe_for(&mut self, down: DownKey, now: Instant) {
        let Some(d) = self.downs.get(&down) else {
            return;
        };
        let layer = d
            .forwarder
            .target_layer()
            .or(d.forwarder.current_layer())
            .unwrap_or(0);
        let track = d.track;
        self.send_pli(track, layer, now);
    }

    pub(super) fn send_pli(&mut self, track: TrackKey, layer: u8, now: Instant) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        if t.kind != RtpCodecKind::Video {
            return;
        }
        // One throttle whether the request goes to the publisher here or upstream.
        if !t.keyframes.allow(layer, now) {
            tracing::trace!(track, layer, "keyframe request throttled");
            return;
        }
        if t.relay.is_some() {
            tracing::debug!(track, layer, "keyframe request upstream");
            self.relay_keyframe_request(track, layer);
            return;
        }
        let Some(ssrc) = t.layers.get(usize::from(layer)).and_then(|l| l.ssrc) else {
            return;
        };
        let (peer_id, Some(receiver)) = (t.peer, t.receiver) else {
            return;
        };
        let Some(peer) = self.peers.get_mut(&peer_id) else {
            return;
        };
        let Some(mut rx) = peer.pc.rtp_receiver(receiver) else {
            return;
        };
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        tracing::debug!(track, layer, "pli to publisher");
        if rx.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
            self.metrics.plis.inc();
            self.mark_dirty(peer_id);
        }
    }

    // ----- time -----------------------------------------------------------------------------

    /// When [`Engine::handle_timeout`] should next be called.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        while let Some(Reverse((t, p))) = self.timers.peek().copied() {
            match self.peers.get(&p) {
                Some(peer) if peer.timeout == Some(t) => break,
                _ => {
                    self.timers.pop();
                }
            }
        }
        let peer_next = self.timers.peek().map(|Reverse((t, _))| *t);
        match (peer_next, self.next_housekeeping) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(Reverse((t, p))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            let Some(peer) = self.peers.get_mut(&p) else {
                continue;
            };
            if peer.timeout != Some(t) {
                continue;
            }
            peer.timeout = None;
            if let Err(e) = peer.pc.handle_timeout(now) {
                tracing::debug!(peer = p, error = %e, "timeout handling failed");
            }
            self.mark_dirty(p);
        }
        if self.next_housekeeping.is_some_and(|t| t <= now) {
            self.housekeeping(now);
            self.next_housekeeping = if self.sessions.is_empty() {
                None
            } else {
                Some(now + HOUSEKEEPING)
            };
        }
        self.process(now);
    }

    pub(super) fn housekeeping(&mut self, now: Instant) {
        self.send_sender_reports(now);
        // Rates, once a second.
        let since = *self.rate_window.since.get_or_insert(now);
        let elapsed = now.saturating_duration_since(since);
        if elapsed >= Duration::from_secs(1) {
            let secs = elapsed.as_secs_f64();
            let w = &mut self.rate_window;
            w.ingress_bps = w.bytes_in as f64 * 8.0 / secs;
            w.egress_bps = w.bytes_out as f64 * 8.0 / secs;
            w.bytes_in = 0;
            w.bytes_out = 0;
            w.since = Some(now);
            for t in self.tracks.values_mut() {
                t.roll_rates(secs);
            }
        }
        // Rooms opened for a viewer that never came (a hub's rooms close when their links let go).
        let expired: Vec<String> = self
            .rooms
            .iter()
            .filter(|(_, r)| r.sessions.is_empty() && r.keep_until.is_none_or(|t| t <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for room in expired {
            self.close_if_idle(&room, now);
        }
        // Connections that never connected.
        let stale: Vec<SessionId> = self
            .peers
            .values()
            .filter(|p| {
                !p.connected
                    && now.saturating_duration_since(p.created_at) > self.cfg.connect_timeout
            })
            .map(|p| p.session)
            .collect();
        for s in stale {
            tracing::info!(session = s, "connection never completed; dropping session");
            self.signal(
                s,
                ServerMessage::Error {
                    code: "connect_timeout".into(),
                    message: "media connection did not complete".into(),
                },
            );
            self.remove_session(s, now);
        }
        // Layer decisions, and keyframes for the switches they start.
        for k in super::allocate::allocate(&mut self.downs, &self.tracks, &self.peers, now) {
            self.request_keyframe_for(k, now);
        }
        self.dynacast(now);
        // Active speakers.
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for r in rooms {
            let list = self
                .rooms
                .get_mut(&r)
                .and_then(|room| room.speakers.poll(now));
            if let Some(participant_ids) = list {
                self.broadcast(&r, 0, &ServerMessage::ActiveSpeakers { participant_ids });
                self.refresh_last_n(&r);
            }
        }
        self.relay_housekeeping(now);
        self.metrics.rooms.set(self.rooms.len() as i64);
        self.metrics.participants.set(self.sessions.len() as i64);
        self.metrics.published_tracks.set(self.tracks.len() as i64);
        self.metrics.forwarded_streams.set(self.downs.len() as i64);
    }

    // ----- outputs --------------------------------------------------------------------------

    /// Next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next signalling message for a session.
    pub fn poll_signal(&mut self) -> Option<(SessionId, ServerMessage)> {
        self.signals.pop_front()
    }

    /// Next session that ended (its socket or HTTP resource should be closed).
    pub fn poll_closed(&mut self) -> Option<SessionId> {
        self.closed.pop_front()
    }

    /// The IP the node advertises, for logs.
    pub fn candidate_ip(&self) -> IpAddr {
        self.cfg.candidate_addr.ip()
    }
}

#[cfg(test)]
mod tests {
    use super::sdp_sending_track_ids;

    #[test]
    fn a_removed_or_inactive_section_no_longer_sends_its_track() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\na=msid:s mic\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendonly\r\na=msid:s cam\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\na=msid:s2 screen\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\n";
        let ids = sdp_sending_track_ids(sdp);
        assert!(ids.contains("mic") && ids.contains("cam"), "{ids:?}");
        assert!(!ids.contains("screen"), "{ids:?}");
        assert_eq!(ids.len(), 2);
    }
}
