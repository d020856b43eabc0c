//! The custom resources, group `media.moim.dev`, version `v1alpha1`.
//!
//! What the API server can judge on its own is written here as CEL rules (`x-kubernetes-
//! validations`), so `kubectl apply` refuses a bad spec at once with the rule's message. What
//! needs the fleet (is there a node in that region? is there room?) the operator reports as a
//! condition on the Meeting's status.

// Several `printcolumn(...)` entries share `type_ = "string"`; clippy reads that as a
// duplicated attribute.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::ResourceRequirements;
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
    /// Of those, participants of other regions it takes in because their region has no ready
    /// node (by region).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub serves: BTreeMap<String, u32>,
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
    /// Move the meetings still on it to other nodes of its region now: placement takes their
    /// shares elsewhere and the node tells each participant where to reconnect. Set by the
    /// pool's autoscaler at the drain deadline; only meaningful with `drain`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub evacuate: bool,
    /// CPU and memory of the media pod (its pool's; unset: the operator's default, 2 CPUs and
    /// 2 GiB as both request and limit, which makes the pod Guaranteed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,
    /// PriorityClass of the media pod (its pool's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
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
                evacuate: false,
                resources: None,
                priority_class_name: None,
            },
        );
        n.metadata.namespace = Some(namespace.to_owned());
        n
    }

    /// Whether the node serves meetings: it reports Ready or Draining, and its `/status`
    /// answers. A read that was refused (the process is gone) counts at once; one that failed
    /// otherwise (a timeout) counts from the second in a row, so one slow answer moves nobody.
    pub fn serving(&self) -> bool {
        let Some(st) = &self.status else {
            return false;
        };
        matches!(
            st.phase,
            Some(MediaNodePhase::Ready | MediaNodePhase::Draining)
        ) && !self.silent()
    }

    /// Whether the node is known not to answer: its workload is gone, or its `/status` was
    /// refused or failed twice in a row. Calls to it would only fail or time out.
    pub fn silent(&self) -> bool {
        self.status.as_ref().is_some_and(|st| {
            st.phase == Some(MediaNodePhase::Gone)
                || st.conditions.iter().any(|c| {
                    c.type_ == "Reporting"
                        && c.status == "False"
                        && (c.reason == STATUS_REFUSED || c.reason == STATUS_UNREACHABLE)
                })
        })
    }
}

/// `Reporting=False` reason: the node's `/status` refused the connection (nothing listens
/// where it ran). The node serves nothing.
pub const STATUS_REFUSED: &str = "StatusRefused";

/// `Reporting=False` reason: the node's `/status` failed twice in a row. The node serves
/// nothing.
pub const STATUS_UNREACHABLE: &str = "StatusUnreachable";

/// `Reporting=False` reason: one `/status` read failed (not refused). The node still serves.
pub const STATUS_SLOW: &str = "StatusSlow";

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

/// Label on MediaNodes a MediaPool made, holding the pool's name.
pub const POOL_LABEL: &str = "media.moim.dev/pool";
/// Annotation on a MediaNode its pool drains: when the drain began (RFC 3339); the drain
/// deadline counts from it.
pub const DRAIN_STARTED: &str = "media.moim.dev/drain-started";

/// The media nodes of one region, scaled on media load.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "media.moim.dev",
    version = "v1alpha1",
    kind = "MediaPool",
    namespaced,
    status = "MediaPoolStatus",
    shortname = "mp",
    category = "moim",
    cel,
    doc = "An autoscaled pool of moim media nodes in one region.",
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyNodes"),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredNodes"
    ),
    printcolumn(
        name = "Draining",
        type_ = "integer",
        json_path = ".status.drainingNodes"
    ),
    printcolumn(name = "Demand", type_ = "integer", json_path = ".status.demand"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.minNodes <= self.maxNodes").message("minNodes is more than maxNodes")
)]
pub struct MediaPoolSpec {
    /// Region (`topology.kubernetes.io/region`) its nodes are pinned to. Immutable.
    #[x_kube(
        validation = Rule::new("size(self) >= 1 && size(self) <= 63").message("region must be 1 to 63 characters"),
        validation = Rule::new("self == oldSelf").message("region cannot change; create a new MediaPool")
    )]
    pub region: String,
    /// Zone its nodes must sit in, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Fewest nodes, whatever the load.
    #[serde(default = "one")]
    pub min_nodes: u32,
    /// Most nodes, whatever the load.
    #[serde(default = "ten")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxNodes must be at least 1"))]
    pub max_nodes: u32,
    /// What one node carries; the pool needs enough nodes for whichever runs out first.
    #[serde(default)]
    pub node_capacity: PoolNodeCapacity,
    /// Spare capacity kept ready for the next joins.
    #[serde(default)]
    pub headroom: Headroom,
    /// The pool shrinks only to the most nodes it wanted over this long.
    #[serde(default = "ten_minutes")]
    pub scale_down_delay_seconds: u32,
    /// Participants still on a draining node after this long are moved to other nodes.
    #[serde(default = "an_hour")]
    #[x_kube(validation = Rule::new("self >= 60").message("drainDeadlineSeconds must be at least 60"))]
    pub drain_deadline_seconds: u32,
    /// How long a new node may take to be ready (scheduling, image pull, start); the forecast
    /// looks this far ahead. Raise it when every node needs a new machine.
    #[serde(default = "a_minute")]
    pub node_startup_seconds: u32,
    /// CPU and memory of each media pod. Requests equal to limits make the pods Guaranteed:
    /// the last a node evicts under pressure, and with the CPU manager's static policy given
    /// whole cores. Unset: 2 CPUs and 2 GiB, both request and limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "resources_schema")]
    pub resources: Option<ResourceRequirements>,
    /// PriorityClass of the media pods (so the scheduler preempts batch work for them rather
    /// than leave a meeting without a node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

