//! The custom resources, group `media.moim.dev`, version `v1alpha1`.
//!
//! What the API server can judge on its own is written here as CEL rules (`x-kubernetes-
//! validations`), so `kubectl apply` refuses a bad spec at once with the rule's message. What
//! needs the fleet (is there a node in that region? is there room?) the operator reports as a
//! condition on the Meeting's status.

// Several `printcolumn(...)` entries share `type_ = "string"`; clippy reads that as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// API group of every moim resource.
pub const GROUP: &str = "media.moim.dev";

/// A video meeting: who is expected where, and how media may flow.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "media.moim.dev",
    version = "v1alpha1",
    kind = "Meeting",
    namespaced,
    status = "MeetingStatus",
    shortname = "mtg",
    category = "moim",
    cel,
    doc = "A video meeting placed on moim media nodes.",
    printcolumn(name = "Title", type_ = "string", json_path = ".spec.title"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Regions",
        type_ = "string",
        json_path = ".status.regionSummary"
    ),
    printcolumn(
        name = "Participants",
        type_ = "integer",
        json_path = ".status.participants"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("!has(self.maxParticipants) || !has(self.participants.total) || self.participants.total <= self.maxParticipants")
        .message("participants.total is more than maxParticipants"),
    validation = Rule::new("!has(self.maxParticipants) || !has(self.participants.perRegion) || self.participants.perRegion.all(r, self.participants.perRegion[r] <= self.maxParticipants)")
        .message("a region expects more participants than maxParticipants")
)]
pub struct MeetingSpec {
    /// What the meeting is called, shown to participants.
    #[x_kube(validation = Rule::new("size(self) >= 1 && size(self) <= 200").message("title must be 1 to 200 characters"))]
    pub title: String,

    /// `Interactive`: everyone may publish. `Webinar`: only hosts publish, everyone else
    /// watches. Cannot change once the meeting exists.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("mode cannot change once the meeting exists"))]
    pub mode: MeetingMode,

    /// Who is expected where: per region, or a total spread over a list of regions.
    pub participants: ExpectedParticipants,

    /// Most participants admitted in all; joins beyond it are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxParticipants must be at least 1"))]
    pub max_participants: Option<u32>,

    /// When the meeting runs. Without a schedule it runs from creation until deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,

    /// How media may flow.
    #[serde(default)]
    pub media: MediaPolicy,
}

/// Who may publish.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MeetingMode {
    /// Everyone may publish audio, video and screen.
    #[default]
    Interactive,
    /// Hosts publish; everyone else only watches.
    Webinar,
}

/// Expected participants: exactly one of `perRegion`, or `total` with `regions`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("has(self.perRegion) != has(self.total)")
        .message("give either perRegion, or total with regions"),
    validation = Rule::new("has(self.total) == has(self.regions)")
        .message("total and regions go together")
)]
pub struct ExpectedParticipants {
    /// Expected participants in each region, for example `{seoul: 20, frankfurt: 8}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) >= 1").message("perRegion needs at least one region"))]
    pub per_region: Option<BTreeMap<String, u32>>,

    /// Expected participants in all, spread evenly over `regions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("total must be at least 1"))]
    pub total: Option<u32>,

    /// Regions the `total` is spread over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) >= 1").message("regions needs at least one region"))]
    pub regions: Option<Vec<String>>,
}

impl ExpectedParticipants {
    /// Participants expected per region: `perRegion` as given, or `total` split evenly over
    /// `regions` (the remainder to the first regions in order).
    pub fn per_region(&self) -> BTreeMap<String, u32> {
        if let Some(m) = &self.per_region {
            return m.clone();
        }
        let (Some(total), Some(regions)) = (self.total, self.regions.as_ref()) else {
            return BTreeMap::new();
        };
        let mut out = BTreeMap::new();
        let mut unique: Vec<&String> = Vec::new();
        for r in regions {
            if !unique.contains(&r) {
                unique.push(r);
            }
        }
        if unique.is_empty() {
            return out;
        }
        let n = unique.len() as u32;
        for (i, r) in unique.into_iter().enumerate() {
            let extra = u32::from((i as u32) < total % n);
            out.insert(r.clone(), total / n + extra);
        }
        out
    }
}

/// When a meeting runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.start < self.end").message("schedule.start must be before schedule.end"))]
pub struct Schedule {
    /// Start (RFC 3339). Capacity is made ready before it.
    pub start: Time,
    /// End (RFC 3339). The meeting ends then and its nodes are released.
    pub end: Time,
}

/// How media may flow in a meeting.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MediaPolicy {
    /// Publishers send three simulcast layers (recommended above a handful of viewers).
    #[serde(default = "yes")]
    pub simulcast: bool,
    /// Highest bitrate a publisher may send per video track, kb/s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 100").message("maxBitrateKbps below 100 cannot carry video"))]
    pub max_bitrate_kbps: Option<u32>,
    /// Video codecs allowed, in order of preference; empty allows any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codecs: Vec<VideoCodec>,
}

