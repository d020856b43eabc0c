//! The bodies of the admin and join APIs, parsed and checked as their handlers do: a room
//! assignment and a room move (a media node's admin API), a join and a rejoin request (the
//! operator's join API); a join that passes its checks is placed on a fixed meeting of three
//! regions. The first byte picks which.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moim_operator::api::RejoinRequest;
use moim_operator::crd::{MediaNode, Meeting};
use moim_operator::join::{JoinRequest, choose, validate};
use moim_operator::regions::Distances;
use moim_wire::admin::{RoomAssignment, RoomMove};
use std::sync::{Arc, LazyLock};

static MEETING: LazyLock<Meeting> = LazyLock::new(|| {
    let (mut found, problems) = moim_operator::local::parse_meetings(include_str!(
        "../../operator/examples/meetings/standup.yaml"
    ));
    assert!(problems.is_empty(), "{problems:?}");
    found.remove(0)
});

static NODES: LazyLock<Vec<Arc<MediaNode>>> = LazyLock::new(|| {
    [("seoul-0", "seoul"), ("fra-0", "frankfurt"), ("va-0", "virginia")]
        .into_iter()
        .map(|(n, r)| Arc::new(MediaNode::in_region(n, "default", r, 100)))
        .collect()
});

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 4 {
        0 => {
            if let Ok(a) = serde_json::from_slice::<RoomAssignment>(body) {
                let _ = a.validate("default.standup");
            }
        }
        1 => {
            if let Ok(m) = serde_json::from_slice::<RoomMove>(body) {
                let _ = m.validate();
            }
        }
        2 => {
            if let Ok(req) = serde_json::from_slice::<JoinRequest>(body)
                && validate(&req).is_ok()
            {
                let now = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000)
                    .expect("a valid time");
                let _ = choose(&MEETING, &NODES, &req, now, 600, &Distances::default(), &[]);
            }
        }
        _ => {
            let _ = serde_json::from_slice::<RejoinRequest>(body);
        }
    }
});
