//! Autoscaling of one region's media nodes: a pure function from a snapshot of the pool (its
//! nodes, their load, the meetings scheduled to start soon) and `now` to a scaling decision.
//!
//! No I/O and no clock: the MediaPool reconciler (and the local fabric, and the simulated
//! fleet of `moim-bench autoscale`) observe, call [`decide`], and apply what it returns. The
//! little history the decision needs (recent demand, recent recommendations) lives in a
//! [`PoolMemory`] the caller keeps per pool; losing it (an operator restart) only makes the
//! next few minutes' forecast flatter and the scale-in wait a little longer.
//!
//! How many nodes a pool wants:
//! 1. **Demand now**, in participants: on every live node the larger of what placement
//!    reserved there and what is connected, plus participants of live meetings that could not
//!    be placed at all. Published tracks and egress are counted too, and a pool needs enough
//!    nodes for whichever of the three runs out first.
//! 2. **Growth**: the slope of demand over the last [`GROWTH_WINDOW`] (least squares), when it
//!    rises and the last minute still shows it rising, times the lead time (a new node's
//!    start-up time, one look, half the window), so capacity started now is ready when the
//!    demand arrives, not after it. Scheduled meetings are left out of the slope.
//! 3. **Scheduled meetings** that will be placed within the lead time (placement happens
//!    `prepare_ahead` before their start) add their expected participants: a 300-person
//!    webinar at 10:00 finds its nodes ready when it is placed.
//! 4. **Headroom**: spare ready capacity on top, the larger of a fixed number of participants
//!    and a share of demand, as Agones' buffer policy keeps spare servers for the next joins.
//!
//! Scaling out is at once: first by taking back draining nodes (they are warm and already
//! host people), then by creating MediaNodes. Scaling in is slow and gentle: the pool shrinks
//! only to the *highest* recommendation of the last `scale_down_delay` (as the Horizontal Pod
//! Autoscaler's stabilization window does), planned with a 10% tolerance, so load that flaps
//! or hovers near a node boundary does not make nodes flap.
//! Nodes still starting go first (they host nothing), then the least loaded ready nodes,
//! which **drain**: they take no new meetings and are deleted only once empty. At the drain
//! deadline the participants still on a draining node are **migrated** to other nodes of the
//! region (the reconciler re-places those meetings; the node tells each client where to
//! reconnect). Nothing in here ever deletes a node that hosts someone.

pub mod sim;

use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::VecDeque;

/// How far back the growth rate looks.
pub const GROWTH_WINDOW: SignedDuration = SignedDuration::from_secs(2 * 60);
/// The growth rate is trusted only once samples span this long.
const GROWTH_MIN_SPAN_MS: i64 = 45_000;
/// The last stretch of the window that must still show the rise.
const RECENT_MS: i64 = 60_000;
/// Scale-in plans for this much more than the target, so a target near a node boundary does
/// not drain a node one minute and take it back the next (the HPA has a tolerance the same way).
const SCALE_IN_TOLERANCE: f64 = 0.1;
/// Samples kept per pool (bounds [`PoolMemory`] whatever the call rate).
const MAX_SAMPLES: usize = 512;

/// What one node can carry. A dimension of 0 is not limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCapacity {
    /// Participants.
    pub participants: u32,
    /// Published tracks (each costs forwarding work for every subscriber).
    pub published_tracks: u32,
    /// Egress, bits per second.
    pub egress_bps: u64,
}

/// A pool's autoscaling settings (from its MediaPool).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolPolicy {
    /// Fewest nodes, whatever the load.
    pub min_nodes: u32,
    /// Most nodes, whatever the load.
    pub max_nodes: u32,
    /// What one node carries.
    pub capacity: NodeCapacity,
    /// Spare participants kept ready (at least).
    pub headroom_participants: u32,
    /// Spare capacity kept ready as a share of demand, percent (the larger of the two wins).
    pub headroom_percent: u32,
    /// The pool shrinks only to the highest recommendation over this long.
    pub scale_down_delay: SignedDuration,
    /// A draining node's remaining participants are moved after this long.
    pub drain_deadline: SignedDuration,
    /// How long a new node may take to be ready (scheduling, image pull, start); better too
    /// long than too short.
    pub node_startup: SignedDuration,
    /// How often the pool is looked at; added to the lead time.
    pub interval: SignedDuration,
}

