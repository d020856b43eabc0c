//! The selective forwarding unit: rooms, sessions, peer connections and the packet path.
//!
//! Everything here is sans-I/O. [`engine::Engine`] takes UDP datagrams, signalling requests and
//! timer ticks, each with the current `Instant`, and hands back datagrams to send and
//! signalling messages to deliver. The pieces it decides with are pure and small:
//! [`forwarder`] (layer gating, sequence and timestamp rewriting), [`layers`] (which simulcast
//! layer a subscriber gets), [`speaker`] (who is talking), [`keyframe`] (switch points),
//! [`vp8`] (picture numbering kept continuous across switches).

pub mod cascade;
pub mod deliver;
pub mod downtrack;
pub mod engine;
pub mod forwarder;
pub mod keyframe;
pub mod layers;
pub mod peer;
pub mod room;
pub mod send;
pub mod session;
pub mod speaker;
mod stun;
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
