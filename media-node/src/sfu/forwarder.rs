//! One subscriber's view of one published track: which simulcast layer it gets, and the
//! sequence numbers and timestamps it sees.
//!
//! Packets of every layer of the publisher's track come in; the forwarder lets through only the
//! layer the subscriber is on, switches layers only at a keyframe of the new layer, and rewrites
//! sequence numbers and timestamps so that the subscriber sees one continuous stream whatever
//! layer it came from. It never reads a clock: the caller passes `now`.

use std::time::{Duration, Instant};

/// RTP clock ticks per second for video.
const VIDEO_CLOCK_HZ: u64 = 90_000;

/// What to do with one incoming packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Not for this subscriber (another layer, before a switch point, or paused).
    Drop,
    /// Send it with these header fields.
    Forward {
        /// Rewritten sequence number.
        seq: u16,
        /// Rewritten timestamp.
        timestamp: u32,
        /// True when this packet starts the layer the subscriber now receives.
        switched: bool,
    },
}

/// Sequence and timestamp rewriting plus layer gating for one down-track.
#[derive(Debug, Clone)]
pub struct Forwarder {
    /// Layer being forwarded, once a keyframe of it has been seen.
    current: Option<u8>,
    /// Layer we want; equal to `current` when no switch is pending. `None` pauses.
    target: Option<u8>,
    /// `out_seq = in_seq + seq_offset` on the current layer.
    seq_offset: u16,
    /// `out_ts = in_ts + ts_offset` on the current layer.
    ts_offset: u32,
    /// First input sequence number taken from the current layer; older ones are dropped.
    switch_seq: u16,
    last_out_seq: u16,
    last_out_ts: u32,
    last_out_at: Option<Instant>,
    /// Whether the stream is audio (no layers, no keyframes).
    is_audio: bool,
    /// When the first packet was seen while waiting for a keyframe of the target layer (the
    /// wait for a switch began then, within a packet's interval of the target being set).
    waiting_since: Option<Instant>,
    /// How long the last switch waited for its keyframe.
    last_wait: Option<Duration>,
}

