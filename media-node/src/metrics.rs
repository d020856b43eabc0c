//! Prometheus metrics of a media node, served as text at `/metrics`.
//!
//! Every name starts with `moim_`, counters end in `_total`, units are base units (bytes,
//! seconds). No label carries a room, participant or track id: cardinality stays fixed however
//! many meetings a node hosts.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// All metrics of one media node.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Rooms with at least one participant.
    pub rooms: IntGauge,
    /// Connected participants (all session kinds).
    pub participants: IntGauge,
    /// Tracks received from publishers.
    pub published_tracks: IntGauge,
    /// Streams sent to subscribers.
    pub forwarded_streams: IntGauge,
    /// RTP packets received from publishers.
    pub packets_in: IntCounter,
    /// RTP packets sent to subscribers.
    pub packets_out: IntCounter,
    /// RTP payload bytes received from publishers.
    pub bytes_in: IntCounter,
    /// RTP payload bytes sent to subscribers.
    pub bytes_out: IntCounter,
    /// NACKs received from subscribers.
    pub nacks: IntCounter,
    /// Packets resent to subscribers that NACKed them.
    pub retransmits: IntCounter,
    /// NACKed packets not resent: resent too recently, or over the down-track's resend budget.
    pub retransmits_refused: IntCounter,
    /// Chat messages dropped by a sender's rate limit.
    pub chat_refused: IntCounter,
    /// Signalling messages not queued because the engine's signal queue was full.
    pub signals_dropped: IntCounter,
    /// `publish_layers` messages sent (dynacast: a publisher told to send more or fewer layers).
    pub dynacast_updates: IntCounter,
    /// Chat messages not delivered to a participant whose chat channel was backlogged.
    pub chat_undelivered: IntCounter,
    /// Publish offers and ICE restarts refused by a participant's rate limit.
    pub negotiations_refused: IntCounter,
    /// ICE restarts (a participant's network changed).
    pub ice_restarts: IntCounter,
    /// Keyframe requests (PLI) sent to publishers.
    pub plis: IntCounter,
    /// Simulcast layer switches.
    pub layer_switches: IntCounter,
    /// How long each layer switch waited for a keyframe of the new layer.
    pub layer_switch_wait_seconds: Histogram,
    /// Time from a join to the first media packet sent to that participant.
    pub join_seconds: Histogram,
    /// Sessions refused, by reason.
    pub rejected: IntCounterVec,
    /// UDP datagrams that matched no session.
    pub unmatched_datagrams: IntCounter,
    /// Chat messages relayed.
    pub chat_messages: IntCounter,
    /// 1 while draining.
    pub draining: IntGauge,
    /// Relay links up.
    pub relay_links: IntGauge,
    /// RTP packets received over relay links.
    pub relay_packets_in: IntCounter,
    /// RTP packets sent over relay links.
    pub relay_packets_out: IntCounter,
    /// RTP bytes sent over relay links (what the link's UDP bytes are the overhead of).
    pub relay_rtp_bytes_out: IntCounter,
    /// Relay messages or datagrams dropped because the relay queue was full.
    pub relay_dropped: IntCounter,
    /// Relay datagrams that did not parse.
    pub relay_bad_datagrams: IntCounter,
    /// Audio packets sent over a relay link a second time (loss protection).
    pub relay_audio_copies: IntCounter,
    /// Relayed packets that arrived again (audio's copy, a crossed retransmission), dropped.
    pub relay_copies_dropped: IntCounter,
    /// Relay datagrams larger than the path then carried, sent in fragments.
    pub relay_split_datagrams: IntCounter,
    /// Relay datagrams QUIC refused (the peer takes none, or too small a path to split for).
    pub relay_refused_datagrams: IntCounter,
    /// Relay certificates reloaded from changed files.
    pub relay_tls_reloads: IntCounter,
    /// NACKs sent over relay links (gaps seen in relayed streams).
    pub relay_nacks: IntCounter,
    /// Datagrams sent again over relay links because the far node NACKed them.
    pub relay_retransmits: IntCounter,
    /// Datagrams a NACK asked for that were not sent again: the link's repair allowance (the
    /// fifth of its estimate media leaves) was spent.
    pub relay_repairs_skipped: IntCounter,
    /// Per relay link (label `peer`, the far node's id: bounded by the fleet's size).
    pub relay: RelayLinkMetrics,
}

