//! One node's engine in fake time, against in-memory rtc clients (`media_node::sfu::testing`):
//! keyframe requests when a viewer joins, NACKs answered from the down-track's history, the
//! history's bound, and WHEP refusing a codec the publisher does not send.

use media_node::error::Error;
use media_node::sfu::engine::NACK_BUFFER_PACKETS;
use media_node::sfu::engine::offered_codecs;
use media_node::sfu::peer::GCC_MIN_BPS;
use media_node::sfu::testing::{Hop, Net, claims, client_pc};
use moim_wire::signal::ServerMessage;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::time::Duration;

const ROOM: &str = "r";

/// Whether `d` is an SRTP media packet (RTP version 2, a payload type outside RTCP's range).
fn is_media(d: &[u8]) -> bool {
    d.len() > 12 && d[0] >> 6 == 2 && !(192..=223).contains(&d[1])
}

/// A node with a VP8 publisher that has connected and sent a few frames.
fn publishing() -> (Net, usize) {
    let mut net = Net::new();
    let node = net.node("n", "test");
    let publisher = net.join(node, ROOM, "pub");
    net.publish_video(publisher, 4242);
    net.run_with_video(Duration::from_secs(2), publisher, 7);
    assert!(net.clients[publisher].connected.0, "publisher connects");
    assert_eq!(
        net.nodes[node].engine.status().published_tracks,
        1,
        "the node sees the track"
    );
    (net, publisher)
}

/// [`publishing`] with a viewer connected and receiving for 3 s: the net, the publisher, the
/// viewer and the track's id as the viewer knows it.
fn watched() -> (Net, usize, usize, String) {
    let (mut net, publisher) = publishing();
    let viewer = net.join(0, ROOM, "viewer");
    net.run_with_video(Duration::from_secs(3), publisher, 7);
    assert!(net.clients[viewer].connected.1, "viewer connects");
    let track_id = net.clients[viewer]
        .signals
        .iter()
        .find_map(|m| match m {
            ServerMessage::Joined { tracks, .. } => tracks.first().map(|t| t.track_id.clone()),
            ServerMessage::TrackPublished { track } => Some(track.track_id.clone()),
            _ => None,
        })
        .expect("the viewer hears of the track");
    (net, publisher, viewer, track_id)
}

#[test]
fn keyframe_requested_on_join_and_nack_served_from_cache() {
    let (mut net, publisher) = publishing();
    let plis_before = net.clients[publisher].plis;
    let viewer = net.join(0, ROOM, "viewer");
    let offer = net.clients[viewer]
        .signals
        .iter()
        .find_map(|m| match m {
            ServerMessage::SubscribeOffer { sdp } => Some(sdp.clone()),
            _ => None,
        })
        .expect("subscribe offer");
    // rtc offers a track's transceiver only the track's codec: a subscriber that cannot take
    // it rejects the m-line rather than choosing a codec the node never sends.
    let codecs = offered_codecs(&offer);
    assert!(
        codecs
            .iter()
            .all(|c| c.eq_ignore_ascii_case("video/VP8") || c.eq_ignore_ascii_case("video/rtx")),
        "the node offers only the publisher's codec: {codecs:?}"
    );

    // Lose the 10th media datagram on its way to the viewer.
    let mut media_to_viewer = 0;
    net.impair(move |hop, d| {
        if hop == Hop::ToClient(viewer) && is_media(d) {
            media_to_viewer += 1;
            return media_to_viewer == 10;
        }
        false
    });
    net.run_with_video(Duration::from_secs(3), publisher, 7);
    let v = &net.clients[viewer];
    assert!(v.connected.1, "viewer connects");
    assert!(
        net.clients[publisher].plis > plis_before,
        "a keyframe is requested when the viewer connects"
    );
    assert!(
        v.received.len() > 20,
        "viewer receives media: {}",
        v.received.len()
    );
    let engine = &net.nodes[0].engine;
    assert!(
        engine.metrics().nacks.get() >= 1,
        "the viewer asks for the lost packet"
    );
    // Every sequence number from the first received to the last arrived: the lost one came
    // back as a retransmission from the node's buffer.
    let mut got = v.seqs(v.streams()[0]);
    got.sort_unstable();
    got.dedup();
    let (first, last) = (got[0], got[got.len() - 1]);
    let missing: Vec<u16> = (first..=last)
        .filter(|s| got.binary_search(s).is_err())
        .collect();
    assert!(missing.is_empty(), "missing after NACK: {missing:?}");
    // The viewer's TWCC feedback reached the node's GCC estimator.
    let estimate = engine
        .send_estimate_bps(net.clients[viewer].session)
        .unwrap_or(0.0);
    assert!(
        estimate >= GCC_MIN_BPS,
        "send-side estimate for the viewer: {estimate:?}"
    );
}

