//! The reconcilers against a mocked Kubernetes API server (tower-test, as kube-rs's
//! controller-rs does): every request the operator makes is checked, in order, down to the
//! bodies of its server-side-apply and JSON patches. Media nodes are a recording fake.

use futures_util::future::BoxFuture;
use http::{Request, Response};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use kube::{Client, Resource};
use moim_operator::context::{Context, Settings};
use moim_operator::crd::*;
use moim_operator::metrics::Metrics;
use moim_operator::nodeapi::{NodeAdmin, NodeApiResult};
use moim_operator::{medianode, meeting};
use moim_wire::admin::RoomAssignment;
use moim_wire::status::NodeStatus;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const NOW: &str = "2026-11-21T10:00:00Z";
const EARLIER: &str = "2026-11-21T09:00:00Z";

fn ts(s: &str) -> Timestamp {
    s.parse().expect("timestamp")
}

// ----- the fake media nodes ----------------------------------------------------------------

/// Records every admin call; answers `/status` from a table; fails calls to `down` nodes.
#[derive(Default)]
struct FakeNodes {
    calls: Mutex<Vec<String>>,
    assignments: Mutex<Vec<(String, String, RoomAssignment)>>,
    reports: Mutex<BTreeMap<String, NodeStatus>>,
    down: Mutex<Vec<String>>,
}

impl FakeNodes {
    fn calls(&self) -> Vec<String> {
        self.calls.lock().expect("lock").clone()
    }
    fn answer(&self, base: &str, call: String) -> NodeApiResult<()> {
        self.calls.lock().expect("lock").push(call);
        if self.down.lock().expect("lock").iter().any(|d| d == base) {
            return Err("connection refused".into());
        }
        Ok(())
    }
}

impl NodeAdmin for FakeNodes {
    fn status<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<NodeStatus>> {
        Box::pin(async move {
            self.answer(base, format!("GET {base}/status"))?;
            self.reports
                .lock()
                .expect("lock")
                .get(base)
                .cloned()
                .ok_or_else(|| "404 not found".to_owned())
        })
    }
    fn assign<'a>(
        &'a self,
        base: &'a str,
        room: &'a str,
        a: &'a RoomAssignment,
    ) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move {
            self.answer(base, format!("PUT {base}/admin/rooms/{room}"))?;
            self.assignments.lock().expect("lock").push((
                base.to_owned(),
                room.to_owned(),
                a.clone(),
            ));
            Ok(())
        })
    }
    fn release<'a>(&'a self, base: &'a str, room: &'a str) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move { self.answer(base, format!("DELETE {base}/admin/rooms/{room}")) })
    }
    fn drain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move { self.answer(base, format!("POST {base}/drain")) })
    }
    fn undrain<'a>(&'a self, base: &'a str) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async move { self.answer(base, format!("DELETE {base}/drain")) })
    }
    fn move_room<'a>(
        &'a self,
        base: &'a str,
        room: &'a str,
        url: &'a str,
    ) -> BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(
            async move { self.answer(base, format!("POST {base}/admin/rooms/{room}/move {url}")) },
        )
    }
}

// ----- the mocked API server ----------------------------------------------------------------

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// The API server side: takes the operator's requests one at a time.
struct ApiServer(Handle);

/// One request the operator made.
struct Call {
    method: String,
    uri: String,
    body: Value,
    reply: tower_test::mock::SendResponse<Response<Body>>,
}

impl Call {
    fn respond(self, status: u16, body: &Value) {
        self.reply.send_response(
            Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(body).expect("json")))
                .expect("response"),
        );
    }
}

impl ApiServer {
    async fn next(&mut self) -> Call {
        let (req, reply) = tokio::time::timeout(Duration::from_secs(5), self.0.next_request())
            .await
            .expect("the operator made no further request")
            .expect("client gone");
        let method = req.method().to_string();
        let uri = req.uri().to_string();
        let bytes = req.into_body().collect_bytes().await.expect("request body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("request body is JSON")
        };
        Call {
            method,
            uri,
            body,
            reply,
        }
    }

    /// The next request must be `method uri`; it is answered with `status` and `reply`.
    async fn expect(&mut self, method: &str, uri: &str) -> Call {
        let call = self.next().await;
        assert_eq!(
            (call.method.as_str(), call.uri.as_str()),
            (method, uri),
            "unexpected request; body: {}",
            call.body
        );
        call
    }

    /// An Event (events.k8s.io/v1) about `name` with `reason`; returns its note.
    async fn expect_event(&mut self, ns: &str, type_: &str, reason: &str, name: &str) -> String {
        let call = self
            .expect(
                "POST",
                &format!("/apis/events.k8s.io/v1/namespaces/{ns}/events?"),
            )
            .await;
        let b = call.body.clone();
        assert_eq!(b["reason"], reason, "{b}");
        assert_eq!(b["type"], type_, "{b}");
        assert_eq!(b["regarding"]["name"], name, "{b}");
        assert_eq!(b["reportingController"], "moim-operator", "{b}");
        let note = b["note"].as_str().unwrap_or_default().to_owned();
        call.respond(201, &b);
        note
    }

    /// No request is pending.
    fn is_idle(&mut self) -> bool {
        matches!(
            self.0.poll_request_fn(),
            std::task::Poll::Pending | std::task::Poll::Ready(None)
        )
    }
}

trait PollRequest {
    fn poll_request_fn(&mut self) -> std::task::Poll<Option<()>>;
}

impl PollRequest for Handle {
    fn poll_request_fn(&mut self) -> std::task::Poll<Option<()>> {
        let waker = futures_util::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let fut = self.next_request();
        let mut fut = std::pin::pin!(fut);
        fut.as_mut().poll(&mut cx).map(|r| r.map(|_| ()))
    }
}

