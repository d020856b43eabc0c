//! The cascade in fake time: several engines whose relay links the harness carries
//! (`media_node::sfu::testing`), one behaviour per test. Each runs seconds of meeting in
//! milliseconds; the real QUIC links and real browsers are tested in `tests/tests/cascade.rs`.

use media_node::relay::proto::Control;
use media_node::sfu::testing::{ClientIx, Hop, Net, NodeIx, is_relay_media};
use moim_wire::signal::ServerMessage;
use std::time::Duration;

const ROOM: &str = "team.standup";

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// `nodes` linked as a mesh; a publisher of one video on the first.
fn mesh(nodes: &[&str]) -> (Net, Vec<NodeIx>, ClientIx) {
    let mut net = Net::new();
    let ix: Vec<NodeIx> = nodes.iter().map(|n| net.node(n, n)).collect();
    for i in 0..ix.len() {
        for j in i + 1..ix.len() {
            net.link(ix[i], ix[j]);
        }
    }
    let publisher = net.join(ix[0], ROOM, "ana");
    net.publish_video(publisher, 1111);
    net.run_with_video(secs(1.0), publisher, 7);
    (net, ix, publisher)
}

fn got(c: &media_node::sfu::testing::Client, f: impl Fn(&ServerMessage) -> bool) -> bool {
    c.signals.iter().any(f)
}

fn decoding(net: &Net, viewer: ClientIx) -> usize {
    net.clients[viewer].received.len()
}

#[test]
fn a_track_is_announced_to_a_node_with_interest_and_withdrawn_when_its_publisher_leaves() {
    let (mut net, n, publisher) = mesh(&["seoul-1", "fra-1"]);
    // Nobody on fra-1 yet: no interest, so seoul-1 announces nothing and sends no media.
    assert!(
        !net.relay_control
            .iter()
            .any(|(_, _, m)| matches!(m, Control::TrackAnnounce { .. })),
        "announced before anyone on the far node wanted the room"
    );
    assert_eq!(net.relay_media.get(&(n[0], n[1])), None);

    let viewer = net.join(n[1], ROOM, "bo");
    net.run_with_video(secs(2.0), publisher, 7);
    assert!(
        net.relay_control
            .iter()
            .any(|(from, to, m)| (*from, *to) == (n[1], n[0])
                && matches!(m, Control::Interest { room, on: true } if room == ROOM)),
        "fra-1 tells seoul-1 it has the room"
    );
    assert!(net.relay_control.iter().any(|(from, _, m)| *from == n[0]
        && matches!(m, Control::TrackAnnounce { origin, hops: 0, .. } if origin == "seoul-1")));
    let v = &net.clients[viewer];
    assert!(
        got(v, |m| matches!(m, ServerMessage::TrackPublished { .. })
            || matches!(m, ServerMessage::Joined { tracks, .. } if !tracks.is_empty())),
        "the viewer learns of the track: {:?}",
        v.signals
    );
    assert!(
        decoding(&net, viewer) > 20,
        "media reaches the viewer across the link"
    );

    net.leave(publisher);
    net.run(secs(1.0));
    assert!(net.relay_control.iter().any(|(from, _, m)| *from == n[0]
        && matches!(m, Control::TrackWithdraw { room, .. } if room == ROOM)));
    let v = &net.clients[viewer];
    assert!(got(v, |m| matches!(
        m,
        ServerMessage::TrackUnpublished { .. }
    )));
    assert!(got(v, |m| matches!(
        m,
        ServerMessage::ParticipantLeft { .. }
    )));
}

#[test]
fn media_crosses_a_link_only_while_the_far_side_wants_the_room() {
    let (mut net, n, publisher) = mesh(&["seoul-1", "fra-1"]);
    let viewer = net.join(n[1], ROOM, "bo");
    net.run_with_video(secs(2.0), publisher, 7);
    let sent = net.relay_media.get(&(n[0], n[1])).copied().unwrap_or(0);
    assert!(sent > 20, "media crosses while fra-1 has a viewer: {sent}");

    net.leave(viewer);
    net.run_with_video(secs(0.5), publisher, 7);
    assert!(
        net.relay_control
            .iter()
            .any(|(from, to, m)| (*from, *to) == (n[1], n[0])
                && matches!(m, Control::Interest { room, on: false } if room == ROOM))
    );
    let after_leave = net.relay_media.get(&(n[0], n[1])).copied().unwrap_or(0);
    net.run_with_video(secs(2.0), publisher, 7);
    let later = net.relay_media.get(&(n[0], n[1])).copied().unwrap_or(0);
    assert_eq!(
        later, after_leave,
        "media kept crossing after interest went off"
    );
}