fn one() -> u32 {
    1
}
fn ten() -> u32 {
    10
}
fn ten_minutes() -> u32 {
    600
}
fn an_hour() -> u32 {
    3600
}
fn a_minute() -> u32 {
    60
}

/// What one node of a pool carries.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PoolNodeCapacity {
    /// Participants (also each MediaNode's `capacity`, which placement honours).
    #[serde(default = "default_capacity")]
    #[x_kube(validation = Rule::new("self >= 1").message("participants must be at least 1"))]
    pub participants: u32,
    /// Published tracks; unset is not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_tracks: Option<u32>,
    /// Egress, megabits per second; unset is not limited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress_mbps: Option<u32>,
}

impl Default for PoolNodeCapacity {
    fn default() -> Self {
        Self {
            participants: default_capacity(),
            published_tracks: None,
            egress_mbps: None,
        }
    }
}

/// Spare capacity kept ready: the larger of a number of participants and a share of demand.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Headroom {
    /// Participants.
    #[serde(default = "hundred")]
    pub participants: u32,
    /// Percent of current demand.
    #[serde(default = "ten")]
    #[x_kube(validation = Rule::new("self <= 400").message("headroom.percent is at most 400"))]
    pub percent: u32,
}

fn hundred() -> u32 {
    100
}

impl Default for Headroom {
    fn default() -> Self {
        Self {
            participants: hundred(),
            percent: ten(),
        }
    }
}

/// What the autoscaler last made of a pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct MediaPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Nodes ready and not draining.
    #[serde(default)]
    pub ready_nodes: u32,
    /// Nodes starting.
    #[serde(default)]
    pub starting_nodes: u32,
    /// Nodes draining.
    #[serde(default)]
    pub draining_nodes: u32,
    /// Nodes the pool wants (not draining).
    #[serde(default)]
    pub desired_nodes: u32,
    /// Participants now (reserved or connected, whichever is more, on every node).
    #[serde(default)]
    pub demand: u32,
    /// Participants to have room for by the time a new node would be ready.
    #[serde(default)]
    pub target: u32,
    /// Participants per minute the demand is growing by (a decimal string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_per_minute: Option<String>,
    /// Participants of scheduled meetings about to be placed.
    #[serde(default)]
    pub upcoming: u32,
    /// When the pool last created, drained or deleted a node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// `Ready` (enough ready capacity), `AtMaximum`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Every CRD, as YAML documents in a stable order (the content of `crds/`).
pub fn crds_yaml() -> Result<Vec<(&'static str, String)>, serde_yaml::Error> {
    use kube::CustomResourceExt;
    let yaml = |crd| -> Result<String, serde_yaml::Error> {
        let mut v =
            serde_json::to_value(crd).map_err(<serde_yaml::Error as serde::ser::Error>::custom)?;
        openapi_formats(&mut v);
        serde_yaml::to_string(&v)
    };
    Ok(vec![
        ("meetings.yaml", yaml(Meeting::crd())?),
        ("medianodes.yaml", yaml(MediaNode::crd())?),
        ("mediapools.yaml", yaml(MediaPool::crd())?),
    ])
}

/// schemars names Rust's unsigned integers with formats OpenAPI does not know (`uint32`),
/// which kubectl warns about on every apply ("unrecognized format"). An unsigned integer is an
/// `int64` with `minimum: 0` (schemars writes the minimum already).
fn openapi_formats(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            if let Some(f) = m.get("format").and_then(|f| f.as_str())
                && matches!(f, "uint" | "uint8" | "uint16" | "uint32" | "uint64")
            {
                m.insert("format".into(), "int64".into());
            }
            m.values_mut().for_each(openapi_formats);
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(openapi_formats),
        _ => {}
    }
}

/// The schema of a pod's `resources` as moim takes it: `requests` and `limits` of quantities
/// (`2`, `500m`, `2Gi`), without the long upstream descriptions.
fn resources_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let quantities = serde_json::json!({
        "type": "object",
        "additionalProperties": {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "x-kubernetes-int-or-string": true,
        },
    });
    schemars::json_schema!({
        "type": "object",
        "description": "CPU and memory: `requests` and `limits`, as in a pod's container.",
        "properties": {"requests": quantities, "limits": quantities},
    })
}
