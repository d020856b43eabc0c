//! Hostile and broken input: each gets a clear refusal and the node keeps serving.

use anyhow::Context;
use moim_e2e::{Node, SignalClient, dev_token, now_unix, static_offer, wait_status};
use moim_wire::JoinClaims;
use std::time::Duration;

fn client() -> reqwest::Client {
    reqwest::Client::new()
}

async fn post_sdp(
    node: &Node,
    path: &str,
    token: &str,
    body: String,
) -> anyhow::Result<(u16, String)> {
    let r = client()
        .post(node.url(path))
        .header("Content-Type", "application/sdp")
        .header("Authorization", format!("Bearer {token}"))
        .body(body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.text().await?))
}

#[tokio::test]
async fn http_refusals_are_clear() -> anyhow::Result<()> {
    let node = Node::start(&[]).await?;
    let token = dev_token("r1", "ana");

    let (status, body) = post_sdp(&node, "/whip/r1", &token, "hello, i am not sdp".into()).await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("sdp"), "{body}");

    let (status, body) = post_sdp(&node, "/whip/r1", &token, "v=0\r\nm=garbage\r\n".into()).await?;
    assert_eq!(status, 400, "{body}");

    let expired = JoinClaims {
        identity: "ana".into(),
        room: "r1".into(),
        name: String::new(),
        can_publish: true,
        can_subscribe: true,
        can_chat: None,
        exp: now_unix() - 3600,
        nbf: None,
    };
    let (status, body) = post_sdp(
        &node,
        "/whip/r1",
        &expired.sign(moim_wire::token::DEV_SECRET.as_bytes()),
        static_offer(),
    )
    .await?;
    assert_eq!((status, body.trim()), (401, "unauthorized: token expired"));

    let mut forged = expired.clone();
    forged.exp = now_unix() + 3600;
    let (status, body) = post_sdp(
        &node,
        "/whip/r1",
        &forged.sign(b"guessed-secret"),
        static_offer(),
    )
    .await?;
    assert_eq!(
        (status, body.trim()),
        (401, "unauthorized: token signature invalid")
    );

    let (status, body) = post_sdp(&node, "/whip/other-room", &token, static_offer()).await?;
    assert_eq!(status, 403, "{body}");

    let r = client()
        .post(node.url("/whip/r1"))
        .header("Content-Type", "application/sdp")
        .body(static_offer())
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);

    let (status, body) = post_sdp(
        &node,
        "/whep/empty-room",
        &dev_token("empty-room", "bo"),
        static_offer(),
    )
    .await?;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no publisher"), "{body}");

    let huge = "v=0\r\n".to_owned() + &"a=x\r\n".repeat(200_000);
    let (status, _) = post_sdp(&node, "/whip/r1", &token, huge).await?;
    assert_eq!(status, 413);

    let r = client()
        .delete(node.url("/whip/r1/not-a-resource"))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);

    // Still serving.
    assert!(
        reqwest::get(node.url("/healthz"))
            .await?
            .status()
            .is_success()
    );
    Ok(())
}

#[tokio::test]
async fn oversized_and_garbled_signalling_frames() -> anyhow::Result<()> {
    let node = Node::start(&[]).await?;

    // Garbage before join.
    let mut c = SignalClient::connect(&node).await?;
    c.send_text("{{{{".into()).await?;
    let e = c
        .recv(Duration::from_secs(5))
        .await?
        .expect("an error message");
    assert_eq!(e["type"], "error");

    // A forged token.
    let mut c = SignalClient::connect(&node).await?;
    c.join("a.b.c").await?;
    let e = c
        .recv(Duration::from_secs(5))
        .await?
        .expect("an error message");
    assert_eq!(e["code"], "unauthorized", "{e}");

    // A joined client sends garbage, then a 1 MB frame.
    let mut c = SignalClient::connect(&node).await?;
    c.join(&dev_token("r2", "ana")).await?;
    c.recv_type("joined", Duration::from_secs(5)).await?;
    c.send_text(r#"{"type":"reboot"}"#.into()).await?;
    let e = c.recv_type("error", Duration::from_secs(5)).await?;
    assert_eq!(e["code"], "bad_request", "{e}");
    c.send_text("x".repeat(200 * 1024)).await?;
    let e = c.recv_type("error", Duration::from_secs(5)).await?;
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("exceeds"),
        "{e}"
    );
    match c.recv(Duration::from_secs(5)).await? {
        Err(code) => assert_eq!(code, Some(1009)),
        Ok(v) => panic!("expected close, got {v}"),
    }

    // Someone else in the meantime is unaffected.
    let mut d = SignalClient::connect(&node).await?;
    d.join(&dev_token("r2", "bo")).await?;
    let joined = d.recv_type("joined", Duration::from_secs(5)).await?;
    assert_eq!(joined["room"], "r2");
    Ok(())
}

