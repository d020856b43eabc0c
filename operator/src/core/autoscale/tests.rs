//! The autoscaler's decisions: single looks at hand-made pools, then whole scenarios replayed
//! in fake time on the simulated fleet.

use super::sim::{self, FleetEvent, FleetModel, Outcome, Scenario, SimMeeting};
use super::*;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_767_225_600 + secs).expect("in range")
}

fn node(name: &str, state: NodeState, participants: u32) -> PoolNode {
    PoolNode {
        name: name.into(),
        state,
        draining: false,
        drain_started: None,
        created: at(0),
        usage: NodeUsage {
            participants,
            ..NodeUsage::default()
        },
        reserved: participants,
    }
}

fn draining(mut n: PoolNode, since: i64) -> PoolNode {
    n.draining = true;
    n.drain_started = Some(at(since));
    n
}

fn snapshot(now: i64, nodes: Vec<PoolNode>) -> PoolSnapshot {
    PoolSnapshot {
        now: at(now),
        nodes,
        upcoming: Vec::new(),
        unplaced: 0,
        scheduled_reserved: 0,
    }
}

fn policy() -> PoolPolicy {
    PoolPolicy {
        min_nodes: 1,
        max_nodes: 10,
        ..PoolPolicy::default()
    }
}

#[test]
fn demand_plus_headroom_sets_the_node_count() {
    // 900 participants + 10% (90, less than the 100 floor) = 1000: two nodes of 500.
    let d = decide(
        &policy(),
        &snapshot(
            0,
            vec![
                node("a", NodeState::Ready, 450),
                node("b", NodeState::Ready, 450),
            ],
        ),
        &mut PoolMemory::default(),
    );
    assert_eq!((d.desired, d.forecast.headroom), (2, 100));
    assert!(d.is_idle(), "{d:?}");
    // One more participant tips it over.
    let d = decide(
        &policy(),
        &snapshot(
            0,
            vec![
                node("a", NodeState::Ready, 451),
                node("b", NodeState::Ready, 450),
            ],
        ),
        &mut PoolMemory::default(),
    );
    assert_eq!((d.desired, d.create), (3, 1));
}

#[test]
fn rising_demand_is_met_a_start_up_time_ahead() {
    let mut memory = PoolMemory::default();
    let mut last = ScaleDecision::default();
    // 20 participants a minute for four minutes, 300 → 380.
    for i in 0..=16 {
        let p = 300 + i * 5;
        last = decide(
            &policy(),
            &snapshot(i64::from(i) * 15, vec![node("a", NodeState::Ready, p)]),
            &mut memory,
        );
    }
    assert!(
        (last.forecast.growth_per_minute - 20.0).abs() < 0.5,
        "{last:?}"
    );
    // 380 now, 45 more within the 135 s lead, 100 headroom: 525 needs a second node although
    // 380 + 100 alone would fit on one.
    assert_eq!(last.forecast.target, 525, "{last:?}");
    assert_eq!(last.create, 1);
}

#[test]
fn a_scheduled_meeting_counts_once_its_placement_is_within_the_lead_time() {
    let mut snap = snapshot(0, vec![node("a", NodeState::Ready, 101)]);
    snap.upcoming = vec![Upcoming {
        place_at: at(200),
        participants: 300,
    }];
    let d = decide(&policy(), &snap, &mut PoolMemory::default());
    assert_eq!((d.forecast.upcoming, d.create), (0, 0), "too early: {d:?}");
    snap.now = at(100);
    let d = decide(&policy(), &snap, &mut PoolMemory::default());
    assert_eq!((d.forecast.upcoming, d.create), (300, 1), "{d:?}");
}

#[test]
fn scaling_out_takes_draining_nodes_back_before_creating() {
    let snap = snapshot(
        0,
        vec![
            node("a", NodeState::Ready, 480),
            draining(node("b", NodeState::Ready, 40), -60),
            draining(node("c", NodeState::Ready, 90), -60),
        ],
    );
    let d = decide(&policy(), &snap, &mut PoolMemory::default());
    // 610 + 100 headroom wants two nodes: the busier draining one comes back.
    assert_eq!(d.undrain, vec!["c".to_string()]);
    assert_eq!(d.create, 0);
    assert!(d.drain.is_empty() && d.delete.is_empty(), "{d:?}");
}

