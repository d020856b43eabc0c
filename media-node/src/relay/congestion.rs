//! Congestion control of relay links: a fixed window.
//!
//! What crosses a relay link is already rate-controlled: publishers' encoders follow their own
//! congestion control, and a link carries only the layers someone on the far side chose. The
//! link's job is to pass it on at once. Measured alternatives on the project's machine:
//!
//! - quinn's loss-based controllers (NewReno, CUBIC) read random loss on a long path as
//!   congestion: over 80 ms RTT with 2% loss the window sat at 3-8 packets (about
//!   0.5 Mbit/s) and datagrams queued for a second; pictures froze for seconds.
//! - quinn's BBR kept the throughput but paces every packet at its delivery-rate estimate,
//!   which for an application-limited media flow is the media rate itself: each frame's burst
//!   of packets was spread out, adding 14 ms at p50 and 63 ms at p99 per hop on loopback.
//!
//! So the window is fixed and large ([`WINDOW`]): no reaction to loss (NACKs repair it, and
//! layer choices at the edges adapt the rate), and quinn's pacer, derived from window / RTT,
//! allows gigabit rates. What bounds a link is the datagram send buffer (oldest dropped) and
//! the subscribers' layer choices. This is the same stance as RTP relays between SFUs that
//! use plain UDP (no transport congestion control), with QUIC's encryption, keepalives and
//! reliable control stream on top.

use quinn::congestion::{Controller, ControllerFactory};
use std::any::Any;
use std::sync::Arc;
use std::time::Instant;

/// Bytes in flight allowed on a link: enough for 1 Gbit/s at 60 ms RTT.
pub const WINDOW: u64 = 8 * 1024 * 1024;

/// Builds [`FixedWindow`] controllers.
#[derive(Debug, Default, Clone, Copy)]
pub struct FixedWindowConfig;

impl ControllerFactory for FixedWindowConfig {
    fn build(self: Arc<Self>, _now: Instant, _current_mtu: u16) -> Box<dyn Controller> {
        Box::new(FixedWindow)
    }
}

/// A congestion controller whose window never changes (see the module documentation).
#[derive(Debug, Clone, Copy)]
pub struct FixedWindow;

impl Controller for FixedWindow {
    fn on_congestion_event(
        &mut self,
        _now: Instant,
        _sent: Instant,
        _is_persistent_congestion: bool,
        _lost_bytes: u64,
    ) {
    }

    fn on_mtu_update(&mut self, _new_mtu: u16) {}

    fn window(&self) -> u64 {
        WINDOW
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        Box::new(*self)
    }

    fn initial_window(&self) -> u64 {
        WINDOW
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}
