//! Choosing a simulcast layer for one subscriber from the size it asked for and the congestion
//! its connection shows.
//!
//! Inputs arrive as they happen (a layer preference from signalling, a bandwidth estimate from
//! transport-wide congestion control, loss from receiver reports, per-layer bitrates measured on
//! ingress); [`LayerSelector::decide`] turns them into the layer to forward at `now`. Down-switches
//! happen at once when the link cannot carry the current layer; up-switches only after the link
//! has shown room for the higher layer for a hold time, which doubles each time an up-switch has
//! to be undone soon after (so a marginal link does not flap).

use std::time::{Duration, Instant};

/// How long the estimate must show room before an up-switch, at first.
pub const UPSWITCH_HOLD_MIN: Duration = Duration::from_secs(2);
/// The longest the up-switch hold grows to after repeated failed up-switches.
pub const UPSWITCH_HOLD_MAX: Duration = Duration::from_secs(32);
/// A down-switch this soon after an up-switch counts that up-switch as failed.
const FAILED_UPSWITCH_WINDOW: Duration = Duration::from_secs(6);
/// Loss fraction reported by the subscriber above which its link counts as congested.
pub const CONGESTED_LOSS: f32 = 0.10;
/// Head-room the estimate must have over a layer's bitrate to go up to it.
const UPSWITCH_MARGIN: f64 = 1.2;

/// Maps a rendered height to the highest useful layer of `layers` simulcast layers
/// (layers are quarter, half and full resolution of a 720p-class source, low to high).
pub fn layer_for_height(max_height: u32, layers: u8) -> Option<u8> {
    if max_height == 0 || layers == 0 {
        return None;
    }
    let top = layers - 1;
    let wanted = match max_height {
        0..=200 => 0,
        201..=400 => 1,
        _ => 2,
    };
    Some(wanted.min(top))
}

/// Per-subscriber, per-track layer decision with hysteresis.
#[derive(Debug, Clone)]
pub struct LayerSelector {
    layers: u8,
    /// Highest layer the subscriber wants for its rendered size (None = paused).
    wanted: Option<u8>,
    chosen: Option<u8>,
    /// Since when the estimate has had room for `chosen + 1`.
    room_since: Option<Instant>,
    hold: Duration,
    last_upswitch: Option<Instant>,
}

/// What the link to the subscriber looks like now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LinkState {
    /// Bits per second this track may use on the subscriber's link (its share of the
    /// congestion controller's estimate), if an estimate exists.
    pub available_bps: Option<f64>,
    /// Fraction of packets the subscriber reported lost recently (0..1).
    pub loss: f32,
}

impl LayerSelector {
    /// A selector for a track with `layers` layers, starting at the top layer the subscriber
    /// wants (browsers start on a good link; congestion brings it down within a second).
    pub fn new(layers: u8) -> Self {
        let wanted = layers.checked_sub(1);
        Self {
            layers,
            wanted,
            chosen: wanted,
            room_since: None,
            hold: UPSWITCH_HOLD_MIN,
            last_upswitch: None,
        }
    }

    /// Sets the highest layer wanted (from the rendered size); None pauses.
    pub fn set_wanted(&mut self, wanted: Option<u8>) {
        self.wanted = wanted.map(|w| w.min(self.layers.saturating_sub(1)));
    }

    /// Sets the number of layers the publisher turned out to send.
    pub fn set_layers(&mut self, layers: u8) {
        self.layers = layers.max(1);
        self.wanted = self.wanted.map(|w| w.min(self.layers - 1));
        self.chosen = self.chosen.map(|c| c.min(self.layers - 1));
    }

    /// Starts on the highest wanted layer that is flowing (`layer_bps` as for
    /// [`LayerSelector::decide`]), so a new subscriber does not wait for a layer the
    /// publisher is not sending. Without any rate known, the choice stays.
    pub fn start_on_flowing(&mut self, layer_bps: &[f64]) {
        let Some(chosen) = self.chosen else { return };
        if let Some(top) = (0..=chosen)
            .rev()
            .find(|&l| layer_bps.get(usize::from(l)).is_some_and(|b| *b > 0.0))
        {
            self.chosen = Some(top);
        }
    }

