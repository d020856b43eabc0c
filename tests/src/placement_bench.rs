//! `moim-bench placement`: the operator's placement at fleet scale.
//!
//! A fleet of MediaNodes over several regions and a deterministic mix of meetings (standups,
//! team meetings, conferences, webinars) are placed one after another through the same
//! ledger-plus-placement path the Meeting reconciler runs, timing each decision. Then every
//! meeting is reconciled by the real reconciler against an in-process mocked API server (every
//! request answered at once) and media nodes that accept every plan, which gives the
//! reconciler's own throughput. Memory is the process's resident set once the fleet, the
//! meetings and the reservations are all held, which is what an operator holds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use moim_operator::context::{Context, Settings};
use moim_operator::crd::*;
use moim_operator::ledger::Ledger;
use moim_operator::meeting::plan_meeting;
use moim_operator::metrics::Metrics;
use moim_operator::nodeapi::{NodeAdmin, NodeApiResult};
use moim_wire::admin::RoomAssignment;
use moim_wire::status::NodeStatus;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Options of `moim-bench placement`.
#[derive(Debug, Clone, clap::Args)]
pub struct PlacementArgs {
    /// Meetings to place.
    #[arg(long, default_value_t = 10_000)]
    pub meetings: usize,
    /// MediaNodes in the fleet.
    #[arg(long, default_value_t = 300)]
    pub nodes: usize,
    /// Regions the fleet spans.
    #[arg(long, default_value_t = 5)]
    pub regions: usize,
    /// Participants each node holds.
    #[arg(long, default_value_t = 1200)]
    pub capacity: u32,
    /// Reconciles in flight at once (the controller's concurrency).
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Print a JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

const REGIONS: [&str; 8] = [
    "seoul",
    "frankfurt",
    "virginia",
    "saopaulo",
    "sydney",
    "mumbai",
    "tokyo",
    "oregon",
];

fn now() -> Timestamp {
    // A fixed instant keeps the run reproducible; node reports are fresh relative to it.
    "2026-11-21T10:00:00Z"
        .parse()
        .unwrap_or(Timestamp::UNIX_EPOCH)
}

fn fleet(args: &PlacementArgs) -> Vec<MediaNode> {
    let regions = args.regions.clamp(1, REGIONS.len());
    (0..args.nodes)
        .map(|i| {
            let region = REGIONS[i % regions];
            let name = format!("{region}-{}", i / regions);
            let mut n = MediaNode::in_region(&name, "bench", region, args.capacity);
            n.spec.pool = Some(region.into());
            n.metadata.uid = Some(format!("uid-{name}"));
            n.status = Some(MediaNodeStatus {
                phase: Some(MediaNodePhase::Ready),
                admin_url: Some(format!("http://{name}:7880")),
                signalling_url: Some(format!("https://{name}.example")),
                last_report: Some(Time(now())),
                ..MediaNodeStatus::default()
            });
            n
        })
        .collect()
}

/// The mix: 70% standups (2-14, one region), 25% team meetings (14-60, 1-3 regions), 4.5%
/// conferences (100-300, 2-4 regions), 0.5% webinars (1,000, every region).
fn meetings(args: &PlacementArgs) -> Vec<Meeting> {
    let mut rng = StdRng::seed_from_u64(7);
    let regions = args.regions.clamp(1, REGIONS.len());
    (0..args.meetings)
        .map(|i| {
            let roll: f64 = rng.random();
            let (total, spread) = if roll < 0.70 {
                (rng.random_range(2..=14), 1)
            } else if roll < 0.95 {
                (rng.random_range(14..=60), rng.random_range(1..=3))
            } else if roll < 0.995 {
                (rng.random_range(100..=300), rng.random_range(2..=4))
            } else {
                (1000, regions)
            };
            let first = rng.random_range(0..regions);
            let chosen: Vec<String> = (0..spread.min(regions))
                .map(|k| REGIONS[(first + k) % regions].to_owned())
                .collect();
            let mut m = Meeting::new(
                &format!("m{i:05}"),
                MeetingSpec {
                    title: format!("meeting {i}"),
                    mode: if total >= 1000 {
                        MeetingMode::Webinar
                    } else {
                        MeetingMode::Interactive
                    },
                    participants: ExpectedParticipants {
                        per_region: None,
                        total: Some(total),
                        regions: Some(chosen),
                    },
                    max_participants: None,
                    schedule: None,
                    media: MediaPolicy::default(),
                },
            );
            m.metadata = ObjectMeta {
                name: Some(format!("m{i:05}")),
                namespace: Some("bench".into()),
                uid: Some(format!("uid-m{i}")),
                generation: Some(1),
                finalizers: Some(vec![moim_operator::meeting::FINALIZER.into()]),
                ..ObjectMeta::default()
            };
            m
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Media nodes that take every plan.
#[derive(Default)]
struct AcceptingNodes {
    calls: AtomicU64,
}

impl NodeAdmin for AcceptingNodes {
    fn status<'a>(
        &'a self,
        _: &'a str,
    ) -> futures_util::future::BoxFuture<'a, NodeApiResult<NodeStatus>> {
        Box::pin(async { Ok(NodeStatus::default()) })
    }
    fn assign<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a RoomAssignment,
    ) -> futures_util::future::BoxFuture<'a, NodeApiResult<()>> {
        self.calls.fetch_add(1, Ordering::Relaxed);
        Box::pin(async { Ok(()) })
    }
    fn release<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
    ) -> futures_util::future::BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn drain<'a>(&'a self, _: &'a str) -> futures_util::future::BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn undrain<'a>(&'a self, _: &'a str) -> futures_util::future::BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async { Ok(()) })
    }
    fn move_room<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: &'a str,
    ) -> futures_util::future::BoxFuture<'a, NodeApiResult<()>> {
        Box::pin(async { Ok(()) })
    }
}

