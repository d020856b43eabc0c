//! The admin surface: Prometheus text that promtool accepts, `/status`, and draining.

use moim_e2e::{
    Browser, Node, SignalClient, dev_token, promtool, sample, wait_decoding, wait_status,
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_count_real_traffic() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    let mut browsers = Vec::new();
    for name in ["ana", "bo"] {
        let b = Browser::start().await?;
        b.goto(&node.url(&format!(
            "/?room=m&name={name}&autojoin=1&token={}",
            dev_token("m", name)
        )))
        .await?;
        browsers.push(b);
        if name == "ana" {
            // Ana's video flows before Bo joins, so Bo's subscription needs a keyframe
            // request (a subscriber present from the start gets the stream's first keyframe).
            wait_status(&node, Duration::from_secs(30), |s| {
                s["published_tracks"].as_u64() == Some(2) && s["ingress_bps"].as_u64() > Some(0)
            })
            .await?;
        }
    }
    for b in &browsers {
        wait_decoding(b, "moim.sub", 1, Duration::from_secs(30)).await?;
    }
    let status = wait_status(&node, Duration::from_secs(5), |s| {
        s["egress_bps"].as_u64().unwrap_or(0) > 0
    })
    .await?;
    assert_eq!(status["participants"], 2);
    assert_eq!(status["rooms"], 1);
    assert_eq!(status["published_tracks"], 4, "{status}");
    assert_eq!(status["forwarded_streams"], 4, "{status}");
    assert_eq!(status["ready"], true);

    let text = reqwest::get(node.url("/metrics")).await?.text().await?;
    let (ok, said) = promtool(&text)?;
    assert!(
        ok,
        "promtool check metrics refused /metrics:\n{said}\n{text}"
    );
    assert!(
        sample(&text, "moim_rtp_packets_sent_total").unwrap_or(0.0) > 100.0,
        "{text}"
    );
    assert!(sample(&text, "moim_rtp_packets_received_total").unwrap_or(0.0) > 100.0);
    assert_eq!(sample(&text, "moim_participants"), Some(2.0));
    assert!(
        sample(&text, "moim_join_seconds_count").unwrap_or(0.0) >= 2.0,
        "{text}"
    );
    assert!(
        sample(&text, "moim_plis_sent_total").unwrap_or(0.0) >= 1.0,
        "a keyframe is requested when a subscriber joins"
    );
    for b in browsers {
        b.close().await;
    }
    Ok(())
}

#[tokio::test]
async fn drain_keeps_rooms_refuses_new_ones_and_exits_when_empty() -> anyhow::Result<()> {
    let mut node = Node::start(&["--connect-timeout", "60s"]).await?;
    let mut a = SignalClient::connect(&node).await?;
    a.join(&dev_token("ongoing", "ana")).await?;
    a.recv_type("joined", Duration::from_secs(5)).await?;
    assert_eq!(
        reqwest::get(node.url("/readyz")).await?.status().as_u16(),
        200
    );

    let r = reqwest::Client::new()
        .post(node.url("/drain"))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 202);
    a.recv_type("draining", Duration::from_secs(5)).await?;
    let r = reqwest::get(node.url("/readyz")).await?;
    assert_eq!(r.status().as_u16(), 503);
    assert_eq!(
        reqwest::get(node.url("/healthz")).await?.status().as_u16(),
        200
    );

    // A new room is refused, the ongoing one still takes people.
    let mut b = SignalClient::connect(&node).await?;
    b.join(&dev_token("new-room", "bo")).await?;
    let e = b.recv_type("error", Duration::from_secs(5)).await?;
    assert_eq!(e["code"], "draining");
    let mut c = SignalClient::connect(&node).await?;
    c.join(&dev_token("ongoing", "chae")).await?;
    c.recv_type("joined", Duration::from_secs(5)).await?;

    assert!(
        !node.wait_exit(Duration::from_millis(500)),
        "must not exit while the room is live"
    );
    drop(a);
    drop(c);
    assert!(
        node.wait_exit(Duration::from_secs(10)),
        "node exits once the last session left"
    );
    Ok(())
}

#[tokio::test]
async fn sigterm_drains_and_admin_token_guards_admin_api() -> anyhow::Result<()> {
    let mut node = Node::start(&["--admin-token", "s3cret"]).await?;
    let http = reqwest::Client::new();
    assert_eq!(
        http.get(node.url("/status"))
            .send()
            .await?
            .status()
            .as_u16(),
        401
    );
    assert_eq!(
        http.post(node.url("/drain"))
            .bearer_auth("wrong")
            .send()
            .await?
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        http.get(node.url("/status"))
            .bearer_auth("s3cret")
            .send()
            .await?
            .status()
            .as_u16(),
        200
    );
    node.terminate();
    assert!(
        node.wait_exit(Duration::from_secs(10)),
        "an idle node exits on SIGTERM"
    );
    Ok(())
}