/// origin → hub → edge, as the operator plans a tree: the hub has nobody in the room and
/// passes the track on, once per link.
#[test]
fn a_hub_with_nobody_in_the_room_passes_a_track_on() {
    let mut net = Net::new();
    let (origin, hub, edge) = (
        net.node("seoul-1", "seoul"),
        net.node("fra-1", "frankfurt"),
        net.node("va-1", "virginia"),
    );
    net.link(origin, hub);
    net.link(edge, hub);
    net.assign(origin, ROOM, &[(hub, false)]);
    net.assign(hub, ROOM, &[(origin, true), (edge, false)]);
    net.assign(edge, ROOM, &[(hub, true)]);
    let publisher = net.join(origin, ROOM, "ana");
    net.publish_video(publisher, 1111);
    let viewer = net.join(edge, ROOM, "bo");
    net.run_with_video(secs(3.0), publisher, 7);
    assert_eq!(net.nodes[hub].engine.status().participants, 0);
    assert!(
        decoding(&net, viewer) > 20,
        "media reaches the edge through the hub"
    );
    assert!(net.relay_control.iter().any(|(from, to, m)| (*from, *to) == (hub, edge)
        && matches!(m, Control::TrackAnnounce { origin, hops: 1, .. } if origin == "seoul-1")));
    // Each stream crosses each link once: as many datagrams into the edge as out of the origin.
    let into_hub = net.relay_media.get(&(origin, hub)).copied().unwrap_or(0);
    let into_edge = net.relay_media.get(&(hub, edge)).copied().unwrap_or(0);
    assert!(
        into_edge <= into_hub,
        "{into_edge} out of the hub for {into_hub} in"
    );
    assert!(into_edge * 10 >= into_hub * 9, "{into_edge} of {into_hub}");
}

#[test]
fn packets_lost_on_a_link_are_repaired_by_nack() {
    let (mut net, n, publisher) = mesh(&["seoul-1", "fra-1"]);
    let viewer = net.join(n[1], ROOM, "bo");
    net.run_with_video(secs(1.0), publisher, 7);
    // Lose every 5th media datagram from seoul-1 to fra-1 for two seconds.
    let mut count = 0u32;
    net.impair(move |hop, d| {
        if hop == (Hop::Relay { from: 0, to: 1 }) && is_relay_media(d) {
            count += 1;
            return count.is_multiple_of(5);
        }
        false
    });
    net.run_with_video(secs(2.0), publisher, 7);
    net.clear_impairment();
    net.run_with_video(secs(1.0), publisher, 7);
    assert!(
        net.relay_feedback
            .iter()
            .any(|(from, to, m)| (*from, *to) == (n[1], n[0]) && matches!(m, Control::Nack { .. })),
        "fra-1 asks seoul-1 for what it lost"
    );
    let ssrc = net.clients[viewer].streams()[0];
    let mut seqs = net.clients[viewer].seqs(ssrc);
    seqs.sort_unstable();
    seqs.dedup();
    let (first, last) = (seqs[0], seqs[seqs.len() - 1]);
    let missing: Vec<u16> = (first..=last)
        .filter(|s| seqs.binary_search(s).is_err())
        .collect();
    assert!(
        missing.is_empty(),
        "still missing at the viewer: {missing:?}"
    );
}

#[test]
fn a_keyframe_request_travels_upstream_to_the_publisher() {
    let (mut net, n, publisher) = mesh(&["seoul-1", "fra-1"]);
    let viewer = net.join(n[1], ROOM, "bo");
    net.run_with_video(secs(2.0), publisher, 7);
    let before = net.clients[publisher].plis;
    let requests_before = net.relay_feedback.len();
    let ssrc = net.clients[viewer].streams()[0];
    // Well past the keyframe throttle since the join's own request.
    net.pli(viewer, ssrc);
    net.run_with_video(secs(0.5), publisher, 7);
    assert!(
        net.relay_feedback[requests_before..]
            .iter()
            .any(|(from, to, m)| (*from, *to) == (n[1], n[0])
                && matches!(m, Control::KeyframeRequest { .. })),
        "the request crossed the link: {:?}",
        &net.relay_feedback[requests_before..]
    );
    assert!(
        net.clients[publisher].plis > before,
        "the publisher was asked for a keyframe"
    );
}

