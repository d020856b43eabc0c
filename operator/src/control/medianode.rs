//! The MediaNode reconciler's decisions: keep the node's workload, read the node's `/status`,
//! write the MediaNode's status, and pass a drain request on to the node — for the operator
//! (the workload is a pod) and the local fabric (a child process) alike.
//!
//! One reconcile: look at the workload → make it when the node has none and never had one
//! running (a workload that ran and is gone means the node is Gone: its rooms died with it) →
//! read `/status` over the admin API when it is reachable → write the status, only when it
//! changed. Every `node_poll` it runs again, which is how load reaches the placement.

use super::{ControlCtx, Next, Started, Workload};
use crate::conditions::{Want, settle};
use crate::crd::{MediaNode, MediaNodePhase, MediaNodeStatus, NodeLoad};
use crate::error::Result;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{Resource, ResourceExt};
use moim_wire::status::NodeStatus;
use std::collections::BTreeMap;
use tracing::{info, warn};

/// Controller name, in metrics and logs.
pub const CONTROLLER: &str = "medianode";

/// Reconciles one MediaNode on `cx`.
pub async fn reconcile(node: &MediaNode, cx: &ControlCtx<'_>) -> Result<Next> {
    let now = cx.now;
    let name = node.name_any();
    let old = node.status.clone().unwrap_or_default();
    let generation = node.metadata.generation.unwrap_or(0);
    let ever_ran = matches!(
        old.phase,
        Some(MediaNodePhase::Ready | MediaNodePhase::Draining | MediaNodePhase::Gone)
    );
    let mut status = MediaNodeStatus {
        observed_generation: Some(generation),
        capacity: Some(NodeLoad {
            participants: node.spec.capacity,
            ..NodeLoad::default()
        }),
        ..old.clone()
    };
    let mut conditions: Vec<Want> = Vec::new();

    let workload = cx.cluster.workload(node).await?;
    match workload {
        Workload::Absent if !ever_ran => match cx.cluster.start_workload(node).await? {
            Started::WaitingForAddress(what) => {
                status.phase = Some(MediaNodePhase::Starting);
                conditions.push(Want::no(
                    "Ready",
                    "WaitingForAddress",
                    format!("the media Service {what} has no external address yet"),
                ));
            }
            Started::Created => {
                info!(node = %name, region = %node.spec.region, "media workload created");
                cx.cluster
                    .event(
                        node.object_ref(&()),
                        false,
                        "PodCreated",
                        format!("created pod {name} in region {}", node.spec.region),
                    )
                    .await;
                status.phase = Some(MediaNodePhase::Starting);
                conditions.push(Want::no(
                    "Ready",
                    "PodStarting",
                    "the media pod was created and is starting",
                ));
            }
        },
        Workload::Absent | Workload::Gone => {
            if old.phase != Some(MediaNodePhase::Gone) {
                cx.cluster
                    .event(
                        node.object_ref(&()),
                        true,
                        "PodGone",
                        format!("pod {name} is gone; meetings on it are placed again"),
                    )
                    .await;
            }
            status.phase = Some(MediaNodePhase::Gone);
            status.load = None;
            status.meetings = BTreeMap::new();
            conditions.push(Want::no(
                "Ready",
                "PodGone",
                "the media pod is gone; delete this MediaNode or let its pool replace it",
            ));
        }
        Workload::Starting => {
            status.phase = Some(MediaNodePhase::Starting);
            conditions.push(Want::no(
                "Ready",
                "PodStarting",
                "the media pod has no address yet",
            ));
        }
        Workload::Running {
            admin_url,
            signalling_url,
            relay_address,
        } => {
            status.admin_url = Some(admin_url.clone());
            status.signalling_url = Some(signalling_url);
            status.relay_address = relay_address;
            report(node, &admin_url, &old, &mut status, &mut conditions, cx).await;
        }
    }
    status.conditions = settle(conditions, &old.conditions, generation, now);
    if status != old && !routine(&status, &old, now, cx.settings.report_every) {
        cx.cluster.node_status(node, &status).await?;
    }
    Ok(Next::After(cx.settings.node_poll))
}

/// A report that changes only load figures and its time, within `every` of the last one
/// written: not written (the node is read every couple of seconds to notice a death soon; its
/// load need not reach the API server as often).
fn routine(
    new: &MediaNodeStatus,
    old: &MediaNodeStatus,
    now: k8s_openapi::jiff::Timestamp,
    every: std::time::Duration,
) -> bool {
    let recent = old
        .last_report
        .as_ref()
        .is_some_and(|t| now.duration_since(t.0).unsigned_abs() < every);
    let strip = |s: &MediaNodeStatus| MediaNodeStatus {
        load: None,
        last_report: None,
        ..s.clone()
    };
    recent && strip(new) == strip(old)
}