use std::future::Future;

// ----- fixtures ----------------------------------------------------------------------------

struct Fixture {
    ctx: Arc<Context>,
    api: ApiServer,
    nodes: Arc<FakeNodes>,
    writer: reflector::store::Writer<MediaNode>,
}

fn fixture() -> Fixture {
    fixture_with(Settings::default())
}

fn fixture_with(settings: Settings) -> Fixture {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let (store, writer): (Store<MediaNode>, _) = reflector::store();
    let fake = Arc::new(FakeNodes::default());
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "moim-operator".into(),
            instance: Some("moim-operator-0".into()),
        },
    );
    let ctx = Arc::new(Context::new(
        client,
        store,
        fake.clone(),
        recorder,
        Metrics::new(),
        Arc::new(|| ts(NOW)),
        settings,
    ));
    Fixture {
        ctx,
        api: ApiServer(handle),
        nodes: fake,
        writer,
    }
}

impl Fixture {
    fn add_node(&mut self, n: MediaNode) {
        self.writer.apply_watcher_event(&watcher::Event::Apply(n));
    }
}

fn media_node(name: &str, region: &str, capacity: u32, phase: MediaNodePhase) -> MediaNode {
    let mut n = MediaNode::in_region(name, "team", region, capacity);
    n.metadata.uid = Some(format!("uid-{name}"));
    n.metadata.generation = Some(1);
    n.status = Some(MediaNodeStatus {
        phase: Some(phase),
        admin_url: Some(format!("http://{name}:7880")),
        signalling_url: Some(format!("https://{name}.media.example")),
        relay_address: Some(format!("{name}:7882")),
        last_report: Some(Time(ts("2026-11-21T09:59:55Z"))),
        ..MediaNodeStatus::default()
    });
    n
}

fn standup(per_region: &[(&str, u32)], generation: i64) -> Meeting {
    let mut m = Meeting::new(
        "standup",
        MeetingSpec {
            title: "Daily standup".into(),
            mode: MeetingMode::Interactive,
            participants: ExpectedParticipants {
                per_region: Some(
                    per_region
                        .iter()
                        .map(|(r, n)| ((*r).to_owned(), *n))
                        .collect(),
                ),
                total: None,
                regions: None,
            },
            max_participants: Some(60),
            schedule: None,
            media: MediaPolicy::default(),
        },
    );
    m.metadata = ObjectMeta {
        name: Some("standup".into()),
        namespace: Some("team".into()),
        uid: Some("uid-standup".into()),
        generation: Some(generation),
        resource_version: Some("100".into()),
        finalizers: Some(vec![meeting::FINALIZER.into()]),
        ..ObjectMeta::default()
    };
    m
}

const STATUS_URI: &str = "/apis/media.moim.dev/v1alpha1/namespaces/team/meetings/standup/status?&force=true&fieldManager=moim-operator";
const MEETING_URI: &str = "/apis/media.moim.dev/v1alpha1/namespaces/team/meetings/standup?";

/// Runs the meeting reconciler in the background while the test plays the API server.
fn reconcile_meeting(
    f: &Fixture,
    m: Meeting,
) -> tokio::task::JoinHandle<Result<Action, moim_operator::Error>> {
    tokio::spawn(meeting::reconcile(Arc::new(m), f.ctx.clone()))
}

fn condition(
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    generation: i64,
    since: &str,
) -> Value {
    json!({
        "type": type_, "status": status, "reason": reason, "message": message,
        "observedGeneration": generation, "lastTransitionTime": since,
    })
}

// ----- Meeting ---------------------------------------------------------------------------

#[tokio::test]
async fn a_new_meeting_gets_the_finalizer_before_anything_else() {
    let mut f = fixture();
    let mut m = standup(&[("seoul", 20)], 1);
    m.metadata.finalizers = None;
    let task = reconcile_meeting(&f, m.clone());
    let call = f.api.expect("PATCH", MEETING_URI).await;
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["media.moim.dev/release-nodes"]},
        ])
    );
    call.respond(200, &serde_json::to_value(&m).expect("json"));
    task.await.expect("task").expect("reconcile");
    assert!(
        f.nodes.calls().is_empty(),
        "nothing placed before the finalizer is on"
    );
}

