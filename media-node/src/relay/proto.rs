//! The relay protocol between media nodes: control frames on one QUIC stream, media in QUIC
//! datagrams. A codec only: bytes in, messages out (and back), every length bounded, every
//! malformed input an error, never a panic. The quinn tasks only move bytes through it.
//!
//! Control stream: a sequence of frames, each `u32` big-endian length (of what follows,
//! at most [`MAX_FRAME`]), then a `u8` message type and the message's fields. Strings are a
//! `u16` length and UTF-8 bytes; lists are a `u8` count. A frame whose fields do not fill it
//! exactly is an error (no trailing bytes are skipped silently).
//!
//! Datagram: `u32` track handle (the sender's handle for the stream on this link, from its
//! [`Control::TrackAnnounce`]), `u8` layer (0 for audio and single-layer video, else the
//! simulcast layer, 0 = lowest), then the RTP packet unchanged (QUIC encrypts the link).
//!
//! Feedback datagram: handle [`FEEDBACK_HANDLE`], layer 0, then one control frame, a
//! [`Control::Nack`] or [`Control::KeyframeRequest`]. Loss repair must not wait behind the
//! ordered control stream: one lost stream packet holds every later message for a round trip
//! or more, so NACKs and keyframe requests travel as datagrams and their sender retries them.
//!
//! Padding datagram: handle [`PADDING_HANDLE`], layer 0, then filler the receiver drops unread.
//! A link's prober sends them to learn whether the path carries more than the media on it
//! (`crate::relay::probe`). No version change: peers that predate it drop a datagram of a
//! handle they were not given without counting it.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Version spoken in [`Control::Hello`]; a peer of another major version is refused, one of
/// an older minor is served what it understands (rolling upgrades).
pub const PROTOCOL_VERSION: u16 = 2;

/// Largest control frame, bytes (after the length prefix).
pub const MAX_FRAME: usize = 64 * 1024;
/// Longest string field, bytes (chat text is the longest).
pub const MAX_STR: usize = 4096;
/// Most entries in a list field.
pub const MAX_LIST: usize = 64;
/// Bytes a datagram adds in front of the RTP packet.
pub const DATAGRAM_HEADER: usize = 5;
/// The track handle that marks a feedback datagram (never a track's handle).
pub const FEEDBACK_HANDLE: u32 = u32::MAX;
/// The track handle that marks a padding datagram (never a track's handle).
pub const PADDING_HANDLE: u32 = u32::MAX - 1;

/// What kind of media a track carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    /// Audio.
    Audio,
    /// Video.
    Video,
}

/// A participant, as other nodes see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Participant {
    /// Id unique in the room (node-prefixed by the origin).
    pub id: String,
    /// Stable identity from the join token.
    pub identity: String,
    /// Display name.
    pub name: String,
}

