//! The Meeting reconciler's decisions: place the meeting, push the plan to its nodes, write its
//! status, for the operator and the local fabric alike (see [`super`]).
//!
//! Flow of one reconcile: the Meeting and the observed MediaNodes → [`crate::core::placement`]
//! under the ledger lock → `PUT /admin/rooms/{room}` on every node of the plan (and `DELETE` on
//! nodes it left) → Events for what changed → the status, written only when it differs. A
//! deleted Meeting's rooms are released with [`cleanup`].

use super::{ControlCtx, Next};
use crate::conditions::{Want, settle};
use crate::crd::{
    CascadeLink, MediaNode, Meeting, MeetingMode, MeetingNode, MeetingPhase, MeetingStatus,
};
use crate::error::{Error, Result};
use crate::k8s::context::Settings;
use crate::ledger::{Ledger, plan_from_status};
use crate::metrics::Metrics;
use crate::nodeapi::NodeAdmin;
use crate::placement::{Demand, Distances, Plan, ShortfallReason, place_with};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use moim_wire::admin::{RelayLink, RoomAssignment, room_of};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// The finalizer that holds a deleted Meeting until its rooms are released on its nodes.
pub const FINALIZER: &str = "media.moim.dev/release-nodes";

/// Controller name, in metrics and logs.
pub const CONTROLLER: &str = "meeting";

/// Where a meeting stands against its schedule at `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleState {
    /// Too early to place; look again at the given time.
    NotYet(Timestamp),
    /// Place it.
    Live,
    /// Past its end.
    Ended,
}

/// The schedule state of `meeting` at `now`, placing `prepare_ahead` before the start.
pub fn schedule_state(
    meeting: &Meeting,
    now: Timestamp,
    prepare_ahead: k8s_openapi::jiff::SignedDuration,
) -> ScheduleState {
    let Some(s) = &meeting.spec.schedule else {
        return ScheduleState::Live;
    };
    if now >= s.end.0 {
        return ScheduleState::Ended;
    }
    let place_at = s.start.0.checked_sub(prepare_ahead).unwrap_or(s.start.0);
    if now < place_at {
        ScheduleState::NotYet(place_at)
    } else {
        ScheduleState::Live
    }
}

/// Reconciles one Meeting on `cx`: places it (or waits for its start, or releases it at its
/// end), pushes the plan and writes the status when it changed.
pub async fn reconcile(m: &Meeting, cx: &ControlCtx<'_>) -> Result<Next> {
    let now = cx.now;
    let ns = m.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = m.name_any();
    let key = format!("{ns}/{name}");
    let room = room_of(&ns, &name);
    let old = m.status.clone().unwrap_or_default();
    let nodes = &cx.nodes;

    let (status, action) = match schedule_state(m, now, cx.settings.prepare_ahead) {
        ScheduleState::Ended => {
            let plan = cx.ledger().forget(&key).or_else(|| plan_from_status(m));
            release(
                cx.admin,
                cx.metrics,
                nodes,
                &room,
                plan.iter().flat_map(|p| p.nodes()),
            )
            .await;
            if old.phase != Some(MeetingPhase::Ended) {
                cx.cluster
                    .event(
                        m.object_ref(&()),
                        false,
                        "Ended",
                        "the meeting's schedule ended; its rooms were released".into(),
                    )
                    .await;
            }
            (ended_status(m, now), Next::OnChange)
        }
        ScheduleState::NotYet(at) => {
            let wait = now.duration_until(at).unsigned_abs();
            (
                scheduled_status(m, at, now),
                Next::After(wait.min(Duration::from_secs(300))),
            )
        }
        ScheduleState::Live => {
            let (plan, previous) = {
                let mut ledger = cx.ledger();
                let previous = ledger.plan(&key).cloned().or_else(|| plan_from_status(m));
                let t = Instant::now();
                let plan = plan_meeting(
                    &mut ledger,
                    m,
                    previous.as_ref(),
                    nodes.iter().map(AsRef::as_ref),
                    now,
                    cx.settings.stale_after,
                    &cx.settings.distances,
                );
                cx.metrics.placed(t.elapsed());
                (plan, previous)
            };
            let push_errors = enact(
                cx.admin,
                cx.metrics,
                cx.settings,
                m,
                &plan,
                previous.as_ref(),
                nodes,
            )
            .await;
            let status = running_status(m, &plan, nodes, &push_errors, now);
            if status.nodes != old.nodes && !status.nodes.is_empty() {
                info!(meeting = %key, nodes = %summary(&status.nodes), "placed");
                cx.cluster
                    .event(
                        m.object_ref(&()),
                        false,
                        "Placed",
                        format!("placed on {}", summary(&status.nodes)),
                    )
                    .await;
            }
            let placed = |s: &MeetingStatus| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == "Placed")
                    .map(|c| (c.status.clone(), c.reason.clone()))
            };
            if let Some((st, reason)) = placed(&status)
                && st == "False"
                && placed(&old) != Some((st, reason))
                && let Some(c) = status.conditions.iter().find(|c| c.type_ == "Placed")
            {
                warn!(meeting = %key, reason = %c.reason, "placed short: {}", c.message);
                cx.cluster
                    .event(m.object_ref(&()), true, "NotPlaced", c.message.clone())
                    .await;
            }
            (status, Next::After(cx.settings.meeting_resync))
        }
    };
    if status != old {
        cx.cluster.meeting_status(m, &status).await?;
    }
    Ok(action)
}