#[tokio::test]
async fn create_places_pushes_the_plan_and_applies_status() {
    let mut f = fixture();
    f.add_node(media_node("seoul-1", "seoul", 100, MediaNodePhase::Ready));
    f.add_node(media_node("fra-1", "frankfurt", 100, MediaNodePhase::Ready));
    let m = standup(&[("seoul", 20), ("frankfurt", 8)], 1);
    let task = reconcile_meeting(&f, m.clone());

    let note = f
        .api
        .expect_event("team", "Normal", "Placed", "standup")
        .await;
    assert_eq!(note, "placed on frankfurt: fra-1 (8), seoul: seoul-1 (20)");
    let call = f.api.expect("PATCH", STATUS_URI).await;
    assert_eq!(
        call.body,
        json!({
            "apiVersion": "media.moim.dev/v1alpha1",
            "kind": "Meeting",
            "status": {
                "phase": "Running",
                "observedGeneration": 1,
                "nodes": [
                    {"region": "frankfurt", "node": "fra-1", "participants": 8},
                    {"region": "seoul", "node": "seoul-1", "participants": 20},
                ],
                "links": [{"from": "seoul-1", "to": "fra-1"}],
                "joinEndpoints": {
                    "frankfurt": "https://fra-1.media.example",
                    "seoul": "https://seoul-1.media.example",
                },
                "participants": 0,
                "participantsByRegion": {"frankfurt": 0, "seoul": 0},
                "regionSummary": "frankfurt:1,seoul:1",
                "conditions": [
                    condition("Placed", "True", "Placed", "28 participants on 2 node(s) in 2 region(s)", 1, NOW),
                    condition("Ready", "True", "NodesReady", "every node of the plan holds the meeting", 1, NOW),
                ],
            },
        })
    );
    call.respond(200, &serde_json::to_value(&m).expect("json"));
    let action = task.await.expect("task").expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(30)));

    // Each node got its share, the cascade link with the peer's relay address, and the cap.
    let pushed = f.nodes.assignments.lock().expect("lock").clone();
    assert_eq!(pushed.len(), 2);
    let (base, room, seoul) = &pushed[1];
    assert_eq!(
        (base.as_str(), room.as_str()),
        ("http://seoul-1:7880", "team.standup")
    );
    assert_eq!(
        serde_json::to_value(seoul).expect("json"),
        json!({
            "meeting": "team/standup", "generation": 1, "reserved": 20,
            "maxParticipants": 60, "webinar": false,
            "links": [{"peer": "fra-1", "address": "fra-1:7882", "upstream": false}],
            "fallbacks": ["https://fra-1.media.example"],
        })
    );
    assert!(pushed[0].2.links[0].upstream, "frankfurt dials seoul");
}

/// The status `create_places…` wrote, as the API server would now return it.
fn placed_status(nodes: &[(&str, &str, u32)], links: &[(&str, &str)]) -> MeetingStatus {
    let cond =
        |t: &str, r: &str, msg: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
            type_: t.into(),
            status: "True".into(),
            reason: r.into(),
            message: msg.into(),
            observed_generation: Some(1),
            last_transition_time: Time(ts(EARLIER)),
        };
    MeetingStatus {
        phase: Some(MeetingPhase::Running),
        observed_generation: Some(1),
        nodes: nodes
            .iter()
            .map(|(r, n, p)| MeetingNode {
                region: (*r).into(),
                node: (*n).into(),
                participants: *p,
                serves: Default::default(),
            })
            .collect(),
        links: links
            .iter()
            .map(|(a, b)| CascadeLink {
                from: (*a).into(),
                to: (*b).into(),
            })
            .collect(),
        conditions: vec![
            cond("Placed", "Placed", "earlier"),
            cond("Ready", "NodesReady", "earlier"),
        ],
        ..MeetingStatus::default()
    }
}

#[tokio::test]
async fn a_spec_update_replans_under_the_new_generation() {
    let mut f = fixture();
    f.add_node(media_node("seoul-1", "seoul", 100, MediaNodePhase::Ready));
    f.add_node(media_node("fra-1", "frankfurt", 100, MediaNodePhase::Ready));
    let mut m = standup(&[("seoul", 40), ("frankfurt", 8)], 2);
    m.status = Some(placed_status(
        &[("frankfurt", "fra-1", 8), ("seoul", "seoul-1", 20)],
        &[("seoul-1", "fra-1")],
    ));
    let task = reconcile_meeting(&f, m.clone());
    let note = f
        .api
        .expect_event("team", "Normal", "Placed", "standup")
        .await;
    assert_eq!(note, "placed on frankfurt: fra-1 (8), seoul: seoul-1 (40)");
    let call = f.api.expect("PATCH", STATUS_URI).await;
    let s = &call.body["status"];
    assert_eq!(s["observedGeneration"], 2);
    assert_eq!(
        s["nodes"][1],
        json!({"region": "seoul", "node": "seoul-1", "participants": 40})
    );
    // Still True: the transition time stays, the generation and message move on.
    assert_eq!(
        s["conditions"][0],
        condition(
            "Placed",
            "True",
            "Placed",
            "48 participants on 2 node(s) in 2 region(s)",
            2,
            EARLIER
        )
    );
    call.respond(200, &serde_json::to_value(&m).expect("json"));
    task.await.expect("task").expect("reconcile");
    let pushed = f.nodes.assignments.lock().expect("lock").clone();
    assert!(pushed.iter().all(|(_, _, a)| a.generation == 2));
}

#[tokio::test]
async fn losing_a_node_moves_only_the_participants_it_held() {
    let mut f = fixture();
    f.add_node(media_node("seoul-1", "seoul", 15, MediaNodePhase::Ready));
    f.add_node(media_node("seoul-2", "seoul", 15, MediaNodePhase::Gone));
    f.add_node(media_node("seoul-3", "seoul", 50, MediaNodePhase::Ready));
    f.add_node(media_node("fra-1", "frankfurt", 100, MediaNodePhase::Ready));
    f.nodes
        .down
        .lock()
        .expect("lock")
        .push("http://seoul-2:7880".into());
    let mut m = standup(&[("seoul", 20), ("frankfurt", 8)], 1);
    m.status = Some(placed_status(
        &[
            ("frankfurt", "fra-1", 8),
            ("seoul", "seoul-1", 15),
            ("seoul", "seoul-2", 5),
        ],
        &[("seoul-1", "fra-1"), ("seoul-1", "seoul-2")],
    ));
    let task = reconcile_meeting(&f, m.clone());
    let note = f
        .api
        .expect_event("team", "Normal", "Placed", "standup")
        .await;
    assert_eq!(
        note,
        "placed on frankfurt: fra-1 (8), seoul: seoul-1 (15), seoul: seoul-3 (5)"
    );
    let call = f.api.expect("PATCH", STATUS_URI).await;
    assert_eq!(
        call.body["status"]["links"],
        json!([{"from": "seoul-1", "to": "fra-1"}, {"from": "seoul-1", "to": "seoul-3"}])
    );
    call.respond(200, &serde_json::to_value(&m).expect("json"));
    task.await.expect("task").expect("reconcile");
    // seoul-1 and fra-1 keep their people; seoul-3 takes seoul-2's five; the dead node is not
    // asked to release the room (it is known gone: the call could only fail or time out).
    let mut calls = f.nodes.calls();
    calls.sort();
    assert_eq!(
        calls,
        vec![
            "PUT http://fra-1:7880/admin/rooms/team.standup",
            "PUT http://seoul-1:7880/admin/rooms/team.standup",
            "PUT http://seoul-3:7880/admin/rooms/team.standup",
        ]
    );
}

