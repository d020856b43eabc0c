//! Meeting YAML as `operator local` reads it from its folder: parsed, checked against the
//! CRD's rules (the same CEL the API server runs), and each Meeting that passes is scheduled
//! and placed on a fixed fleet of three regions, with a previous plan to start from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moim_operator::control::meeting::{ScheduleState, schedule_state};
use moim_operator::placement::{Demand, NodeView, place_with};
use moim_operator::regions::Distances;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (meetings, _problems) = moim_operator::local::parse_meetings(text);
    let nodes: Vec<NodeView> = [("seoul-0", "seoul"), ("fra-0", "frankfurt"), ("va-0", "virginia")]
        .into_iter()
        .map(|(name, region)| NodeView {
            name: name.into(),
            region: region.into(),
            ready: true,
            draining: false,
            capacity: 100,
            reserved_by_others: 10,
        })
        .collect();
    let mut distances = Distances::default();
    distances.set("seoul", "frankfurt", 230);
    distances.set("seoul", "virginia", 180);
    let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("a valid time");
    for m in meetings {
        let state = schedule_state(&m, now, k8s_openapi::jiff::SignedDuration::from_mins(5));
        if matches!(state, ScheduleState::Ended) {
            continue;
        }
        let demand = Demand {
            meeting: "default/fuzzed".into(),
            per_region: m.spec.participants.per_region(),
        };
        let first = place_with(&demand, &nodes, None, &distances);
        let again = place_with(&demand, &nodes, Some(&first), &distances);
        // Placing again from its own plan, with nothing changed, keeps it.
        assert_eq!(first.nodes(), again.nodes());
    }
});