#[test]
fn of_two_links_between_the_same_nodes_one_stays_the_same_on_both_sides() {
    let mut net = Net::new();
    let (a, b) = (net.node("a-1", "seoul"), net.node("b-1", "frankfurt"));
    // a dials b, then b dials a (both listed each other with --peer).
    net.link(a, b);
    net.link(b, a);
    net.run(secs(0.1));
    assert_eq!(net.links_between(a, b), 1, "one link is closed");
    assert_eq!(net.nodes[a].engine.relay_links(), 1);
    assert_eq!(net.nodes[b].engine.relay_links(), 1);
    // The one a-1 dialled stays (the smaller id): media still flows over it.
    let publisher = net.join(a, ROOM, "ana");
    net.publish_video(publisher, 1111);
    let viewer = net.join(b, ROOM, "bo");
    net.run_with_video(secs(2.0), publisher, 7);
    assert!(decoding(&net, viewer) > 20);
}

/// A plan with a cycle (a → b → c → a): each track reaches every node once, announcements
/// stop at the node they came from, and nothing circulates.
#[test]
fn a_plan_with_a_cycle_does_not_loop() {
    let mut net = Net::new();
    let (a, b, c) = (
        net.node("a-1", "seoul"),
        net.node("b-1", "frankfurt"),
        net.node("c-1", "virginia"),
    );
    net.link(a, b);
    net.link(b, c);
    net.link(c, a);
    net.assign(a, ROOM, &[(b, false), (c, true)]);
    net.assign(b, ROOM, &[(a, true), (c, false)]);
    net.assign(c, ROOM, &[(b, true), (a, false)]);
    let publisher = net.join(a, ROOM, "ana");
    net.publish_video(publisher, 1111);
    let vb = net.join(b, ROOM, "bo");
    let vc = net.join(c, ROOM, "cy");
    net.run_with_video(secs(3.0), publisher, 7);
    assert!(decoding(&net, vb) > 20 && decoding(&net, vc) > 20);
    // Every node holds the track once: a-1 its own (what came back round the cycle was
    // dropped), b-1 and c-1 one relayed copy each (not one per path).
    for node in [a, b, c] {
        assert_eq!(
            net.nodes[node].engine.status().published_tracks,
            1,
            "node {node}"
        );
    }
    for (_, _, m) in &net.relay_control {
        if let Control::TrackAnnounce { hops, .. } = m {
            assert!(*hops < 3, "an announcement went round: {m:?}");
        }
    }
    // Each viewer gets one copy of the stream, not one per path.
    for v in [vb, vc] {
        assert_eq!(
            net.clients[v].streams().len(),
            1,
            "{:?}",
            net.clients[v].streams()
        );
    }
    // Traffic stays bounded: no link carries more than the publisher sends.
    let sent: usize = net.relay_media.values().sum();
    let frames = net.clients[vb].received.len();
    assert!(
        sent <= frames * 3 + 50,
        "{sent} datagrams for {frames} frames"
    );
}

/// Announcements that have made the most hops allowed are dropped, whatever the plan says.
#[test]
fn announcements_stop_at_the_hop_limit() {
    use media_node::sfu::engine::cascade::MAX_HOPS;
    // A chain longer than the limit: n0 → n1 → … → n(MAX_HOPS + 1).
    let mut net = Net::new();
    let names: Vec<String> = (0..=usize::from(MAX_HOPS) + 1)
        .map(|i| format!("n{i}"))
        .collect();
    let n: Vec<NodeIx> = names.iter().map(|x| net.node(x, x)).collect();
    for w in n.windows(2) {
        net.link(w[0], w[1]);
    }
    for (i, &node) in n.iter().enumerate() {
        let mut peers = Vec::new();
        if i > 0 {
            peers.push((n[i - 1], true));
        }
        if i + 1 < n.len() {
            peers.push((n[i + 1], false));
        }
        net.assign(node, ROOM, &peers);
    }
    let publisher = net.join(n[0], ROOM, "ana");
    net.publish_video(publisher, 1111);
    let near = net.join(n[usize::from(MAX_HOPS)], ROOM, "near");
    let far = net.join(n[usize::from(MAX_HOPS) + 1], ROOM, "far");
    net.run_with_video(secs(3.0), publisher, 7);
    assert!(
        decoding(&net, near) > 20,
        "within the limit the track arrives"
    );
    assert_eq!(decoding(&net, far), 0, "past the limit it does not");
    assert!(
        !net.relay_control
            .iter()
            .any(|(_, _, m)| matches!(m, Control::TrackAnnounce { hops, .. } if *hops > MAX_HOPS)),
    );
}

