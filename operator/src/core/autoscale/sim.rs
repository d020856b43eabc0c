//! A simulated fleet in fake time, to replay a traffic curve through the real decisions:
//! [`super::decide`] for the pools and [`crate::placement::place`] for the meetings.
//!
//! Nodes take a realistic, varying time to start; meetings arrive as the curve asks (people
//! join over their first minute, and an ad-hoc meeting needs its room at its first join);
//! scheduled meetings are placed `prepare_ahead` before their start as the reconciler does. The
//! run counts joins turned away, meetings cut by a deletion, meetings migrated at a drain
//! deadline, node utilization, and node-minutes against an oracle that knows the curve: at
//! every moment exactly the nodes the demand needs, at once.
//!
//! Used by the scenario tests of the autoscaler and by `moim-bench autoscale`. Deterministic:
//! the same scenario gives the same run.

use super::{NodeState, NodeUsage, PoolMemory, PoolNode, PoolPolicy, PoolSnapshot, Upcoming};
use crate::placement::{self, Demand, NodeView, Plan};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::BTreeMap;

/// One meeting of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct SimMeeting {
    /// Region its participants are in.
    pub region: String,
    /// Seconds from the run's start of its first join (its start, if scheduled).
    pub start: i64,
    /// Participants.
    pub size: u32,
    /// Seconds over which its participants join.
    pub join_over: i64,
    /// Seconds it lasts.
    pub duration: i64,
    /// Scheduled ahead (a Meeting with `schedule`), placed `prepare_ahead` before it starts.
    pub scheduled: bool,
}

/// Something that happens to the fleet.
#[derive(Debug, Clone, PartialEq)]
pub enum FleetEvent {
    /// The first draining node of the region (else its most loaded node) dies.
    KillDrainingNode {
        /// Seconds from the start.
        at: i64,
        /// Region.
        region: String,
    },
}

/// A traffic scenario.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name.
    pub name: String,
    /// Regions, one pool each.
    pub regions: Vec<String>,
    /// Seconds simulated before measuring (meetings already running at the start).
    pub warmup: i64,
    /// Seconds measured.
    pub duration: i64,
    /// Meetings (starts may be negative, down to `-warmup`).
    pub meetings: Vec<SimMeeting>,
    /// Failures.
    pub events: Vec<FleetEvent>,
}

/// How the simulated fleet behaves.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetModel {
    /// The autoscaler's settings (every pool the same).
    pub policy: PoolPolicy,
    /// Scheduled meetings are placed this long before their start.
    pub prepare_ahead: SignedDuration,
    /// Fastest and slowest pod start, seconds (spread evenly between).
    pub startup: (i64, i64),
    /// Simulation step, seconds.
    pub step: i64,
}

impl Default for FleetModel {
    fn default() -> Self {
        Self {
            policy: PoolPolicy::default(),
            prepare_ahead: SignedDuration::from_mins(10),
            // Scheduling on a host with room, pulling a small image, start, the first status poll.
            startup: (20, 60),
            step: 5,
        }
    }
}

/// One look at a pool during the run.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolSample {
    /// Seconds from the start.
    pub at: i64,
    /// Region.
    pub region: String,
    /// Nodes ready and not draining.
    pub ready: u32,
    /// Nodes starting.
    pub starting: u32,
    /// Nodes draining.
    pub draining: u32,
    /// Nodes lost (dead, not deleted yet).
    pub lost: u32,
    /// Participants reserved.
    pub demand: u32,
    /// What the autoscaler asked for.
    pub desired: u32,
}

/// What a run measured (from the end of the warm-up).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Participants who tried to join and found no room (each counted once).
    pub rejected_joins: u64,
    /// Participants who joined.
    pub joins: u64,
    /// Meetings that lost participants because a node they were on was deleted.
    pub meetings_cut: u64,
    /// Meetings that lost participants because a node died (not the autoscaler's doing).
    pub meetings_lost_to_failures: u64,
    /// Meeting shares moved off a node at its drain deadline.
    pub migrations: u64,
    /// 99th percentile of ready nodes' reserved share of capacity.
    pub p99_node_utilization: f64,
    /// Node-minutes spent (from creation to deletion).
    pub node_minutes: f64,
    /// Node-minutes of the oracle.
    pub oracle_node_minutes: f64,
    /// `node_minutes / oracle_node_minutes`.
    pub node_minutes_ratio: f64,
    /// Most nodes at once.
    pub peak_nodes: u32,
    /// Nodes asked to drain.
    pub drains: u64,
    /// Nodes created.
    pub created: u64,
    /// Every autoscaler look.
    pub samples: Vec<PoolSample>,
}

