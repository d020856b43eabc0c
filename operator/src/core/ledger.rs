//! The reservation ledger: which meeting holds how many participants on which node.
//!
//! Meetings are reconciled concurrently, and two of them placed at once from the same stale
//! view could both take a node's last free seats. The ledger is the one place reservations are
//! counted: a placement reads it and records its plan under one lock, so the next placement
//! sees it. It is seeded from every Meeting's status at start-up (the plans in force), then kept
//! by the reconciler. It holds no I/O, like linkerd's policy index.

use crate::crd::{MediaNode, MediaNodePhase, Meeting};
use crate::placement::{Assignment, Link, NodeView, Plan};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use std::collections::{BTreeSet, HashMap};

/// Reservations of every placed meeting.
#[derive(Debug, Default)]
pub struct Ledger {
    plans: HashMap<String, Plan>,
    reserved: HashMap<String, u32>,
    meetings_on: HashMap<String, BTreeSet<String>>,
}

impl Ledger {
    /// The plan in force for `meeting` (`namespace/name`).
    pub fn plan(&self, meeting: &str) -> Option<&Plan> {
        self.plans.get(meeting)
    }

    /// Records `plan` as the one in force for `meeting`, replacing any earlier one.
    pub fn record(&mut self, meeting: &str, plan: Plan) {
        self.forget(meeting);
        for a in &plan.assignments {
            *self.reserved.entry(a.node.clone()).or_default() += a.participants;
            self.meetings_on
                .entry(a.node.clone())
                .or_default()
                .insert(meeting.to_owned());
        }
        self.plans.insert(meeting.to_owned(), plan);
    }

    /// Drops `meeting`'s reservations; returns the plan that was in force.
    pub fn forget(&mut self, meeting: &str) -> Option<Plan> {
        let plan = self.plans.remove(meeting)?;
        for a in &plan.assignments {
            if let Some(r) = self.reserved.get_mut(&a.node) {
                *r = r.saturating_sub(a.participants);
            }
            if let Some(set) = self.meetings_on.get_mut(&a.node) {
                set.remove(meeting);
                if set.is_empty() {
                    self.meetings_on.remove(&a.node);
                }
            }
        }
        Some(plan)
    }

    /// Participants reserved on `node` by every meeting.
    pub fn reserved_on(&self, node: &str) -> u32 {
        self.reserved.get(node).copied().unwrap_or(0)
    }

    /// Meetings with a share on `node`.
    pub fn meetings_on(&self, node: &str) -> impl Iterator<Item = &str> {
        self.meetings_on
            .get(node)
            .into_iter()
            .flat_map(|s| s.iter().map(String::as_str))
    }

    /// Meetings placed short of their demand in some region: a node that becomes ready may
    /// take what is missing.
    pub fn short(&self) -> impl Iterator<Item = &str> {
        self.plans
            .iter()
            .filter(|(_, p)| !p.shortfalls.is_empty())
            .map(|(m, _)| m.as_str())
    }

    /// Meetings whose people of `region` are served from a node elsewhere (the region lost its
    /// nodes): a node of `region` that becomes ready takes them home.
    pub fn served_away(&self, region: &str) -> impl Iterator<Item = &str> {
        self.plans
            .iter()
            .filter(move |(_, p)| p.assignments.iter().any(|a| a.serves.contains_key(region)))
            .map(|(m, _)| m.as_str())
    }

