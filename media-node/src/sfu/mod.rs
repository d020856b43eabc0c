//! The selective forwarding unit: rooms, sessions, peer connections and the packet path.
//!
//! Everything here is sans-I/O. [`engine::Engine`] takes UDP datagrams, signalling requests,
//! relay-link messages and timer ticks, each with the current `Instant`, and hands back
//! datagrams to send, signalling messages and relay messages. It is a front that keeps the id
//! maps, the timer queue and the output queues, and dispatches to parts that own their state:
//!
//! - [`peer`]: a peer connection (a publish or subscribe leg): its interceptors, addresses,
//!   the subscriber's reports, the send path for media the engine builds itself;
//! - [`session`], [`room`]: a participant here, and a room's members, tracks and speakers;
//! - [`uptrack`]: a published (or relayed) track: layers, rates, keyframe throttle, and what
//!   crossed relay links; [`downtrack`]: that track as one subscriber receives it (forwarding,
//!   NACK answers, sender reports);
//! - [`allocate`]: the bandwidth split between a subscriber's streams; [`dynacast`]: which
//!   layers publishers need to send at all; [`last_n`]: which publishers' video a subscriber
//!   wants when it asked for the N most recent speakers;
//! - [`cascade`]: relay links to other nodes (interest, announcements, hops, loss repair);
//! - pure helpers: [`forwarder`] (layer gating, sequence and timestamp rewriting), [`layers`]
//!   (which simulcast layer a subscriber gets), [`speaker`] (who is talking), [`keyframe`]
//!   (switch points), [`vp8`] (picture numbering kept continuous across switches), [`send`]
//!   (RTP marshalling, what was sent);
//! - [`testing`]: the fake-time harness (N engines, in-memory clients, relay links).

pub mod allocate;
pub mod cascade;
pub mod deliver;
pub mod downtrack;
pub mod dynacast;
pub mod engine;
pub mod forwarder;
pub mod keyframe;
pub mod last_n;
pub mod layers;
pub mod peer;
pub mod room;
pub mod send;
pub mod session;
pub mod speaker;
pub mod stun;
pub mod testing;
pub mod uptrack;
pub mod vp8;

/// Identifies a session (a WebSocket participant, a WHIP publisher or a WHEP viewer).
pub type SessionId = u64;
/// Identifies a peer connection.
pub type PeerId = u64;
/// Identifies an up-track (a published or relayed track).
pub type TrackKey = u64;
/// Identifies a down-track (an up-track as one subscriber receives it).
pub type DownKey = u64;
