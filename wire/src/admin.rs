//! What the operator tells a media node: which meetings it hosts and how.
//!
//! The operator places a meeting (see the operator's `placement` module) and pushes one
//! [`RoomAssignment`] per node with `PUT /admin/rooms/{room}`; `DELETE /admin/rooms/{room}`
//! releases it. Both need the node's admin token. The node reports what it holds back in
//! `/status` ([`crate::status::NodeStatus::assignments`] and `room_participants`).

use serde::{Deserialize, Serialize};

/// Longest room name a node accepts in the admin API, in bytes.
pub const MAX_ROOM_LEN: usize = 256;

/// Largest assignment body a node reads, in bytes.
pub const MAX_ASSIGNMENT_BYTES: usize = 64 * 1024;

/// The room a Meeting uses on its nodes: `namespace.name`. Namespaces hold no `.`, so the two
/// parts can be told apart again.
pub fn room_of(namespace: &str, name: &str) -> String {
    format!("{namespace}.{name}")
}

/// Longest reconnect URL a node passes on to its participants, in bytes.
pub const MAX_MOVE_URL_LEN: usize = 2048;

/// `POST /admin/rooms/{room}/move`: the room's share moved to another node; the node tells
/// every participant in the room to reconnect at `url` and lets the room go.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomMove {
    /// Signalling URL of the node the participants reconnect to (`http(s)://host:port`).
    pub url: String,
}

impl RoomMove {
    /// Checks the URL is one a browser may be sent to.
    pub fn validate(&self) -> Result<(), String> {
        validate_browser_url(&self.url)
    }
}

/// A node's share of one meeting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomAssignment {
    /// `namespace/name` of the Meeting.
    pub meeting: String,
    /// `metadata.generation` of the Meeting the plan was made for; a node ignores an
    /// assignment older than the one it holds.
    pub generation: i64,
    /// Participants the operator reserved on this node.
    pub reserved: u32,
    /// Most participants the node admits to the room (the node's share of the meeting's
    /// `maxParticipants`); `None` leaves the node's own room limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_participants: Option<u32>,
    /// `true` for a webinar: only tokens that grant publishing may publish (the join API
    /// mints viewer tokens without it).
    #[serde(default)]
    pub webinar: bool,
    /// Relay links of the cascade tree that touch this node.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<RelayLink>,
    /// Signalling URLs of the meeting's other nodes, nearest first: where the room's
    /// participants go if this node stops answering (see [`crate::ServerMessage::Resume`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
    /// Where a participant whose node stopped answering asks which node to join now
    /// (`POST` with its token as the bearer): the operator's rejoin API, when browsers reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejoin_url: Option<String>,
}

/// Most fallback URLs an assignment may carry.
pub const MAX_FALLBACKS: usize = 8;

/// Checks a URL is one a browser may be sent to: `http(s)://`, at most
/// [`MAX_MOVE_URL_LEN`] bytes, no whitespace or control characters.
pub fn validate_browser_url(url: &str) -> Result<(), String> {
    if url.len() > MAX_MOVE_URL_LEN {
        return Err(format!("url is longer than {MAX_MOVE_URL_LEN} bytes"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err("url must start with http:// or https://".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("url holds whitespace or control characters".into());
    }
    Ok(())
}

/// One end of a cascade link, as seen from the node that receives the assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RelayLink {
    /// The other node's MediaNode name.
    pub peer: String,
    /// The other node's QUIC relay address, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The other node is nearer the tree's root (this node dials it).
    pub upstream: bool,
}

impl RoomAssignment {
    /// Checks what a node cannot take from an assignment; the message goes back to the caller.
    pub fn validate(&self, room: &str) -> Result<(), &'static str> {
        if self.fallbacks.len() > MAX_FALLBACKS {
            return Err("at most 8 fallback URLs");
        }
        if self
            .fallbacks
            .iter()
            .chain(&self.rejoin_url)
            .any(|u| validate_browser_url(u).is_err())
        {
            return Err("fallback and rejoin URLs must be http(s) URLs of at most 2048 bytes");
        }
        if room.is_empty() || room.len() > MAX_ROOM_LEN {
            return Err("room name must be 1 to 256 bytes");
        }
        if self.meeting.is_empty() || self.meeting.len() > MAX_ROOM_LEN {
            return Err("meeting must be 1 to 256 bytes");
        }
        if self.max_participants == Some(0) {
            return Err("maxParticipants must be at least 1");
        }
        if self.links.len() > 64 {
            return Err("at most 64 relay links per room");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_round_trips_in_camel_case() {
        let a = RoomAssignment {
            meeting: "team/standup".into(),
            generation: 3,
            reserved: 12,
            max_participants: Some(40),
            webinar: false,
            links: vec![RelayLink {
                peer: "seoul-1".into(),
                address: Some("10.0.0.7:7882".into()),
                upstream: true,
            }],
            fallbacks: vec!["https://fra-1.example.com".into()],
            rejoin_url: None,
        };
        let json = serde_json::to_value(&a).expect("json");
        assert_eq!(json["maxParticipants"], 40);
        assert_eq!(json["links"][0]["upstream"], true);
        assert_eq!(
            serde_json::from_value::<RoomAssignment>(json).expect("json"),
            a
        );
        assert_eq!(room_of("team", "standup"), "team.standup");
    }

    #[test]
    fn validation_refuses_what_a_node_cannot_hold() {
        let mut a = RoomAssignment {
            meeting: "a/b".into(),
            generation: 1,
            reserved: 1,
            max_participants: Some(0),
            webinar: false,
            links: vec![],
            fallbacks: vec![],
            rejoin_url: None,
        };
        assert!(a.validate("a.b").is_err());
        a.max_participants = None;
        assert!(a.validate("a.b").is_ok());
        assert!(a.validate("").is_err());
        assert!(a.validate(&"x".repeat(300)).is_err());
        a.fallbacks = vec!["javascript:alert(1)".into()];
        assert!(
            a.validate("a.b").is_err(),
            "only http(s) URLs reach a browser"
        );
        a.fallbacks = vec!["https://a.example".into(); 9];
        assert!(a.validate("a.b").is_err());
        a.fallbacks.truncate(2);
        a.rejoin_url = Some("https://moim.example/v1/rejoin".into());
        assert!(a.validate("a.b").is_ok());
    }
}