#[tokio::test]
async fn deleting_releases_the_rooms_then_removes_the_finalizer() {
    let mut f = fixture();
    f.add_node(media_node("seoul-1", "seoul", 100, MediaNodePhase::Ready));
    f.add_node(media_node("fra-1", "frankfurt", 100, MediaNodePhase::Ready));
    let mut m = standup(&[("seoul", 20), ("frankfurt", 8)], 1);
    m.metadata.deletion_timestamp = Some(Time(ts(NOW)));
    m.status = Some(placed_status(
        &[("frankfurt", "fra-1", 8), ("seoul", "seoul-1", 20)],
        &[("seoul-1", "fra-1")],
    ));
    let task = reconcile_meeting(&f, m.clone());
    let call = f.api.expect("PATCH", MEETING_URI).await;
    assert_eq!(
        call.body,
        json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "media.moim.dev/release-nodes"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ])
    );
    // The rooms were released before the finalizer went.
    assert_eq!(
        f.nodes.calls(),
        vec![
            "DELETE http://fra-1:7880/admin/rooms/team.standup",
            "DELETE http://seoul-1:7880/admin/rooms/team.standup",
        ]
    );
    call.respond(200, &serde_json::to_value(&m).expect("json"));
    task.await.expect("task").expect("reconcile");
}

#[tokio::test]
async fn a_region_without_nodes_fails_with_a_reason_a_person_understands() {
    let mut f = fixture();
    f.add_node(media_node("seoul-1", "seoul", 100, MediaNodePhase::Ready));
    let m = standup(&[("mars", 5)], 1);
    let task = reconcile_meeting(&f, m.clone());
    let note = f
        .api
        .expect_event("team", "Warning", "NotPlaced", "standup")
        .await;
    let reason = "no MediaNode serves region mars (regions with nodes: seoul)";
    assert_eq!(note, reason);
    let call = f.api.expect("PATCH", STATUS_URI).await;
    assert_eq!(
        call.body["status"],
        json!({
            "phase": "Failed",
            "observedGeneration": 1,
            "conditions": [
                condition("Placed", "False", "UnknownRegion", reason, 1, NOW),
                condition("Ready", "False", "NotPlaced", "no node hosts the meeting yet", 1, NOW),
            ],
        })
    );
    call.respond(200, &serde_json::to_value(&m).expect("json"));
    task.await.expect("task").expect("reconcile");
}

#[tokio::test]
async fn an_unchanged_meeting_writes_nothing() {
    let mut f = fixture();
    f.add_node(media_node("seoul-1", "seoul", 100, MediaNodePhase::Ready));
    let m = standup(&[("seoul", 20)], 1);
    // First pass writes the status; feed it back as the stored object.
    let task = reconcile_meeting(&f, m.clone());
    f.api
        .expect_event("team", "Normal", "Placed", "standup")
        .await;
    let call = f.api.expect("PATCH", STATUS_URI).await;
    let status: MeetingStatus =
        serde_json::from_value(call.body["status"].clone()).expect("status");
    call.respond(200, &serde_json::to_value(&m).expect("json"));
    task.await.expect("task").expect("reconcile");

    let mut again = m.clone();
    again.status = Some(status);
    let second = reconcile_meeting(&f, again);
    // A write would wait for an answer that never comes: the reconcile must finish alone.
    tokio::time::timeout(Duration::from_secs(2), second)
        .await
        .expect("a steady meeting costs no API writes")
        .expect("task")
        .expect("reconcile");
    assert!(f.api.is_idle());
}

// ----- MediaNode -------------------------------------------------------------------------

const POD_URI: &str = "/api/v1/namespaces/team/pods/seoul-1";
const NODE_STATUS_URI: &str = "/apis/media.moim.dev/v1alpha1/namespaces/team/medianodes/seoul-1/status?&force=true&fieldManager=moim-operator";

fn fresh_node() -> MediaNode {
    let mut n = media_node("seoul-1", "seoul", 100, MediaNodePhase::Starting);
    n.spec.zone = Some("seoul-a".into());
    n.spec.pool = Some("seoul".into());
    n.status = None;
    n
}

fn not_found() -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "pods \"seoul-1\" not found"})
}

