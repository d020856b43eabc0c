//! The CRDs in `crds/` are exactly what the Rust types generate, and their CEL rules refuse
//! bad specs with messages a person understands (evaluated here with kube's client-side CEL,
//! the same rules the API server runs).

use kube::CustomResourceExt;
use moim_operator::crd::{
    ExpectedParticipants, Headroom, MediaNode, MediaNodeSpec, MediaPolicy, MediaPool,
    MediaPoolSpec, Meeting, MeetingMode, MeetingSpec, PoolNodeCapacity, Schedule,
};
use std::collections::BTreeMap;
use std::path::Path;

#[test]
fn crds_folder_matches_the_types() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    for (file, yaml) in moim_operator::crd::crds_yaml().expect("yaml") {
        let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        assert!(
            on_disk == yaml,
            "crds/{file} is out of date: run `cargo run -p moim-operator --bin operator -- crdgen --dir crds`"
        );
    }
}

#[test]
fn crds_have_status_subresource_short_names_and_columns() {
    for crd in [Meeting::crd(), MediaNode::crd(), MediaPool::crd()] {
        let v = &crd.spec.versions[0];
        assert_eq!(crd.spec.group, "media.moim.dev");
        assert_eq!(v.name, "v1alpha1");
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some()
        );
        assert!(
            crd.spec
                .names
                .short_names
                .as_ref()
                .is_some_and(|s| !s.is_empty())
        );
        assert!(
            v.additional_printer_columns
                .as_ref()
                .is_some_and(|c| c.len() >= 3)
        );
    }
}

fn meeting(spec: MeetingSpec) -> Meeting {
    Meeting::new("standup", spec)
}

fn good() -> MeetingSpec {
    MeetingSpec {
        title: "Daily standup".into(),
        mode: MeetingMode::Interactive,
        participants: ExpectedParticipants {
            per_region: Some(BTreeMap::from([
                ("seoul".to_owned(), 12),
                ("frankfurt".to_owned(), 4),
            ])),
            ..Default::default()
        },
        max_participants: Some(60),
        schedule: None,
        media: MediaPolicy::default(),
    }
}