/// A message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    /// First frame on a link, both ways.
    Hello {
        /// [`PROTOCOL_VERSION`] of the sender.
        version: u16,
        /// Sender's node id.
        node_id: String,
        /// Sender's region.
        region: String,
    },
    /// The sender has (`on`) or no longer has participants in `room`: send it the room's tracks
    /// and events, or stop.
    Interest {
        /// Room.
        room: String,
        /// Interested or not.
        on: bool,
    },
    /// A track the sender can forward on this link.
    TrackAnnounce {
        /// Room.
        room: String,
        /// The sender's handle for it on this link (datagrams carry it).
        track: u32,
        /// Who publishes it.
        participant: Participant,
        /// Node where it was published.
        origin: String,
        /// Links it crossed before this one (0 = published on the sender).
        hops: u8,
        /// Audio or video.
        kind: MediaKind,
        /// `camera`, `microphone`, `screen`.
        source: String,
        /// MIME type, e.g. `video/VP8`.
        codec: String,
        /// RTP clock rate.
        clock_rate: u32,
        /// Audio channels (0 for video).
        channels: u8,
        /// The codec's `a=fmtp` parameters on the publisher's leg.
        fmtp: String,
        /// Header extensions on the publisher's leg (id, URI): relayed packets carry these ids.
        extensions: Vec<(u8, String)>,
        /// Simulcast layers by RID, lowest first; empty for one layer.
        layers: Vec<String>,
    },
    /// What each layer of a track carries now, bits per second (sent by the track's origin
    /// about once a second, so far nodes choose layers without receiving them all).
    LayerRates {
        /// Handle.
        track: u32,
        /// Per layer, lowest first.
        bps: Vec<u32>,
    },
    /// Its publisher muted or unmuted the track (protocol version 2: not sent to a version 1
    /// peer, which would refuse the type).
    TrackMuted {
        /// Handle.
        track: u32,
        /// Muted or not.
        muted: bool,
    },
    /// The track is gone.
    TrackWithdraw {
        /// Room.
        room: String,
        /// Handle.
        track: u32,
    },
    /// Send this layer of a track (the receiver has someone who needs it).
    Subscribe {
        /// Handle.
        track: u32,
        /// Layer.
        layer: u8,
    },
    /// Stop sending this layer.
    Unsubscribe {
        /// Handle.
        track: u32,
        /// Layer.
        layer: u8,
    },
    /// Ask the publisher for a keyframe on this layer (travels upstream hop by hop).
    KeyframeRequest {
        /// Handle.
        track: u32,
        /// Layer.
        layer: u8,
    },
    /// Resend these RTP sequence numbers of a layer (loss repair on the link).
    Nack {
        /// Handle.
        track: u32,
        /// Layer.
        layer: u8,
        /// Missing sequence numbers.
        seqs: Vec<u16>,
    },
    /// Someone joined `room` on the sender's side.
    ParticipantJoined {
        /// Room.
        room: String,
        /// Who.
        participant: Participant,
    },
    /// Someone left.
    ParticipantLeft {
        /// Room.
        room: String,
        /// Participant id.
        id: String,
    },
    /// A chat message.
    Chat {
        /// Room.
        room: String,
        /// Sender.
        from: Participant,
        /// Text.
        text: String,
        /// Sent at, Unix milliseconds.
        at_ms: u64,
    },
    /// The sender closes the link, and why.
    Goodbye {
        /// Reason.
        reason: String,
    },
}

