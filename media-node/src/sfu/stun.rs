//! Just enough STUN parsing to route a datagram from an unknown address to its peer connection.
//!
//! Every peer connection on the node shares one UDP port. A datagram from an address the node
//! has not seen is routed by the USERNAME attribute of a STUN binding request
//! (`<our ufrag>:<their ufrag>`, RFC 8445 §7.2.2), and the address is bound to that peer
//! only once the request's MESSAGE-INTEGRITY verifies with the peer's password (RFC 8489
//! §14.5): a tuple is validated before anything but STUN from it is accepted, as mediasoup
//! does. Anything else from an unknown address is dropped.

/// True when the datagram looks like STUN (RFC 7983 demultiplexing: first byte 0..=3).
pub fn is_stun(d: &[u8]) -> bool {
    d.len() >= 20 && d[0] < 4 && d[4..8] == [0x21, 0x12, 0xa4, 0x42]
}

const USERNAME: u16 = 0x0006;
const MESSAGE_INTEGRITY: u16 = 0x0008;
const BINDING_REQUEST: u16 = 0x0001;

/// The attributes of a STUN message: `(type, offset of the attribute header, value)`.
fn attributes(d: &[u8]) -> impl Iterator<Item = (u16, usize, &[u8])> {
    let len = if is_stun(d) {
        usize::from(u16::from_be_bytes([d[2], d[3]]))
    } else {
        0
    };
    let end = (20 + len).min(d.len());
    let mut i = 20;
    std::iter::from_fn(move || {
        if i + 4 > end {
            return None;
        }
        let typ = u16::from_be_bytes([d[i], d[i + 1]]);
        let alen = usize::from(u16::from_be_bytes([d[i + 2], d[i + 3]]));
        let at = i;
        let start = i + 4;
        let stop = start + alen;
        if stop > end {
            return None;
        }
        // Attributes are padded to four bytes.
        i = start + alen.div_ceil(4) * 4;
        Some((typ, at, &d[start..stop]))
    })
}

/// The local (first) ufrag of a STUN message's USERNAME attribute.
pub fn local_ufrag(d: &[u8]) -> Option<&str> {
    let (_, _, username) = attributes(d).find(|(t, _, _)| *t == USERNAME)?;
    std::str::from_utf8(username).ok()?.split(':').next()
}

/// True when `d` is a STUN binding request whose MESSAGE-INTEGRITY verifies with the
/// short-term credential `password` (HMAC-SHA1 over the message up to the attribute, with the
/// header's length counting up to its end; RFC 8489 §14.5). Compared in constant time.
pub fn binding_request_verifies(d: &[u8], password: &str) -> bool {
    if !is_stun(d) || u16::from_be_bytes([d[0], d[1]]) != BINDING_REQUEST {
        return false;
    }
    let Some((_, at, mac)) = attributes(d).find(|(t, _, _)| *t == MESSAGE_INTEGRITY) else {
        return false;
    };
    if mac.len() != 20 {
        return false;
    }
    // The length field as if the message ended with MESSAGE-INTEGRITY.
    let Ok(len) = u16::try_from(at + 24 - 20) else {
        return false;
    };
    let key = ring::hmac::Key::new(
        ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
        password.as_bytes(),
    );
    let mut signed = d[..at].to_vec();
    signed[2..4].copy_from_slice(&len.to_be_bytes());
    ring::hmac::verify(&key, &signed, mac).is_ok()
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

    /// A binding request as Chrome sends it: USERNAME, then MESSAGE-INTEGRITY, then
    /// FINGERPRINT (not covered by the integrity).
    fn request(username: &str, password: &str) -> Vec<u8> {
        let mut d = vec![0x00, 0x01, 0, 0, 0x21, 0x12, 0xa4, 0x42];
        d.extend_from_slice(&[7; 12]);
        let u = username.as_bytes();
        d.extend_from_slice(&USERNAME.to_be_bytes());
        d.extend_from_slice(&(u.len() as u16).to_be_bytes());
        d.extend_from_slice(u);
        d.resize(d.len() + (4 - u.len() % 4) % 4, 0);
        let mi_at = d.len();
        let len = (mi_at + 24 - 20) as u16;
        d[2..4].copy_from_slice(&len.to_be_bytes());
        let key = ring::hmac::Key::new(
            ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY,
            password.as_bytes(),
        );
        let tag = ring::hmac::sign(&key, &d);
        d.extend_from_slice(&MESSAGE_INTEGRITY.to_be_bytes());
        d.extend_from_slice(&20u16.to_be_bytes());
        d.extend_from_slice(tag.as_ref());
        // FINGERPRINT (its value does not matter here).
        d.extend_from_slice(&[0x80, 0x28, 0, 4, 1, 2, 3, 4]);
        let total = (d.len() - 20) as u16;
        d[2..4].copy_from_slice(&total.to_be_bytes());
        d
    }

    #[test]
    fn integrity_verifies_with_the_password_only() {
        let d = request("abcd:wxyz", "s3cret-password");
        assert_eq!(local_ufrag(&d), Some("abcd"));
        assert!(binding_request_verifies(&d, "s3cret-password"));
        assert!(!binding_request_verifies(&d, "s3cret-passwore"));
        let mut tampered = d.clone();
        tampered[25] ^= 1;
        assert!(!binding_request_verifies(&tampered, "s3cret-password"));
        let mut response = d;
        response[0..2].copy_from_slice(&0x0101u16.to_be_bytes());
        assert!(!binding_request_verifies(&response, "s3cret-password"));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(d in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = local_ufrag(&d);
            prop_assert!(!binding_request_verifies(&d, "pw") || d.len() >= 44);
        }
    }
}