impl Default for PoolPolicy {
    fn default() -> Self {
        Self {
            min_nodes: 1,
            max_nodes: 20,
            capacity: NodeCapacity {
                participants: 500,
                published_tracks: 0,
                egress_bps: 0,
            },
            headroom_participants: 100,
            headroom_percent: 10,
            scale_down_delay: SignedDuration::from_mins(10),
            drain_deadline: SignedDuration::from_mins(60),
            node_startup: SignedDuration::from_secs(60),
            interval: SignedDuration::from_secs(15),
        }
    }
}

impl PoolPolicy {
    /// Lead time of a forecast: what a node started now needs before it takes meetings, plus
    /// the half window by which a least-squares slope lags a rise that has just begun.
    pub fn lead(&self) -> SignedDuration {
        self.node_startup + self.interval + GROWTH_WINDOW / 2
    }
}

/// Where a node is in its life, as the pool sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Created; not ready yet (hosts nothing).
    Starting,
    /// Ready and reporting.
    Ready,
    /// Stopped reporting after it was ready (crashed, its host gone).
    Lost,
    /// Its pod is shutting down on its own (SIGTERM, an eviction): it hosts people until they
    /// leave, but it is no capacity and not the autoscaler's to take back or migrate.
    Terminating,
}

/// Load of a node, as it reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NodeUsage {
    /// Participants connected.
    pub participants: u32,
    /// Tracks published.
    pub published_tracks: u32,
    /// Egress, bits per second.
    pub egress_bps: u64,
}

/// One node of the pool.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolNode {
    /// MediaNode name.
    pub name: String,
    /// State.
    pub state: NodeState,
    /// Draining (asked to, or reports so).
    pub draining: bool,
    /// When it was asked to drain (the drain deadline counts from here).
    pub drain_started: Option<Timestamp>,
    /// When it was created (the newest goes first among equals).
    pub created: Timestamp,
    /// Reported load.
    pub usage: NodeUsage,
    /// Participants placement reserved on it.
    pub reserved: u32,
}

impl PoolNode {
    fn hosts_anyone(&self) -> bool {
        self.usage.participants > 0 || self.reserved > 0
    }

    fn load(&self) -> u32 {
        self.usage.participants.max(self.reserved)
    }
}

/// A scheduled meeting not placed yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Upcoming {
    /// When it will be placed (its start less the placement's `prepare_ahead`).
    pub place_at: Timestamp,
    /// Participants expected in this pool's region.
    pub participants: u32,
}

/// What the pool looks like at `now`.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSnapshot {
    /// Now.
    pub now: Timestamp,
    /// Every node of the pool.
    pub nodes: Vec<PoolNode>,
    /// Scheduled meetings in the region, not placed yet.
    pub upcoming: Vec<Upcoming>,
    /// Participants of live meetings that found no room in the region.
    pub unplaced: u32,
    /// Participants reserved by scheduled meetings. They are left out of the growth rate:
    /// they arrive as a step when placed, and were already counted as upcoming before.
    pub scheduled_reserved: u32,
}

/// What [`decide`] remembers between calls for one pool.
#[derive(Debug, Clone, Default)]
pub struct PoolMemory {
    demand: VecDeque<(i64, f64)>,
    recommendations: VecDeque<(i64, u32)>,
}

/// The figures behind a decision (for status, metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Forecast {
    /// Participants now.
    pub demand: u32,
    /// Participants per minute the demand grows by (0 when falling).
    pub growth_per_minute: f64,
    /// Participants of scheduled meetings placed within the lead time.
    pub upcoming: u32,
    /// Spare participants kept.
    pub headroom: u32,
    /// Participants to have room for by the end of the lead time.
    pub target: u32,
}