/// A deleted Meeting: its rooms are released on its nodes (best effort: a node that is gone
/// holds nothing) and its reservations forgotten.
pub async fn cleanup(m: &Meeting, cx: &ControlCtx<'_>) -> Result<Next> {
    let ns = m.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = m.name_any();
    let key = format!("{ns}/{name}");
    let plan = cx.ledger().forget(&key).or_else(|| plan_from_status(m));
    let nodes = &cx.nodes;
    let released = release(
        cx.admin,
        cx.metrics,
        nodes,
        &room_of(&ns, &name),
        plan.iter().flat_map(|p| p.nodes()),
    )
    .await;
    info!(meeting = %key, released, "deleted; rooms released");
    Ok(Next::OnChange)
}

/// Places `m` on `nodes` at `now` (nodes silent for `stale_after` are not ready), starting
/// from `previous`, and records the plan in `ledger`. Nodes outside the meeting's regions are
/// looked at too: they serve a region of the meeting that has lost its nodes (nearest first by
/// `distances`).
pub fn plan_meeting<'a>(
    ledger: &mut Ledger,
    m: &Meeting,
    previous: Option<&Plan>,
    nodes: impl IntoIterator<Item = &'a MediaNode>,
    now: Timestamp,
    stale_after: k8s_openapi::jiff::SignedDuration,
    distances: &Distances,
) -> Plan {
    let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
    let demand = Demand {
        meeting: key.clone(),
        per_region: m.spec.participants.per_region(),
    };
    let views = ledger.views(&key, nodes, now, stale_after);
    let plan = place_with(&demand, &views, previous, distances);
    ledger.record(&key, plan.clone());
    plan
}

/// Pushes `plan` to its nodes and releases the room on nodes `previous` had that `plan` has
/// not. Returns `(node, error)` for nodes that did not take their share.
pub async fn enact(
    admin: &dyn NodeAdmin,
    metrics: &Metrics,
    settings: &Settings,
    m: &Meeting,
    plan: &Plan,
    previous: Option<&Plan>,
    nodes: &[Arc<MediaNode>],
) -> Vec<(String, String)> {
    let room = room_of(&m.namespace().unwrap_or_default(), &m.name_any());
    let errors = push(admin, metrics, settings, m, &room, plan, nodes).await;
    if let Some(prev) = previous {
        let kept = plan.nodes();
        let (mut left, mut moved) = (Vec::new(), Vec::new());
        for a in prev
            .assignments
            .iter()
            .filter(|a| !kept.contains(a.node.as_str()))
        {
            // People on an evacuated node are sent to the node that took its region's share;
            // people a node served for a region that lost its nodes go home when it has one.
            let evacuated = find(nodes, &a.node).is_some_and(|n| n.spec.evacuate);
            let home = a.serves.keys().next().unwrap_or(&a.region);
            let to = plan
                .assignments
                .iter()
                .filter(|b| &b.region == home)
                .find_map(|b| {
                    find(nodes, &b.node)?
                        .status
                        .as_ref()?
                        .signalling_url
                        .clone()
                });
            match (evacuated || !a.serves.is_empty(), to) {
                (true, Some(url)) => moved.push((a.node.as_str(), url)),
                _ => left.push(a.node.as_str()),
            }
        }
        for (node, url) in moved {
            let Some(base) = find(nodes, node).and_then(|n| n.status.as_ref()?.admin_url.clone())
            else {
                continue;
            };
            match admin.move_room(&base, &room, &url).await {
                Ok(()) => info!(%room, from = %node, to = %url, "participants moved"),
                Err(e) => {
                    metrics.node_api_error("move");
                    warn!(%room, node = %node, error = %e, "move failed; releasing the room instead");
                    left.push(node);
                }
            }
        }
        release(admin, metrics, nodes, &room, left.into_iter()).await;
    }
    errors
}

