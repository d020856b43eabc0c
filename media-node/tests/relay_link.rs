//! Relay links over real QUIC on loopback: hello, control frames and datagrams both ways;
//! mutual TLS that refuses a peer whose certificate the CA did not sign; and a peer that sends
//! nonsense is cut off with a reason while the endpoint keeps serving others.

use bytes::{Bytes, BytesMut};
use media_node::relay::link::RelayEndpoint;
use media_node::relay::proto::{Control, MediaDatagram};
use media_node::relay::testing::{self, trust, write_pki};
use media_node::relay::tls::{RelayTls, RelayTrust};
use std::net::SocketAddr;
use std::path::Path;

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().expect("addr")
}

fn endpoint(trust: &RelayTrust, id: &str, region: &str) -> RelayEndpoint {
    RelayEndpoint::bind(loopback(), RelayTls::new(trust).expect("tls"), id, region).expect("bind")
}

#[tokio::test]
async fn dev_links_carry_hello_control_and_media_both_ways() {
    let seoul = endpoint(&RelayTrust::Dev, "seoul-1", "seoul");
    let fra = endpoint(&RelayTrust::Dev, "fra-1", "frankfurt");
    let addr = seoul.local_addr().expect("addr");
    let (accepted, dialled) = tokio::join!(seoul.accept(), fra.dial(addr));
    let mut at_seoul = accepted.expect("an incoming link").expect("handshake");
    let mut at_fra = dialled.expect("dial");
    assert_eq!(
        at_seoul.peer.as_ref().map(|p| p.node_id.as_str()),
        Some("fra-1")
    );
    assert_eq!(
        at_fra.peer.as_ref().map(|p| p.region.as_str()),
        Some("seoul")
    );

    let interest = Control::Interest {
        room: "team.standup".into(),
        on: true,
    };
    at_fra.send(&interest).await.expect("send");
    assert_eq!(at_seoul.recv().await.expect("recv"), interest);
    let keyframe = Control::KeyframeRequest { track: 7, layer: 2 };
    at_seoul.send(&keyframe).await.expect("send");
    assert_eq!(at_fra.recv().await.expect("recv"), keyframe);
    let d = MediaDatagram {
        track: 7,
        layer: 2,
        rtp: Bytes::from(vec![0x80u8; 1200]),
    };
    assert!(at_seoul.send_media(&d));
    assert_eq!(
        at_fra
            .recv_media(&mut Default::default())
            .await
            .expect("datagram"),
        d
    );
    assert!(at_fra.rtt() < std::time::Duration::from_millis(100));

    // A message whose frame would be over the protocol's limit is not sent (the far side would
    // close the link on it), and the link carries on.
    // (Strings are cut at 4 KiB and lists at 64 entries, but a track's 20 header extensions
    // of 4 KiB URIs still make an 80 KiB frame.)
    let huge = Control::TrackAnnounce {
        room: "r".into(),
        track: 1,
        participant: media_node::relay::proto::Participant {
            id: "p".into(),
            identity: "p".into(),
            name: "p".into(),
        },
        origin: "o".into(),
        hops: 0,
        kind: media_node::relay::proto::MediaKind::Video,
        source: "camera".into(),
        codec: "video/VP8".into(),
        clock_rate: 90_000,
        channels: 0,
        fmtp: String::new(),
        extensions: (1..=20).map(|i| (i, "u".repeat(4000))).collect(),
        layers: Vec::new(),
    };
    let e = at_fra.send(&huge).await.expect_err("too large");
    assert!(e.to_string().contains("over the 65536-byte limit"), "{e}");
    at_fra.send(&interest).await.expect("send after");
    assert_eq!(at_seoul.recv().await.expect("recv after"), interest);
}

fn pki(dir: &Path, ca_name: &str, nodes: &[&str]) {
    write_pki(dir, ca_name, nodes).expect("pki");
}

