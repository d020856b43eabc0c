//! The MediaPool reconciler's decisions, for the operator and the local fabric alike: the
//! autoscaler's I/O. It reads the pool's MediaNodes, the
//! reservations and the scheduled Meetings, asks [`crate::autoscale::decide`] what to do, and
//! applies it: new MediaNodes (owned by the pool, so deleting the pool deletes them), `drain`
//! and `evacuate` on existing ones, deletion of empty drained ones. Then the pool's status.
//!
//! Every write is the whole MediaNode (a server-side apply under the operator's field manager
//! in Kubernetes), so the pool owns every field it sets and clears the ones it stops setting
//! (the drain-start annotation when a node is taken back).

use super::{ControlCtx, Next};
use crate::autoscale::{
    self, NodeCapacity, NodeState, NodeUsage, PoolNode, PoolPolicy, PoolSnapshot, ScaleDecision,
    Upcoming,
};
use crate::conditions::{Want, settle};
use crate::control::meeting::{ScheduleState, schedule_state};
use crate::crd::{
    DRAIN_STARTED, MediaNode, MediaNodePhase, MediaNodeSpec, MediaPool, MediaPoolStatus, Meeting,
    POOL_LABEL,
};
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{OwnerReference, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Resource, ResourceExt};
use rand::Rng;
use std::collections::BTreeMap;
use tracing::info;

/// Controller name, in metrics and logs.
pub const CONTROLLER: &str = "mediapool";

/// `namespace/name` of a pool, its key in [`ControlCtx::pools`] and in metrics.
pub fn key(p: &MediaPool) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}

/// The pool's settings as the autoscaler takes them.
pub fn policy_of(pool: &MediaPool, interval: std::time::Duration) -> PoolPolicy {
    let s = &pool.spec;
    PoolPolicy {
        min_nodes: s.min_nodes,
        max_nodes: s.max_nodes,
        capacity: NodeCapacity {
            participants: s.node_capacity.participants,
            published_tracks: s.node_capacity.published_tracks.unwrap_or(0),
            egress_bps: s
                .node_capacity
                .egress_mbps
                .map_or(0, |m| u64::from(m) * 1_000_000),
        },
        headroom_participants: s.headroom.participants,
        headroom_percent: s.headroom.percent,
        scale_down_delay: SignedDuration::from_secs(i64::from(s.scale_down_delay_seconds)),
        drain_deadline: SignedDuration::from_secs(i64::from(s.drain_deadline_seconds)),
        node_startup: SignedDuration::from_secs(i64::from(s.node_startup_seconds)),
        interval: SignedDuration::try_from(interval).unwrap_or(SignedDuration::from_secs(15)),
    }
}

/// True when `node` belongs to `pool`: same namespace, and its `spec.pool` names the pool.
pub fn is_member(pool: &MediaPool, node: &MediaNode) -> bool {
    node.namespace() == pool.namespace() && node.spec.pool.as_deref() == Some(&pool.name_any())
}

/// How the autoscaler sees `node` at `now`.
pub fn pool_node(
    node: &MediaNode,
    ledger: &Ledger,
    now: Timestamp,
    stale_after: SignedDuration,
) -> PoolNode {
    let name = node.name_any();
    let status = node.status.as_ref();
    let phase = status.and_then(|s| s.phase);
    let fresh = status
        .and_then(|s| s.last_report.as_ref())
        .is_some_and(|t| now.duration_since(t.0) <= stale_after);
    let reports_draining = phase == Some(MediaNodePhase::Draining);
    let state = match phase {
        None | Some(MediaNodePhase::Starting) => NodeState::Starting,
        Some(MediaNodePhase::Gone) => NodeState::Lost,
        Some(_) if !fresh => NodeState::Lost,
        // Draining without being asked: its pod is shutting down.
        Some(MediaNodePhase::Draining) if !node.spec.drain => NodeState::Terminating,
        Some(_) => NodeState::Ready,
    };
    let load = status.and_then(|s| s.load.as_ref());
    // A node whose pod is gone holds nobody (its rooms died with it and were placed again):
    // it is treated as drained, so the pool deletes it and replaces it if needed.
    let gone = phase == Some(MediaNodePhase::Gone);
    PoolNode {
        state,
        draining: node.spec.drain || reports_draining || gone,
        drain_started: node
            .annotations()
            .get(DRAIN_STARTED)
            .and_then(|t| t.parse::<Timestamp>().ok())
            .filter(|_| node.spec.drain),
        created: node
            .metadata
            .creation_timestamp
            .as_ref()
            .map_or(now, |t| t.0),
        usage: NodeUsage {
            participants: load.map_or(0, |l| l.participants),
            published_tracks: load.map_or(0, |l| l.published_tracks),
            egress_bps: load.map_or(0, |l| l.egress_bps),
        },
        reserved: ledger.reserved_on(&name),
        name,
    }
}

