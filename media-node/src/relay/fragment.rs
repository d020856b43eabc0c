//! Relay datagrams larger than the path carries, split and put back together.
//!
//! QUIC datagrams must fit one packet, and the size a path carries is an estimate that can
//! fall: quinn's black-hole detection drops it to the 1,200-byte minimum after a burst of lost
//! large packets, and a full-size video packet (about 1,200 bytes of RTP plus the datagram
//! header) then no longer fits. Refused, it would be lost until path MTU discovery climbs back
//! (minutes), keyframes included. So a datagram over the current limit is sent as two or more
//! fragments, each `FRAGMENT_HANDLE`, an id, its index and the count, then a piece; the far
//! side puts them back together before the engine sees the datagram. Splitting costs only
//! while the estimate is low; the alternatives were worse: a guaranteed minimum above 1,200
//! defeats black-hole detection (a path that really is smaller would drop every large packet
//! for good), and a stream fallback would put media behind retransmissions.
//!
//! A lost fragment loses the datagram (as a lost packet would be); loss repair (NACK) asks for
//! it again. Reassembly holds at most [`MAX_PENDING`] incomplete datagrams, the oldest dropped.

use bytes::{BufMut, Bytes, BytesMut};
use std::collections::VecDeque;

/// The track handle that marks a fragment (a media datagram never uses it; feedback uses
/// `u32::MAX`).
pub const FRAGMENT_HANDLE: u32 = u32::MAX - 1;
/// Fragment header: handle (4), id (2), index (1), count (1).
pub const FRAGMENT_HEADER: usize = 8;
/// Most pieces one datagram is split into.
pub const MAX_PIECES: usize = 8;
/// Incomplete datagrams held for reassembly.
pub const MAX_PENDING: usize = 32;

/// Whether `d` is a fragment.
pub fn is_fragment(d: &[u8]) -> bool {
    d.len() >= FRAGMENT_HEADER && d[..4] == FRAGMENT_HANDLE.to_be_bytes()
}

/// `d` as datagrams of at most `max` bytes: itself when it fits, else fragments with `id`.
/// `None` when it cannot be split into [`MAX_PIECES`] or fewer (a limit too small to use).
pub fn split(d: Bytes, max: usize, id: u16) -> Option<Vec<Bytes>> {
    if d.len() <= max {
        return Some(vec![d]);
    }
    let room = max.checked_sub(FRAGMENT_HEADER).filter(|r| *r > 0)?;
    let count = d.len().div_ceil(room);
    if count > MAX_PIECES {
        return None;
    }
    Some(
        d.chunks(room)
            .enumerate()
            .map(|(i, piece)| {
                let mut b = BytesMut::with_capacity(FRAGMENT_HEADER + piece.len());
                b.put_u32(FRAGMENT_HANDLE);
                b.put_u16(id);
                b.put_u8(i as u8);
                b.put_u8(count as u8);
                b.put_slice(piece);
                b.freeze()
            })
            .collect(),
    )
}

struct Pending {
    id: u16,
    pieces: Vec<Option<Bytes>>,
}

/// Puts fragments back together (one per link).
#[derive(Default)]
pub struct Reassembler {
    pending: VecDeque<Pending>,
}

impl Reassembler {
    /// Takes a fragment; returns the whole datagram once its last piece is in. A fragment
    /// that does not parse, or disagrees with its siblings about the count, is dropped.
    pub fn push(&mut self, f: &[u8]) -> Option<Bytes> {
        if !is_fragment(f) {
            return None;
        }
        let id = u16::from_be_bytes([f[4], f[5]]);
        let (index, count) = (usize::from(f[6]), usize::from(f[7]));
        if !(2..=MAX_PIECES).contains(&count) || index >= count {
            return None;
        }
        let pos = match self.pending.iter().position(|p| p.id == id) {
            Some(i) if self.pending[i].pieces.len() == count => i,
            Some(i) => {
                self.pending.remove(i);
                return None;
            }
            None => {
                if self.pending.len() >= MAX_PENDING {
                    self.pending.pop_front();
                }
                self.pending.push_back(Pending {
                    id,
                    pieces: vec![None; count],
                });
                self.pending.len() - 1
            }
        };
        self.pending[pos].pieces[index] = Some(Bytes::copy_from_slice(&f[FRAGMENT_HEADER..]));
        if self.pending[pos].pieces.iter().any(Option::is_none) {
            return None;
        }
        let done = self.pending.remove(pos)?;
        let mut out = BytesMut::new();
        for p in done.pieces.into_iter().flatten() {
            out.extend_from_slice(&p);
        }
        Some(out.freeze())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_datagram_that_fits_is_sent_as_it_is() {
        let d = Bytes::from_static(&[1, 2, 3]);
        assert_eq!(split(d.clone(), 1200, 7), Some(vec![d]));
    }

    #[test]
    fn a_full_size_video_packet_over_a_1200_byte_path_arrives_whole() {
        // 1,200 bytes of RTP and the 5-byte datagram header, over a path carrying 1,170.
        let d = Bytes::from((0..1205).map(|i| i as u8).collect::<Vec<u8>>());
        let parts = split(d.clone(), 1170, 9).expect("split");
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.len() <= 1170));
        let mut r = Reassembler::default();
        assert_eq!(r.push(&parts[1]), None);
        assert_eq!(r.push(&parts[0]), Some(d));
    }

    #[test]
    fn a_limit_too_small_to_split_into_is_refused() {
        assert_eq!(split(Bytes::from(vec![0; 2000]), 8, 1), None);
        assert_eq!(split(Bytes::from(vec![0; 2000]), 100, 1), None);
    }

    #[test]
    fn reassembly_holds_a_bounded_number_of_incomplete_datagrams() {
        let mut r = Reassembler::default();
        for id in 0..(MAX_PENDING as u16 + 10) {
            let parts = split(Bytes::from(vec![id as u8; 300]), 200, id).expect("split");
            r.push(&parts[0]);
        }
        assert_eq!(r.pending.len(), MAX_PENDING);
    }

    proptest! {
        #[test]
        fn split_then_reassemble_in_any_order_gives_the_datagram(
            data in proptest::collection::vec(any::<u8>(), 1..4000),
            max in 200usize..1500,
            id in any::<u16>(),
            rotate in 0usize..8,
        ) {
            let d = Bytes::from(data);
            let Some(mut parts) = split(d.clone(), max, id) else {
                return Ok(());
            };
            if parts.len() == 1 {
                prop_assert_eq!(&parts[0], &d);
                return Ok(());
            }
            let k = rotate % parts.len();
            parts.rotate_left(k);
            let mut r = Reassembler::default();
            let mut out = None;
            for p in &parts {
                prop_assert!(p.len() <= max);
                if let Some(whole) = r.push(p) {
                    out = Some(whole);
                }
            }
            prop_assert_eq!(out, Some(d));
        }

        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut r = Reassembler::default();
            let _ = r.push(&data);
            let mut f = FRAGMENT_HANDLE.to_be_bytes().to_vec();
            f.extend_from_slice(&data);
            let _ = r.push(&f);
        }
    }
}