#[tokio::test]
async fn a_new_media_node_gets_one_owned_pod_pinned_to_its_region() {
    let mut f = fixture();
    let n = fresh_node();
    let task = tokio::spawn(medianode::reconcile(Arc::new(n.clone()), f.ctx.clone()));
    f.api
        .expect("GET", POD_URI)
        .await
        .respond(404, &not_found());
    let call = f
        .api
        .expect(
            "PATCH",
            &format!("{POD_URI}?&force=true&fieldManager=moim-operator"),
        )
        .await;
    let pod = call.body.clone();
    assert_eq!(pod["apiVersion"], "v1");
    assert_eq!(pod["kind"], "Pod");
    assert_eq!(
        pod["metadata"]["ownerReferences"],
        json!([{
            "apiVersion": "media.moim.dev/v1alpha1", "kind": "MediaNode", "name": "seoul-1",
            "uid": "uid-seoul-1", "controller": true, "blockOwnerDeletion": true,
        }])
    );
    assert_eq!(pod["metadata"]["labels"]["media.moim.dev/node"], "seoul-1");
    assert_eq!(pod["metadata"]["labels"]["media.moim.dev/pool"], "seoul");
    assert_eq!(
        pod["spec"]["nodeSelector"],
        json!({"topology.kubernetes.io/region": "seoul", "topology.kubernetes.io/zone": "seoul-a"})
    );
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    assert_eq!(pod["spec"]["terminationGracePeriodSeconds"], 7200);
    let c = &pod["spec"]["containers"][0];
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "http"})
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    assert_eq!(pod["spec"]["securityContext"]["runAsNonRoot"], true);
    let env: BTreeMap<String, Value> = c["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("name").to_owned(), e.clone()))
        .collect();
    assert_eq!(env["MOIM_REGION"]["value"], "seoul");
    assert_eq!(env["MOIM_NODE_ID"]["value"], "seoul-1");
    assert_eq!(env["MOIM_DRAIN_TIMEOUT"]["value"], "7140s");
    assert_eq!(
        env["MOIM_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"],
        json!({"name": "moim-node-secrets", "key": "admin-token", "optional": false})
    );
    // The pod serialised by the operator is exactly what the builder makes.
    let built = moim_operator::pod::media_pod(&n, &f.ctx.settings.pod, None).expect("pod");
    assert_eq!(pod, serde_json::to_value(&built).expect("json"));
    call.respond(201, &pod);

    f.api
        .expect_event("team", "Normal", "PodCreated", "seoul-1")
        .await;
    let call = f.api.expect("PATCH", NODE_STATUS_URI).await;
    assert_eq!(
        call.body,
        json!({
            "apiVersion": "media.moim.dev/v1alpha1", "kind": "MediaNode",
            "status": {
                "phase": "Starting", "observedGeneration": 1,
                "capacity": {"participants": 100, "publishedTracks": 0, "forwardedStreams": 0, "egressBps": 0},
                "conditions": [condition("Ready", "False", "PodStarting", "the media pod was created and is starting", 1, NOW)],
            },
        })
    );
    call.respond(200, &serde_json::to_value(&n).expect("json"));
    let action = task.await.expect("task").expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(2)));
}

fn running_pod(n: &MediaNode) -> Pod {
    let mut pod = moim_operator::pod::media_pod(n, &Default::default(), None).expect("pod");
    pod.status = Some(k8s_openapi::api::core::v1::PodStatus {
        phase: Some("Running".into()),
        pod_ip: Some("10.1.2.3".into()),
        ..Default::default()
    });
    pod
}

#[tokio::test]
async fn node_reports_become_media_node_status_and_drain_is_passed_on() {
    let mut f = fixture();
    let mut n = fresh_node();
    n.spec.drain = true;
    f.nodes.reports.lock().expect("lock").insert(
        "http://10.1.2.3:7880".into(),
        NodeStatus {
            node_id: "seoul-1".into(),
            region: "seoul".into(),
            ready: true,
            participants: 12,
            published_tracks: 4,
            forwarded_streams: 30,
            egress_bps: 9_000_000,
            cpu_cores: 0.42,
            room_participants: BTreeMap::from([("team.standup".into(), 12)]),
            assignments: BTreeMap::from([("team.standup".into(), 3), ("team.retro".into(), 1)]),
            ..NodeStatus::default()
        },
    );
    let task = tokio::spawn(medianode::reconcile(Arc::new(n.clone()), f.ctx.clone()));
    f.api
        .expect("GET", POD_URI)
        .await
        .respond(200, &serde_json::to_value(running_pod(&n)).expect("json"));
    f.api
        .expect_event("team", "Normal", "Draining", "seoul-1")
        .await;
    let call = f.api.expect("PATCH", NODE_STATUS_URI).await;
    assert_eq!(
        call.body["status"],
        json!({
            "phase": "Draining", "observedGeneration": 1,
            "signallingUrl": "http://10.1.2.3:7880",
            "adminUrl": "http://10.1.2.3:7880",
            "capacity": {"participants": 100, "publishedTracks": 0, "forwardedStreams": 0, "egressBps": 0},
            "load": {"participants": 12, "publishedTracks": 4, "forwardedStreams": 30, "egressBps": 9000000, "cpuCores": "0.42"},
            "meetings": {"team/retro": 0, "team/standup": 12},
            "lastReport": NOW,
            "conditions": [
                condition("Ready", "False", "Draining", "draining: hosts its meetings, takes no new ones", 1, NOW),
                condition("Reporting", "True", "StatusReceived", "the node's /status was read", 1, NOW),
            ],
        })
    );
    call.respond(200, &serde_json::to_value(&n).expect("json"));
    task.await.expect("task").expect("reconcile");
    assert_eq!(
        f.nodes.calls(),
        vec![
            "GET http://10.1.2.3:7880/status",
            "POST http://10.1.2.3:7880/drain"
        ]
    );
}