/// The pool as the autoscaler sees it: its nodes, the scheduled meetings in its region that
/// are not placed yet, and what live meetings could not place there.
pub fn snapshot_of<'a>(
    pool: &MediaPool,
    nodes: impl IntoIterator<Item = &'a MediaNode>,
    meetings: impl IntoIterator<Item = &'a Meeting>,
    ledger: &Ledger,
    now: Timestamp,
    stale_after: SignedDuration,
    prepare_ahead: SignedDuration,
) -> PoolSnapshot {
    let region = &pool.spec.region;
    let members: Vec<PoolNode> = nodes
        .into_iter()
        .filter(|n| is_member(pool, n))
        .map(|n| pool_node(n, ledger, now, stale_after))
        .collect();
    let mut upcoming = Vec::new();
    let (mut unplaced, mut scheduled_reserved) = (0u32, 0u32);
    for m in meetings {
        let Some(&want) = m.spec.participants.per_region().get(region) else {
            continue;
        };
        let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
        let placed = ledger.plan(&key).map_or(0, |p| {
            p.assignments
                .iter()
                .filter(|a| &a.region == region && members.iter().any(|n| n.name == a.node))
                .map(|a| a.participants)
                .sum::<u32>()
        });
        match schedule_state(m, now, prepare_ahead) {
            ScheduleState::NotYet(place_at) => upcoming.push(Upcoming {
                place_at,
                participants: want,
            }),
            ScheduleState::Live => {
                unplaced = unplaced.saturating_add(want.saturating_sub(placed));
                if m.spec.schedule.is_some() {
                    scheduled_reserved = scheduled_reserved.saturating_add(placed);
                }
            }
            ScheduleState::Ended => {}
        }
    }
    PoolSnapshot {
        now,
        nodes: members,
        upcoming,
        unplaced,
        scheduled_reserved,
    }
}

/// The MediaNode object the pool applies for `name` (always whole: server-side apply).
pub fn node_object(
    pool: &MediaPool,
    name: &str,
    drain: Option<Timestamp>,
    evacuate: bool,
) -> MediaNode {
    let mut node = MediaNode::new(
        name,
        MediaNodeSpec {
            region: pool.spec.region.clone(),
            zone: pool.spec.zone.clone(),
            pool: Some(pool.name_any()),
            capacity: pool.spec.node_capacity.participants,
            drain: drain.is_some(),
            evacuate: evacuate && drain.is_some(),
            resources: pool.spec.resources.clone(),
            priority_class_name: pool.spec.priority_class_name.clone(),
        },
    );
    node.metadata.namespace = pool.namespace();
    node.metadata.labels = Some(BTreeMap::from([
        (POOL_LABEL.to_owned(), pool.name_any()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "moim-operator".to_owned(),
        ),
    ]));
    if let Some(t) = drain {
        node.metadata.annotations =
            Some(BTreeMap::from([(DRAIN_STARTED.to_owned(), t.to_string())]));
    }
    node.metadata.owner_references = Some(vec![OwnerReference {
        api_version: MediaPool::api_version(&()).into_owned(),
        kind: MediaPool::kind(&()).into_owned(),
        name: pool.name_any(),
        uid: pool.metadata.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }]);
    node
}