/// What to do with a pool.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScaleDecision {
    /// Nodes the pool should have (not draining), after min and max.
    pub desired: u32,
    /// Why.
    pub forecast: Forecast,
    /// New nodes to create.
    pub create: u32,
    /// Draining nodes to take back into service.
    pub undrain: Vec<String>,
    /// Nodes to start draining.
    pub drain: Vec<String>,
    /// Nodes to delete: empty and draining, still starting and not needed, or lost while draining.
    pub delete: Vec<String>,
    /// Draining nodes past their deadline whose participants must move.
    pub migrate: Vec<String>,
}

impl ScaleDecision {
    /// Nothing to do.
    pub fn is_idle(&self) -> bool {
        self.create == 0
            && self.undrain.is_empty()
            && self.drain.is_empty()
            && self.delete.is_empty()
            && self.migrate.is_empty()
    }
}

fn ms(t: Timestamp) -> i64 {
    t.as_millisecond()
}

fn nodes_for(need: f64, per_node: u64) -> u32 {
    if per_node == 0 || need <= 0.0 {
        return 0;
    }
    (need / per_node as f64).ceil().min(f64::from(u32::MAX)) as u32
}

/// Least-squares slope of `samples` (value per millisecond), or 0 without enough history.
fn slope(samples: &VecDeque<(i64, f64)>) -> f64 {
    let (Some(first), Some(last)) = (samples.front(), samples.back()) else {
        return 0.0;
    };
    if samples.len() < 3 || last.0 - first.0 < GROWTH_MIN_SPAN_MS {
        return 0.0;
    }
    let n = samples.len() as f64;
    let t0 = first.0;
    let mean_t = samples.iter().map(|s| (s.0 - t0) as f64).sum::<f64>() / n;
    let mean_v = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let (mut num, mut den) = (0.0, 0.0);
    for &(t, v) in samples {
        let dt = (t - t0) as f64 - mean_t;
        num += dt * (v - mean_v);
        den += dt * dt;
    }
    if den == 0.0 { 0.0 } else { num / den }
}

