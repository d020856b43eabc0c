//! The WebSocket signalling protocol between a client and a media node.
//!
//! Every frame is one JSON object with a `type` field. The client opens the socket, sends
//! `join` with its token, and from then on the two sides exchange the messages below. Each
//! participant has two peer connections: a *publish* connection that the client offers (its
//! camera, microphone and screen) and a *subscribe* connection that the node offers (everyone
//! else's tracks plus the `chat` data channel). The node renegotiates the subscribe connection
//! whenever the set of tracks changes; it never has two offers outstanding.
//!
//! The README documents this protocol for people writing their own clients.

use serde::{Deserialize, Serialize};

/// Largest signalling frame a node accepts, in bytes. Larger frames close the socket with an
/// `error` whose code is `frame_too_large`.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// What a participant publishes a track as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TrackSource {
    /// A camera.
    #[default]
    Camera,
    /// A microphone.
    Microphone,
    /// A shared screen or window.
    Screen,
    /// Audio captured with a shared screen.
    ScreenAudio,
}

/// The client's description of one track in a publish offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedTrackInfo {
    /// The `MediaStreamTrack.id` (the second part of `a=msid`) of the track.
    pub track_id: String,
    /// What it is.
    pub source: TrackSource,
}

/// Messages the client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First message on the socket.
    Join {
        /// A join token for this node.
        token: String,
    },
    /// Offer for the publish connection (the client's own tracks).
    PublishOffer {
        /// SDP offer.
        sdp: String,
        /// What each offered track is.
        #[serde(default)]
        tracks: Vec<PublishedTrackInfo>,
    },
    /// Answer to a `subscribe_offer`.
    SubscribeAnswer {
        /// SDP answer.
        sdp: String,
    },
    /// The largest video the client wants for a track it receives; the node picks the
    /// simulcast layer from this and from the congestion it sees.
    LayerPreference {
        /// The publisher's track id as announced in `track_published`.
        track_id: String,
        /// Rendered width in CSS pixels; 0 pauses the track.
        max_width: u32,
        /// Rendered height in CSS pixels; 0 pauses the track.
        max_height: u32,
    },
    /// Last-N: receive video only from the `n` participants who spoke most recently, plus
    /// `pinned` (participant ids), whoever is speaking; the node switches as speakers change.
    /// Until anyone has spoken, the earliest publishers fill the `n`. Audio is not affected.
    /// `n: null` turns it off (every video, as tile sizes ask).
    LastN {
        /// How many recent speakers' videos to receive (at most 100); null: all.
        n: Option<u32>,
        /// Participants whose video is received whatever they do (at most 16).
        #[serde(default)]
        pinned: Vec<String>,
    },
    /// A chat message for everyone in the room (also accepted over the `chat` data channel).
    Chat {
        /// Text, at most 4 KiB.
        text: String,
    },
    /// You muted or unmuted one of your tracks (`track_id` as in your `publish_offer`):
    /// everyone in the room hears of it (`track_muted`). Muting here only tells others; stop
    /// the media yourself (`track.enabled = false` sends silence or black, with no
    /// renegotiation).
    Mute {
        /// Your track id.
        track_id: String,
        /// Muted or not.
        muted: bool,
    },
    /// Raise or lower your hand: everyone in the room on this node hears of it
    /// (`hand_raised`), and people who join later see it in `joined`. Counts against the chat
    /// rate limit.
    RaiseHand {
        /// Raised or not.
        raised: bool,
    },
    /// The client's network changed (ICE `disconnected` or `failed` while signalling is up):
    /// the node sends a `subscribe_offer` with fresh ICE credentials. The client restarts ICE
    /// on its publish connection itself (`restartIce()`, then a `publish_offer`).
    IceRestart,
    /// Leave the room; the node closes both connections.
    Leave,
}

/// A participant as other participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    /// Node-assigned id, unique in the room.
    pub id: String,
    /// Identity from the join token.
    pub identity: String,
    /// Display name from the join token.
    pub name: String,
    /// Has a hand raised (`raise_hand`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hand_raised: bool,
}

/// A published track as subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackInfo {
    /// Node-assigned id; the `a=msid` track id in the subscribe offer.
    pub track_id: String,
    /// The publishing participant's id (also the `a=msid` stream id).
    pub participant_id: String,
    /// `audio` or `video`.
    pub kind: String,
    /// What it is.
    pub source: TrackSource,
    /// Number of simulcast layers the publisher sends (1 without simulcast).
    pub layers: u8,
    /// Muted by its publisher (a muted microphone, a camera turned off): show it so.
    #[serde(default)]
    pub muted: bool,
}

