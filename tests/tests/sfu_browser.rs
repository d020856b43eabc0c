//! Real Chromium participants on one media node: meeting, chat, WHIP and WHEP.

use moim_e2e::{
    Browser, Node, PUBLISH_CAMERA, RECEIVE_AUDIO_VIDEO, dev_token, http_signalled, wait_decoding,
    wait_status,
};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_browsers_see_each_other_and_chat() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    let mut browsers = Vec::new();
    for name in ["ana", "bo", "chae"] {
        browsers.push(Browser::join(&node, "standup", name, true).await?);
    }
    for b in &browsers {
        wait_decoding(b, "moim.sub", 2, Duration::from_secs(30)).await?;
    }
    browsers[0]
        .js("moim.sendChat('hello from ana'); return true;")
        .await?;
    for b in &browsers[1..] {
        b.wait_for(
            "return moim.chatLog.some(m => m.text === 'hello from ana');",
            Duration::from_secs(10),
        )
        .await?;
    }
    if std::env::var("MOIM_LONG").is_ok() {
        tokio::time::sleep(Duration::from_secs(25)).await;
        for b in &browsers {
            let f = wait_decoding(b, "moim.sub", 2, Duration::from_secs(5)).await?;
            eprintln!("after 25s: {f:?}");
        }
    }
    for b in browsers {
        b.close().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whip_publish_is_played_over_whep() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    let publisher = Browser::start().await?;
    publisher.goto(&node.url("/healthz")).await?;
    let script = http_signalled(
        "whip",
        "/whip/live",
        &dev_token("live", "obs"),
        PUBLISH_CAMERA,
    );
    assert_eq!(publisher.js(&script).await?, "ok");
    // Both of the publisher's tracks arrive at the node.
    wait_status(&node, Duration::from_secs(15), |s| {
        s["published_tracks"] == 2
    })
    .await?;

    let viewer = Browser::start().await?;
    viewer.goto(&node.url("/healthz")).await?;
    let script = http_signalled(
        "whep",
        "/whep/live",
        &dev_token("live", "viewer"),
        RECEIVE_AUDIO_VIDEO,
    );
    assert_eq!(viewer.js(&script).await?, "ok");
    wait_decoding(&viewer, "window.whep", 1, Duration::from_secs(20)).await?;

    // DELETE on the Location ends the session; a second DELETE finds nothing.
    let location = viewer.js("return window.whepLocation;").await?;
    let location = location.as_str().unwrap_or_default().to_owned();
    assert!(location.starts_with("/whep/live/"), "{location}");
    let token = dev_token("live", "viewer");
    let http = reqwest::Client::new();
    let r = http
        .delete(node.url(&location))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .delete(node.url(&location))
        .bearer_auth(&token)
        .send()
        .await?;
    assert_eq!(r.status().as_u16(), 404);
    wait_status(&node, Duration::from_secs(5), |s| s["participants"] == 1).await?;
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

/// Heights of the received video tracks that are decoding, from `moim.videoStats()`.
async fn decoded_heights(b: &Browser) -> anyhow::Result<Vec<u64>> {
    let v = b
        .js("return (async () => Object.values(await moim.videoStats()).filter(s => s.framesDecoded > 0).map(s => s.frameHeight))()")
        .await?;
    Ok(v.as_array()
        .map(|a| a.iter().filter_map(serde_json::Value::as_u64).collect())
        .unwrap_or_default())
}

/// Polls until `pred` holds for the decoded heights, or fails with what was seen.
async fn wait_heights(
    b: &Browser,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&[u64]) -> bool,
) -> anyhow::Result<Vec<u64>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let h = decoded_heights(b).await?;
        if pred(&h) {
            return Ok(h);
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{what}: decoded heights {h:?}");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// One camera publisher (three simulcast layers) and one viewer: the layer follows the size
/// the viewer renders at, a screen share arrives as its own track, and the publisher's voice
/// makes it the active speaker on the viewer's page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulcast_follows_tile_size_and_screen_share_and_speaker_arrive() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    let publisher = Browser::start().await?;
    publisher
        .goto(&node.url("/?room=layers&name=speaker&autojoin=1"))
        .await?;
    let viewer = Browser::start().await?;
    viewer
        .goto(&node.url("/?room=layers&name=viewer&autojoin=1&publish=0"))
        .await?;
    wait_decoding(&viewer, "moim.sub", 1, Duration::from_secs(30)).await?;

    // A large tile: the full 720p layer (the estimate starts high enough on loopback).
    viewer
        .js("document.querySelectorAll('.tile').forEach(t => { t.style.width = '1280px'; t.style.height = '720px'; }); return true;")
        .await?;
    let big = wait_heights(&viewer, "full layer", Duration::from_secs(20), |h| {
        h.first().is_some_and(|&h| h >= 540)
    })
    .await?;
    // A thumbnail: the node switches this viewer down to the quarter layer.
    viewer
        .js("document.querySelectorAll('.tile').forEach(t => { t.style.width = '160px'; t.style.height = '90px'; }); return true;")
        .await?;
    let small = wait_heights(&viewer, "quarter layer", Duration::from_secs(20), |h| {
        h.first().is_some_and(|&h| h > 0 && h <= 240)
    })
    .await?;
    eprintln!("layer heights: big {big:?}, thumbnail {small:?}");
    let switches = moim_e2e::status(&node).await?;
    eprintln!("status after switching: {switches}");

    // Screen share: a second video track from the same participant, tagged as a screen.
    publisher
        .wait_for(
            "return !document.getElementById('screen').disabled;",
            Duration::from_secs(10),
        )
        .await?;
    publisher
        .js("document.getElementById('screen').click(); return true;")
        .await?;
    viewer
        .wait_for(
            "return [...moim.tracks.values()].some(t => t.source === 'screen');",
            Duration::from_secs(20),
        )
        .await?;
    // A still screen yields frames only when it changes, so the screen track is checked for
    // decoded frames, not for a rising count.
    viewer
        .wait_for(
            "return (async () => Object.values(await moim.videoStats()).filter(s => s.framesDecoded > 0).length >= 2)();",
            Duration::from_secs(30),
        )
        .await?;

    // Chromium's fake microphone beeps: the publisher becomes the active speaker.
    let speaker_id = publisher.js("return moim.participantId;").await?;
    let speaker_id = speaker_id.as_str().unwrap_or_default().to_owned();
    viewer
        .wait_for(
            &format!("return moim.speakers.includes('{speaker_id}');"),
            Duration::from_secs(20),
        )
        .await?;
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

/// Behind a port-mapping NAT (as behind a NodePort Service): the node binds one port and
/// advertises another (`--public-ip`, `--public-port`); browsers reach it only through the
/// mapping, and the meeting works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_port_mapping_advertises_its_public_port() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let (node, nat) = moim_e2e::impair::node_behind_nat(0.0).await?;
    let public_port = nat.addr().port().to_string();
    let ana = Browser::join(&node, "mapped", "ana", true).await?;
    let bo = Browser::join(&node, "mapped", "bo", true).await?;
    wait_decoding(&ana, "moim.sub", 1, Duration::from_secs(30)).await?;
    wait_decoding(&bo, "moim.sub", 1, Duration::from_secs(30)).await?;
    // The browsers' selected pairs point at the mapped port, never at the bound one.
    let remote_port = "const s = await moim.sub.getStats(); let port = null;
        s.forEach((r) => { if (r.type === 'candidate-pair' && r.state === 'succeeded' && r.nominated) {
          port = String(s.get(r.remoteCandidateId).port); } });
        return port;";
    assert_eq!(
        ana.js(remote_port).await?,
        serde_json::Value::String(public_port.clone())
    );
    ana.close().await;
    bo.close().await;
    Ok(())
}