#[tokio::test]
async fn a_pod_that_ran_and_is_gone_makes_the_node_gone_not_a_new_pod() {
    let mut f = fixture();
    let n = media_node("seoul-1", "seoul", 100, MediaNodePhase::Ready);
    let task = tokio::spawn(medianode::reconcile(Arc::new(n.clone()), f.ctx.clone()));
    f.api
        .expect("GET", POD_URI)
        .await
        .respond(404, &not_found());
    let note = f
        .api
        .expect_event("team", "Warning", "PodGone", "seoul-1")
        .await;
    assert!(note.contains("placed again"), "{note}");
    let call = f.api.expect("PATCH", NODE_STATUS_URI).await;
    assert_eq!(call.body["status"]["phase"], "Gone");
    call.respond(200, &serde_json::to_value(&n).expect("json"));
    task.await.expect("task").expect("reconcile");
    assert_eq!(
        n.meta().name.as_deref(),
        Some("seoul-1"),
        "fixture sanity: the node kept its name"
    );
}

// ----- schedule ----------------------------------------------------------------------------

fn scheduled(start: &str, end: &str) -> Meeting {
    let mut m = standup(&[("seoul", 20)], 1);
    m.spec.schedule = Some(Schedule {
        start: Time(ts(start)),
        end: Time(ts(end)),
    });
    m
}

#[test]
fn a_scheduled_meeting_is_placed_ten_minutes_ahead_and_ends_on_time() {
    use meeting::{ScheduleState, schedule_state};
    let ahead = k8s_openapi::jiff::SignedDuration::from_mins(10);
    let m = scheduled("2026-11-21T11:00:00Z", "2026-11-21T12:00:00Z");
    assert_eq!(
        schedule_state(&m, ts(NOW), ahead),
        ScheduleState::NotYet(ts("2026-11-21T10:50:00Z"))
    );
    assert_eq!(
        schedule_state(&m, ts("2026-11-21T10:50:00Z"), ahead),
        ScheduleState::Live
    );
    assert_eq!(
        schedule_state(&m, ts("2026-11-21T12:00:00Z"), ahead),
        ScheduleState::Ended
    );
}

#[tokio::test]
async fn a_meeting_waiting_for_its_start_says_when_it_will_be_placed() {
    let mut f = fixture();
    f.add_node(media_node("seoul-1", "seoul", 100, MediaNodePhase::Ready));
    let m = scheduled("2026-11-21T11:00:00Z", "2026-11-21T12:00:00Z");
    let task = reconcile_meeting(&f, m.clone());
    let call = f.api.expect("PATCH", STATUS_URI).await;
    assert_eq!(call.body["status"]["phase"], "Scheduled");
    assert_eq!(
        call.body["status"]["conditions"][0],
        condition(
            "Placed",
            "False",
            "NotStarted",
            "nodes are chosen at 2026-11-21T10:50:00Z, ahead of the start",
            1,
            NOW
        )
    );
    call.respond(200, &serde_json::to_value(&m).expect("json"));
    // Looked at again when placement is due (capped at five minutes).
    let action = task.await.expect("task").expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert!(f.nodes.calls().is_empty());
}

#[tokio::test]
async fn an_ended_meeting_releases_its_nodes() {
    let mut f = fixture();
    f.add_node(media_node("seoul-1", "seoul", 100, MediaNodePhase::Ready));
    let mut m = scheduled("2026-11-21T08:00:00Z", "2026-11-21T09:30:00Z");
    m.status = Some(placed_status(&[("seoul", "seoul-1", 20)], &[]));
    let task = reconcile_meeting(&f, m.clone());
    f.api
        .expect_event("team", "Normal", "Ended", "standup")
        .await;
    let call = f.api.expect("PATCH", STATUS_URI).await;
    assert_eq!(call.body["status"]["phase"], "Ended");
    assert!(call.body["status"].get("nodes").is_none(), "{}", call.body);
    call.respond(200, &serde_json::to_value(&m).expect("json"));
    assert_eq!(
        task.await.expect("task").expect("reconcile"),
        Action::await_change()
    );
    assert_eq!(
        f.nodes.calls(),
        vec!["DELETE http://seoul-1:7880/admin/rooms/team.standup"]
    );
}

/// Waits for the media pod's server-side apply, answers it and its Event, and returns the
/// pod's environment by name.
async fn expect_pod_created(f: &mut Fixture) -> BTreeMap<String, Value> {
    let call = f
        .api
        .expect(
            "PATCH",
            &format!("{POD_URI}?&force=true&fieldManager=moim-operator"),
        )
        .await;
    let env = call.body["spec"]["containers"][0]["env"]
        .as_array()
        .expect("env")
        .iter()
        .map(|e| (e["name"].as_str().expect("name").to_owned(), e.clone()))
        .collect();
    let pod = call.body.clone();
    call.respond(201, &pod);
    f.api
        .expect_event("team", "Normal", "PodCreated", "seoul-1")
        .await;
    env
}

fn with_media_service(kind: moim_operator::pod::MediaService) -> Settings {
    Settings {
        pod: moim_operator::pod::PodSettings {
            service: Some(kind),
            ..Default::default()
        },
        ..Settings::default()
    }
}

const SERVICE_URI: &str =
    "/api/v1/namespaces/team/services/seoul-1-media?&force=true&fieldManager=moim-operator";

