//! The VP8 payload descriptor parser and the munger that rewrites picture ids across layer
//! switches, on payloads as publishers send them (any bytes).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use media_node::sfu::vp8::{Vp8Munger, parse};

fuzz_target!(|data: &[u8]| {
    let _ = parse(data);
    let mut m = Vp8Munger::default();
    // Two "layers": the first half begins, every later packet is rewritten.
    let (a, b) = data.split_at(data.len() / 2);
    m.begin(a);
    for chunk in b.chunks(64) {
        let _ = m.rewrite(&Bytes::copy_from_slice(chunk));
        m.begin(chunk);
    }
});