/// A viewer whose path from the node drops 5% of its media gets what it lost resent from the
/// down-track's history (RTX, as Chromium negotiates it) and keeps decoding. Chromium counts a
/// packet recovered over RTX as lost all the same (`packetsLost` excludes recovered packets), so
/// recovery shows in the frames: measured with resending switched off, the same 10 s gave
/// 10-64 decoded frames, 2-3 keyframe requests and up to 6 s frozen; with it, about 190 frames,
/// no keyframe request and nothing frozen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_a_lossy_path_gets_lost_packets_resent() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let (node, _nat) = moim_e2e::impair::node_behind_nat(0.05).await?;
    let ana = Browser::join(&node, "lossy", "ana", true).await?;
    let bo = Browser::join(&node, "lossy", "bo", false).await?;
    wait_decoding(&bo, "moim.sub", 1, Duration::from_secs(30)).await?;
    let counts = "const s = await moim.sub.getStats(); const c = [0, 0, 0, 0, 0, 0];
        s.forEach((r) => { if (r.type === 'inbound-rtp' && r.kind === 'video') {
          c[0] += r.packetsReceived || 0; c[1] += r.packetsLost || 0;
          c[2] += r.nackCount || 0; c[3] += r.framesDecoded || 0;
          c[4] += r.pliCount || 0; c[5] += r.totalFreezesDuration || 0; } });
        return c;";
    let read = |v: serde_json::Value| -> anyhow::Result<Vec<f64>> {
        Ok(serde_json::from_value::<Vec<f64>>(v)?)
    };
    let before = read(bo.js(counts).await?)?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = read(bo.js(counts).await?)?;
    let d: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let (received, lost, nacks, frames, plis, frozen) = (d[0], d[1], d[2], d[3], d[4], d[5]);
    let http = reqwest::Client::new();
    let resent = moim_e2e::metric(&http, &node, "moim_retransmits_total").await?;
    println!(
        "over 10 s: {received} received, {lost} lost, {nacks} NACKs, {plis} PLIs, {frames} frames, {frozen} s frozen; node resent {resent}"
    );
    assert!(received > 200.0, "video flowed: {received} packets");
    assert!(
        lost > 0.0 && nacks > 0.0,
        "the path lost packets and the viewer said so"
    );
    assert!(resent > 0.0, "the node resent packets");
    assert!(frames > 150.0, "decoding went on: {frames} frames in 10 s");
    assert!(
        plis <= 1.0,
        "losses were repaired, not waited out with keyframes: {plis} PLIs"
    );
    assert!(frozen < 1.0, "video froze for {frozen} s");
    // RTCP sender reports (the engine sends them itself): the viewer shows what they said.
    let reports = bo
        .js("const s = await moim.sub.getStats(); const o = [];
             s.forEach((r) => { if (r.type === 'remote-outbound-rtp') o.push([r.kind, r.reportsSent || 0, r.packetsSent || 0]); });
             return o;")
        .await?;
    println!("sender reports seen: {reports}");
    let reports: Vec<(String, f64, f64)> = serde_json::from_value(reports)?;
    for kind in ["audio", "video"] {
        assert!(
            reports
                .iter()
                .any(|(k, n, p)| k == kind && *n >= 5.0 && *p > 0.0),
            "{kind} sender reports reached the viewer: {reports:?}"
        );
    }
    ana.close().await;
    bo.close().await;
    Ok(())
}