#[test]
fn nack_cache_is_bounded() {
    let (mut net, publisher) = publishing();
    let viewer = net.join(0, ROOM, "viewer");
    // Connect, then push well over the cache size through to the viewer, one packet a round
    // (every one a keyframe so forwarding starts without waiting for a PLI).
    net.run(Duration::from_secs(1));
    assert!(net.clients[viewer].connected.1, "viewer connects");
    let total = usize::from(NACK_BUFFER_PACKETS) * 3;
    for _ in 0..total {
        net.send_video(publisher, true);
        net.step();
    }
    let ssrc = net.clients[viewer].streams()[0];
    let seqs = net.clients[viewer].seqs(ssrc);
    assert!(seqs.len() >= total - 10, "forwarded: {}", seqs.len());
    let newest = *seqs.last().expect("received");
    let recent = newest.wrapping_sub(NACK_BUFFER_PACKETS / 2);
    let evicted = newest.wrapping_sub(NACK_BUFFER_PACKETS * 2);
    let count = |seqs: &[u16], s: u16| seqs.iter().filter(|&&x| x == s).count();
    assert_eq!(count(&seqs, recent), 1);
    assert_eq!(count(&seqs, evicted), 1);

    // The node answers a NACK for a recent packet from its cache, and has nothing for one
    // older than the cache holds.
    net.nack(viewer, ssrc, &[recent, evicted]);
    net.run(Duration::from_millis(100));
    let seqs = net.clients[viewer].seqs(ssrc);
    assert_eq!(count(&seqs, recent), 2, "recent packet retransmitted");
    assert_eq!(count(&seqs, evicted), 1, "evicted packet not retransmitted");
}

#[test]
fn whep_refuses_an_offer_without_the_publishers_codec() {
    let (mut net, publisher) = publishing();
    // The publisher's track gets its codec with its first packets.
    for _ in 0..50 {
        net.send_video(publisher, true);
        net.step();
    }
    let t = net.now;
    let mut viewer = client_pc(t);
    for kind in [RtpCodecKind::Audio, RtpCodecKind::Video] {
        viewer
            .add_transceiver_from_kind(
                kind,
                Some(rtc::rtp_transceiver::RTCRtpTransceiverInit {
                    direction: rtc::rtp_transceiver::RTCRtpTransceiverDirection::Recvonly,
                    streams: vec![],
                    send_encodings: vec![],
                }),
            )
            .expect("transceiver");
    }
    let offer = viewer.create_offer(None).expect("offer");
    viewer.set_local_description(t, offer).expect("local");
    let sdp = viewer.local_description().expect("sdp").sdp;
    assert!(offered_codecs(&sdp).iter().any(|c| c == "video/VP8"));
    let without_vp8 = sdp.replace(" VP8/", " XVP8/");
    let engine = &mut net.nodes[0].engine;
    let err = engine
        .whep(&claims("viewer", ROOM), without_vp8, t)
        .expect_err("no VP8, no video");
    assert!(
        matches!(&err, Error::UnsupportedCodec(c) if c == "video/VP8"),
        "{err}"
    );
    assert_eq!(err.http_status(), 406);
    assert!(
        engine.whep(&claims("viewer", ROOM), sdp, t).is_ok(),
        "with VP8 it plays"
    );
}