#[test]
fn scaling_in_waits_for_the_delay_then_drains_the_least_loaded() {
    let p = policy();
    let mut memory = PoolMemory::default();
    let busy = |n: u32| {
        vec![
            node("a", NodeState::Ready, n),
            node("b", NodeState::Ready, n / 2),
            node("c", NodeState::Ready, n),
        ]
    };
    assert!(decide(&p, &snapshot(0, busy(400)), &mut memory).is_idle());
    // Load falls to fit one node; nothing happens for the scale-down delay.
    let mut t = 15;
    while t < 600 {
        let d = decide(&p, &snapshot(t, busy(100)), &mut memory);
        assert!(d.is_idle(), "at {t}: {d:?}");
        t += 15;
    }
    let d = decide(&p, &snapshot(615, busy(100)), &mut memory);
    assert_eq!(d.desired, 1);
    // b is the least loaded; then a, the first name among equals.
    assert_eq!(d.drain, vec!["b".to_string(), "a".to_string()]);
    assert!(d.delete.is_empty() && d.migrate.is_empty());
}

#[test]
fn starting_nodes_go_before_anyone_drains() {
    let mut memory = PoolMemory::default();
    let snap = snapshot(
        0,
        vec![
            node("a", NodeState::Ready, 10),
            node("b", NodeState::Ready, 5),
            node("new", NodeState::Starting, 0),
        ],
    );
    let d = decide(
        &PoolPolicy {
            scale_down_delay: SignedDuration::ZERO,
            ..policy()
        },
        &snap,
        &mut memory,
    );
    assert_eq!(d.delete, vec!["new".to_string()]);
    assert_eq!(d.drain, vec!["b".to_string()]);
}

#[test]
fn a_draining_node_is_deleted_only_once_empty_and_migrated_at_its_deadline() {
    let p = policy();
    let nodes = |hosted: u32| {
        vec![
            node("a", NodeState::Ready, 200),
            draining(node("old", NodeState::Ready, hosted), 0),
        ]
    };
    let d = decide(&p, &snapshot(1800, nodes(12)), &mut PoolMemory::default());
    assert!(d.delete.is_empty() && d.migrate.is_empty(), "{d:?}");
    // Reserved but nobody connected yet still counts as hosting.
    let mut reserved_only = nodes(0);
    reserved_only[1].reserved = 8;
    let d = decide(
        &p,
        &snapshot(1800, reserved_only),
        &mut PoolMemory::default(),
    );
    assert!(d.delete.is_empty(), "{d:?}");
    let d = decide(&p, &snapshot(3600, nodes(12)), &mut PoolMemory::default());
    assert_eq!(d.migrate, vec!["old".to_string()]);
    assert!(d.delete.is_empty());
    let d = decide(&p, &snapshot(1800, nodes(0)), &mut PoolMemory::default());
    assert_eq!(d.delete, vec!["old".to_string()]);
}

#[test]
fn a_node_lost_while_draining_is_deleted_and_replaced() {
    let snap = snapshot(
        100,
        vec![
            node("a", NodeState::Ready, 300),
            draining(node("gone", NodeState::Lost, 150), 0),
        ],
    );
    let d = decide(&policy(), &snap, &mut PoolMemory::default());
    assert_eq!(d.delete, vec!["gone".to_string()]);
    // Its people come back: 300 + 100 headroom fits a, and nothing waits on the dead node.
    assert_eq!(d.create, 0);
}