fn find<'a>(nodes: &'a [Arc<MediaNode>], name: &str) -> Option<&'a MediaNode> {
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
        .map(AsRef::as_ref)
}

/// Most fallback URLs a node is given per room.
const MAX_FALLBACKS: usize = 8;

/// Where the participants of `a`'s node go if it dies: the meeting's other nodes, the nearest
/// region first, then the largest share (the meeting's hubs).
fn fallbacks(
    a: &crate::placement::Assignment,
    plan: &Plan,
    nodes: &[Arc<MediaNode>],
    distances: &Distances,
) -> Vec<String> {
    let mut others: Vec<&crate::placement::Assignment> = plan
        .assignments
        .iter()
        .filter(|b| b.node != a.node)
        .collect();
    others.sort_by_key(|b| {
        (
            distances.rank(&a.region, &b.region),
            std::cmp::Reverse(b.participants),
            b.node.clone(),
        )
    });
    let mut urls: Vec<String> = Vec::new();
    for b in others {
        if let Some(url) =
            find(nodes, &b.node).and_then(|n| n.status.as_ref()?.signalling_url.clone())
            && !urls.contains(&url)
        {
            urls.push(url);
        }
    }
    urls.truncate(MAX_FALLBACKS);
    urls
}

/// Sends each node of `plan` its share. Returns `(node, error)` for nodes that did not take it.
async fn push(
    admin: &dyn NodeAdmin,
    metrics: &Metrics,
    settings: &Settings,
    m: &Meeting,
    room: &str,
    plan: &Plan,
    nodes: &[Arc<MediaNode>],
) -> Vec<(String, String)> {
    let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
    // Every node at once: one that does not answer (a lost machine, until its `/status` reads
    // have failed) costs the admin client's timeout, not that timeout before each node after it.
    let pushes = plan.assignments.iter().map(|a| async {
        let Some(base) = find(nodes, &a.node).and_then(|n| n.status.as_ref()?.admin_url.clone())
        else {
            return Some((a.node.clone(), "has no admin address yet".to_owned()));
        };
        let links = plan
            .links
            .iter()
            .filter_map(|l| {
                let (peer, upstream) = if l.to == a.node {
                    (&l.from, true)
                } else if l.from == a.node {
                    (&l.to, false)
                } else {
                    return None;
                };
                let address =
                    find(nodes, peer).and_then(|n| n.status.as_ref()?.relay_address.clone());
                Some(RelayLink {
                    peer: peer.clone(),
                    address,
                    upstream,
                })
            })
            .collect();
        let assignment = RoomAssignment {
            meeting: key.clone(),
            generation: m.metadata.generation.unwrap_or(0),
            reserved: a.participants,
            max_participants: m.spec.max_participants,
            webinar: m.spec.mode == MeetingMode::Webinar,
            links,
            fallbacks: fallbacks(a, plan, nodes, &settings.distances),
            rejoin_url: settings.rejoin_url.clone(),
        };
        let e = admin.assign(&base, room, &assignment).await.err()?;
        metrics.node_api_error("assign");
        warn!(meeting = %key, node = %a.node, error = %e, "plan not taken");
        Some((a.node.clone(), e))
    });
    futures_util::future::join_all(pushes)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Releases `room` on `which` nodes, all at once and best effort: a node that is gone holds
/// nothing to release, and one known not to answer ([`MediaNode::silent`]) is not asked (it
/// would only time out). Returns how many nodes confirmed.
pub async fn release<'a>(
    admin: &dyn NodeAdmin,
    metrics: &Metrics,
    nodes: &[Arc<MediaNode>],
    room: &str,
    which: impl Iterator<Item = &'a str>,
) -> usize {
    let releases = which.filter_map(|name| {
        let node = find(nodes, name).filter(|n| !n.silent())?;
        let base = node.status.as_ref()?.admin_url.clone()?;
        Some(async move {
            match admin.release(&base, room).await {
                Ok(()) => true,
                Err(e) => {
                    metrics.node_api_error("release");
                    warn!(node = %name, %room, error = %e, "release failed; the node keeps the room until it restarts");
                    false
                }
            }
        })
    });
    futures_util::future::join_all(releases)
        .await
        .into_iter()
        .filter(|done| *done)
        .count()
}

