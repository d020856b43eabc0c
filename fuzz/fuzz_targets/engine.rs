//! The engine, stateful, in fake time: a room with a connected WebSocket participant, then a
//! sequence of what any client can send it: publish offers (SDP), subscribe answers, layer
//! preferences, last-N choices, chat, and UDP datagrams from its own addresses or others (STUN, RTP, RTCP,
//! DTLS or garbage). Nothing may panic, and the room must still work afterwards.
#![no_main]

use libfuzzer_sys::fuzz_target;
use media_node::sfu::testing::Net;
use std::net::SocketAddr;

fuzz_target!(|data: &[u8]| {
    let mut net = Net::new();
    let node = net.node("n", "fuzz");
    let c = net.join(node, "r", "a");
    net.run(std::time::Duration::from_millis(200));
    let session = net.clients[c].session;
    let own = net.clients[c].sub_addr;
    let stranger: SocketAddr = "10.9.8.7:4000".parse().expect("addr");
    let mut rest = data;
    while rest.len() >= 3 {
        let op = rest[0];
        let n = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let chunk = &rest[3..3 + n];
        rest = &rest[3 + n..];
        let text = String::from_utf8_lossy(chunk).into_owned();
        let now = net.now;
        let engine = &mut net.nodes[node].engine;
        match op % 8 {
            0 => {
                let _ = engine.ws_publish(session, text, Vec::new(), now);
            }
            1 => {
                let _ = engine.ws_subscribe_answer(session, text, now);
            }
            2 => {
                let _ = engine.ws_layer_preference(session, &text, 640, 360);
            }
            3 => {
                let _ = engine.chat(session, &text, now);
            }
            4 => engine.handle_datagram(now, own, chunk),
            5 => {
                let n = chunk.first().map(|&b| u32::from(b));
                let _ = engine.ws_last_n(session, n, vec![text]);
            }
            6 => {
                let _ =
                    engine.ws_raise_hand(session, chunk.first().is_some_and(|b| b & 1 == 1), now);
            }
            _ => engine.handle_datagram(now, stranger, chunk),
        }
        net.step();
    }
    net.run(std::time::Duration::from_millis(100));
    assert!(net.nodes[node].engine.status().participants >= 1);
});
