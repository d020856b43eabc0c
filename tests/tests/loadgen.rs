//! The benchmark's load generator against the servers `moim-bench sfu --vs janus,livekit`
//! compares: a synthetic simulcast publisher and subscribers over real ICE and DTLS-SRTP, on moim
//! over WHIP/WHEP, on Debian's Janus over its VideoRoom API and on LiveKit (built from the Go
//! module proxy) over its WebSocket signalling. A benchmark whose peer silently forwarded
//! nothing, or another layer, would print a meaningless ratio, so this checks the same media
//! arrives from each.

use moim_e2e::janus::{self, Janus};
use moim_e2e::livekit::LiveKit;
use moim_e2e::loadgen::{self, Client, SIMULCAST_720P};
use moim_e2e::signalled::{Protocol, Session};
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
    let session = janus::Session::create(&janus).await.expect("janus session");
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

#[tokio::test]
async fn livekit_forwards_the_same_stream_to_subscribers_of_its_room() {
    let lk = LiveKit::start(None).await.expect("livekit starts");
    let publisher = lk
        .publish("lg", "pub", &SIMULCAST_720P)
        .await
        .expect("livekit publish");
    publisher_up(&publisher).await;
    let start = Instant::now();
    let mut subs = Vec::new();
    for i in 0..3 {
        subs.push(
            lk.subscribe("lg", &format!("v{i}"), i == 0, None)
                .await
                .expect("livekit subscribe"),
        );
    }
    let (received, expected) = a_second_of_media(&subs).await;
    if received == 0 {
        eprintln!("livekit log:\n{}", lk.log_tail());
    }
    assert_top_layer_and_audio("livekit", subs.len(), received, expected);
    assert!(
        subs[0].counters.time_to_video(start).is_some(),
        "video reached the full subscriber"
    );
    assert!(!loadgen::latencies_ms(&subs[..1]).is_empty());
}

/// The room shape of `moim-bench sfu --shape room`: subscribers over moim's WebSocket
/// signalling receive every publisher of the room, at the layer their tiles ask for.
#[tokio::test]
async fn moim_websocket_subscribers_receive_every_publisher_of_the_room() {
    let node = Node::start(&[]).await.expect("node");
    let http = reqwest::Client::new();
    let base = node.url("");
    let mut publishers = Vec::new();
    for i in 0..3 {
        let token = dev_token("room", &format!("pub{i}"));
        let p = loadgen::publish(&http, &base, "room", &token, &SIMULCAST_720P)
            .await
            .expect("WHIP publish");
        publisher_up(&p).await;
        publishers.push(p);
    }
    let ws = format!("ws://{}/ws", node.http);
    let mut subs = Vec::new();
    for i in 0..2 {
        let token = dev_token("room", &format!("v{i}"));
        let session = Session::join(Protocol::Moim, &ws, &token)
            .await
            .expect("join over /ws");
        assert_eq!(session.videos.len(), 3, "joined lists the three videos");
        subs.push(
            session
                .subscribe("127.0.0.1".parse().expect("ip"), i == 0, Some((320, 180)))
                .await
                .expect("subscribe"),
        );
    }
    let (received, expected) = a_second_of_media(&subs).await;
    // Per publisher: the quarter layer (150 kb/s, one packet per frame: ~30/s) and the audio
    // (50/s); the top layer would be ~240.
    let per = received as f64 / (subs.len() * publishers.len()) as f64;
    assert!(
        (60.0..120.0).contains(&per),
        "{per} packets/s per publisher per subscriber"
    );
    assert!(
        received as f64 >= expected as f64 * 0.99,
        "received {received} of {expected}"
    );
}
