//! What crosses a relay link when its path carries less than the far side asks for.
//!
//! The link's congestion controller estimates what the path carries
//! ([`crate::relay::congestion::LinkEstimator`]); a few times a second the engine fits what it
//! sends over the link into 80% of that estimate, in this order: every audio track the far side
//! subscribed to; then the lowest subscribed layer of each video, the room's active speakers
//! first; then the higher layers, the active speakers' first. What each costs is what it puts
//! on the path: payload, each packet's headers, and for audio its second copy. A simulcast
//! video whose lowest subscribed layer does not fit keeps its lowest flowing layer even over
//! the budget (it is told that layer is open and moves there rather than stopping: a
//! thumbnail's rate against a frozen picture); a video without simulcast is held whole. A
//! subscribed layer that does not fit is *held back*: its packets are not sent. The far side
//! learns it from the `LayerRates` this node sends it, which give 0 for a held layer and for
//! any layer that would not fit on
//! top of what is sent (each open layer counted as if the far side moved to it: it may move
//! every track at once), so its subscribers' layer choice moves down at once (a stalled layer is
//! left for one that flows) and moves up again only to what the path has room for. Without an
//! estimate (no sign of a limit) nothing is held and the rates are the layers' own.
//!
//! On by default (`--relay-fit false` turns it off). Through a real 1 Mbit/s bottleneck (60 ms
//! round trip, Chromium publishing 720p simulcast, the far viewer's tile at 720p) on
//! 2026-12-02 it lost 2.0% and 5.2% of the relay datagrams with the viewer at 360p and ~19
//! frames a second; without it 55% and 63% were lost (NACK repairs of what the path dropped
//! added to what it could not carry), 2 frames a second and 4-5 s freezes. Each time the
//! estimate lets the far side try a layer that does not fit a burst is still lost.
//!
//! NACK repair over a link with an estimate has the fifth of it the media leaves, as a token
//! bucket ([`Engine::repair_fits`]); what does not fit is not resent (the far node asks again,
//! and gives up for a keyframe), so a path that dropped packets is not flooded with repairs.
//!
//! While a layer is held the link's path is *probed* ([`RelayOut::Probe`], the padding is
//! [`crate::relay::probe`]'s) for the rate that would let the far side step up once, the
//! cheapest way: a held layer, or the next layer up of a track whose wanted layer is held (with
//! three videos through 2.5 Mbit/s, probing for one video's 1.5 Mbit/s top layer always failed,
//! while another's middle layer fitted). A path that carries it raises the estimate within
//! about a second and the layer opens, and the next step is probed 200 ms later; one that does
//! not costs a short rise of its queue, and the next probe waits longer (1-2 s, doubling after
//! each further failure) and asks for less (halfway to the rate that failed, for 10 s). Once
//! what it may ask is within a tenth of a rate that failed the path is near full: the probe's
//! padding stops at the first window that shows a queue instead of the second.

use super::{LinkId, RelayOut, layer_rates};
use crate::sfu::TrackKey;
use crate::sfu::engine::Engine;
use crate::sfu::uptrack::UpTrack;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// Share of the estimate media may use (the rest: NACK repair, QUIC's own overhead, the
/// control stream, encoders overshooting a layer's rate). At 90% three publishers through a
/// 2.5 Mbit/s path kept the bottleneck's queue full and lost 2.8-3.3%; at 80%, 1.3%.
const HEADROOM: f64 = 0.8;
/// Bytes each relay datagram adds to its RTP payload on the path: the RTP header with its
/// extensions (about 30), the datagram's own header, QUIC's short header, frame header and
/// authentication tag (about 30).
const DATAGRAM_OVERHEAD: f64 = 65.0;

/// What each layer of `t` costs a link, bits per second: its RTP payload rate (as
/// [`layer_rates`] gives it, 0 for a layer not flowing) plus each packet's overhead on the
/// path, twice for audio (every packet crosses again with a later one,
/// [`super::AUDIO_COPY_AFTER`]). Audio's packets are small: counted by payload alone it costs
/// about a quarter of what it does. A layer in its first window after it stopped costs what it
/// carried before: that window is partial, and counted at its rate a 1.5 Mbit/s layer coming
/// back looked like a few hundred kbit/s that fitted.
fn wire_rates(t: &UpTrack) -> Vec<f64> {
    let copies = if t.kind == RtpCodecKind::Audio {
        2.0
    } else {
        1.0
    };
    layer_rates(t)
        .into_iter()
        .zip(&t.layers)
        .map(|(bps, l)| {
            if bps > 0.0 {
                copies * (bps.max(l.stopped_at_bps) + l.pps * DATAGRAM_OVERHEAD * 8.0)
            } else {
                0.0
            }
        })
        .collect()
}

