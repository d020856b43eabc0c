//! Cascading between media nodes over QUIC.
//!
//! One QUIC connection per pair of nodes carries one control stream (membership, track
//! announcements, subscriptions, keyframe requests, NACKs, participant and chat events) and
//! media as datagrams. [`proto`] is the wire codec; the link tasks and the engine's side of
//! relayed tracks build on it.

pub mod congestion;
pub mod fragment;
pub mod link;
pub mod mesh;
pub mod probe;
pub mod proto;
pub mod testing;
pub mod tls;
