//! VP8 picture ID and TL0PICIDX rewriting (RFC 7741 §4.2), so a subscriber sees one numbering
//! across simulcast layer switches.
//!
//! Each simulcast layer comes from its own encoder with its own picture ID and TL0PICIDX
//! counters, so at a switch both numbers jump, as often backwards as forwards. libwebrtc's VP8
//! reference finder keeps per-TL0PICIDX state for a while: after a backward jump it finds the
//! old layer's entries under the new layer's TL0PICIDX values and drops the new layer's delta
//! frames as already superseded. The keyframe at the switch decodes, then the picture freezes
//! until the receiver asks for another keyframe (3 s) — with no packet lost, so no NACK shows
//! it. Rewriting both numbers to continue from the last ones sent, as Janus's and mediasoup's
//! VP8 simulcast handling do, keeps the receiver's view continuous.
//!
//! Rewriting changes two or three bytes in place; the payload is copied only for a
//! subscriber that has switched layers at least once (before that the offsets are zero and the
//! shared payload goes out untouched).

use bytes::{Bytes, BytesMut};

/// Where the rewritable fields of one payload descriptor are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Descriptor {
    /// Byte offset, value and width in bits (7 or 15) of the picture ID.
    pub picture_id: Option<(usize, u16, u32)>,
    /// Byte offset and value of TL0PICIDX.
    pub tl0_pic_idx: Option<(usize, u8)>,
}

/// Reads the descriptor at the start of a VP8 payload. `None` when it is cut short.
pub fn parse(p: &[u8]) -> Option<Descriptor> {
    let b0 = *p.first()?;
    let mut d = Descriptor::default();
    if b0 & 0x80 == 0 {
        return Some(d);
    }
    let x = *p.get(1)?;
    let mut i = 2;
    if x & 0x80 != 0 {
        let hi = *p.get(i)?;
        if hi & 0x80 != 0 {
            let lo = *p.get(i + 1)?;
            d.picture_id = Some((i, (u16::from(hi & 0x7f) << 8) | u16::from(lo), 15));
            i += 2;
        } else {
            d.picture_id = Some((i, u16::from(hi), 7));
            i += 1;
        }
    }
    if x & 0x40 != 0 {
        d.tl0_pic_idx = Some((i, *p.get(i)?));
    }
    Some(d)
}

/// True when `a` comes after `b` in a `bits`-wide counter (serial arithmetic).
fn newer(a: u16, b: u16, bits: u32) -> bool {
    let mask = (1u16 << bits) - 1;
    let d = a.wrapping_sub(b) & mask;
    d != 0 && d < (1 << (bits - 1))
}

/// One down-track's picture ID and TL0PICIDX rewriting.
#[derive(Debug, Clone, Default)]
pub struct Vp8Munger {
    pid_offset: u16,
    tl0_offset: u8,
    /// Last picture ID sent (output numbering) and its width.
    last_pid: Option<(u16, u32)>,
    /// Last TL0PICIDX sent (output numbering).
    last_tl0: Option<u8>,
}

impl Vp8Munger {
    /// A new layer starts at `payload` (a keyframe's first packet): its numbers will continue
    /// from the last ones sent. The first layer ever is passed through unchanged.
    pub fn begin(&mut self, payload: &[u8]) {
        let Some(d) = parse(payload) else { return };
        if let (Some((_, pid, bits)), Some((last, _))) = (d.picture_id, self.last_pid) {
            let mask = (1u16 << bits) - 1;
            self.pid_offset = last.wrapping_add(1).wrapping_sub(pid) & mask;
        }
        if let (Some((_, tl0)), Some(last)) = (d.tl0_pic_idx, self.last_tl0) {
            self.tl0_offset = last.wrapping_add(1).wrapping_sub(tl0);
        }
    }

