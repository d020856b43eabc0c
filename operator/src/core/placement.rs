//! Meeting placement: a pure function from an observed snapshot of the fleet to a plan.
//!
//! No I/O and no clock: the reconciler reads nodes and meetings, calls [`place`], and writes
//! the plan (to the nodes' admin API and to `Meeting.status`). The same snapshot always gives
//! the same plan, which is what makes the plan testable and the reconciler idempotent.
//!
//! The rules, in order:
//! 1. Every region with expected participants gets capacity on ready, non-draining nodes in
//!    that region. Capacity is counted in participants (a node's `capacity` minus what it
//!    hosts for other meetings).
//! 2. Nodes that already host this meeting keep what they host while they stay ready, even if
//!    draining (moving people who need not move is the one thing placement must not do);
//!    a draining node is only never given *more*.
//! 3. A region's remaining share goes to the node with the most free capacity, then the next,
//!    so a region uses as few nodes as it can; ties break by node name.
//! 4. The cascade is a tree: within a region every node links to the region's first node (its
//!    hub); the hubs link in a star around the region with the most participants, so any
//!    stream crosses at most two inter-region links and each link carries it once.
//!
//! 5. A region that has media nodes but none ready (its only node died) is served from the
//!    nearest region that has room ([`Distances`]; a region not in the table is far, and among
//!    equally far regions the meeting's largest comes first). Those shares are the node's
//!    [`Assignment::serves`]; once the region has a ready node again its share goes home.
//!
//! A region that cannot be served (not enough room, or no ready node anywhere) is reported in
//! [`Plan::shortfalls`] rather than failing the whole meeting: the people who can be placed are.

pub use super::regions::Distances;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

/// A media node as the placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// MediaNode name (unique).
    pub name: String,
    /// `topology.kubernetes.io/region` of the node.
    pub region: String,
    /// Ready: `/readyz` answers and its status is recent.
    pub ready: bool,
    /// Draining: takes no new meetings or more participants.
    pub draining: bool,
    /// Participants the node can hold in all.
    pub capacity: u32,
    /// Participants reserved on the node for *other* meetings (what the meeting being placed
    /// holds there already counts as its own room).
    pub reserved_by_others: u32,
}

impl NodeView {
    /// Room left for the meeting being placed.
    fn free(&self) -> u32 {
        self.capacity.saturating_sub(self.reserved_by_others)
    }
}

/// What a meeting needs: participants expected per region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Demand {
    /// `namespace/name` of the Meeting.
    pub meeting: String,
    /// Expected participants per region (regions with 0 are ignored).
    pub per_region: BTreeMap<String, u32>,
}

/// One node's share of a meeting.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Assignment {
    /// Region of the node.
    pub region: String,
    /// MediaNode name.
    pub node: String,
    /// Participants reserved for the meeting on it (with those of [`Self::serves`]).
    pub participants: u32,
    /// Participants of other regions it takes in because theirs have no ready node, by region.
    pub serves: BTreeMap<String, u32>,
}

impl Assignment {
    /// Participants of its own region.
    pub fn own(&self) -> u32 {
        self.participants
            .saturating_sub(self.serves.values().sum::<u32>())
    }
}

/// A relay link of the cascade tree, from the node nearer the root to the other.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Link {
    /// Upstream end (nearer the tree's root).
    pub from: String,
    /// Downstream end.
    pub to: String,
}

/// A region whose share could not be placed in full.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortfall {
    /// Region.
    pub region: String,
    /// Participants with no room.
    pub missing: u32,
    /// Why, for a person reading the Meeting's conditions.
    pub reason: ShortfallReason,
}

/// Why a region could not be served in full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShortfallReason {
    /// No ready, non-draining node in the region.
    NoNodesInRegion,
    /// The region's nodes are full.
    RegionFull,
}

/// The placement of one meeting.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Node shares, sorted by region then node.
    pub assignments: Vec<Assignment>,
    /// Cascade tree edges, sorted.
    pub links: Vec<Link>,
    /// Regions not served in full.
    pub shortfalls: Vec<Shortfall>,
}