#[tokio::test]
async fn clients_that_vanish_are_cleaned_up() -> anyhow::Result<()> {
    let node = Node::start(&["--connect-timeout", "2s"]).await?;
    // A WHIP client that gets its answer and never connects.
    let (status, _) =
        post_sdp(&node, "/whip/r3", &dev_token("r3", "ghost"), static_offer()).await?;
    assert_eq!(status, 201);
    // A WebSocket client that joins and drops its TCP connection.
    let mut c = SignalClient::connect(&node).await?;
    c.join(&dev_token("r3", "dropper")).await?;
    c.recv_type("joined", Duration::from_secs(5)).await?;
    wait_status(&node, Duration::from_secs(5), |s| s["participants"] == 2).await?;
    drop(c);
    let s = wait_status(&node, Duration::from_secs(10), |s| s["participants"] == 0).await?;
    assert_eq!(s["rooms"], 0);
    Ok(())
}

/// Issue 21's noisy neighbour: one participant sends chat as fast as it can. It is told once
/// a second that it is rate-limited (and what passes is at most the stated rate); a
/// participant that reads nothing for a while stays connected and then finds exactly the
/// messages that passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_flood_is_rate_limited_and_a_slow_reader_keeps_its_seat() -> anyhow::Result<()> {
    let node = Node::start(&[]).await?;
    let mut slow = SignalClient::connect(&node).await?;
    slow.join(&dev_token("chatty", "slow")).await?;
    slow.recv_type("joined", Duration::from_secs(5)).await?;
    let mut loud = SignalClient::connect(&node).await?;
    loud.join(&dev_token("chatty", "loud")).await?;
    loud.recv_type("joined", Duration::from_secs(5)).await?;
    let started = std::time::Instant::now();
    // Well over the slow reader's 512-message outbox, sent without waiting.
    for i in 0..3000 {
        loud.send_text(
            serde_json::json!({"type": "chat", "text": format!("spam {i}")}).to_string(),
        )
        .await?;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    let mut refusals = 0;
    while let Ok(Ok(m)) = loud.recv(Duration::from_millis(500)).await {
        if m["type"] == "error" {
            assert_eq!(m["code"], "rate_limited", "{m}");
            assert!(
                m["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("5 messages a second"),
                "{m}"
            );
            refusals += 1;
        }
    }
    let passed =
        moim_e2e::metric(&reqwest::Client::new(), &node, "moim_chat_messages_total").await?;
    let refused =
        moim_e2e::metric(&reqwest::Client::new(), &node, "moim_chat_refused_total").await?;
    println!(
        "3000 chat messages in {flood_secs:.2} s: {passed} passed, {refused} dropped, {refusals} refusals told"
    );
    assert!(
        refusals >= 1 && f64::from(refusals) <= flood_secs + 2.0,
        "{refusals}"
    );
    assert!(
        passed >= 10.0 && passed <= 10.0 + 5.0 * (flood_secs + 1.0),
        "{passed}"
    );
    assert_eq!(passed + refused, 3000.0);
    // The slow reader is still there and gets every message that passed, in order.
    let mut got = 0;
    loop {
        match slow.recv(Duration::from_millis(500)).await {
            Ok(Ok(m)) if m["type"] == "chat" => {
                assert!(m["text"].as_str().unwrap_or("").starts_with("spam "));
                got += 1;
            }
            Ok(Ok(_)) => {}
            Ok(Err(code)) => anyhow::bail!("the slow reader was dropped ({code:?})"),
            Err(_) => break,
        }
    }
    assert_eq!(f64::from(got), passed);
    assert_eq!(
        wait_status(&node, Duration::from_secs(2), |s| s["participants"] == 2).await?["participants"],
        2
    );
    Ok(())
}

/// One WebSocket session per identity in a room (issue 21): a second join with the same
/// identity takes the seat; the first is told why and closed, and does not count any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_identity_joining_twice_replaces_the_older_session() -> anyhow::Result<()> {
    let node = Node::start(&[]).await?;
    let token = dev_token("twice", "ana");
    let mut first = SignalClient::connect(&node).await?;
    first.join(&token).await?;
    first.recv_type("joined", Duration::from_secs(5)).await?;
    let mut second = SignalClient::connect(&node).await?;
    second.join(&token).await?;
    second.recv_type("joined", Duration::from_secs(5)).await?;
    let told = first.recv_type("error", Duration::from_secs(5)).await?;
    assert_eq!(told["code"], "replaced", "{told}");
    // Until the node closes it.
    while first.recv(Duration::from_secs(5)).await?.is_ok() {}
    let st = wait_status(&node, Duration::from_secs(5), |s| s["participants"] == 1).await?;
    assert_eq!(st["participants"], 1);
    // Another identity is another seat.
    let mut other = SignalClient::connect(&node).await?;
    other.join(&dev_token("twice", "bo")).await?;
    other.recv_type("joined", Duration::from_secs(5)).await?;
    wait_status(&node, Duration::from_secs(5), |s| s["participants"] == 2).await?;
    Ok(())
}

