//! The operator's two edges against a real media-node process: its admin client pushes a
//! meeting's plan and reads `/status`, and a token from its join API admits a participant over
//! real WebSocket signalling, with the meeting's cap and webinar rules holding on the node.

use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use moim_e2e::{Node, SignalClient};
use moim_operator::api::ApiState;
use moim_operator::crd::*;
use moim_operator::metrics::Metrics;
use moim_operator::nodeapi::{HttpNodeAdmin, NodeAdmin};
use moim_operator::secret::SecretSource;
use moim_wire::admin::RoomAssignment;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &str = "shared join-token secret";
const ADMIN: &str = "admin-token-1";

#[tokio::test]
async fn a_plan_pushed_by_the_operator_and_its_join_tokens_work_on_a_real_node()
-> anyhow::Result<()> {
    let node = Node::start(&[
        "--token-secret",
        SECRET,
        "--admin-token",
        ADMIN,
        "--region",
        "seoul",
    ])
    .await?;
    let base = node.url("").trim_end_matches('/').to_owned();

    // The admin client: a wrong token is refused with the node's reason, the right one works.
    let wrong =
        HttpNodeAdmin::new(SecretSource::Value("nope".into())).map_err(anyhow::Error::msg)?;
    let e = wrong.status(&base).await.expect_err("wrong admin token");
    assert!(e.starts_with("403"), "{e}");
    let admin =
        HttpNodeAdmin::new(SecretSource::Value(ADMIN.into())).map_err(anyhow::Error::msg)?;
    let plan = RoomAssignment {
        meeting: "team/standup".into(),
        generation: 1,
        reserved: 2,
        max_participants: Some(2),
        webinar: false,
        links: vec![],
        ..RoomAssignment::default()
    };
    admin
        .assign(&base, "team.standup", &plan)
        .await
        .map_err(anyhow::Error::msg)?;
    // An older plan is not an error (the node keeps the newer one).
    admin
        .assign(
            &base,
            "team.standup",
            &RoomAssignment {
                generation: 0,
                ..plan.clone()
            },
        )
        .await
        .map_err(anyhow::Error::msg)?;
    let st = admin.status(&base).await.map_err(anyhow::Error::msg)?;
    assert_eq!(st.region, "seoul");
    assert_eq!(st.assignments.get("team.standup"), Some(&1));

    // The join API, with caches holding the node and the placed meeting.
    let (meetings, mut mw): (Store<Meeting>, _) = reflector::store();
    let (nodes, mut nw): (Store<MediaNode>, _) = reflector::store();
    let mut n = MediaNode::in_region("seoul-1", "team", "seoul", 100);
    n.status = Some(MediaNodeStatus {
        phase: Some(MediaNodePhase::Ready),
        signalling_url: Some(base.clone()),
        ..MediaNodeStatus::default()
    });
    nw.apply_watcher_event(&watcher::Event::Apply(n));
    let mut m = Meeting::new(
        "standup",
        MeetingSpec {
            title: "standup".into(),
            mode: MeetingMode::Interactive,
            participants: ExpectedParticipants {
                per_region: Some(BTreeMap::from([("seoul".to_owned(), 2)])),
                total: None,
                regions: None,
            },
            max_participants: Some(2),
            schedule: None,
            media: MediaPolicy::default(),
        },
    );
    m.metadata.namespace = Some("team".into());
    m.status = Some(MeetingStatus {
        phase: Some(MeetingPhase::Running),
        participants: Some(0),
        nodes: vec![MeetingNode {
            region: "seoul".into(),
            node: "seoul-1".into(),
            participants: 2,
            serves: Default::default(),
        }],
        ..MeetingStatus::default()
    });
    mw.apply_watcher_event(&watcher::Event::Apply(m));
    let (_ready_tx, ready) = tokio::sync::watch::channel(true);
    let state = Arc::new(ApiState {
        meetings,
        nodes,
        metrics: Metrics::new(),
        api_keys: SecretSource::Value("app-key".into()),
        token_secret: SecretSource::Value(SECRET.into()),
        clock: moim_operator::context::system_clock(),
        token_ttl_secs: 600,
        ready,
        turn: None,
        distances: Default::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let api = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { moim_operator::api::serve(listener, state).await });

    let join = |identity: &'static str, role: &'static str| {
        let api = api.clone();
        async move {
            let r: Value = reqwest::Client::new()
                .post(format!("{api}/v1/join"))
                .bearer_auth("app-key")
                .json(&json!({"namespace": "team", "meeting": "standup", "identity": identity, "role": role, "region": "seoul"}))
                .send()
                .await?
                .json()
                .await?;
            anyhow::Ok(r)
        }
    };
    let ana = join("ana", "participant").await?;
    assert_eq!(ana["url"], base.as_str(), "{ana}");
    let mut a = SignalClient::connect(&node).await?;
    a.join(ana["token"].as_str().unwrap_or_default()).await?;
    let joined = a.recv_type("joined", Duration::from_secs(5)).await?;
    assert_eq!(joined["room"], "team.standup");

    let bo = join("bo", "viewer").await?;
    let mut b = SignalClient::connect(&node).await?;
    b.join(bo["token"].as_str().unwrap_or_default()).await?;
    b.recv_type("joined", Duration::from_secs(5)).await?;

    // The meeting's cap, pushed with the plan, holds on the node.
    let chae = join("chae", "participant").await?;
    let mut c = SignalClient::connect(&node).await?;
    c.join(chae["token"].as_str().unwrap_or_default()).await?;
    assert_eq!(
        c.recv_type("error", Duration::from_secs(5)).await?["code"],
        "room_full"
    );

    let st = admin.status(&base).await.map_err(anyhow::Error::msg)?;
    assert_eq!(st.room_participants.get("team.standup"), Some(&2));
    admin
        .release(&base, "team.standup")
        .await
        .map_err(anyhow::Error::msg)?;
    let st = admin.status(&base).await.map_err(anyhow::Error::msg)?;
    assert!(st.assignments.is_empty());
    Ok(())
}
