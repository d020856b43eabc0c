//! Keyframe detection from RTP payloads, per codec.
//!
//! A subscriber may only be switched to another simulcast layer (or start receiving) at a
//! keyframe of that layer, so the forwarder asks this module about the first packet of every
//! frame. Only the payload descriptor is read; nothing is decoded.

/// The video codecs the forwarder understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VideoCodec {
    /// VP8 (RFC 7741).
    Vp8,
    /// VP9 (RFC 9628).
    Vp9,
    /// H.264 (RFC 6184).
    H264,
    /// Anything else: every packet counts as a possible switch point.
    Other,
}

impl VideoCodec {
    /// Maps a MIME type such as `video/VP8` to a codec.
    pub fn from_mime(mime: &str) -> Self {
        match mime.to_ascii_lowercase().as_str() {
            "video/vp8" => Self::Vp8,
            "video/vp9" => Self::Vp9,
            "video/h264" => Self::H264,
            _ => Self::Other,
        }
    }

    /// True when `payload` starts a keyframe. Garbage gives `false`, never a panic.
    pub fn is_keyframe(self, payload: &[u8]) -> bool {
        match self {
            Self::Vp8 => vp8_is_keyframe(payload),
            Self::Vp9 => vp9_is_keyframe(payload),
            Self::H264 => h264_is_keyframe(payload),
            Self::Other => true,
        }
    }
}

/// RFC 7741 §4.2 payload descriptor, then the VP8 frame header's P bit.
fn vp8_is_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let start_of_partition = b0 & 0x10 != 0;
    let partition_id = b0 & 0x07;
    if !start_of_partition || partition_id != 0 {
        return false;
    }
    let mut i = 1;
    if b0 & 0x80 != 0 {
        // X: extension byte follows.
        let Some(&x) = p.get(i) else { return false };
        i += 1;
        if x & 0x80 != 0 {
            // I: picture id, one or two bytes.
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        if x & 0x40 != 0 {
            i += 1; // L: TL0PICIDX
        }
        if x & 0x30 != 0 {
            i += 1; // T or K: TID/KEYIDX byte
        }
    }
    // First byte of the VP8 payload header: bit 0 is P (0 = keyframe).
    p.get(i).is_some_and(|h| h & 0x01 == 0)
}

/// RFC 9628 §4.2: a keyframe is a non-inter-predicted start of frame on spatial layer 0.
fn vp9_is_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let inter_picture_predicted = b0 & 0x40 != 0;
    let start_of_frame = b0 & 0x08 != 0;
    if inter_picture_predicted || !start_of_frame {
        return false;
    }
    // With layer indices present (L bit), only spatial layer 0 starts a decodable keyframe.
    if b0 & 0x20 != 0 {
        let mut i = 1;
        if b0 & 0x80 != 0 {
            let Some(&pid) = p.get(i) else { return false };
            i += if pid & 0x80 != 0 { 2 } else { 1 };
        }
        let Some(&layer) = p.get(i) else { return false };
        return (layer >> 1) & 0x07 == 0;
    }
    true
}

/// RFC 6184: an IDR slice (type 5) or SPS (7), alone, in a STAP-A or starting an FU-A.
fn h264_is_keyframe(p: &[u8]) -> bool {
    let Some(&b0) = p.first() else { return false };
    let is_key = |nal: u8| matches!(nal & 0x1f, 5 | 7);
    match b0 & 0x1f {
        1..=23 => is_key(b0),
        24 => {
            // STAP-A: [len16][nal]...
            let mut i = 1;
            while i + 2 < p.len() {
                let len = usize::from(u16::from_be_bytes([p[i], p[i + 1]]));
                if let Some(&nal) = p.get(i + 2)
                    && is_key(nal)
                {
                    return true;
                }
                i += 2 + len;
            }
            false
        }
        28 => p.get(1).is_some_and(|&fu| fu & 0x80 != 0 && is_key(fu)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn vp8_keyframe_with_extended_descriptor() {
        // X=1,S=1,PID=0 | I=1 | 15-bit picture id | P=0 frame header
        assert!(VideoCodec::Vp8.is_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x10, 0x02, 0x00]));
        // same but P=1 (interframe)
        assert!(!VideoCodec::Vp8.is_keyframe(&[0x90, 0x80, 0x81, 0x23, 0x11, 0x02, 0x00]));
        // not the start of a partition
        assert!(!VideoCodec::Vp8.is_keyframe(&[0x80, 0x80, 0x81, 0x23, 0x10]));
    }

    #[test]
    fn h264_idr_and_fu_a_start() {
        assert!(VideoCodec::H264.is_keyframe(&[0x65, 0x88]));
        assert!(VideoCodec::H264.is_keyframe(&[0x7c, 0x85, 0x00]));
        assert!(!VideoCodec::H264.is_keyframe(&[0x7c, 0x05, 0x00]));
        assert!(VideoCodec::H264.is_keyframe(&[0x78, 0x00, 0x02, 0x67, 0x42]));
    }

    proptest! {
        #[test]
        fn garbage_never_panics(p in proptest::collection::vec(any::<u8>(), 0..64)) {
            for c in [VideoCodec::Vp8, VideoCodec::Vp9, VideoCodec::H264] {
                let _ = c.is_keyframe(&p);
            }
        }
    }
}