#[tokio::test]
async fn operator_assignments_cap_rooms_and_show_in_status() -> anyhow::Result<()> {
    let node = Node::start(&["--admin-token", "s3cret"]).await?;
    let http = reqwest::Client::new();
    let put = |generation: i64, body: serde_json::Value| {
        let mut body = body;
        body["generation"] = generation.into();
        http.put(node.url("/admin/rooms/team.standup"))
            .bearer_auth("s3cret")
            .json(&body)
            .send()
    };
    let plan = serde_json::json!({
        "meeting": "team/standup", "reserved": 2, "maxParticipants": 1,
        "links": [{"peer": "frankfurt-1", "address": "10.0.0.9:7882", "upstream": true}]
    });
    // Without the admin token the plan is refused.
    let r = http
        .put(node.url("/admin/rooms/team.standup"))
        .json(&plan)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(put(2, plan.clone()).await?.status().as_u16(), 200);
    // A delayed push of an older plan does not undo the newer one.
    assert_eq!(put(1, plan.clone()).await?.status().as_u16(), 409);
    // Garbage is a clear 400, not a crash.
    let r = http
        .put(node.url("/admin/rooms/team.standup"))
        .bearer_auth("s3cret")
        .body("{\"meeting\": 7")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await?.contains("room assignment"));

    // The meeting's cap holds on this node: the second participant is refused.
    let mut a = SignalClient::connect(&node).await?;
    a.join(&dev_token("team.standup", "ana")).await?;
    a.recv_type("joined", Duration::from_secs(5)).await?;
    let mut b = SignalClient::connect(&node).await?;
    b.join(&dev_token("team.standup", "bo")).await?;
    assert_eq!(
        b.recv_type("error", Duration::from_secs(5)).await?["code"],
        "room_full"
    );
    let status = moim_e2e::admin_status(&http, &node, "s3cret").await?;
    assert_eq!(status["assignments"]["team.standup"], 2, "{status}");
    assert_eq!(status["room_participants"]["team.standup"], 1, "{status}");

    // Released: the room falls back to the node's own limit, Ana stays.
    let r = http
        .delete(node.url("/admin/rooms/team.standup"))
        .bearer_auth("s3cret")
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 204);
    let mut c = SignalClient::connect(&node).await?;
    c.join(&dev_token("team.standup", "chae")).await?;
    c.recv_type("joined", Duration::from_secs(5)).await?;
    drop(a);
    Ok(())
}

#[tokio::test]
async fn a_drain_the_operator_asked_for_can_be_undone_but_not_a_final_one() -> anyhow::Result<()> {
    let mut node = Node::start(&["--connect-timeout", "60s"]).await?;
    let http = reqwest::Client::new();
    let mut a = SignalClient::connect(&node).await?;
    a.join(&dev_token("ongoing", "ana")).await?;
    a.recv_type("joined", Duration::from_secs(5)).await?;
    let readyz = node.url("/readyz");
    let ready = || async {
        reqwest::get(readyz.as_str())
            .await
            .map(|r| r.status().as_u16())
    };

    assert_eq!(
        http.post(node.url("/drain"))
            .send()
            .await?
            .status()
            .as_u16(),
        202
    );
    a.recv_type("draining", Duration::from_secs(5)).await?;
    assert_eq!(ready().await?, 503);
    // Taken back: ready again, new rooms accepted, and it does not exit when empty.
    let r = http.delete(node.url("/drain")).send().await?;
    assert_eq!(r.status().as_u16(), 200, "{}", r.text().await?);
    assert_eq!(ready().await?, 200);
    let mut b = SignalClient::connect(&node).await?;
    b.join(&dev_token("new-room", "bo")).await?;
    b.recv_type("joined", Duration::from_secs(5)).await?;
    drop(a);
    assert!(
        !node.wait_exit(Duration::from_secs(2)),
        "a node taken back keeps serving"
    );

    // A final drain (the preStop hook's) cannot be undone (b keeps the node up meanwhile), and
    // the node exits once empty.
    let r = http.post(node.url("/drain?final=true")).send().await?;
    assert_eq!(r.status().as_u16(), 202);
    b.recv_type("draining", Duration::from_secs(5)).await?;
    let r = http.delete(node.url("/drain")).send().await?;
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(ready().await?, 503);
    drop(b);
    assert!(
        node.wait_exit(Duration::from_secs(10)),
        "an empty node exits after a final drain"
    );
    Ok(())
}

