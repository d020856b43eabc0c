//! The engine's side of relay links to other media nodes (the cascade).
//!
//! A room is one room across linked nodes. When a room opens here (its first participant),
//! every link is told `Interest { on: true }`; the far node answers with its own participants
//! and tracks of that room. A track announced over a link becomes a track of the room here
//! like any other (its subscribers, layer choice and keyframe requests work the same), except
//! that its packets come from the link and its keyframe requests go back over it. Only the
//! layers someone here needs are subscribed (the far node's `LayerRates` say what each layer
//! carries, so the layer choice does not need them all flowing).
//!
//! Two shapes of cascade, told apart per room:
//! - **Mesh** (standalone `--peer` nodes, rooms without an operator assignment): every node
//!   links with every other, so each announces only what is published on it (hops = 0) and
//!   nothing is passed on; a mesh cannot loop.
//! - **Tree** (rooms the operator assigned with relay links): only the links the assignment
//!   names carry the room, and a node passes what arrives over one of them on to the others
//!   (origin → hub → edge), as a route reflector does. A hub with nobody in the room holds it
//!   open while two or more of its tree links want it. Announcements carry their origin and hop count: one that
//!   comes back to its origin, or has made [`MAX_HOPS`] hops, is dropped, so even a wrong plan
//!   cannot make a loop. Participant ids are qualified once, by the node that first relays
//!   them (`origin/p3`), and keep that id on every further hop.
//!
//! Nothing here touches a socket: messages and datagrams for links queue in
//! [`Engine::poll_relay`]'s queue, bounded by [`RELAY_OUT_MAX`]; when it is full the oldest
//! media is dropped first (media is perishable; control messages are the room's state).

mod budget;

use super::TrackKey;
use super::engine::Engine;
use super::send::SeqRing;
use super::uptrack::{RELAY_HISTORY, UpTrack};
use crate::relay::proto::{
    Control, Datagram, FEEDBACK_HANDLE, MediaDatagram, MediaKind, PADDING_HANDLE, Participant,
};
use bytes::Bytes;
use moim_wire::signal::{ChatFrame, ParticipantInfo, ServerMessage, TrackSource};
use rtc::rtp_transceiver::rtp_sender::{RTCPFeedback, RTCRtpCodec, RtpCodecKind};
use rtc::shared::marshal::{Marshal, Unmarshal};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Instant;

/// A relay link, as the driver numbers them.
pub type LinkId = u64;

/// Most messages and datagrams waiting for the driver.
pub const RELAY_OUT_MAX: usize = 16_384;

/// What the engine wants sent on a link.
#[derive(Debug)]
pub enum RelayOut {
    /// A control message.
    Control {
        /// Link.
        link: LinkId,
        /// Message (boxed: announcements are large, datagrams are the common case).
        msg: Box<Control>,
    },
    /// A media datagram.
    Media {
        /// Link.
        link: LinkId,
        /// Encoded [`MediaDatagram`].
        datagram: Bytes,
    },
    /// Probe the link's path: pad what it sends up from `from_bps` to `bps`, for `len` in all
    /// ([`crate::relay::probe`]).
    Probe {
        /// Link.
        link: LinkId,
        /// Bits per second the path is known to carry (where the probe starts).
        from_bps: f64,
        /// Bits per second, media and padding together.
        bps: f64,
        /// How long.
        len: std::time::Duration,
        /// Stop at the first window of a queue (the path is near full).
        careful: bool,
    },
    /// Close the link (it broke the protocol's rules).
    Close {
        /// Link.
        link: LinkId,
        /// Why.
        reason: String,
    },
}

/// A link's state in the engine.
#[derive(Debug)]
pub struct LinkState {
    /// The far node's id.
    pub node_id: String,
    /// Its region.
    pub region: String,
    /// This node dialled the link.
    dialled: bool,
    /// Rooms the far node wants (it told us `Interest { on: true }`).
    interests: HashSet<String>,
    /// Rooms this node told the far node it wants.
    told: HashSet<String>,
    /// Its track handles to the tracks made of them here.
    by_handle: HashMap<u32, TrackKey>,
    /// Round-trip time as QUIC measures it (paces NACK retries).
    rtt: std::time::Duration,
    /// What the path carries and what is held back to fit it.
    budget: budget::LinkBudget,
}

/// A track that arrives over a link.
#[derive(Debug)]
pub struct RelayedTrack {
    link: LinkId,
    handle: u32,
    /// The node it is published on, and the hops it made to get here.
    origin: String,
    hops: u8,
    /// Layers subscribed, as a bit set.
    subscribed: u64,
    /// What each layer carries at the origin, bits per second.
    remote_bps: Vec<f64>,
    /// Loss repair per layer.
    loss: HashMap<u8, LayerLoss>,
    /// The latest packets per layer, as received (see [`Engine::replay_after_late_start`]).
    recent: HashMap<u8, std::collections::VecDeque<(u16, Bytes)>>,
}

/// Packets kept per relayed layer for replay (about half a second of a top layer).
const RECENT_PACKETS: usize = 128;

/// Sequence numbers of one relayed layer: the next expected and the missing ones being NACKed.
#[derive(Debug, Default)]
struct LayerLoss {
    next: Option<u16>,
    /// Missing packets, oldest first.
    missing: std::collections::VecDeque<Missing>,
    /// Which of the 128 packets before `next` arrived: bit `i` is `next - 1 - i`. A copy of
    /// one that did (audio's redundant copy, a retransmission that crossed the original) is
    /// not passed on again.
    received: u128,
}

/// A relayed packet found missing and asked for.
#[derive(Debug, Clone, Copy)]
struct Missing {
    seq: u16,
    /// When its gap was seen (the first ask).
    since: Instant,
    /// When it was last asked for, and how many times.
    asked: Instant,
    tries: u8,
}

impl LayerLoss {
    /// Notes that `seq` arrived at `now`; a gap it opens (up to [`MAX_NACK_GAP`]) becomes
    /// missing and is added to `ask`.
    fn arrive(&mut self, seq: u16, now: Instant, ask: &mut Vec<u16>) -> Arrival {
        let Some(n) = self.next else {
            self.next = Some(seq.wrapping_add(1));
            self.received = 1;
            return Arrival::InOrder;
        };
        if crate::sfu::forwarder::seq_after(seq, n) || seq == n {
            self.next = Some(seq.wrapping_add(1));
            let gap = seq.wrapping_sub(n);
            self.received = self.received.checked_shl(u32::from(gap) + 1).unwrap_or(0) | 1;
            if gap > 0 && gap <= MAX_NACK_GAP {
                for i in 0..gap {
                    let s = n.wrapping_add(i);
                    ask.push(s);
                    self.missing.push_back(Missing {
                        seq: s,
                        since: now,
                        asked: now,
                        tries: 1,
                    });
                }
            }
            return Arrival::InOrder;
        }
        // A retransmission or a late packet: no longer missing. Or a copy of one that came
        // already.
        let back = u32::from(n.wrapping_sub(seq).wrapping_sub(1));
        let bit = 1u128.checked_shl(back).unwrap_or(0);
        if self.received & bit != 0 {
            return Arrival::Copy;
        }
        self.received |= bit;
        self.missing.retain(|m| m.seq != seq);
        Arrival::Late
    }

    /// Asks again (into `ask`) for each missing packet whose last ask a round trip `rtt` has
    /// not answered, if it has tries left and its retransmission can arrive within
    /// [`REPAIR_DEADLINE`] of its gap; gives up the others. Returns whether one was given up: the
    /// pictures that need it cannot be decoded, so the layer must restart at a keyframe.
    fn retry(&mut self, now: Instant, rtt: std::time::Duration, ask: &mut Vec<u16>) -> bool {
        // A retransmission takes a round trip plus the far node's turn.
        let retry_after = rtt + rtt / 4 + std::time::Duration::from_millis(10);
        let before = self.missing.len();
        self.missing.retain_mut(|m| {
            if now.duration_since(m.asked) < retry_after {
                return true;
            }
            let in_time = now + rtt <= m.since + REPAIR_DEADLINE;
            if m.tries >= NACK_TRIES || !in_time {
                return false;
            }
            ask.push(m.seq);
            m.asked = now;
            m.tries += 1;
            true
        });
        let given_up = self.missing.len() < before;
        while self.missing.len() > MAX_MISSING {
            self.missing.pop_front();
        }
        given_up
    }
}