    /// The highest layer wanted (None: paused, its tile is not shown).
    pub fn wanted(&self) -> Option<u8> {
        self.wanted
    }

    /// The current choice.
    pub fn chosen(&self) -> Option<u8> {
        self.chosen
    }

    /// Decides the layer at `now`. `layer_bps[i]` is the measured bitrate of layer `i`
    /// (0 when unknown or not flowing).
    pub fn decide(&mut self, link: LinkState, layer_bps: &[f64], now: Instant) -> Option<u8> {
        let Some(wanted) = self.wanted else {
            self.chosen = None;
            return None;
        };
        let bps = |l: u8| layer_bps.get(usize::from(l)).copied().unwrap_or(0.0);
        // A publisher sends only the layers its own estimate allows (a browser starts with
        // the low ones): never wait for a layer that is not flowing while a lower one is.
        let top_flowing = (0..=wanted).rev().find(|&l| bps(l) > 0.0);
        let wanted = top_flowing.unwrap_or(wanted);
        // Once any rate is known, only layers that flow are chosen: a layer with none (held
        // back on a relay link, turned off at its publisher) would be waited for, frozen, until
        // it came back, whatever flows beside it.
        let usable = |l: u8| top_flowing.is_none() || bps(l) > 0.0;
        let fits = |l: u8| link.available_bps.is_none_or(|a| bps(l) <= a);
        // A step down from `from`: the best usable layer below it that fits, else the lowest
        // usable one below it.
        let below = |from: u8| {
            (0..from)
                .rev()
                .find(|&l| usable(l) && fits(l))
                .or_else(|| (0..from).find(|&l| usable(l)))
        };
        let current = self.chosen.unwrap_or(0).min(wanted);
        if !usable(current) {
            // The layer forwarded stopped while others flow: down at once (else the lowest
            // that flows above it), as the subscriber's picture is stalled.
            let next = below(current).or_else(|| (current..=wanted).find(|&l| usable(l)));
            self.chosen = next.or(Some(current));
            self.room_since = None;
            return self.chosen;
        }
        let congested_at =
            |l: u8| link.loss > CONGESTED_LOSS || link.available_bps.is_some_and(|a| bps(l) > a);

        let mut next = current;
        if congested_at(current) && current > 0 {
            // Step down to the best layer that fits, at once.
            next = below(current).unwrap_or(current);
            if self
                .last_upswitch
                .is_some_and(|at| now.saturating_duration_since(at) < FAILED_UPSWITCH_WINDOW)
            {
                self.hold = (self.hold * 2).min(UPSWITCH_HOLD_MAX);
            }
            self.room_since = None;
        } else if let Some(up) = (current + 1..=wanted).find(|&l| usable(l)) {
            let has_room = link.loss <= CONGESTED_LOSS / 2.0
                && link
                    .available_bps
                    .is_none_or(|a| bps(up) * UPSWITCH_MARGIN <= a);
            if has_room {
                let since = *self.room_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= self.hold {
                    next = up;
                    self.last_upswitch = Some(now);
                    self.room_since = None;
                }
            } else {
                self.room_since = None;
            }
        } else {
            self.room_since = None;
            if self
                .last_upswitch
                .is_some_and(|at| now.saturating_duration_since(at) > UPSWITCH_HOLD_MAX)
            {
                // A long stable stretch earns a quick up-switch next time.
                self.hold = UPSWITCH_HOLD_MIN;
            }
        }
        self.chosen = Some(next);
        self.chosen
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYERS: [f64; 3] = [150_000.0, 500_000.0, 1_500_000.0];

    fn link(bps: f64) -> LinkState {
        LinkState {
            available_bps: Some(bps),
            loss: 0.0,
        }
    }

    #[test]
    fn congestion_switches_down_at_once_and_up_after_hold() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(3);
        assert_eq!(s.decide(link(5e6), &LAYERS, t0), Some(2));
        // The estimate collapses to 600 kb/s: straight down to the middle layer.
        assert_eq!(s.decide(link(600e3), &LAYERS, t0), Some(1));
        // It recovers: no up-switch until the hold has passed.
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(s.decide(link(3e6), &LAYERS, t1), Some(1));
        assert_eq!(
            s.decide(link(3e6), &LAYERS, t1 + Duration::from_secs(1)),
            Some(1)
        );
        assert_eq!(
            s.decide(link(3e6), &LAYERS, t1 + UPSWITCH_HOLD_MIN),
            Some(2)
        );
    }

