//! moim's media node: a WebRTC selective forwarding unit.
//!
//! Browsers join rooms over WebSocket signalling (the web client at `/`), OBS and other tools
//! publish with WHIP and play with WHEP; media flows over one UDP port through the sans-I/O
//! [`sfu::engine::Engine`], driven by [`driver`]. [`http`] is the HTTP surface and [`serve`]
//! puts it all together.

pub mod config;
pub mod drain;
pub mod driver;
pub mod error;
pub mod http;
pub mod metrics;
pub mod process;
pub mod relay;
pub mod serve;
pub mod sfu;

pub use error::{Error, Result};