    /// The payload to send: `None` when it goes out unchanged, else a rewritten copy.
    pub fn rewrite(&mut self, payload: &Bytes) -> Option<Bytes> {
        let d = parse(payload)?;
        let pid = d.picture_id.map(|(at, pid, bits)| {
            let mask = (1u16 << bits) - 1;
            let out = pid.wrapping_add(self.pid_offset) & mask;
            if self.last_pid.is_none_or(|(last, _)| newer(out, last, bits)) {
                self.last_pid = Some((out, bits));
            }
            (at, out, bits)
        });
        let tl0 = d.tl0_pic_idx.map(|(at, tl0)| {
            let out = tl0.wrapping_add(self.tl0_offset);
            if self
                .last_tl0
                .is_none_or(|last| newer(u16::from(out), u16::from(last), 8))
            {
                self.last_tl0 = Some(out);
            }
            (at, out)
        });
        if (self.pid_offset == 0 && self.tl0_offset == 0) || (pid.is_none() && tl0.is_none()) {
            return None;
        }
        let mut out = BytesMut::from(&payload[..]);
        if let Some((at, pid, bits)) = pid {
            if bits == 15 {
                out[at] = 0x80 | (pid >> 8) as u8;
                out[at + 1] = pid as u8;
            } else {
                out[at] = pid as u8;
            }
        }
        if let Some((at, tl0)) = tl0 {
            out[at] = tl0;
        }
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Chrome-style descriptor: X, I (15-bit), L, T set; S on the first packet.
    fn payload(start: bool, pid: u16, tl0: u8, tid: u8) -> Bytes {
        Bytes::from(vec![
            0x80 | if start { 0x10 } else { 0 },
            0xe0,
            0x80 | (pid >> 8) as u8,
            pid as u8,
            tl0,
            tid << 6,
            0xaa,
            0xbb,
        ])
    }

    fn fields(p: &[u8]) -> (u16, u8) {
        let d = parse(p).expect("present");
        (
            d.picture_id.expect("present").1,
            d.tl0_pic_idx.expect("present").1,
        )
    }

    #[test]
    fn first_layer_passes_through_untouched() {
        let mut m = Vp8Munger::default();
        let p = payload(true, 17_292, 231, 0);
        m.begin(&p);
        assert_eq!(m.rewrite(&p), None);
        assert_eq!(m.rewrite(&payload(false, 17_293, 231, 2)), None);
    }

    /// The case seen in the cascade test: layer 1 at picture 17292 / TL0 234, then layer 0's
    /// keyframe at picture 8372 / TL0 206. Out: 17294 / 235 and on from there.
    #[test]
    fn a_backward_jump_at_a_switch_continues_the_numbering() {
        let mut m = Vp8Munger::default();
        for (pid, tl0) in [(17_292, 233), (17_293, 234)] {
            m.rewrite(&payload(true, pid, tl0, 0));
        }
        let key = payload(true, 8_372, 206, 0);
        m.begin(&key);
        let out = m.rewrite(&key).expect("rewritten");
        assert_eq!(fields(&out), (17_294, 235));
        assert_eq!(&out[6..], &[0xaa, 0xbb], "the rest is untouched");
        assert_eq!(out[0], key[0]);
        assert_eq!(out[5], key[5]);
        let next = m.rewrite(&payload(false, 8_373, 206, 2)).expect("present");
        assert_eq!(fields(&next), (17_295, 235));
        let base = m.rewrite(&payload(true, 8_376, 207, 0)).expect("present");
        assert_eq!(fields(&base), (17_298, 236));
    }

    #[test]
    fn numbers_wrap_in_their_own_width() {
        let mut m = Vp8Munger::default();
        m.rewrite(&payload(true, 32_767, 255, 0));
        let key = payload(true, 100, 10, 0);
        m.begin(&key);
        assert_eq!(fields(&m.rewrite(&key).expect("present")), (0, 0));
        assert_eq!(
            fields(&m.rewrite(&payload(true, 101, 11, 0)).expect("present")),
            (1, 1)
        );
    }

    #[test]
    fn a_late_packet_keeps_its_place_and_does_not_move_the_last_number() {
        let mut m = Vp8Munger::default();
        m.rewrite(&payload(true, 500, 50, 0));
        m.begin(&payload(true, 10, 5, 0));
        m.rewrite(&payload(true, 10, 5, 0));
        m.rewrite(&payload(true, 12, 6, 0));
        // Picture 11 repaired late: it gets its own number, and the next switch still
        // continues after 12's.
        assert_eq!(
            fields(&m.rewrite(&payload(false, 11, 5, 2)).expect("present")).0,
            502
        );
        let key = payload(true, 9_000, 90, 0);
        m.begin(&key);
        assert_eq!(fields(&m.rewrite(&key).expect("present")), (504, 53));
    }

    #[test]
    fn short_pictures_ids_stay_short() {
        let mut m = Vp8Munger::default();
        let short = |pid: u8| Bytes::from(vec![0x90, 0x80, pid & 0x7f, 0x9d]);
        m.rewrite(&short(120));
        m.begin(&short(3));
        let out = m.rewrite(&short(3)).expect("present");
        assert_eq!(out.len(), 4);
        assert_eq!(parse(&out).expect("present").picture_id, Some((2, 121, 7)));
    }

    #[test]
    fn descriptors_without_the_fields_or_cut_short_are_left_alone() {
        let mut m = Vp8Munger::default();
        m.rewrite(&payload(true, 1, 1, 0));
        m.begin(&payload(true, 900, 90, 0));
        assert_eq!(m.rewrite(&Bytes::from_static(&[0x10, 0x9d])), None);
        assert_eq!(m.rewrite(&Bytes::from_static(&[0x90, 0xe0, 0x83])), None);
        assert_eq!(m.rewrite(&Bytes::new()), None);
        for n in 0..8 {
            let cut = payload(true, 900, 90, 0).slice(..n);
            let _ = parse(&cut);
            let _ = m.rewrite(&cut);
        }
    }
}