#[test]
fn min_and_max_bound_the_pool() {
    let p = PoolPolicy {
        min_nodes: 2,
        max_nodes: 3,
        ..policy()
    };
    let d = decide(&p, &snapshot(0, vec![]), &mut PoolMemory::default());
    assert_eq!((d.desired, d.create), (2, 2));
    let full: Vec<PoolNode> = (0..3)
        .map(|i| node(&format!("n{i}"), NodeState::Ready, 500))
        .collect();
    let d = decide(&p, &snapshot(0, full), &mut PoolMemory::default());
    assert_eq!((d.desired, d.create), (3, 0));
    // A max below the min: the max wins.
    let d = decide(
        &PoolPolicy {
            min_nodes: 5,
            max_nodes: 1,
            ..policy()
        },
        &snapshot(0, vec![]),
        &mut PoolMemory::default(),
    );
    assert_eq!(d.desired, 1);
}

#[test]
fn tracks_and_egress_can_be_what_runs_out_first() {
    let mut p = policy();
    p.capacity.published_tracks = 100;
    p.capacity.egress_bps = 1_000_000_000;
    let mut n = node("a", NodeState::Ready, 100);
    n.usage.published_tracks = 180;
    let d = decide(
        &p,
        &snapshot(0, vec![n.clone()]),
        &mut PoolMemory::default(),
    );
    // 180 tracks, grown by the same factor as participants (200/100): four nodes.
    assert_eq!(d.desired, 4, "{d:?}");
    n.usage.published_tracks = 0;
    n.usage.egress_bps = 1_500_000_000;
    let d = decide(&p, &snapshot(0, vec![n]), &mut PoolMemory::default());
    assert_eq!(d.desired, 3, "{d:?}");
}

// Scenarios in fake time.

fn ready_capacity_at(o: &Outcome, region: &str, t: i64) -> (u32, u32) {
    let s = o
        .samples
        .iter()
        .rev()
        .find(|s| s.region == region && s.at <= t)
        .expect("a sample");
    (s.ready * 500, s.demand)
}

fn summary(o: &Outcome) -> String {
    format!(
        "rejected {} cut {} lost {} migrations {} joins {} drains {} created {} peak {} ratio {:.2}",
        o.rejected_joins,
        o.meetings_cut,
        o.meetings_lost_to_failures,
        o.migrations,
        o.joins,
        o.drains,
        o.created,
        o.peak_nodes,
        o.node_minutes_ratio
    )
}

fn assert_nobody_turned_away(o: &Outcome) {
    assert_eq!(o.rejected_joins, 0, "joins turned away: {}", summary(o));
    assert_eq!(o.meetings_cut, 0, "meetings cut: {}", summary(o));
    assert!(o.joins > 0);
}

#[test]
fn a_fivefold_surge_finds_its_capacity_ready() {
    let o = sim::run(&sim::named("surge").expect("known"), &FleetModel::default());
    assert_nobody_turned_away(&o);
    // Demand went from about 1,000 to 5,000 and the pool followed.
    let peak = o.samples.iter().map(|s| s.ready).max().unwrap_or(0);
    assert!(peak >= 11, "peak ready nodes {peak}");
    // The same surge with forecasting switched off (no growth, no headroom, slowest starts)
    // turns people away: the forecast is what keeps them in.
    let blind = FleetModel {
        policy: PoolPolicy {
            headroom_participants: 0,
            headroom_percent: 0,
            node_startup: SignedDuration::ZERO,
            interval: SignedDuration::from_secs(15),
            ..PoolPolicy::default()
        },
        ..FleetModel::default()
    };
    let mut no_growth = sim::named("surge").expect("known");
    no_growth.name = "surge-blind".into();
    let o = sim::run(&no_growth, &blind);
    assert!(o.rejected_joins > 0, "{}", summary(&o));
}

