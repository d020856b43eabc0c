//! The cascade: media nodes in three regions linked over QUIC, one room across them.

use media_node::relay::link::RelayEndpoint;
use media_node::relay::proto::Control;
use media_node::relay::testing::{self, trust, write_pki};
use media_node::relay::tls::RelayTls;
use moim_e2e::impair::{GilbertElliott, ImpairedPath, Loss, PathProfile};
use moim_e2e::{Browser, Node, free_udp_port, sample, wait_decoding, wait_status};
use std::time::{Duration, Instant};

/// Three linked nodes: seoul listens, frankfurt dials seoul, virginia dials both.
async fn three_regions() -> anyhow::Result<Vec<Node>> {
    let relay: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let seoul = Node::start_relay("seoul-1", "seoul", &relay[0], &[], &[]).await?;
    let fra = Node::start_relay("fra-1", "frankfurt", &relay[1], &[&relay[0]], &[]).await?;
    let va = Node::start_relay("va-1", "virginia", &relay[2], &[&relay[0], &relay[1]], &[]).await?;
    let nodes = vec![seoul, fra, va];
    moim_e2e::wait_relay_links(&nodes, 2.0, Duration::from_secs(20)).await?;
    Ok(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_in_each_region_sees_the_other_two() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let nodes = three_regions().await?;
    let mut browsers = Vec::new();
    for (node, name) in nodes.iter().zip(["ana", "bo", "chae"]) {
        browsers.push(Browser::join(node, "world", name, true).await?);
    }
    for b in &browsers {
        wait_decoding(b, "moim.sub", 2, Duration::from_secs(40)).await?;
    }
    browsers[2]
        .js("moim.sendChat('hello from virginia'); return true;")
        .await?;
    for b in &browsers[..2] {
        b.wait_for(
            "return moim.chatLog.some(m => m.text === 'hello from virginia');",
            Duration::from_secs(10),
        )
        .await?;
    }
    for b in browsers {
        b.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_on_one_node_plays_over_whep_on_another() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let nodes = three_regions().await?;
    let publisher = Browser::whip(&nodes[0], "live").await?;
    wait_status(&nodes[0], Duration::from_secs(15), |s| {
        s["published_tracks"] == 2
    })
    .await?;
    // Virginia has nobody in the room: the WHEP request itself brings it in from Seoul.
    let viewer = Browser::whep(&nodes[2], "live").await?;
    wait_decoding(&viewer, "window.whep", 1, Duration::from_secs(20)).await?;
    let text = reqwest::get(nodes[0].url("/metrics")).await?.text().await?;
    assert!(
        sample(&text, "moim_relay_packets_sent_total").unwrap_or(0.0) > 50.0,
        "{text}"
    );
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

/// Seoul publishes from a browser; Frankfurt, linked through a path with a fixed one-way delay
/// and random loss, has a viewer.
async fn pair_through(
    path_delay: Duration,
    loss: f64,
) -> anyhow::Result<(Vec<Node>, ImpairedPath, Browser, Browser)> {
    pair_through_path(PathProfile::lossy(path_delay, loss), &[]).await
}

/// Makes the tiles in `viewer`'s page 1280x720, so that each asks for its video's top layer.
async fn ask_for_720p(viewer: &Browser) -> anyhow::Result<()> {
    viewer
        .js("document.querySelectorAll('.tile').forEach(t => { t.style.width = '1280px'; t.style.height = '720px'; }); return true;")
        .await?;
    Ok(())
}

/// Seoul and Frankfurt, Frankfurt dialling Seoul through a path of `profile`, the nodes
/// started with `extra` arguments.
async fn linked_through(
    profile: PathProfile,
    extra: &[&str],
) -> anyhow::Result<(Node, Node, ImpairedPath)> {
    let relay = format!("127.0.0.1:{}", free_udp_port());
    let seoul = Node::start_relay("seoul-1", "seoul", &relay, &[], extra).await?;
    let path = ImpairedPath::with_profile(relay.parse()?, profile).await?;
    let via = path.addr().to_string();
    let fra_relay = format!("127.0.0.1:{}", free_udp_port());
    let fra = Node::start_relay("fra-1", "frankfurt", &fra_relay, &[&via], extra).await?;
    Ok((seoul, fra, path))
}

/// The same through a path of any profile, the nodes started with `extra` arguments.
async fn pair_through_path(
    profile: PathProfile,
    extra: &[&str],
) -> anyhow::Result<(Vec<Node>, ImpairedPath, Browser, Browser)> {
    let (seoul, fra, path) = linked_through(profile, extra).await?;
    let publisher = Browser::join(&seoul, "r", "ana", true).await?;
    let viewer = Browser::join(&fra, "r", "bo", false).await?;
    wait_decoding(&viewer, "moim.sub", 1, Duration::from_secs(40)).await?;
    Ok((vec![seoul, fra], path, publisher, viewer))
}

/// Watches the viewer's decoded frames for `secs` from inside the page (every 50 ms, so a slow
/// WebDriver round trip cannot pass for a freeze); returns the longest stretch without a new
/// frame.
async fn longest_freeze(viewer: &Browser, secs: u64) -> anyhow::Result<Duration> {
    viewer
        .js("window.freeze = { worst: 0, last: performance.now(), frames: 0, trace: [] }; \
             window.freezeTimer = setInterval(async () => { \
               const r = await moim.sub.getStats(); let f = 0; let v = null; \
               r.forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video') { f += s.framesDecoded || 0; v = s; } }); \
               const now = performance.now(); \
               if (v) freeze.trace.push([Math.round(now), v.packetsReceived, v.packetsLost, v.nackCount, v.pliCount, v.framesReceived, v.framesDecoded, v.framesDropped, v.keyFramesDecoded]); \
               if (freeze.trace.length > 400) freeze.trace.shift(); \
               if (f > freeze.frames) { if (now - freeze.last > freeze.worst) { freeze.worst = now - freeze.last; freeze.from = freeze.last; freeze.at = new Date(Date.now() - freeze.worst).toISOString(); } freeze.frames = f; freeze.last = now; } \
             }, 50); return true;")
        .await?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    eprintln!(
        "the longest freeze began at {:?}",
        viewer.js("return freeze.at || null;").await?
    );
    // The viewer's own view around the freeze: whether packets stopped coming or came and could
    // not be decoded, and what it asked for meanwhile.
    eprintln!(
        "[ms, packetsReceived, packetsLost, nackCount, pliCount, framesReceived, framesDecoded, \
         framesDropped, keyFramesDecoded] around it: {}",
        viewer
            .js("const a = freeze.from || 0, b = a + freeze.worst; \
                 return JSON.stringify(freeze.trace.filter(x => x[0] > a - 300 && x[0] < b + 300));")
            .await?
    );
    let worst_ms = viewer
        .js("clearInterval(freezeTimer); return Math.max(freeze.worst, performance.now() - freeze.last);")
        .await?
        .as_f64()
        .unwrap_or(f64::INFINITY);
    Ok(Duration::from_secs_f64(worst_ms / 1000.0))
}

// This used to freeze for about 3.2 s in one run of five: after a down-switch to a layer whose
// VP8 picture IDs and TL0PICIDX were behind the old layer's, Chrome dropped every frame after the
// switch keyframe (see `media_node::sfu::vp8`). The in-page trace above is what showed it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_stays_smooth_over_a_link_with_80ms_rtt_and_2pct_loss() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    moim_e2e::measured(
        "the 80 ms / 2% measurement",
        video_stays_smooth_over_a_link_with_80ms_rtt_and_2pct_loss_once,
    )
    .await
}

async fn video_stays_smooth_over_a_link_with_80ms_rtt_and_2pct_loss_once() -> anyhow::Result<()> {
    let (nodes, _path, publisher, viewer) = pair_through(Duration::from_millis(40), 0.02).await?;
    let worst = longest_freeze(&viewer, 15).await?;
    let fra = reqwest::get(nodes[1].url("/metrics")).await?.text().await?;
    let seoul = reqwest::get(nodes[0].url("/metrics")).await?.text().await?;
    let link_lines = |t: &str| -> String {
        t.lines()
            .filter(|l| l.starts_with("moim_relay") && !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    eprintln!(
        "longest freeze {worst:?}\nseoul:\n{}\nfrankfurt:\n{}",
        link_lines(&seoul),
        link_lines(&fra)
    );
    anyhow::ensure!(worst < Duration::from_secs(1), "video froze for {worst:?}");
    anyhow::ensure!(
        sample(&fra, "moim_relay_nacks_sent_total").unwrap_or(0.0) > 0.0,
        "loss was seen and NACKed"
    );
    anyhow::ensure!(
        sample(&seoul, "moim_relay_retransmits_total").unwrap_or(0.0) > 0.0,
        "and repaired"
    );
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_resumes_within_2s_after_the_relay_path_dies_and_returns() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let (nodes, mut path, publisher, viewer) = pair_through(Duration::ZERO, 0.0).await?;
    path.kill();
    // Past QUIC's idle timeout (10 s): both nodes drop the link and what came over it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = reqwest::get(nodes[1].url("/metrics")).await?.text().await?;
        if sample(&text, "moim_relay_links") == Some(0.0) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the dead link was never noticed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    path.resume().await?;
    let back = Instant::now();
    // Resumed when decoded frames rise between two samples (the relayed track is new after a
    // reconnect, so counts start again from zero).
    let mut prev: u64 = viewer.frames_decoded("moim.sub").await?.iter().sum();
    loop {
        let now: u64 = viewer.frames_decoded("moim.sub").await?.iter().sum();
        if now > prev {
            break;
        }
        prev = now;
        anyhow::ensure!(
            back.elapsed() < Duration::from_secs(10),
            "media never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = back.elapsed();
    eprintln!("media resumed {took:?} after the path returned");
    assert!(
        took < Duration::from_secs(2),
        "media took {took:?} to resume"
    );
    let text = reqwest::get(nodes[1].url("/metrics")).await?.text().await?;
    assert!(
        text.contains("moim_relay_connects_total{peer=\"seoul-1\"} 2"),
        "{text}"
    );
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

/// The control frame of `msg`.
fn frame(msg: &Control) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    msg.encode(&mut b);
    b.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_relay_peers_are_cut_off_and_the_node_keeps_serving_its_room() -> anyhow::Result<()>
{
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let dir = std::env::temp_dir().join(format!("moim-hostile-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    write_pki(&dir, "fleet-ca", &["seoul-1", "fra-1"])?;
    write_pki(&dir, "rogue-ca", &["mallory"])?;
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let relay = format!("127.0.0.1:{}", free_udp_port());
    let node = Node::start_relay(
        "seoul-1",
        "seoul",
        &relay,
        &[],
        &[
            "--relay-ca",
            &path("fleet-ca.pem"),
            "--relay-cert",
            &path("seoul-1.pem"),
            "--relay-key",
            &path("seoul-1.key"),
        ],
    )
    .await?;
    let addr: std::net::SocketAddr = relay.parse()?;
    let publisher = Browser::whip(&node, "r").await?;
    let viewer = Browser::whep(&node, "r").await?;
    wait_decoding(&viewer, "window.whep", 1, Duration::from_secs(30)).await?;
    let fleet = trust(&dir, "fleet-ca", "fra-1");
    let hello = frame(&Control::Hello {
        version: 1,
        node_id: "fra-1".into(),
        region: "frankfurt".into(),
    });

    // A certificate from another CA: refused in the handshake (under TLS 1.3 the client has
    // finished by the time the node checks its certificate, so it learns it from the close).
    let rogue = testing::raw_peer(addr, &trust(&dir, "fleet-ca", "mallory"), vec![]).await;
    let why = rogue.unwrap_or_else(|e| e);
    assert!(why.contains("UnknownIssuer"), "a rogue certificate: {why}");

    // A fleet certificate, a good hello, then an unknown message type: cut off, told why.
    let reason = testing::raw_peer(addr, &fleet, vec![hello.clone(), vec![0, 0, 0, 1, 222]])
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(
        reason.contains("unknown relay message type 222"),
        "{reason}"
    );

    // A frame claiming 1 GiB.
    let reason = testing::raw_peer(addr, &fleet, vec![hello.clone(), vec![0x40, 0, 0, 0, 1]])
        .await
        .map_err(anyhow::Error::msg)?;
    assert!(reason.contains("over the limit"), "{reason}");

    // A well-formed link that sends garbage datagrams: they are counted and dropped.
    let link = RelayEndpoint::bind(
        "127.0.0.1:0".parse()?,
        RelayTls::new(&fleet)?,
        "fra-1",
        "frankfurt",
    )?
    .dial(addr)
    .await?;
    let conn = link.connection();
    for i in 0..200u8 {
        conn.send_datagram(bytes::Bytes::from(vec![i; usize::from(i % 7)]))?;
    }
    conn.send_datagram(bytes::Bytes::from(vec![0xff; 40]))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(node.url("/metrics")).await?.text().await?;
        if sample(&text, "moim_relay_bad_datagrams_total").unwrap_or(0.0) > 0.0 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "garbage datagrams not seen: {text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    link.close("done");

    // Through all of it the room kept playing.
    let before: u64 = viewer.frames_decoded("window.whep").await?.iter().sum();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: u64 = viewer.frames_decoded("window.whep").await?.iter().sum();
    assert!(after > before + 10, "frames {before} -> {after}");
    publisher.close().await;
    viewer.close().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Puts the operator's plan for `room` on `node`: `links` are (peer, address, upstream).
async fn assign(
    http: &reqwest::Client,
    node: &Node,
    room: &str,
    links: &[(&str, Option<&str>, bool)],
) -> anyhow::Result<()> {
    let links: Vec<serde_json::Value> = links
        .iter()
        .map(|(peer, address, upstream)| {
            serde_json::json!({"peer": peer, "address": address, "upstream": upstream})
        })
        .collect();
    let r = http
        .put(node.url(&format!("/admin/rooms/{room}")))
        .bearer_auth("admin")
        .json(&serde_json::json!({
            "meeting": "team/standup", "generation": 1, "reserved": 2, "links": links
        }))
        .send()
        .await?;
    anyhow::ensure!(r.status().is_success(), "assign: {}", r.text().await?);
    Ok(())
}

/// Relay links a node has up, as its metrics say.
async fn links_up(http: &reqwest::Client, node: &Node) -> anyhow::Result<f64> {
    moim_e2e::metric(http, node, "moim_relay_links").await
}

/// The operator's tree: Seoul (origin) ← Frankfurt (hub) ← Virginia (edge), with no `--peer`
/// and no link between Seoul and Virginia. Frankfurt has nobody in the room and passes the
/// media, the participants and the chat on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tree_passes_media_on_through_a_hub_with_nobody_in_the_room() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let relay: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let admin = ["--admin-token", "admin"];
    let seoul = Node::start_relay("seoul-1", "seoul", &relay[0], &[], &admin).await?;
    let fra = Node::start_relay("fra-1", "frankfurt", &relay[1], &[], &admin).await?;
    let va = Node::start_relay("va-1", "virginia", &relay[2], &[], &admin).await?;
    let http = reqwest::Client::new();
    let room = "team.standup";
    // The edge is planned first and the hub last: a link that wants the room before the hub
    // knows its plan still gets it.
    assign(&http, &va, room, &[("fra-1", Some(&relay[1]), true)]).await?;
    assign(&http, &seoul, room, &[("fra-1", None, false)]).await?;
    let mut ana = moim_e2e::SignalClient::connect(&seoul).await?;
    ana.join(&moim_e2e::dev_token(room, "ana")).await?;
    ana.recv_type("joined", Duration::from_secs(5)).await?;
    let mut bo = moim_e2e::SignalClient::connect(&va).await?;
    bo.join(&moim_e2e::dev_token(room, "bo")).await?;
    bo.recv_type("joined", Duration::from_secs(5)).await?;
    assign(
        &http,
        &fra,
        room,
        &[("seoul-1", Some(&relay[0]), true), ("va-1", None, false)],
    )
    .await?;

    // Participants and chat cross the hub both ways, with ids qualified by their origin.
    let joined = bo
        .recv_type("participant_joined", Duration::from_secs(10))
        .await?;
    assert_eq!(joined["participant"]["id"], "seoul-1/p1", "{joined}");
    let joined = ana
        .recv_type("participant_joined", Duration::from_secs(10))
        .await?;
    assert_eq!(joined["participant"]["id"], "va-1/p1", "{joined}");
    ana.send_text(serde_json::json!({"type": "chat", "text": "hi from seoul"}).to_string())
        .await?;
    let chat = bo.recv_type("chat", Duration::from_secs(10)).await?;
    assert_eq!(
        (chat["from"].as_str(), chat["text"].as_str()),
        (Some("seoul-1/p1"), Some("hi from seoul"))
    );

    // Media: a browser publishes in Seoul, another watches in Virginia.
    let publisher = Browser::join(&seoul, room, "cam", true).await?;
    let viewer = Browser::join(&va, room, "eye", false).await?;
    wait_decoding(&viewer, "moim.sub", 1, Duration::from_secs(40)).await?;
    assert_eq!(
        links_up(&http, &seoul).await?,
        1.0,
        "Seoul links with the hub only"
    );
    assert_eq!(
        links_up(&http, &va).await?,
        1.0,
        "Virginia links with the hub only"
    );
    assert_eq!(links_up(&http, &fra).await?, 2.0);
    let hub = reqwest::get(fra.url("/metrics")).await?.text().await?;
    assert!(
        sample(&hub, "moim_relay_packets_sent_total").unwrap_or(0.0) > 50.0,
        "the hub passes the media on:\n{hub}"
    );
    assert_eq!(sample(&hub, "moim_participants"), Some(0.0), "{hub}");

    // Everyone leaves Virginia: the hub lets go of the room (Seoul's own room stays).
    viewer.close().await;
    drop(bo);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = moim_e2e::admin_status(&http, &fra, "admin").await?;
        if s["room_participants"]
            .as_object()
            .is_some_and(|m| m.is_empty())
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "the hub holds the room: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = reqwest::get(seoul.url("/metrics")).await?.text().await?;
        let before = sample(&text, "moim_relay_packets_sent_total").unwrap_or(0.0);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let text = reqwest::get(seoul.url("/metrics")).await?.text().await?;
        if sample(&text, "moim_relay_packets_sent_total").unwrap_or(0.0) == before {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "Seoul still relays to a hub nobody wants"
        );
    }
    publisher.close().await;
    Ok(())
}

/// A renewed CA bundle is picked up without a restart: Seoul first trusts only the old CA, so
/// its dials to Frankfurt (whose certificate comes from a new CA) fail; once Seoul's CA file
/// is swapped for a bundle of both, as a Secret volume update does, the link comes up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_relay_certificates_are_used_without_a_restart() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("moim-rotate-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    write_pki(&dir, "old-ca", &["seoul-1"])?;
    write_pki(&dir, "new-ca", &["fra-1"])?;
    let bundle = std::fs::read_to_string(dir.join("old-ca.pem"))?
        + &std::fs::read_to_string(dir.join("new-ca.pem"))?;
    std::fs::write(dir.join("bundle.pem"), &bundle)?;
    std::fs::copy(dir.join("old-ca.pem"), dir.join("seoul-ca.pem"))?;
    let files = |ca: &str, node: &str| -> Vec<String> {
        let p = |f: String| dir.join(f).display().to_string();
        vec![
            "--relay-ca".into(),
            p(format!("{ca}.pem")),
            "--relay-cert".into(),
            p(format!("{node}.pem")),
            "--relay-key".into(),
            p(format!("{node}.key")),
            "--relay-tls-check".into(),
            "200ms".into(),
        ]
    };
    let (fra_args, seoul_args) = (files("bundle", "fra-1"), files("seoul-ca", "seoul-1"));
    let relay_fra = format!("127.0.0.1:{}", free_udp_port());
    let relay_seoul = format!("127.0.0.1:{}", free_udp_port());
    let fra_args: Vec<&str> = fra_args.iter().map(String::as_str).collect();
    let seoul_args: Vec<&str> = seoul_args.iter().map(String::as_str).collect();
    let _fra = Node::start_relay("fra-1", "frankfurt", &relay_fra, &[], &fra_args).await?;
    let seoul =
        Node::start_relay("seoul-1", "seoul", &relay_seoul, &[&relay_fra], &seoul_args).await?;
    let http = reqwest::Client::new();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        links_up(&http, &seoul).await?,
        0.0,
        "Seoul does not trust Frankfurt's CA yet"
    );
    // The swap: a new file renamed over the old name, as the kubelet's symlink swap does.
    std::fs::write(dir.join("seoul-ca.pem.new"), &bundle)?;
    std::fs::rename(dir.join("seoul-ca.pem.new"), dir.join("seoul-ca.pem"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while links_up(&http, &seoul).await? < 1.0 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the renewed CA bundle was not used"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        moim_e2e::metric(&http, &seoul, "moim_relay_tls_reloads_total").await?,
        1.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Issue 21: the relay accept loop was serial, so one peer that stalled its handshake held
/// back every other peer's link for up to its hello timeout. Three peers open QUIC
/// connections to seoul and never send a hello; frankfurt's link comes up while all three
/// are still stalling, and the stallers are cut off with a reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_stalling_its_handshake_does_not_hold_back_another_link() -> anyhow::Result<()> {
    let seoul_relay = format!("127.0.0.1:{}", free_udp_port());
    let seoul = Node::start_relay("seoul-1", "seoul", &seoul_relay, &[], &[]).await?;
    let addr: std::net::SocketAddr = seoul_relay.parse()?;
    let stallers: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                testing::raw_peer(addr, &media_node::relay::tls::RelayTrust::Dev, vec![]).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fra_relay = format!("127.0.0.1:{}", free_udp_port());
    let _fra = Node::start_relay("fra-1", "frankfurt", &fra_relay, &[&seoul_relay], &[]).await?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while links_up(&http, &seoul).await? < 1.0 {
        anyhow::ensure!(Instant::now() < deadline, "frankfurt never linked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        stallers.iter().all(|s| !s.is_finished()),
        "the link came up only after the stallers were cut off"
    );
    for s in stallers {
        let reason = s.await?.map_err(anyhow::Error::msg)?;
        assert!(reason.contains("control stream"), "{reason}");
    }
    Ok(())
}

/// Issue 19: the relay path's MTU shrinks mid-meeting (from now on the path drops every UDP
/// datagram over 1,200 bytes: a tunnel, a route change). QUIC's black-hole detection lowers
/// the link's packet size to its 1,200-byte minimum after the large packets go missing; the
/// link then sends full-size media in pieces instead of refusing it as too large (which lost
/// every full-size video packet until MTU discovery climbed back), and the viewer keeps
/// decoding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_path_whose_mtu_shrinks_keeps_carrying_full_size_video() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let (nodes, path, publisher, viewer) = pair_through(Duration::from_millis(10), 0.0).await?;
    let http = reqwest::Client::new();
    // MTU discovery has raised the link's packet size above the minimum by now.
    tokio::time::sleep(Duration::from_secs(3)).await;
    path.set_max_size(Some(1200));
    // Black-hole detection takes a few lost bursts; then video must flow on.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let before = frames_decoded(&viewer).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = frames_decoded(&viewer).await?;
    let seoul = &nodes[0];
    let split = moim_e2e::metric(&http, seoul, "moim_relay_split_datagrams_total").await?;
    let refused = moim_e2e::metric(&http, seoul, "moim_relay_refused_datagrams_total").await?;
    let relayed = moim_e2e::metric(&http, seoul, "moim_relay_packets_sent_total").await?;
    println!(
        "after the MTU fell: {} frames in 5 s at the viewer; seoul relayed {relayed} packets, split {split}, refused {refused}",
        after - before
    );
    assert_eq!(refused, 0.0, "datagrams refused as too large");
    assert!(
        after - before >= 50.0,
        "the viewer decoded {} frames in 5 s",
        after - before
    );
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

/// Video frames `b` has decoded on its subscribe connection.
async fn frames_decoded(b: &Browser) -> anyhow::Result<f64> {
    Ok(b
        .js("let f = 0; (await moim.sub.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video') f += s.framesDecoded || 0; }); return f;")
        .await?
        .as_f64()
        .unwrap_or(0.0))
}

/// Issue 21: the relay certificate is the fleet's, so a node dialling upstream checks that the
/// node answering at the planned address is the one the plan names. Planned as `fra-2`,
/// frankfurt (`fra-1`) is hung up on, and no link comes up; planned as `fra-1`, it links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_another_node_than_the_plan_names_is_closed() -> anyhow::Result<()> {
    let relay: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let admin = ["--admin-token", "admin"];
    let seoul = Node::start_relay("seoul-1", "seoul", &relay[0], &[], &admin).await?;
    let fra = Node::start_relay("fra-1", "frankfurt", &relay[1], &[], &admin).await?;
    let http = reqwest::Client::new();
    let room = "team.standup";
    assign(&http, &fra, room, &[("seoul-1", None, false)]).await?;
    assign(&http, &seoul, room, &[("fra-2", Some(&relay[1]), true)]).await?;
    // Several dials (the first retry comes within a second) and none links.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Seoul never takes the link; Frankfurt accepts each dial until Seoul hangs up, so at a
    // given moment it may hold one for a few ms (a CI run caught it once): it must not stay.
    let mut fra_up = 0;
    for _ in 0..5 {
        assert_eq!(links_up(&http, &seoul).await?, 0.0);
        if moim_e2e::metric(&http, &fra, "moim_relay_links").await? > 0.0 {
            fra_up += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        fra_up <= 1,
        "frankfurt held the link in {fra_up} of 5 looks"
    );
    assign(&http, &seoul, room, &[("fra-1", Some(&relay[1]), true)]).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while links_up(&http, &seoul).await? < 1.0 {
        anyhow::ensure!(Instant::now() < deadline, "the planned node never linked");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Issue 23's first measurement: the relay path between two regions is a 1 Mbit/s bottleneck
/// (60 ms queue, 30 ms each way), narrower than the publisher's top simulcast layer. Seoul's
/// link estimates what the path carries and holds back what does not fit; Frankfurt's viewer
/// moves to a layer that flows instead of losing a third of the packets (as it did with a
/// fixed window on 2026-12-01: 27% and 37% of the relay packets dropped, 7 frames a second, a
/// 3.4 s freeze).
///
/// Not in CI yet: with the link budget (on by default since 2026-12-02: the nodes hold back
/// layers that do not fit the link's estimate) the share dropped varied from 1% to 14% over
/// eight runs on 2026-12-01 and 2026-12-02 (2.0% and 5.2% on the 2nd); without it
/// (`--relay-fit false`) 55% and 63% on the 2nd, with 4-5 s freezes. Run it with
/// `cargo test -p moim-e2e --test cascade -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement of issue 23's relay budget, not yet steady enough to gate CI"]
async fn a_relay_path_narrower_than_the_top_layer_carries_a_lower_one() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let profile = PathProfile::wan(Duration::from_millis(60), 1_000_000);
    let (nodes, path, publisher, viewer) = pair_through_path(profile, &[]).await?;
    // The viewer's tile asks for the top layer (1,500 kbit/s at 720p, more than the path).
    ask_for_720p(&viewer).await?;
    // Warm-up: the publisher's encoder ramps up to its top layer, the link finds its limit.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let frames = "let f = 0; (await moim.sub.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video') f += s.framesDecoded || 0; }); return f;";
    let frames = format!("return (async () => {{ {frames} }})();");
    let [_, before] = path.stats();
    let decoded_before = viewer.js(&frames).await?.as_f64().unwrap_or(0.0);
    let worst = longest_freeze(&viewer, 12).await?;
    let [_, after] = path.stats();
    let decoded = viewer.js(&frames).await?.as_f64().unwrap_or(0.0) - decoded_before;
    let over = after.since(&before);
    let (offered, dropped, share) = (over.offered, over.dropped(), over.dropped_share());
    let height = viewer
        .js("return (async () => { let h = 0; (await moim.sub.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video') h = s.frameHeight || 0; }); return h; })();")
        .await?;
    let seoul = reqwest::get(nodes[0].url("/metrics")).await?.text().await?;
    let relay_lines: Vec<&str> = seoul
        .lines()
        .filter(|l| l.starts_with("moim_relay_estimate") || l.starts_with("moim_relay_layers"))
        .collect();
    eprintln!(
        "over 12 s: {offered} datagrams toward frankfurt, {dropped} dropped ({:.1}%), longest \
         queue {} ms; the viewer decoded {decoded} frames ({height}p at the end), longest freeze \
         {worst:?}; seoul: {relay_lines:?}",
        share * 100.0,
        after.max_queue_us / 1000
    );
    // The link found the path's limit, and what crosses mostly fits it. (Not yet the issue's
    // 1%: each time the estimate lets the far side try the top layer again, a burst is lost.)
    assert!(
        sample(&seoul, "moim_relay_estimate_bps{peer=\"fra-1\"}").unwrap_or(0.0) > 0.0,
        "no limit seen: {relay_lines:?}"
    );
    assert!(
        share < 0.10,
        "{:.1}% of the relay datagrams dropped",
        share * 100.0
    );
    assert!(decoded >= 12.0 * 15.0, "{decoded} frames in 12 s");
    assert!(worst < Duration::from_secs(1), "video froze for {worst:?}");
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

/// Audio received by `b`: (concealed samples, samples received) over its audio streams.
async fn audio_samples(b: &Browser) -> anyhow::Result<(f64, f64)> {
    let v = b
        .js("return (async () => { let c = 0, t = 0; (await moim.sub.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'audio') { c += s.concealedSamples || 0; t += s.totalSamplesReceived || 0; } }); return [c, t]; })();")
        .await?;
    Ok((v[0].as_f64().unwrap_or(0.0), v[1].as_f64().unwrap_or(0.0)))
}

/// Issue 23's third case: the path between the regions has a 180 ms round trip (Seoul to
/// Virginia) and loses 3% of its datagrams in bursts (three on average, a Gilbert-Elliott
/// channel), both ways. A NACK repair costs at least a round trip, so audio must not depend on
/// it: each audio packet crosses the link twice, the second time 40 ms later (outside a
/// burst), and the far node drops what it already has. Video is repaired by NACK within the
/// jitter buffer's reach. Over 20 s after warm-up: Chrome's concealed samples stay under 2% of
/// those received and no video freeze lasts a second. (2026-12-02, 7 runs: 0.17-1.74%,
/// median 0.38%; without the copies 2.7% and 3.5%; with the copy one packet later instead of
/// two, 0.7-1.9%.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_and_video_hold_up_over_180ms_with_3pct_bursty_loss() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    moim_e2e::measured(
        "the bursty-loss measurement",
        audio_and_video_hold_up_over_180ms_with_3pct_bursty_loss_once,
    )
    .await
}

async fn audio_and_video_hold_up_over_180ms_with_3pct_bursty_loss_once() -> anyhow::Result<()> {
    let profile = PathProfile {
        loss: Loss::Bursty(GilbertElliott::bursts(0.03, 3.0)),
        ..PathProfile::lossy(Duration::from_millis(90), 0.0)
    };
    let (nodes, path, publisher, viewer) = pair_through_path(profile, &[]).await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let [before, toward] = path.stats();
    let audio_before = audio_samples(&viewer).await?;
    let worst = longest_freeze(&viewer, 20).await?;
    let audio_after = audio_samples(&viewer).await?;
    let [after, toward_after] = path.stats();
    let concealed = (audio_after.0 - audio_before.0) / (audio_after.1 - audio_before.1).max(1.0);
    let fra = reqwest::get(nodes[1].url("/metrics")).await?.text().await?;
    eprintln!(
        "over 20 s: path lost {:.1}% one way, {:.1}% the other; audio concealed {:.2}% of {} \
         samples; longest video freeze {worst:?}; frankfurt dropped {} copies",
        after.since(&before).dropped_share() * 100.0,
        toward_after.since(&toward).dropped_share() * 100.0,
        concealed * 100.0,
        audio_after.1 - audio_before.1,
        sample(&fra, "moim_relay_copies_dropped_total").unwrap_or(0.0),
    );
    anyhow::ensure!(
        audio_after.1 - audio_before.1 > 48_000.0 * 10.0,
        "audio did not flow"
    );
    anyhow::ensure!(
        concealed < 0.02,
        "{:.2}% of the audio concealed",
        concealed * 100.0
    );
    anyhow::ensure!(worst < Duration::from_secs(1), "video froze for {worst:?}");
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

/// First run as a new user does it: two `--dev` nodes on one machine, no `--node-id`, each
/// given the other as `--peer`. They link (their default ids differ), keep one link, and the
/// side whose duplicate lost stops dialling while that link is up (it used to close and redial
/// about twice a second forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_dev_nodes_peering_each_other_keep_one_link_and_stop_redialling() -> anyhow::Result<()>
{
    let relay: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let nodes = [
        Node::start(&["--relay-listen", &relay[0], "--peer", &relay[1]]).await?,
        Node::start(&["--relay-listen", &relay[1], "--peer", &relay[0]]).await?,
    ];
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        while links_up(&http, n).await? != 1.0 {
            anyhow::ensure!(Instant::now() < deadline, "the two dev nodes did not link");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Links each node has seen come up, per peer.
    let connects = |text: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("moim_relay_connects_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    // Let the duplicate settle, then count for 5 s.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut before = Vec::new();
    for n in &nodes {
        before.push(connects(
            &http.get(n.url("/metrics")).send().await?.text().await?,
        ));
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (n, b) in nodes.iter().zip(before) {
        let text = http.get(n.url("/metrics")).send().await?.text().await?;
        let after = connects(&text);
        assert_eq!(after, b, "links redialled within 5 s: {b} → {after}");
        assert_eq!(sample(&text, "moim_relay_links"), Some(1.0));
    }
    Ok(())
}

/// Dynacast across regions: the only viewer is on another node and shows the publisher as a
/// thumbnail, so nobody anywhere wants the top layer and the publisher's browser stops
/// sending it (`outbound-rtp` for rid `f` stops growing); the viewer enlarging the tile brings
/// it back: the far node subscribes the layer the tile now wants, and the publisher's node
/// raises `publish_layers`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynacast_follows_a_viewer_on_another_node() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    moim_e2e::measured(
        "the cross-region dynacast measurement",
        dynacast_follows_a_viewer_on_another_node_once,
    )
    .await
}

async fn dynacast_follows_a_viewer_on_another_node_once() -> anyhow::Result<()> {
    let relay = format!("127.0.0.1:{}", free_udp_port());
    let seoul = Node::start_relay("seoul-1", "seoul", &relay, &[], &[]).await?;
    let fra_relay = format!("127.0.0.1:{}", free_udp_port());
    let fra = Node::start_relay("fra-1", "frankfurt", &fra_relay, &[&relay], &[]).await?;
    let publisher = Browser::join(&seoul, "dyn", "ana", true).await?;
    let viewer = Browser::join(&fra, "dyn", "bo", false).await?;
    wait_decoding(&viewer, "moim.sub", 1, Duration::from_secs(40)).await?;
    let back = moim_e2e::dynacast_round(&publisher, &viewer, Duration::from_secs(15)).await?;
    println!(
        "rid f stopped; back {} ms after the far tile grew",
        back.as_millis()
    );
    anyhow::ensure!(
        back <= Duration::from_secs(3),
        "rid f came back after {back:?}"
    );
    // And the far viewer gets the full layer.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let h = viewer
            .js("return (async () => Object.values(await moim.videoStats()).map(s => s.frameHeight))()")
            .await?;
        if h.as_array()
            .and_then(|a| a.first())
            .and_then(serde_json::Value::as_u64)
            .is_some_and(|h| h >= 540)
        {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "far viewer stays below 540p: {h}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    publisher.close().await;
    viewer.close().await;
    drop((seoul, fra));
    Ok(())
}

/// Starts recording in `viewer`'s page, every 100 ms: [page ms, height of the first video,
/// video frames decoded, audio samples concealed, audio samples received].
async fn record_reception(viewer: &Browser) -> anyhow::Result<()> {
    viewer
        .js("window.reception = []; window.receptionTimer = setInterval(async () => { \
               let h = 0, f = 0, c = 0, t = 0; \
               (await moim.sub.getStats()).forEach(s => { \
                 if (s.type !== 'inbound-rtp') return; \
                 if (s.kind === 'video') { f += s.framesDecoded || 0; if (!h) h = s.frameHeight || 0; } \
                 else { c += s.concealedSamples || 0; t += s.totalSamplesReceived || 0; } }); \
               reception.push([performance.now(), h, f, c, t]); }, 100); return true;")
        .await?;
    Ok(())
}

/// The page's clock, to place moments of the test in [`record_reception`]'s record.
async fn page_ms(b: &Browser) -> anyhow::Result<f64> {
    Ok(b.js("return performance.now();")
        .await?
        .as_f64()
        .unwrap_or(0.0))
}

/// Stops [`record_reception`] and returns what it recorded.
async fn reception(viewer: &Browser) -> anyhow::Result<Vec<[f64; 5]>> {
    let v = viewer
        .js("clearInterval(receptionTimer); return reception;")
        .await?;
    Ok(serde_json::from_value(v)?)
}

/// Over `rec` from `from` to `to` (page ms): the longest stretch without a new video frame,
/// and the longest without new audio (the concealed samples grew by at least what was
/// received), in ms; and the share of audio samples concealed.
fn gaps(rec: &[[f64; 5]], from: f64, to: f64) -> (f64, f64, f64) {
    let part: Vec<&[f64; 5]> = rec.iter().filter(|r| r[0] >= from && r[0] <= to).collect();
    let (mut video, mut audio) = (0.0f64, 0.0f64);
    let (mut frame_at, mut sound_at) = (from, from);
    for w in part.windows(2) {
        let (a, b) = (w[0], w[1]);
        if b[2] > a[2] {
            frame_at = b[0];
        }
        if b[4] - a[4] > 0.0 && b[3] - a[3] < 0.5 * (b[4] - a[4]) {
            sound_at = b[0];
        }
        video = video.max(b[0] - frame_at);
        audio = audio.max(b[0] - sound_at);
    }
    let (first, last) = (part.first(), part.last());
    let concealed = match (first, last) {
        (Some(a), Some(b)) => (b[3] - a[3]) / (b[4] - a[4]).max(1.0),
        _ => 1.0,
    };
    (video, audio, concealed)
}

/// Issue 23's second case: the relay path carries 4 Mbit/s (60 ms round trip), the far viewer
/// watches the publisher's top layer; the path narrows to 1 Mbit/s for 12 s, then widens
/// again. Frankfurt's viewer is stepped down to a layer that fits within a few seconds (the
/// link's estimate falls when the bottleneck's queue grows, and the layer it cannot carry is
/// held back), and back up within a few seconds of the path widening (the link probes the path
/// with padding while a layer is held), and its audio never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_far_side_steps_down_and_back_up_as_the_path_narrows_and_widens() -> anyhow::Result<()>
{
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    moim_e2e::measured(
        "the narrow-and-widen measurement",
        the_far_side_steps_down_and_back_up_as_the_path_narrows_and_widens_once,
    )
    .await
}

async fn the_far_side_steps_down_and_back_up_as_the_path_narrows_and_widens_once()
-> anyhow::Result<()> {
    let wide = PathProfile::wan(Duration::from_millis(60), 4_000_000);
    let (nodes, path, publisher, viewer) = pair_through_path(wide, &[]).await?;
    ask_for_720p(&viewer).await?;
    let full = "return (async () => { let h = 0; (await moim.sub.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video' && !h) h = s.frameHeight || 0; }); return h >= 540; })();";
    viewer.wait_for(full, Duration::from_secs(30)).await?;
    record_reception(&viewer).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let narrowed = page_ms(&viewer).await?;
    path.update(|p| p.rate_bps = Some(1_000_000));
    tokio::time::sleep(Duration::from_secs(12)).await;
    let [_, at_widening] = path.stats();
    let widened = page_ms(&viewer).await?;
    path.update(|p| p.rate_bps = Some(4_000_000));
    tokio::time::sleep(Duration::from_secs(12)).await;
    let end = page_ms(&viewer).await?;
    let rec = reception(&viewer).await?;
    let first = |from: f64, pred: &dyn Fn(f64) -> bool| {
        rec.iter()
            .find(|r| r[0] >= from && pred(r[1]))
            .map(|r| (r[0] - from) / 1000.0)
    };
    let down = first(narrowed, &|h| h > 0.0 && h < 540.0);
    let up = first(widened, &|h| h >= 540.0);
    let (video_gap, audio_gap, concealed) = gaps(&rec, narrowed, end);
    let heights: Vec<u64> = rec.iter().step_by(5).map(|r| r[1] as u64).collect();
    let seoul = reqwest::get(nodes[0].url("/metrics")).await?.text().await?;
    eprintln!(
        "stepped down after {down:?} s, back up after {up:?} s; longest video gap {video_gap:.0} \
         ms, audio gap {audio_gap:.0} ms, audio concealed {:.2}%; the path dropped {} of {} \
         datagrams until it widened; heights every 500 ms: {heights:?}; seoul probed {} times",
        concealed * 100.0,
        at_widening.queue_drops,
        at_widening.offered,
        sample(&seoul, "moim_relay_probes_total{peer=\"fra-1\"}").unwrap_or(0.0),
    );
    anyhow::ensure!(
        down.is_some_and(|s| s < 4.0),
        "stepped down after {down:?} s"
    );
    // 6.9-7.5 s since probes climb back to a rate that failed in steps (4.3-5.7 s before, 7.2 s
    // once under CI's load): one probe per step (2 s apart while they fail, 1.2 s each, 200 ms
    // apart while they climb), then the far node's own switch up.
    anyhow::ensure!(up.is_some_and(|s| s < 9.0), "back up after {up:?} s");
    anyhow::ensure!(audio_gap < 300.0, "audio stopped for {audio_gap:.0} ms");
    anyhow::ensure!(
        concealed < 0.03,
        "{:.2}% of the audio concealed",
        concealed * 100.0
    );
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

/// Watches every video `viewer` decodes for `secs` from inside the page (every 50 ms); returns
/// each one's frames decoded meanwhile, its longest stretch without a new frame, and when that
/// stretch began (from the start of the watch).
async fn per_video_freezes(
    viewer: &Browser,
    secs: u64,
) -> anyhow::Result<Vec<(f64, Duration, Duration)>> {
    viewer
        .js("window.videos = {}; window.videosStart = performance.now(); \
             window.videosTimer = setInterval(async () => { \
               const now = performance.now(); \
               (await moim.sub.getStats()).forEach(s => { \
                 if (s.type !== 'inbound-rtp' || s.kind !== 'video') return; \
                 const v = videos[s.id] || (videos[s.id] = { first: s.framesDecoded || 0, frames: s.framesDecoded || 0, last: now, worst: 0, worstFrom: now }); \
                 if ((s.framesDecoded || 0) > v.frames) { \
                   if (now - v.last > v.worst) { v.worst = now - v.last; v.worstFrom = v.last; } \
                   v.frames = s.framesDecoded; v.last = now; } }); \
             }, 50); return true;")
        .await?;
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let v = viewer
        .js(
            "clearInterval(videosTimer); const now = performance.now(); \
             return Object.values(videos).map(v => now - v.last > v.worst \
               ? [v.frames - v.first, now - v.last, v.last - videosStart] \
               : [v.frames - v.first, v.worst, v.worstFrom - videosStart]);",
        )
        .await?;
    let v: Vec<(f64, f64, f64)> = serde_json::from_value(v)?;
    let ms = |ms: f64| Duration::from_secs_f64(ms.max(0.0) / 1000.0);
    Ok(v.into_iter()
        .map(|(frames, worst, from)| (frames, ms(worst), ms(from)))
        .collect())
}

/// Issue 23's first case: three publishers in Seoul at full quality (720p simulcast, up to
/// 1.5 Mbit/s each on top), a viewer in Frankfurt whose three tiles ask for the top layer, and
/// the regions linked through a 2.5 Mbit/s bottleneck with a 60 ms round trip. Seoul's link
/// sends what fits (audio, then each video's lowest layer, then higher ones); after the first
/// 5 s the path loses under 1% of what the link offers it, and the viewer keeps decoding all
/// three videos with no freeze of a second.
///
/// Ignored until 2026-12-03: over the sessions of 2026-12-02 and -03 the path dropped 0.0-7.0%
/// of the link's datagrams across many variants of the budget and estimator, and some runs froze
/// a video for 1-6.7 s (BENCHMARKS.md's cascade section has the tables). The freezes left were
/// the far side stepping into a layer that did not flow (held back in Seoul, or turned off at
/// its publisher yet still showing a few kbit/s as its rate decayed) and waiting seconds for its
/// keyframe; the loss, decreases that bunched acknowledgements left at the path's rate and
/// bursts paced at twice the estimate. With layers chosen only among those that flow, decreases
/// to what the path carried and pacing at 1.75 times, four release runs in a row lost 0.00-0.48%
/// with no freeze over 0.52 s. Run alone with `cargo test --release -p moim-e2e --test cascade
/// -- --nocapture three_publishers` (it prints each second's drops, delivered kbit, Seoul's
/// estimate, what the link sent, its padding and repairs, and the keyframe requests, and when
/// each video's longest freeze began).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_publishers_share_a_2500_kbit_path_between_regions() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    moim_e2e::measured(
        "the three-publisher measurement",
        three_publishers_share_a_2500_kbit_path_between_regions_once,
    )
    .await
}

async fn three_publishers_share_a_2500_kbit_path_between_regions_once() -> anyhow::Result<()> {
    let profile = PathProfile::wan(Duration::from_millis(60), 2_500_000);
    let (seoul, fra, path) = linked_through(profile, &[]).await?;
    let mut publishers = Vec::new();
    for name in ["ana", "cy", "di"] {
        publishers.push(Browser::join(&seoul, "r", name, true).await?);
    }
    let viewer = Browser::join(&fra, "r", "bo", false).await?;
    wait_decoding(&viewer, "moim.sub", 3, Duration::from_secs(60)).await?;
    viewer
        // All three tiles large and on screen (overlapping: a tile scrolled out of view is
        // paused at the node).
        .js("document.querySelectorAll('.tile').forEach(t => { Object.assign(t.style, { position: 'fixed', left: '0', top: '0', width: '1280px', height: '720px' }); }); return true;")
        .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let [_, before] = path.stats();
    // Each second: what the path dropped and delivered (kbit); Seoul's estimate then (kbit/s);
    // what Seoul's link sent (kbit, all of QUIC), of it padding (kbit) and repairs (datagrams);
    // and the keyframe requests Seoul sent its publishers.
    let timeline = async {
        let counters = |m: &str| {
            [
                "moim_relay_sent_bytes_total{peer=\"fra-1\"}",
                "moim_relay_padding_bytes_total{peer=\"fra-1\"}",
                "moim_relay_retransmits_total",
                "moim_plis_sent_total",
            ]
            .map(|name| sample(m, name).unwrap_or(0.0))
        };
        let metrics = || async {
            match reqwest::get(seoul.url("/metrics")).await {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        };
        let mut seconds = Vec::new();
        let mut last = before;
        let mut last_counters = counters(&metrics().await);
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let [_, now] = path.stats();
            let m = metrics().await;
            let estimate = sample(&m, "moim_relay_estimate_bps{peer=\"fra-1\"}");
            let c = counters(&m);
            let second = now.since(&last);
            seconds.push((
                second.dropped(),
                second.bytes * 8 / 1000,
                estimate.map_or(0, |e| (e / 1000.0) as u64),
                ((c[0] - last_counters[0]) * 8.0 / 1000.0) as u64,
                ((c[1] - last_counters[1]) * 8.0 / 1000.0) as u64,
                (c[2] - last_counters[2]) as u64,
                (c[3] - last_counters[3]) as u64,
            ));
            last = now;
            last_counters = c;
        }
        seconds
    };
    // When the watch began, for matching the nodes' logs (`MOIM_TEST_LOG`) to its times.
    let began = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    eprintln!(
        "the watch begins at {:02}:{:02}:{:06.3} UTC",
        began.as_secs() / 3600 % 24,
        began.as_secs() / 60 % 60,
        began.as_secs_f64() % 60.0
    );
    let (videos, drops) = tokio::join!(per_video_freezes(&viewer, 20), timeline);
    let videos = videos?;
    let [_, after] = path.stats();
    let over = after.since(&before);
    let (offered, dropped, share) = (over.offered, over.dropped(), over.dropped_share());
    let heights = viewer
        .js("return (async () => Object.values(await moim.videoStats()).map(s => s.frameHeight))()")
        .await?;
    let metrics = reqwest::get(seoul.url("/metrics")).await?.text().await?;
    let link: Vec<&str> = metrics
        .lines()
        .filter(|l| {
            l.starts_with("moim_relay_") && (l.contains("fra-1") || l.starts_with("moim_relay_re"))
        })
        .collect();
    // How long the viewer's layer switches waited for their keyframes, over the whole run.
    let fra_metrics = reqwest::get(fra.url("/metrics")).await?.text().await?;
    let switch_waits: Vec<&str> = fra_metrics
        .lines()
        .filter(|l| l.starts_with("moim_layer_switch"))
        .collect();
    eprintln!(
        "over 20 s: {offered} datagrams toward frankfurt, {dropped} dropped ({:.2}%), longest \
         queue {} ms, each second (dropped, kbit delivered, estimate kbit/s, kbit sent, of it padding, repairs, \
         keyframe requests) {drops:?}; per video (frames, longest freeze, when it began): {videos:?}; \
         heights {heights}; seoul: {link:?}; frankfurt's switches: {switch_waits:?}",
        share * 100.0,
        after.max_queue_us / 1000
    );
    anyhow::ensure!(videos.len() == 3, "{videos:?}");
    for (frames, worst, _) in &videos {
        anyhow::ensure!(*frames >= 20.0 * 10.0, "{frames} frames in 20 s");
        anyhow::ensure!(
            *worst < Duration::from_secs(1),
            "a video froze for {worst:?}"
        );
    }
    anyhow::ensure!(
        share < 0.01,
        "{:.2}% of the relay datagrams dropped",
        share * 100.0
    );
    for p in publishers {
        p.close().await;
    }
    viewer.close().await;
    drop((seoul, fra));
    Ok(())
}
