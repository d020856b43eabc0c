//! The join API over real HTTP: API keys, the node choice, the token it signs, and a clear
//! error for every way a join can be refused.

use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use moim_operator::api::ApiState;
use moim_operator::crd::*;
use moim_operator::metrics::Metrics;
use moim_operator::secret::SecretSource;
use moim_wire::JoinClaims;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::watch;

const NOW: &str = "2026-11-21T10:00:00Z";
const SECRET: &str = "node token secret";

fn node(name: &str, region: &str, capacity: u32, load: u32, phase: MediaNodePhase) -> MediaNode {
    let mut n = MediaNode::in_region(name, "team", region, capacity);
    n.status = Some(MediaNodeStatus {
        phase: Some(phase),
        signalling_url: Some(format!("https://{name}.media.example")),
        load: Some(NodeLoad {
            participants: load,
            ..NodeLoad::default()
        }),
        ..MediaNodeStatus::default()
    });
    n
}

fn meeting(name: &str, mode: MeetingMode, phase: MeetingPhase, participants: u32) -> Meeting {
    let mut m = Meeting::new(
        name,
        MeetingSpec {
            title: name.into(),
            mode,
            participants: ExpectedParticipants {
                per_region: Some(BTreeMap::from([
                    ("seoul".to_owned(), 20),
                    ("frankfurt".to_owned(), 8),
                ])),
                total: None,
                regions: None,
            },
            max_participants: Some(30),
            schedule: None,
            media: MediaPolicy::default(),
        },
    );
    m.metadata.namespace = Some("team".into());
    m.status = Some(MeetingStatus {
        phase: Some(phase),
        participants: Some(participants),
        nodes: vec![
            MeetingNode {
                region: "frankfurt".into(),
                node: "fra-1".into(),
                participants: 8,
                serves: Default::default(),
            },
            MeetingNode {
                region: "seoul".into(),
                node: "seoul-1".into(),
                participants: 20,
                serves: Default::default(),
            },
        ],
        ..MeetingStatus::default()
    });
    m
}