/// How a relayed packet arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Arrival {
    /// The newest of its layer so far.
    InOrder,
    /// After a newer one: a repair or a reordered packet.
    Late,
    /// A copy of one that arrived already.
    Copy,
}

/// Audio packets cross a link twice: again with the packet this many later (40 ms at Opus's
/// 20 ms frames), so that a burst of loss on the path rarely takes both copies, and a lost
/// packet costs nothing audible instead of a NACK round trip (180 ms between Seoul and
/// Virginia, longer than the jitter buffer waits). Audio is a few percent of a link's bytes.
const AUDIO_COPY_AFTER: u16 = 2;

/// Largest gap NACKed at once; beyond it the layer waits for a keyframe instead.
const MAX_NACK_GAP: u16 = 64;
/// Times one missing packet is asked for before it is given up (a retransmission can be lost
/// too: with 2% loss, one try leaves 4% of losses unrepaired, three leave 0.0001%).
const NACK_TRIES: u8 = 3;
/// A missing packet is asked for again only if the retransmission can arrive within this long
/// of the gap being seen; past that the picture has frozen long enough, and a keyframe (asked
/// for when the packet is given up) ends the freeze sooner than more tries would. Over 80 ms
/// all three tries fit (the last is asked 220 ms after the gap); over 180 ms two do, and the
/// keyframe is asked 470 ms after the gap instead of 705 ms; beyond 300 ms only the first.
const REPAIR_DEADLINE: std::time::Duration = std::time::Duration::from_millis(500);
/// Most missing packets tracked per layer (the oldest are given up first).
const MAX_MISSING: usize = 128;
/// RTT assumed before QUIC has measured one.
const DEFAULT_RTT: std::time::Duration = std::time::Duration::from_millis(100);

/// Most tracks one link may announce (a bound on what a far node can make us hold).
const MAX_TRACKS_PER_LINK: usize = 4096;
/// Most hops an announcement may have made; further ones are dropped (a loop in a plan).
pub const MAX_HOPS: u8 = 4;

/// Which of two links between the same two nodes stays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkChoice {
    /// The link already up.
    Old,
    /// The one that just came up.
    New,
}

/// Of two links between this node (`me`) and `peer`, the one that stays: the link dialled by
/// the node with the smaller id (both sides decide the same, so they keep the same link);
/// between two links dialled from the same side, the newer one (a node dials again only once
/// its link died, so the old one is stale and this side has not noticed yet).
pub fn which_link_stays(me: &str, peer: &str, old_dialled: bool, new_dialled: bool) -> LinkChoice {
    let dialler = |dialled: bool| if dialled { me } else { peer };
    let canonical = me.min(peer);
    let old_canonical = dialler(old_dialled) == canonical;
    let new_canonical = dialler(new_dialled) == canonical;
    if old_canonical && !new_canonical {
        LinkChoice::Old
    } else {
        LinkChoice::New
    }
}

/// Bits per second per layer as the layer choice should see them: measured here, or what the
/// origin reports for layers not flowing here.
pub(super) fn layer_rates(t: &UpTrack) -> Vec<f64> {
    t.layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            // The far side's word for a layer it reports as carrying nothing is final: not
            // flowing at the origin, or held back on the link (`budget`), whatever still
            // trickles in here.
            match t.relay.as_ref().and_then(|r| r.remote_bps.get(i).copied()) {
                Some(remote) if remote <= 0.0 => 0.0,
                Some(remote) => l.bps.max(remote),
                None => l.bps,
            }
        })
        .collect()
}

fn participant_of(p: &ParticipantInfo) -> Participant {
    Participant {
        id: p.id.clone(),
        identity: p.identity.clone(),
        name: p.name.clone(),
    }
}

/// A far participant's id here: qualified with the node it is on (`seoul-1/p3`), once.
fn remote_id(peer: &str, id: &str) -> String {
    if id.contains('/') {
        id.to_owned()
    } else {
        format!("{peer}/{id}")
    }
}

fn source_name(s: TrackSource) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn source_of(s: &str) -> TrackSource {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).unwrap_or_default()
}

impl Engine {
    pub(super) fn push_out(&mut self, out: RelayOut) {
        if self.relay_out.len() >= RELAY_OUT_MAX {
            // Drop the oldest datagram; if there is none, the oldest message of all.
            if let Some(i) = self
                .relay_out
                .iter()
                .position(|o| matches!(o, RelayOut::Media { .. }))
            {
                self.relay_out.remove(i);
            } else {
                self.relay_out.pop_front();
            }
            self.metrics.relay_dropped.inc();
        }
        self.relay_out.push_back(out);
    }

    /// Sends a NACK or keyframe request as a datagram (see [`Datagram`]: it must not wait
    /// behind the ordered control stream; its sender retries it).
    pub(super) fn send_feedback(&mut self, link: LinkId, msg: Control) {
        match Datagram::feedback(&msg) {
            Some(datagram) => self.push_out(RelayOut::Media { link, datagram }),
            None => self.send_to_link(link, msg),
        }
    }

    pub(super) fn send_to_link(&mut self, link: LinkId, msg: Control) {
        self.push_out(RelayOut::Control {
            link,
            msg: Box::new(msg),
        });
    }

    /// Whether `room` is cascaded as a tree here (the operator assigned it with relay links).
    pub(super) fn is_tree(&self, room: &str) -> bool {
        self.assignments
            .get(room)
            .is_some_and(|a| !a.links.is_empty())
    }

    /// Whether `link` carries `room`: any link in a mesh, only the assignment's links in a tree.
    pub(super) fn carries(&self, link: LinkId, room: &str) -> bool {
        let Some(l) = self.links.get(&link) else {
            return false;
        };
        match self.assignments.get(room) {
            Some(a) if !a.links.is_empty() => a.links.iter().any(|t| t.peer == l.node_id),
            _ => true,
        }
    }

    /// Links that carry `room` and want it.
    pub(super) fn links_for(&self, room: &str) -> Vec<LinkId> {
        let mut v: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(id, l)| l.interests.contains(room) && self.carries(**id, room))
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Links that what came over `from` in `room` is passed on to (none in a mesh).
    pub(super) fn links_onward(&self, room: &str, from: LinkId) -> Vec<LinkId> {
        if !self.is_tree(room) {
            return Vec::new();
        }
        let mut v = self.links_for(room);
        v.retain(|l| *l != from);
        v
    }

    /// Whether `room` is open here for the tree's sake: two or more of its links want it, so
    /// this node has something to pass between them (a hub with nobody in the room).
    pub(super) fn relay_holds(&self, room: &str) -> bool {
        self.is_tree(room) && self.links_for(room).len() >= 2
    }

    /// Whether this node wants `room`'s media from `from` (`None`: from anywhere): it has
    /// participants in it (or expects a viewer), or, in a tree, another of the room's links
    /// wants it. As multicast routing joins a group: interest travels along the tree from
    /// where someone is, through any number of hubs with nobody in the room (whether or not
    /// the room is open at them), and a link is never asked for the room on its own behalf.
    pub(super) fn wanted_here(&self, room: &str, from: Option<LinkId>) -> bool {
        let local = self
            .rooms
            .get(room)
            .is_some_and(|r| !r.sessions.is_empty() || r.keep_until.is_some());
        local || (self.is_tree(room) && self.links_for(room).into_iter().any(|l| Some(l) != from))
    }

