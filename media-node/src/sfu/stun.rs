//! Just enough STUN parsing to route a datagram from an unknown address to its peer connection.
//!
//! Every peer connection on the node shares one UDP port. A datagram from an address the node
//! has not seen is routed by the USERNAME attribute of a STUN binding request
//! (`<our ufrag>:<their ufrag>`, RFC 8445 §7.2.2); anything else from an unknown address is
//! dropped.

/// True when the datagram looks like STUN (RFC 7983 demultiplexing: first byte 0..=3).
pub fn is_stun(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] < 4 && d[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

/// The local (first) ufrag of a STUN message's USERNAME attribute.
pub fn local_ufrag(d: &[u8]) -> Option<&str> {
    if !is_stun(d) {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([d[2], d[3]]));
    let end = 20usize.checked_add(len)?.min(d.len());
    let mut i = 20;
    while i + 4 <= end {
        let typ = u16::from_be_bytes([d[i], d[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([d[i + 2], d[i + 3]]));
        let start = i + 4;
        let stop = start.checked_add(alen)?;
        if stop > end {
            return None;
        }
        if typ == 0x0006 {
            let username = std::str::from_utf8(&d[start..stop]).ok()?;
            return username.split(':').next();
        }
        // Attributes are padded to four bytes.
        i = start + alen.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn finds_username() {
        let mut d = vec![0x00, 0x01, 0x00, 0x10, 0x21, 0x12, 0xa4, 0x42];
        d.extend_from_slice(&[0; 12]);
        d.extend_from_slice(&[0x00, 0x06, 0x00, 0x09]);
        d.extend_from_slice(b"abcd:wxyz\0\0\0");
        assert_eq!(local_ufrag(&d), Some("abcd"));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(d in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = local_ufrag(&d);
        }
    }
}