impl Plan {
    /// Nodes in the plan.
    pub fn nodes(&self) -> BTreeSet<&str> {
        self.assignments.iter().map(|a| a.node.as_str()).collect()
    }

    /// Participants of `region` placed, on its own nodes or served from another region.
    pub fn placed_in(&self, region: &str) -> u32 {
        self.assignments
            .iter()
            .map(|a| {
                let own = if a.region == region { a.own() } else { 0 };
                own + a.serves.get(region).copied().unwrap_or(0)
            })
            .sum()
    }
}

/// Places `demand` on `nodes` with no distances known (see [`place_with`]).
pub fn place(demand: &Demand, nodes: &[NodeView], previous: Option<&Plan>) -> Plan {
    place_with(demand, nodes, previous, &Distances::default())
}

/// Places `demand` on `nodes`. `previous` is the plan in force (from the Meeting's status),
/// whose still-usable shares are kept; `distances` say which region is nearest one that lost
/// its nodes.
pub fn place_with(
    demand: &Demand,
    nodes: &[NodeView],
    previous: Option<&Plan>,
    distances: &Distances,
) -> Plan {
    let mut by_name: BTreeMap<&str, &NodeView> = BTreeMap::new();
    for n in nodes {
        by_name.insert(n.name.as_str(), n);
    }
    // What each node has left to give this meeting as we go.
    let mut free: BTreeMap<&str, u32> = nodes.iter().map(|n| (n.name.as_str(), n.free())).collect();
    let mut assignments: Vec<Assignment> = Vec::new();
    let mut shortfalls = Vec::new();
    // Regions with nodes, none of them ready: served from the nearest region below.
    let mut homeless: Vec<(&str, u32)> = Vec::new();

    for (region, &want) in &demand.per_region {
        if want == 0 {
            continue;
        }
        let mut left = want;
        // Keep previous shares on nodes that are still ready in this region.
        if let Some(prev) = previous {
            for a in prev.assignments.iter().filter(|a| &a.region == region) {
                let Some(n) = by_name.get(a.node.as_str()) else {
                    continue;
                };
                if !n.ready || &n.region != region || left == 0 {
                    continue;
                }
                let room = free.get(n.name.as_str()).copied().unwrap_or(0);
                let keep = a.own().min(left).min(room);
                if keep == 0 {
                    continue;
                }
                left -= keep;
                if let Some(f) = free.get_mut(n.name.as_str()) {
                    *f -= keep;
                }
                push(&mut assignments, region, &n.name, keep, None);
            }
        }
        // New room: largest free first, never on draining or unready nodes.
        let mut candidates: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| &n.region == region && n.ready && !n.draining)
            .collect();
        if left > 0 && candidates.is_empty() && !assignments.iter().any(|a| &a.region == region) {
            if nodes.iter().any(|n| &n.region == region) {
                homeless.push((region.as_str(), left));
                continue;
            }
            shortfalls.push(Shortfall {
                region: region.clone(),
                missing: left,
                reason: ShortfallReason::NoNodesInRegion,
            });
            continue;
        }
        // Nodes already used for this meeting first (fewest nodes), then most free space.
        candidates.sort_by(|a, b| {
            let used_a = assignments.iter().any(|x| x.node == a.name);
            let used_b = assignments.iter().any(|x| x.node == b.name);
            let fa = free.get(a.name.as_str()).copied().unwrap_or(0);
            let fb = free.get(b.name.as_str()).copied().unwrap_or(0);
            used_b
                .cmp(&used_a)
                .then(fb.cmp(&fa))
                .then(a.name.cmp(&b.name))
        });
        let left = take_seats(left, candidates, &mut free, |n, take| {
            push(&mut assignments, region, &n.name, take, None);
        });
        if left > 0 {
            shortfalls.push(Shortfall {
                region: region.clone(),
                missing: left,
                reason: ShortfallReason::RegionFull,
            });
        }
    }
    for (region, mut left) in homeless {
        // Nearest region first; then the meeting's largest region; then nodes the meeting
        // already uses (fewest nodes), most free room, name.
        let mut options: Vec<&NodeView> = nodes
            .iter()
            .filter(|n| n.region != region && n.ready && !n.draining)
            .collect();
        options.sort_by_cached_key(|n| {
            let used = assignments.iter().any(|a| a.node == n.name);
            (
                distances.rank(region, &n.region),
                Reverse(demand.per_region.get(&n.region).copied().unwrap_or(0)),
                n.region.clone(),
                !used,
                Reverse(free.get(n.name.as_str()).copied().unwrap_or(0)),
                n.name.clone(),
            )
        });
        left = take_seats(left, options, &mut free, |n, take| {
            push(&mut assignments, &n.region, &n.name, take, Some(region));
        });
        if left > 0 {
            shortfalls.push(Shortfall {
                region: region.to_owned(),
                missing: left,
                reason: ShortfallReason::NoNodesInRegion,
            });
        }
    }
    shortfalls.sort_by(|a, b| a.region.cmp(&b.region));
    assignments.sort();
    let links = cascade(demand, &assignments);
    Plan {
        assignments,
        links,
        shortfalls,
    }
}