/// Sockets that never join cannot pile up (issue 21): at most 256 wait for their `join` at
/// once, each at most 10 s and reading at most 256 KiB; the next is refused with a 503 that
/// says why, and once a waiting one joins there is room again. A frame over 256 KiB gets a
/// bare close (1009).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_join_are_capped() -> anyhow::Result<()> {
    let node = Node::start(&[]).await?;
    let mut idle = Vec::new();
    for _ in 0..256 {
        idle.push(SignalClient::connect(&node).await?);
    }
    let refused = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.http)).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 503);
            let body =
                String::from_utf8_lossy(r.body().as_deref().unwrap_or_default()).into_owned();
            assert!(body.contains("waiting to join"), "{body}");
        }
        other => anyhow::bail!(
            "the 257th unjoined socket was not refused: {:?}",
            other.map(|_| ())
        ),
    }
    // One of them joins: a place frees up.
    idle[0].join(&dev_token("cap", "ana")).await?;
    idle[0].recv_type("joined", Duration::from_secs(5)).await?;
    let mut next = SignalClient::connect(&node).await?;
    next.join(&dev_token("cap", "bo")).await?;
    next.recv_type("joined", Duration::from_secs(5)).await?;
    // A frame far over the limit is cut off by the protocol.
    // (The node may close while the frame is still being written: then the write fails.)
    let mut big = SignalClient::connect(&node).await?;
    if big.send_text("x".repeat(1024 * 1024)).await.is_ok() {
        match big.recv(Duration::from_secs(5)).await? {
            Err(code) => assert!(code == Some(1009) || code.is_none(), "{code:?}"),
            Ok(v) => anyhow::bail!("expected a close, got {v}"),
        }
    }
    Ok(())
}

/// Issue 21's caps on what one participant may negotiate, each refusal as the client sees it:
/// too many media sections, too many simulcast layers, and offers faster than the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_over_the_caps_are_refused_and_renegotiation_is_rate_limited() -> anyhow::Result<()>
{
    const T: Duration = Duration::from_secs(5);
    let node = Node::start(&[]).await?;
    let mut c = SignalClient::connect(&node).await?;
    c.join(&dev_token("caps", "ana")).await?;
    c.recv_type("joined", T).await?;
    let offer = |sdp: &str| {
        serde_json::json!({ "type": "publish_offer", "sdp": sdp, "tracks": [] }).to_string()
    };
    // The reply to an offer: its answer or an error.
    async fn reply(c: &mut SignalClient) -> anyhow::Result<serde_json::Value> {
        loop {
            match c.recv(T).await? {
                Ok(v) if v["type"] == "publish_answer" || v["type"] == "error" => return Ok(v),
                Ok(_) => {}
                Err(code) => anyhow::bail!("closed: {code:?}"),
            }
        }
    }
    let one = static_offer();
    let at = one.find("m=video").expect("a media section");
    let many = one[..at].to_owned() + &one[at..].repeat(17);
    c.send_text(offer(&many)).await?;
    let e = reply(&mut c).await?;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(
        e["message"], "bad request: an offer may carry at most 16 media sections",
        "{e}"
    );
    let rids = one.replace(
        "a=rtcp-mux\r\n",
        "a=rtcp-mux\r\na=rid:q send\r\na=rid:h send\r\na=rid:f send\r\na=rid:x send\r\n",
    );
    c.send_text(offer(&rids)).await?;
    let e = reply(&mut c).await?;
    assert_eq!(e["code"], "bad_request", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 3 simulcast layers"),
        "{e}"
    );
    // Those two took 2 of the burst of 10: 8 more are answered, the next is refused.
    let mut replies = Vec::new();
    for _ in 0..9 {
        c.send_text(offer(&one)).await?;
        replies.push(reply(&mut c).await?);
    }
    for r in &replies[..8] {
        assert_eq!(r["type"], "publish_answer", "{r}");
    }
    assert_eq!(replies[8]["code"], "rate_limited", "{}", replies[8]);
    assert!(
        replies[8]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("at most 1 publish offer or ICE restart a second"),
        "{}",
        replies[8]
    );
    // A second later there is room for one more; the session was never dropped.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.send_text(offer(&one)).await?;
    assert_eq!(reply(&mut c).await?["type"], "publish_answer");
    Ok(())
}