/// The most repair a link keeps for a burst of NACKs: this long at its repair rate.
const REPAIR_BURST: Duration = Duration::from_millis(250);

/// A probe asks for this much more than the held layer needs (what a probe proves counts at
/// 95%, and layer rates move).
const PROBE_OVER: f64 = 1.1;
/// No probe starts until this long after a layer opened: the far side steps up to it with a
/// keyframe (several times a frame's size) a round trip or two later, and the new layer's rate
/// settles over a few frames; a probe's padding on top of that burst overfills a path near full,
/// and what it proves is muddled. Three publishers through 2.5 Mbit/s lost 71 datagrams in the
/// second after a probe to 2.61 Mbit/s began in the same instant as a layer opened.
const OPENED_SETTLE: Duration = Duration::from_secs(1);
/// A layer held or closed at the last fit comes back only when what is taken with it is this
/// much under the budget. Without it an estimate moving by a few percent around a layer's cost
/// opened and held that layer every 2.5-3 s through a 1 Mbit/s path: each opening a keyframe's
/// burst at the bottleneck, each closing a switch down.
const REOPEN: f64 = 1.1;
/// How long a probe pads once its rate has risen (`probe::RAMP`): the estimator's proof takes
/// five calm windows. The link's round trip is added for the acknowledgements.
const PROBE_HOLD: Duration = Duration::from_millis(500);
/// Wait after a probe that did not raise the estimate enough before the next one: this,
/// doubling after each that did not, to [`PROBE_BACKOFF_MAX`].
const PROBE_BACKOFF: Duration = Duration::from_secs(1);
const PROBE_BACKOFF_MAX: Duration = Duration::from_secs(2);
/// Wait after a probe that raised the estimate enough: the next step of the climb (back to where
/// the path was last seen to end, or past it). At 1 s, an estimate that fell to 0.5 Mbit/s
/// early in a three-publisher run (a busy machine's late acknowledgements) took 18 s of probes
/// that all worked, about 10% each, to climb back to 1.8 Mbit/s.
const PROBE_STEP_WAIT: Duration = Duration::from_millis(200);
/// How long a probe that did not raise the estimate bounds the next ones: after a failure they
/// ask for at most halfway between the estimate and the lowest rate that failed, after a
/// success for that rate (at least [`PROBE_OVER`] above the estimate), until one carried at
/// that rate or above (less a tenth, the slack of a probe's proof) shows the path widened.
/// Three publishers through 2.5 Mbit/s had the estimate at 85-98% of the path, and each probe for
/// the next layer (about 2.7 Mbit/s) overfilled the bottleneck's queue: 20-26 datagrams lost
/// in its second, every three seconds.
const PROBE_CEILING_MEMORY: Duration = Duration::from_secs(10);

/// A link's budget and what it holds back.
#[derive(Debug, Default)]
pub struct LinkBudget {
    /// The path's estimate, bits per second (`None`: no sign of a limit).
    pub estimate_bps: Option<f64>,
    /// Subscribed layers not sent.
    pub held: HashSet<(TrackKey, u8)>,
    /// Layers reported to the far side as carrying nothing: the held ones, and those that
    /// would not fit.
    pub closed: HashSet<(TrackKey, u8)>,
    /// The estimate that would let the far side step up once, the cheapest way (`None`: nothing
    /// held).
    pub next_step_bps: Option<f64>,
    /// The last probe's rate and when it ends.
    probe: Option<(f64, Instant)>,
    /// Whether the last probe stopped at a queue.
    probe_queued: bool,
    /// No probe starts before this (a layer just opened: the far side may step up).
    settle_until: Option<Instant>,
    /// Wait after the last probe that failed.
    backoff: Duration,
    /// The lowest rate a recent probe failed at, and when it last failed.
    ceiling: Option<(f64, Instant)>,
    /// Bytes of repair allowed now, and when that was worked out.
    repair: Option<(f64, Instant)>,
}