#[test]
fn a_scheduled_webinar_finds_its_nodes_ready_before_it_is_placed() {
    let model = FleetModel::default();
    let o = sim::run(&sim::named("webinar").expect("known"), &model);
    assert_nobody_turned_away(&o);
    // Just before the webinar is placed (10 minutes before 1:00), the ready nodes already
    // have room for it on top of the ordinary meetings.
    let (room, demand) = ready_capacity_at(&o, "frankfurt", 3000 - 15);
    assert!(
        room >= demand + 300,
        "room {room} for demand {demand} + 300"
    );
    // The same 300 people unannounced: at that moment the pool has no room set aside for them.
    let mut unannounced = sim::named("webinar").expect("known");
    for m in &mut unannounced.meetings {
        m.scheduled = false;
    }
    let o = sim::run(&unannounced, &model);
    let (room, demand) = ready_capacity_at(&o, "frankfurt", 3000 - 15);
    assert!(room < demand + 300, "room {room} for demand {demand} + 300");
}

#[test]
fn each_region_follows_its_own_day() {
    let o = sim::run(
        &sim::named("follow-the-sun").expect("known"),
        &FleetModel::default(),
    );
    assert_nobody_turned_away(&o);
    for (region, noon) in [("seoul", 12), ("frankfurt", 20), ("virginia", 26)] {
        let busy = |h: i64| {
            o.samples
                .iter()
                .filter(|s| s.region == region && s.at / 3600 == h % 24)
                .map(|s| s.ready + s.draining)
                .max()
                .unwrap_or(0)
        };
        // 3,000 participants at its noon; 150 at its 3 a.m.
        assert!(busy(noon) >= 7, "{region} at noon: {}", busy(noon));
        assert!(
            busy(noon + 15) <= 2,
            "{region} at night: {}",
            busy(noon + 15)
        );
    }
    assert!(o.node_minutes_ratio <= 1.3, "{}", o.node_minutes_ratio);
}

fn flapping() -> Scenario {
    // 1,000 and 1,600 participants in turn, every four minutes, for two hours, in meetings
    // of three to six minutes (so the load really flaps).
    let curve = |t: i64| {
        // A minute up, three high, a minute down, three low.
        let x = (t.rem_euclid(480)) as f64 / 60.0;
        let up = x.clamp(0.0, 1.0) - (x - 4.0).clamp(0.0, 1.0);
        1000.0 + 600.0 * up
    };
    Scenario {
        name: "flapping".into(),
        regions: vec!["seoul".into()],
        warmup: 1800,
        duration: 7200,
        meetings: sim::meetings_lasting("seoul", (180, 360), -1800, 7200, 9, curve),
        events: Vec::new(),
    }
}

#[test]
fn flapping_load_does_not_make_nodes_flap() {
    let o = sim::run(&flapping(), &FleetModel::default());
    assert_nobody_turned_away(&o);
    assert!(o.drains <= 1, "{}", summary(&o));
    // After the first hour the pool holds one size through every swing.
    let sizes: Vec<u32> = o
        .samples
        .iter()
        .filter(|s| s.at >= 3600)
        .map(|s| s.ready + s.starting + s.draining)
        .collect();
    assert_eq!(sizes.iter().min(), sizes.iter().max(), "{}", summary(&o));
    // Without the scale-down delay the same load drains and takes back nodes over and over.
    let eager = FleetModel {
        policy: PoolPolicy {
            scale_down_delay: SignedDuration::ZERO,
            ..PoolPolicy::default()
        },
        ..FleetModel::default()
    };
    let o = sim::run(&flapping(), &eager);
    assert!(o.drains >= 10, "eager: {}", summary(&o));
}

#[test]
fn a_node_that_dies_while_draining_is_removed_and_its_people_rejoin() {
    // 2,500 participants for an hour, then 400: nodes drain; one dies while draining.
    let curve = |t: i64| if t < 3600 { 2500.0 } else { 400.0 };
    let scenario = Scenario {
        name: "dies-while-draining".into(),
        regions: vec!["seoul".into()],
        warmup: 1800,
        duration: 3 * 3600,
        meetings: sim::meetings_following("seoul", -1800, 3 * 3600, 11, curve),
        events: vec![FleetEvent::KillDrainingNode {
            at: 3600 + 1500,
            region: "seoul".into(),
        }],
    };
    let o = sim::run(&scenario, &FleetModel::default());
    assert!(o.drains >= 2, "{}", summary(&o));
    assert!(
        o.meetings_lost_to_failures >= 1,
        "the killed node hosted someone"
    );
    // Its people found room again at once, and nothing else was cut.
    assert_nobody_turned_away(&o);
    // The pool shrank back to what 400 people need: no node waits on the dead one.
    let last = o.samples.last().expect("samples");
    assert_eq!(last.lost, 0, "{last:?}");
    assert!(last.ready + last.starting <= 2, "{last:?}");
}