#[derive(Debug)]
struct SimNode {
    name: String,
    region: String,
    created: i64,
    ready_at: i64,
    state: NodeState,
    draining: bool,
    drain_started: Option<i64>,
}

#[derive(Debug, Default)]
struct MeetingRun {
    plan: Option<Plan>,
    joined: u32,
    turned_away: u32,
    done: bool,
}

fn ts(at: i64) -> Timestamp {
    // The run's second 0 sits at a fixed day; every `at` is within days of it.
    Timestamp::from_second(1_767_225_600 + at).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn placed(plan: &Option<Plan>) -> u32 {
    plan.as_ref()
        .map(|p| p.assignments.iter().map(|a| a.participants).sum())
        .unwrap_or(0)
}

/// Splits `joined` over the plan's shares in order (who is connected where).
fn connected_on(plan: &Plan, joined: u32) -> impl Iterator<Item = (&str, u32)> {
    let mut left = joined;
    plan.assignments.iter().map(move |a| {
        let here = left.min(a.participants);
        left -= here;
        (a.node.as_str(), here)
    })
}

/// Runs `scenario` on the simulated fleet.
pub fn run(scenario: &Scenario, model: &FleetModel) -> Outcome {
    let policy = &model.policy;
    let step = model.step.max(1);
    let look_every = (policy.interval.as_secs().max(1) / step).max(1);
    let prepare = model.prepare_ahead.as_secs();
    let mut out = Outcome::default();
    let mut memories: BTreeMap<String, PoolMemory> = BTreeMap::new();
    let mut nodes: Vec<SimNode> = Vec::new();
    let mut seq = 0u64;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    let mut next_start = |rng: &mut u64| {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let span = (model.startup.1 - model.startup.0).max(0) as u64 + 1;
        model.startup.0 + (*rng % span) as i64
    };
    let mut new_node = |region: &str, at: i64, state: NodeState, ready_at: i64| {
        seq += 1;
        SimNode {
            name: format!("{region}-{seq}"),
            region: region.to_owned(),
            created: at,
            ready_at,
            state,
            draining: false,
            drain_started: None,
        }
    };
    // The fleet at the start of the warm-up: what the curve needs then, already running.
    for region in &scenario.regions {
        let at_start: u32 = scenario
            .meetings
            .iter()
            .filter(|m| {
                &m.region == region
                    && m.start <= -scenario.warmup
                    && m.start + m.duration > -scenario.warmup
            })
            .map(|m| m.size)
            .sum();
        let want = super::nodes_for(
            f64::from(at_start) * 1.2 + f64::from(policy.headroom_participants),
            u64::from(policy.capacity.participants),
        )
        .clamp(policy.min_nodes, policy.max_nodes.max(policy.min_nodes));
        for _ in 0..want {
            nodes.push(new_node(
                region,
                -scenario.warmup,
                NodeState::Ready,
                -scenario.warmup,
            ));
        }
    }
    let mut order: Vec<usize> = (0..scenario.meetings.len()).collect();
    order.sort_by_key(|&i| scenario.meetings[i].start);
    let mut runs: Vec<MeetingRun> = scenario
        .meetings
        .iter()
        .map(|_| MeetingRun::default())
        .collect();
    let mut active: Vec<usize> = Vec::new();
    let scheduled: Vec<usize> = (0..scenario.meetings.len())
        .filter(|&i| scenario.meetings[i].scheduled)
        .collect();
    let mut next = 0usize;
    let mut utilization: Vec<f64> = Vec::new();
    let (mut node_secs, mut oracle_secs) = (0i64, 0i64);

    let mut t = -scenario.warmup;
    let mut tick = 0i64;
    while t < scenario.duration {
        let measuring = t >= 0;
        for n in nodes.iter_mut() {
            if n.state == NodeState::Starting && t >= n.ready_at {
                n.state = NodeState::Ready;
            }
        }
        for e in &scenario.events {
            let FleetEvent::KillDrainingNode { at, region } = e;
            if *at < t || *at >= t + step {
                continue;
            }
            let victim = nodes
                .iter()
                .position(|n| &n.region == region && n.draining && n.state == NodeState::Ready)
                .or_else(|| {
                    nodes
                        .iter()
                        .position(|n| &n.region == region && n.state == NodeState::Ready)
                });
            if let Some(v) = victim {
                nodes[v].state = NodeState::Lost;
                let name = nodes[v].name.clone();
                for &i in &active {
                    let r = &mut runs[i];
                    let Some(plan) = r.plan.as_mut() else {
                        continue;
                    };
                    let lost: u32 = connected_on(plan, r.joined)
                        .filter(|(n, _)| *n == name)
                        .map(|(_, c)| c)
                        .sum();
                    if lost > 0 && measuring {
                        out.meetings_lost_to_failures += 1;
                    }
                    // Its people rejoin; the reconciler re-places the share that was there.
                    r.joined -= lost;
                    plan.assignments.retain(|a| a.node != name);
                    plan.links.retain(|l| l.from != name && l.to != name);
                }
            }
        }

        // Meetings due: placed at their first join (scheduled: `prepare_ahead` before).
        while next < order.len() {
            let m = &scenario.meetings[order[next]];
            let due = if m.scheduled {
                m.start - prepare
            } else {
                m.start
            };
            if due > t {
                break;
            }
            active.push(order[next]);
            next += 1;
        }
        // Which nodes placement may use, and what every meeting reserves where.
        let mut reserved: BTreeMap<String, u32> = BTreeMap::new();
        for &i in &active {
            rebook(&mut reserved, None, runs[i].plan.as_ref());
        }
        let mut still = Vec::with_capacity(active.len());
        for &i in &active {
            let m = &scenario.meetings[i];
            let r = &mut runs[i];
            if t >= m.start + m.duration {
                rebook(&mut reserved, r.plan.take().as_ref(), None);
                r.done = true;
                continue;
            }
            if placed(&r.plan) < m.size {
                // (Re)place: the reconciler keeps trying while a region is short.
                let plan = place_meeting(
                    i,
                    m,
                    &nodes,
                    &reserved,
                    r.plan.as_ref(),
                    None,
                    policy.capacity.participants,
                );
                rebook(&mut reserved, r.plan.as_ref(), Some(&plan));
                r.plan = (!plan.assignments.is_empty()).then_some(plan);
            }
            // Joins so far.
            if t >= m.start {
                let want = if m.join_over <= 0 {
                    m.size
                } else {
                    let f = ((t - m.start + step) as f64 / m.join_over as f64).min(1.0);
                    (f64::from(m.size) * f).ceil() as u32
                };
                let room = placed(&r.plan);
                let joined = want.min(room).max(r.joined.min(room));
                if measuring && joined > r.joined {
                    out.joins += u64::from(joined - r.joined);
                }
                r.joined = joined;
                let away = want.saturating_sub(room);
                if away > r.turned_away {
                    if measuring {
                        out.rejected_joins += u64::from(away - r.turned_away);
                    }
                    r.turned_away = away;
                }
            }
            still.push(i);
        }
        active = still;

        if tick % look_every == 0 {
            look(
                scenario,
                model,
                t,
                measuring,
                &mut nodes,
                &mut runs,
                &active,
                &scheduled,
                &mut memories,
                &mut out,
                &mut utilization,
                &mut new_node,
                &mut next_start,
                &mut rng,
            );
        }

        // Cost, and the oracle's.
        let existing = nodes.len() as u32;
        if measuring {
            node_secs += i64::from(existing) * step;
            out.peak_nodes = out.peak_nodes.max(existing);
            for region in &scenario.regions {
                let demand: u32 = active
                    .iter()
                    .map(|&i| &scenario.meetings[i])
                    .filter(|m| &m.region == region && m.start <= t)
                    .map(|m| m.size)
                    .sum();
                let need =
                    super::nodes_for(f64::from(demand), u64::from(policy.capacity.participants))
                        .clamp(policy.min_nodes, policy.max_nodes.max(policy.min_nodes));
                oracle_secs += i64::from(need) * step;
            }
        }
        t += step;
        tick += 1;
    }
    out.node_minutes = node_secs as f64 / 60.0;
    out.oracle_node_minutes = oracle_secs as f64 / 60.0;
    out.node_minutes_ratio = if oracle_secs > 0 {
        node_secs as f64 / oracle_secs as f64
    } else {
        0.0
    };
    utilization.sort_by(f64::total_cmp);
    if !utilization.is_empty() {
        let i = ((utilization.len() as f64 * 0.99).ceil() as usize).clamp(1, utilization.len()) - 1;
        out.p99_node_utilization = utilization[i];
    }
    out
}

/// Moves a meeting's reservations from its `old` plan to its `new` one.
fn rebook(reserved: &mut BTreeMap<String, u32>, old: Option<&Plan>, new: Option<&Plan>) {
    for a in old.iter().flat_map(|p| &p.assignments) {
        if let Some(v) = reserved.get_mut(&a.node) {
            *v = v.saturating_sub(a.participants);
        }
    }
    for a in new.iter().flat_map(|p| &p.assignments) {
        *reserved.entry(a.node.clone()).or_default() += a.participants;
    }
}

/// Places meeting `i` (its whole size, in its region) as the reconciler does, from
/// `previous`, with `leaving` a node its shares must move off.
fn place_meeting(
    i: usize,
    m: &SimMeeting,
    nodes: &[SimNode],
    reserved: &BTreeMap<String, u32>,
    previous: Option<&Plan>,
    leaving: Option<&str>,
    capacity: u32,
) -> Plan {
    let views = views_for(nodes, &m.region, reserved, previous, leaving, capacity);
    placement::place(
        &Demand {
            meeting: i.to_string(),
            per_region: BTreeMap::from([(m.region.clone(), m.size)]),
        },
        &views,
        previous,
    )
}

/// Placement's view of a region. `leaving` is a node whose shares must move.
fn views_for(
    nodes: &[SimNode],
    region: &str,
    reserved: &BTreeMap<String, u32>,
    own: Option<&Plan>,
    leaving: Option<&str>,
    capacity: u32,
) -> Vec<NodeView> {
    nodes
        .iter()
        .filter(|n| n.region == region)
        .map(|n| {
            let held: u32 = own
                .map(|p| {
                    p.assignments
                        .iter()
                        .filter(|a| a.node == n.name)
                        .map(|a| a.participants)
                        .sum()
                })
                .unwrap_or(0);
            NodeView {
                name: n.name.clone(),
                region: n.region.clone(),
                ready: n.state == NodeState::Ready && leaving != Some(n.name.as_str()),
                draining: n.draining,
                capacity,
                reserved_by_others: reserved
                    .get(&n.name)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(held),
            }
        })
        .collect()
}

/// One autoscaler look at every pool, and what the fleet does with the decisions.
#[allow(clippy::too_many_arguments)]
fn look(
    scenario: &Scenario,
    model: &FleetModel,
    t: i64,
    measuring: bool,
    nodes: &mut Vec<SimNode>,
    runs: &mut [MeetingRun],
    active: &[usize],
    scheduled: &[usize],
    memories: &mut BTreeMap<String, PoolMemory>,
    out: &mut Outcome,
    utilization: &mut Vec<f64>,
    new_node: &mut impl FnMut(&str, i64, NodeState, i64) -> SimNode,
    next_start: &mut impl FnMut(&mut u64) -> i64,
    rng: &mut u64,
) {
    let policy = &model.policy;
    let cap = policy.capacity.participants;
    let prepare = model.prepare_ahead.as_secs();
    let mut reserved: BTreeMap<String, u32> = BTreeMap::new();
    let mut connected: BTreeMap<String, u32> = BTreeMap::new();
    let mut unplaced: BTreeMap<&str, u32> = BTreeMap::new();
    let mut scheduled_reserved: BTreeMap<&str, u32> = BTreeMap::new();
    for &i in active {
        let m = &scenario.meetings[i];
        let r = &runs[i];
        if m.scheduled {
            *scheduled_reserved.entry(m.region.as_str()).or_default() += placed(&r.plan);
        }
        rebook(&mut reserved, None, r.plan.as_ref());
        if let Some(p) = &r.plan {
            for (n, c) in connected_on(p, r.joined) {
                *connected.entry(n.to_owned()).or_default() += c;
            }
        }
        *unplaced.entry(m.region.as_str()).or_default() += m.size.saturating_sub(placed(&r.plan));
    }
    if measuring {
        for n in nodes.iter().filter(|n| n.state == NodeState::Ready) {
            let r = reserved.get(&n.name).copied().unwrap_or(0);
            utilization.push(f64::from(r) / f64::from(cap.max(1)));
        }
    }
    for region in &scenario.regions {
        let upcoming = scheduled
            .iter()
            .map(|&i| &scenario.meetings[i])
            .filter(|m| &m.region == region && m.start - prepare > t)
            .map(|m| Upcoming {
                place_at: ts(m.start - prepare),
                participants: m.size,
            })
            .collect();
        let snap = PoolSnapshot {
            now: ts(t),
            nodes: nodes
                .iter()
                .filter(|n| &n.region == region)
                .map(|n| PoolNode {
                    name: n.name.clone(),
                    state: n.state,
                    draining: n.draining,
                    drain_started: n.drain_started.map(ts),
                    created: ts(n.created),
                    usage: NodeUsage {
                        participants: connected.get(&n.name).copied().unwrap_or(0),
                        ..NodeUsage::default()
                    },
                    reserved: reserved.get(&n.name).copied().unwrap_or(0),
                })
                .collect(),
            upcoming,
            unplaced: unplaced.get(region.as_str()).copied().unwrap_or(0),
            scheduled_reserved: scheduled_reserved
                .get(region.as_str())
                .copied()
                .unwrap_or(0),
        };
        let memory = memories.entry(region.clone()).or_default();
        let d = super::decide(policy, &snap, memory);
        let count = |f: &dyn Fn(&SimNode) -> bool| {
            nodes.iter().filter(|n| &n.region == region && f(n)).count() as u32
        };
        if measuring {
            out.samples.push(PoolSample {
                at: t,
                region: region.clone(),
                ready: count(&|n| n.state == NodeState::Ready && !n.draining),
                starting: count(&|n| n.state == NodeState::Starting),
                draining: count(&|n| n.draining && n.state != NodeState::Lost),
                lost: count(&|n| n.state == NodeState::Lost),
                demand: d.forecast.demand,
                desired: d.desired,
            });
        }
        for _ in 0..d.create {
            let ready_at = t + next_start(rng);
            nodes.push(new_node(region, t, NodeState::Starting, ready_at));
            if measuring {
                out.created += 1;
            }
        }
        for n in nodes.iter_mut() {
            if d.undrain.contains(&n.name) {
                n.draining = false;
                n.drain_started = None;
            }
            if d.drain.contains(&n.name) {
                n.draining = true;
                n.drain_started = Some(t);
                if measuring {
                    out.drains += 1;
                }
            }
        }
        for name in &d.migrate {
            for &i in active {
                let m = &scenario.meetings[i];
                let r = &mut runs[i];
                let Some(old) = r.plan.clone() else { continue };
                if !old.assignments.iter().any(|a| &a.node == name) {
                    continue;
                }
                let plan = place_meeting(i, m, nodes, &reserved, Some(&old), Some(name), cap);
                // Moved only when the new nodes have room for everyone on the old one.
                if !plan.shortfalls.is_empty() {
                    continue;
                }
                rebook(&mut reserved, Some(&old), Some(&plan));
                r.plan = Some(plan);
                if measuring {
                    out.migrations += 1;
                }
            }
        }
        for name in &d.delete {
            for &i in active {
                let r = &mut runs[i];
                let Some(plan) = r.plan.as_mut() else {
                    continue;
                };
                let on: u32 = connected_on(plan, r.joined)
                    .filter(|(n, _)| n == name)
                    .map(|(_, c)| c)
                    .sum();
                let lost_node = nodes
                    .iter()
                    .any(|n| &n.name == name && n.state == NodeState::Lost);
                if on > 0 && !lost_node && measuring {
                    out.meetings_cut += 1;
                }
                r.joined -= on;
                plan.assignments.retain(|a| &a.node != name);
                plan.links.retain(|l| &l.from != name && &l.to != name);
            }
            nodes.retain(|n| &n.name != name);
        }
    }
}

/// Meetings following a curve of concurrent participants: people arrive as others leave (the
/// meetings that end) plus what the curve grows by, and fewer arrive while it falls. Sizes 2
/// to 20 (mean 8), lasting 30 to 60 minutes, joined over their first minute.
pub fn meetings_following(
    region: &str,
    from: i64,
    to: i64,
    seed: u64,
    curve: impl Fn(i64) -> f64,
) -> Vec<SimMeeting> {
    meetings_lasting(region, (30 * 60, 60 * 60), from, to, seed, curve)
}

/// [`meetings_following`] with meetings lasting `durations` (shortest, longest), seconds.
pub fn meetings_lasting(
    region: &str,
    durations: (i64, i64),
    from: i64,
    to: i64,
    seed: u64,
    curve: impl Fn(i64) -> f64,
) -> Vec<SimMeeting> {
    const SIZES: [u32; 10] = [2, 3, 4, 5, 6, 8, 8, 10, 14, 20];
    let (dmin, dmax) = (durations.0.max(1), durations.1.max(durations.0 + 1));
    let mut rng = seed | 1;
    let mut rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut out = Vec::new();
    // Participants leaving at each second, by the meetings' ends.
    let mut ending: BTreeMap<i64, u32> = BTreeMap::new();
    let mut meeting = |start: i64,
                       elapsed: i64,
                       rand: &mut dyn FnMut() -> u64,
                       ending: &mut BTreeMap<i64, u32>| {
        let size = SIZES[(rand() % SIZES.len() as u64) as usize];
        let duration = dmin + (rand() % (dmax - dmin) as u64) as i64;
        let elapsed = elapsed.min(duration - 1);
        *ending.entry(start - elapsed + duration).or_default() += size;
        out.push(SimMeeting {
            region: region.to_owned(),
            start: start - elapsed,
            size,
            join_over: 60,
            duration,
            scheduled: false,
        });
        size
    };
    // Meetings already running at `from`, with their ends spread out.
    let mut running = 0.0;
    while running < curve(from) {
        let elapsed = (rand() % dmax as u64) as i64;
        running += f64::from(meeting(from, elapsed, &mut rand, &mut ending));
    }
    // Then arrivals second by second.
    let mut owed = 0.0;
    for t in from..to {
        let left = ending.remove(&t).unwrap_or(0);
        owed += f64::from(left) + curve(t + 1) - curve(t);
        while owed >= 5.0 {
            owed -= f64::from(meeting(t, 0, &mut rand, &mut ending));
        }
    }
    out
}

/// The named scenarios of `moim-bench autoscale`: `steady`, `surge`, `webinar`,
/// `follow-the-sun`.
pub fn named(name: &str) -> Option<Scenario> {
    let warmup = 3600;
    let scenario = |regions: &[&str], duration: i64, meetings: Vec<SimMeeting>| Scenario {
        name: name.to_owned(),
        regions: regions.iter().map(|r| r.to_string()).collect(),
        warmup,
        duration,
        meetings,
        events: Vec::new(),
    };
    Some(match name {
        "steady" => scenario(
            &["seoul"],
            3 * 3600,
            meetings_following("seoul", -warmup, 3 * 3600, 1, |_| 2000.0),
        ),
        // 1,000 concurrent participants, then five times that over ten minutes, held an hour.
        "surge" => scenario(
            &["seoul"],
            2 * 3600,
            meetings_following("seoul", -warmup, 2 * 3600, 2, |t| {
                // Eased in and out (smoothstep), as a wave of logins is: its steepest
                // minute is half again the average.
                let x = ((t - 1800) as f64 / 600.0).clamp(0.0, 1.0);
                1000.0 + 4000.0 * x * x * (3.0 - 2.0 * x)
            }),
        ),
        // 800 in ordinary meetings, and a 300-person webinar at 1:00 that everyone joins
        // within two minutes.
        "webinar" => {
            let mut m = meetings_following("frankfurt", -warmup, 2 * 3600, 3, |_| 800.0);
            m.push(SimMeeting {
                region: "frankfurt".into(),
                start: 3600,
                size: 300,
                join_over: 120,
                duration: 3600,
                scheduled: true,
            });
            scenario(&["frankfurt"], 2 * 3600, m)
        }
        // Three regions over a day, each busy in its own working hours.
        "follow-the-sun" => {
            let day = |offset_h: i64| {
                move |t: i64| {
                    let h = ((t as f64 / 3600.0) + offset_h as f64).rem_euclid(24.0);
                    // Up from 8:00 to 10:00, busy to 17:00, down by 19:00.
                    let busy =
                        ((h - 8.0) / 2.0).clamp(0.0, 1.0) * ((19.0 - h) / 2.0).clamp(0.0, 1.0);
                    150.0 + 2850.0 * busy
                }
            };
            let mut m = meetings_following("seoul", -warmup, 24 * 3600, 4, day(0));
            m.extend(meetings_following(
                "frankfurt",
                -warmup,
                24 * 3600,
                5,
                day(-8),
            ));
            m.extend(meetings_following(
                "virginia",
                -warmup,
                24 * 3600,
                6,
                day(-14),
            ));
            scenario(&["seoul", "frankfurt", "virginia"], 24 * 3600, m)
        }
        _ => return None,
    })
}

/// Names [`named`] knows.
pub const SCENARIOS: [&str; 4] = ["steady", "surge", "webinar", "follow-the-sun"];