#[tokio::test]
async fn mutual_tls_admits_nodes_of_the_ca_and_refuses_others() {
    let dir = std::env::temp_dir().join(format!("moim-relay-pki-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    pki(&dir, "fleet-ca", &["a", "b"]);
    pki(&dir, "rogue-ca", &["mallory"]);
    let a = endpoint(&trust(&dir, "fleet-ca", "a"), "a", "seoul");
    let addr = a.local_addr().expect("addr");

    let b = endpoint(&trust(&dir, "fleet-ca", "b"), "b", "frankfurt");
    let (accepted, dialled) = tokio::join!(a.accept(), b.dial(addr));
    accepted
        .expect("incoming")
        .expect("a fleet node is admitted");
    dialled.expect("a fleet node dials");

    // Mallory trusts the fleet's CA but presents a certificate from another CA: refused.
    let mallory = endpoint(&trust(&dir, "fleet-ca", "mallory"), "mallory", "x");
    let (accepted, dialled) = tokio::join!(a.accept(), mallory.dial(addr));
    let refused = accepted
        .expect("incoming")
        .err()
        .expect("a rogue client certificate is refused");
    assert!(!refused.to_string().is_empty());
    assert!(dialled.is_err());
    // A node that trusts only the rogue CA refuses the fleet's server certificate.
    let outsider = endpoint(&trust(&dir, "rogue-ca", "mallory"), "outsider", "x");
    let (_, dialled) = tokio::join!(a.accept(), outsider.dial(addr));
    let e = dialled
        .err()
        .expect("the fleet's certificate is not trusted by the rogue CA");
    assert!(e.to_string().contains("certificate"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

async fn raw_peer(addr: SocketAddr, frames: Vec<Vec<u8>>) -> String {
    testing::raw_peer(addr, &RelayTrust::Dev, frames)
        .await
        .expect("the connection opens")
}

#[tokio::test]
async fn a_peer_that_sends_nonsense_is_cut_off_with_a_reason_and_others_still_link() {
    let node = endpoint(&RelayTrust::Dev, "seoul-1", "seoul");
    let addr = node.local_addr().expect("addr");

    // Nonsense instead of a hello.
    let garbage = vec![0u8, 0, 0, 5, 200, 1, 2, 3, 4];
    let (accepted, reason) = tokio::join!(node.accept(), raw_peer(addr, vec![garbage.clone()]));
    let err = accepted.expect("incoming").err().expect("refused");
    assert!(
        err.to_string().contains("unknown relay message type 200"),
        "{err}"
    );
    assert!(
        reason.contains("unknown relay message type 200"),
        "told why: {reason}"
    );

    // A good hello, then a frame claiming 1 GiB.
    let mut hello = BytesMut::new();
    Control::Hello {
        version: 1,
        node_id: "x".into(),
        region: "y".into(),
    }
    .encode(&mut hello);
    let huge = vec![0x40u8, 0, 0, 0, 1];
    let (accepted, reason) = tokio::join!(
        async {
            let mut link = node
                .accept()
                .await
                .expect("incoming")
                .expect("hello accepted");
            link.recv()
                .await
                .expect_err("an oversized frame closes the link")
        },
        raw_peer(addr, vec![hello.to_vec(), huge])
    );
    assert!(
        accepted.to_string().contains("over the limit"),
        "{accepted}"
    );
    assert!(reason.contains("over the limit"), "told why: {reason}");

    // The endpoint still links with a well-behaved node.
    let good = endpoint(&RelayTrust::Dev, "fra-1", "frankfurt");
    let (accepted, dialled) = tokio::join!(node.accept(), good.dial(addr));
    accepted
        .expect("incoming")
        .expect("a good peer still links");
    dialled.expect("dial");
}

/// A link whose path carries only 1,200-byte packets (where quinn's black-hole detection
/// leaves a path after a burst of lost large packets): full-size video datagrams no longer fit
/// one QUIC datagram, and still arrive whole, in fragments.
#[tokio::test]
async fn full_size_media_crosses_a_link_whose_mtu_fell_to_the_minimum() {
    let tls = || RelayTls::with_path_mtu(&RelayTrust::Dev, 1200).expect("tls");
    let seoul = RelayEndpoint::bind(loopback(), tls(), "seoul-1", "seoul").expect("bind");
    let fra = RelayEndpoint::bind(loopback(), tls(), "fra-1", "frankfurt").expect("bind");
    let addr = seoul.local_addr().expect("addr");
    let (accepted, dialled) = tokio::join!(seoul.accept(), fra.dial(addr));
    let at_seoul = accepted.expect("an incoming link").expect("handshake");
    let at_fra = dialled.expect("dial");
    let max = at_fra.connection().max_datagram_size().expect("datagrams");
    // 1,200 bytes of RTP plus the datagram header: over what the path carries.
    let d = MediaDatagram {
        track: 7,
        layer: 2,
        rtp: Bytes::from((0..1200).map(|i| i as u8).collect::<Vec<u8>>()),
    };
    assert!(d.encode().len() > max, "{} fits in {max}", d.encode().len());
    assert!(
        at_fra.connection().send_datagram(d.encode()).is_err(),
        "QUIC refuses it whole"
    );
    let mut reassembly = Default::default();
    for i in 0..50u8 {
        let mut rtp = d.rtp.to_vec();
        rtp[0] = i;
        let d = MediaDatagram {
            rtp: Bytes::from(rtp),
            ..d.clone()
        };
        assert!(at_fra.send_media(&d), "datagram {i} refused");
        let got = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            at_seoul.recv_media(&mut reassembly),
        )
        .await
        .expect("in time")
        .expect("datagram");
        assert_eq!(got, d);
    }
}