/// `seoul: seoul-1 (20), frankfurt: fra-1 (8)`.
fn summary(nodes: &[MeetingNode]) -> String {
    nodes
        .iter()
        .map(|n| format!("{}: {} ({})", n.region, n.node, n.participants))
        .collect::<Vec<_>>()
        .join(", ")
}

fn generation(m: &Meeting) -> i64 {
    m.metadata.generation.unwrap_or(0)
}

fn previous_conditions(
    m: &Meeting,
) -> &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition] {
    m.status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or(&[])
}

fn ended_status(m: &Meeting, now: Timestamp) -> MeetingStatus {
    MeetingStatus {
        phase: Some(MeetingPhase::Ended),
        observed_generation: Some(generation(m)),
        conditions: settle(
            vec![
                Want::no(
                    "Placed",
                    "Ended",
                    "the meeting has ended; its nodes were released",
                ),
                Want::no("Ready", "Ended", "the meeting has ended"),
            ],
            previous_conditions(m),
            generation(m),
            now,
        ),
        ..MeetingStatus::default()
    }
}

fn scheduled_status(m: &Meeting, place_at: Timestamp, now: Timestamp) -> MeetingStatus {
    let msg = format!("nodes are chosen at {place_at}, ahead of the start");
    MeetingStatus {
        phase: Some(MeetingPhase::Scheduled),
        observed_generation: Some(generation(m)),
        conditions: settle(
            vec![
                Want::no("Placed", "NotStarted", msg),
                Want::no("Ready", "NotStarted", "the meeting has not started"),
            ],
            previous_conditions(m),
            generation(m),
            now,
        ),
        ..MeetingStatus::default()
    }
}