/// Chat is a right in the token (issue 21): a view-only token (a webinar's audience) cannot
/// chat unless it says `can_chat`; the refusal is `forbidden`, and `joined` says so up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_token_chats_only_when_it_says_so() -> anyhow::Result<()> {
    const T: Duration = Duration::from_secs(5);
    let node = Node::start(&[]).await?;
    let token = |identity: &str, can_chat: Option<bool>| {
        JoinClaims {
            identity: identity.into(),
            room: "webinar".into(),
            name: String::new(),
            can_publish: false,
            can_subscribe: true,
            can_chat,
            exp: now_unix() + 3600,
            nbf: None,
        }
        .sign(moim_wire::token::DEV_SECRET.as_bytes())
    };
    let mut host = SignalClient::connect(&node).await?;
    host.join(&dev_token("webinar", "host")).await?;
    assert_eq!(host.recv_type("joined", T).await?["can_chat"], true);
    let mut viewer = SignalClient::connect(&node).await?;
    viewer.join(&token("viewer", None)).await?;
    assert_eq!(viewer.recv_type("joined", T).await?["can_chat"], false);
    viewer
        .send_text(r#"{"type":"chat","text":"hello from the audience"}"#.into())
        .await?;
    let e = viewer.recv_type("error", T).await?;
    assert_eq!(e["code"], "forbidden", "{e}");
    assert_eq!(e["message"], "forbidden: token does not allow chat", "{e}");
    let mut moderator = SignalClient::connect(&node).await?;
    moderator.join(&token("moderator", Some(true))).await?;
    assert_eq!(moderator.recv_type("joined", T).await?["can_chat"], true);
    moderator
        .send_text(r#"{"type":"chat","text":"questions welcome"}"#.into())
        .await?;
    // The host gets the moderator's message and never the viewer's.
    let m = host.recv_type("chat", T).await?;
    assert_eq!(m["text"], "questions welcome", "{m}");
    Ok(())
}

/// Issue 21's bounds on per-session state, each refusal as the client sees it: track ids over
/// 256 bytes (in a publish offer and a layer preference) and more than 256 layer preferences;
/// declarations of tracks that are not published are forgotten instead of piling up. The session stays, and what is under the caps still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_session_state_is_bounded() -> anyhow::Result<()> {
    const T: Duration = Duration::from_secs(5);
    let node = Node::start(&[]).await?;
    let mut c = SignalClient::connect(&node).await?;
    c.join(&dev_token("bounds", "ana")).await?;
    c.recv_type("joined", T).await?;
    let publish = |ids: &[String]| {
        let tracks: Vec<serde_json::Value> = ids
            .iter()
            .map(|id| serde_json::json!({ "track_id": id, "source": "camera" }))
            .collect();
        serde_json::json!({ "type": "publish_offer", "sdp": static_offer(), "tracks": tracks })
            .to_string()
    };
    async fn error(c: &mut SignalClient) -> anyhow::Result<String> {
        let e = c.recv_type("error", T).await?;
        anyhow::ensure!(e["code"] == "bad_request", "{e}");
        Ok(e["message"].as_str().unwrap_or_default().to_owned())
    }
    c.send_text(publish(&["x".repeat(257)])).await?;
    assert!(error(&mut c).await?.contains("at most 256 bytes"));
    let layer = |id: &str| {
        serde_json::json!({ "type": "layer_preference", "track_id": id, "max_width": 320, "max_height": 180 })
            .to_string()
    };
    c.send_text(layer(&"y".repeat(257))).await?;
    assert!(error(&mut c).await?.contains("at most 256 bytes"));
    // 16 tracks per offer are read. Four offers declare 64; none is published (no media
    // came), so the fifth offer's declarations replace them rather than grow the map.
    for round in 0..5 {
        let ids: Vec<String> = (0..16).map(|i| format!("t{round}-{i}")).collect();
        c.send_text(publish(&ids)).await?;
        loop {
            let m = c
                .recv(T)
                .await
                .with_context(|| format!("offer {round}"))?
                .map_err(|code| anyhow::anyhow!("closed: {code:?}"))?;
            anyhow::ensure!(m["type"] != "error", "offer {round}: {m}");
            if m["type"] == "publish_answer" {
                break;
            }
        }
    }
    for i in 0..256 {
        c.send_text(layer(&format!("w{i}"))).await?;
    }
    c.send_text(layer("w-over")).await?;
    assert!(
        error(&mut c)
            .await
            .context("layer preferences")?
            .contains("too many layer preferences")
    );
    // An existing preference may still change; the session is still there.
    c.send_text(layer("w7")).await?;
    assert_eq!(
        wait_status(&node, T, |s| s["participants"] == 1).await?["participants"],
        1
    );
    Ok(())
}