/// Found by the hop-limit test: a hub opened a room only when two of its links wanted it, so
/// two hubs with nobody in the room next to each other (a region's hub and the central one,
/// when everyone is on other nodes) waited for each other and no media crossed. Interest now
/// travels up the tree through any number of empty hubs.
#[test]
fn a_chain_of_hubs_with_nobody_in_the_room_carries_media() {
    let mut net = Net::new();
    let n: Vec<NodeIx> = ["fra-2", "fra-1", "seoul-1", "va-1"]
        .iter()
        .map(|x| net.node(x, x))
        .collect();
    for w in n.windows(2) {
        net.link(w[0], w[1]);
    }
    net.assign(n[0], ROOM, &[(n[1], true)]);
    net.assign(n[1], ROOM, &[(n[0], false), (n[2], true)]);
    net.assign(n[2], ROOM, &[(n[1], false), (n[3], false)]);
    net.assign(n[3], ROOM, &[(n[2], true)]);
    let publisher = net.join(n[0], ROOM, "ana");
    net.publish_video(publisher, 1111);
    let viewer = net.join(n[3], ROOM, "bo");
    net.run_with_video(secs(3.0), publisher, 7);
    assert_eq!(net.nodes[n[1]].engine.status().participants, 0);
    assert_eq!(net.nodes[n[2]].engine.status().participants, 0);
    assert!(decoding(&net, viewer) > 20, "media crosses two empty hubs");
    // When the viewer leaves, interest falls back down the chain and the media stops.
    net.leave(viewer);
    net.run_with_video(secs(1.0), publisher, 7);
    let before = net.relay_media.get(&(n[0], n[1])).copied().unwrap_or(0);
    net.run_with_video(secs(2.0), publisher, 7);
    assert_eq!(
        net.relay_media.get(&(n[0], n[1])).copied().unwrap_or(0),
        before
    );
}

/// The hub of a tree dies (both its links go down) and the operator plans a link between the
/// two edges: media flows again, both ways.
#[test]
fn when_the_hub_dies_the_edges_relink_and_hear_each_other() {
    let mut net = Net::new();
    let (seoul, hub, va) = (
        net.node("seoul-1", "seoul"),
        net.node("fra-1", "frankfurt"),
        net.node("va-1", "virginia"),
    );
    net.link(seoul, hub);
    net.link(va, hub);
    net.assign(seoul, ROOM, &[(hub, true)]);
    net.assign(hub, ROOM, &[(seoul, false), (va, false)]);
    net.assign(va, ROOM, &[(hub, true)]);
    let ana = net.join(seoul, ROOM, "ana");
    net.publish_video(ana, 1111);
    let cy = net.join(va, ROOM, "cy");
    net.publish_video(cy, 2222);
    for i in 0..30 {
        net.send_video(ana, i % 10 == 0);
        net.send_video(cy, i % 10 == 0);
        net.run(secs(0.1));
    }
    assert!(
        decoding(&net, cy) > 10 && decoding(&net, ana) > 10,
        "{} {}",
        decoding(&net, cy),
        decoding(&net, ana)
    );

    // The hub dies. Its links stay up at both edges (QUIC notices only after its idle
    // timeout) but carry nothing; the operator's new plan is seoul-1 ← va-1.
    net.impair(move |hop, _| matches!(hop, Hop::Relay { from, to } if from == hub || to == hub));
    net.run(secs(0.5));
    net.assign(seoul, ROOM, &[(va, false)]);
    net.assign(va, ROOM, &[(seoul, true)]);
    net.link(va, seoul);
    let (before_ana, before_cy) = (decoding(&net, ana), decoding(&net, cy));
    for i in 0..30 {
        net.send_video(ana, i % 10 == 0);
        net.send_video(cy, i % 10 == 0);
        net.run(secs(0.1));
    }
    assert!(
        decoding(&net, cy) > before_cy + 10,
        "seoul's video reaches virginia again: {} then {}",
        before_cy,
        decoding(&net, cy)
    );
    assert!(
        decoding(&net, ana) > before_ana + 10,
        "virginia's video reaches seoul again: {} then {}",
        before_ana,
        decoding(&net, ana)
    );
    // Later QUIC gives up on the dead hub's links: nothing changes for the edges.
    net.unlink(seoul, hub);
    net.unlink(va, hub);
    let (before_ana, before_cy) = (decoding(&net, ana), decoding(&net, cy));
    for i in 0..20 {
        net.send_video(ana, i % 10 == 0);
        net.send_video(cy, i % 10 == 0);
        net.run(secs(0.1));
    }
    assert!(decoding(&net, cy) > before_cy + 10 && decoding(&net, ana) > before_ana + 10);
}