/// Per-track video bytes received over 500 ms: the tracks with bytes flowing.
const FLOWING: &str = "return (async () => { \
    const bytes = async () => { const r = {}; (await moim.sub.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video') r[s.trackIdentifier] = s.bytesReceived || 0; }); return r; }; \
    const a = await bytes(); await new Promise(r => setTimeout(r, 500)); const b = await bytes(); \
    return Object.keys(b).filter(k => b[k] > (a[k] || 0)).sort(); })()";
/// The video tracks of the tiles on screen (on the page and scrolled into view).
const SHOWN: &str = "return [...document.querySelectorAll('#grid .tile')] \
    .filter(e => !e.hidden && e.dataset.visible !== '0') \
    .flatMap(e => { const s = e.querySelector('video').srcObject; return s ? s.getVideoTracks().map(t => t.id) : []; }).sort();";

/// A room of 20 publishers (the load generator's, two small simulcast layers each) and a
/// Chromium viewer whose grid shows 3×3 tiles a page: video flows for the tiles on screen only
/// (the rest are paused at the node), and turning the page moves the flow to the new page's
/// tiles within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paged_grid_receives_video_only_for_the_tiles_on_screen() -> anyhow::Result<()> {
    use moim_e2e::loadgen::{self, LayerSpec};
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    let http = reqwest::Client::new();
    let layers = [
        LayerSpec {
            rid: "q",
            bitrate_bps: 60_000,
        },
        LayerSpec {
            rid: "h",
            bitrate_bps: 150_000,
        },
    ];
    let mut publishers = Vec::new();
    for i in 0..20 {
        let token = dev_token("big", &format!("p{i:02}"));
        publishers.push(loadgen::publish(&http, &node.url(""), "big", &token, &layers).await?);
    }
    let viewer = Browser::join(&node, "big", "viewer", false).await?;
    viewer
        .wait_for(
            "return moim.sub && moim.sub.getReceivers().filter(r => r.track.kind === 'video').length >= 20 && moim.pageCount() === 3;",
            Duration::from_secs(30),
        )
        .await?;
    let list = |v: serde_json::Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    // Settled on page 1: what flows is what is shown, at most 9.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (shown, flowing) = loop {
        let shown = list(viewer.js(SHOWN).await?);
        let flowing = list(viewer.js(FLOWING).await?);
        if (!shown.is_empty() && flowing == shown) || std::time::Instant::now() > deadline {
            break (shown, flowing);
        }
    };
    assert!(
        !shown.is_empty() && shown.len() <= 9,
        "{} tiles on screen",
        shown.len()
    );
    assert_eq!(
        flowing, shown,
        "page 1: video flowing for other tiles than those shown"
    );
    // Turn the page: within 1 s the flow is the new page's tiles.
    viewer.js("moim.setPage(1); return true;").await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let shown2 = list(viewer.js(SHOWN).await?);
    let flowing2 = list(viewer.js(FLOWING).await?);
    assert!(
        shown2.iter().all(|t| !shown.contains(t)),
        "page 2 repeats page 1"
    );
    assert!(!shown2.is_empty() && shown2.len() <= 9);
    assert_eq!(
        flowing2, shown2,
        "between 0.5 s and 1 s after turning the page, video flowed for other tiles than page 2's"
    );
    println!(
        "page 1: video for {} of 20 tracks; page 2, 0.5-1 s after turning: {}",
        flowing.len(),
        flowing2.len()
    );
    viewer.close().await;
    drop(publishers);
    Ok(())
}