/// Why bytes are not a relay message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// Frame longer than [`MAX_FRAME`].
    #[error("relay frame of {0} bytes is over the limit")]
    FrameTooLong(usize),
    /// A field runs past the end of the frame.
    #[error("relay frame truncated in {0}")]
    Truncated(&'static str),
    /// Bytes left over after the last field.
    #[error("relay frame has {0} trailing bytes")]
    Trailing(usize),
    /// Unknown message type.
    #[error("unknown relay message type {0}")]
    UnknownType(u8),
    /// A string is not UTF-8 or is too long.
    #[error("bad string in {0}")]
    BadString(&'static str),
    /// A list is too long.
    #[error("list in {0} is too long")]
    ListTooLong(&'static str),
    /// An enum byte with no meaning.
    #[error("bad value in {0}")]
    BadValue(&'static str),
    /// A datagram too short for its header.
    #[error("relay datagram too short")]
    ShortDatagram,
    /// A feedback datagram that holds something other than one NACK or keyframe request.
    #[error("relay feedback datagram is not one NACK or keyframe request")]
    BadFeedback,
}

mod ty {
    pub const HELLO: u8 = 1;
    pub const INTEREST: u8 = 2;
    pub const ANNOUNCE: u8 = 3;
    pub const WITHDRAW: u8 = 4;
    pub const SUBSCRIBE: u8 = 5;
    pub const UNSUBSCRIBE: u8 = 6;
    pub const KEYFRAME: u8 = 7;
    pub const NACK: u8 = 8;
    pub const JOINED: u8 = 9;
    pub const LEFT: u8 = 10;
    pub const CHAT: u8 = 11;
    pub const GOODBYE: u8 = 12;
    pub const RATES: u8 = 13;
    pub const MUTED: u8 = 14;
}

fn put_str(b: &mut BytesMut, s: &str) {
    // Encoding truncates rather than writing a frame the peer must refuse; callers keep
    // strings under MAX_STR (names and rooms are far shorter; chat is capped at 4 KiB).
    let mut end = s.len().min(MAX_STR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    b.put_u16(end as u16);
    b.put_slice(&s.as_bytes()[..end]);
}

fn put_participant(b: &mut BytesMut, p: &Participant) {
    put_str(b, &p.id);
    put_str(b, &p.identity);
    put_str(b, &p.name);
}

impl Control {
    /// Appends this message as one length-prefixed frame.
    pub fn encode(&self, out: &mut BytesMut) {
        let mut b = BytesMut::with_capacity(64);
        match self {
            Self::Hello {
                version,
                node_id,
                region,
            } => {
                b.put_u8(ty::HELLO);
                b.put_u16(*version);
                put_str(&mut b, node_id);
                put_str(&mut b, region);
            }
            Self::Interest { room, on } => {
                b.put_u8(ty::INTEREST);
                put_str(&mut b, room);
                b.put_u8(u8::from(*on));
            }
            Self::TrackAnnounce {
                room,
                track,
                participant,
                origin,
                hops,
                kind,
                source,
                codec,
                clock_rate,
                channels,
                fmtp,
                extensions,
                layers,
            } => {
                b.put_u8(ty::ANNOUNCE);
                put_str(&mut b, room);
                b.put_u32(*track);
                put_participant(&mut b, participant);
                put_str(&mut b, origin);
                b.put_u8(*hops);
                b.put_u8(match kind {
                    MediaKind::Audio => 0,
                    MediaKind::Video => 1,
                });
                put_str(&mut b, source);
                put_str(&mut b, codec);
                b.put_u32(*clock_rate);
                b.put_u8(*channels);
                put_str(&mut b, fmtp);
                let n = extensions.len().min(MAX_LIST);
                b.put_u8(n as u8);
                for (id, uri) in &extensions[..n] {
                    b.put_u8(*id);
                    put_str(&mut b, uri);
                }
                let n = layers.len().min(MAX_LIST);
                b.put_u8(n as u8);
                for l in &layers[..n] {
                    put_str(&mut b, l);
                }
            }
            Self::LayerRates { track, bps } => {
                b.put_u8(ty::RATES);
                b.put_u32(*track);
                let n = bps.len().min(MAX_LIST);
                b.put_u8(n as u8);
                for r in &bps[..n] {
                    b.put_u32(*r);
                }
            }
            Self::TrackMuted { track, muted } => {
                b.put_u8(ty::MUTED);
                b.put_u32(*track);
                b.put_u8(u8::from(*muted));
            }
            Self::TrackWithdraw { room, track } => {
                b.put_u8(ty::WITHDRAW);
                put_str(&mut b, room);
                b.put_u32(*track);
            }
            Self::Subscribe { track, layer } => {
                b.put_u8(ty::SUBSCRIBE);
                b.put_u32(*track);
                b.put_u8(*layer);
            }
            Self::Unsubscribe { track, layer } => {
                b.put_u8(ty::UNSUBSCRIBE);
                b.put_u32(*track);
                b.put_u8(*layer);
            }
            Self::KeyframeRequest { track, layer } => {
                b.put_u8(ty::KEYFRAME);
                b.put_u32(*track);
                b.put_u8(*layer);
            }
            Self::Nack { track, layer, seqs } => {
                b.put_u8(ty::NACK);
                b.put_u32(*track);
                b.put_u8(*layer);
                let n = seqs.len().min(MAX_LIST);
                b.put_u8(n as u8);
                for s in &seqs[..n] {
                    b.put_u16(*s);
                }
            }
            Self::ParticipantJoined { room, participant } => {
                b.put_u8(ty::JOINED);
                put_str(&mut b, room);
                put_participant(&mut b, participant);
            }
            Self::ParticipantLeft { room, id } => {
                b.put_u8(ty::LEFT);
                put_str(&mut b, room);
                put_str(&mut b, id);
            }
            Self::Chat {
                room,
                from,
                text,
                at_ms,
            } => {
                b.put_u8(ty::CHAT);
                put_str(&mut b, room);
                put_participant(&mut b, from);
                put_str(&mut b, text);
                b.put_u64(*at_ms);
            }
            Self::Goodbye { reason } => {
                b.put_u8(ty::GOODBYE);
                put_str(&mut b, reason);
            }
        }
        out.put_u32(b.len() as u32);
        out.extend_from_slice(&b);
    }

    /// Takes one whole frame off the front of `buf`. `Ok(None)`: not all of it has arrived.
    /// An error means the peer is broken or hostile; the link should close.
    pub fn decode(buf: &mut BytesMut) -> Result<Option<Self>, ProtoError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        if len > MAX_FRAME {
            return Err(ProtoError::FrameTooLong(len));
        }
        if buf.len() < 4 + len {
            return Ok(None);
        }
        buf.advance(4);
        let mut frame = buf.split_to(len).freeze();
        let msg = Self::parse(&mut frame)?;
        if frame.has_remaining() {
            return Err(ProtoError::Trailing(frame.remaining()));
        }
        Ok(Some(msg))
    }

    fn parse(f: &mut Bytes) -> Result<Self, ProtoError> {
        let t = u8_of(f, "type")?;
        Ok(match t {
            ty::HELLO => Self::Hello {
                version: u16_of(f, "hello")?,
                node_id: str_of(f, "hello")?,
                region: str_of(f, "hello")?,
            },
            ty::INTEREST => Self::Interest {
                room: str_of(f, "interest")?,
                on: bool_of(f, "interest")?,
            },
            ty::ANNOUNCE => {
                let room = str_of(f, "announce")?;
                let track = u32_of(f, "announce")?;
                let participant = participant_of(f, "announce")?;
                let origin = str_of(f, "announce")?;
                let hops = u8_of(f, "announce")?;
                let kind = match u8_of(f, "announce")? {
                    0 => MediaKind::Audio,
                    1 => MediaKind::Video,
                    _ => return Err(ProtoError::BadValue("announce kind")),
                };
                let source = str_of(f, "announce")?;
                let codec = str_of(f, "announce")?;
                let clock_rate = u32_of(f, "announce")?;
                let channels = u8_of(f, "announce")?;
                let fmtp = str_of(f, "announce")?;
                let n = list_len(f, "announce extensions")?;
                let mut extensions = Vec::with_capacity(n);
                for _ in 0..n {
                    extensions.push((
                        u8_of(f, "announce extensions")?,
                        str_of(f, "announce extensions")?,
                    ));
                }
                let n = list_len(f, "announce layers")?;
                let mut layers = Vec::with_capacity(n);
                for _ in 0..n {
                    layers.push(str_of(f, "announce layers")?);
                }
                Self::TrackAnnounce {
                    room,
                    track,
                    participant,
                    origin,
                    hops,
                    kind,
                    source,
                    codec,
                    clock_rate,
                    channels,
                    fmtp,
                    extensions,
                    layers,
                }
            }
            ty::RATES => {
                let track = u32_of(f, "rates")?;
                let n = list_len(f, "rates")?;
                let mut bps = Vec::with_capacity(n);
                for _ in 0..n {
                    bps.push(u32_of(f, "rates")?);
                }
                Self::LayerRates { track, bps }
            }
            ty::MUTED => Self::TrackMuted {
                track: u32_of(f, "muted")?,
                muted: match u8_of(f, "muted")? {
                    0 => false,
                    1 => true,
                    _ => return Err(ProtoError::BadValue("muted")),
                },
            },
            ty::WITHDRAW => Self::TrackWithdraw {
                room: str_of(f, "withdraw")?,
                track: u32_of(f, "withdraw")?,
            },
            ty::SUBSCRIBE => Self::Subscribe {
                track: u32_of(f, "subscribe")?,
                layer: u8_of(f, "subscribe")?,
            },
            ty::UNSUBSCRIBE => Self::Unsubscribe {
                track: u32_of(f, "unsubscribe")?,
                layer: u8_of(f, "unsubscribe")?,
            },
            ty::KEYFRAME => Self::KeyframeRequest {
                track: u32_of(f, "keyframe")?,
                layer: u8_of(f, "keyframe")?,
            },
            ty::NACK => {
                let track = u32_of(f, "nack")?;
                let layer = u8_of(f, "nack")?;
                let n = list_len(f, "nack")?;
                let mut seqs = Vec::with_capacity(n);
                for _ in 0..n {
                    seqs.push(u16_of(f, "nack")?);
                }
                Self::Nack { track, layer, seqs }
            }
            ty::JOINED => Self::ParticipantJoined {
                room: str_of(f, "joined")?,
                participant: participant_of(f, "joined")?,
            },
            ty::LEFT => Self::ParticipantLeft {
                room: str_of(f, "left")?,
                id: str_of(f, "left")?,
            },
            ty::CHAT => Self::Chat {
                room: str_of(f, "chat")?,
                from: participant_of(f, "chat")?,
                text: str_of(f, "chat")?,
                at_ms: u64_of(f, "chat")?,
            },
            ty::GOODBYE => Self::Goodbye {
                reason: str_of(f, "goodbye")?,
            },
            other => return Err(ProtoError::UnknownType(other)),
        })
    }
}

fn need(f: &Bytes, n: usize, what: &'static str) -> Result<(), ProtoError> {
    if f.remaining() < n {
        Err(ProtoError::Truncated(what))
    } else {
        Ok(())
    }
}

fn u8_of(f: &mut Bytes, what: &'static str) -> Result<u8, ProtoError> {
    need(f, 1, what)?;
    Ok(f.get_u8())
}

fn bool_of(f: &mut Bytes, what: &'static str) -> Result<bool, ProtoError> {
    match u8_of(f, what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(ProtoError::BadValue(what)),
    }
}

fn u16_of(f: &mut Bytes, what: &'static str) -> Result<u16, ProtoError> {
    need(f, 2, what)?;
    Ok(f.get_u16())
}

fn u32_of(f: &mut Bytes, what: &'static str) -> Result<u32, ProtoError> {
    need(f, 4, what)?;
    Ok(f.get_u32())
}

fn u64_of(f: &mut Bytes, what: &'static str) -> Result<u64, ProtoError> {
    need(f, 8, what)?;
    Ok(f.get_u64())
}

fn list_len(f: &mut Bytes, what: &'static str) -> Result<usize, ProtoError> {
    let n = usize::from(u8_of(f, what)?);
    if n > MAX_LIST {
        return Err(ProtoError::ListTooLong(what));
    }
    Ok(n)
}

fn str_of(f: &mut Bytes, what: &'static str) -> Result<String, ProtoError> {
    let n = usize::from(u16_of(f, what)?);
    if n > MAX_STR {
        return Err(ProtoError::BadString(what));
    }
    need(f, n, what)?;
    let raw = f.split_to(n);
    String::from_utf8(raw.to_vec()).map_err(|_| ProtoError::BadString(what))
}

fn participant_of(f: &mut Bytes, what: &'static str) -> Result<Participant, ProtoError> {
    Ok(Participant {
        id: str_of(f, what)?,
        identity: str_of(f, what)?,
        name: str_of(f, what)?,
    })
}

/// A media datagram: which stream and layer, and the RTP packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDatagram {
    /// The sender's track handle.
    pub track: u32,
    /// Layer.
    pub layer: u8,
    /// The RTP packet.
    pub rtp: Bytes,
}

impl MediaDatagram {
    /// The datagram's bytes.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(DATAGRAM_HEADER + self.rtp.len());
        b.put_u32(self.track);
        b.put_u8(self.layer);
        b.extend_from_slice(&self.rtp);
        b.freeze()
    }

    /// Parses a datagram; the RTP bytes are shared, not copied.
    pub fn decode(mut d: Bytes) -> Result<Self, ProtoError> {
        if d.len() < DATAGRAM_HEADER {
            return Err(ProtoError::ShortDatagram);
        }
        let track = d.get_u32();
        let layer = d.get_u8();
        Ok(Self {
            track,
            layer,
            rtp: d,
        })
    }
}

/// A datagram off a link: media, or loss-repair feedback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram {
    /// An RTP packet of a track.
    Media(MediaDatagram),
    /// A [`Control::Nack`] or [`Control::KeyframeRequest`] (boxed: media is the common case).
    Feedback(Box<Control>),
    /// Filler a prober sent (its length only).
    Padding(usize),
}