/// Metrics of each relay link, labelled by the far node's id.
#[derive(Clone)]
pub struct RelayLinkMetrics {
    /// Round-trip time QUIC measures.
    pub rtt_seconds: prometheus::GaugeVec,
    /// Packets QUIC declared lost.
    pub lost_packets: IntCounterVec,
    /// Bytes sent over the link (all of QUIC: media, control, acks).
    pub sent_bytes: IntCounterVec,
    /// Bytes received over the link.
    pub received_bytes: IntCounterVec,
    /// Times the link was (re-)established.
    pub connects: IntCounterVec,
    /// Tracks the far node announced on the link.
    pub streams: IntGaugeVec,
    /// What the link's path carries, as estimated from QUIC's acknowledgements.
    pub estimate_bps: prometheus::GaugeVec,
    /// Queueing delay over the path's base round trip.
    pub queue_delay_seconds: prometheus::GaugeVec,
    /// Layers the far node subscribed to that this node holds back (they do not fit).
    pub layers_held: IntGaugeVec,
    /// Probes of the link's path (padding to learn whether a held layer fits).
    pub probes: IntCounterVec,
    /// Padding bytes the probes sent.
    pub padding_bytes: IntCounterVec,
}

impl Metrics {
    /// Creates and registers every metric.
    // Metric construction fails only on invalid names and registration only on duplicates;
    // this fixed list has neither, so the unwraps cannot fire.
    #[allow(clippy::unwrap_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        // Registration only fails on duplicate names, which this fixed list does not have.
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m;
                registry.register(Box::new(m.clone())).unwrap();
                m
            }};
        }
        macro_rules! gauge {
            ($name:literal, $help:literal) => {
                reg!(IntGauge::new($name, $help).unwrap())
            };
        }
        macro_rules! counter {
            ($name:literal, $help:literal) => {
                reg!(IntCounter::new($name, $help).unwrap())
            };
        }
        let join_seconds = reg!(
            Histogram::with_opts(
                HistogramOpts::new(
                    "moim_join_seconds",
                    "Seconds from a join request to the first media packet sent to the joiner."
                )
                .buckets(vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0])
            )
            .unwrap()
        );
        let layer_switch_wait_seconds = reg!(
            Histogram::with_opts(
                HistogramOpts::new(
                    "moim_layer_switch_wait_seconds",
                    "Seconds each simulcast layer switch waited for a keyframe of the new layer \
                     (the old layer is forwarded meanwhile, unless it stopped)."
                )
                .buckets(vec![0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0])
            )
            .unwrap()
        );
        let rejected = reg!(
            IntCounterVec::new(
                Opts::new(
                    "moim_sessions_rejected_total",
                    "Join, WHIP and WHEP requests refused, by reason."
                ),
                &["reason"]
            )
            .unwrap()
        );
        Self {
            rooms: gauge!("moim_rooms", "Rooms with at least one participant."),
            participants: gauge!("moim_participants", "Connected participants."),
            published_tracks: gauge!("moim_published_tracks", "Tracks received from publishers."),
            forwarded_streams: gauge!(
                "moim_forwarded_streams",
                "Streams sent to subscribers (one per subscriber per track)."
            ),
            packets_in: counter!(
                "moim_rtp_packets_received_total",
                "RTP packets received from publishers."
            ),
            packets_out: counter!(
                "moim_rtp_packets_sent_total",
                "RTP packets sent to subscribers."
            ),
            bytes_in: counter!(
                "moim_rtp_received_bytes_total",
                "RTP payload bytes received from publishers."
            ),
            bytes_out: counter!(
                "moim_rtp_sent_bytes_total",
                "RTP payload bytes sent to subscribers."
            ),
            nacks: counter!(
                "moim_nacks_received_total",
                "NACK feedback packets received from subscribers."
            ),
            retransmits: counter!(
                "moim_retransmits_total",
                "RTP packets resent to subscribers that reported them lost (NACK), as RTX when negotiated."
            ),
            chat_refused: counter!(
                "moim_chat_refused_total",
                "Chat messages dropped because their sender went over 5 a second (bursts of 10)."
            ),
            signals_dropped: counter!(
                "moim_signals_dropped_total",
                "Signalling messages not queued because 65,536 were waiting in one turn (an active-speaker report is dropped; for anything else its session is closed so it rejoins whole)."
            ),
            dynacast_updates: counter!(
                "moim_dynacast_updates_total",
                "Publishers told to send more or fewer simulcast layers of a track, or none (dynacast: only what some subscriber wants is sent)."
            ),
            chat_undelivered: counter!(
                "moim_chat_undelivered_total",
                "Chat messages not delivered to a participant whose chat data channel would have held over 256 KiB unacknowledged."
            ),
            negotiations_refused: counter!(
                "moim_negotiations_refused_total",
                "Publish offers and ICE restarts refused because their participant went over 1 a second (bursts of 10)."
            ),
            retransmits_refused: counter!(
                "moim_retransmits_refused_total",
                "NACKed packets not resent: resent within the last 40 ms, or over the down-track's resend budget (half its forwarded bytes)."
            ),
            ice_restarts: counter!(
                "moim_ice_restarts_total",
                "ICE restarts of participants' connections (their network changed; same node, no new join)."
            ),
            plis: counter!(
                "moim_plis_sent_total",
                "Keyframe requests (PLI) sent to publishers."
            ),
            layer_switches: counter!(
                "moim_layer_switches_total",
                "Simulcast layer switches made for subscribers."
            ),
            layer_switch_wait_seconds,
            join_seconds,
            rejected,
            unmatched_datagrams: counter!(
                "moim_unmatched_datagrams_total",
                "UDP datagrams that matched no session and were dropped."
            ),
            chat_messages: counter!("moim_chat_messages_total", "Chat messages relayed."),
            draining: gauge!("moim_draining", "1 while the node is draining."),
            relay_links: gauge!(
                "moim_relay_links",
                "Relay links to other media nodes that are up."
            ),
            relay_packets_in: counter!(
                "moim_relay_packets_received_total",
                "RTP packets received over relay links."
            ),
            relay_packets_out: counter!(
                "moim_relay_packets_sent_total",
                "RTP packets sent over relay links."
            ),
            relay_rtp_bytes_out: counter!(
                "moim_relay_rtp_bytes_sent_total",
                "RTP bytes sent over relay links (before datagram and QUIC framing)."
            ),
            relay_dropped: counter!(
                "moim_relay_dropped_total",
                "Relay messages or datagrams dropped because the relay queue was full."
            ),
            relay_bad_datagrams: counter!(
                "moim_relay_bad_datagrams_total",
                "Relay datagrams that did not parse."
            ),
            relay_audio_copies: counter!(
                "moim_relay_audio_copies_total",
                "Audio packets sent over relay links a second time, 40 ms after the first, so a burst of loss rarely takes both."
            ),
            relay_copies_dropped: counter!(
                "moim_relay_copies_dropped_total",
                "Relayed packets that arrived again (the second copy of audio, a retransmission that crossed its original) and were not passed on."
            ),
            relay_split_datagrams: counter!(
                "moim_relay_split_datagrams_total",
                "Relay datagrams larger than the path then carried, sent in fragments."
            ),
            relay_refused_datagrams: counter!(
                "moim_relay_refused_datagrams_total",
                "Relay datagrams QUIC refused (too large even to split, or no datagram support)."
            ),
            relay_tls_reloads: counter!(
                "moim_relay_tls_reloads_total",
                "Times the relay certificate, key or CA files changed and were loaded for new links."
            ),
            relay_nacks: counter!(
                "moim_relay_nacks_sent_total",
                "NACKs sent over relay links for gaps in relayed streams."
            ),
            relay_retransmits: counter!(
                "moim_relay_retransmits_total",
                "Datagrams sent again over relay links on a NACK."
            ),
            relay_repairs_skipped: counter!(
                "moim_relay_repairs_skipped_total",
                "Datagrams a relay NACK asked for that were not sent again because the link's repair allowance (the fifth of its estimate media leaves) was spent."
            ),
            relay: RelayLinkMetrics {
                rtt_seconds: reg!(
                    prometheus::GaugeVec::new(
                        Opts::new("moim_relay_rtt_seconds", "Round-trip time of a relay link."),
                        &["peer"]
                    )
                    .unwrap()
                ),
                lost_packets: reg!(
                    IntCounterVec::new(
                        Opts::new(
                            "moim_relay_lost_packets_total",
                            "QUIC packets lost on a relay link."
                        ),
                        &["peer"]
                    )
                    .unwrap()
                ),
                sent_bytes: reg!(
                    IntCounterVec::new(
                        Opts::new("moim_relay_sent_bytes_total", "Bytes sent on a relay link."),
                        &["peer"]
                    )
                    .unwrap()
                ),
                received_bytes: reg!(
                    IntCounterVec::new(
                        Opts::new(
                            "moim_relay_received_bytes_total",
                            "Bytes received on a relay link."
                        ),
                        &["peer"]
                    )
                    .unwrap()
                ),
                connects: reg!(
                    IntCounterVec::new(
                        Opts::new(
                            "moim_relay_connects_total",
                            "Times a relay link was established (more than one is a reconnect)."
                        ),
                        &["peer"]
                    )
                    .unwrap()
                ),
                streams: reg!(
                    IntGaugeVec::new(
                        Opts::new(
                            "moim_relay_streams",
                            "Tracks the far node offers on a relay link."
                        ),
                        &["peer"]
                    )
                    .unwrap()
                ),
                estimate_bps: reg!(
                    prometheus::GaugeVec::new(
                        Opts::new(
                            "moim_relay_estimate_bps",
                            "What a relay link's path carries, bits per second, as estimated from QUIC acknowledgements (0: no limit seen)."
                        ),
                        &["peer"]
                    )
                    .unwrap()
                ),
                queue_delay_seconds: reg!(
                    prometheus::GaugeVec::new(
                        Opts::new(
                            "moim_relay_queue_delay_seconds",
                            "How far a relay link's round trips run above its path's base (the shortest of the last 10-20 s): the queue at its bottleneck. The link estimate falls when it passes 20 ms."
                        ),
                        &["peer"]
                    )
                    .unwrap()
                ),
                layers_held: reg!(
                    IntGaugeVec::new(
                        Opts::new(
                            "moim_relay_layers_held",
                            "Simulcast layers the far node subscribed to that this node holds back on the link because they do not fit its estimate."
                        ),
                        &["peer"]
                    )
                    .unwrap()
                ),
                probes: reg!(
                    IntCounterVec::new(
                        Opts::new(
                            "moim_relay_probes_total",
                            "Probes of a relay link's path: padding on top of the media, while a layer is held back, to learn whether the path carries it."
                        ),
                        &["peer"]
                    )
                    .unwrap()
                ),
                padding_bytes: reg!(
                    IntCounterVec::new(
                        Opts::new(
                            "moim_relay_padding_bytes_total",
                            "Padding bytes a relay link's probes sent (dropped unread by the far node)."
                        ),
                        &["peer"]
                    )
                    .unwrap()
                ),
            },
            registry,
        }
    }

    /// Counts a refused session under `reason` (a fixed, small set of strings).
    pub fn reject(&self, reason: &str) {
        self.rejected.with_label_values(&[reason]).inc();
    }

    /// Renders the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
