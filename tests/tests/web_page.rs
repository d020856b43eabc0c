//! The client library (`/sdk/moim.js`, its types and package) and the meeting page built on
//! it, in real Chromium: device switching without renegotiation, raised hands, and screenshots
//! of the page's layouts (desktop and 360 px wide, a 9-person grid, a screen share, a webinar
//! viewer), written to `target/screenshots/` for people to look at.

use moim_e2e::{Browser, Node, SignalClient, dev_token, now_unix, wait_decoding, workspace_root};
use moim_wire::JoinClaims;
use moim_wire::token::DEV_SECRET;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

/// Every node serves the library, its TypeScript declarations and its package manifest, to
/// any origin (a platform team's own front end imports it from there); the declarations
/// type-check a small program that uses the API, when TypeScript is installed (`tests/run`
/// installs it).
#[tokio::test]
async fn the_client_library_is_served_with_its_types_and_package() -> anyhow::Result<()> {
    let node = Node::start(&[]).await?;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/sdk/moim.js", "text/javascript"),
        ("/sdk/moim.d.ts", "application/typescript"),
        ("/sdk/package.json", "application/json"),
        ("/app.js", "text/javascript"),
    ] {
        let r = http
            .get(node.url(path))
            .header("origin", "https://meet.example.com")
            .send()
            .await?;
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let ct = r.headers()["content-type"].to_str()?.to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        if path.starts_with("/sdk/") {
            assert_eq!(r.headers()["access-control-allow-origin"], "*", "{path}");
        }
        let body = r.text().await?;
        let local = workspace_root().join("media-node/web").join(&path[1..]);
        assert_eq!(
            body,
            std::fs::read_to_string(&local)?,
            "{path} is the file in the repository"
        );
    }
    let package: Value = serde_json::from_str(
        &http
            .get(node.url("/sdk/package.json"))
            .send()
            .await?
            .text()
            .await?,
    )?;
    assert_eq!(package["type"], "module");
    assert_eq!(package["types"], "./moim.d.ts");
    let sdk = workspace_root().join("media-node/web/sdk");
    for f in package["files"].as_array().into_iter().flatten() {
        assert!(
            sdk.join(f.as_str().unwrap_or("?")).is_file(),
            "package names {f}"
        );
    }

    // The declarations describe the module: a consumer type-checks against them.
    let tsc = workspace_root().join(".ci/tools/node_modules/.bin/tsc");
    if !tsc.exists() {
        assert!(
            std::env::var("CI").is_err(),
            "TypeScript is missing: tests/run installs it into .ci/tools"
        );
        eprintln!("skipping the type check: no {}", tsc.display());
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("moim-sdk-types-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::copy(sdk.join("moim.js"), dir.join("moim.js"))?;
    std::fs::copy(sdk.join("moim.d.ts"), dir.join("moim.d.ts"))?;
    std::fs::write(
        dir.join("use.ts"),
        r#"import { Room, listDevices, VERSION, type TrackInfo } from './moim.js';
const room = new Room({ simulcast: true });
const stop = room.on('track', ({ track, participantId, info }) => {
  const t: MediaStreamTrack = track; const p: string = participantId; const i: TrackInfo | null = info;
  void t; void p; void i;
});
room.on('quality', (q) => { const n: number | null = q.rttMs; void n; });
async function main(): Promise<void> {
  await room.connect('token');
  const s: MediaStream = await room.publishCamera({ audio: true, video: 'camera-id' });
  room.setMuted('audio', true);
  await room.switchDevice('videoinput', (await listDevices()).videoinput[0].deviceId);
  room.setLastN(4, ['p1']);
  room.raiseHand();
  const el = document.createElement('div');
  const unwatch: () => void = room.watch(el);
  unwatch();
  room.setVideoSize('t1', 320, 180);
  room.sendChat('hi ' + VERSION + s.id);
  stop();
  room.leave();
}
void main;
// @ts-expect-error: not a kind of media
room.setMuted('smell', true);
"#,
    )?;
    let out = Command::new(&tsc)
        .current_dir(&dir)
        .args([
            "--noEmit",
            "--strict",
            "--target",
            "es2022",
            "--module",
            "es2022",
            "--moduleResolution",
            "bundler",
            "--lib",
            "es2022,dom",
            "use.ts",
        ])
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "tsc: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Raised hands: everyone on the node hears `hand_raised`, someone joining later sees it in
/// `joined`, lowering it clears it, and a flood of toggles is refused like chat.
#[tokio::test]
async fn raised_hands_reach_the_room_and_later_joiners() -> anyhow::Result<()> {
    let node = Node::start(&[]).await?;
    let mut ana = SignalClient::connect(&node).await?;
    ana.join(&dev_token("hands", "ana")).await?;
    let joined = ana.recv_type("joined", Duration::from_secs(5)).await?;
    let ana_id = joined["participant_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut bo = SignalClient::connect(&node).await?;
    bo.join(&dev_token("hands", "bo")).await?;
    bo.recv_type("joined", Duration::from_secs(5)).await?;

    ana.send_text(r#"{"type":"raise_hand","raised":true}"#.into())
        .await?;
    let m = bo.recv_type("hand_raised", Duration::from_secs(5)).await?;
    assert_eq!(m["participant_id"], ana_id.as_str());
    assert_eq!(m["raised"], true);
    // The one who raised it hears it too (its page shows it from the same message).
    let m = ana.recv_type("hand_raised", Duration::from_secs(5)).await?;
    assert_eq!(m["raised"], true);

    let mut chae = SignalClient::connect(&node).await?;
    chae.join(&dev_token("hands", "chae")).await?;
    let j = chae.recv_type("joined", Duration::from_secs(5)).await?;
    let shown: Vec<(String, bool)> = j["participants"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["id"].as_str().unwrap_or_default().to_owned(),
                p["hand_raised"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert!(shown.contains(&(ana_id.clone(), true)), "{j}");
    assert!(shown.iter().filter(|(_, h)| *h).count() == 1, "{j}");

    ana.send_text(r#"{"type":"raise_hand","raised":false}"#.into())
        .await?;
    let m = chae
        .recv_type("hand_raised", Duration::from_secs(5))
        .await?;
    assert_eq!(m["raised"], false);

    // Garbage is refused with a clear error and the session stays.
    ana.send_text(r#"{"type":"raise_hand","raised":"yes"}"#.into())
        .await?;
    let e = ana.recv_type("error", Duration::from_secs(5)).await?;
    assert_eq!(e["code"], "bad_request", "{e}");
    // A flood: toggled in a loop, it hits the chat rate limit.
    for i in 0..30 {
        let raised = i % 2 == 0;
        ana.send_text(format!(r#"{{"type":"raise_hand","raised":{raised}}}"#))
            .await?;
    }
    let e = ana.recv_type("error", Duration::from_secs(5)).await?;
    assert_eq!(e["code"], "rate_limited", "{e}");
    ana.send_text(r#"{"type":"chat","text":"still here"}"#.into())
        .await?;
    Ok(())
}

/// Switching camera while publishing (the page's camera picker) replaces the sender's track:
/// no new publish offer, no new subscribe offer on the other side, the published track id
/// stays, and the other participant keeps decoding video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switching_camera_keeps_the_call_without_renegotiation() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    // Three fake cameras: Chromium's second is a depth camera (16-bit grey frames, which the
    // encoder drops), the third an ordinary one; the switch goes from the first to the third.
    let ana =
        Browser::start_with(&["--use-fake-device-for-media-stream=device-count=3".into()]).await?;
    ana.goto(&node.url(&format!(
        "/?room=switch&name=ana&autojoin=1&token={}",
        dev_token("switch", "ana")
    )))
    .await?;
    let bo = Browser::join(&node, "switch", "bo", false).await?;
    wait_decoding(&bo, "moim.sub", 1, Duration::from_secs(30)).await?;
    if let Err(e) = ana
        .wait_for(
            "return document.getElementById('camselect').options.length >= 3;",
            Duration::from_secs(10),
        )
        .await
    {
        let devices = ana
            .js("return (await navigator.mediaDevices.enumerateDevices()).map(d => d.kind + ':' + d.label);")
            .await?;
        anyhow::bail!("{e}: {devices}");
    }
    // Count what each side sends from now on.
    const SPY: &str = "window.__sent = []; const ws = moim.ws; const orig = ws.send.bind(ws); \
        ws.send = (d) => { try { window.__sent.push(JSON.parse(d).type); } catch (_) {} return orig(d); }; return true;";
    ana.js(SPY).await?;
    bo.js(SPY).await?;
    let before = ana
        .js("const t = moim.localTrack('video'); return {id: t.id, device: t.getSettings().deviceId, label: t.label, sender: moim.pub.getSenders().find(s => s.track && s.track.kind === 'video').track.id, declared: moim.declared.map(d => d.track_id)};")
        .await?;
    let frames_before = bo.frames_decoded("moim.sub").await?;
    let sending_before = ana.js(SENDER_DIAGNOSTICS).await?;
    // Pick the other camera in the page's picker.
    let picked = ana
        .js("const s = document.getElementById('camselect'); const other = [...s.options].find(o => o.value !== s.value && o.textContent.endsWith('2')); s.value = other.value; s.dispatchEvent(new Event('change')); return other.value;")
        .await?;
    ana.wait_for(
        &format!(
            "const t = moim.localTrack('video'); return !!t && t.getSettings().deviceId === {picked} && moim.pub.getSenders().some(s => s.track === t);"
        ),
        Duration::from_secs(10),
    )
    .await?;
    let after = ana
        .js("const t = moim.localTrack('video'); return {device: t.getSettings().deviceId, label: t.label, declared: moim.declared.map(d => d.track_id), sent: window.__sent};")
        .await?;
    assert_ne!(before["device"], after["device"], "{before} → {after}");
    assert_eq!(before["declared"], after["declared"], "published ids kept");
    assert!(
        !after["sent"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t == "publish_offer"),
        "no renegotiation: {after}"
    );
    // Bo keeps decoding, with no new subscribe answer (no re-offer came).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = bo.frames_decoded("moim.sub").await?;
        if now.len() == frames_before.len()
            && now.iter().zip(&frames_before).all(|(a, b)| a > &(b + 30))
        {
            break;
        }
        if Instant::now() > deadline {
            let sent = ana.js(SENDER_DIAGNOSTICS).await?;
            let got = bo
                .js("const o = []; (await moim.sub.getStats()).forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video') o.push([s.framesReceived, s.framesDecoded, s.frameWidth, s.keyFramesDecoded, s.pliCount, s.freezeCount]); }); return o;")
                .await?;
            anyhow::bail!(
                "Bo stopped decoding after the switch: {frames_before:?} → {now:?}; Ana sent {sending_before}, then {sent}, Bo gets {got}"
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let bo_sent = bo.js("return window.__sent;").await?;
    assert!(
        !bo_sent
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t == "subscribe_answer"),
        "{bo_sent}"
    );
    println!("switched camera {before} → {after}");
    ana.close().await;
    bo.close().await;
    Ok(())
}

/// What Ana's page sends: per-layer frames encoded 1 s apart, her own preview's frames, the
/// video sender's track and encodings, and the camera track.
const SENDER_DIAGNOSTICS: &str = r#"
    const snap = async () => { const o = []; (await moim.pub.getStats()).forEach(s => { if (s.type === 'outbound-rtp' && s.kind === 'video') o.push([s.rid, s.framesEncoded, s.frameWidth, s.active, s.qualityLimitationReason]); if (s.type === 'candidate-pair' && s.nominated) o.push(['bwe', s.availableOutgoingBitrate, s.bytesSent]); }); return o; };
    const t = moim.localTrack('video');
    const v = document.querySelector(`.tile[data-participant="${moim.participantId}"] video`);
    const a = await snap(); const f0 = v.getVideoPlaybackQuality().totalVideoFrames;
    await new Promise(r => setTimeout(r, 1000));
    const sender = moim.pub.getSenders().find(s => s.track && s.track.kind === 'video');
    return {a, b: await snap(), own: [f0, v.getVideoPlaybackQuality().totalVideoFrames], sender: [sender && sender.track.id, t.id, sender && JSON.stringify(sender.getParameters().encodings)],
            track: [t.readyState, t.muted, t.enabled, JSON.stringify(t.getSettings())]};
"#;

fn screenshot_dir() -> PathBuf {
    let dir = workspace_root().join("target/screenshots");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

async fn shoot(b: &Browser, name: &str) -> anyhow::Result<PathBuf> {
    // Let videos paint and layout settle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let png = b.client.screenshot().await?;
    anyhow::ensure!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let path = screenshot_dir().join(format!("{name}.png"));
    std::fs::write(&path, png)?;
    println!("screenshot: {}", path.display());
    Ok(path)
}

/// Layout facts of a page: window width, whether anything overflows sideways, tiles shown,
/// the featured tile, the stage.
const LAYOUT: &str = "const shown = [...document.querySelectorAll('#grid .tile')].filter(e => !e.hidden); \
    return {width: innerWidth, overflow: document.documentElement.scrollWidth > innerWidth + 1, shown: shown.length, \
    stage: document.getElementById('grid').classList.contains('stage'), \
    featured: (document.querySelector('#grid .tile.featured') || {dataset: {}}).dataset.participant || null, \
    header: document.querySelector('header').getBoundingClientRect().height, \
    tiles: shown.map(e => { const r = e.getBoundingClientRect(); return [e.dataset.participant, Math.round(r.width), Math.round(r.height)]; })};";

/// Screenshots of the page as people see it: a 9-person grid on a desktop window and on a
/// 360 px phone, a screen share (the presentation layout), a webinar viewer (the stage with no
/// own tile and no publish controls), and the Korean text. Each is checked for its layout and
/// written to `target/screenshots/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn screenshots_of_the_meeting_page() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    // Seven people without media (their tiles show initials), one with a raised hand, one
    // muted; then a Chromium presenter with the fake camera.
    let mut others = Vec::new();
    for name in ["Minji", "Jonas", "Priya", "Tomás", "Aiko", "Lars", "Sofia"] {
        let mut c = SignalClient::connect(&node).await?;
        c.join(&dev_token("team", name)).await?;
        c.recv_type("joined", Duration::from_secs(5)).await?;
        others.push(c);
    }
    others[1]
        .send_text(r#"{"type":"raise_hand","raised":true}"#.into())
        .await?;
    let presenter = Browser::join(&node, "team", "Ana", true).await?;
    presenter
        .wait_for(
            "return !document.getElementById('screen').disabled;",
            Duration::from_secs(15),
        )
        .await?;

    // Desktop, 9 tiles: own + Ana + 7.
    let desk = Browser::start_with(&["--window-size=1280,800".into()]).await?;
    desk.goto(&node.url(&format!(
        "/?room=team&name=Bo&autojoin=1&token={}",
        dev_token("team", "Bo")
    )))
    .await?;
    wait_decoding(&desk, "moim.sub", 1, Duration::from_secs(30)).await?;
    desk.wait_for(
        "return document.querySelectorAll('#grid .tile:not([hidden])').length === 9 && !!document.querySelector('.tile.hand');",
        Duration::from_secs(10),
    )
    .await?;
    let l = desk.js(LAYOUT).await?;
    assert_eq!(l["shown"], 9, "{l}");
    assert_eq!(l["stage"], false, "{l}");
    assert_eq!(l["overflow"], false, "{l}");
    shoot(&desk, "desktop-grid-9").await?;
    desk.js("document.getElementById('peopletab').click(); return true;")
        .await?;
    let people = desk
        .js("return [...document.querySelectorAll('#people li')].map(l => l.textContent);")
        .await?;
    assert_eq!(people.as_array().map(Vec::len), Some(9), "{people}");
    assert!(people.to_string().contains('✋'), "{people}");
    shoot(&desk, "desktop-people").await?;

    // A phone, 360 px wide: nothing overflows sideways, two columns.
    let phone = Browser::start_phone(360, 740).await?;
    phone
        .goto(&node.url(&format!(
            "/?room=team&name=Chae&autojoin=1&publish=0&token={}",
            dev_token("team", "Chae")
        )))
        .await?;
    wait_decoding(&phone, "moim.sub", 1, Duration::from_secs(30)).await?;
    let l = phone.js(LAYOUT).await?;
    assert_eq!(l["width"], 360, "{l}");
    assert_eq!(l["overflow"], false, "{l}");
    let widths: Vec<u64> = l["tiles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t[1].as_u64())
        .collect();
    assert!(
        widths.iter().all(|&w| w > 100 && w < 180),
        "two columns: {l}"
    );
    shoot(&phone, "phone-360-grid").await?;

    // Ana shares her screen: the desktop viewer switches to the presentation layout.
    presenter
        .js("document.getElementById('screen').click(); return true;")
        .await?;
    desk.wait_for(
        "const f = document.querySelector('#grid .tile.featured'); return !!f && f.dataset.participant.endsWith(':screen') && f.querySelector('video').videoWidth > 0;",
        Duration::from_secs(20),
    )
    .await?;
    let l = desk.js(LAYOUT).await?;
    assert_eq!(l["stage"], true, "{l}");
    let big = l["tiles"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t[0].as_str().is_some_and(|k| k.ends_with(":screen")))
        .and_then(|t| t[1].as_u64())
        .unwrap_or(0);
    let small = l["tiles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t[1].as_u64())
        .min()
        .unwrap_or(0);
    assert!(big >= 4 * small, "the screen share is the large tile: {l}");
    shoot(&desk, "desktop-screen-share").await?;
    let l = phone.js(LAYOUT).await?;
    assert_eq!(l["overflow"], false, "{l}");
    shoot(&phone, "phone-360-screen-share").await?;
    presenter.js("moim.stopScreen(); return true;").await?;
    desk.wait_for(
        "return !document.querySelector('.tile[data-participant$=\":screen\"]') && !document.getElementById('grid').classList.contains('stage');",
        Duration::from_secs(10),
    )
    .await?;

    // A webinar viewer (a token that may not publish), in Korean.
    let viewer_token = JoinClaims {
        identity: "viewer-1".into(),
        room: "team".into(),
        name: "시청자".into(),
        can_publish: false,
        can_subscribe: true,
        can_chat: None,
        exp: now_unix() + 3600,
        nbf: None,
    }
    .sign(DEV_SECRET.as_bytes());
    let viewer = Browser::start_with(&[
        "--window-size=1280,800".into(),
        "--lang=ko".into(),
        "--accept-lang=ko-KR,ko".into(),
    ])
    .await?;
    viewer
        .goto(&node.url(&format!(
            "/?room=team&name=viewer&autojoin=1&token={viewer_token}"
        )))
        .await?;
    wait_decoding(&viewer, "moim.sub", 1, Duration::from_secs(30)).await?;
    viewer
        .wait_for(
            "const f = document.querySelector('#grid .tile.featured'); return !!f && f.classList.contains('has-video');",
            Duration::from_secs(10),
        )
        .await?;
    let l = viewer.js(LAYOUT).await?;
    assert_eq!(l["stage"], true, "{l}");
    let state = viewer
        .js("return {lang: document.documentElement.lang, own: !!document.querySelector(`.tile[data-participant=\"${moim.participantId}\"]`), cam: document.getElementById('cam').disabled, badge: !document.getElementById('viewerbadge').hidden, chat: document.getElementById('chattext').disabled, leave: document.getElementById('leave').textContent};")
        .await?;
    assert_eq!(state["lang"], "ko", "{state}");
    assert_eq!(
        state["own"], false,
        "a viewer has no tile of its own: {state}"
    );
    assert_eq!(state["cam"], true, "{state}");
    assert_eq!(state["badge"], true, "{state}");
    assert_eq!(
        state["chat"], true,
        "viewers do not chat by default: {state}"
    );
    assert_eq!(state["leave"], "나가기", "{state}");
    shoot(&viewer, "desktop-webinar-viewer-ko").await?;

    // Keyboard: M mutes the microphone, S toggles the speaker view.
    desk.js("document.activeElement && document.activeElement.blur(); document.dispatchEvent(new KeyboardEvent('keydown', {key: 'm'})); document.dispatchEvent(new KeyboardEvent('keydown', {key: 's'})); return true;")
        .await?;
    desk.wait_for(
        "return moim.isMuted('audio') && document.getElementById('grid').classList.contains('stage');",
        Duration::from_secs(5),
    )
    .await?;
    shoot(&desk, "desktop-speaker-view").await?;

    for b in [presenter, desk, phone, viewer] {
        b.close().await;
    }
    drop(others);
    Ok(())
}