    /// Tells each link that carries `room` whether this node wants it from that link, when
    /// that changed since it was last told.
    pub(super) fn refresh_interest(&mut self, room: &str) {
        let links: Vec<LinkId> = {
            let mut v: Vec<LinkId> = self
                .links
                .keys()
                .copied()
                .filter(|l| self.carries(*l, room))
                .collect();
            v.sort_unstable();
            v
        };
        for link in links {
            let want = self.wanted_here(room, Some(link));
            let told = self.links.get(&link).is_some_and(|l| l.told.contains(room));
            if want == told {
                continue;
            }
            if let Some(l) = self.links.get_mut(&link) {
                if want {
                    l.told.insert(room.to_owned());
                } else {
                    l.told.remove(room);
                }
            }
            self.send_to_link(
                link,
                Control::Interest {
                    room: room.to_owned(),
                    on: want,
                },
            );
        }
    }

    /// Closes `room` if nobody is in it here, no viewer is expected and no tree link wants it.
    pub(super) fn close_if_idle(&mut self, room: &str, now: Instant) {
        let idle = self
            .rooms
            .get(room)
            .is_some_and(|r| r.sessions.is_empty() && r.keep_until.is_none_or(|t| t <= now));
        if idle && !self.relay_holds(room) {
            self.relay_room_closed(room, now);
            self.rooms.remove(room);
        }
        // Who wants it may have changed (a participant or a link left, the room closed).
        self.refresh_interest(room);
    }

    /// Whether `t` is announced to `link`: its own tracks to every link that carries
    /// the room, relayed ones onward in a tree only, and never back where they came from.
    pub(super) fn announced_to(&self, t: &UpTrack, link: LinkId) -> bool {
        match &t.relay {
            None => true,
            Some(r) => r.link != link && self.is_tree(&t.room),
        }
    }

    pub(super) fn count_streams(&self, link: LinkId) {
        if let Some(l) = self.links.get(&link) {
            self.metrics
                .relay
                .streams
                .with_label_values(&[&l.node_id])
                .set(l.by_handle.len() as i64);
        }
    }

    /// Next message or datagram for a link.
    pub fn poll_relay(&mut self) -> Option<RelayOut> {
        self.relay_out.pop_front()
    }

    /// Number of relay links up.
    pub fn relay_links(&self) -> usize {
        self.links.len()
    }

    /// This node's id (what relay peers know it by).
    pub fn node_id(&self) -> &str {
        &self.cfg.node_id
    }

    /// A link came up (after the hello exchange); `dialled` when this node dialled it. One
    /// link is kept per pair of nodes ([`which_link_stays`]); the other is closed (a
    /// [`RelayOut::Close`]), as is a link to a peer with this node's own id.
    pub fn relay_up(
        &mut self,
        link: LinkId,
        node_id: String,
        region: String,
        dialled: bool,
        now: Instant,
    ) {
        if node_id == self.cfg.node_id {
            tracing::warn!(peer = %node_id, "relay peer has this node's id; give every node its own --node-id");
            self.push_out(RelayOut::Close {
                link,
                reason: "peer has this node's id".into(),
            });
            return;
        }
        if let Some((&old, old_dialled)) = self
            .links
            .iter()
            .find(|(_, l)| l.node_id == node_id)
            .map(|(id, l)| (id, l.dialled))
        {
            match which_link_stays(&self.cfg.node_id, &node_id, old_dialled, dialled) {
                LinkChoice::Old => {
                    tracing::debug!(link, peer = %node_id, "duplicate relay link closed");
                    self.push_out(RelayOut::Close {
                        link,
                        reason: "duplicate link".into(),
                    });
                    return;
                }
                LinkChoice::New => {
                    self.push_out(RelayOut::Close {
                        link: old,
                        reason: "replaced by a newer link".into(),
                    });
                    self.relay_down(old, now);
                }
            }
        }
        tracing::info!(link, peer = %node_id, %region, "relay link up");
        self.links.insert(
            link,
            LinkState {
                node_id,
                region,
                dialled,
                interests: HashSet::new(),
                told: HashSet::new(),
                by_handle: HashMap::new(),
                rtt: DEFAULT_RTT,
                budget: budget::LinkBudget::default(),
            },
        );
        let mut rooms: Vec<String> = self.rooms.keys().cloned().collect();
        rooms.sort();
        for room in rooms {
            self.refresh_interest(&room);
        }
        self.metrics.relay_links.set(self.links.len() as i64);
    }

    /// A link went down: what came over it goes away here.
    pub fn relay_down(&mut self, link: LinkId, now: Instant) {
        let Some(state) = self.links.get(&link) else {
            return;
        };
        tracing::info!(link, peer = %state.node_id, "relay link down");
        for gauge in [&self.metrics.relay.streams, &self.metrics.relay.layers_held] {
            gauge.with_label_values(&[&state.node_id]).set(0);
        }
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        let mut touched = Vec::new();
        // Everything the link carried goes at once: each local participant is told in one
        // message per kind, not one per far participant and track (thousands, for a webinar's
        // far side, would overflow every outbox and drop everyone here).
        self.gone_batch = Some(BTreeMap::new());
        for room in &rooms {
            if self.forget_from_link(link, room, now) {
                touched.push(room.clone());
            }
        }
        if let Some(state) = self.links.remove(&link) {
            // Tracks of rooms no longer open here, if any.
            for key in state.by_handle.into_values() {
                self.remove_track(key, now);
            }
        }
        if let Some(batch) = self.gone_batch.take() {
            self.tell_gone(batch);
        }
        self.drop_relay_subs(|l, _| l == link);
        self.metrics.relay_links.set(self.links.len() as i64);
        // What it carried may come over another link, which held it back as a duplicate.
        for room in &touched {
            self.ask_again(room);
        }
        // A hub held rooms open for that link, or passed its interest on.
        let mut rooms: Vec<String> = self.rooms.keys().cloned().collect();
        rooms.extend(self.links.values().flat_map(|l| l.told.iter().cloned()));
        rooms.sort();
        rooms.dedup();
        for room in rooms {
            self.close_if_idle(&room, now);
        }
    }

    /// Drops what came over `link` for `room`: its tracks, and its participants (who are said
    /// to have left, here and onward). Returns whether anything went.
    fn forget_from_link(&mut self, link: LinkId, room: &str, now: Instant) -> bool {
        let tracks: Vec<(u32, TrackKey)> = self
            .links
            .get(&link)
            .map(|l| {
                l.by_handle
                    .iter()
                    .filter(|(_, k)| self.tracks.get(k).is_some_and(|t| t.room == room))
                    .map(|(h, k)| (*h, *k))
                    .collect()
            })
            .unwrap_or_default();
        for (handle, key) in &tracks {
            if let Some(l) = self.links.get_mut(&link) {
                l.by_handle.remove(handle);
            }
            self.remove_track(*key, now);
        }
        let gone: Vec<String> = self
            .rooms
            .get_mut(room)
            .map(|r| {
                let (gone, kept) = std::mem::take(&mut r.remote)
                    .into_iter()
                    .partition(|(l, _)| *l == link);
                r.remote = kept;
                gone.into_iter()
                    .map(|(_, p): (LinkId, ParticipantInfo)| p.id)
                    .collect()
            })
            .unwrap_or_default();
        let any = !tracks.is_empty() || !gone.is_empty();
        for participant_id in gone {
            for onward in self.links_onward(room, link) {
                self.send_to_link(
                    onward,
                    Control::ParticipantLeft {
                        room: room.to_owned(),
                        id: participant_id.clone(),
                    },
                );
            }
            match self.gone_batch.as_mut() {
                Some(batch) => batch
                    .entry(room.to_owned())
                    .or_default()
                    .participants
                    .push(participant_id),
                None => {
                    self.broadcast(room, 0, &ServerMessage::ParticipantLeft { participant_id });
                }
            }
        }
        any
    }