/// Decides what the pool should do at `snap.now`.
pub fn decide(policy: &PoolPolicy, snap: &PoolSnapshot, memory: &mut PoolMemory) -> ScaleDecision {
    let now = ms(snap.now);
    let live = || snap.nodes.iter().filter(|n| n.state != NodeState::Lost);

    // 1. Demand now.
    let demand = live()
        .map(PoolNode::load)
        .fold(0u32, u32::saturating_add)
        .saturating_add(snap.unplaced);
    let tracks: u64 = live().map(|n| u64::from(n.usage.published_tracks)).sum();
    let egress: u64 = live().map(|n| n.usage.egress_bps).sum();

    // 2. Growth over the window.
    let organic = demand.saturating_sub(snap.scheduled_reserved);
    memory.demand.push_back((now, f64::from(organic)));
    while memory
        .demand
        .front()
        .is_some_and(|s| now - s.0 > GROWTH_WINDOW.as_millis() as i64)
        || memory.demand.len() > MAX_SAMPLES
    {
        memory.demand.pop_front();
    }
    // A rise that has stopped is not growth: the slope counts only as far as the last minute
    // still shows it (a step of demand is met once, not extrapolated).
    let recent: VecDeque<(i64, f64)> = memory
        .demand
        .iter()
        .filter(|s| now - s.0 <= RECENT_MS)
        .copied()
        .collect();
    let per_ms = slope(&memory.demand).min(slope(&recent)).max(0.0);
    let lead_ms = policy.lead().as_millis() as f64;
    let grown = f64::from(demand) + per_ms * lead_ms;

    // 3. Scheduled meetings placed before the lead time runs out.
    let horizon = now.saturating_add(policy.lead().as_millis() as i64);
    let upcoming = snap
        .upcoming
        .iter()
        .filter(|u| ms(u.place_at) <= horizon)
        .map(|u| u.participants)
        .fold(0u32, u32::saturating_add);

    // 4. Headroom.
    let headroom = policy
        .headroom_participants
        .max((f64::from(demand) * f64::from(policy.headroom_percent) / 100.0).ceil() as u32);
    let target = grown + f64::from(upcoming) + f64::from(headroom);
    // Tracks and egress grow in the same proportion as participants.
    let scale = if demand > 0 {
        target / f64::from(demand)
    } else {
        1.0
    };
    let cap = policy.capacity;
    let min = policy.min_nodes.min(policy.max_nodes);
    let nodes_wanted = |factor: f64| {
        nodes_for(target * factor, u64::from(cap.participants))
            .max(nodes_for(
                tracks as f64 * scale * factor,
                u64::from(cap.published_tracks),
            ))
            .max(nodes_for(egress as f64 * scale * factor, cap.egress_bps))
            .clamp(min, policy.max_nodes)
    };
    let desired = nodes_wanted(1.0);

    // The pool shrinks only to the highest recommendation within the scale-down delay.
    memory
        .recommendations
        .push_back((now, nodes_wanted(1.0 + SCALE_IN_TOLERANCE)));
    while memory
        .recommendations
        .front()
        .is_some_and(|s| now - s.0 > policy.scale_down_delay.as_millis() as i64)
        || memory.recommendations.len() > MAX_SAMPLES
    {
        memory.recommendations.pop_front();
    }
    let stable = memory
        .recommendations
        .iter()
        .map(|r| r.1)
        .max()
        .unwrap_or(desired);

    let mut decision = ScaleDecision {
        desired,
        forecast: Forecast {
            demand,
            growth_per_minute: per_ms * 60_000.0,
            upcoming,
            headroom,
            target: target.ceil().min(f64::from(u32::MAX)) as u32,
        },
        ..ScaleDecision::default()
    };

    let active: Vec<&PoolNode> = live()
        .filter(|n| !n.draining && n.state != NodeState::Terminating)
        .collect();
    let active_count = active.len() as u32;
    if desired > active_count {
        // Out: warm draining nodes first (most loaded first: they have the most to keep).
        let mut warm: Vec<&PoolNode> = live()
            .filter(|n| n.draining && n.state == NodeState::Ready)
            .collect();
        warm.sort_by(|a, b| b.load().cmp(&a.load()).then(a.name.cmp(&b.name)));
        let missing = desired - active_count;
        decision.undrain = warm
            .iter()
            .take(missing as usize)
            .map(|n| n.name.clone())
            .collect();
        decision.create = missing - decision.undrain.len() as u32;
    } else if stable < active_count {
        // In: starting nodes first (newest first), then the least loaded ready nodes.
        let mut order = active;
        order.sort_by(|a, b| {
            (a.state == NodeState::Ready)
                .cmp(&(b.state == NodeState::Ready))
                .then(a.load().cmp(&b.load()))
                .then(b.created.cmp(&a.created))
                .then(a.name.cmp(&b.name))
        });
        for n in order.into_iter().take((active_count - stable) as usize) {
            if n.state == NodeState::Starting && !n.hosts_anyone() {
                decision.delete.push(n.name.clone());
            } else {
                decision.drain.push(n.name.clone());
            }
        }
    }

    let deadline = policy.drain_deadline.as_millis() as i64;
    for n in snap
        .nodes
        .iter()
        .filter(|n| n.draining || n.state == NodeState::Terminating)
    {
        if decision.undrain.contains(&n.name) {
            continue;
        }
        let empty = !n.hosts_anyone();
        if n.state == NodeState::Lost || empty {
            // Empty, or gone while draining: nothing on it to wait for.
            decision.delete.push(n.name.clone());
        } else if n.state == NodeState::Ready
            && n.drain_started
                .is_some_and(|t| now.saturating_sub(ms(t)) >= deadline)
        {
            decision.migrate.push(n.name.clone());
        }
    }
    decision
}

#[cfg(test)]
mod tests;
