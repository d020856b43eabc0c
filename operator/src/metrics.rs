//! Prometheus metrics of the operator, served as text at `/metrics` beside the join API.
//!
//! Names start with `moim_operator_`, units are seconds, counters end in `_total`. Labels take
//! values from small fixed sets (controller, phase, outcome, and the MediaPools the platform
//! team configured): never a meeting or node name.
//! Meetings and nodes by phase are counted from the watch caches at scrape time, so they are
//! exact whatever the reconcilers are doing.

use crate::crd::{MediaNode, MediaNodePhase, Meeting, MeetingPhase};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};
use std::time::Duration;

/// Every metric of the operator.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    reconcile_seconds: HistogramVec,
    reconcile_errors: IntCounterVec,
    placement_seconds: prometheus::Histogram,
    meetings: IntGaugeVec,
    nodes: IntGaugeVec,
    join_requests: IntCounterVec,
    node_api_errors: IntCounterVec,
    pool_nodes: IntGaugeVec,
    pool_participants: IntGaugeVec,
    pool_actions: IntCounterVec,
    /// 1 while this replica holds the leader Lease.
    pub leader: IntGauge,
}

const MEETING_PHASES: [(&str, Option<MeetingPhase>); 6] = [
    ("Pending", None),
    ("Scheduled", Some(MeetingPhase::Scheduled)),
    ("Placing", Some(MeetingPhase::Placing)),
    ("Running", Some(MeetingPhase::Running)),
    ("Ended", Some(MeetingPhase::Ended)),
    ("Failed", Some(MeetingPhase::Failed)),
];

