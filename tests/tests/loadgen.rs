//! The benchmark's load generator against both servers `moim-bench sfu --vs janus` compares:
//! a synthetic simulcast publisher and subscribers over real ICE and DTLS-SRTP, on moim over
//! WHIP/WHEP and on Debian's Janus over its VideoRoom API. A benchmark whose peer silently
//! forwarded nothing would print a meaningless ratio, so this checks media arrives on both.

use moim_e2e::janus::{Janus, Session};
use moim_e2e::loadgen::{self, Client, SIMULCAST_720P};
use moim_e2e::{Node, dev_token};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Waits until the publisher's media flows (a server offers a feed only once it has one).
async fn publisher_up(publisher: &Client) {
    loadgen::wait_connected(std::slice::from_ref(publisher), Duration::from_secs(15))
        .await
        .expect("publisher connects");
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Waits for the subscribers to receive a second of media; returns (received, expected).
async fn a_second_of_media(subs: &[Client]) -> (u64, u64) {
    loadgen::wait_connected(subs, Duration::from_secs(15))
        .await
        .expect("subscribers connect");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let count = |f: fn(&Client) -> u64| subs.iter().map(f).sum::<u64>();
    let received = |c: &Client| c.counters.received.load(Ordering::Relaxed);
    let expected = |c: &Client| c.counters.expected.load(Ordering::Relaxed);
    let (r0, e0) = (count(received), count(expected));
    tokio::time::sleep(Duration::from_secs(1)).await;
    (count(received) - r0, count(expected) - e0)
}

/// Per subscriber, the top layer (1,700 kb/s in ~1,100-byte packets, ~190/s) and the audio
/// (50/s): about 240 packets a second; a server forwarding the bottom layer would give ~80.
fn assert_top_layer_and_audio(server: &str, subs: usize, received: u64, expected: u64) {
    let per_sub = received as f64 / subs as f64;
    assert!(
        (200.0..300.0).contains(&per_sub),
        "{server}: {per_sub} packets/s per subscriber, not the top layer plus audio"
    );
    assert!(
        received as f64 >= expected as f64 * 0.99,
        "{server}: received {received} of {expected}"
    );
}

#[tokio::test]
async fn moim_forwards_the_load_generators_stream_and_it_measures_latency() {
    let node = Node::start(&[]).await.expect("node");
    let http = reqwest::Client::new();
    let base = node.url("");
    let publisher = loadgen::publish(&http, &base, "lg", &dev_token("lg", "pub"), &SIMULCAST_720P)
        .await
        .expect("WHIP publish");
    publisher_up(&publisher).await;
    let start = Instant::now();
    let mut subs = Vec::new();
    for i in 0..3 {
        let token = dev_token("lg", &format!("v{i}"));
        subs.push(
            loadgen::subscribe(&http, &base, "lg", &token, i == 0)
                .await
                .expect("WHEP subscribe"),
        );
    }
    let (received, expected) = a_second_of_media(&subs).await;
    assert_top_layer_and_audio("moim", subs.len(), received, expected);
    assert!(subs[0].counters.time_to_video(start).is_some());
    let lat = loadgen::latencies_ms(&subs[..1]);
    assert!(!lat.is_empty(), "the full subscriber timed packets");
    assert!(moim_e2e::percentile(&lat, 0.5) < 50.0, "latency {lat:?}");
}

#[tokio::test]
async fn janus_forwards_the_same_stream_through_its_videoroom() {
    let janus = Janus::start(None, 1).await.expect("janus starts");
    let session = Session::create(&janus).await.expect("janus session");
    let (publisher, feed) = session
        .publish(&SIMULCAST_720P)
        .await
        .expect("janus publish");
    publisher_up(&publisher).await;
    let start = Instant::now();
    let mut subs = Vec::new();
    for i in 0..3 {
        subs.push(
            session
                .subscribe(feed, i == 0)
                .await
                .expect("janus subscribe"),
        );
    }
    let (received, expected) = a_second_of_media(&subs).await;
    assert_top_layer_and_audio("janus", subs.len(), received, expected);
    assert!(
        subs[0].counters.time_to_video(start).is_some(),
        "video reached the full subscriber"
    );
    assert!(!loadgen::latencies_ms(&subs[..1]).is_empty());
}
