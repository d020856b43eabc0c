//! The join API's decision: given a Meeting, the fleet, and who wants to join from where,
//! which node they should connect to and what their token grants. Pure; the HTTP handler in
//! [`crate::api`] reads the caches, calls [`choose`], and signs the token.

use crate::core::regions::Distances;
use crate::crd::{MediaNode, MediaNodePhase, Meeting, MeetingMode, MeetingPhase};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use moim_wire::JoinClaims;
use moim_wire::admin::room_of;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Longest identity or display name accepted.
pub const MAX_NAME_LEN: usize = 128;

/// `POST /v1/join` body.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JoinRequest {
    /// Namespace of the Meeting (default: `default`).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Meeting name.
    pub meeting: String,
    /// Stable identity of the participant (your user id).
    pub identity: String,
    /// Display name (default: the identity).
    #[serde(default)]
    pub name: String,
    /// What the participant may do.
    #[serde(default)]
    pub role: JoinRole,
    /// Region the participant is nearest to (from your geo-IP or the user's choice).
    #[serde(default)]
    pub region: Option<String>,
}

/// What a participant may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum JoinRole {
    /// Publishes in any meeting.
    Host,
    /// Publishes in an interactive meeting, watches a webinar.
    #[default]
    Participant,
    /// Only watches.
    Viewer,
}

/// `POST /v1/join` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinResponse {
    /// The node's base URL: open `{url}/?room={room}&token={token}` or use WHIP/WHEP there.
    pub url: String,
    /// Room on the node.
    pub room: String,
    /// Join token (HS256 JWT) for that node.
    pub token: String,
    /// MediaNode name.
    pub node: String,
    /// Region of the node.
    pub region: String,
    /// Token expiry, seconds since the Unix epoch.
    pub expires_at: u64,
    /// Whether the token allows publishing.
    pub can_publish: bool,
    /// TURN servers with short-lived credentials, for `RTCPeerConnection`'s `iceServers`
    /// (absent when the operator has no TURN servers).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ice_servers: Vec<crate::turn::IceServer>,
}

/// Why a join was refused; each has an HTTP status and a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    /// The body is not a join request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// No or wrong API key.
    #[error("unauthorized: a valid API key is required (Authorization: Bearer <key>)")]
    Unauthorized,
    /// No such Meeting.
    #[error("meeting {0} does not exist")]
    UnknownMeeting(String),
    /// The meeting is over.
    #[error("meeting {0} has ended")]
    Ended(String),
    /// The meeting's schedule has not begun.
    #[error("meeting {0} starts at {1}")]
    NotStarted(String, String),
    /// Not placed yet (or cannot be: see its conditions).
    #[error("meeting {0} is not placed on any node yet; retry in a few seconds")]
    NotPlaced(String),
    /// `maxParticipants` reached.
    #[error("meeting {0} is full ({1} participants)")]
    Full(String, u32),
    /// Every node of the meeting is full or down.
    #[error("no node of meeting {0} has room right now; retry in a few seconds")]
    NoNode(String),
    /// The operator is not serving joins (not the leader, or caches not synced).
    #[error("not ready to serve joins")]
    Unavailable,
}

impl JoinError {
    /// HTTP status.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::BadRequest(_) => 400,
            Self::Unauthorized => 401,
            Self::UnknownMeeting(_) => 404,
            Self::Ended(_) => 410,
            Self::NotStarted(..) | Self::Full(..) => 409,
            Self::NotPlaced(_) | Self::NoNode(_) | Self::Unavailable => 503,
        }
    }

    /// Stable snake_case code (also the metrics outcome).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest(_) => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::UnknownMeeting(_) => "unknown_meeting",
            Self::Ended(_) => "meeting_ended",
            Self::NotStarted(..) => "not_started",
            Self::NotPlaced(_) => "not_placed",
            Self::Full(..) => "meeting_full",
            Self::NoNode(_) => "no_node_available",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The node a participant is sent to, and the claims of their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinChoice {
    /// MediaNode name.
    pub node: String,
    /// Its region.
    pub region: String,
    /// Its signalling URL.
    pub url: String,
    /// Claims to sign.
    pub claims: JoinClaims,
}

/// Checks a request's fields before anything is looked up.
pub fn validate(req: &JoinRequest) -> Result<(), JoinError> {
    let bad = |m: &str| Err(JoinError::BadRequest(m.to_owned()));
    if req.meeting.is_empty() || req.meeting.len() > 253 {
        return bad("meeting must be a Meeting name (1 to 253 characters)");
    }
    if req.identity.is_empty() || req.identity.len() > MAX_NAME_LEN {
        return bad("identity must be 1 to 128 characters");
    }
    if req.name.len() > MAX_NAME_LEN {
        return bad("name must be at most 128 characters");
    }
    if req.identity.chars().any(char::is_control) || req.name.chars().any(char::is_control) {
        return bad("identity and name may not hold control characters");
    }
    Ok(())
}

