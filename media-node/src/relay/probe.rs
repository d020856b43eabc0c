//! Probing a relay link's path: padding on top of the media, to learn whether it carries more.
//!
//! The link's estimate ([`super::congestion::LinkEstimator`]) learns a path's limit by seeing
//! its queue build. Once the engine holds layers back to fit the estimate, the link sends less
//! than the path's limit and nothing shows when the path widens (or that the estimate was
//! low): grown a few percent a window from what was delivered, a held layer came back after
//! 10 s or more. So while a layer is held the engine asks for a probe now and then
//! ([`crate::sfu::engine::cascade::RelayOut::Probe`]): for about a second this task adds padding datagrams
//! ([`Datagram::padding`], dropped unread by the far node) until all the link sends reaches the
//! rate the held layer needs, rising from the estimate (what the path is known to carry) to
//! that rate over 600 ms and staying there. If the path carries it without a queue, the
//! estimator's calm windows raise the estimate to what was delivered and the engine opens the
//! layer. If a queue shows (the estimator's queue delay passes 20 ms in two windows, or in one
//! for a *careful* probe, near a rate that failed) the padding stops at once
//! and the estimate falls as for any congestion: only padding was beyond the media, and it
//! rose gently, so little more than the queue's growth is lost.

use super::congestion::{OVERUSE_DELAY, path_of};
use super::proto::{DATAGRAM_HEADER, Datagram};
use prometheus::IntCounter;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// A probe the engine asked for: everything the link sends rises from `from_bps` to `bps` and
/// stays there until `until`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProbeRequest {
    /// Bits per second the probe starts at.
    pub from_bps: f64,
    /// Bits per second, media and padding together.
    pub bps: f64,
    /// When the probe ends.
    pub until: Instant,
    /// Stop at the first window that shows a queue over [`OVERUSE_DELAY`], not one that lasted
    /// two (the engine asks this within a tenth of a rate that failed recently: the path is
    /// near full, and the second window of a queue overfills it; a false stop on one window of
    /// scheduling noise costs only this probe).
    pub careful: bool,
}

/// How often the padding is topped up.
const TICK: Duration = Duration::from_millis(5);
/// How long the rate takes to rise to the target.
pub const RAMP: Duration = Duration::from_millis(600);
/// Bytes of a padding datagram (at most; the path's datagram size bounds it).
const PADDING_SIZE: usize = 1000;
/// The most padding sent at once: this long at the target rate (the rest evens out).
const MOST_AHEAD: Duration = Duration::from_millis(20);
/// Padding waits while QUIC's datagram buffer has less room than this many padding datagrams
/// (the buffer drops its oldest when full, and those must never be media).
const BUFFER_ROOM: usize = 8;

/// Runs the probes `requests` asks for on `conn` until the link closes; counts the padding
/// bytes sent in `padding`, and calls `queued` when a probe stops because the path's queue grew.
pub async fn run(
    conn: quinn::Connection,
    mut requests: watch::Receiver<Option<ProbeRequest>>,
    padding: IntCounter,
    queued: impl Fn(),
) {
    while requests.changed().await.is_ok() {
        let Some(req) = *requests.borrow_and_update() else {
            continue;
        };
        let ended = probe(&conn, req, &requests, &padding).await;
        tracing::debug!(bps = req.bps, ?ended, "relay probe over");
        if ended == Ended::Queue {
            queued();
        }
    }
}

/// Why a probe ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// Its time was up.
    Done,
    /// The path's queue grew.
    Queue,
    /// Another request replaced it (or the engine went away).
    Replaced,
    /// The link takes no datagrams.
    Closed,
}

async fn probe(
    conn: &quinn::Connection,
    req: ProbeRequest,
    requests: &watch::Receiver<Option<ProbeRequest>>,
    padding: &IntCounter,
) -> Ended {
    let start = Instant::now();
    let mut last = start;
    let mut last_tx = conn.stats().udp_tx.bytes;
    // Bytes owed to the target rate (negative: sent ahead of it).
    let mut owed = 0.0f64;
    // Padding sent that `udp_tx` does not show yet (QUIC sends it from its own task).
    let mut unseen = 0u64;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now >= req.until {
            return Ended::Done;
        }
        if requests.has_changed().unwrap_or(true) {
            return Ended::Replaced;
        }
        let path = path_of(conn);
        let queue = if req.careful {
            path.window_queue
        } else {
            path.queue
        };
        if queue.is_some_and(|q| q > OVERUSE_DELAY) {
            return Ended::Queue;
        }
        let Some(size) = conn
            .max_datagram_size()
            .map(|m| m.min(PADDING_SIZE))
            .filter(|m| *m > DATAGRAM_HEADER)
        else {
            return Ended::Closed;
        };
        let rising = now.duration_since(start).as_secs_f64() / RAMP.as_secs_f64();
        let from = req.from_bps.min(req.bps);
        let rate = from + (req.bps - from) * rising.min(1.0);
        let tx = conn.stats().udp_tx.bytes;
        let sent = tx.saturating_sub(last_tx);
        let seen = sent.min(unseen);
        unseen -= seen;
        let media = sent - seen;
        last_tx = tx;
        let ahead = rate * MOST_AHEAD.as_secs_f64() / 8.0;
        owed = (owed + rate * now.duration_since(last).as_secs_f64() / 8.0 - media as f64)
            .clamp(-ahead, ahead);
        last = now;
        while owed >= size as f64 && conn.datagram_send_buffer_space() >= BUFFER_ROOM * size {
            if conn.send_datagram(Datagram::padding(size)).is_err() {
                return Ended::Closed;
            }
            owed -= size as f64;
            unseen += size as u64;
            padding.inc_by(size as u64);
        }
    }
}