/// Messages the node sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The join succeeded.
    Joined {
        /// This participant's id.
        participant_id: String,
        /// The room.
        room: String,
        /// Everyone else already in the room.
        participants: Vec<ParticipantInfo>,
        /// Tracks already published.
        tracks: Vec<TrackInfo>,
        /// What this participant may do.
        can_publish: bool,
        /// What this participant may do.
        can_subscribe: bool,
        /// What this participant may do (chat sent without it is refused, `forbidden`).
        #[serde(default = "crate::token::yes")]
        can_chat: bool,
    },
    /// Answer for the publish connection.
    PublishAnswer {
        /// SDP answer.
        sdp: String,
    },
    /// Offer (or re-offer) for the subscribe connection.
    SubscribeOffer {
        /// SDP offer.
        sdp: String,
    },
    /// Someone joined.
    ParticipantJoined {
        /// Who.
        participant: ParticipantInfo,
    },
    /// Someone left.
    ParticipantLeft {
        /// Their id.
        participant_id: String,
    },
    /// Several left at once (a relay link to their node went down): one message instead of
    /// one per participant, so that a large far side leaving does not overflow anyone's outbox.
    ParticipantsLeft {
        /// Their ids.
        participant_ids: Vec<String>,
    },
    /// A track became available.
    TrackPublished {
        /// The track.
        track: TrackInfo,
    },
    /// A track was muted or unmuted by its publisher.
    TrackMuted {
        /// The track (node-assigned id, as in `track_published`).
        track_id: String,
        /// Its publisher.
        participant_id: String,
        /// Muted or not.
        muted: bool,
    },
    /// Dynacast: send layers of your track `track_id` (your own `MediaStreamTrack.id`) up to
    /// `max_layer` (0 = the lowest simulcast encoding, `q`), none when it is null: nobody
    /// wants more. Encodings above it can be made inactive; a later message raises it again.
    PublishLayers {
        /// The publisher's own track id, as in its `publish_offer`.
        track_id: String,
        /// Highest layer wanted; `null`: the track is not watched.
        max_layer: Option<u8>,
    },
    /// A participant raised or lowered a hand.
    HandRaised {
        /// Who.
        participant_id: String,
        /// Raised or not.
        raised: bool,
    },
    /// A track went away.
    TrackUnpublished {
        /// Its id.
        track_id: String,
    },
    /// Several tracks went away at once (see [`ServerMessage::ParticipantsLeft`]).
    TracksUnpublished {
        /// Their ids.
        track_ids: Vec<String>,
    },
    /// Who is speaking, loudest first (at most three).
    ActiveSpeakers {
        /// Participant ids.
        participant_ids: Vec<String>,
    },
    /// A chat message.
    Chat {
        /// Sender's participant id.
        from: String,
        /// Sender's display name.
        name: String,
        /// Text.
        text: String,
        /// Milliseconds since the Unix epoch, node clock.
        ts_ms: u64,
    },
    /// Something went wrong. `code` is stable for programs; `message` is for people.
    Error {
        /// A stable snake_case code.
        code: String,
        /// What happened.
        message: String,
    },
    /// How to get back into the meeting if this node stops answering; sent after `joined` and
    /// again every [`crate::RESUME_REFRESH_SECS`] seconds (the token is renewed each time).
    Resume {
        /// A join token for this participant and room, valid on every node of the deployment
        /// until `expires_at`: joining again with it keeps who they are and what they may do.
        token: String,
        /// Expiry of `token`, seconds since the Unix epoch.
        expires_at: u64,
        /// This node's region (send it with a rejoin request).
        region: String,
        /// The meeting's other nodes, nearest first: join there with `token`.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        fallback_urls: Vec<String>,
        /// Ask here which node to join (`POST`, `Authorization: Bearer <token>`, body
        /// `{"region": ..., "unreachable": [urls tried]}`); answers like the join API.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rejoin_url: Option<String>,
    },
    /// The node is draining: reconnect to `url` if given, else keep going until it closes.
    Draining {
        /// Where to reconnect, when the node knows.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        url: Option<String>,
    },
}

/// A chat message as carried on the `chat` data channel, both ways. From the client only
/// `text` is read; the node fills the rest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatFrame {
    /// Sender's participant id (set by the node).
    #[serde(default)]
    pub from: String,
    /// Sender's display name (set by the node).
    #[serde(default)]
    pub name: String,
    /// Text, at most 4 KiB.
    pub text: String,
    /// Milliseconds since the Unix epoch, node clock (set by the node).
    #[serde(default)]
    pub ts_ms: u64,
}

/// Longest chat text accepted, in bytes.
pub const MAX_CHAT_BYTES: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages_use_snake_case_tags() {
        let m: ClientMessage =
            serde_json::from_str(r#"{"type":"publish_offer","sdp":"v=0"}"#).expect("parses");
        assert_eq!(
            m,
            ClientMessage::PublishOffer {
                sdp: "v=0".into(),
                tracks: vec![]
            }
        );
        let s = serde_json::to_string(&ServerMessage::ActiveSpeakers {
            participant_ids: vec!["p1".into()],
        })
        .expect("serializes");
        assert_eq!(s, r#"{"type":"active_speakers","participant_ids":["p1"]}"#);
    }

    #[test]
    fn unknown_type_is_an_error_not_a_panic() {
        assert!(serde_json::from_str::<ClientMessage>(r#"{"type":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<ClientMessage>("[1,2").is_err());
    }
}