/// Issue 21's amplification: a subscriber that NACKs its whole history a hundred times a
/// second. The node answers each packet at most once per `RESEND_MIN_GAP` and within the
/// down-track's resend budget, so what it sends that subscriber stays within
/// `1 + RESEND_SHARE` times its stream (plus one burst), and another subscriber of the same
/// track loses nothing. Before the budget, each NACK resent all 400 packets again.
#[test]
fn a_subscriber_that_nacks_everything_gets_at_most_half_again_its_stream() {
    use media_node::sfu::send::{RESEND_BURST_BYTES, RESEND_SHARE};
    const SIZE: usize = 1100;
    let (mut net, publisher) = publishing();
    net.video_size = SIZE;
    let greedy = net.join(0, ROOM, "greedy");
    let quiet = net.join(0, ROOM, "quiet");
    net.run_with_video(Duration::from_secs(1), publisher, 7);
    assert!(net.clients[greedy].connected.1 && net.clients[quiet].connected.1);
    let (g0, q0) = (
        net.clients[greedy].received.len(),
        net.clients[quiet].received.len(),
    );
    let mut plis = net.clients[publisher].plis;
    // 5 s: a frame every 35 ms, the greedy subscriber's NACK of its last 400 packets every 10 ms.
    for round in 0..1000u32 {
        net.step();
        if round % 7 == 0 {
            let key = net.clients[publisher].plis > plis;
            plis = net.clients[publisher].plis;
            net.send_video(publisher, key);
        }
        if round % 2 == 0 {
            let g = &net.clients[greedy];
            let Some(&ssrc) = g.streams().first() else {
                continue;
            };
            let mut seqs = g.seqs(ssrc);
            seqs.dedup();
            let from = seqs.len().saturating_sub(400);
            let last: Vec<u16> = seqs[from..].to_vec();
            net.nack(greedy, ssrc, &last);
        }
    }
    net.run(Duration::from_millis(200));
    let sent_greedy = net.clients[greedy].received.len() - g0;
    let sent_quiet = net.clients[quiet].received.len() - q0;
    let bound = sent_quiet as f64 * (1.0 + RESEND_SHARE) + RESEND_BURST_BYTES / SIZE as f64;
    println!(
        "to the NACKing subscriber {sent_greedy} packets, to the other {sent_quiet} (bound {bound:.0}); refused resends {}",
        net.nodes[0].engine.metrics().retransmits_refused.get()
    );
    assert!(sent_quiet > 100, "the stream flowed: {sent_quiet}");
    assert!(
        sent_greedy as f64 <= bound,
        "{sent_greedy} packets to the NACKing subscriber against {sent_quiet} to the other"
    );
    assert!(net.nodes[0].engine.metrics().retransmits_refused.get() > 1000);
    // The other subscriber lost nothing.
    let q = &net.clients[quiet];
    let got = q.seqs(q.streams()[0]);
    let distinct: std::collections::HashSet<u16> = got.iter().copied().collect();
    let span = usize::from(got[got.len() - 1].wrapping_sub(got[0])) + 1;
    assert_eq!(distinct.len(), span, "the other subscriber lost packets");
}

/// Issue 21: a new address is bound to a peer only by a binding request whose
/// MESSAGE-INTEGRITY verifies; until then nothing else from it reaches the peer.
#[test]
fn only_a_verified_check_binds_a_new_address() {
    use media_node::sfu::stun;
    use std::cell::RefCell;
    use std::rc::Rc;
    let mut net = Net::new();
    let node = net.node("n", "test");
    let seen: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let tap = Rc::clone(&seen);
    net.impair(move |hop, d| {
        if matches!(hop, Hop::FromClient(_)) {
            tap.borrow_mut().push(d.to_vec());
        }
        false
    });
    let publisher = net.join(node, ROOM, "pub");
    net.publish_video(publisher, 4242);
    net.run_with_video(Duration::from_secs(2), publisher, 7);
    assert!(net.clients[publisher].connected.0, "publisher connects");
    let seen = seen.borrow().clone();
    let check = seen
        .iter()
        .find(|d| stun::is_stun(d) && d[..2] == [0, 1] && stun::local_ufrag(d).is_some())
        .cloned()
        .expect("the publisher sent a binding request");
    let media = seen
        .iter()
        .rev()
        .find(|d| is_media(d))
        .cloned()
        .expect("the publisher sent media");
    let stranger: std::net::SocketAddr = "192.0.2.7:5000".parse().expect("address");
    let now = net.now;
    let engine = &mut net.nodes[node].engine;
    let before = engine_unmatched(engine);
    // The publisher's check with one byte of its transaction id changed: MESSAGE-INTEGRITY no
    // longer verifies, so the stranger's address stays unbound and its media is dropped.
    let mut forged = check.clone();
    forged[10] ^= 1;
    engine.handle_datagram(now, stranger, &forged);
    engine.handle_datagram(now, stranger, &media);
    assert_eq!(engine_unmatched(engine), before + 2);
    // The unchanged check verifies (a replay, as ICE allows): now the address is bound.
    engine.handle_datagram(now, stranger, &check);
    engine.handle_datagram(now, stranger, &media);
    assert_eq!(engine_unmatched(engine), before + 2);
}

fn engine_unmatched(e: &media_node::sfu::engine::Engine) -> u64 {
    e.metrics().unmatched_datagrams.get()
}

