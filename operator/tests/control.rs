//! The reconcilers' decisions over an in-memory [`Cluster`], the interface both the operator
//! (kube) and the local fabric (`operator local`) implement: what the local fabric does with a
//! drain request, a node that is not ready yet, and a pool's drain deadline is what the
//! operator does, because it is the same code. (The kube side of the same decisions is tested
//! against a mocked API server in `reconcile.rs`, and end to end on a real one.)

use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use moim_operator::context::Settings;
use moim_operator::control::{Cluster, ControlCtx, Started, Workload};
use moim_operator::core::ledger::Ledger;
use moim_operator::crd::*;
use moim_operator::metrics::Metrics;
use moim_operator::nodeapi::{NodeAdmin, NodeApiResult};
use moim_wire::admin::RoomAssignment;
use moim_wire::status::NodeStatus;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

const NOW: &str = "2026-11-21T10:00:00Z";

fn ts(s: &str) -> Timestamp {
    s.parse().expect("time")
}

/// A cluster that keeps what is written, and runs every workload at `http://<name>`.
#[derive(Default)]
struct MemoryCluster {
    node_statuses: Mutex<BTreeMap<String, MediaNodeStatus>>,
    applied: Mutex<Vec<MediaNode>>,
    deleted: Mutex<Vec<String>>,
    events: Mutex<Vec<(String, String)>>,
}

impl Cluster for MemoryCluster {
    fn meeting_status<'a>(
        &'a self,
        _: &'a Meeting,
        _: &'a MeetingStatus,
    ) -> BoxFuture<'a, moim_operator::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn node_status<'a>(
        &'a self,
        n: &'a MediaNode,
        s: &'a MediaNodeStatus,
    ) -> BoxFuture<'a, moim_operator::Result<()>> {
        Box::pin(async move {
            self.node_statuses
                .lock()
                .expect("lock")
                .insert(n.name_any(), s.clone());
            Ok(())
        })
    }
    fn pool_status<'a>(
        &'a self,
        _: &'a MediaPool,
        _: &'a MediaPoolStatus,
    ) -> BoxFuture<'a, moim_operator::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn apply_node<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, moim_operator::Result<()>> {
        Box::pin(async move {
            self.applied.lock().expect("lock").push(n.clone());
            Ok(())
        })
    }
    fn delete_node<'a>(
        &'a self,
        _: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, moim_operator::Result<()>> {
        Box::pin(async move {
            self.deleted.lock().expect("lock").push(name.to_owned());
            Ok(())
        })
    }
    fn event<'a>(
        &'a self,
        _: ObjectReference,
        _: bool,
        reason: &'a str,
        note: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            self.events
                .lock()
                .expect("lock")
                .push((reason.to_owned(), note));
        })
    }
    fn workload<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, moim_operator::Result<Workload>> {
        Box::pin(async move {
            Ok(Workload::Running {
                admin_url: format!("http://{}", n.name_any()),
                signalling_url: format!("http://{}", n.name_any()),
                relay_address: None,
            })
        })
    }
    fn start_workload<'a>(
        &'a self,
        _: &'a MediaNode,
    ) -> BoxFuture<'a, moim_operator::Result<Started>> {
        Box::pin(async { Ok(Started::Created) })
    }
    fn new_node_name(&self, pool: &MediaPool) -> String {
        format!("{}-new", pool.name_any())
    }
}

/// Media nodes' admin API: each reports what `reports` says; calls are recorded.
#[derive(Default)]
struct Nodes {
    reports: Mutex<BTreeMap<String, NodeStatus>>,
    calls: Mutex<Vec<String>>,
}

impl NodeAdmin for Nodes {
    fn status<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<NodeStatus>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("GET {base}/status"));
            self.reports
                .lock()
                .expect("lock")
                .get(base)
                .cloned()
                .ok_or_else(|| "down".to_owned())
        })
    }
    fn assign<'a>(
        &'a self,
        base: &'a str,
        room: &'a str,
        _: &'a RoomAssignment,
    ) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("PUT {base}/admin/rooms/{room}"));
            Ok(())
        })
    }
    fn release<'a>(&'a self, base: &'a str, room: &'a str) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("DELETE {base}/admin/rooms/{room}"));
            Ok(())
        })
    }
    fn drain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("POST {base}/drain"));
            Ok(())
        })
    }
    fn undrain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("DELETE {base}/drain"));
            Ok(())
        })
    }
    fn move_room<'a>(
        &'a self,
        base: &'a str,
        room: &'a str,
        _: &'a str,
    ) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            self.calls
                .lock()
                .expect("lock")
                .push(format!("POST {base}/admin/rooms/{room}/move"));
            Ok(())
        })
    }
}

struct World {
    cluster: MemoryCluster,
    nodes: Nodes,
    ledger: Mutex<Ledger>,
    pools: Mutex<HashMap<String, moim_operator::autoscale::PoolMemory>>,
    metrics: Metrics,
    settings: Settings,
}

impl World {
    fn new() -> Self {
        Self {
            cluster: MemoryCluster::default(),
            nodes: Nodes::default(),
            ledger: Mutex::new(Ledger::default()),
            pools: Mutex::new(HashMap::new()),
            metrics: Metrics::new(),
            settings: Settings::default(),
        }
    }