impl Engine {
    /// A link's estimate, sampled: what crosses it is fitted again, and its path probed if a
    /// layer is held.
    pub fn relay_estimate(&mut self, link: LinkId, bps: Option<f64>, now: Instant) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let moved = match (l.budget.estimate_bps, bps) {
            (Some(a), Some(b)) => (a - b).abs() > 0.1 * a,
            (a, b) => a.is_some() != b.is_some(),
        };
        if moved {
            tracing::debug!(link, peer = %l.node_id, ?bps, "relay link estimate");
        }
        l.budget.estimate_bps = bps;
        self.fit_link(link, now);
        self.probe_link(link, now);
    }

    /// Whether `bytes` of NACK repair may go over `link` now: while the link has an estimate,
    /// repair uses at most the fifth of it media leaves (a path that dropped packets is full,
    /// and repairing everything it dropped on top of the media only makes it drop more).
    pub(super) fn repair_fits(&mut self, link: LinkId, bytes: usize, now: Instant) -> bool {
        let Some(l) = self.links.get_mut(&link) else {
            return false;
        };
        let Some(estimate) = l.budget.estimate_bps.filter(|_| self.cfg.relay_fit) else {
            l.budget.repair = None;
            return true;
        };
        let rate = estimate * (1.0 - HEADROOM) / 8.0;
        let most = rate * REPAIR_BURST.as_secs_f64();
        let (tokens, at) = l.budget.repair.unwrap_or((most, now));
        let tokens = (tokens + rate * now.saturating_duration_since(at).as_secs_f64()).min(most);
        let fits = tokens >= bytes as f64;
        let left = if fits { tokens - bytes as f64 } else { tokens };
        l.budget.repair = Some((left, now));
        fits
    }

    /// Asks for a probe of `link`'s path if a layer is held and the last probe is long enough
    /// ago (see the module documentation).
    fn probe_link(&mut self, link: LinkId, now: Instant) {
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let b = &mut l.budget;
        let Some(want) = b.next_step_bps else {
            b.probe = None;
            b.backoff = PROBE_BACKOFF;
            return;
        };
        if b.settle_until.is_some_and(|t| now < t) {
            return;
        }
        let reached = b.estimate_bps.unwrap_or(f64::INFINITY);
        // What the last probe says: whether it failed, and the bound it leaves.
        let (mut failed, mut ceiling) = (false, b.ceiling);
        if let Some((asked, ended)) = b.probe {
            failed = b.probe_queued || reached < asked / PROBE_OVER;
            let wait = if failed {
                (b.backoff * 2).clamp(PROBE_BACKOFF, PROBE_BACKOFF_MAX)
            } else {
                PROBE_STEP_WAIT
            };
            ceiling = match ceiling {
                _ if failed => Some((ceiling.map_or(asked, |(c, _)| c.min(asked)), now)),
                // Carried at the ceiling (within what counts as carried) or above: the path
                // widened.
                Some((c, _)) if asked >= c / PROBE_OVER => None,
                ceiling => ceiling.filter(|(_, at)| now.duration_since(*at) < PROBE_CEILING_MEMORY),
            };
            if now < ended + wait {
                return;
            }
            b.backoff = if failed { wait } else { PROBE_BACKOFF };
        }
        let mut bps = want * PROBE_OVER;
        if let (Some((c, _)), Some(e)) = (ceiling, b.estimate_bps) {
            // After a failure halfway to the rate that failed; after a success that rate.
            let carried = b.probe.is_some() && !failed;
            let bound = if carried { c } else { (e + c) / 2.0 };
            bps = bps.min(bound.max(e * PROBE_OVER));
        }
        // Asking within a tenth of a rate that failed: the path is near full, and a second
        // window of a queue overfills it. Three publishers through 2.5 Mbit/s with the estimate
        // at 2,269 kbit/s lost 49 datagrams in the second of a probe for 2,496. (Waiting 4 s
        // instead of 2 before such a probe, tried too, found a widened path 2 s later.)
        let careful = ceiling.is_some_and(|(c, _)| bps >= c / PROBE_OVER);
        b.ceiling = ceiling;
        let len = crate::relay::probe::RAMP + PROBE_HOLD + l.rtt;
        let from_bps = b.estimate_bps.unwrap_or(0.0);
        b.probe = Some((bps, now + len));
        b.probe_queued = false;
        tracing::debug!(link, peer = %l.node_id, bps, ?reached, ceiling = ?b.ceiling.map(|(c, _)| c), careful, "relay probe");
        self.metrics
            .relay
            .probes
            .with_label_values(&[&l.node_id])
            .inc();
        self.push_out(RelayOut::Probe {
            link,
            from_bps,
            bps,
            len,
            careful,
        });
    }

    /// `link`'s last probe stopped because the path's queue grew: it failed, whatever the
    /// estimate does meanwhile (it may still grow by itself, or not yet have fallen).
    pub fn relay_probe_queued(&mut self, link: LinkId) {
        if let Some(l) = self.links.get_mut(&link) {
            l.budget.probe_queued = l.budget.probe.is_some();
        }
    }

    /// Whether `layer` of `key` is held back on `link`.
    pub(super) fn held_on(&self, link: LinkId, key: TrackKey, layer: u8) -> bool {
        self.links
            .get(&link)
            .is_some_and(|l| l.budget.held.contains(&(key, layer)))
    }

    /// Chooses what `link` holds back (see the module documentation); tells the far side the
    /// rates of each track whose open layers changed.
    pub(super) fn fit_link(&mut self, link: LinkId, now: Instant) {
        let Some(l) = self.links.get(&link) else {
            return;
        };
        let budget = l
            .budget
            .estimate_bps
            .filter(|_| self.cfg.relay_fit)
            .map(|e| e * HEADROOM);
        // Nothing to fit and nothing held (`--relay-fit` off, or no limit seen): the tracks
        // need not be walked four times a second.
        if budget.is_none() && l.budget.held.is_empty() && l.budget.closed.is_empty() {
            return;
        }
        // (rank, track, subscribed layers, every layer's rate) of each video the link takes.
        let mut videos: Vec<(usize, TrackKey, Vec<u8>, Vec<f64>)> = Vec::new();
        let mut offered: Vec<(TrackKey, Vec<f64>)> = Vec::new();
        let mut used = 0.0;
        for (&key, t) in &self.tracks {
            let mut layers: Vec<u8> = t
                .relay_subs
                .iter()
                .filter(|(on, _)| *on == link)
                .map(|(_, layer)| *layer)
                .collect();
            layers.sort_unstable();
            layers.dedup();
            let rates = wire_rates(t);
            if t.layers.len() > 1 && self.announced_to(t, link) {
                offered.push((key, rates.clone()));
            }
            if layers.is_empty() {
                continue;
            }
            if t.kind == RtpCodecKind::Audio {
                used += layers
                    .iter()
                    .filter_map(|l| rates.get(usize::from(*l)))
                    .sum::<f64>();
                continue;
            }
            let rank = self
                .rooms
                .get(&t.room)
                .and_then(|r| r.speakers.reported().iter().position(|p| *p == t.owner.id))
                .unwrap_or(usize::MAX);
            videos.push((rank, key, layers, rates));
        }
        videos.sort_by_key(|(rank, key, ..)| (*rank, *key));
        let mut held = HashSet::new();
        // What each step up the far side waits for would add: a held layer, or the first closed
        // layer of a track with a held layer above it (the far side moves up one layer at a
        // time). The cheapest is what a probe asks room for.
        let mut steps: Vec<f64> = Vec::new();
        // Lowest layers kept room for, not subscribed: a video whose subscribed layers do not
        // fit moves to one of these instead of stopping.
        let mut reserved = HashSet::new();
        // What `used` may reach with `layer` of `key` taken too.
        let was_closed = &l.budget.closed;
        let room = |key: TrackKey, layer: u8, budget: f64| {
            if was_closed.contains(&(key, layer)) {
                budget / REOPEN
            } else {
                budget
            }
        };
        if let Some(budget) = budget {
            // Takes `layer` of `key` if it fits; else holds it back.
            let fit =
                |used: &mut f64, held: &mut HashSet<_>, key: TrackKey, layer: u8, rates: &[f64]| {
                    let cost = rates.get(usize::from(layer)).copied().unwrap_or(0.0);
                    if *used + cost <= room(key, layer, budget) {
                        *used += cost;
                        None
                    } else {
                        held.insert((key, layer));
                        Some(cost)
                    }
                };
            let mut fallback = Vec::new();
            for (_, key, layers, rates) in &videos {
                if let Some(cost) = fit(&mut used, &mut held, *key, layers[0], rates) {
                    fallback.push((*key, layers[0], cost, rates));
                }
            }
            // A simulcast video whose subscribed layers do not fit keeps its lowest flowing
            // layer, even over the budget: a thumbnail's rate, where a frozen picture would
            // be the alternative (and a probe then asks for the step above). A video without
            // layers has nothing lower to fall to: it is held whole.
            for (key, lowest, cost, rates) in fallback {
                let flowing = rates
                    .iter()
                    .position(|r| *r > 0.0)
                    .and_then(|l| u8::try_from(l).ok());
                match flowing {
                    Some(layer) if rates.len() > 1 && layer < lowest => {
                        used += rates[usize::from(layer)];
                        reserved.insert((key, layer));
                        steps.push(cost);
                    }
                    Some(layer) if rates.len() > 1 && layer == lowest => {
                        used += cost;
                        held.remove(&(key, lowest));
                    }
                    _ => steps.push(cost),
                }
            }
            for (_, key, layers, rates) in &videos {
                for layer in &layers[1..] {
                    if let Some(cost) = fit(&mut used, &mut held, *key, *layer, rates) {
                        steps.push(cost);
                    }
                }
            }
        }
        // What the far side may move to: a layer it does not take is open if what it adds to
        // the track's flowing layer fits on top, counted as taken (the far side may move every
        // track at once), the active speakers' tracks first.
        let mut closed = held.clone();
        if let Some(budget) = budget {
            let rank = |key: &TrackKey| {
                videos
                    .iter()
                    .find(|(_, k, ..)| k == key)
                    .map_or(usize::MAX, |(rank, ..)| *rank)
            };
            offered.sort_by_key(|(key, _)| (rank(key), *key));
            for (key, rates) in &offered {
                let flows = |layer: u8| {
                    reserved.contains(&(*key, layer))
                        || (!held.contains(&(*key, layer))
                            && videos
                                .iter()
                                .any(|(_, k, layers, _)| k == key && layers.contains(&layer)))
                };
                // What the track uses now: its highest flowing layer.
                let mut base = (0..rates.len())
                    .filter_map(|i| u8::try_from(i).ok())
                    .filter(|l| flows(*l))
                    .map(|l| rates[usize::from(l)])
                    .fold(0.0, f64::max);
                let mut stepped = false;
                for (i, bps) in rates.iter().enumerate() {
                    let Ok(layer) = u8::try_from(i) else { break };
                    let taken = videos
                        .iter()
                        .any(|(_, k, layers, _)| k == key && layers.contains(&layer));
                    if taken || reserved.contains(&(*key, layer)) {
                        continue;
                    }
                    let adds = (bps - base).max(0.0);
                    if used + adds <= room(*key, layer, budget) {
                        used += adds;
                        base = base.max(*bps);
                    } else {
                        if !stepped && held.iter().any(|(k, l)| k == key && *l > layer) {
                            steps.push(adds);
                            stepped = true;
                        }
                        closed.insert((*key, layer));
                    }
                }
            }
        }
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let changed: HashSet<TrackKey> = l
            .budget
            .closed
            .symmetric_difference(&closed)
            .map(|(k, _)| *k)
            .collect();
        if held != l.budget.held {
            tracing::debug!(link, peer = %l.node_id, held = held.len(), ?budget, "relay layers held back");
        }
        if l.budget.closed.difference(&closed).next().is_some() {
            l.budget.settle_until = Some(now + OPENED_SETTLE);
        }
        l.budget.held = held;
        l.budget.closed = closed;
        l.budget.next_step_bps = steps
            .into_iter()
            .reduce(f64::min)
            .map(|cost| (used + cost) * REOPEN / HEADROOM);
        let (peer, count) = (l.node_id.clone(), l.budget.held.len());
        self.metrics
            .relay
            .layers_held
            .with_label_values(&[&peer])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
        let mut changed: Vec<TrackKey> = changed.into_iter().collect();
        changed.sort_unstable();
        for key in changed {
            if let Some(msg) = self.rates_for(key, link) {
                self.send_to_link(link, msg);
            }
        }
    }
}