impl Datagram {
    /// The bytes of a feedback datagram; `None` for a message that is not feedback.
    pub fn feedback(msg: &Control) -> Option<Bytes> {
        if !matches!(msg, Control::Nack { .. } | Control::KeyframeRequest { .. }) {
            return None;
        }
        let mut b = BytesMut::with_capacity(64);
        b.put_u32(FEEDBACK_HANDLE);
        b.put_u8(0);
        msg.encode(&mut b);
        Some(b.freeze())
    }

    /// A padding datagram of `len` bytes in all (at least the header).
    pub fn padding(len: usize) -> Bytes {
        let mut b = BytesMut::zeroed(len.max(DATAGRAM_HEADER));
        b[..4].copy_from_slice(&PADDING_HANDLE.to_be_bytes());
        b.freeze()
    }

    /// Parses a datagram of any kind.
    pub fn decode(d: Bytes) -> Result<Self, ProtoError> {
        let len = d.len();
        let media = MediaDatagram::decode(d)?;
        match media.track {
            FEEDBACK_HANDLE => {}
            PADDING_HANDLE => return Ok(Self::Padding(len)),
            _ => return Ok(Self::Media(media)),
        }
        let mut frame = BytesMut::from(&media.rtp[..]);
        match Control::decode(&mut frame)? {
            Some(msg @ (Control::Nack { .. } | Control::KeyframeRequest { .. }))
                if frame.is_empty() =>
            {
                Ok(Self::Feedback(Box::new(msg)))
            }
            _ => Err(ProtoError::BadFeedback),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        ".{0,40}"
    }

    fn participant() -> impl Strategy<Value = Participant> {
        (text(), text(), text()).prop_map(|(id, identity, name)| Participant { id, identity, name })
    }

    fn control() -> impl Strategy<Value = Control> {
        prop_oneof![
            (any::<u16>(), text(), text()).prop_map(|(version, node_id, region)| Control::Hello {
                version,
                node_id,
                region
            }),
            (text(), any::<bool>()).prop_map(|(room, on)| Control::Interest { room, on }),
            (
                text(),
                any::<u32>(),
                participant(),
                text(),
                any::<u8>(),
                any::<bool>(),
                text(),
                text(),
                any::<u32>(),
                (
                    any::<u8>(),
                    text(),
                    prop::collection::vec((any::<u8>(), text()), 0..3)
                ),
                prop::collection::vec(text(), 0..4)
            )
                .prop_map(
                    |(
                        room,
                        track,
                        participant,
                        origin,
                        hops,
                        video,
                        source,
                        codec,
                        clock_rate,
                        (channels, fmtp, extensions),
                        layers,
                    )| {
                        Control::TrackAnnounce {
                            room,
                            track,
                            participant,
                            origin,
                            hops,
                            kind: if video {
                                MediaKind::Video
                            } else {
                                MediaKind::Audio
                            },
                            source,
                            codec,
                            clock_rate,
                            channels,
                            fmtp,
                            extensions,
                            layers,
                        }
                    }
                ),
            (text(), any::<u32>()).prop_map(|(room, track)| Control::TrackWithdraw { room, track }),
            (any::<u32>(), any::<bool>())
                .prop_map(|(track, muted)| Control::TrackMuted { track, muted }),
            (any::<u32>(), prop::collection::vec(any::<u32>(), 0..4))
                .prop_map(|(track, bps)| Control::LayerRates { track, bps }),
            (any::<u32>(), any::<u8>())
                .prop_map(|(track, layer)| Control::Subscribe { track, layer }),
            (any::<u32>(), any::<u8>())
                .prop_map(|(track, layer)| Control::Unsubscribe { track, layer }),
            (any::<u32>(), any::<u8>())
                .prop_map(|(track, layer)| Control::KeyframeRequest { track, layer }),
            (
                any::<u32>(),
                any::<u8>(),
                prop::collection::vec(any::<u16>(), 0..64)
            )
                .prop_map(|(track, layer, seqs)| Control::Nack { track, layer, seqs }),
            (text(), participant())
                .prop_map(|(room, participant)| Control::ParticipantJoined { room, participant }),
            (text(), text()).prop_map(|(room, id)| Control::ParticipantLeft { room, id }),
            (text(), participant(), text(), any::<u64>()).prop_map(|(room, from, text, at_ms)| {
                Control::Chat {
                    room,
                    from,
                    text,
                    at_ms,
                }
            }),
            text().prop_map(|reason| Control::Goodbye { reason }),
        ]
    }

    proptest! {
        #[test]
        fn every_message_round_trips_whole_and_in_pieces(msgs in prop::collection::vec(control(), 1..8), cut in 0usize..200) {
            let mut wire = BytesMut::new();
            for m in &msgs {
                m.encode(&mut wire);
            }
            // Arriving in two pieces at any point gives the same messages.
            let cut = cut.min(wire.len());
            let mut buf = BytesMut::from(&wire[..cut]);
            let mut got = Vec::new();
            while let Some(m) = Control::decode(&mut buf).expect("valid") {
                got.push(m);
            }
            buf.extend_from_slice(&wire[cut..]);
            while let Some(m) = Control::decode(&mut buf).expect("valid") {
                got.push(m);
            }
            prop_assert_eq!(got, msgs);
            prop_assert!(buf.is_empty());
        }

        #[test]
        fn garbage_is_an_error_or_a_wait_never_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut buf = BytesMut::from(&bytes[..]);
            // Loop until the decoder waits or refuses; it must not spin or panic.
            for _ in 0..300 {
                match Control::decode(&mut buf) {
                    Ok(Some(_)) => continue,
                    Ok(None) | Err(_) => break,
                }
            }
        }

        #[test]
        fn a_corrupted_frame_never_panics(msg in control(), at in any::<usize>(), byte in any::<u8>()) {
            let mut wire = BytesMut::new();
            msg.encode(&mut wire);
            let i = at % wire.len();
            wire[i] = byte;
            let _ = Control::decode(&mut wire);
        }

        #[test]
        fn datagrams_round_trip(track in any::<u32>(), layer in any::<u8>(), rtp in prop::collection::vec(any::<u8>(), 0..1500)) {
            let d = MediaDatagram { track, layer, rtp: Bytes::from(rtp) };
            prop_assert_eq!(MediaDatagram::decode(d.clone().encode()).expect("valid"), d.clone());
            if track != FEEDBACK_HANDLE && track != PADDING_HANDLE {
                prop_assert_eq!(Datagram::decode(d.encode()).expect("valid"), Datagram::Media(d));
            }
        }

        #[test]
        fn padding_is_only_its_length(len in 0usize..1500) {
            let bytes = Datagram::padding(len);
            prop_assert_eq!(bytes.len(), len.max(DATAGRAM_HEADER));
            prop_assert_eq!(Datagram::decode(bytes), Ok(Datagram::Padding(len.max(DATAGRAM_HEADER))));
        }

        #[test]
        fn feedback_round_trips_and_nothing_else_passes_for_it(msg in control(), at in any::<usize>(), byte in any::<u8>()) {
            match Datagram::feedback(&msg) {
                Some(bytes) => {
                    prop_assert_eq!(Datagram::decode(bytes.clone()).expect("valid"), Datagram::Feedback(Box::new(msg)));
                    // Corrupt any byte: an error or some valid datagram, never a panic.
                    let mut b = bytes.to_vec();
                    let i = at % b.len();
                    b[i] = byte;
                    let _ = Datagram::decode(Bytes::from(b));
                }
                None => {
                    // A control message of another kind dressed as feedback is refused.
                    let mut b = BytesMut::new();
                    b.put_u32(FEEDBACK_HANDLE);
                    b.put_u8(0);
                    msg.encode(&mut b);
                    prop_assert_eq!(Datagram::decode(b.freeze()), Err(ProtoError::BadFeedback));
                }
            }
        }
    }