    fn cx(&self, fleet: &[MediaNode]) -> ControlCtx<'_> {
        ControlCtx {
            cluster: &self.cluster,
            admin: &self.nodes,
            ledger: &self.ledger,
            pools: &self.pools,
            metrics: &self.metrics,
            settings: &self.settings,
            now: ts(NOW),
            nodes: fleet.iter().cloned().map(Arc::new).collect(),
            meetings: Vec::new(),
        }
    }

    fn report(&self, node: &str, ready: bool, draining: bool) {
        self.nodes.reports.lock().expect("lock").insert(
            format!("http://{node}"),
            NodeStatus {
                node_id: node.into(),
                region: "seoul".into(),
                ready,
                draining,
                ..NodeStatus::default()
            },
        );
    }
}

fn node(name: &str, phase: MediaNodePhase) -> MediaNode {
    let mut n = MediaNode::in_region(name, "team", "seoul", 100);
    n.metadata.generation = Some(1);
    n.status = Some(MediaNodeStatus {
        phase: Some(phase),
        last_report: Some(Time(ts("2026-11-21T09:59:58Z"))),
        ..MediaNodeStatus::default()
    });
    n
}

#[tokio::test]
async fn a_drain_request_is_passed_on_and_the_node_reports_draining() {
    let w = World::new();
    let mut n = node("seoul-1", MediaNodePhase::Ready);
    n.spec.drain = true;
    w.report("seoul-1", true, false);
    moim_operator::control::medianode::reconcile(&n, &w.cx(std::slice::from_ref(&n)))
        .await
        .expect("reconcile");
    assert!(
        w.nodes
            .calls
            .lock()
            .expect("lock")
            .contains(&"POST http://seoul-1/drain".to_owned())
    );
    let st = w.cluster.node_statuses.lock().expect("lock")["seoul-1"].clone();
    assert_eq!(st.phase, Some(MediaNodePhase::Draining));
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "Draining")
    );
    assert!(
        w.cluster
            .events
            .lock()
            .expect("lock")
            .iter()
            .any(|(r, _)| r == "Draining")
    );
}

#[tokio::test]
async fn a_node_that_says_it_is_not_ready_is_not_ready() {
    let w = World::new();
    let n = node("seoul-1", MediaNodePhase::Starting);
    w.report("seoul-1", false, false);
    moim_operator::control::medianode::reconcile(&n, &w.cx(std::slice::from_ref(&n)))
        .await
        .expect("reconcile");
    let st = w.cluster.node_statuses.lock().expect("lock")["seoul-1"].clone();
    assert_eq!(st.phase, Some(MediaNodePhase::Starting));
    let ready = st
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("Ready");
    assert_eq!(ready.reason, "NodeNotReady");
}

#[tokio::test]
async fn a_pools_drain_deadline_moves_people_once_and_not_before() {
    let w = World::new();
    let mut pool = MediaPool::new(
        "seoul",
        serde_json::from_value(serde_json::json!({
            "region": "seoul", "minNodes": 1, "maxNodes": 3,
            "headroom": {"participants": 0, "percent": 0},
            "drainDeadlineSeconds": 120, "scaleDownDelaySeconds": 0,
        }))
        .expect("spec"),
    );
    pool.metadata.namespace = Some("team".into());
    pool.metadata.uid = Some("uid-pool".into());
    let member = |name: &str, drain_started: Option<&str>, people: u32| {
        let mut n = node(name, MediaNodePhase::Ready);
        n.spec.pool = Some("seoul".into());
        if let Some(t) = drain_started {
            n.spec.drain = true;
            n.metadata.annotations = Some(BTreeMap::from([(DRAIN_STARTED.into(), t.into())]));
            n.status.as_mut().expect("status").phase = Some(MediaNodePhase::Draining);
        }
        n.status.as_mut().expect("status").load = Some(NodeLoad {
            participants: people,
            ..NodeLoad::default()
        });
        n
    };
    // Drained for 60 s of its 120: nobody moves yet.
    let fleet = [
        member("seoul-1", None, 5),
        member("seoul-2", Some("2026-11-21T09:59:00Z"), 3),
    ];
    moim_operator::control::pool::reconcile(&pool, &w.cx(&fleet))
        .await
        .expect("reconcile");
    assert!(
        !w.cluster
            .applied
            .lock()
            .expect("lock")
            .iter()
            .any(|n| n.spec.evacuate),
        "moved before the deadline"
    );
    // Drained for 150 s: its people are moved (evacuate), the drain start kept.
    let fleet = [
        member("seoul-1", None, 5),
        member("seoul-2", Some("2026-11-21T09:57:30Z"), 3),
    ];
    moim_operator::control::pool::reconcile(&pool, &w.cx(&fleet))
        .await
        .expect("reconcile");
    let applied = w.cluster.applied.lock().expect("lock").clone();
    let moved = applied
        .iter()
        .find(|n| n.name_any() == "seoul-2" && n.spec.evacuate)
        .expect("seoul-2 evacuated at its deadline");
    assert_eq!(
        moved.annotations().get(DRAIN_STARTED).map(String::as_str),
        Some("2026-11-21T09:57:30Z")
    );
    // Once evacuating, it is not set again on every pass (the local fabric's old copy did).
    let mut evacuating = member("seoul-2", Some("2026-11-21T09:57:30Z"), 3);
    evacuating.spec.evacuate = true;
    let fleet = [member("seoul-1", None, 5), evacuating];
    let before = w.cluster.applied.lock().expect("lock").len();
    moim_operator::control::pool::reconcile(&pool, &w.cx(&fleet))
        .await
        .expect("reconcile");
    assert_eq!(w.cluster.applied.lock().expect("lock").len(), before);
}
