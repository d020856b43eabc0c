//! What a browser sends on `/ws` and over the chat data channel: JSON into the signalling
//! and chat types (serde must refuse, never panic), and back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moim_wire::signal::ClientMessage;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = serde_json::from_str::<ClientMessage>(text) {
        let again = serde_json::to_string(&msg).expect("serializes");
        let _: ClientMessage = serde_json::from_str(&again).expect("round-trips");
    }
    let _ = serde_json::from_str::<serde_json::Value>(text);
});