    /// Number of meetings placed.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    /// No meeting placed.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// The fleet as placement sees it when placing `meeting` at `now`: a node is ready when it
    /// says so and reported within `stale_after`.
    pub fn views<'a>(
        &self,
        meeting: &str,
        nodes: impl IntoIterator<Item = &'a MediaNode>,
        now: Timestamp,
        stale_after: SignedDuration,
    ) -> Vec<NodeView> {
        let own = self.plans.get(meeting);
        nodes
            .into_iter()
            .filter_map(|n| {
                let name = n.metadata.name.clone()?;
                let status = n.status.as_ref();
                let phase = status.and_then(|s| s.phase);
                let fresh = status
                    .and_then(|s| s.last_report.as_ref())
                    .is_some_and(|t| now.duration_since(t.0) <= stale_after)
                    && n.serving();
                let held = own
                    .map(|p| {
                        p.assignments
                            .iter()
                            .filter(|a| a.node == name)
                            .map(|a| a.participants)
                            .sum::<u32>()
                    })
                    .unwrap_or(0);
                Some(NodeView {
                    reserved_by_others: self.reserved_on(&name).saturating_sub(held),
                    // An evacuating node keeps nothing: placement moves its shares.
                    ready: fresh
                        && !n.spec.evacuate
                        && matches!(
                            phase,
                            Some(MediaNodePhase::Ready | MediaNodePhase::Draining)
                        ),
                    draining: n.spec.drain || phase == Some(MediaNodePhase::Draining),
                    capacity: n.spec.capacity,
                    region: n.spec.region.clone(),
                    name,
                })
            })
            .collect()
    }
}

/// The plan a Meeting's status records (what was in force when the operator last wrote it).
pub fn plan_from_status(meeting: &Meeting) -> Option<Plan> {
    let status = meeting.status.as_ref()?;
    if status.nodes.is_empty() {
        return None;
    }
    let mut assignments: Vec<Assignment> = status
        .nodes
        .iter()
        .map(|n| Assignment {
            region: n.region.clone(),
            node: n.node.clone(),
            participants: n.participants,
            serves: n.serves.clone(),
        })
        .collect();
    assignments.sort();
    let mut links: Vec<Link> = status
        .links
        .iter()
        .map(|l| Link {
            from: l.from.clone(),
            to: l.to.clone(),
        })
        .collect();
    links.sort();
    Some(Plan {
        assignments,
        links,
        shortfalls: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(shares: &[(&str, u32)]) -> Plan {
        Plan {
            assignments: shares
                .iter()
                .map(|(n, p)| Assignment {
                    region: "r".into(),
                    node: (*n).into(),
                    participants: *p,
                    ..Assignment::default()
                })
                .collect(),
            ..Plan::default()
        }
    }

    #[test]
    fn recording_replaces_and_forgetting_frees() {
        let mut l = Ledger::default();
        l.record("ns/a", plan(&[("n1", 10), ("n2", 5)]));
        l.record("ns/b", plan(&[("n1", 7)]));
        assert_eq!(l.reserved_on("n1"), 17);
        l.record("ns/a", plan(&[("n2", 9)]));
        assert_eq!(l.reserved_on("n1"), 7);
        assert_eq!(l.reserved_on("n2"), 9);
        assert_eq!(l.meetings_on("n1").collect::<Vec<_>>(), vec!["ns/b"]);
        l.forget("ns/b");
        assert_eq!(l.reserved_on("n1"), 0);
        assert_eq!(l.meetings_on("n1").count(), 0);
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn meetings_served_from_another_region_are_listed_by_the_region_away() {
        let mut l = Ledger::default();
        let mut away = plan(&[("seoul-1", 5)]);
        away.assignments[0].serves.insert("frankfurt".into(), 2);
        l.record("ns/a", away);
        l.record("ns/b", plan(&[("seoul-1", 3)]));
        assert_eq!(l.served_away("frankfurt").collect::<Vec<_>>(), vec!["ns/a"]);
        assert_eq!(l.served_away("r").count(), 0);
        l.record("ns/a", plan(&[("seoul-1", 3), ("frankfurt-2", 2)]));
        assert_eq!(l.served_away("frankfurt").count(), 0);
    }

    #[test]
    fn meetings_placed_short_are_listed_until_placed_in_full() {
        use crate::core::placement::{Shortfall, ShortfallReason};
        let mut l = Ledger::default();
        let mut short = plan(&[]);
        short.shortfalls.push(Shortfall {
            region: "r".into(),
            missing: 3,
            reason: ShortfallReason::NoNodesInRegion,
        });
        l.record("ns/a", short);
        l.record("ns/b", plan(&[("n1", 4)]));
        assert_eq!(l.short().collect::<Vec<_>>(), vec!["ns/a"]);
        l.record("ns/a", plan(&[("n2", 3)]));
        assert_eq!(l.short().count(), 0);
    }
}