/// A new node name: the pool's name and five random characters, as a ReplicaSet names pods.
pub fn new_name(pool: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{pool}-{suffix}")
}

/// Reconciles one MediaPool on `cx`: what the autoscaler decides is applied to the pool's
/// MediaNodes, then the pool's status is written.
pub async fn reconcile(pool: &MediaPool, cx: &ControlCtx<'_>) -> Result<Next> {
    let now = cx.now;
    let ns = pool.namespace().ok_or(Error::MissingField("namespace"))?;
    let pool_key = key(pool);
    let policy = policy_of(pool, cx.settings.pool_interval);
    let nodes = &cx.nodes;
    let meetings = &cx.meetings;
    let snap = snapshot_of(
        pool,
        nodes.iter().map(AsRef::as_ref),
        meetings.iter().map(AsRef::as_ref),
        &cx.ledger(),
        now,
        cx.settings.stale_after,
        cx.settings.prepare_ahead,
    );
    let decision = {
        let mut memories = cx.pools.lock().unwrap_or_else(|e| e.into_inner());
        autoscale::decide(
            &policy,
            &snap,
            memories.entry(pool_key.clone()).or_default(),
        )
    };

    let node_of = |n: &str| {
        nodes
            .iter()
            .find(|x| x.name_any() == n && is_member(pool, x))
    };
    for _ in 0..decision.create {
        let node_name = cx.cluster.new_node_name(pool);
        let obj = node_object(pool, &node_name, None, false);
        cx.cluster.apply_node(&obj).await?;
        info!(pool = %pool_key, node = %node_name, "media node created");
    }
    for n in &decision.undrain {
        cx.cluster
            .apply_node(&node_object(pool, n, None, false))
            .await?;
    }
    for n in &decision.drain {
        cx.cluster
            .apply_node(&node_object(pool, n, Some(now), false))
            .await?;
    }
    for n in &decision.migrate {
        let started = snap
            .nodes
            .iter()
            .find(|p| &p.name == n)
            .and_then(|p| p.drain_started)
            .unwrap_or(now);
        if node_of(n).is_some_and(|x| !x.spec.evacuate) {
            cx.cluster
                .apply_node(&node_object(pool, n, Some(started), true))
                .await?;
            cx.cluster
                .event(
                    pool.object_ref(&()),
                    false,
                    "Migrating",
                    format!("{n} reached its drain deadline; its meetings move to other nodes"),
                )
                .await;
        }
    }
    for n in &decision.delete {
        cx.cluster.delete_node(&ns, n).await?;
        info!(pool = %pool_key, node = %n, "media node deleted");
    }
    if !decision.is_idle() {
        cx.cluster.scaled(pool, &decision);
    }
    announce(pool, cx, &decision).await;

    let old = pool.status.clone().unwrap_or_default();
    let count = |f: &dyn Fn(&PoolNode) -> bool| snap.nodes.iter().filter(|n| f(n)).count() as u32;
    let ready = count(&|n| n.state == NodeState::Ready && !n.draining);
    let generation = pool.metadata.generation.unwrap_or(0);
    let f = decision.forecast;
    let room = ready.saturating_mul(policy.capacity.participants);
    let mut wants = vec![if room
        >= f.demand
            .saturating_add(f.headroom.min(policy.capacity.participants))
    {
        Want::yes(
            "Ready",
            "CapacityReady",
            format!(
                "{ready} ready nodes hold {room} participants; demand {}",
                f.demand
            ),
        )
    } else {
        Want::no(
            "Ready",
            "ScalingOut",
            format!(
                "{ready} ready nodes hold {room} participants; demand {} with headroom {}",
                f.demand, f.headroom
            ),
        )
    }];
    wants.push(
        if decision.desired >= policy.max_nodes
            && f.target
                > policy
                    .max_nodes
                    .saturating_mul(policy.capacity.participants)
        {
            Want::yes(
                "AtMaximum",
                "MaxNodes",
                format!(
                    "the forecast wants room for {} participants; maxNodes {} holds {}",
                    f.target,
                    policy.max_nodes,
                    policy
                        .max_nodes
                        .saturating_mul(policy.capacity.participants)
                ),
            )
        } else {
            Want::no("AtMaximum", "BelowMaxNodes", "the pool can grow")
        },
    );
    let status = MediaPoolStatus {
        observed_generation: Some(generation),
        ready_nodes: ready,
        starting_nodes: count(&|n| n.state == NodeState::Starting) + decision.create,
        draining_nodes: count(&|n| n.draining && n.state != NodeState::Lost),
        desired_nodes: decision.desired,
        demand: f.demand,
        target: f.target,
        growth_per_minute: Some(format!("{:.1}", f.growth_per_minute)),
        upcoming: f.upcoming,
        last_scale_time: if decision.is_idle() {
            old.last_scale_time.clone()
        } else {
            Some(Time(now))
        },
        conditions: settle(wants, &old.conditions, generation, now),
    };
    cx.metrics.pool_looked(&pool_key, &status, &decision);
    if status != old {
        cx.cluster.pool_status(pool, &status).await?;
    }
    Ok(Next::After(cx.settings.pool_interval))
}

