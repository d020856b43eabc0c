//! Real Chromium participants on one media node: meeting, chat, WHIP and WHEP.

use moim_e2e::{Browser, Node, dev_token, wait_decoding};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_browsers_see_each_other_and_chat() -> anyhow::Result<()> {
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
    for b in browsers {
        b.close().await;
    }
    Ok(())
}