/// Reads the node's `/status` into `status`, passing a drain request (or its withdrawal) on.
async fn report(
    node: &MediaNode,
    base: &str,
    old: &MediaNodeStatus,
    status: &mut MediaNodeStatus,
    conditions: &mut Vec<Want>,
    cx: &ControlCtx<'_>,
) {
    let name = node.name_any();
    match cx.admin.status(base).await {
        Ok(report) => {
            if node.spec.drain && !report.draining {
                match cx.admin.drain(base).await {
                    Ok(()) => {
                        cx.cluster
                            .event(
                                node.object_ref(&()),
                                false,
                                "Draining",
                                "drain requested: the node takes no new meetings".into(),
                            )
                            .await;
                    }
                    Err(e) => {
                        cx.metrics.node_api_error("drain");
                        warn!(node = %name, error = %e, "drain request failed");
                    }
                }
            }
            if !node.spec.drain && report.draining && !report.terminating {
                // Taken back by its pool: the node resumes. A node whose workload is stopping
                // (SIGTERM) reports `terminating` and is left alone; it would refuse.
                match cx.admin.undrain(base).await {
                    Ok(()) => {
                        cx.cluster
                            .event(
                                node.object_ref(&()),
                                false,
                                "Undrained",
                                "taken back into service: the node takes meetings again".into(),
                            )
                            .await;
                    }
                    Err(e) => {
                        cx.metrics.node_api_error("undrain");
                        warn!(node = %name, error = %e, "undrain refused; the node stays draining");
                    }
                }
            }
            let draining = report.draining || node.spec.drain;
            status.phase = Some(if draining {
                MediaNodePhase::Draining
            } else if report.ready {
                MediaNodePhase::Ready
            } else {
                MediaNodePhase::Starting
            });
            status.load = Some(load_of(&report));
            status.meetings = meetings_of(&report);
            status.last_report = Some(Time(cx.now));
            conditions.push(if draining {
                Want::no(
                    "Ready",
                    "Draining",
                    "draining: hosts its meetings, takes no new ones",
                )
            } else if report.ready {
                Want::yes("Ready", "NodeReady", "ready for meetings")
            } else {
                Want::no("Ready", "NodeNotReady", "the node reports it is not ready")
            });
            conditions.push(Want::yes(
                "Reporting",
                "StatusReceived",
                "the node's /status was read",
            ));
        }
        Err(e) => {
            cx.metrics.node_api_error("status");
            status.phase = Some(old.phase.unwrap_or(MediaNodePhase::Starting));
            // Refused: nothing listens where the node ran (it died); anything else may be one
            // slow answer, and counts from the second in a row (MediaNode::serving).
            let failed_before = old
                .conditions
                .iter()
                .any(|c| c.type_ == "Reporting" && c.status == "False");
            let reason = if refused(&e) {
                crate::crd::STATUS_REFUSED
            } else if failed_before {
                crate::crd::STATUS_UNREACHABLE
            } else {
                crate::crd::STATUS_SLOW
            };
            conditions.push(Want::no(
                "Ready",
                reason,
                format!("cannot read the node's /status: {e}"),
            ));
            conditions.push(Want::no(
                "Reporting",
                reason,
                format!("GET {base}/status: {e}"),
            ));
        }
    }
}

/// Whether an admin call failed because nothing accepts connections at the address.
fn refused(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("connection refused") || e.contains("no route to host")
}

/// A node's load as its MediaNode status shows it, from its `/status`.
pub fn load_of(r: &NodeStatus) -> NodeLoad {
    NodeLoad {
        participants: u32::try_from(r.participants).unwrap_or(u32::MAX),
        published_tracks: u32::try_from(r.published_tracks).unwrap_or(u32::MAX),
        forwarded_streams: u32::try_from(r.forwarded_streams).unwrap_or(u32::MAX),
        egress_bps: r.egress_bps,
        cpu_cores: Some(format!("{:.2}", r.cpu_cores)),
    }
}

/// Meetings the node hosts (`namespace/name` → participants), from its rooms: every assigned
/// room, and every room named like a Meeting's (`namespace.name`) with people in it.
pub fn meetings_of(r: &NodeStatus) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let as_meeting = |room: &str| room.split_once('.').map(|(ns, n)| format!("{ns}/{n}"));
    for room in r.assignments.keys() {
        if let Some(m) = as_meeting(room) {
            out.insert(m, 0);
        }
    }
    for (room, n) in &r.room_participants {
        if let Some(m) = as_meeting(room) {
            out.insert(m, u32::try_from(*n).unwrap_or(u32::MAX));
        }
    }
    out
}

/// A hash of what the meetings placed on `node` depend on: where it is, whether it takes
/// meetings, its addresses, the meetings it reports and their participant counts. The meeting
/// controller wakes a node's meetings only when this changes, not on every report (each
/// carries a new `lastReport` time: with 50 nodes and 1,000 meetings that was 200 needless
/// reconciles a second).
pub fn placement_relevant(node: &MediaNode) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let s = &node.spec;
    (&s.region, &s.zone, s.capacity, s.drain, s.evacuate).hash(&mut h);
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    if let Some(st) = &node.status {
        (
            st.phase.map(|p| p as u8),
            &st.admin_url,
            &st.signalling_url,
            &st.relay_address,
            &st.meetings,
        )
            .hash(&mut h);
        for c in &st.conditions {
            (&c.type_, &c.status, &c.reason).hash(&mut h);
        }
    }
    h.finish()
}
