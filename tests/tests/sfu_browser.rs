//! Real Chromium participants on one media node: meeting, chat, WHIP and WHEP.

use moim_e2e::{Browser, Node, dev_token, wait_decoding, wait_status};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_browsers_see_each_other_and_chat() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let node = Node::start(&[]).await?;
    let mut browsers = Vec::new();
    for name in ["ana", "bo", "chae"] {
        let b = Browser::start().await?;
        let token = dev_token("standup", name);
        b.goto(&node.url(&format!(
            "/?room=standup&name={name}&autojoin=1&token={token}"
        )))
        .await?;
        browsers.push(b);
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

/// A WHIP or WHEP exchange in the page: `setup` adds transceivers to `pc`, the offer goes to
/// `path` with `token`, and the connection and `Location` are kept as `window[name]` and
/// `window[name + "Location"]`. Returns "ok" or the refusal.
fn http_signalled(name: &str, path: &str, token: &str, setup: &str) -> String {
    format!(
        r#"return (async () => {{
  const pc = new RTCPeerConnection();
  {setup}
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch('{path}', {{ method: 'POST', headers: {{ 'Content-Type': 'application/sdp', 'Authorization': 'Bearer {token}' }}, body: pc.localDescription.sdp }});
  if (r.status !== 201) return 'status ' + r.status + ': ' + await r.text();
  window.{name}Location = r.headers.get('Location');
  await pc.setRemoteDescription({{ type: 'answer', sdp: await r.text() }});
  window.{name} = pc;
  return 'ok';
}})()"#
    )
}

const PUBLISH_CAMERA: &str = "const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } }); \
    for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });";
const RECEIVE_AUDIO_VIDEO: &str = "pc.addTransceiver('video', { direction: 'recvonly' }); pc.addTransceiver('audio', { direction: 'recvonly' });";

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