/// Chooses a node of `meeting` for `req` at `now` (Unix seconds `now_unix` for the token,
/// valid `ttl_secs`).
///
/// The region hint is honoured when the meeting has a node there (or one serving that region
/// while it has none) with room; otherwise the participant goes to the nearest region by
/// `distances`, then the meeting's largest region (the root of its cascade tree). Within a
/// region, a node that is not draining comes first, then the one with the most free room.
/// Nodes that do not serve ([`MediaNode::serving`]: down, or their `/status` failing) and, when
/// there is another, those in `avoid` (signalling URLs the participant could not reach) are
/// never chosen.
pub fn choose(
    meeting: &Meeting,
    nodes: &[Arc<MediaNode>],
    req: &JoinRequest,
    now: Timestamp,
    ttl_secs: u64,
    distances: &Distances,
    avoid: &[String],
) -> Result<JoinChoice, JoinError> {
    let ns = meeting.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", meeting.name_any());
    let status = meeting.status.clone().unwrap_or_default();
    if meeting.metadata.deletion_timestamp.is_some()
        || status.phase == Some(MeetingPhase::Ended)
        || meeting
            .spec
            .schedule
            .as_ref()
            .is_some_and(|s| now >= s.end.0)
    {
        return Err(JoinError::Ended(key));
    }
    if status.phase == Some(MeetingPhase::Scheduled)
        && let Some(s) = &meeting.spec.schedule
    {
        return Err(JoinError::NotStarted(key, s.start.0.to_string()));
    }
    if status.nodes.is_empty() {
        return Err(JoinError::NotPlaced(key));
    }
    if let (Some(max), Some(now_in)) = (meeting.spec.max_participants, status.participants)
        && now_in >= max
    {
        return Err(JoinError::Full(key, max));
    }
    let expected = meeting.spec.participants.per_region();
    let root = expected
        .iter()
        .filter(|(r, _)| status.nodes.iter().any(|n| &&n.region == r))
        .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
        .map(|(r, _)| r.clone());
    // The meeting's nodes that serve and have room, ranked: serving the hinted region, nearest
    // it, in the root region, not draining, most free room; ties go to the first name.
    type Rank = (
        bool,
        bool,
        std::cmp::Reverse<u64>,
        bool,
        bool,
        u32,
        std::cmp::Reverse<String>,
    );
    let mut best: Option<(Rank, &Arc<MediaNode>, &str)> = None;
    for share in &status.nodes {
        let Some(node) = nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(share.node.as_str()))
        else {
            continue;
        };
        let Some(st) = node.status.as_ref() else {
            continue;
        };
        let load = st.load.as_ref().map_or(0, |l| l.participants);
        let free = node.spec.capacity.saturating_sub(load);
        let Some(url) = st.signalling_url.as_ref() else {
            continue;
        };
        if !node.serving() || free == 0 {
            continue;
        }
        let hint = req.region.as_deref();
        let rank: Rank = (
            !avoid.contains(url),
            hint.is_some_and(|h| h == share.region || share.serves.contains_key(h)),
            std::cmp::Reverse(hint.map_or(0, |h| distances.rank(h, &share.region))),
            root.as_deref() == Some(share.region.as_str()),
            st.phase == Some(MediaNodePhase::Ready) && !node.spec.drain,
            free,
            std::cmp::Reverse(share.node.clone()),
        );
        if best.as_ref().is_none_or(|(b, _, _)| rank > *b) {
            best = Some((rank, node, share.region.as_str()));
        }
    }
    let Some((_, node, region)) = best else {
        return Err(JoinError::NoNode(key));
    };
    let can_publish = match req.role {
        JoinRole::Host => true,
        JoinRole::Participant => meeting.spec.mode == MeetingMode::Interactive,
        JoinRole::Viewer => false,
    };
    let now_unix = u64::try_from(now.as_second()).unwrap_or(0);
    Ok(JoinChoice {
        node: node.name_any(),
        region: region.to_owned(),
        url: node
            .status
            .as_ref()
            .and_then(|s| s.signalling_url.clone())
            .unwrap_or_default(),
        claims: JoinClaims {
            identity: req.identity.clone(),
            room: room_of(&ns, &meeting.name_any()),
            name: req.name.clone(),
            can_publish,
            can_subscribe: true,
            // Viewers (a webinar's audience) watch; hosts and participants talk and chat.
            can_chat: Some(can_publish),
            exp: now_unix + ttl_secs,
            nbf: None,
        },
    })
}