/// The status of a placed (or unplaceable) meeting: a pure function of the plan and the
/// nodes' reports.
pub fn running_status(
    m: &Meeting,
    plan: &Plan,
    nodes: &[Arc<MediaNode>],
    push_errors: &[(String, String)],
    now: Timestamp,
) -> MeetingStatus {
    let ns = m.namespace().unwrap_or_default();
    let key = format!("{ns}/{}", m.name_any());
    let node = |name: &str| find(nodes, name);
    let mut participants_by_region: BTreeMap<String, u32> = BTreeMap::new();
    let mut participants = 0u32;
    for a in &plan.assignments {
        let here = node(&a.node)
            .and_then(|n| n.status.as_ref()?.meetings.get(&key).copied())
            .unwrap_or(0);
        participants += here;
        *participants_by_region.entry(a.region.clone()).or_default() += here;
    }
    // Each region joins at its node with the largest share (the region's hub); a region that
    // lost its nodes joins where it is served.
    let mut join_endpoints: BTreeMap<String, String> = BTreeMap::new();
    let mut best: BTreeMap<&str, u32> = BTreeMap::new();
    for a in &plan.assignments {
        let url = node(&a.node).and_then(|n| n.status.as_ref()?.signalling_url.clone());
        let shares = std::iter::once((a.region.as_str(), a.own()))
            .chain(a.serves.iter().map(|(r, n)| (r.as_str(), *n)))
            .filter(|(_, n)| *n > 0);
        for (region, n) in shares {
            if let Some(url) = &url
                && best.get(region).is_none_or(|b| n > *b)
            {
                best.insert(region, n);
                join_endpoints.insert(region.to_owned(), url.clone());
            }
        }
    }
    let served_elsewhere: Vec<String> = plan
        .assignments
        .iter()
        .flat_map(|a| {
            a.serves.iter().map(move |(r, n)| {
                format!(
                    "region {r} has no ready node: {n} of its participants are served from {} ({})",
                    a.region, a.node
                )
            })
        })
        .collect();
    let regions_with_nodes: BTreeSet<&str> = nodes.iter().map(|n| n.spec.region.as_str()).collect();
    let known = regions_with_nodes
        .iter()
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    let mut reasons: Vec<String> = Vec::new();
    let mut reason = "Placed";
    let mut unknown_region = false;
    for s in &plan.shortfalls {
        let expected = m
            .spec
            .participants
            .per_region()
            .get(&s.region)
            .copied()
            .unwrap_or(0);
        if !regions_with_nodes.contains(s.region.as_str()) {
            unknown_region = true;
            reason = "UnknownRegion";
            reasons.push(format!(
                "no MediaNode serves region {} (regions with nodes: {})",
                s.region,
                if known.is_empty() { "none" } else { &known }
            ));
        } else if s.reason == ShortfallReason::NoNodesInRegion {
            if reason == "Placed" {
                reason = "NoReadyNodes";
            }
            reasons.push(format!(
                "region {} has no ready media node that takes new meetings",
                s.region
            ));
        } else {
            if reason == "Placed" {
                reason = "RegionFull";
            }
            reasons.push(format!(
                "region {} has room for {} of {} expected participants",
                s.region,
                expected - s.missing.min(expected),
                expected
            ));
        }
    }
    let placed_total: u32 = plan.assignments.iter().map(|a| a.participants).sum();
    let regions: BTreeSet<&str> = plan.assignments.iter().map(|a| a.region.as_str()).collect();
    let placed = if reasons.is_empty() && !served_elsewhere.is_empty() {
        Want::yes(
            "Placed",
            "ServedFromNearestRegion",
            served_elsewhere.join("; "),
        )
    } else if reasons.is_empty() {
        Want::yes(
            "Placed",
            "Placed",
            format!(
                "{placed_total} participants on {} node(s) in {} region(s)",
                plan.assignments.len(),
                regions.len()
            ),
        )
    } else {
        Want::no("Placed", reason, reasons.join("; "))
    };
    let ready = if plan.assignments.is_empty() {
        Want::no("Ready", "NotPlaced", "no node hosts the meeting yet")
    } else if !push_errors.is_empty() {
        Want::no(
            "Ready",
            "NodeUnreachable",
            push_errors
                .iter()
                .map(|(n, e)| format!("node {n} did not take the plan: {e}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    } else {
        Want::yes(
            "Ready",
            "NodesReady",
            "every node of the plan holds the meeting",
        )
    };
    let phase = if plan.assignments.is_empty() {
        if unknown_region
            && plan
                .shortfalls
                .iter()
                .all(|s| !regions_with_nodes.contains(s.region.as_str()))
        {
            MeetingPhase::Failed
        } else {
            MeetingPhase::Placing
        }
    } else {
        MeetingPhase::Running
    };
    let nodes_out: Vec<MeetingNode> = plan
        .assignments
        .iter()
        .map(|a| MeetingNode {
            region: a.region.clone(),
            node: a.node.clone(),
            participants: a.participants,
            serves: a.serves.clone(),
        })
        .collect();
    let mut per_region: BTreeMap<&str, u32> = BTreeMap::new();
    for a in &plan.assignments {
        *per_region.entry(a.region.as_str()).or_default() += 1;
    }
    MeetingStatus {
        phase: Some(phase),
        observed_generation: Some(generation(m)),
        region_summary: (!per_region.is_empty()).then(|| {
            per_region
                .iter()
                .map(|(r, n)| format!("{r}:{n}"))
                .collect::<Vec<_>>()
                .join(",")
        }),
        nodes: nodes_out,
        links: plan
            .links
            .iter()
            .map(|l| CascadeLink {
                from: l.from.clone(),
                to: l.to.clone(),
            })
            .collect(),
        join_endpoints,
        participants: (!plan.assignments.is_empty()).then_some(participants),
        participants_by_region,
        conditions: settle(
            vec![placed, ready],
            previous_conditions(m),
            generation(m),
            now,
        ),
    }
}