/// True when `a` comes after `b` in RTP sequence space (RFC 1982 serial arithmetic).
pub fn seq_after(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

impl Forwarder {
    /// A video forwarder that wants `layer` (None = paused).
    pub fn video(layer: Option<u8>) -> Self {
        Self {
            current: None,
            target: layer,
            seq_offset: 0,
            ts_offset: 0,
            switch_seq: 0,
            last_out_seq: 0,
            last_out_ts: 0,
            last_out_at: None,
            is_audio: false,
            waiting_since: None,
            last_wait: None,
        }
    }

    /// An audio forwarder: one layer, every packet a switch point.
    pub fn audio() -> Self {
        Self {
            is_audio: true,
            ..Self::video(Some(0))
        }
    }

    /// The layer now being forwarded.
    pub fn current_layer(&self) -> Option<u8> {
        self.current
    }

    /// The layer being forwarded and the input sequence number it started at.
    pub fn started_at(&self) -> Option<(u8, u16)> {
        self.current.map(|l| (l, self.switch_seq))
    }

    /// The layer the forwarder is switching to (or staying on).
    pub fn target_layer(&self) -> Option<u8> {
        self.target
    }

    /// How long the last switch to another layer waited for its keyframe (from the first packet
    /// seen after the target changed to the keyframe that began it).
    pub fn last_switch_wait(&self) -> Option<Duration> {
        self.last_wait
    }

    /// True while waiting for a keyframe of the target layer (so a PLI is due).
    pub fn needs_keyframe(&self) -> bool {
        !self.is_audio && self.target.is_some() && self.target != self.current
    }

    /// Forwards nothing more until a keyframe of the wanted layer, as after a pause; numbering
    /// continues where it was. For a subscriber whose path was down: frames after the gap
    /// cannot be decoded without one.
    pub fn resync(&mut self) {
        if !self.is_audio {
            self.current = None;
        }
    }

    /// Asks for another layer (None pauses). Takes effect at the next keyframe of that layer.
    pub fn set_target(&mut self, layer: Option<u8>) {
        if layer != self.target {
            self.waiting_since = None;
        }
        self.target = layer;
        if layer.is_none() {
            self.current = None;
        }
    }

    /// The switch packet just let through could not be sent: wait for the next keyframe of
    /// the target layer instead of forwarding frames the subscriber cannot decode.
    pub fn undo_switch(&mut self) {
        if !self.is_audio {
            self.current = None;
        }
    }

    /// Decides about one packet of `layer` with the given header fields. `keyframe` says the
    /// packet starts a keyframe (see [`super::keyframe`]).
    pub fn on_packet(
        &mut self,
        layer: u8,
        seq: u16,
        timestamp: u32,
        keyframe: bool,
        now: Instant,
    ) -> Verdict {
        let Some(target) = self.target else {
            return Verdict::Drop;
        };
        let mut switched = false;
        if self.current == Some(target) {
            self.waiting_since = None;
        } else if self.waiting_since.is_none() {
            self.waiting_since = Some(now);
        }
        if layer == target && self.current != Some(target) && (keyframe || self.is_audio) {
            self.begin_layer(layer, seq, timestamp, now);
            self.last_wait = self
                .waiting_since
                .take()
                .map(|at| now.saturating_duration_since(at));
            switched = true;
        }
        if self.current != Some(layer) {
            return Verdict::Drop;
        }
        if !switched && seq != self.switch_seq && !seq_after(seq, self.switch_seq) {
            // A late packet from before the switch point: the subscriber never saw its frame.
            return Verdict::Drop;
        }
        let out_seq = seq.wrapping_add(self.seq_offset);
        let out_ts = timestamp.wrapping_add(self.ts_offset);
        if seq_after(out_seq, self.last_out_seq) || switched {
            self.last_out_seq = out_seq;
            self.last_out_ts = out_ts;
            self.last_out_at = Some(now);
        }
        Verdict::Forward {
            seq: out_seq,
            timestamp: out_ts,
            switched,
        }
    }

    /// Starts forwarding `layer` at this packet, continuing the output sequence and timeline.
    fn begin_layer(&mut self, layer: u8, seq: u16, timestamp: u32, now: Instant) {
        match self.last_out_at {
            None => {
                // First packet ever: pass numbers through unchanged.
                self.seq_offset = 0;
                self.ts_offset = 0;
            }
            Some(at) => {
                let next_seq = self.last_out_seq.wrapping_add(1);
                self.seq_offset = next_seq.wrapping_sub(seq);
                // Advance the output clock by the wall time since the last packet sent, at
                // least one tick, so frames stay in order and play at the right pace.
                let elapsed = now
                    .saturating_duration_since(at)
                    .min(Duration::from_secs(10));
                let ticks = (elapsed.as_micros() as u64 * VIDEO_CLOCK_HZ / 1_000_000).max(1);
                let next_ts = self.last_out_ts.wrapping_add(ticks as u32);
                self.ts_offset = next_ts.wrapping_sub(timestamp);
            }
        }
        self.current = Some(layer);
        self.switch_seq = seq;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_packet_waits_for_keyframe_then_passes_through() {
        let t0 = Instant::now();
        let mut f = Forwarder::video(Some(2));
        assert!(f.needs_keyframe());
        assert_eq!(f.on_packet(2, 100, 9000, false, t0), Verdict::Drop);
        assert_eq!(f.on_packet(1, 500, 9000, true, t0), Verdict::Drop);
        assert_eq!(
            f.on_packet(2, 101, 9000, true, t0),
            Verdict::Forward {
                seq: 101,
                timestamp: 9000,
                switched: true
            }
        );
        assert!(!f.needs_keyframe());
        assert!(matches!(
            f.on_packet(2, 102, 12000, false, t0),
            Verdict::Forward { seq: 102, .. }
        ));
    }

    #[test]
    fn layer_switch_keeps_sequence_and_time_continuous() {
        let t0 = Instant::now();
        let mut f = Forwarder::video(Some(2));
        f.on_packet(2, 1000, 50_000, true, t0);
        f.on_packet(2, 1001, 53_000, false, t0 + Duration::from_millis(33));
        f.set_target(Some(0));
        assert!(f.needs_keyframe());
        // Layer 2 keeps flowing until layer 0 has a keyframe.
        assert!(matches!(
            f.on_packet(2, 1002, 56_000, false, t0 + Duration::from_millis(66)),
            Verdict::Forward { seq: 1002, .. }
        ));
        assert_eq!(
            f.on_packet(0, 7, 1_000_000, false, t0 + Duration::from_millis(70)),
            Verdict::Drop
        );
        let v = f.on_packet(0, 8, 1_003_000, true, t0 + Duration::from_millis(99));
        assert_eq!(
            v,
            Verdict::Forward {
                seq: 1003,
                timestamp: 56_000 + 2_970,
                switched: true
            }
        );
        // It waited from the first packet after the new target (66 ms) to the keyframe.
        assert_eq!(f.last_switch_wait(), Some(Duration::from_millis(33)));
        // The old layer is now dropped; the new one continues in step.
        assert_eq!(
            f.on_packet(2, 1003, 59_000, false, t0 + Duration::from_millis(100)),
            Verdict::Drop
        );
        assert!(matches!(
            f.on_packet(0, 9, 1_006_000, false, t0 + Duration::from_millis(132)),
            Verdict::Forward {
                seq: 1004,
                timestamp: 61_970,
                ..
            }
        ));
    }

    #[test]
    fn late_packet_from_before_switch_is_dropped_and_wrap_is_handled() {
        let t0 = Instant::now();
        let mut f = Forwarder::video(Some(0));
        f.on_packet(0, 65_535, 0, true, t0);
        assert!(matches!(
            f.on_packet(0, 0, 3000, false, t0),
            Verdict::Forward { seq: 0, .. }
        ));
        assert_eq!(f.on_packet(0, 65_534, 0, false, t0), Verdict::Drop);
    }

    #[test]
    fn paused_drops_everything() {
        let t0 = Instant::now();
        let mut f = Forwarder::video(Some(0));
        f.on_packet(0, 1, 0, true, t0);
        f.set_target(None);
        assert_eq!(f.on_packet(0, 2, 0, true, t0), Verdict::Drop);
        assert!(!f.needs_keyframe());
    }

    #[test]
    fn a_resync_waits_for_a_keyframe_and_continues_the_numbering() {
        let t0 = Instant::now();
        let mut f = Forwarder::video(Some(0));
        assert!(matches!(
            f.on_packet(0, 10, 0, true, t0),
            Verdict::Forward { .. }
        ));
        let Verdict::Forward { seq: before, .. } = f.on_packet(0, 11, 3000, false, t0) else {
            panic!("forwards");
        };
        f.resync();
        assert!(f.needs_keyframe());
        assert_eq!(f.on_packet(0, 12, 6000, false, t0), Verdict::Drop);
        let Verdict::Forward { seq, .. } = f.on_packet(0, 13, 9000, true, t0) else {
            panic!("the keyframe goes out");
        };
        assert_eq!(seq, before.wrapping_add(1), "no gap in the numbering");
        assert!(!f.needs_keyframe());
    }

    #[test]
    fn audio_needs_no_keyframe() {
        let mut f = Forwarder::audio();
        assert!(!f.needs_keyframe());
        assert!(matches!(
            f.on_packet(0, 5, 960, false, Instant::now()),
            Verdict::Forward { seq: 5, .. }
        ));
    }
}