/// Issue 21: a link may ask for resends and keyframes only of what it subscribed to. Seoul
/// relays the publisher's video to Frankfurt, which watches it; Virginia, linked to Seoul but
/// with nobody in the room, sends a keyframe request and NACKs for the same track handle:
/// the publisher is not asked for a keyframe and nothing is resent. Frankfurt's own NACK is
/// answered.
#[test]
fn a_link_cannot_ask_for_resends_or_keyframes_of_what_it_did_not_subscribe_to() {
    let mut net = Net::new();
    let seoul = net.node("seoul-1", "seoul");
    let fra = net.node("fra-1", "frankfurt");
    let va = net.node("va-1", "virginia");
    let (to_fra, _) = net.link(seoul, fra);
    let (to_va, _) = net.link(seoul, va);
    let publisher = net.join(seoul, ROOM, "ana");
    net.publish_video(publisher, 1111);
    let _viewer = net.join(fra, ROOM, "bo");
    net.run_with_video(secs(3.0), publisher, 7);
    let track = net
        .relay_control
        .iter()
        .find_map(|(from, to, m)| match m {
            Control::TrackAnnounce { track, .. } if (*from, *to) == (seoul, fra) => Some(*track),
            _ => None,
        })
        .expect("seoul announced the track to frankfurt");
    let plis = net.clients[publisher].plis;
    let resent = net.nodes[seoul].engine.metrics().relay_retransmits.get();
    let now = net.now + secs(2.0);
    net.run(secs(2.0));
    let engine = &mut net.nodes[seoul].engine;
    for layer in 0..3 {
        engine.relay_control(to_va, Control::KeyframeRequest { track, layer }, now);
        let seqs = (0..64).collect();
        engine.relay_control(to_va, Control::Nack { track, layer, seqs }, now);
    }
    assert_eq!(engine.metrics().relay_retransmits.get(), resent);
    net.run(secs(0.1));
    assert_eq!(
        net.clients[publisher].plis, plis,
        "a keyframe was asked for"
    );
    // The subscribed link's NACK is answered (from the relayed history, or with a keyframe).
    let engine = &mut net.nodes[seoul].engine;
    let seqs = (0..64).collect();
    engine.relay_control(
        to_fra,
        Control::Nack {
            track,
            layer: 0,
            seqs,
        },
        net.now,
    );
    net.run(secs(0.1));
    let engine = &net.nodes[seoul].engine;
    assert!(
        engine.metrics().relay_retransmits.get() > resent || net.clients[publisher].plis > plis,
        "frankfurt's NACK went unanswered"
    );
}

/// Issue 21: when a relay link goes down, each local participant is told what went in one
/// message per kind, not one per far participant and track (a webinar's far side of
/// thousands would overflow every local outbox, and a full outbox drops its participant).
#[test]
fn a_link_going_down_tells_each_participant_once_per_kind() {
    let (mut net, n, publisher) = mesh(&["seoul-1", "fra-1"]);
    let mut far = vec![publisher];
    for i in 0..20 {
        far.push(net.join(n[0], ROOM, &format!("p{i}")));
    }
    let viewer = net.join(n[1], ROOM, "bo");
    net.run_with_video(secs(3.0), publisher, 7);
    let before = net.clients[viewer].signals.len();
    net.unlink(n[0], n[1]);
    net.run(secs(0.5));
    let after = &net.clients[viewer].signals[before..];
    let count = |f: fn(&ServerMessage) -> bool| after.iter().filter(|m| f(m)).count();
    assert_eq!(
        count(|m| matches!(m, ServerMessage::ParticipantLeft { .. })),
        0,
        "{after:?}"
    );
    let left: Vec<&Vec<String>> = after
        .iter()
        .filter_map(|m| match m {
            ServerMessage::ParticipantsLeft { participant_ids } => Some(participant_ids),
            _ => None,
        })
        .collect();
    assert_eq!(left.len(), 1, "{after:?}");
    assert_eq!(left[0].len(), far.len());
    // The one relayed track: one message (a single track is told as `track_unpublished`).
    assert_eq!(
        count(|m| matches!(
            m,
            ServerMessage::TrackUnpublished { .. } | ServerMessage::TracksUnpublished { .. }
        )),
        1,
        "{after:?}"
    );
}

