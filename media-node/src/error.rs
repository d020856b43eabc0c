//! The media node's error type, and how each error reads to an HTTP or signalling client.

use moim_wire::TokenError;

/// Everything that can go wrong in the media node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The SDP could not be parsed or negotiated.
    #[error("invalid sdp: {0}")]
    Sdp(String),
    /// No token, or a token that does not verify.
    #[error("unauthorized: {0}")]
    Token(#[from] TokenError),
    /// The request needs a bearer token and has none.
    #[error("unauthorized: missing bearer token")]
    MissingToken,
    /// The token does not grant this.
    #[error("forbidden: {0}")]
    Forbidden(&'static str),
    /// WHEP for a room where nobody publishes.
    #[error("room {0:?} has no publisher")]
    NoPublisher(String),
    /// No such session or resource.
    #[error("not found")]
    NotFound,
    /// The node is draining and takes no new rooms.
    #[error("node is draining: no new rooms")]
    Draining,
    /// The room has as many participants as it may.
    #[error("room is full")]
    RoomFull,
    /// The node has as many rooms or sessions as it may.
    #[error("node is at capacity")]
    AtCapacity,
    /// The node holds as many of something as it may (says what).
    #[error("node is at capacity: {0}")]
    AtCapacityFor(&'static str),
    /// The request is malformed in some other way.
    #[error("bad request: {0}")]
    BadRequest(String),

    /// The viewer's offer does not accept the publisher's codec (an SFU does not transcode).
    #[error("unsupported codec: the publisher sends {0}, which the offer does not accept")]
    UnsupportedCodec(String),
    /// The WebRTC stack refused an operation.
    #[error("webrtc: {0}")]
    Rtc(String),
    /// WHEP of a room not here yet: linked nodes were asked for it; try again shortly.
    #[error("the room's publisher is being looked up on linked nodes")]
    RelayPending,
    /// The client sends something faster than it may (chat); what is over the limit is dropped.
    #[error("rate limited: {0}")]
    RateLimited(&'static str),
    /// The engine is gone or overloaded.
    #[error("media engine unavailable")]
    EngineUnavailable,
    /// Socket or file I/O.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with the media node's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// HTTP status for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Sdp(_) | Self::BadRequest(_) => 400,
            Self::UnsupportedCodec(_) => 406,
            Self::Token(_) | Self::MissingToken => 401,
            Self::Forbidden(_) => 403,
            Self::NoPublisher(_) | Self::NotFound | Self::RelayPending => 404,
            Self::RoomFull => 409,
            Self::RateLimited(_) => 429,
            Self::Draining
            | Self::AtCapacity
            | Self::AtCapacityFor(_)
            | Self::EngineUnavailable => 503,
            Self::Rtc(_) | Self::Io(_) => 500,
        }
    }

    /// A stable snake_case code for signalling `error` messages.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Sdp(_) => "invalid_sdp",
            Self::UnsupportedCodec(_) => "unsupported_codec",
            Self::Token(_) | Self::MissingToken => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NoPublisher(_) | Self::RelayPending => "no_publisher",
            Self::NotFound => "not_found",
            Self::Draining => "draining",
            Self::RoomFull => "room_full",
            Self::AtCapacity | Self::AtCapacityFor(_) => "at_capacity",
            Self::RateLimited(_) => "rate_limited",
            Self::BadRequest(_) => "bad_request",
            Self::Rtc(_) => "webrtc_error",
            Self::EngineUnavailable => "unavailable",
            Self::Io(_) => "io_error",
        }
    }

    pub(crate) fn rtc(e: impl std::fmt::Display) -> Self {
        Self::Rtc(e.to_string())
    }
}