async fn serve(ready: bool) -> (String, watch::Sender<bool>) {
    let (meetings, mut mw): (Store<Meeting>, _) = reflector::store();
    let (nodes, mut nw): (Store<MediaNode>, _) = reflector::store();
    for m in [
        meeting(
            "standup",
            MeetingMode::Interactive,
            MeetingPhase::Running,
            3,
        ),
        meeting("keynote", MeetingMode::Webinar, MeetingPhase::Running, 3),
        meeting(
            "packed",
            MeetingMode::Interactive,
            MeetingPhase::Running,
            30,
        ),
        meeting("over", MeetingMode::Interactive, MeetingPhase::Ended, 0),
        {
            let mut m = meeting("new", MeetingMode::Interactive, MeetingPhase::Placing, 0);
            if let Some(s) = m.status.as_mut() {
                s.nodes.clear();
            }
            m
        },
    ] {
        mw.apply_watcher_event(&watcher::Event::Apply(m));
    }
    nw.apply_watcher_event(&watcher::Event::Apply(node(
        "seoul-1",
        "seoul",
        100,
        10,
        MediaNodePhase::Ready,
    )));
    nw.apply_watcher_event(&watcher::Event::Apply(node(
        "fra-1",
        "frankfurt",
        100,
        100,
        MediaNodePhase::Ready,
    )));
    let (tx, rx) = watch::channel(ready);
    let state = Arc::new(ApiState {
        meetings,
        nodes,
        metrics: Metrics::new(),
        api_keys: SecretSource::Value("old-key\nnew-key".into()),
        token_secret: SecretSource::Value(SECRET.into()),
        clock: Arc::new(|| NOW.parse::<Timestamp>().expect("timestamp")),
        token_ttl_secs: 600,
        ready: rx,
        turn: None,
        distances: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { moim_operator::api::serve(listener, state).await });
    (format!("http://{addr}"), tx)
}

async fn join(base: &str, key: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v1/join"))
        .json(&body);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn now_unix() -> u64 {
    NOW.parse::<Timestamp>().expect("timestamp").as_second() as u64
}

#[tokio::test]
async fn a_participant_gets_the_nearest_node_with_room_and_a_token_for_it() {
    let (base, _ready) = serve(true).await;
    let (status, body) = join(
        &base,
        Some("new-key"),
        json!({"namespace": "team", "meeting": "standup", "identity": "ana", "name": "Ana", "region": "seoul"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["url"], "https://seoul-1.media.example");
    assert_eq!(body["node"], "seoul-1");
    assert_eq!(body["region"], "seoul");
    assert_eq!(body["room"], "team.standup");
    assert_eq!(body["canPublish"], true);
    let claims = JoinClaims::verify(
        body["token"].as_str().expect("token"),
        SECRET.as_bytes(),
        now_unix(),
    )
    .expect("the token verifies with the nodes' secret");
    assert_eq!(claims.room, "team.standup");
    assert_eq!(claims.identity, "ana");
    assert_eq!(claims.exp, now_unix() + 600);

    // Frankfurt's only node is full: a participant from there goes to the next best node.
    let (status, body) = join(
        &base,
        Some("old-key"),
        json!({"namespace": "team", "meeting": "standup", "identity": "bo", "region": "frankfurt"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["node"], "seoul-1");
    // No hint: the meeting's largest region.
    let (_, body) = join(
        &base,
        Some("new-key"),
        json!({"namespace": "team", "meeting": "standup", "identity": "chae"}),
    )
    .await;
    assert_eq!(body["region"], "seoul");
    // An unknown region hint falls back the same way.
    let (_, body) = join(
        &base,
        Some("new-key"),
        json!({"namespace": "team", "meeting": "standup", "identity": "dan", "region": "mars"}),
    )
    .await;
    assert_eq!(body["region"], "seoul");
}

#[tokio::test]
async fn webinar_attendees_and_viewers_cannot_publish_hosts_can() {
    let (base, _ready) = serve(true).await;
    let cases = [
        ("keynote", "participant", false),
        ("keynote", "host", true),
        ("standup", "viewer", false),
    ];
    for (m, role, publish) in cases {
        let (status, body) = join(
            &base,
            Some("new-key"),
            json!({"namespace": "team", "meeting": m, "identity": "x", "role": role}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["canPublish"], publish, "{m} {role}");
        let claims = JoinClaims::verify(
            body["token"].as_str().expect("token"),
            SECRET.as_bytes(),
            now_unix(),
        )
        .expect("verifies");
        assert_eq!(claims.can_publish, publish);
    }
}

#[tokio::test]
async fn every_refusal_is_a_clear_error() {
    let (base, ready) = serve(true).await;
    let ok_body = json!({"namespace": "team", "meeting": "standup", "identity": "ana"});
    let cases: Vec<(Option<&str>, Value, u16, &str)> = vec![
        (None, ok_body.clone(), 401, "unauthorized"),
        (Some("wrong"), ok_body.clone(), 401, "unauthorized"),
        (
            Some("new-key"),
            json!({"namespace": "team", "meeting": "nope", "identity": "a"}),
            404,
            "unknown_meeting",
        ),
        (
            Some("new-key"),
            json!({"namespace": "team", "meeting": "over", "identity": "a"}),
            410,
            "meeting_ended",
        ),
        (
            Some("new-key"),
            json!({"namespace": "team", "meeting": "packed", "identity": "a"}),
            409,
            "meeting_full",
        ),
        (
            Some("new-key"),
            json!({"namespace": "team", "meeting": "new", "identity": "a"}),
            503,
            "not_placed",
        ),
        (
            Some("new-key"),
            json!({"namespace": "team", "meeting": "standup", "identity": ""}),
            400,
            "bad_request",
        ),
        (
            Some("new-key"),
            json!({"namespace": "team", "meeting": "standup", "identity": "a", "role": "admin"}),
            400,
            "bad_request",
        ),
        (
            Some("new-key"),
            json!({"meeting": "standup", "identity": "a", "extra": 1}),
            400,
            "bad_request",
        ),
    ];
    for (key, body, status, code) in cases {
        let (got, answer) = join(&base, key, body.clone()).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{body} → {answer}"
        );
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Garbage and oversized bodies.
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/join"))
        .bearer_auth("new-key")
        .body("{\"meeting\":")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 400);
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/join"))
        .bearer_auth("new-key")
        .body(vec![b' '; 64 * 1024])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status().as_u16(), 413);
    // A replica whose caches have not synced serves no joins and says so on /readyz.
    ready.send(false).expect("send");
    let (got, answer) = join(&base, Some("new-key"), ok_body).await;
    assert_eq!((got, answer["error"].as_str()), (503, Some("unavailable")));
    let r = reqwest::get(format!("{base}/readyz")).await.expect("get");
    assert_eq!(r.status().as_u16(), 503);
    // The metrics count joins by outcome, and meetings and nodes by phase.
    let text = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("get")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("moim_operator_join_requests_total{outcome=\"meeting_full\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("moim_operator_meetings{phase=\"Running\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("moim_operator_media_nodes{phase=\"Ready\"} 2"),
        "{text}"
    );
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed");
    if let Some(mut stdin) = promtool.stdin.take() {
        use std::io::Write;
        stdin.write_all(text.as_bytes()).expect("write");
    }
    let out = promtool.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool refused the operator's metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