/// Issue 21: chat goes out over each participant's data channel; one that cannot take it as
/// fast as the room sends it (here: nothing reaches it, so nothing is acknowledged) stops
/// getting chat once 256 KiB wait unsent, instead of the node buffering without bound. It
/// keeps its seat, and the others get every message.
#[test]
fn a_participant_whose_chat_channel_backs_up_misses_chat_and_keeps_its_seat() {
    use moim_wire::signal::MAX_CHAT_BYTES;
    let mut net = Net::new();
    let node = net.node("n", "test");
    let slow = net.join(node, ROOM, "slow");
    let senders: Vec<usize> = (0..12)
        .map(|i| net.join(node, ROOM, &format!("s{i}")))
        .collect();
    net.run(Duration::from_secs(2));
    assert!(net.clients[slow].connected.1, "the slow one connects");
    net.impair(move |hop, _| hop == Hop::ToClient(slow));
    let text = "x".repeat(MAX_CHAT_BYTES);
    for round in 0..10 {
        for &s in &senders {
            let (session, now) = (net.clients[s].session, net.now);
            net.nodes[node]
                .engine
                .chat(session, &text, now)
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
        }
        net.run(Duration::from_millis(20));
    }
    let engine = &net.nodes[node].engine;
    let undelivered = engine.metrics().chat_undelivered.get();
    let by_signal = |c: usize| {
        net.clients[c]
            .signals
            .iter()
            .filter(|m| matches!(m, ServerMessage::Chat { .. }))
            .count()
    };
    println!(
        "undelivered {undelivered}; as signals: slow {}, a sender {}",
        by_signal(slow),
        by_signal(senders[0])
    );
    // 120 messages of 4 KiB (480 KiB) to the slow one: everything over the 256 KiB mark.
    assert!(undelivered >= 40, "{undelivered}");
    assert!(undelivered < 120, "{undelivered}");
    assert_eq!(engine.status().participants, 13);
}

/// Issue 21: the signal queue's drop policy. With the bound lowered to 3, a twelfth
/// participant's arrival is news for eleven: three are told, and the eight that would have
/// missed it are closed (their clients rejoin with the whole room) rather than left wrong
/// about who is there; so is the newcomer, whose subscribe offer did not fit.
#[test]
fn a_session_that_would_miss_a_message_to_a_full_signal_queue_is_closed() {
    let mut net = Net::new();
    let node = net.node("n", "test");
    for i in 0..11 {
        net.join(node, ROOM, &format!("p{i}"));
    }
    net.run(Duration::from_millis(500));
    // The arrival, straight into the engine with the bound lowered for this one turn.
    let now = net.now;
    let engine = &mut net.nodes[node].engine;
    engine.set_max_queued_signals(3);
    engine
        .ws_join(&claims("late", ROOM), now)
        .expect("the late one joins");
    engine.set_max_queued_signals(media_node::sfu::engine::MAX_QUEUED_SIGNALS);
    net.run(Duration::from_millis(100));
    let engine = &net.nodes[node].engine;
    // Eight `participant_joined` and the late one's own `subscribe_offer` did not fit.
    assert_eq!(engine.metrics().signals_dropped.get(), 9);
    assert_eq!(engine.status().participants, 3);
}

/// A publisher whose media stops (its path broke) while a subscriber waits for a keyframe: the
/// node's requests meanwhile are lost on the way, and are throttled to one per 500 ms per
/// layer. When the publisher's media comes back, the throttle is forgotten and the waiting
/// subscriber's request goes out within the next look (100 ms), not up to 500 ms later.
#[test]
fn a_publisher_whose_media_returns_is_asked_for_a_keyframe_at_once() {
    let (mut net, publisher, viewer, track_id) = watched();
    let session = net.clients[viewer].session;
    // The publisher goes silent; the viewer pauses the track and shows it again, so it waits
    // for a keyframe that cannot come.
    net.run(Duration::from_millis(300));
    net.nodes[0]
        .engine
        .ws_layer_preference(session, &track_id, 0, 0)
        .expect("pause");
    net.run(Duration::from_millis(300));
    net.nodes[0]
        .engine
        .ws_layer_preference(session, &track_id, 1280, 720)
        .expect("resume");
    // Requests go out every 500 ms while it waits: catch one, then let the media return 50 ms
    // after it.
    let plis = net.clients[publisher].plis;
    assert!(
        net.run_until(Duration::from_secs(2), |n| n.clients[publisher].plis > plis),
        "no keyframe request while the viewer waits"
    );
    net.run(Duration::from_millis(50));
    let plis = net.clients[publisher].plis;
    let mut waited = Duration::ZERO;
    while net.clients[publisher].plis == plis && waited < Duration::from_secs(1) {
        // One delta frame a round of 35 ms, as the publisher's encoder sends on its return.
        net.send_video(publisher, false);
        net.run(Duration::from_millis(35));
        waited += Duration::from_millis(35);
    }
    assert!(
        waited <= Duration::from_millis(175),
        "the returning publisher was asked for a keyframe {waited:?} after its media came back"
    );
}