#[test]
fn min_and_max_hold_through_a_surge() {
    let model = FleetModel {
        policy: PoolPolicy {
            min_nodes: 3,
            max_nodes: 6,
            ..PoolPolicy::default()
        },
        ..FleetModel::default()
    };
    let o = sim::run(&sim::named("surge").expect("known"), &model);
    for s in &o.samples {
        assert!(s.ready + s.starting <= 6, "{s:?}");
        assert!(s.ready + s.starting >= 3, "{s:?}");
    }
    // At the cap the pool is full and says so by turning joins away, never by cutting.
    assert!(o.rejected_joins > 0);
    assert_eq!(o.meetings_cut, 0);
}

#[test]
fn one_scheduled_meeting_end_to_end() {
    // The smallest run: one scheduled meeting on a min-1 pool.
    let scenario = Scenario {
        name: "one".into(),
        regions: vec!["r".into()],
        warmup: 0,
        duration: 1800,
        meetings: vec![SimMeeting {
            region: "r".into(),
            start: 900,
            size: 700,
            join_over: 60,
            duration: 600,
            scheduled: true,
        }],
        events: Vec::new(),
    };
    let o = sim::run(&scenario, &FleetModel::default());
    assert_nobody_turned_away(&o);
    assert_eq!(o.joins, 700);
    assert_eq!(
        o.peak_nodes,
        2,
        "700 + headroom on 500-seat nodes: {}",
        summary(&o)
    );
}

#[test]
fn long_meetings_on_a_draining_node_move_at_the_deadline_and_none_is_cut() {
    // Three-hour meetings: 2,000 participants for an hour, then 500 (nobody leaves early, new
    // ones stop coming). Drained nodes still host people at a 20-minute deadline.
    let curve = |t: i64| if t < 3600 { 2000.0 } else { 500.0 };
    let scenario = Scenario {
        name: "long-meetings".into(),
        regions: vec!["seoul".into()],
        warmup: 1800,
        duration: 4 * 3600,
        meetings: sim::meetings_lasting("seoul", (3 * 3600, 4 * 3600), -1800, 4 * 3600, 12, curve),
        events: Vec::new(),
    };
    let model = FleetModel {
        policy: PoolPolicy {
            drain_deadline: SignedDuration::from_mins(20),
            ..PoolPolicy::default()
        },
        ..FleetModel::default()
    };
    let o = sim::run(&scenario, &model);
    assert!(o.migrations > 0, "{}", summary(&o));
    assert_nobody_turned_away(&o);
}

#[test]
fn a_terminating_node_is_neither_capacity_nor_taken_back() {
    let mut leaving = node("leaving", NodeState::Terminating, 300);
    leaving.draining = true;
    let snap = snapshot(7200, vec![node("a", NodeState::Ready, 100), leaving]);
    let d = decide(&policy(), &snap, &mut PoolMemory::default());
    // 400 + 100 fits one node, but `leaving` is no capacity: nothing to undrain, no migration.
    assert!(
        d.undrain.is_empty() && d.migrate.is_empty() && d.delete.is_empty(),
        "{d:?}"
    );
    assert_eq!(d.create, 0);
    let mut gone = node("leaving", NodeState::Terminating, 0);
    gone.draining = true;
    let d = decide(
        &policy(),
        &snapshot(0, vec![node("a", NodeState::Ready, 100), gone]),
        &mut PoolMemory::default(),
    );
    assert_eq!(d.delete, vec!["leaving".to_string()]);
}