/// An API server that answers every request at once: writes echo a stored-looking Meeting
/// (status patches) or the body itself (Events).
fn mocked_api(meeting_json: Arc<Vec<u8>>, requests: Arc<AtomicU64>) -> kube::Client {
    let service = tower::service_fn(move |req: http::Request<Body>| {
        let meeting_json = meeting_json.clone();
        let requests = requests.clone();
        async move {
            requests.fetch_add(1, Ordering::Relaxed);
            let is_event = req.uri().path().contains("/events");
            let body = req.into_body().collect_bytes().await.unwrap_or_default();
            let (status, out) = if is_event {
                (201, body.to_vec())
            } else {
                (200, meeting_json.as_ref().clone())
            };
            http::Response::builder()
                .status(status)
                .body(Body::from(out))
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        }
    });
    kube::Client::new(service, "bench")
}

/// Runs the benchmark; returns the figures.
pub async fn run(args: &PlacementArgs) -> anyhow::Result<Value> {
    let nodes = fleet(args);
    let meetings = meetings(args);
    let expected: u64 = meetings
        .iter()
        .map(|m| m.spec.participants.total.unwrap_or(0) as u64)
        .sum();

    // 1. Decisions: views of the fleet from the ledger, place, record (the reconciler's path).
    let mut ledger = Ledger::default();
    let mut decision_us = Vec::with_capacity(meetings.len());
    let mut placed: u64 = 0;
    let mut short = 0usize;
    for m in &meetings {
        let t = Instant::now();
        let previous = ledger.plan(&format!("bench/{}", m.name_any())).cloned();
        let plan = plan_meeting(
            &mut ledger,
            m,
            previous.as_ref(),
            &nodes,
            now(),
            SignedDuration::from_secs(30),
            &moim_operator::regions::Distances::default(),
        );
        let done = plan
            .assignments
            .iter()
            .map(|a| u64::from(a.participants))
            .sum::<u64>();
        short += usize::from(!plan.shortfalls.is_empty());
        decision_us.push(t.elapsed().as_secs_f64() * 1e6);
        placed += done;
    }
    decision_us.sort_by(f64::total_cmp);
    drop(ledger);

    // 2. Reconciles against the mocked API, with the operator's caches filled.
    let (store, mut writer): (Store<MediaNode>, _) = reflector::store();
    for n in &nodes {
        writer.apply_watcher_event(&watcher::Event::Apply(n.clone()));
    }
    let requests = Arc::new(AtomicU64::new(0));
    let client = mocked_api(
        Arc::new(serde_json::to_vec(&meetings[0])?),
        requests.clone(),
    );
    let meeting_count = meetings.len();
    // The store holds the meetings from here on, as the operator's watch cache does.
    let (meeting_store, mut meeting_writer): (Store<Meeting>, _) = reflector::store();
    for m in meetings {
        meeting_writer.apply_watcher_event(&watcher::Event::Apply(m));
    }
    let node_admin = Arc::new(AcceptingNodes::default());
    let ctx = Arc::new(Context::new(
        client.clone(),
        store,
        node_admin.clone(),
        Recorder::new(
            client,
            Reporter {
                controller: "moim-operator".into(),
                instance: Some("bench".into()),
            },
        ),
        Metrics::new(),
        Arc::new(now),
        Settings::default(),
    ));
    let t = Instant::now();
    let mut errors = 0usize;
    {
        use futures_util::StreamExt;
        let mut results = futures_util::stream::iter(meeting_store.state())
            .map(|m| moim_operator::meeting::reconcile(m, ctx.clone()))
            .buffer_unordered(args.concurrency.max(1));
        while let Some(r) = results.next().await {
            errors += usize::from(r.is_err());
        }
    }
    let reconcile_secs = t.elapsed().as_secs_f64();
    let reconciles_per_second = meeting_count as f64 / reconcile_secs;
    let rss = media_node::process::rss_bytes_of("self").unwrap_or(0);

    let p50 = percentile(&decision_us, 0.50);
    let p99 = percentile(&decision_us, 0.99);
    let max = decision_us.last().copied().unwrap_or(0.0);
    let out = json!({
        "meetings": meeting_count,
        "nodes": nodes.len(),
        "regions": args.regions,
        "participants_expected": expected,
        "participants_placed": placed,
        "meetings_short": short,
        "placement_us_p50": round2(p50),
        "placement_us_p99": round2(p99),
        "placement_us_max": round2(max),
        "reconciles_per_second": round2(reconciles_per_second),
        "reconcile_errors": errors,
        "api_requests": requests.load(Ordering::Relaxed),
        "node_assignments": node_admin.calls.load(Ordering::Relaxed),
        "operator_rss_mb": round2(rss as f64 / 1_048_576.0),
    });
    println!(
        "placement: {} meetings on {} nodes in {} regions",
        meeting_count,
        nodes.len(),
        args.regions
    );
    println!(
        "  participants placed          {placed} of {expected} ({short} meetings short of room)"
    );
    println!("  decision time p50/p99/max    {p50:.1} / {p99:.1} / {max:.1} µs");
    println!(
        "  reconciles per second        {reconciles_per_second:.0} (mocked API, {} requests, {errors} errors)",
        requests.load(Ordering::Relaxed)
    );
    println!(
        "  operator memory (RSS)        {:.1} MB",
        rss as f64 / 1_048_576.0
    );
    Ok(out)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