/// Events for what changed, one per kind of change.
async fn announce(pool: &MediaPool, cx: &ControlCtx<'_>, d: &ScaleDecision) {
    let f = d.forecast;
    let why = format!(
        "demand {} participants, growing {:.0}/min, {} scheduled soon, headroom {}",
        f.demand, f.growth_per_minute, f.upcoming, f.headroom
    );
    let mut notes: Vec<(&str, String)> = Vec::new();
    if d.create > 0 || !d.undrain.is_empty() {
        notes.push((
            "ScaledOut",
            format!(
                "{} new nodes, {} taken back from draining ({why})",
                d.create,
                d.undrain.len()
            ),
        ));
    }
    if !d.drain.is_empty() {
        notes.push((
            "Draining",
            format!("draining {} ({why})", d.drain.join(", ")),
        ));
    }
    if !d.delete.is_empty() {
        notes.push((
            "ScaledIn",
            format!("deleted {} (empty or gone)", d.delete.join(", ")),
        ));
    }
    for (reason, note) in notes {
        cx.cluster
            .event(pool.object_ref(&()), false, reason, note)
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::MediaNodeStatus;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn node(phase: Option<MediaNodePhase>, report: &str, drain: bool) -> MediaNode {
        let mut n = MediaNode::in_region("seoul-x", "team", "seoul", 500);
        n.spec.pool = Some("seoul".into());
        n.spec.drain = drain;
        n.status = Some(MediaNodeStatus {
            phase,
            last_report: Some(Time(at(report))),
            ..MediaNodeStatus::default()
        });
        n
    }

    #[test]
    fn node_states_as_the_autoscaler_sees_them() {
        let now = at("2026-11-21T10:00:00Z");
        let fresh = "2026-11-21T09:59:55Z";
        let stale = "2026-11-21T09:58:00Z";
        let look = |n: MediaNode| {
            let p = pool_node(&n, &Ledger::default(), now, SignedDuration::from_secs(30));
            (p.state, p.draining)
        };
        assert_eq!(look(node(None, fresh, false)), (NodeState::Starting, false));
        assert_eq!(
            look(node(Some(MediaNodePhase::Ready), fresh, false)),
            (NodeState::Ready, false)
        );
        assert_eq!(
            look(node(Some(MediaNodePhase::Ready), stale, false)),
            (NodeState::Lost, false)
        );
        // Asked to drain by its pool: can be taken back.
        assert_eq!(
            look(node(Some(MediaNodePhase::Draining), fresh, true)),
            (NodeState::Ready, true)
        );
        // Draining on its own (SIGTERM): not the pool's to take back.
        assert_eq!(
            look(node(Some(MediaNodePhase::Draining), fresh, false)),
            (NodeState::Terminating, true)
        );
        // Its pod is gone: deleted like a drained node.
        assert_eq!(
            look(node(Some(MediaNodePhase::Gone), stale, false)),
            (NodeState::Lost, true)
        );
    }
}
