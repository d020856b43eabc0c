//! What crosses a relay link when its path carries less than the far side asks for.
//!
//! The link's congestion controller estimates what the path carries
//! ([`crate::relay::congestion::LinkEstimator`]); a few times a second the engine fits what it
//! sends over the link into 90% of that estimate, in this order: every audio track the far side
//! subscribed to; then the lowest subscribed layer of each video, the room's active speakers
//! first; then the higher layers, the active speakers' first. A subscribed layer that does not
//! fit is *held back*: its packets are not sent. The far side learns it from the `LayerRates`
//! this node sends it, which give 0 for a held layer and for any layer that would not fit on
//! top of what is sent, so its subscribers' layer choice moves down at once (a stalled layer is
//! left for one that flows) and moves up again only to what the path has room for. Without an
//! estimate (no sign of a limit) nothing is held and the rates are the layers' own.
//!
//! On by default (`--relay-fit false` turns it off). Through a real 1 Mbit/s bottleneck (60 ms
//! round trip, Chromium publishing 720p simulcast, the far viewer's tile at 720p) on
//! 2026-12-02 it lost 2.0% and 5.2% of the relay datagrams with the viewer at 360p and ~19
//! frames a second; without it 55% and 63% were lost (NACK repairs of what the path dropped
//! added to what it could not carry), 2 frames a second and 4-5 s freezes. Each time the
//! estimate lets the far side try a layer that does not fit a burst is still lost (padding
//! probes would test the path first).

use super::{LinkId, layer_rates};
use crate::sfu::TrackKey;
use crate::sfu::engine::Engine;
use rtc::rtp_transceiver::rtp_sender::RtpCodecKind;
use std::collections::HashSet;

/// Share of the estimate media may use (the rest: NACK repair, QUIC's own overhead, the
/// control stream).
const HEADROOM: f64 = 0.9;

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
}

impl Engine {
    /// A link's estimate, sampled: what crosses it is fitted again.
    pub fn relay_estimate(&mut self, link: LinkId, bps: Option<f64>) {
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
        self.fit_link(link);
    }

    /// Whether `layer` of `key` is held back on `link`.
    pub(super) fn held_on(&self, link: LinkId, key: TrackKey, layer: u8) -> bool {
        self.links
            .get(&link)
            .is_some_and(|l| l.budget.held.contains(&(key, layer)))
    }

    /// Chooses what `link` holds back (see the module documentation); tells the far side the
    /// rates of each track whose open layers changed.
    pub(super) fn fit_link(&mut self, link: LinkId) {
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
            let rates = layer_rates(t);
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
        if let Some(budget) = budget {
            let mut fit = |key: TrackKey, layer: u8, rates: &[f64]| {
                let cost = rates.get(usize::from(layer)).copied().unwrap_or(0.0);
                if used + cost <= budget {
                    used += cost;
                } else {
                    held.insert((key, layer));
                }
            };
            for (_, key, layers, rates) in &videos {
                fit(*key, layers[0], rates);
            }
            for (_, key, layers, rates) in &videos {
                for layer in &layers[1..] {
                    fit(*key, *layer, rates);
                }
            }
        }
        // What the far side may move to: a layer it does not take is open if it fits on top.
        let mut closed = held.clone();
        if let Some(budget) = budget {
            for (key, rates) in &offered {
                for (i, bps) in rates.iter().enumerate() {
                    let Ok(layer) = u8::try_from(i) else { break };
                    let taken = videos
                        .iter()
                        .any(|(_, k, layers, _)| k == key && layers.contains(&layer));
                    if !taken && used + bps > budget {
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
        l.budget.held = held;
        l.budget.closed = closed;
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