fn refused(m: &Meeting) -> String {
    match m.validate_cel() {
        Ok(()) => panic!("accepted: {:?}", m.spec),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_meeting_passes() {
    meeting(good()).validate_cel().expect("valid");
    let mut webinar = good();
    webinar.mode = MeetingMode::Webinar;
    webinar.participants = ExpectedParticipants {
        total: Some(300),
        regions: Some(vec!["seoul".into(), "virginia".into()]),
        ..Default::default()
    };
    webinar.max_participants = Some(1000);
    webinar.schedule = Some(Schedule {
        start: serde_json::from_str("\"2026-12-01T10:00:00Z\"").expect("time"),
        end: serde_json::from_str("\"2026-12-01T11:00:00Z\"").expect("time"),
    });
    meeting(webinar).validate_cel().expect("valid webinar");
}

#[test]
fn bad_specs_are_refused_with_a_reason() {
    let mut s = good();
    s.schedule = Some(Schedule {
        start: serde_json::from_str("\"2026-12-01T11:00:00Z\"").expect("time"),
        end: serde_json::from_str("\"2026-12-01T10:00:00Z\"").expect("time"),
    });
    assert!(refused(&meeting(s)).contains("schedule.start must be before schedule.end"));

    let mut s = good();
    s.participants.total = Some(10);
    s.participants.regions = Some(vec!["seoul".into()]);
    assert!(refused(&meeting(s)).contains("give either perRegion, or total with regions"));

    let mut s = good();
    s.participants = ExpectedParticipants {
        total: Some(10),
        ..Default::default()
    };
    assert!(refused(&meeting(s)).contains("total and regions go together"));

    let mut s = good();
    s.max_participants = Some(0);
    assert!(refused(&meeting(s)).contains("maxParticipants must be at least 1"));

    let mut s = good();
    s.max_participants = Some(5);
    assert!(
        refused(&meeting(s)).contains("a region expects more participants than maxParticipants")
    );

    let mut s = good();
    s.title = String::new();
    assert!(refused(&meeting(s)).contains("title must be 1 to 200 characters"));

    let mut s = good();
    s.media.max_bitrate_kbps = Some(10);
    assert!(refused(&meeting(s)).contains("maxBitrateKbps below 100"));
}

#[test]
fn immutable_fields_stay_immutable() {
    let old = meeting(good());
    let mut s = good();
    s.mode = MeetingMode::Webinar;
    let err = meeting(s)
        .validate_cel_update(&old)
        .expect_err("mode change refused");
    assert!(err.to_string().contains("mode cannot change"), "{err}");
    let mut s = good();
    s.title = "Renamed".into();
    meeting(s)
        .validate_cel_update(&old)
        .expect("title may change");

    let node = |region: &str| {
        MediaNode::new(
            "seoul-1",
            MediaNodeSpec {
                region: region.into(),
                zone: None,
                pool: None,
                capacity: 500,
                drain: false,
                evacuate: false,
                resources: None,
                priority_class_name: None,
            },
        )
    };
    node("seoul").validate_cel().expect("valid node");
    let err = node("tokyo")
        .validate_cel_update(&node("seoul"))
        .expect_err("region change refused");
    assert!(err.to_string().contains("region cannot change"), "{err}");
}

#[test]
fn total_is_spread_evenly_over_regions() {
    let p = ExpectedParticipants {
        total: Some(10),
        regions: Some(vec!["a".into(), "b".into(), "c".into(), "a".into()]),
        ..Default::default()
    };
    assert_eq!(
        p.per_region(),
        BTreeMap::from([("a".into(), 4), ("b".into(), 3), ("c".into(), 3)])
    );
}

/// The CRD manifests are valid `apiextensions.k8s.io/v1` objects by Kubernetes' own schema
/// (`kubernetes-validate` from PyPI; `.ci/run` installs it).
#[test]
fn crds_pass_kubernetes_schema_validation() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds");
    let files: Vec<_> = moim_operator::crd::crds_yaml()
        .expect("yaml")
        .into_iter()
        .map(|(f, _)| dir.join(f))
        .collect();
    let out = std::process::Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate runs (pip install kubernetes-validate)");
    assert!(
        out.status.success(),
        "kubernetes-validate refused the CRDs:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The example Meetings shipped for users parse as Meetings and pass the CRD's rules.
#[test]
fn example_meetings_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/meetings");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).expect("examples folder") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read");
        let m: Meeting =
            serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        m.validate_cel()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        seen += 1;
    }
    assert!(seen >= 2);
}

fn pool(spec: MediaPoolSpec) -> MediaPool {
    MediaPool::new("seoul", spec)
}

fn good_pool() -> MediaPoolSpec {
    serde_json::from_value(serde_json::json!({"region": "seoul"})).expect("defaults")
}

#[test]
fn media_pool_defaults_and_rules() {
    let p = good_pool();
    assert_eq!((p.min_nodes, p.max_nodes), (1, 10));
    assert_eq!(p.node_capacity, PoolNodeCapacity::default());
    assert_eq!(p.headroom, Headroom::default());
    assert_eq!(
        (
            p.scale_down_delay_seconds,
            p.drain_deadline_seconds,
            p.node_startup_seconds
        ),
        (600, 3600, 60)
    );
    pool(p.clone()).validate_cel().expect("defaults are valid");

    let refused = |spec: MediaPoolSpec, msg: &str| {
        let err = pool(spec).validate_cel().expect_err(msg);
        assert!(err.to_string().contains(msg), "{err}");
    };
    let mut s = p.clone();
    s.min_nodes = 5;
    s.max_nodes = 2;
    refused(s, "minNodes is more than maxNodes");
    let mut s = p.clone();
    s.max_nodes = 0;
    s.min_nodes = 0;
    refused(s, "maxNodes must be at least 1");
    let mut s = p.clone();
    s.headroom.percent = 1000;
    refused(s, "headroom.percent is at most 400");
    let mut s = p.clone();
    s.drain_deadline_seconds = 5;
    refused(s, "drainDeadlineSeconds must be at least 60");
    let mut s = p.clone();
    s.node_capacity.participants = 0;
    refused(s, "participants must be at least 1");
    let mut moved = p.clone();
    moved.region = "tokyo".into();
    let err = pool(moved)
        .validate_cel_update(&pool(p))
        .expect_err("region change refused");
    assert!(err.to_string().contains("region cannot change"), "{err}");
}