    #[test]
    fn loss_alone_counts_as_congestion() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(3);
        let lossy = LinkState {
            available_bps: None,
            loss: 0.2,
        };
        assert_eq!(s.decide(lossy, &LAYERS, t0), Some(1));
        assert_eq!(s.decide(lossy, &LAYERS, t0), Some(0));
        assert_eq!(s.decide(lossy, &LAYERS, t0), Some(0));
    }

    #[test]
    fn failed_upswitches_back_off() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(2);
        s.decide(link(200e3), &LAYERS, t0); // down to 0
        let mut t = t0;
        let mut holds = vec![];
        for _ in 0..3 {
            // Room appears; count how long until the up-switch.
            let start = t;
            while s.decide(link(1e6), &LAYERS, t) != Some(1) {
                t += Duration::from_millis(250);
            }
            holds.push(t - start);
            // The link cannot really carry it: down again right away.
            t += Duration::from_millis(500);
            assert_eq!(s.decide(link(200e3), &LAYERS, t), Some(0));
        }
        assert!(holds[1] > holds[0] && holds[2] > holds[1], "{holds:?}");
    }

    #[test]
    fn wanted_size_caps_layer_and_zero_pauses() {
        let t0 = Instant::now();
        let mut s = LayerSelector::new(3);
        s.set_wanted(layer_for_height(180, 3));
        assert_eq!(s.decide(link(5e6), &LAYERS, t0), Some(0));
        s.set_wanted(layer_for_height(0, 3));
        assert_eq!(s.decide(link(5e6), &LAYERS, t0), None);
        assert_eq!(layer_for_height(1080, 1), Some(0));
    }

    #[test]
    fn layers_that_are_not_flowing_are_not_waited_for() {
        let mut s = LayerSelector::new(3);
        let t = Instant::now();
        // The full layer has not started yet: take the best one that flows.
        assert_eq!(
            s.decide(link(5e6), &[150_000.0, 500_000.0, 0.0], t),
            Some(1)
        );
        // Nothing measured yet: no information, keep aiming high.
        let mut fresh = LayerSelector::new(3);
        assert_eq!(fresh.decide(link(5e6), &[0.0, 0.0, 0.0], t), Some(2));
        // Once the full layer flows, the selector climbs to it after the hold.
        let mut now = t;
        let mut chosen = Some(1);
        for _ in 0..50 {
            now += Duration::from_millis(100);
            chosen = s.decide(link(5e6), &LAYERS, now);
        }
        assert_eq!(chosen, Some(2));
    }

    #[test]
    fn a_layer_that_stops_between_flowing_ones_is_left_and_stepped_over() {
        // The middle layer is held back upstream while the full one flows (a relay link with
        // room for a layer's trickle but not for the middle one).
        let held = [150_000.0, 0.0, 1_500_000.0];
        let t = Instant::now();
        let mut s = LayerSelector::new(3);
        s.decide(link(200e3), &LAYERS, t);
        assert_eq!(s.decide(link(600e3), &LAYERS, t), Some(0));
        // With room for the full layer, the climb goes straight to it, not into the gap.
        let mut now = t;
        for _ in 0..40 {
            now += Duration::from_millis(100);
            assert_ne!(s.decide(link(5e6), &held, now), Some(1));
        }
        assert_eq!(s.chosen(), Some(2));
        // On the middle layer when it stops: down to the base layer at once, not up to wait
        // for the full one (the picture is frozen meanwhile), and not into the gap again.
        let mut s = LayerSelector::new(3);
        s.decide(link(600e3), &LAYERS, t);
        assert_eq!(s.chosen(), Some(1));
        assert_eq!(s.decide(link(5e6), &held, t), Some(0));
        // Congested on the full layer: down past the gap.
        let mut s = LayerSelector::new(3);
        assert_eq!(s.decide(link(5e6), &held, t), Some(2));
        assert_eq!(s.decide(link(600e3), &held, t), Some(0));
    }
}