/// Dynacast: with the only viewer's tile a thumbnail, nobody wants the top layer, and the
/// publisher's browser stops sending it (its `outbound-rtp` for rid `f` stops growing); the
/// viewer enlarging the tile brings it back within 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynacast_stops_the_top_layer_nobody_wants_and_brings_it_back() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    let publisher = Browser::join(&node, "dyn", "pub", true).await?;
    let viewer = Browser::join(&node, "dyn", "viewer", false).await?;
    wait_decoding(&viewer, "moim.sub", 1, Duration::from_secs(30)).await?;
    // A thumbnail (quarter layer): after the 2 s hold the publisher is told to stop above it;
    // then a large tile wants the top layer again.
    let back = moim_e2e::dynacast_round(&publisher, &viewer, Duration::from_secs(10)).await?;
    println!(
        "rid f stopped; back {} ms after the tile grew",
        back.as_millis()
    );
    assert!(
        back <= Duration::from_secs(1),
        "rid f came back after {back:?}"
    );
    // The page also shows the viewer the full layer again.
    wait_heights(&viewer, "full layer", Duration::from_secs(20), |h| {
        h.first().is_some_and(|&h| h >= 540)
    })
    .await?;
    publisher.close().await;
    viewer.close().await;
    Ok(())
}

/// Mute: Ana mutes her microphone and then her camera; Bo's page shows each within 500 ms
/// (the track's `muted` and the mark on her tile), and unmuting clears them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_is_seen_by_the_other_participant_within_500_ms() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    let ana = Browser::join(&node, "mute", "ana", true).await?;
    let bo = Browser::join(&node, "mute", "bo", true).await?;
    wait_decoding(&bo, "moim.sub", 1, Duration::from_secs(30)).await?;
    ana.wait_for(
        "return !document.getElementById('mic').disabled;",
        Duration::from_secs(10),
    )
    .await?;
    let ana_id = ana.js("return moim.participantId;").await?;
    let ana_id = ana_id.as_str().unwrap_or_default().to_owned();
    for (button, kind, class) in [("mic", "audio", "mic-off"), ("video", "video", "cam-off")] {
        for muted in [true, false] {
            let clicked = std::time::Instant::now();
            ana.js(&format!(
                "document.getElementById('{button}').click(); return true;"
            ))
            .await?;
            let seen = format!(
                "return [...moim.tracks.values()].some(t => t.participant_id === '{ana_id}' && t.kind === '{kind}' && !!t.muted === {muted}) \
                 && document.querySelector('.tile[data-participant=\"{ana_id}\"]').classList.contains('{class}') === {muted};"
            );
            loop {
                if bo.js(&seen).await?.as_bool() == Some(true) {
                    break;
                }
                anyhow::ensure!(
                    clicked.elapsed() < Duration::from_secs(5),
                    "Bo never saw Ana's {kind} muted={muted}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let took = clicked.elapsed();
            println!("{kind} muted={muted} seen after {} ms", took.as_millis());
            assert!(
                took <= Duration::from_millis(500),
                "{kind} muted={muted} after {took:?}"
            );
        }
    }
    ana.close().await;
    bo.close().await;
    Ok(())
}
