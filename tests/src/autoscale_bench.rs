//! `moim-bench autoscale`: a traffic curve replayed through the real autoscaling decisions.
//!
//! The scenario's meetings arrive on a simulated fleet in fake time
//! ([`moim_operator::autoscale::sim`]): pools are scaled by the operator's own
//! [`moim_operator::autoscale::decide`], meetings are placed by its own placement, and new
//! nodes take a varying start-up time before they take meetings. What it prints is what a
//! platform team asks of an autoscaler: was anyone turned away, was any meeting cut, how full
//! did nodes run, and how many node-minutes it spent against an oracle that knows the future.

use k8s_openapi::jiff::SignedDuration;
use moim_operator::autoscale::PoolPolicy;
use moim_operator::autoscale::sim::{self, FleetModel, Outcome, SCENARIOS};
use serde_json::{Value, json};
use std::time::Instant;

/// Options of `moim-bench autoscale`.
#[derive(Debug, Clone, clap::Args)]
pub struct AutoscaleArgs {
    /// Scenario: steady, surge, webinar, follow-the-sun, or all.
    #[arg(long, default_value = "all")]
    pub scenario: String,
    /// Fastest and slowest media pod start, seconds (e.g. `60-180` when every node needs a
    /// new VM).
    #[arg(long, default_value = "20-60")]
    pub startup: String,
    /// Spare participants kept ready (the pool's `headroom.participants`).
    #[arg(long)]
    pub headroom: Option<u32>,
    /// Spare capacity as a share of demand, percent (the pool's `headroom.percent`).
    #[arg(long)]
    pub headroom_percent: Option<u32>,
    /// The pool's start-up estimate, seconds (`nodeStartupSeconds`).
    #[arg(long)]
    pub node_startup: Option<i64>,
    /// Print a JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

fn model(args: &AutoscaleArgs) -> anyhow::Result<FleetModel> {
    let (lo, hi) = args
        .startup
        .split_once('-')
        .and_then(|(a, b)| Some((a.trim().parse::<i64>().ok()?, b.trim().parse::<i64>().ok()?)))
        .filter(|(a, b)| 0 <= *a && a <= b)
        .ok_or_else(|| anyhow::anyhow!("--startup wants MIN-MAX seconds, e.g. 20-60"))?;
    let defaults = PoolPolicy::default();
    Ok(FleetModel {
        policy: PoolPolicy {
            headroom_participants: args.headroom.unwrap_or(defaults.headroom_participants),
            headroom_percent: args.headroom_percent.unwrap_or(defaults.headroom_percent),
            node_startup: args
                .node_startup
                .map(SignedDuration::from_secs)
                .unwrap_or(defaults.node_startup),
            ..defaults
        },
        startup: (lo, hi),
        ..FleetModel::default()
    })
}

fn figures(o: &Outcome) -> Value {
    json!({
        "rejected_joins": o.rejected_joins,
        "meetings_cut": o.meetings_cut,
        "migrations": o.migrations,
        "p99_node_utilization": (o.p99_node_utilization * 1000.0).round() / 1000.0,
        "node_minutes_ratio": (o.node_minutes_ratio * 1000.0).round() / 1000.0,
        "node_minutes": o.node_minutes.round(),
        "oracle_node_minutes": o.oracle_node_minutes.round(),
        "joins": o.joins,
        "peak_nodes": o.peak_nodes,
        "nodes_created": o.created,
        "drains": o.drains,
    })
}

/// Runs the scenarios asked for, prints a table, and returns the JSON object.
pub fn run(args: &AutoscaleArgs) -> anyhow::Result<Value> {
    let model = model(args)?;
    let names: Vec<&str> = if args.scenario == "all" {
        SCENARIOS.to_vec()
    } else if SCENARIOS.contains(&args.scenario.as_str()) {
        vec![args.scenario.as_str()]
    } else {
        anyhow::bail!(
            "unknown scenario {:?}; known: {}, all",
            args.scenario,
            SCENARIOS.join(", ")
        );
    };
    let p = &model.policy;
    println!(
        "autoscale: pods start in {}-{} s; pool: {} participants/node, headroom max({}, {}%), \
         start-up estimate {} s, scale-down delay {} s, drain deadline {} s",
        model.startup.0,
        model.startup.1,
        p.capacity.participants,
        p.headroom_participants,
        p.headroom_percent,
        p.node_startup.as_secs(),
        p.scale_down_delay.as_secs(),
        p.drain_deadline.as_secs(),
    );
    println!(
        "{:<15} {:>9} {:>9} {:>6} {:>10} {:>9} {:>10} {:>10} {:>6} {:>7}",
        "scenario",
        "rejected",
        "cut",
        "moved",
        "p99 util",
        "nm ratio",
        "node-min",
        "oracle",
        "peak",
        "took"
    );
    let mut out = serde_json::Map::new();
    for name in names {
        let scenario = sim::named(name).ok_or_else(|| anyhow::anyhow!("unknown scenario"))?;
        let started = Instant::now();
        let o = sim::run(&scenario, &model);
        let took = started.elapsed();
        println!(
            "{:<15} {:>9} {:>9} {:>6} {:>10.3} {:>9.3} {:>10.0} {:>10.0} {:>6} {:>6.1}s",
            name,
            o.rejected_joins,
            o.meetings_cut,
            o.migrations,
            o.p99_node_utilization,
            o.node_minutes_ratio,
            o.node_minutes,
            o.oracle_node_minutes,
            o.peak_nodes,
            took.as_secs_f64()
        );
        out.insert(name.to_owned(), figures(&o));
    }
    let mut result = json!({
        "bench": "autoscale",
        "startup_seconds": [model.startup.0, model.startup.1],
    });
    if let [only] = out.values().cloned().collect::<Vec<_>>().as_slice() {
        // One scenario: its figures at the top level, as the keys.
        if let (Value::Object(r), Value::Object(f)) = (&mut result, only) {
            r.insert("scenario".into(), json!(args.scenario));
            r.extend(f.clone());
        }
    } else if let Value::Object(r) = &mut result {
        r.insert("scenarios".into(), Value::Object(out));
    }
    Ok(result)
}