/// Adds `n` participants on `node` (in `region`), of region `serving` when it is not the
/// node's own.
/// Seats `left` people on `candidates` in order, each taking as many as it has free; `put`
/// records each share. Returns how many found no seat.
fn take_seats<'a>(
    mut left: u32,
    candidates: impl IntoIterator<Item = &'a NodeView>,
    free: &mut BTreeMap<&str, u32>,
    mut put: impl FnMut(&'a NodeView, u32),
) -> u32 {
    for n in candidates {
        if left == 0 {
            break;
        }
        let Some(room) = free.get_mut(n.name.as_str()) else {
            continue;
        };
        let take = (*room).min(left);
        if take == 0 {
            continue;
        }
        *room -= take;
        left -= take;
        put(n, take);
    }
    left
}

fn push(
    assignments: &mut Vec<Assignment>,
    region: &str,
    node: &str,
    n: u32,
    serving: Option<&str>,
) {
    let i = match assignments.iter().position(|a| a.node == node) {
        Some(i) => i,
        None => {
            assignments.push(Assignment {
                region: region.to_owned(),
                node: node.to_owned(),
                ..Assignment::default()
            });
            assignments.len() - 1
        }
    };
    let a = &mut assignments[i];
    a.participants += n;
    if let Some(r) = serving {
        *a.serves.entry(r.to_owned()).or_default() += n;
    }
}