/// NodePort exposure: the Service comes first (owned by the MediaNode, UDP, traffic kept on
/// the pod's host), and the pod is told the allocated node port and to advertise its host's
/// address.
#[tokio::test]
async fn a_node_port_service_is_made_first_and_the_pod_advertises_its_port() {
    let mut f = fixture_with(with_media_service(
        moim_operator::pod::MediaService::NodePort,
    ));
    let n = fresh_node();
    let task = tokio::spawn(medianode::reconcile(Arc::new(n.clone()), f.ctx.clone()));
    f.api
        .expect("GET", POD_URI)
        .await
        .respond(404, &not_found());
    let call = f.api.expect("PATCH", SERVICE_URI).await;
    let spec = &call.body["spec"];
    assert_eq!(spec["type"], "NodePort");
    assert_eq!(spec["externalTrafficPolicy"], "Local");
    assert_eq!(spec["selector"], json!({"media.moim.dev/node": "seoul-1"}));
    assert_eq!(spec["ports"][0]["protocol"], "UDP");
    assert_eq!(
        call.body["metadata"]["ownerReferences"][0]["kind"],
        "MediaNode"
    );
    let mut allocated = call.body.clone();
    allocated["spec"]["ports"][0]["nodePort"] = json!(31234);
    call.respond(200, &allocated);
    let env = expect_pod_created(&mut f).await;
    assert_eq!(env["MOIM_PUBLIC_PORT"]["value"], "31234");
    assert_eq!(
        env["MOIM_PUBLIC_IP"]["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    let call = f.api.expect("PATCH", NODE_STATUS_URI).await;
    assert_eq!(call.body["status"]["phase"], "Starting");
    call.respond(200, &serde_json::to_value(&n).expect("json"));
    task.await.expect("task").expect("reconcile");
}

/// LoadBalancer exposure: no pod until the load balancer has an address; the node says why.
/// Once it has one, the pod advertises it.
#[tokio::test]
async fn a_load_balancer_without_an_address_holds_the_pod_back() {
    let mut f = fixture_with(with_media_service(
        moim_operator::pod::MediaService::LoadBalancer,
    ));
    let n = fresh_node();
    let task = tokio::spawn(medianode::reconcile(Arc::new(n.clone()), f.ctx.clone()));
    f.api
        .expect("GET", POD_URI)
        .await
        .respond(404, &not_found());
    let call = f.api.expect("PATCH", SERVICE_URI).await;
    assert_eq!(call.body["spec"]["type"], "LoadBalancer");
    let pending = call.body.clone();
    call.respond(200, &pending);
    let call = f.api.expect("PATCH", NODE_STATUS_URI).await;
    let status = &call.body["status"];
    assert_eq!(status["phase"], "Starting");
    assert_eq!(status["conditions"][0]["reason"], "WaitingForAddress");
    call.respond(200, &serde_json::to_value(&n).expect("json"));
    task.await.expect("task").expect("reconcile");

    let task = tokio::spawn(medianode::reconcile(Arc::new(n.clone()), f.ctx.clone()));
    f.api
        .expect("GET", POD_URI)
        .await
        .respond(404, &not_found());
    let call = f.api.expect("PATCH", SERVICE_URI).await;
    let mut ready = call.body.clone();
    ready["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}});
    call.respond(200, &ready);
    let env = expect_pod_created(&mut f).await;
    assert_eq!(env["MOIM_PUBLIC_IP"]["value"], "203.0.113.9");
    assert_eq!(env["MOIM_PUBLIC_PORT"]["value"], "7881");
    let call = f.api.expect("PATCH", NODE_STATUS_URI).await;
    call.respond(200, &serde_json::to_value(&n).expect("json"));
    task.await.expect("task").expect("reconcile");
}

// ----- MediaPool: the autoscaler's writes -----------------------------------------------

fn seoul_pool(min: u32) -> MediaPool {
    let mut p = MediaPool::new(
        "seoul",
        serde_json::from_value(json!({"region": "seoul", "minNodes": min, "maxNodes": 5}))
            .expect("spec"),
    );
    p.metadata.namespace = Some("team".into());
    p.metadata.uid = Some("uid-pool".into());
    p.metadata.generation = Some(3);
    p
}

fn pool_member(name: &str, participants: u32, drain_started: Option<&str>) -> MediaNode {
    let mut n = media_node(name, "seoul", 500, MediaNodePhase::Ready);
    n.spec.pool = Some("seoul".into());
    if let Some(t) = drain_started {
        n.spec.drain = true;
        n.metadata.annotations = Some(BTreeMap::from([(DRAIN_STARTED.into(), t.into())]));
        n.status.as_mut().expect("status").phase = Some(MediaNodePhase::Draining);
    }
    n.status.as_mut().expect("status").load = Some(NodeLoad {
        participants,
        ..NodeLoad::default()
    });
    n
}

const POOL_STATUS_URI: &str = "/apis/media.moim.dev/v1alpha1/namespaces/team/mediapools/seoul/status?&force=true&fieldManager=moim-operator";

#[tokio::test]
async fn a_pool_below_its_minimum_creates_media_nodes_it_owns() {
    let mut f = fixture();
    let task = tokio::spawn(moim_operator::pool::reconcile(
        Arc::new(seoul_pool(2)),
        f.ctx.clone(),
    ));
    let mut names = Vec::new();
    for _ in 0..2 {
        let call = f.api.next().await;
        assert_eq!(call.method, "PATCH");
        let prefix = "/apis/media.moim.dev/v1alpha1/namespaces/team/medianodes/seoul-";
        assert!(call.uri.starts_with(prefix), "{}", call.uri);
        assert!(
            call.uri
                .ends_with("?&force=true&fieldManager=moim-operator"),
            "{}",
            call.uri
        );
        let b = call.body.clone();
        assert_eq!(b["spec"]["region"], "seoul", "{b}");
        assert_eq!(b["spec"]["pool"], "seoul", "{b}");
        assert_eq!(b["spec"]["capacity"], 500, "{b}");
        assert_eq!(b["spec"]["drain"], false, "{b}");
        assert_eq!(b["metadata"]["labels"][POOL_LABEL], "seoul", "{b}");
        let owner = &b["metadata"]["ownerReferences"][0];
        assert_eq!(
            (
                owner["kind"].as_str(),
                owner["name"].as_str(),
                owner["uid"].as_str()
            ),
            (Some("MediaPool"), Some("seoul"), Some("uid-pool")),
            "{b}"
        );
        assert_eq!(owner["controller"], true);
        names.push(
            b["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
        call.respond(201, &b);
    }
    assert_ne!(names[0], names[1], "each node gets its own name");
    let note = f
        .api
        .expect_event("team", "Normal", "ScaledOut", "seoul")
        .await;
    assert!(note.starts_with("2 new nodes"), "{note}");
    let call = f.api.expect("PATCH", POOL_STATUS_URI).await;
    let st = call.body["status"].clone();
    let stored = serde_json::to_value(seoul_pool(2)).expect("json");
    assert_eq!(
        (&st["desiredNodes"], &st["startingNodes"], &st["readyNodes"]),
        (&json!(2), &json!(2), &json!(0)),
        "{st}"
    );
    assert_eq!(st["observedGeneration"], 3);
    let ready = st["conditions"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&ready["status"], &ready["reason"]),
        (&json!("False"), &json!("ScalingOut"))
    );
    call.respond(200, &stored);
    let action = task.await.expect("join").expect("reconcile");
    assert_eq!(action, Action::requeue(Duration::from_secs(15)));
}

#[tokio::test]
async fn a_drained_empty_node_is_deleted_and_a_loaded_one_evacuated_at_its_deadline() {
    let mut f = fixture();
    f.add_node(pool_member("seoul-a", 100, None));
    // Drained an hour and a half ago, still hosting five: past the one-hour deadline.
    f.add_node(pool_member("seoul-b", 5, Some("2026-11-21T08:30:00Z")));
    // Drained ten minutes ago and empty.
    f.add_node(pool_member("seoul-c", 0, Some("2026-11-21T09:50:00Z")));
    // Not the pool's: never touched.
    f.add_node(media_node("other", "seoul", 500, MediaNodePhase::Ready));
    let task = tokio::spawn(moim_operator::pool::reconcile(
        Arc::new(seoul_pool(1)),
        f.ctx.clone(),
    ));
    let call = f
        .api
        .expect(
            "PATCH",
            "/apis/media.moim.dev/v1alpha1/namespaces/team/medianodes/seoul-b?&force=true&fieldManager=moim-operator",
        )
        .await;
    let b = call.body.clone();
    assert_eq!(
        (&b["spec"]["drain"], &b["spec"]["evacuate"]),
        (&json!(true), &json!(true)),
        "{b}"
    );
    // The drain keeps its original start.
    assert_eq!(
        b["metadata"]["annotations"][DRAIN_STARTED], "2026-11-21T08:30:00Z",
        "{b}"
    );
    call.respond(200, &b);
    let note = f
        .api
        .expect_event("team", "Normal", "Migrating", "seoul")
        .await;
    assert!(note.contains("seoul-b"), "{note}");
    f.api
        .expect(
            "DELETE",
            "/apis/media.moim.dev/v1alpha1/namespaces/team/medianodes/seoul-c?",
        )
        .await
        .respond(
            200,
            &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
        );
    let note = f
        .api
        .expect_event("team", "Normal", "ScaledIn", "seoul")
        .await;
    assert!(note.contains("seoul-c"), "{note}");
    let call = f.api.expect("PATCH", POOL_STATUS_URI).await;
    assert_eq!(call.body["status"]["drainingNodes"], 2, "{}", call.body);
    assert_eq!(call.body["status"]["readyNodes"], 1, "{}", call.body);
    call.respond(200, &serde_json::to_value(seoul_pool(1)).expect("json"));
    task.await.expect("join").expect("reconcile");
    assert!(f.api.is_idle());
}

#[tokio::test]
async fn an_evacuated_node_sends_its_participants_to_the_node_that_takes_its_share() {
    let mut f = fixture();
    let mut old = media_node("seoul-old", "seoul", 500, MediaNodePhase::Draining);
    old.spec.drain = true;
    old.spec.evacuate = true;
    f.add_node(old);
    f.add_node(media_node("seoul-new", "seoul", 500, MediaNodePhase::Ready));
    let mut m = standup(&[("seoul", 20)], 1);
    m.status = Some(MeetingStatus {
        phase: Some(MeetingPhase::Running),
        nodes: vec![MeetingNode {
            region: "seoul".into(),
            node: "seoul-old".into(),
            participants: 20,
            serves: Default::default(),
        }],
        ..MeetingStatus::default()
    });
    let stored = serde_json::to_value(&m).expect("json");
    let task = reconcile_meeting(&f, m);
    // Answer whatever the reconcile writes (its status and Events are covered elsewhere).
    while !task.is_finished() {
        if let Ok(call) = tokio::time::timeout(Duration::from_millis(200), f.api.next()).await {
            let body = if call.uri.contains("/events") {
                call.body.clone()
            } else {
                stored.clone()
            };
            call.respond(200, &body);
        }
    }
    task.await.expect("join").expect("reconcile");
    let calls = f.nodes.calls();
    assert!(
        calls.contains(&"PUT http://seoul-new:7880/admin/rooms/team.standup".to_owned()),
        "{calls:?}"
    );
    assert!(
        calls.contains(
            &"POST http://seoul-old:7880/admin/rooms/team.standup/move https://seoul-new.media.example"
                .to_owned()
        ),
        "{calls:?}"
    );
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("DELETE http://seoul-old")),
        "moved, not released: {calls:?}"
    );
}