/// A single-layer video (no simulcast) is paused too when its tile is not shown (0×0), and
/// comes back, from a keyframe, when it is shown again.
#[test]
fn a_single_layer_video_pauses_at_zero_size_and_resumes() {
    let (mut net, publisher, viewer, track_id) = watched();
    let session = net.clients[viewer].session;
    let video = |net: &Net| {
        let v = &net.clients[viewer];
        v.received
            .iter()
            .filter(|(s, _)| v.streams().first() == Some(s))
            .count()
    };
    assert!(video(&net) > 20, "the viewer receives the video");
    net.nodes[0]
        .engine
        .ws_layer_preference(session, &track_id, 0, 0)
        .expect("pause");
    net.run_with_video(Duration::from_millis(200), publisher, 7);
    let paused_at = video(&net);
    net.run_with_video(Duration::from_secs(2), publisher, 7);
    assert_eq!(video(&net), paused_at, "video kept flowing while paused");
    net.nodes[0]
        .engine
        .ws_layer_preference(session, &track_id, 640, 360)
        .expect("resume");
    net.run_with_video(Duration::from_secs(1), publisher, 7);
    assert!(video(&net) > paused_at + 10, "video did not resume");
}

/// Runs `net` for a second of video from `pubs`; returns how many streams reached `viewer`
/// in that second.
fn streams_flowing(net: &mut Net, viewer: usize, pubs: &[usize]) -> usize {
    let before = net.clients[viewer].received.len();
    net.run_with_videos(Duration::from_secs(1), pubs, 7);
    let mut ssrcs: Vec<u32> = net.clients[viewer].received[before..]
        .iter()
        .map(|(ssrc, _)| *ssrc)
        .collect();
    ssrcs.sort_unstable();
    ssrcs.dedup();
    ssrcs.len()
}

/// Last-N: a viewer of three publishers that asks for one receives one video (the earliest
/// publisher while nobody has spoken); a pin adds one; turning it off brings all back.
#[test]
fn last_n_forwards_only_the_chosen_publishers_video() {
    let mut net = Net::new();
    let node = net.node("n", "test");
    let pubs: Vec<usize> = (0..3u32)
        .map(|i| {
            let p = net.join(node, ROOM, &format!("pub{i}"));
            net.publish_video(p, 5000 + i);
            p
        })
        .collect();
    net.run_with_videos(Duration::from_secs(2), &pubs, 7);
    let viewer = net.join(node, ROOM, "viewer");
    net.run_with_videos(Duration::from_secs(3), &pubs, 7);
    assert_eq!(
        streams_flowing(&mut net, viewer, &pubs),
        3,
        "all three before"
    );
    let session = net.clients[viewer].session;
    let id_of = |net: &Net, c: usize| {
        net.clients[c]
            .signals
            .iter()
            .find_map(|m| match m {
                ServerMessage::Joined { participant_id, .. } => Some(participant_id.clone()),
                _ => None,
            })
            .expect("joined")
    };

    net.nodes[node]
        .engine
        .ws_last_n(session, Some(1), vec![])
        .expect("last-n 1");
    net.run_with_videos(Duration::from_millis(300), &pubs, 7);
    assert_eq!(streams_flowing(&mut net, viewer, &pubs), 1, "last-n 1");

    let third = id_of(&net, pubs[2]);
    net.nodes[node]
        .engine
        .ws_last_n(session, Some(1), vec![third])
        .expect("pin");
    net.run_with_videos(Duration::from_millis(500), &pubs, 7);
    assert_eq!(streams_flowing(&mut net, viewer, &pubs), 2, "one and a pin");

    net.nodes[node]
        .engine
        .ws_last_n(session, None, vec![])
        .expect("off");
    net.run_with_videos(Duration::from_millis(500), &pubs, 7);
    assert_eq!(
        streams_flowing(&mut net, viewer, &pubs),
        3,
        "all three after"
    );

    // Out of bounds: refused, and nothing changes.
    assert!(matches!(
        net.nodes[node]
            .engine
            .ws_last_n(session, Some(1_000), vec![]),
        Err(Error::BadRequest(_))
    ));
    assert!(matches!(
        net.nodes[node]
            .engine
            .ws_last_n(session, Some(1), vec!["p".repeat(300)]),
        Err(Error::BadRequest(_))
    ));
    assert_eq!(streams_flowing(&mut net, viewer, &pubs), 3);
}