/// The cascade tree over the assigned nodes (see the module documentation).
fn cascade(demand: &Demand, assignments: &[Assignment]) -> Vec<Link> {
    // Each region's hub: the node holding most of its share (ties: name).
    let mut hubs: BTreeMap<&str, &Assignment> = BTreeMap::new();
    for a in assignments {
        let better = hubs.get(a.region.as_str()).is_none_or(|h| {
            a.participants > h.participants || (a.participants == h.participants && a.node < h.node)
        });
        if better {
            hubs.insert(a.region.as_str(), a);
        }
    }
    let mut links = Vec::new();
    for a in assignments {
        if let Some(h) = hubs.get(a.region.as_str())
            && h.node != a.node
        {
            links.push(Link {
                from: h.node.clone(),
                to: a.node.clone(),
            });
        }
    }
    // The root region: most expected participants (ties: name), among those placed.
    let root = hubs.keys().copied().max_by(|a, b| {
        let pa = demand.per_region.get(*a).copied().unwrap_or(0);
        let pb = demand.per_region.get(*b).copied().unwrap_or(0);
        pa.cmp(&pb).then(b.cmp(a))
    });
    if let Some(root) = root {
        let root_hub = hubs[root].node.clone();
        for (region, h) in &hubs {
            if *region != root {
                links.push(Link {
                    from: root_hub.clone(),
                    to: h.node.clone(),
                });
            }
        }
    }
    links.sort();
    links
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(name: &str, region: &str, capacity: u32) -> NodeView {
        NodeView {
            name: name.into(),
            region: region.into(),
            ready: true,
            draining: false,
            capacity,
            reserved_by_others: 0,
        }
    }

    fn demand(per_region: &[(&str, u32)]) -> Demand {
        Demand {
            meeting: "default/standup".into(),
            per_region: per_region
                .iter()
                .map(|(r, n)| ((*r).to_owned(), *n))
                .collect(),
        }
    }

    /// The fleet with node `name` no longer ready.
    fn lose(nodes: &[NodeView], name: &str) -> Vec<NodeView> {
        let mut out = nodes.to_vec();
        for n in out.iter_mut().filter(|n| n.name == name) {
            n.ready = false;
        }
        out
    }

    #[test]
    fn one_node_per_region_and_a_star_of_links() {
        let nodes = vec![
            node("seoul-a", "seoul", 100),
            node("seoul-b", "seoul", 50),
            node("fra-a", "frankfurt", 100),
            node("va-a", "virginia", 100),
        ];
        let plan = place(
            &demand(&[("seoul", 30), ("frankfurt", 10), ("virginia", 5)]),
            &nodes,
            None,
        );
        assert_eq!(
            plan.nodes(),
            BTreeSet::from(["seoul-a", "fra-a", "va-a"]),
            "largest free node per region"
        );
        assert!(plan.shortfalls.is_empty());
        assert_eq!(
            plan.links,
            vec![
                Link {
                    from: "seoul-a".into(),
                    to: "fra-a".into()
                },
                Link {
                    from: "seoul-a".into(),
                    to: "va-a".into()
                },
            ],
            "the busiest region is the root"
        );
    }

    #[test]
    fn a_region_too_big_for_one_node_gets_a_second() {
        let nodes = vec![node("a", "seoul", 60), node("b", "seoul", 50)];
        let plan = place(&demand(&[("seoul", 100)]), &nodes, None);
        assert_eq!(plan.placed_in("seoul"), 100);
        assert_eq!(plan.assignments.len(), 2);
        assert_eq!(
            plan.links,
            vec![Link {
                from: "a".into(),
                to: "b".into()
            }]
        );
    }

    #[test]
    fn shortfalls_say_why() {
        let mut busy = node("a", "seoul", 10);
        busy.reserved_by_others = 8;
        let mut drained = node("f", "frankfurt", 100);
        drained.draining = true;
        let plan = place(
            &demand(&[("seoul", 5), ("frankfurt", 5), ("mars", 1)]),
            &[busy, drained],
            None,
        );
        assert_eq!(plan.placed_in("seoul"), 2);
        let reasons: Vec<_> = plan
            .shortfalls
            .iter()
            .map(|s| (s.region.as_str(), s.missing, s.reason))
            .collect();
        assert_eq!(
            reasons,
            vec![
                ("frankfurt", 5, ShortfallReason::NoNodesInRegion),
                ("mars", 1, ShortfallReason::NoNodesInRegion),
                ("seoul", 3, ShortfallReason::RegionFull),
            ]
        );
    }

    #[test]
    fn losing_a_node_moves_only_its_people() {
        let nodes = vec![
            node("s1", "seoul", 40),
            node("s2", "seoul", 40),
            node("s3", "seoul", 40),
            node("f1", "frankfurt", 40),
        ];
        let d = demand(&[("seoul", 70), ("frankfurt", 20)]);
        let before = place(&d, &nodes, None);
        assert_eq!(before.placed_in("seoul"), 70);
        let lost = before
            .assignments
            .iter()
            .find(|a| a.region == "seoul")
            .map(|a| a.node.clone())
            .expect("a seoul node");
        let after = place(&d, &lose(&nodes, &lost), Some(&before));
        assert_eq!(after.placed_in("seoul"), 70);
        assert!(!after.nodes().contains(lost.as_str()));
        for a in &before.assignments {
            if a.node != lost {
                assert!(
                    after
                        .assignments
                        .iter()
                        .any(|b| b.node == a.node && b.participants >= a.participants),
                    "nobody on {} moves: {after:?}",
                    a.node
                );
            }
        }
    }

    #[test]
    fn a_region_that_lost_its_nodes_is_served_from_the_nearest() {
        let mut nodes = vec![
            node("seoul-a", "seoul", 100),
            node("fra-a", "frankfurt", 100),
            node("va-a", "virginia", 100),
            node("syd-a", "sydney", 100),
        ];
        let d = demand(&[("seoul", 6), ("frankfurt", 10), ("virginia", 4)]);
        let distances: Distances = "seoul:virginia=180,seoul:frankfurt=230"
            .parse()
            .expect("table");
        let before = place_with(&d, &nodes, None, &distances);
        nodes[0].ready = false;
        let after = place_with(&d, &nodes, Some(&before), &distances);
        assert!(after.shortfalls.is_empty(), "{after:?}");
        assert_eq!(after.placed_in("seoul"), 6);
        let va = after
            .assignments
            .iter()
            .find(|a| a.node == "va-a")
            .expect("virginia");
        assert_eq!((va.participants, va.own()), (10, 4));
        assert_eq!(va.serves, BTreeMap::from([("seoul".to_owned(), 6)]));
        assert_eq!(
            after.nodes(),
            BTreeSet::from(["fra-a", "va-a"]),
            "no idle region is added"
        );
        // With no table, the meeting's largest region serves them.
        let unknown = place_with(&d, &nodes, Some(&before), &Distances::default());
        let fra = unknown
            .assignments
            .iter()
            .find(|a| a.node == "fra-a")
            .expect("frankfurt");
        assert_eq!(fra.serves.get("seoul"), Some(&6));
        // Back home once seoul has a ready node again.
        nodes[0].ready = true;
        let home = place_with(&d, &nodes, Some(&after), &distances);
        assert!(home.assignments.iter().all(|a| a.serves.is_empty()));
        assert_eq!(home, before);
        // A region nobody runs nodes in is a shortfall, not served from elsewhere.
        let mars = place_with(
            &demand(&[("mars", 3), ("seoul", 1)]),
            &nodes,
            None,
            &distances,
        );
        assert_eq!(mars.shortfalls.len(), 1);
        assert_eq!(mars.placed_in("mars"), 0);
    }

    #[test]
    fn draining_nodes_keep_their_share_but_get_no_more() {
        let mut old = node("old", "seoul", 100);
        old.draining = true;
        let nodes = vec![old, node("new", "seoul", 100)];
        let d = demand(&[("seoul", 30)]);
        let previous = Plan {
            assignments: vec![Assignment {
                region: "seoul".into(),
                node: "old".into(),
                participants: 20,
                ..Assignment::default()
            }],
            ..Plan::default()
        };
        let plan = place(&d, &nodes, Some(&previous));
        assert!(plan.assignments.contains(&Assignment {
            region: "seoul".into(),
            node: "old".into(),
            participants: 20,
            ..Assignment::default()
        }));
        assert_eq!(plan.placed_in("seoul"), 30);
    }

    fn arb_fleet() -> impl Strategy<Value = (Vec<NodeView>, Demand)> {
        let regions = ["seoul", "frankfurt", "virginia", "sydney", "saopaulo"];
        let nodes = prop::collection::vec(
            (
                0..regions.len(),
                1u32..200,
                0u32..150,
                any::<bool>(),
                any::<bool>(),
            ),
            0..24,
        )
        .prop_map(move |v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (r, cap, other, ready, draining))| NodeView {
                    name: format!("n{i:02}"),
                    region: regions[r].into(),
                    ready: ready || i % 3 == 0,
                    draining: draining && i % 4 == 0,
                    capacity: cap,
                    reserved_by_others: other.min(cap),
                })
                .collect::<Vec<_>>()
        });
        let demand = prop::collection::btree_map(
            prop::sample::select(regions.to_vec()).prop_map(str::to_owned),
            0u32..400,
            0..5,
        )
        .prop_map(|per_region| Demand {
            meeting: "ns/m".into(),
            per_region,
        });
        (nodes, demand)
    }

    proptest! {
        #[test]
        fn plans_respect_capacity_serve_every_region_and_form_a_tree((nodes, d) in arb_fleet()) {
            let plan = place(&d, &nodes, None);
            // Same input, same plan.
            prop_assert_eq!(&plan, &place(&d, &nodes, None));
            // No node beyond capacity; only ready, non-draining nodes in the right region.
            for a in &plan.assignments {
                let n = nodes.iter().find(|n| n.name == a.node).expect("known node");
                prop_assert!(n.ready && !n.draining);
                prop_assert_eq!(&n.region, &a.region);
                prop_assert!(a.participants + n.reserved_by_others <= n.capacity);
                prop_assert!(a.participants > 0);
            }
            // Every region with participants is served, or its shortfall is explained exactly.
            for (region, &want) in &d.per_region {
                let missing = plan.shortfalls.iter().filter(|s| &s.region == region).map(|s| s.missing).sum::<u32>();
                prop_assert_eq!(plan.placed_in(region) + missing, want);
                let own: Vec<&NodeView> = nodes.iter()
                    .filter(|n| &n.region == region && n.ready && !n.draining)
                    .collect();
                if missing > 0 && !own.is_empty() {
                    let room: u32 = own.iter().map(|n| n.free()).sum();
                    prop_assert_eq!(room, plan.placed_in(region), "short only when the region is full");
                }
                if missing > 0 && own.is_empty() && nodes.iter().any(|n| &n.region == region) {
                    // Served from elsewhere as far as anywhere had room.
                    let spare: u32 = nodes.iter()
                        .filter(|n| n.ready && !n.draining)
                        .map(|n| n.free() - plan.assignments.iter().filter(|a| a.node == n.name).map(|a| a.participants).sum::<u32>())
                        .sum();
                    prop_assert_eq!(spare, 0, "a region without nodes is short only when no node has room");
                }
            }
            // The links form a tree spanning exactly the chosen nodes.
            let chosen = plan.nodes();
            prop_assert_eq!(plan.links.len(), chosen.len().saturating_sub(1));
            let mut reached: BTreeSet<&str> = BTreeSet::new();
            let has_parent: BTreeSet<&str> = plan.links.iter().map(|l| l.to.as_str()).collect();
            let roots: Vec<&str> = chosen.iter().copied().filter(|n| !has_parent.contains(n)).collect();
            if !chosen.is_empty() {
                prop_assert_eq!(roots.len(), 1);
                let mut stack = vec![roots[0]];
                while let Some(n) = stack.pop() {
                    prop_assert!(reached.insert(n), "a cycle through {}", n);
                    stack.extend(plan.links.iter().filter(|l| l.from == n).map(|l| l.to.as_str()));
                }
            }
            prop_assert_eq!(reached, chosen);
        }

        #[test]
        fn node_loss_moves_only_the_lost_nodes_people((nodes, d) in arb_fleet(), pick in any::<prop::sample::Index>()) {
            let before = place(&d, &nodes, None);
            if before.assignments.is_empty() {
                return Ok(());
            }
            let lost = before.assignments[pick.index(before.assignments.len())].node.clone();
            let after = place(&d, &lose(&nodes, &lost), Some(&before));
            prop_assert!(!after.nodes().contains(lost.as_str()));
            for a in before.assignments.iter().filter(|a| a.node != lost) {
                prop_assert!(
                    after.assignments.iter().any(|b| b.node == a.node && b.participants >= a.participants),
                    "{:?} lost people: {:?}", a, after
                );
            }
        }

        #[test]
        fn replanning_with_nothing_lost_changes_nothing((nodes, d) in arb_fleet()) {
            let plan = place(&d, &nodes, None);
            let again = place(&d, &nodes, Some(&plan));
            prop_assert_eq!(plan, again);
        }
    }
}
