//! Relay datagrams: media, loss-repair feedback and fragments, through the decoder and the
//! reassembler (which must stay bounded whatever arrives).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media_node::relay::fragment::{Reassembler, is_fragment};
use media_node::relay::proto::Datagram;

fuzz_target!(|data: &[u8]| {
    let mut reassembly = Reassembler::default();
    // The input as a sequence of datagrams: a length byte, then that many bytes.
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let n = usize::from(len).min(tail.len());
        let (d, tail) = tail.split_at(n);
        rest = tail;
        let whole = if is_fragment(d) {
            match reassembly.push(d) {
                Some(w) => w,
                None => continue,
            }
        } else {
            Bytes::copy_from_slice(d)
        };
        let _ = Datagram::decode(whole);
    }
});