    #[test]
    fn oversized_and_short_inputs_are_refused() {
        let mut b = BytesMut::new();
        b.put_u32((MAX_FRAME + 1) as u32);
        assert_eq!(
            Control::decode(&mut b),
            Err(ProtoError::FrameTooLong(MAX_FRAME + 1))
        );
        assert_eq!(
            MediaDatagram::decode(Bytes::from_static(&[0, 0, 1])),
            Err(ProtoError::ShortDatagram)
        );
        // A frame with a byte more than its fields.
        let mut b = BytesMut::new();
        b.put_u32(4);
        b.put_u8(ty::GOODBYE);
        b.put_u16(0);
        b.put_u8(9);
        assert_eq!(Control::decode(&mut b), Err(ProtoError::Trailing(1)));
        // Unknown type.
        let mut b = BytesMut::new();
        b.put_u32(1);
        b.put_u8(200);
        assert_eq!(Control::decode(&mut b), Err(ProtoError::UnknownType(200)));
    }

    #[test]
    fn overlong_strings_are_cut_at_a_character_boundary() {
        let long = "한".repeat(MAX_STR); // 3 bytes each
        let mut b = BytesMut::new();
        Control::Goodbye { reason: long }.encode(&mut b);
        match Control::decode(&mut b) {
            Ok(Some(Control::Goodbye { reason })) => {
                assert!(reason.len() <= MAX_STR);
                assert!(reason.chars().all(|c| c == '한'));
            }
            other => panic!("{other:?}"),
        }
    }
}
