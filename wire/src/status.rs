//! The `/status` document a media node serves: the load figures an operator places by.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A media node's view of itself, served as JSON at `/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct NodeStatus {
    /// The node's id (defaults to the host name).
    pub node_id: String,
    /// The region the node serves.
    pub region: String,
    /// Ready to take new rooms (false while draining).
    pub ready: bool,
    /// Draining: current rooms continue, no new rooms start.
    pub draining: bool,
    /// Stopping (SIGTERM): draining for good; `DELETE /drain` is refused.
    #[serde(default)]
    pub terminating: bool,
    /// Rooms with at least one participant.
    pub rooms: u64,
    /// Connected participants (WebSocket, WHIP and WHEP sessions).
    pub participants: u64,
    /// Tracks being received from publishers.
    pub published_tracks: u64,
    /// Streams being sent to subscribers (one per subscriber per track).
    pub forwarded_streams: u64,
    /// Media received, bits per second, averaged over the last few seconds.
    pub ingress_bps: u64,
    /// Media sent, bits per second, averaged over the last few seconds.
    pub egress_bps: u64,
    /// Process CPU use as a fraction of one core (1.0 = one core busy).
    pub cpu_cores: f64,
    /// Seconds since the process started.
    pub uptime_secs: u64,
    /// Connected participants per room (rooms with anyone in them).
    #[serde(default)]
    pub room_participants: BTreeMap<String, u64>,
    /// Rooms the operator assigned to this node, with the Meeting generation of each.
    #[serde(default)]
    pub assignments: BTreeMap<String, i64>,
}