/// A link whose path carries less than what crosses it holds back what does not fit (here the
/// only track, one video) and counts it in `moim_relay_layers_held`; when the estimate allows
/// it again, the video crosses again.
#[test]
fn a_link_holds_back_what_its_estimate_cannot_carry() {
    let mut net = Net::new();
    let (seoul, fra) = (net.node("seoul-1", "seoul"), net.node("fra-1", "frankfurt"));
    let (link, _) = net.link(seoul, fra);
    let publisher = net.join(seoul, ROOM, "ana");
    net.publish_video(publisher, 1111);
    let viewer = net.join(fra, ROOM, "bo");
    net.run_with_video(secs(3.0), publisher, 7);
    let crossed = |net: &Net| net.relay_media.get(&(seoul, fra)).copied().unwrap_or(0);
    assert!(crossed(&net) > 20, "the video crosses");
    let held = |net: &Net| layers_held(net, seoul);
    assert_eq!(held(&net), 0);

    // 500 bit/s: less than the harness's video (about 2 kbit/s).
    net.nodes[seoul]
        .engine
        .relay_estimate(link, Some(500.0), net.now);
    assert_eq!(held(&net), 1);
    let at_hold = crossed(&net);
    net.run_with_video(secs(2.0), publisher, 7);
    assert_eq!(crossed(&net), at_hold, "nothing crosses while it is held");

    // Room enough again.
    net.nodes[seoul]
        .engine
        .relay_estimate(link, Some(50_000_000.0), net.now);
    assert_eq!(held(&net), 0);
    let decoded = decoding(&net, viewer);
    net.run_with_video(secs(2.0), publisher, 7);
    assert!(crossed(&net) > at_hold + 20, "the video crosses again");
    assert!(
        decoding(&net, viewer) > decoded + 20,
        "and reaches the viewer"
    );
}

/// Layers `node` holds back on its link to `fra-1` (its `moim_relay_layers_held`).
fn layers_held(net: &Net, node: NodeIx) -> i64 {
    net.nodes[node]
        .engine
        .metrics()
        .relay
        .layers_held
        .with_label_values(&["fra-1"])
        .get()
}

/// A video published in Seoul and watched in Frankfurt over one link, 3 s in; the test steps
/// it with [`ProbedLink::sample`].
struct ProbedLink {
    net: Net,
    seoul: NodeIx,
    link: u64,
    publisher: ClientIx,
}

impl ProbedLink {
    fn new() -> Self {
        let mut net = Net::new();
        let (seoul, fra) = (net.node("seoul-1", "seoul"), net.node("fra-1", "frankfurt"));
        let (link, _) = net.link(seoul, fra);
        let publisher = net.join(seoul, ROOM, "ana");
        net.publish_video(publisher, 1111);
        net.join(fra, ROOM, "bo");
        net.run_with_video(secs(3.0), publisher, 7);
        Self {
            net,
            seoul,
            link,
            publisher,
        }
    }

    /// Runs `secs_for` with the link's estimate at `bps`, sampled four times a second as the
    /// link task does.
    fn sample(&mut self, bps: Option<f64>, secs_for: f64) {
        for _ in 0..(secs_for * 4.0) as usize {
            let now = self.net.now;
            self.net.nodes[self.seoul]
                .engine
                .relay_estimate(self.link, bps, now);
            self.net.run_with_video(secs(0.25), self.publisher, 7);
        }
    }

    /// The rates the probes so far asked for.
    fn asked(&self) -> Vec<f64> {
        self.net
            .relay_probes
            .iter()
            .map(|(_, bps, _)| *bps)
            .collect()
    }
}

/// While a layer is held the node probes the link's path for the rate that would let it
/// through: at once, then less often while the estimate does not rise; never while nothing is
/// held, and no more once the estimate has room.
#[test]
fn a_held_layer_has_the_path_probed_less_often_while_probes_fail() {
    let mut p = ProbedLink::new();
    p.sample(None, 3.0);
    assert!(p.asked().is_empty(), "no limit seen: no probe");

    // 500 bit/s: the video (about 2 kbit/s) is held; probes at 0, 2.25, 5.5 and 8.75 s (each
    // 1.1 s long, then 1 s of waiting, then 2 s after each that failed).
    p.sample(Some(500.0), 10.0);
    let asked = p.asked();
    assert_eq!(asked.len(), 4, "{asked:?}");
    assert!(p.net.relay_probes.iter().all(|(n, ..)| *n == p.seoul));
    // What would carry the video: more than the estimate, and with some to spare.
    assert!(asked.iter().all(|bps| *bps > 500.0 / 0.9), "{asked:?}");

    // The path was found to carry more: the video crosses and probing stops.
    p.sample(Some(50_000_000.0), 5.0);
    assert_eq!(p.asked().len(), 4, "{:?}", p.asked());
}

