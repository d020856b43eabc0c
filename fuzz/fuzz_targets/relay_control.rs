//! The relay control stream, as a far node (or anyone who got past TLS) writes it: frames are
//! taken off the front until one is incomplete or refused; each decoded message encodes back
//! to the bytes it came from.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use media_node::relay::proto::Control;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = Control::decode(&mut buf) {
        let mut again = BytesMut::new();
        msg.encode(&mut again);
        let back = Control::decode(&mut again).expect("re-encoded frame decodes");
        assert_eq!(back, Some(msg));
    }
});
