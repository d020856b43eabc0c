//! The selective forwarding unit: rooms, sessions, peer connections and the packet path.
//!
//! Everything here is sans-I/O. [`engine::Engine`] takes UDP datagrams, signalling requests and
//! timer ticks, each with the current `Instant`, and hands back datagrams to send and
//! signalling messages to deliver. The pieces it decides with are pure and small:
//! [`forwarder`] (layer gating, sequence and timestamp rewriting), [`layers`] (which simulcast
//! layer a subscriber gets), [`speaker`] (who is talking), [`keyframe`] (switch points),
//! [`vp8`] (picture numbering kept continuous across switches).

pub mod deliver;
pub mod engine;
pub mod forwarder;
pub mod keyframe;
pub mod layers;
pub mod send;
pub mod speaker;
mod stun;
pub mod testing;
pub mod vp8;