/// A probe that failed bounds the next ones: the next asks for halfway between the estimate
/// and the rate that failed (at least a tenth above the estimate); once one is carried the
/// next follows soon and asks for the rate that failed, and once that is carried the path has
/// widened and the probes ask for the whole step again. A probe that stopped at a queue failed
/// whatever the estimate does. So a path whose estimate sits just under its limit is not asked
/// again and again for far more than it carries, and one that widened is found within three
/// probes.
#[test]
fn after_a_failed_probe_the_next_ones_climb_back_to_it() {
    let mut p = ProbedLink::new();
    // 500 bit/s: the video is held; the first probe asks for what would carry it.
    p.sample(Some(500.0), 2.0);
    let first = p.asked();
    assert_eq!(first.len(), 1, "{first:?}");
    let failed = first[0];
    assert!(failed > 1_000.0, "{first:?}");
    // It failed (the estimate stayed): the next asks halfway.
    p.sample(Some(500.0), 1.0);
    let second = p.asked();
    assert_eq!(second.len(), 2, "{second:?}");
    let half = second[1];
    assert!(
        half >= 550.0 && half <= (500.0 + failed) / 2.0 + 1.0,
        "{second:?}"
    );
    // It was carried (the estimate is what it asked for): the next follows within its length
    // (1.1 s) and a short wait, and asks for the rate that failed.
    p.sample(Some(half), 1.75);
    let third = p.asked();
    assert_eq!(third.len(), 3, "{third:?}");
    assert!((third[2] - failed).abs() < 1.0, "{third:?}");
    // That one stops at a queue: it failed, though the estimate moved to where it would count
    // as carried; the next waits the doubled backoff and asks at most a tenth above the
    // estimate, not the whole step. That is within a tenth of the rate that failed (the path is
    // near full): it is careful (stops at the first window of a queue), as the third (which
    // asked for the rate that failed) was, and the first two were not.
    let estimate = failed * 0.95;
    p.net.nodes[p.seoul].engine.relay_probe_queued(p.link);
    p.sample(Some(estimate), 3.5);
    let fourth = p.asked();
    assert_eq!(fourth.len(), 4, "{fourth:?}");
    assert!(fourth[3] <= estimate * 1.1 + 1.0, "{fourth:?}");
    let careful: Vec<bool> = p.net.relay_probes.iter().map(|(.., c)| *c).collect();
    assert_eq!(careful, [false, false, true, true]);
    // That one was carried, at the rate that failed or above: the path widened, and the next
    // asks for the whole step again.
    p.sample(Some(fourth[3]), 1.75);
    let fifth = p.asked();
    assert_eq!(fifth.len(), 5, "{fifth:?}");
    assert!(fifth[4] > failed * 1.05, "{fifth:?}");
}

/// A held layer comes back only with a tenth to spare, and an open one stays while it fits:
/// an estimate moving by a few percent around a layer's cost does not open and hold it again
/// and again (each opening a keyframe's burst at the bottleneck, each closing a switch down).
/// A probe asks for enough to open it.
#[test]
fn a_held_layer_reopens_only_with_room_to_spare() {
    let mut p = ProbedLink::new();
    let held = |p: &ProbedLink| layers_held(&p.net, p.seoul);
    // The video's rate settles first.
    p.sample(None, 10.0);
    p.sample(Some(500.0), 0.5);
    assert_eq!(held(&p), 1);
    // What the probe asks for: a tenth over the estimate that reopens the layer, itself a tenth
    // over what the layer needs.
    let needs = p.asked()[0] / 1.1 / 1.1;
    p.sample(Some(needs * 1.03), 1.0);
    assert_eq!(held(&p), 1, "3% over what it needs: still held");
    p.sample(Some(needs * 1.13), 1.0);
    assert_eq!(held(&p), 0, "a tenth to spare: open");
    p.sample(Some(needs * 1.03), 1.0);
    assert_eq!(held(&p), 0, "open, and it still fits: it stays");
    p.sample(Some(needs * 0.9), 1.0);
    assert_eq!(held(&p), 1, "it no longer fits");
}

/// No probe starts within a second of a layer opening: the far side steps up to it with a
/// keyframe's burst, and padding on top of that overfills a path near full. Here the held video
/// opens (the estimate rises) and is held again a quarter of a second later: the probe that
/// would have followed at once waits out the second.
#[test]
fn no_probe_starts_just_after_a_layer_opens() {
    let mut p = ProbedLink::new();
    p.sample(Some(500.0), 2.0);
    assert_eq!(p.asked().len(), 1, "{:?}", p.asked());
    p.sample(Some(50_000_000.0), 0.25);
    p.sample(Some(500.0), 0.5);
    assert_eq!(
        p.asked().len(),
        1,
        "held again half a second later: {:?}",
        p.asked()
    );
    p.sample(Some(500.0), 0.5);
    assert_eq!(
        p.asked().len(),
        2,
        "a second after it opened: {:?}",
        p.asked()
    );
}

