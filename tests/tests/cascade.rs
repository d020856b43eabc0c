//! The cascade: media nodes in three regions linked over QUIC, one room across them.

use moim_e2e::{Browser, Node, dev_token, free_udp_port, wait_decoding};
use std::time::{Duration, Instant};

/// The value of an unlabelled sample in Prometheus text.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Three linked nodes: seoul listens, frankfurt dials seoul, virginia dials both.
async fn three_regions() -> anyhow::Result<Vec<Node>> {
    let relay: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let seoul = Node::start(&[
        "--node-id",
        "seoul-1",
        "--region",
        "seoul",
        "--relay-listen",
        &relay[0],
    ])
    .await?;
    let fra = Node::start(&[
        "--node-id",
        "fra-1",
        "--region",
        "frankfurt",
        "--relay-listen",
        &relay[1],
        "--peer",
        &relay[0],
    ])
    .await?;
    let va = Node::start(&[
        "--node-id",
        "va-1",
        "--region",
        "virginia",
        "--relay-listen",
        &relay[2],
        "--peer",
        &relay[0],
        "--peer",
        &relay[1],
    ])
    .await?;
    let nodes = vec![seoul, fra, va];
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in &nodes {
        loop {
            let text = reqwest::get(n.url("/metrics")).await?.text().await?;
            if sample(&text, "moim_relay_links") == Some(2.0) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "relay links did not come up:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_in_each_region_sees_the_other_two() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let nodes = three_regions().await?;
    let mut browsers = Vec::new();
    for (node, name) in nodes.iter().zip(["ana", "bo", "chae"]) {
        let b = Browser::start().await?;
        let token = dev_token("world", name);
        b.goto(&node.url(&format!(
            "/?room=world&name={name}&autojoin=1&token={token}"
        )))
        .await?;
        browsers.push(b);
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
