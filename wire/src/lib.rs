//! Wire types that more than one moim binary speaks.
//!
//! Join tokens flow from whoever mints them (the `media-node token` command, later the
//! operator's join API) to a media node; signalling messages flow between the web client and a
//! media node over WebSocket; the status document flows from a media node to the operator. This
//! crate holds only data and pure functions: no sockets, no kube, no webrtc.

pub mod admin;
pub mod signal;
pub mod status;
pub mod token;

pub use signal::{ClientMessage, ServerMessage};
pub use token::{JoinClaims, TokenError};

/// How often a media node renews a WebSocket participant's resume token (seconds).
pub const RESUME_REFRESH_SECS: u64 = 120;

/// How long a resume token is valid (seconds): a participant whose node died can join
/// elsewhere with it for this long after its last renewal.
pub const RESUME_TTL_SECS: u64 = 600;