/// A publisher mutes its camera: a viewer on the far node hears `track_muted`, a viewer who
/// joins the far node afterwards sees the track muted in `joined`, and unmuting is heard too.
#[test]
fn muting_crosses_the_relay_link() {
    let (mut net, n, publisher) = mesh(&["seoul-1", "fra-1"]);
    let viewer = net.join(n[1], ROOM, "bo");
    net.run_with_video(secs(2.0), publisher, 7);
    let session = net.clients[publisher].session;
    net.nodes[n[0]]
        .engine
        .ws_mute(session, "cam1111", true)
        .expect("mute");
    net.run_with_video(secs(0.2), publisher, 7);
    let muted = |c: &media_node::sfu::testing::Client, on: bool| {
        got(c, |m| {
            matches!(m, ServerMessage::TrackMuted { participant_id, muted, .. }
                if *muted == on && !participant_id.is_empty())
        })
    };
    assert!(
        muted(&net.clients[viewer], true),
        "{:?}",
        net.clients[viewer].signals
    );
    assert!(
        net.relay_control
            .iter()
            .any(|(from, to, m)| (*from, *to) == (n[0], n[1])
                && matches!(m, Control::TrackMuted { muted: true, .. }))
    );
    let late = net.join(n[1], ROOM, "chae");
    net.run_with_video(secs(0.2), publisher, 7);
    assert!(
        got(
            &net.clients[late],
            |m| matches!(m, ServerMessage::Joined { tracks, .. }
            if tracks.iter().any(|t| t.muted))
        ),
        "a later joiner sees the track muted: {:?}",
        net.clients[late].signals
    );
    net.nodes[n[0]]
        .engine
        .ws_mute(session, "cam1111", false)
        .expect("unmute");
    net.run_with_video(secs(0.2), publisher, 7);
    assert!(muted(&net.clients[viewer], false));
    // A track that is not the participant's is refused.
    assert!(
        net.nodes[n[0]]
            .engine
            .ws_mute(session, "nope", true)
            .is_err()
    );
}

/// Dynacast across the cascade: the publisher's node counts a relay link's subscriptions as
/// demand. When the only viewer, on the far node, pauses the video, the far node unsubscribes
/// it and the publisher is told to stop (after the 2 s hold); when the viewer shows it again
/// the far node subscribes, the publisher is told to send at once, and video reaches the
/// viewer again.
#[test]
fn a_video_nobody_watches_on_any_node_stops_at_its_publisher() {
    let (mut net, n, publisher) = mesh(&["seoul-1", "fra-1"]);
    let viewer = net.join(n[1], ROOM, "bo");
    net.run_with_video(secs(2.0), publisher, 7);
    let track_id = net.clients[viewer]
        .signals
        .iter()
        .find_map(|m| match m {
            ServerMessage::TrackPublished { track } if track.kind == "video" => {
                Some(track.track_id.clone())
            }
            ServerMessage::Joined { tracks, .. } => tracks
                .iter()
                .find(|t| t.kind == "video")
                .map(|t| t.track_id.clone()),
            _ => None,
        })
        .expect("the viewer hears of the video");
    let told = |net: &Net| -> Vec<Option<u8>> {
        net.clients[publisher]
            .signals
            .iter()
            .filter_map(|m| match m {
                ServerMessage::PublishLayers { max_layer, .. } => Some(*max_layer),
                _ => None,
            })
            .collect()
    };
    assert!(decoding(&net, viewer) > 0, "video crosses the link");
    assert_eq!(
        told(&net),
        Vec::<Option<u8>>::new(),
        "watched: sent in full"
    );

    let session = net.clients[viewer].session;
    net.nodes[n[1]]
        .engine
        .ws_layer_preference(session, &track_id, 0, 0)
        .expect("pause");
    net.run_with_video(secs(4.0), publisher, 7);
    assert!(
        net.relay_control
            .iter()
            .any(|(from, to, m)| (*from, *to) == (n[1], n[0])
                && matches!(m, Control::Unsubscribe { .. })),
        "the far node unsubscribes"
    );
    assert_eq!(told(&net), vec![None], "nobody anywhere watches it");

    let before = decoding(&net, viewer);
    net.nodes[n[1]]
        .engine
        .ws_layer_preference(session, &track_id, 640, 360)
        .expect("show");
    net.run_with_video(secs(2.0), publisher, 7);
    assert_eq!(told(&net), vec![None, Some(0)], "asked for again");
    assert!(decoding(&net, viewer) > before, "video flows again");
}