    /// Asks every link that carries `room`, and was told this node wants it, for the room
    /// again: the far node answers with all it has (`Interest { on: true }` always does), and
    /// what was held back as a duplicate of something now gone is taken this time.
    fn ask_again(&mut self, room: &str) {
        let links: Vec<LinkId> = {
            let mut v: Vec<LinkId> = self
                .links
                .iter()
                .filter(|(id, l)| l.told.contains(room) && self.carries(**id, room))
                .map(|(id, _)| *id)
                .collect();
            v.sort_unstable();
            v
        };
        for link in links {
            self.send_to_link(
                link,
                Control::Interest {
                    room: room.to_owned(),
                    on: true,
                },
            );
        }
    }

    /// The operator's plan for `room` changed which links carry it: links that no longer do
    /// lose what came over them for the room (and are told it is not wanted from them), and
    /// the links that do are asked for the room again. When a tree's hub dies, its links stay
    /// up here until QUIC gives up on them (seconds); the new plan is what moves the media to
    /// the link between the remaining nodes, at once.
    pub(super) fn relay_replanned(&mut self, room: &str, now: Instant) {
        let stale: Vec<LinkId> = {
            let mut v: Vec<LinkId> = self
                .links
                .iter()
                .filter(|(id, l)| {
                    !self.carries(**id, room)
                        && (l.told.contains(room) || l.interests.contains(room))
                })
                .map(|(id, _)| *id)
                .collect();
            v.sort_unstable();
            v
        };
        if stale.is_empty() {
            return;
        }
        for link in &stale {
            self.forget_from_link(*link, room, now);
            self.drop_relay_subs(|l, r| l == *link && r == room);
            let told = self.links.get_mut(link).is_some_and(|l| {
                l.interests.remove(room);
                l.told.remove(room)
            });
            if told {
                self.send_to_link(
                    *link,
                    Control::Interest {
                        room: room.to_owned(),
                        on: false,
                    },
                );
            }
        }
        self.ask_again(room);
    }

    /// Removes links' subscriptions to tracks (`drop(link, room)` says which) and brings the
    /// relayed tracks' own subscriptions upstream in line.
    pub(super) fn drop_relay_subs(&mut self, drop: impl Fn(LinkId, &str) -> bool) {
        let mut changed: Vec<TrackKey> = Vec::new();
        for (k, t) in self.tracks.iter_mut() {
            let before = t.relay_subs.len();
            let room = t.room.as_str();
            t.relay_subs.retain(|(l, _)| !drop(*l, room));
            if t.relay_subs.len() != before && t.relay.is_some() {
                changed.push(*k);
            }
        }
        for k in changed {
            self.sync_relay_subscriptions(k);
        }
    }