#[tokio::test]
async fn a_moved_room_sends_its_participants_to_the_new_node() -> anyhow::Result<()> {
    let node = Node::start(&["--admin-token", "s3cret"]).await?;
    let http = reqwest::Client::new();
    let mut a = SignalClient::connect(&node).await?;
    a.join(&dev_token("team.standup", "ana")).await?;
    a.recv_type("joined", Duration::from_secs(5)).await?;
    let mut other = SignalClient::connect(&node).await?;
    other.join(&dev_token("team.other", "bo")).await?;
    other.recv_type("joined", Duration::from_secs(5)).await?;
    let mv = |body: serde_json::Value| {
        http.post(node.url("/admin/rooms/team.standup/move"))
            .bearer_auth("s3cret")
            .json(&body)
            .send()
    };
    // Refused: no token, a URL a browser must not be sent to, garbage.
    let r = http
        .post(node.url("/admin/rooms/team.standup/move"))
        .json(&serde_json::json!({"url": "https://seoul-2.example"}))
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 401);
    for bad in [
        serde_json::json!({"url": "javascript:alert(1)"}),
        serde_json::json!({"url": "https://a.example/\nx"}),
        serde_json::json!({"url": format!("https://{}", "a".repeat(3000))}),
        serde_json::json!({"where": "nowhere"}),
    ] {
        let r = mv(bad.clone()).await?;
        assert_eq!(r.status().as_u16(), 400, "{bad}");
    }
    let r = mv(serde_json::json!({"url": "https://seoul-2.example"})).await?;
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await?.trim(), "1 participants sent on");
    let d = a.recv_type("draining", Duration::from_secs(5)).await?;
    assert_eq!(d["url"], "https://seoul-2.example");
    // Only that room's people are moved.
    assert!(
        other
            .recv_type("draining", Duration::from_millis(500))
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn the_pre_stop_hook_drains_for_good_and_waits_for_the_last_participant() -> anyhow::Result<()>
{
    let mut node = Node::start(&["--admin-token", "s3cret", "--connect-timeout", "60s"]).await?;
    let mut a = SignalClient::connect(&node).await?;
    a.join(&dev_token("ongoing", "ana")).await?;
    a.recv_type("joined", Duration::from_secs(5)).await?;
    let mut hook = tokio::process::Command::new(moim_e2e::binary("media-node")?)
        .args([
            "drain",
            "--wait",
            "--http",
            node.url("").trim_start_matches("http://"),
        ])
        .env("MOIM_ADMIN_TOKEN", "s3cret")
        .spawn()?;
    a.recv_type("draining", Duration::from_secs(5)).await?;
    // The hook waits while someone is still there.
    assert!(
        tokio::time::timeout(Duration::from_secs(3), hook.wait())
            .await
            .is_err(),
        "the hook returned with a participant left"
    );
    drop(a);
    let status = tokio::time::timeout(Duration::from_secs(15), hook.wait()).await??;
    assert!(status.success(), "{status}");
    assert!(node.wait_exit(Duration::from_secs(10)));
    // A wrong token is a failure the kubelet logs, not a silent success.
    let out = tokio::process::Command::new(moim_e2e::binary("media-node")?)
        .args(["drain", "--http", "127.0.0.1:1"])
        .output()
        .await?;
    assert!(!out.status.success());
    Ok(())
}

/// Fail closed (issue 21): configurations that would leave a node open refuse to start, each
/// saying why, and `/dev/token` never signs with a real secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_configurations_that_would_leave_it_open() -> anyhow::Result<()> {
    let bin = moim_e2e::binary("media-node")?;
    let refused = |args: &[&str], envs: &[(&str, &str)]| -> anyhow::Result<String> {
        let mut cmd = std::process::Command::new(&bin);
        cmd.env("MOIM_HTTP", "127.0.0.1:0")
            .env("MOIM_UDP", "127.0.0.1:0")
            .args(args)
            .env_remove("MOIM_ADMIN_TOKEN")
            .env_remove("MOIM_TOKEN_SECRET");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let out = cmd.output()?;
        anyhow::ensure!(!out.status.success(), "{args:?} started");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // No admin token outside --dev.
    let e = refused(&["--token-secret", "s3cret"], &[])?;
    assert!(e.contains("no admin token"), "{e}");
    // Empty secrets.
    let e = refused(&["--token-secret", "", "--admin-token", "a"], &[])?;
    assert!(e.contains("token secret is empty"), "{e}");
    let e = refused(&["--token-secret", "s3cret", "--admin-token", ""], &[])?;
    assert!(e.contains("is empty"), "{e}");
    // --dev on an address other machines reach.
    let e = refused(&["--dev", "--http", "0.0.0.0:0"], &[])?;
    assert!(e.contains("loopback only"), "{e}");
    // MOIM_DEV in the environment does not make a dev node.
    let e = refused(&[], &[("MOIM_DEV", "true")])?;
    assert!(e.contains("no token secret"), "{e}");

    // A --dev node given a real secret (as `operator local` runs them) mints no tokens.
    let node = Node::start(&["--token-secret", "a real one", "--admin-token", "adm"]).await?;
    let r = reqwest::get(node.url("/dev/token?room=r&identity=x")).await?;
    assert_eq!(r.status(), 404);
    // The admin token is compared whole: a prefix or a longer guess is refused.
    let http = reqwest::Client::new();
    for guess in ["ad", "admx", "ADM"] {
        let r = http
            .get(node.url("/status"))
            .header("authorization", format!("Bearer {guess}"))
            .send()
            .await?;
        assert_ne!(r.status(), 200, "{guess:?}");
    }
    let r = http
        .get(node.url("/status"))
        .bearer_auth("adm")
        .send()
        .await?;
    assert_eq!(r.status(), 200);
    Ok(())
}