impl Default for MediaPolicy {
    fn default() -> Self {
        Self {
            simulcast: true,
            max_bitrate_kbps: None,
            codecs: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// A video codec.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub enum VideoCodec {
    /// VP8: every browser.
    VP8,
    /// VP9.
    VP9,
    /// H.264.
    H264,
    /// AV1.
    AV1,
}

/// Where a meeting is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeetingPhase {
    /// Waiting for its start time.
    Scheduled,
    /// Being placed on nodes.
    Placing,
    /// Placed; participants can join.
    Running,
    /// Past its end, or deleted.
    Ended,
    /// Cannot be placed (see the conditions).
    Failed,
}

/// What the operator has made of a Meeting.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MeetingStatus {
    /// Phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MeetingPhase>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes hosting the meeting, with the participants reserved on each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<MeetingNode>,
    /// Relay links of the cascade tree between those nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub links: Vec<CascadeLink>,
    /// Where participants join, per region.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub join_endpoints: BTreeMap<String, String>,
    /// Participants connected, as the nodes report them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<u32>,
    /// Connected participants per region.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub participants_by_region: BTreeMap<String, u32>,
    /// Nodes per region for `kubectl get`, e.g. `frankfurt:1,seoul:2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region_summary: Option<String>,
    /// `Placed` (and why not), `Ready`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One node's share of a meeting.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MeetingNode {
    /// Region.
    pub region: String,
    /// MediaNode name.
    pub node: String,
    /// Participants reserved.
    pub participants: u32,
}

/// A relay link, from the end nearer the tree's root.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CascadeLink {
    /// Upstream MediaNode.
    pub from: String,
    /// Downstream MediaNode.
    pub to: String,
}

/// One media-node process (one pod) in a region.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "media.moim.dev",
    version = "v1alpha1",
    kind = "MediaNode",
    namespaced,
    status = "MediaNodeStatus",
    shortname = "mn",
    category = "moim",
    cel,
    doc = "A moim media node: one SFU pod pinned to a region.",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Participants",
        type_ = "integer",
        json_path = ".status.load.participants"
    ),
    printcolumn(
        name = "Capacity",
        type_ = "integer",
        json_path = ".status.capacity.participants"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MediaNodeSpec {
    /// Region (`topology.kubernetes.io/region`); the pod is pinned to it. Immutable.
    #[x_kube(
        validation = Rule::new("size(self) >= 1 && size(self) <= 63").message("region must be 1 to 63 characters"),
        validation = Rule::new("self == oldSelf").message("region cannot change; create a new MediaNode")
    )]
    pub region: String,
    /// Zone (`topology.kubernetes.io/zone`), if the node must sit in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// The pool (autoscaling group) the node belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Participants the node may hold; the operator places no more on it.
    #[serde(default = "default_capacity")]
    #[x_kube(validation = Rule::new("self >= 1").message("capacity must be at least 1"))]
    pub capacity: u32,
    /// Ask the node to drain: it takes no new meetings, and is removed once empty.
    #[serde(default)]
    pub drain: bool,
}

impl MediaNode {
    /// A MediaNode named `name` in `namespace` serving `region` with room for `capacity`
    /// participants (no zone, no pool, not draining).
    pub fn in_region(name: &str, namespace: &str, region: &str, capacity: u32) -> Self {
        let mut n = Self::new(
            name,
            MediaNodeSpec {
                region: region.to_owned(),
                zone: None,
                pool: None,
                capacity,
                drain: false,
            },
        );
        n.metadata.namespace = Some(namespace.to_owned());
        n
    }
}

fn default_capacity() -> u32 {
    500
}

/// Where a media node is in its life.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaNodePhase {
    /// Pod starting; not yet ready.
    Starting,
    /// Ready for meetings.
    Ready,
    /// Takes no new meetings; hosts what it has.
    Draining,
    /// The pod is gone.
    Gone,
}

/// What the operator last saw of a media node.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MediaNodeStatus {
    /// Phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<MediaNodePhase>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// URL browsers join at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signalling_url: Option<String>,
    /// QUIC relay address other nodes connect to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_address: Option<String>,
    /// Capacity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<NodeLoad>,
    /// Current load, from the node's `/status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load: Option<NodeLoad>,
    /// Meetings (`namespace/name`) the node hosts, with the participants connected to each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meetings: BTreeMap<String, u32>,
    /// Base URL of the node's admin API (`/status`, `/admin/rooms`), as the operator reaches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_url: Option<String>,
    /// When the node last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_report: Option<Time>,
    /// `Ready`, `Reporting`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Load figures of a node (or its capacity in the same units).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeLoad {
    /// Participants.
    pub participants: u32,
    /// Published tracks.
    #[serde(default)]
    pub published_tracks: u32,
    /// Streams forwarded to subscribers.
    #[serde(default)]
    pub forwarded_streams: u32,
    /// Egress, bits per second.
    #[serde(default)]
    pub egress_bps: u64,
    /// CPU in use, cores (as a decimal string, e.g. `"0.42"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_cores: Option<String>,
}

/// Every CRD, as YAML documents in a stable order (the content of `crds/`).
pub fn crds_yaml() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    use kube::CustomResourceExt;
    Ok(vec![
        ("meetings.yaml", serde_yaml::to_string(&Meeting::crd())?),
        ("medianodes.yaml", serde_yaml::to_string(&MediaNode::crd())?),
    ])
}