    /// A control message from a link.
    pub fn relay_control(&mut self, link: LinkId, msg: Control, now: Instant) {
        let Some(peer) = self.links.get(&link).map(|l| l.node_id.clone()) else {
            return;
        };
        match msg {
            Control::Hello { .. } => {}
            Control::Goodbye { reason } => {
                tracing::info!(link, %peer, %reason, "relay peer said goodbye");
            }
            Control::Interest { room, on } => {
                if !self.carries(link, &room) {
                    tracing::debug!(link, %peer, %room, "interest from a link outside the room's tree");
                    return;
                }
                if let Some(l) = self.links.get_mut(&link) {
                    if on {
                        l.interests.insert(room.clone());
                    } else {
                        l.interests.remove(&room);
                    }
                }
                if on {
                    if !self.rooms.contains_key(&room) && self.relay_holds(&room) {
                        // A hub: the room opens here for the tree's sake.
                        self.open_room(&room, None, now);
                    }
                    self.send_room_to(link, &room);
                    self.refresh_interest(&room);
                } else {
                    self.drop_relay_subs(|l, r| l == link && r == room);
                    self.refresh_interest(&room);
                    self.close_if_idle(&room, now);
                }
            }
            Control::TrackAnnounce {
                room,
                track,
                participant,
                origin,
                hops,
                kind,
                source,
                codec,
                clock_rate,
                channels,
                fmtp,
                extensions,
                layers,
            } => {
                let known = self
                    .links
                    .get(&link)
                    .map(|l| (l.by_handle.contains_key(&track), l.by_handle.len()));
                let Some((dup, count)) = known else { return };
                if dup || !self.rooms.contains_key(&room) || !self.carries(link, &room) {
                    return;
                }
                if origin == self.cfg.node_id || hops >= MAX_HOPS {
                    tracing::warn!(link, %peer, %origin, hops, "relayed track came round a loop; dropped");
                    return;
                }
                // A plan with a cycle brings the same track over two links: take it once.
                let owner = remote_id(&peer, &participant.id);
                let twice = self.tracks.values().any(|t| {
                    t.room == room
                        && t.owner.id == owner
                        && source_name(t.source) == source
                        && (t.kind == RtpCodecKind::Audio) == (kind == MediaKind::Audio)
                        && t.relay
                            .as_ref()
                            .is_some_and(|r| r.origin == origin && r.link != link)
                });
                if twice {
                    tracing::debug!(link, %peer, %origin, "track already relayed over another link");
                    return;
                }
                if count >= MAX_TRACKS_PER_LINK {
                    self.push_out(RelayOut::Close {
                        link,
                        reason: "too many tracks announced".into(),
                    });
                    return;
                }
                self.add_relayed_track(
                    link,
                    track,
                    (origin, hops),
                    room,
                    &peer,
                    participant,
                    kind,
                    &source,
                    RTCRtpCodec {
                        mime_type: codec,
                        clock_rate,
                        channels: u16::from(channels),
                        sdp_fmtp_line: fmtp,
                        rtcp_feedback: feedback(kind),
                    },
                    extensions,
                    layers,
                    now,
                );
            }
            Control::TrackWithdraw { track, .. } => {
                let key = self
                    .links
                    .get_mut(&link)
                    .and_then(|l| l.by_handle.remove(&track));
                if let Some(key) = key {
                    self.remove_track(key, now);
                }
                self.count_streams(link);
            }
            Control::Subscribe { track, layer } => {
                let key = TrackKey::from(track);
                let allowed = self.link_may_see(link, key, layer);
                let Some(t) = self.tracks.get_mut(&key).filter(|_| allowed) else {
                    return;
                };
                if !t.relay_subs.contains(&(link, layer)) {
                    t.relay_subs.push((link, layer));
                }
                // Passed on: the layer is subscribed upstream too (the origin starts it on a
                // keyframe), or, already flowing here, a keyframe is asked for.
                let flowing = t
                    .relay
                    .as_ref()
                    .map(|r| r.subscribed & (1u64 << u32::from(layer).min(63)) != 0);
                if flowing == Some(false) {
                    self.sync_relay_subscriptions(key);
                } else {
                    // Start the far side on a keyframe.
                    self.send_pli(key, layer, now);
                }
            }
            Control::Unsubscribe { track, layer } => {
                let key = TrackKey::from(track);
                if let Some(t) = self.tracks.get_mut(&key) {
                    t.relay_subs.retain(|s| *s != (link, layer));
                    if t.relay.is_some() {
                        self.sync_relay_subscriptions(key);
                    }
                }
            }
            Control::KeyframeRequest { track, layer } => {
                let key = TrackKey::from(track);
                if self.link_subscribed(link, key, layer) {
                    self.send_pli(key, layer, now);
                }
            }
            Control::Nack { track, layer, seqs } => {
                let key = TrackKey::from(track);
                // Only what the link subscribed to is resent (or asked a keyframe for): a
                // link cannot make this node resend, or its publishers encode keyframes,
                // for a room it does not carry.
                if !self.link_subscribed(link, key, layer) {
                    return;
                }
                let resend: Vec<Bytes> = self
                    .tracks
                    .get(&key)
                    .and_then(|t| t.layers.get(usize::from(layer))?.relayed.as_ref())
                    .map(|h| seqs.iter().filter_map(|s| h.get(*s).cloned()).collect())
                    .unwrap_or_default();
                if resend.len() < seqs.len() {
                    // Something the far node lacks is gone here too (too old, or it never
                    // reached this node): its pictures cannot be completed, a keyframe can.
                    self.send_pli(key, layer, now);
                }
                for datagram in resend {
                    if !self.repair_fits(link, datagram.len(), now) {
                        self.metrics.relay_repairs_skipped.inc();
                        continue;
                    }
                    self.metrics.relay_retransmits.inc();
                    self.push_out(RelayOut::Media { link, datagram });
                }
            }
            Control::ParticipantJoined { room, participant } => {
                let info = ParticipantInfo {
                    id: remote_id(&peer, &participant.id),
                    identity: participant.identity,
                    name: participant.name,
                    hand_raised: false,
                };
                if info.id.starts_with(&format!("{}/", self.cfg.node_id))
                    || !self.carries(link, &room)
                {
                    return;
                }
                let Some(r) = self.rooms.get_mut(&room) else {
                    return;
                };
                if r.remote.iter().any(|(_, p)| p.id == info.id) {
                    return;
                }
                r.remote.push((link, info.clone()));
                for onward in self.links_onward(&room, link) {
                    self.send_to_link(
                        onward,
                        Control::ParticipantJoined {
                            room: room.clone(),
                            participant: participant_of(&info),
                        },
                    );
                }
                self.broadcast(
                    &room,
                    0,
                    &ServerMessage::ParticipantJoined { participant: info },
                );
            }
            Control::ParticipantLeft { room, id } => {
                let id = remote_id(&peer, &id);
                let removed = self.rooms.get_mut(&room).is_some_and(|r| {
                    let before = r.remote.len();
                    r.remote.retain(|(l, p)| !(p.id == id && *l == link));
                    r.remote.len() != before
                });
                if removed {
                    for onward in self.links_onward(&room, link) {
                        self.send_to_link(
                            onward,
                            Control::ParticipantLeft {
                                room: room.clone(),
                                id: id.clone(),
                            },
                        );
                    }
                    self.broadcast(
                        &room,
                        0,
                        &ServerMessage::ParticipantLeft { participant_id: id },
                    );
                }
            }
            Control::Chat {
                room,
                from,
                text,
                at_ms,
            } => {
                if !self.rooms.contains_key(&room)
                    || text.len() > moim_wire::signal::MAX_CHAT_BYTES
                    || !self.carries(link, &room)
                {
                    return;
                }
                let from = Participant {
                    id: remote_id(&peer, &from.id),
                    ..from
                };
                for onward in self.links_onward(&room, link) {
                    self.send_to_link(
                        onward,
                        Control::Chat {
                            room: room.clone(),
                            from: from.clone(),
                            text: text.clone(),
                            at_ms,
                        },
                    );
                }
                let frame = ChatFrame {
                    from: from.id,
                    name: from.name,
                    text,
                    ts_ms: at_ms,
                };
                self.metrics.chat_messages.inc();
                self.deliver_chat(&room, &frame, now);
            }
            Control::TrackMuted { track, muted } => {
                if let Some(key) = self.by_handle(link, track) {
                    self.set_muted(key, muted);
                }
            }
            Control::LayerRates { track, bps } => {
                let Some(key) = self.by_handle(link, track) else {
                    return;
                };
                let Some(t) = self.tracks.get_mut(&key) else {
                    return;
                };
                let Some(r) = t.relay.as_mut() else { return };
                r.remote_bps = bps.into_iter().map(f64::from).collect();
                // Subscribers still waiting for their first keyframe start on a layer that
                // flows at the origin.
                let rates = layer_rates(t);
                let downs = t.downs.clone();
                let mut moved = false;
                for d in downs.iter() {
                    let Some(d) = self.downs.get_mut(d) else {
                        continue;
                    };
                    if d.forwarder.current_layer().is_none() {
                        d.selector.start_on_flowing(&rates);
                        if d.selector.chosen() != d.forwarder.target_layer() {
                            d.forwarder.set_target(d.selector.chosen());
                            moved = true;
                        }
                    }
                }
                if moved {
                    self.sync_relay_subscriptions(key);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn add_relayed_track(
        &mut self,
        link: LinkId,
        handle: u32,
        (origin, hops): (String, u8),
        room: String,
        peer: &str,
        participant: Participant,
        kind: MediaKind,
        source: &str,
        codec: RTCRtpCodec,
        extensions: Vec<(u8, String)>,
        layers: Vec<String>,
        now: Instant,
    ) {
        let key = self.next_id();
        let kind = match kind {
            MediaKind::Audio => RtpCodecKind::Audio,
            MediaKind::Video => RtpCodecKind::Video,
        };
        let audio_level_id = extensions
            .iter()
            .find(|(_, u)| u.as_str() == rtc::sdp::extmap::AUDIO_LEVEL_URI)
            .map(|(id, _)| *id);
        let video_codec = super::keyframe::VideoCodec::from_mime(&codec.mime_type);
        let mut layer_list: Vec<super::uptrack::Layer> = layers
            .into_iter()
            .map(|rid| super::uptrack::Layer::new(rid, None))
            .collect();
        if layer_list.is_empty() {
            layer_list.push(super::uptrack::Layer::new(String::new(), None));
        }
        let owner = ParticipantInfo {
            id: remote_id(peer, &participant.id),
            identity: participant.identity,
            name: participant.name,
            hand_raised: false,
        };
        self.tracks.insert(
            key,
            UpTrack {
                id: format!("t{key}"),
                session: 0,
                room: room.clone(),
                owner,
                peer: 0,
                receiver: None,
                relay: Some(RelayedTrack {
                    link,
                    handle,
                    origin,
                    hops,
                    subscribed: 0,
                    remote_bps: Vec::new(),
                    loss: HashMap::new(),
                    recent: HashMap::new(),
                }),
                relay_subs: Vec::new(),
                kind,
                source: source_of(source),
                codec: Some(codec),
                video_codec,
                layers: layer_list,
                ext_uris: extensions.into_iter().collect(),
                audio_level_id,
                downs: Vec::new(),
                keyframes: Default::default(),
                dynacast: None,
                muted: false,
            },
        );
        if let Some(l) = self.links.get_mut(&link) {
            l.by_handle.insert(handle, key);
        }
        self.count_streams(link);
        if let Some(r) = self.rooms.get_mut(&room) {
            r.tracks.push(key);
        }
        if let Some(info) = self.tracks.get(&key).and_then(|t| self.track_info(t)) {
            self.broadcast(&room, 0, &ServerMessage::TrackPublished { track: info });
        }
        let subscribers: Vec<super::SessionId> = self
            .rooms
            .get(&room)
            .map(|r| r.sessions.clone())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| {
                self.sessions
                    .get(s)
                    .is_some_and(|s| s.kind == super::session::SessionKind::WebSocket)
            })
            .collect();
        for s in subscribers {
            self.add_down_track(key, s);
            if let Err(e) = self.offer_subscriber(s, now) {
                tracing::warn!(session = s, error = %e, "cannot re-offer");
            }
        }
        self.relay_announce_to_all(key);
    }

    /// A media datagram from a link.
    pub fn relay_media(&mut self, link: LinkId, datagram: Bytes, now: Instant) {
        let d = match Datagram::decode(datagram) {
            Ok(Datagram::Media(d)) => d,
            Ok(Datagram::Feedback(msg)) => return self.relay_control(link, *msg, now),
            Ok(Datagram::Padding(_)) => return,
            Err(_) => {
                self.metrics.relay_bad_datagrams.inc();
                return;
            }
        };
        let Some(key) = self
            .links
            .get(&link)
            .and_then(|l| l.by_handle.get(&d.track))
            .copied()
        else {
            return;
        };
        let raw = d.rtp.clone();
        let mut rtp = d.rtp;
        let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut rtp) else {
            self.metrics.relay_bad_datagrams.inc();
            return;
        };
        let seq = packet.header.sequence_number;
        let arrival = self.detect_link_loss(key, d.layer, seq, now);
        tracing::trace!(layer = d.layer, seq, ?arrival, "relayed in");
        if arrival == Arrival::Copy {
            self.metrics.relay_copies_dropped.inc();
            return;
        }
        let late = arrival == Arrival::Late;
        if let Some(r) = self.tracks.get_mut(&key).and_then(|t| t.relay.as_mut()) {
            let ring = r.recent.entry(d.layer).or_default();
            if ring.len() >= RECENT_PACKETS {
                ring.pop_front();
            }
            ring.push_back((seq, raw.clone()));
        }
        let payload_len = packet.payload.len() as u64;
        self.metrics.relay_packets_in.inc();
        self.metrics.bytes_in.inc_by(payload_len);
        self.rate_window.bytes_in += payload_len;
        self.deliver(key, usize::from(d.layer), &packet, Some(&raw), now);
        if late {
            self.replay_after_late_start(key, d.layer, seq, now);
        }
    }

    /// A subscriber can start a layer on a keyframe's first packet that arrived late (repaired
    /// over the link) while the rest of that keyframe came before it and was not forwarded
    /// (the subscriber was not on the layer yet). Without them the keyframe cannot be decoded
    /// and the picture freezes until the next one; so subscribers that started at `seq` just
    /// now get the packets after it that are still held.
    pub(super) fn replay_after_late_start(
        &mut self,
        key: TrackKey,
        layer: u8,
        seq: u16,
        now: Instant,
    ) {
        let Some(t) = self.tracks.get(&key) else {
            return;
        };
        let started: Vec<super::DownKey> = t
            .downs
            .iter()
            .copied()
            .filter(|d| {
                self.downs
                    .get(d)
                    .is_some_and(|d| d.forwarder.started_at() == Some((layer, seq)))
            })
            .collect();
        if started.is_empty() {
            return;
        }
        let mut after: Vec<(u16, Bytes)> = t
            .relay
            .as_ref()
            .and_then(|r| r.recent.get(&layer))
            .map(|ring| {
                ring.iter()
                    .filter(|(s, _)| crate::sfu::forwarder::seq_after(*s, seq))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        after.sort_by_key(|(s, _)| s.wrapping_sub(seq));
        for (_, mut raw) in after {
            let Ok(packet) = rtc::rtp::Packet::unmarshal(&mut raw) else {
                continue;
            };
            for &d in &started {
                self.forward_to(d, layer, &packet, false, now);
            }
        }
    }

    /// Notes a relayed packet's sequence number: a gap is NACKed over the link at once, and
    /// packets still missing a little over a round trip later are asked for again, up to
    /// [`NACK_TRIES`] times and while a retransmission can arrive within [`REPAIR_DEADLINE`]
    /// (the origin keeps [`RELAY_HISTORY`] datagrams per layer); then a keyframe is asked for.
    /// Returns whether the packet is late (older than one already seen).
    pub(super) fn detect_link_loss(
        &mut self,
        key: TrackKey,
        layer: u8,
        seq: u16,
        now: Instant,
    ) -> Arrival {
        let Some(r) = self.tracks.get_mut(&key).and_then(|t| t.relay.as_mut()) else {
            return Arrival::InOrder;
        };
        let rtt = self.links.get(&r.link).map_or(DEFAULT_RTT, |l| l.rtt);
        let l = r.loss.entry(layer).or_default();
        let mut ask: Vec<u16> = Vec::new();
        let arrival = l.arrive(seq, now, &mut ask);
        if arrival == Arrival::Copy {
            return arrival;
        }
        let given_up = l.retry(now, rtt, &mut ask);
        if !ask.is_empty() {
            let (link, handle) = (r.link, r.handle);
            self.metrics.relay_nacks.inc();
            self.send_feedback(
                link,
                Control::Nack {
                    track: handle,
                    layer,
                    seqs: ask,
                },
            );
        }
        if given_up {
            tracing::debug!(layer, "relayed packets given up; asking for a keyframe");
            self.send_pli(key, layer, now);
        }
        arrival
    }

    /// The link's round-trip time, as QUIC measures it.
    pub fn relay_rtt(&mut self, link: LinkId, rtt: std::time::Duration) {
        if let Some(l) = self.links.get_mut(&link) {
            l.rtt = rtt;
        }
    }

    /// Sends `link` what this node has of `room`: its participants and its own tracks, and in
    /// a tree also what came over its other links.
    pub(super) fn send_room_to(&mut self, link: LinkId, room: &str) {
        let Some(r) = self.rooms.get(room) else {
            return;
        };
        let mut people: Vec<Participant> = r
            .sessions
            .iter()
            .filter_map(|s| self.sessions.get(s))
            .map(|s| participant_of(&s.participant))
            .collect();
        if self.is_tree(room) {
            people.extend(
                r.remote
                    .iter()
                    .filter(|(l, _)| *l != link)
                    .map(|(_, p)| participant_of(p)),
            );
        }
        let tracks: Vec<TrackKey> = r.tracks.clone();
        for participant in people {
            self.send_to_link(
                link,
                Control::ParticipantJoined {
                    room: room.to_owned(),
                    participant,
                },
            );
        }
        for key in tracks {
            self.announce_on(key, link);
        }
    }

    /// Announces track `key` on `link` (if it goes there), with its layer rates and, if
    /// muted, that it is.
    fn announce_on(&mut self, key: TrackKey, link: LinkId) {
        let Some(msg) = self.announcement(key, link) else {
            return;
        };
        self.send_to_link(link, msg);
        if let Some(rates) = self.rates_for(key, link) {
            self.send_to_link(link, rates);
        }
        if self.tracks.get(&key).is_some_and(|t| t.muted)
            && let Ok(track) = u32::try_from(key)
        {
            self.send_to_link(link, Control::TrackMuted { track, muted: true });
        }
    }

    /// The track `link`'s far end calls `handle`.
    fn by_handle(&self, link: LinkId, handle: u32) -> Option<TrackKey> {
        self.links
            .get(&link)
            .and_then(|l| l.by_handle.get(&handle))
            .copied()
    }

    /// Tells the links track `key` is announced on that it is muted or not (a link it came
    /// from is not one of them).
    pub(super) fn relay_muted(&mut self, key: TrackKey) {
        let Some((room, muted)) = self.tracks.get(&key).map(|t| (t.room.clone(), t.muted)) else {
            return;
        };
        let Ok(track) = u32::try_from(key) else {
            return;
        };
        for link in self.links_for(&room) {
            if self.announcement(key, link).is_some() {
                self.send_to_link(link, Control::TrackMuted { track, muted });
            }
        }
    }

    /// The announcement of a track to `link`, if it is announced there (see
    /// [`Engine::announced_to`]).
    pub(super) fn announcement(&self, key: TrackKey, link: LinkId) -> Option<Control> {
        let t = self.tracks.get(&key)?;
        if !self.announced_to(t, link) {
            return None;
        }
        let (origin, hops) = match &t.relay {
            None => (self.cfg.node_id.clone(), 0),
            Some(r) => (r.origin.clone(), r.hops.saturating_add(1)),
        };
        let codec = t.codec.as_ref()?;
        let mut extensions: Vec<(u8, String)> =
            t.ext_uris.iter().map(|(id, u)| (*id, u.clone())).collect();
        extensions.sort();
        Some(Control::TrackAnnounce {
            room: t.room.clone(),
            track: u32::try_from(key)
                .ok()
                .filter(|h| *h != FEEDBACK_HANDLE && *h != PADDING_HANDLE)?,
            participant: participant_of(&t.owner),
            origin,
            hops,
            kind: if t.kind == RtpCodecKind::Audio {
                MediaKind::Audio
            } else {
                MediaKind::Video
            },
            source: source_name(t.source),
            codec: codec.mime_type.clone(),
            clock_rate: codec.clock_rate,
            channels: u8::try_from(codec.channels).unwrap_or(2),
            fmtp: codec.sdp_fmtp_line.clone(),
            extensions,
            layers: if t.layers.len() > 1 {
                t.layers.iter().map(|l| l.rid.clone()).collect()
            } else {
                Vec::new()
            },
        })
    }

    /// Opens `room` here for a while without participants, so linked nodes send what they
    /// have of it (a WHEP viewer of a room published elsewhere).
    pub(super) fn relay_prefetch(&mut self, room: &str, now: Instant) {
        let keep = now + std::time::Duration::from_secs(10);
        if let Some(r) = self.rooms.get_mut(room) {
            r.keep_until = Some(keep);
            return;
        }
        self.open_room(room, Some(keep), now);
    }

    /// Opens `room` here with nobody in it, and asks the links that carry it for it.
    pub(super) fn open_room(&mut self, room: &str, keep_until: Option<Instant>, now: Instant) {
        self.rooms
            .insert(room.to_owned(), super::room::Room::new(keep_until));
        self.ensure_housekeeping(now);
        self.relay_room_opened(room);
    }

    /// The operator (re)assigned `room`: links its tree names are asked for it if it is open
    /// here, and a hub opens it when such a link already wants it.
    pub(super) fn relay_assigned(&mut self, room: &str, now: Instant) {
        self.relay_replanned(room, now);
        let wanted = self.relay_holds(room);
        if !self.rooms.contains_key(room) {
            if wanted {
                self.open_room(room, None, now);
            }
            return;
        }
        self.relay_room_opened(room);
    }

    /// A room opened here: the links that carry it are asked for it.
    pub(super) fn relay_room_opened(&mut self, room: &str) {
        self.refresh_interest(room);
    }

    /// The room's last participant here left: links stop sending it, its relayed tracks and
    /// far participants go.
    pub(super) fn relay_room_closed(&mut self, room: &str, now: Instant) {
        let relayed: Vec<TrackKey> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.room == room && t.relay.is_some())
            .map(|(k, _)| *k)
            .collect();
        for k in relayed {
            self.remove_track(k, now);
        }
        if let Some(r) = self.rooms.get_mut(room) {
            r.remote.clear();
        }
    }

    pub(super) fn relay_participant_joined(&mut self, room: &str, p: &ParticipantInfo) {
        for link in self.links_for(room) {
            self.send_to_link(
                link,
                Control::ParticipantJoined {
                    room: room.to_owned(),
                    participant: participant_of(p),
                },
            );
        }
    }

    pub(super) fn relay_participant_left(&mut self, room: &str, id: &str) {
        for link in self.links_for(room) {
            self.send_to_link(
                link,
                Control::ParticipantLeft {
                    room: room.to_owned(),
                    id: id.to_owned(),
                },
            );
        }
    }

    /// A track was removed: withdraw it from the links it was announced to, and forget its
    /// handle on the link it came over (relayed).
    pub(super) fn relay_track_removed(&mut self, key: TrackKey, t: &UpTrack) {
        if let Some(r) = &t.relay
            && let Some(l) = self.links.get_mut(&r.link)
        {
            l.by_handle.remove(&r.handle);
        }
        let Ok(handle) = u32::try_from(key) else {
            return;
        };
        for link in self.links_for(&t.room) {
            if self.announced_to(t, link) {
                self.send_to_link(
                    link,
                    Control::TrackWithdraw {
                        room: t.room.clone(),
                        track: handle,
                    },
                );
            }
        }
    }

    /// A track appeared (published here, or relayed in a tree): announce it to links that
    /// want its room.
    pub(super) fn relay_announce_to_all(&mut self, key: TrackKey) {
        let Some(room) = self.tracks.get(&key).map(|t| t.room.clone()) else {
            return;
        };
        for link in self.links_for(&room) {
            self.announce_on(key, link);
        }
    }

    /// What each layer of a simulcast track carries now (for a relayed track, what the layer
    /// choice here goes by: see [`layer_rates`]), as `link` may have it: layers the link's
    /// budget closes are reported as carrying nothing.
    pub(super) fn rates_for(&self, key: TrackKey, link: LinkId) -> Option<Control> {
        let t = self.tracks.get(&key)?;
        if t.layers.len() < 2 {
            return None;
        }
        let closed = self.links.get(&link).map(|l| &l.budget.closed);
        Some(Control::LayerRates {
            track: u32::try_from(key).ok()?,
            bps: layer_rates(t)
                .into_iter()
                .enumerate()
                .map(|(i, b)| {
                    let shut = u8::try_from(i)
                        .is_ok_and(|layer| closed.is_some_and(|c| c.contains(&(key, layer))));
                    if shut { 0 } else { b as u32 }
                })
                .collect(),
        })
    }

    /// Sends a packet of a local track to the links subscribed to its layer.
    /// `raw` is the packet as it arrived over a link, when it did (a hub passes it on as is
    /// rather than marshalling it again).
    pub(super) fn relay_forward(
        &mut self,
        key: TrackKey,
        layer: u8,
        packet: &rtc::rtp::Packet,
        raw: Option<&Bytes>,
    ) {
        let Some(t) = self.tracks.get(&key) else {
            return;
        };
        if t.relay_subs.is_empty() {
            return;
        }
        let Ok(handle) = u32::try_from(key) else {
            return;
        };
        let targets: Vec<LinkId> = t
            .relay_subs
            .iter()
            .filter(|(link, l)| *l == layer && !self.held_on(*link, key, layer))
            .map(|(link, _)| *link)
            .collect();
        if targets.is_empty() {
            return;
        }
        let rtp = match raw {
            Some(raw) => raw.clone(),
            None => match packet.marshal() {
                Ok(rtp) => rtp.freeze(),
                Err(_) => return,
            },
        };
        let datagram = MediaDatagram {
            track: handle,
            layer,
            rtp,
        }
        .encode();
        let seq = packet.header.sequence_number;
        // Kept for NACKs; for audio, the packet sent [`AUDIO_COPY_AFTER`] before this one goes
        // again with it.
        let copy = self.tracks.get_mut(&key).and_then(|t| {
            let audio = t.kind == RtpCodecKind::Audio;
            let ring = t
                .layers
                .get_mut(usize::from(layer))?
                .relayed
                .get_or_insert_with(|| SeqRing::new(RELAY_HISTORY));
            ring.record(seq, datagram.clone());
            audio
                .then(|| ring.get(seq.wrapping_sub(AUDIO_COPY_AFTER)).cloned())
                .flatten()
        });
        let rtp_len = (datagram.len() - crate::relay::proto::DATAGRAM_HEADER) as u64;
        for link in targets {
            self.metrics.relay_packets_out.inc();
            self.metrics.relay_rtp_bytes_out.inc_by(rtp_len);
            self.push_out(RelayOut::Media {
                link,
                datagram: datagram.clone(),
            });
            if let Some(copy) = &copy {
                self.metrics.relay_audio_copies.inc();
                self.push_out(RelayOut::Media {
                    link,
                    datagram: copy.clone(),
                });
            }
        }
    }

    /// Whether `link` may subscribe to `layer` of `key`: the track was announced to it, has
    /// that layer, and its room is one the link carries.
    fn link_may_see(&self, link: LinkId, key: TrackKey, layer: u8) -> bool {
        self.tracks.get(&key).is_some_and(|t| {
            self.announced_to(t, link)
                && usize::from(layer) < t.layers.len()
                && self.links_for(&t.room).contains(&link)
        })
    }

    /// Whether `link` subscribed to `layer` of `key` (and still may).
    fn link_subscribed(&self, link: LinkId, key: TrackKey, layer: u8) -> bool {
        self.link_may_see(link, key, layer)
            && self
                .tracks
                .get(&key)
                .is_some_and(|t| t.relay_subs.contains(&(link, layer)))
    }

    /// Asks the link `track` comes over for a keyframe of `layer` (throttled by the track's
    /// [`super::uptrack::KeyframeThrottle`], as a request to a local publisher is).
    pub(super) fn relay_keyframe_request(&mut self, track: TrackKey, layer: u8) {
        let Some(r) = self.tracks.get(&track).and_then(|t| t.relay.as_ref()) else {
            return;
        };
        // A layer not yet subscribed upstream is subscribed now (the far node starts it on a
        // keyframe): the far node ignores keyframe requests for layers it does not send here.
        if r.subscribed & (1u64 << u32::from(layer).min(63)) == 0 {
            self.sync_relay_subscriptions(track);
            return;
        }
        let (link, handle) = (r.link, r.handle);
        tracing::debug!(link, handle, layer, "relay keyframe request");
        self.send_feedback(
            link,
            Control::KeyframeRequest {
                track: handle,
                layer,
            },
        );
    }

    pub(super) fn relay_chat(&mut self, room: &str, from: ParticipantInfo, frame: &ChatFrame) {
        for link in self.links_for(room) {
            self.send_to_link(
                link,
                Control::Chat {
                    room: room.to_owned(),
                    from: participant_of(&from),
                    text: frame.text.clone(),
                    at_ms: frame.ts_ms,
                },
            );
        }
    }

    /// Subscribes a relayed track's layers someone here needs, and only those: the layers
    /// subscribers are on, moving to, or want for their tile size (the far node's dynacast
    /// reads its links' subscriptions as their demand, so a layer a tile grows into must be
    /// asked for before it can flow), and the lowest (so stepping down is instant). A track
    /// every subscriber here has paused is not subscribed at all, so its publisher may stop it.
    pub(super) fn sync_relay_subscriptions(&mut self, track: TrackKey) {
        let Some(t) = self.tracks.get(&track) else {
            return;
        };
        let Some(r) = t.relay.as_ref() else { return };
        let top = t.layers.len().saturating_sub(1).min(63) as u8;
        // Layers links take it onward on.
        let mut want: u64 = t
            .relay_subs
            .iter()
            .fold(0, |w, (_, l)| w | 1u64 << u32::from(*l).min(63));
        for d in t.downs.iter().filter_map(|d| self.downs.get(d)) {
            let layers = [
                d.forwarder.current_layer(),
                d.forwarder.target_layer(),
                d.selector.wanted().map(|w| w.min(top)),
            ];
            if layers.iter().all(Option::is_none) {
                continue;
            }
            want |= 1;
            for l in layers.into_iter().flatten() {
                want |= 1u64 << u32::from(l).min(63);
            }
        }
        let (link, handle, had) = (r.link, r.handle, r.subscribed);
        if want == had {
            return;
        }
        for layer in 0..t.layers.len().min(64) as u8 {
            let bit = 1u64 << layer;
            if want & bit != 0 && had & bit == 0 {
                self.send_to_link(
                    link,
                    Control::Subscribe {
                        track: handle,
                        layer,
                    },
                );
            } else if want & bit == 0 && had & bit != 0 {
                self.send_to_link(
                    link,
                    Control::Unsubscribe {
                        track: handle,
                        layer,
                    },
                );
            }
        }
        if let Some(r) = self.tracks.get_mut(&track).and_then(|t| t.relay.as_mut()) {
            r.subscribed = want;
            // A layer (re)subscribed starts afresh: the packets sent while it was off were
            // never meant for this node and must not be NACKed.
            r.loss.retain(|layer, _| {
                let bit = 1u64 << u32::from(*layer).min(63);
                want & bit != 0 && had & bit != 0
            });
        }
    }

    /// Once a second: layer rates of tracks to the links they are announced to, and
    /// subscriptions of relayed tracks brought in line with the subscribers' layers.
    pub(super) fn relay_housekeeping(&mut self, _now: Instant) {
        if self.links.is_empty() {
            return;
        }
        let mut rates: Vec<(LinkId, Control)> = Vec::new();
        let mut relayed: Vec<TrackKey> = Vec::new();
        for (k, t) in &self.tracks {
            if t.relay.is_some() {
                relayed.push(*k);
            }
            for link in self.links_for(&t.room) {
                if self.announced_to(t, link)
                    && let Some(r) = self.rates_for(*k, link)
                {
                    rates.push((link, r));
                }
            }
        }
        for (link, msg) in rates {
            self.send_to_link(link, msg);
        }
        for k in relayed {
            self.sync_relay_subscriptions(k);
        }
    }
}

fn feedback(kind: MediaKind) -> Vec<RTCPFeedback> {
    let fb = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    match kind {
        MediaKind::Audio => vec![fb("transport-cc", "")],
        MediaKind::Video => vec![
            fb("goog-remb", ""),
            fb("ccm", "fir"),
            fb("nack", ""),
            fb("nack", "pli"),
            fb("transport-cc", ""),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_keep_the_link_the_smaller_id_dialled() {
        // a dialled b, and b dialled a: both keep a's.
        assert_eq!(which_link_stays("a", "b", true, false), LinkChoice::Old);
        assert_eq!(which_link_stays("a", "b", false, true), LinkChoice::New);
        assert_eq!(which_link_stays("b", "a", false, true), LinkChoice::Old);
        assert_eq!(which_link_stays("b", "a", true, false), LinkChoice::New);
        // Redialled from the same side: the newer one (the old one is dead).
        assert_eq!(which_link_stays("a", "b", true, true), LinkChoice::New);
        assert_eq!(which_link_stays("a", "b", false, false), LinkChoice::New);
    }

    /// A packet lost every time is asked for while a retransmission can still arrive within
    /// the repair deadline, at most three times; then given up (a keyframe is asked for).
    #[test]
    fn a_lost_packet_is_asked_for_while_its_repair_can_arrive_in_time() {
        use std::time::Duration;
        // Returns the times (ms after the gap) it was asked for, and when it was given up.
        let asks = |rtt_ms: u64| {
            let t0 = Instant::now();
            let rtt = Duration::from_millis(rtt_ms);
            let mut l = LayerLoss::default();
            let mut ask = Vec::new();
            l.arrive(1, t0, &mut ask);
            l.arrive(3, t0, &mut ask);
            let mut at = vec![0];
            // Packets keep arriving every 5 ms; the repairs of 2 never do.
            for ms in (5..2000).step_by(5) {
                let now = t0 + Duration::from_millis(ms);
                let mut ask = Vec::new();
                l.arrive(u16::try_from(3 + ms / 5).unwrap_or(u16::MAX), now, &mut ask);
                let given_up = l.retry(now, rtt, &mut ask);
                if ask.contains(&2) {
                    at.push(ms);
                }
                if given_up {
                    return (at, ms);
                }
            }
            (at, u64::MAX)
        };
        // 80 ms: retries every 110 ms, all three in time.
        assert_eq!(asks(80), (vec![0, 110, 220], 330));
        // 180 ms: retries every 235 ms; the third would arrive 650 ms after the gap.
        assert_eq!(asks(180), (vec![0, 235], 470));
        // 400 ms: one ask.
        assert_eq!(asks(400), (vec![0], 510));
    }

    #[test]
    fn a_relayed_packet_is_passed_on_once_however_often_it_arrives() {
        let now = Instant::now();
        let mut l = LayerLoss::default();
        let mut ask = Vec::new();
        assert_eq!(l.arrive(65_534, now, &mut ask), Arrival::InOrder);
        // 65,535 and 0 lost (across the wrap): asked for.
        assert_eq!(l.arrive(1, now, &mut ask), Arrival::InOrder);
        assert_eq!(ask, vec![65_535, 0]);
        // Audio's copy of 65,534 comes 40 ms later: already passed on.
        assert_eq!(l.arrive(65_534, now, &mut ask), Arrival::Copy);
        // The copy of a lost one repairs it; its retransmission then is a copy too.
        assert_eq!(l.arrive(65_535, now, &mut ask), Arrival::Late);
        assert_eq!(l.missing.len(), 1);
        assert_eq!(l.arrive(65_535, now, &mut ask), Arrival::Copy);
        assert_eq!(l.arrive(1, now, &mut ask), Arrival::Copy);
        // Far behind (more than 128): not known, passed on as late.
        assert_eq!(l.arrive(300, now, &mut ask), Arrival::InOrder);
        assert_eq!(l.arrive(100, now, &mut ask), Arrival::Late);
        assert_eq!(l.arrive(299, now, &mut ask), Arrival::Late);
        assert_eq!(l.arrive(299, now, &mut ask), Arrival::Copy);
    }
}