const NODE_PHASES: [(&str, Option<MediaNodePhase>); 5] = [
    ("Pending", None),
    ("Starting", Some(MediaNodePhase::Starting)),
    ("Ready", Some(MediaNodePhase::Ready)),
    ("Draining", Some(MediaNodePhase::Draining)),
    ("Gone", Some(MediaNodePhase::Gone)),
];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    // Construction fails only on invalid names and registration only on duplicates; this fixed
    // list has neither, so the unwraps cannot fire.
    #[allow(clippy::unwrap_used)]
    pub fn new() -> Self {
        let registry = Registry::new();
        let buckets = vec![
            0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
        ];
        let reconcile_seconds = HistogramVec::new(
            HistogramOpts::new(
                "moim_operator_reconcile_duration_seconds",
                "Seconds one reconcile took, by controller.",
            )
            .buckets(buckets.clone()),
            &["controller"],
        )
        .unwrap();
        let reconcile_errors = IntCounterVec::new(
            Opts::new(
                "moim_operator_reconcile_errors_total",
                "Reconciles that failed, by controller and kind of error.",
            ),
            &["controller", "error"],
        )
        .unwrap();
        let placement_seconds = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "moim_operator_placement_duration_seconds",
                "Seconds the placement core took to plan one meeting.",
            )
            .buckets(buckets),
        )
        .unwrap();
        let meetings = IntGaugeVec::new(
            Opts::new("moim_operator_meetings", "Meetings by phase."),
            &["phase"],
        )
        .unwrap();
        let nodes = IntGaugeVec::new(
            Opts::new("moim_operator_media_nodes", "MediaNodes by phase."),
            &["phase"],
        )
        .unwrap();
        let join_requests = IntCounterVec::new(
            Opts::new(
                "moim_operator_join_requests_total",
                "Join API requests, by outcome.",
            ),
            &["outcome"],
        )
        .unwrap();
        let node_api_errors = IntCounterVec::new(
            Opts::new(
                "moim_operator_node_api_errors_total",
                "Calls to a media node's admin API that failed, by call.",
            ),
            &["call"],
        )
        .unwrap();
        let pool_nodes = IntGaugeVec::new(
            Opts::new(
                "moim_operator_pool_nodes",
                "MediaPool nodes by state (ready, starting, draining) and the desired count.",
            ),
            &["pool", "state"],
        )
        .unwrap();
        let pool_participants = IntGaugeVec::new(
            Opts::new(
                "moim_operator_pool_participants",
                "MediaPool demand now and the autoscaler's target (demand, growth, scheduled, headroom).",
            ),
            &["pool", "kind"],
        )
        .unwrap();
        let pool_actions = IntCounterVec::new(
            Opts::new(
                "moim_operator_pool_scale_actions_total",
                "Autoscaler actions on MediaNodes (create, undrain, drain, migrate, delete).",
            ),
            &["pool", "action"],
        )
        .unwrap();
        let leader = IntGauge::new(
            "moim_operator_leader",
            "1 while this replica holds the leader Lease and runs the controllers.",
        )
        .unwrap();
        registry
            .register(Box::new(reconcile_seconds.clone()))
            .unwrap();
        registry
            .register(Box::new(reconcile_errors.clone()))
            .unwrap();
        registry
            .register(Box::new(placement_seconds.clone()))
            .unwrap();
        registry.register(Box::new(meetings.clone())).unwrap();
        registry.register(Box::new(nodes.clone())).unwrap();
        registry.register(Box::new(join_requests.clone())).unwrap();
        registry
            .register(Box::new(node_api_errors.clone()))
            .unwrap();
        registry.register(Box::new(pool_nodes.clone())).unwrap();
        registry
            .register(Box::new(pool_participants.clone()))
            .unwrap();
        registry.register(Box::new(pool_actions.clone())).unwrap();
        registry.register(Box::new(leader.clone())).unwrap();
        Self {
            registry,
            reconcile_seconds,
            reconcile_errors,
            placement_seconds,
            meetings,
            nodes,
            join_requests,
            node_api_errors,
            pool_nodes,
            pool_participants,
            pool_actions,
            leader,
        }
    }

    /// Records one autoscaler look at `pool` (`namespace/name`; pools are few and set by the
    /// platform team, so their names are bounded label values).
    pub fn pool_looked(
        &self,
        pool: &str,
        status: &crate::crd::MediaPoolStatus,
        decision: &crate::autoscale::ScaleDecision,
    ) {
        for (state, n) in [
            ("ready", status.ready_nodes),
            ("starting", status.starting_nodes),
            ("draining", status.draining_nodes),
            ("desired", status.desired_nodes),
        ] {
            self.pool_nodes
                .with_label_values(&[pool, state])
                .set(i64::from(n));
        }
        for (kind, n) in [("demand", status.demand), ("target", status.target)] {
            self.pool_participants
                .with_label_values(&[pool, kind])
                .set(i64::from(n));
        }
        for (action, n) in [
            ("create", decision.create as usize),
            ("undrain", decision.undrain.len()),
            ("drain", decision.drain.len()),
            ("migrate", decision.migrate.len()),
            ("delete", decision.delete.len()),
        ] {
            if n > 0 {
                self.pool_actions
                    .with_label_values(&[pool, action])
                    .inc_by(n as u64);
            }
        }
    }

    /// Records one reconcile's duration.
    pub fn reconciled(&self, controller: &str, took: Duration) {
        self.reconcile_seconds
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
    }

    /// Counts a failed reconcile.
    pub fn reconcile_failed(&self, controller: &str, error: &crate::Error) {
        self.reconcile_errors
            .with_label_values(&[controller, error.metric_label()])
            .inc();
    }

    /// Records one placement decision's duration.
    pub fn placed(&self, took: Duration) {
        self.placement_seconds.observe(took.as_secs_f64());
    }

    /// Counts a join request by outcome (`ok`, or the error code).
    pub fn join(&self, outcome: &str) {
        self.join_requests.with_label_values(&[outcome]).inc();
    }

    /// Counts a failed node admin call (`status`, `assign`, `release`, `drain`).
    pub fn node_api_error(&self, call: &str) {
        self.node_api_errors.with_label_values(&[call]).inc();
    }

    /// Prometheus text, with meetings and nodes by phase counted from the given caches.
    pub fn render<'a>(
        &self,
        meetings: impl IntoIterator<Item = &'a Meeting>,
        nodes: impl IntoIterator<Item = &'a MediaNode>,
    ) -> String {
        let mut by_phase = [0i64; MEETING_PHASES.len()];
        for m in meetings {
            let phase = m.status.as_ref().and_then(|s| s.phase);
            if let Some(i) = MEETING_PHASES.iter().position(|(_, p)| *p == phase) {
                by_phase[i] += 1;
            }
        }
        for (i, (label, _)) in MEETING_PHASES.iter().enumerate() {
            self.meetings.with_label_values(&[label]).set(by_phase[i]);
        }
        let mut by_phase = [0i64; NODE_PHASES.len()];
        for n in nodes {
            let phase = n.status.as_ref().and_then(|s| s.phase);
            if let Some(i) = NODE_PHASES.iter().position(|(_, p)| *p == phase) {
                by_phase[i] += 1;
            }
        }
        for (i, (label, _)) in NODE_PHASES.iter().enumerate() {
            self.nodes.with_label_values(&[label]).set(by_phase[i]);
        }
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metric families.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
