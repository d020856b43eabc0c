//! `moim-bench`: moim's benchmark programs. Figures are printed as a table; with `--json` the
//! last line is one JSON object holding them.
//!
//! Run with `cargo run --release -p moim-e2e --bin moim-bench -- sfu`; a release bench builds
//! and starts a release media-node.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use media_node::process::{cpu_seconds_of, rss_bytes_of};
use moim_e2e::loadgen::{self, Client, SIMULCAST_720P};
use moim_e2e::{Browser, Node, dev_token};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(about = "moim benchmarks")]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// One media-node on one core: CPU per forwarded packet, most subscribers of one 720p
    /// simulcast publisher below 1% loss, and Chromium's join time to first decoded frame.
    Sfu(SfuArgs),
    /// The operator: placement decision time, reconciles per second against a mocked API
    /// server, and memory, for 10,000 meetings on 300 nodes in 5 regions.
    Placement(moim_e2e::placement_bench::PlacementArgs),
    /// Two linked media-nodes: latency added per relay hop, relay packets per core-second,
    /// and the link's wire overhead over the media it carries.
    Cascade(moim_e2e::cascade_bench::CascadeArgs),
    /// The autoscaler: a traffic curve (steady, surge, webinar, follow-the-sun) replayed
    /// through the real scaling and placement decisions on a simulated fleet.
    Autoscale(moim_e2e::autoscale_bench::AutoscaleArgs),
}

#[derive(clap::Args)]
struct SfuArgs {
    /// Subscriber counts to step through, until loss passes 1% or a core saturates.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,25,50,100,150,200,250,300,350,400,500,600,800"
    )]
    steps: Vec<usize>,
    /// Seconds measured at each step (after a settling period).
    #[arg(long, default_value_t = 8)]
    window: u64,
    /// Subscribers that decrypt and time every packet; the rest count from RTP headers.
    #[arg(long, default_value_t = 4)]
    full_subscribers: usize,
    /// Chromium joins timed to the first decoded frame (0 skips them).
    #[arg(long, default_value_t = 7)]
    joins: usize,
    /// CPU to pin the media-node to (the load generator takes the others).
    #[arg(long, default_value_t = 0)]
    node_cpu: usize,
    /// Print a JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// Loss above which a step fails.
const MAX_LOSS: f64 = 0.01;
/// Share of one core above which a process counts as saturated.
const SATURATED: f64 = 0.95;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.bench {
        Bench::Sfu(args) => sfu(args).await,
        Bench::Cascade(args) => {
            let out = moim_e2e::cascade_bench::run(&args).await?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
        Bench::Autoscale(args) => {
            let out = moim_e2e::autoscale_bench::run(&args)?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
        Bench::Placement(args) => {
            let out = moim_e2e::placement_bench::run(&args).await?;
            if args.json {
                println!("{out}");
            }
            Ok(())
        }
    }
}

/// Pins every thread of `pid` to `cpus` (a taskset list); false if that is not possible.
fn pin(pid: u32, cpus: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-cp", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    node_cpu: f64,
    own_cpu: f64,
    sent: f64,
    received: u64,
    expected: u64,
}

async fn snapshot(
    http: &reqwest::Client,
    node: &Node,
    subs: &[Client],
) -> anyhow::Result<Snapshot> {
    let pid = node.pid().to_string();
    Ok(Snapshot {
        at: Instant::now(),
        node_cpu: cpu_seconds_of(&pid).context("node cpu")?,
        own_cpu: cpu_seconds_of("self").context("own cpu")?,
        sent: moim_e2e::metric(http, node, "moim_rtp_packets_sent_total").await?,
        received: subs
            .iter()
            .map(|s| s.counters.received.load(Ordering::Relaxed))
            .sum(),
        expected: subs
            .iter()
            .map(|s| s.counters.expected.load(Ordering::Relaxed))
            .sum(),
    })
}

struct Step {
    subscribers: usize,
    node_cores: f64,
    loadgen_cores: f64,
    packets_per_second: f64,
    cpu_us_per_packet: f64,
    loss: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    node_rss_mb: f64,
}

impl Step {
    fn json(&self) -> Value {
        json!({
            "subscribers": self.subscribers,
            "node_cores": self.node_cores,
            "loadgen_cores": self.loadgen_cores,
            "forwarded_packets_per_second": self.packets_per_second,
            "cpu_us_per_forwarded_packet": self.cpu_us_per_packet,
            "loss": self.loss,
            "latency_ms_p50": self.latency_p50_ms,
            "latency_ms_p99": self.latency_p99_ms,
            "node_rss_mb": self.node_rss_mb,
        })
    }
}

async fn sfu(args: SfuArgs) -> anyhow::Result<()> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let node = Node::start(&["--max-room-participants", "5000"]).await?;
    let pinned = cpus >= 2 && {
        let others: Vec<String> = (0..cpus)
            .filter(|&c| c != args.node_cpu)
            .map(|c| c.to_string())
            .collect();
        pin(node.pid(), &args.node_cpu.to_string()) && pin(std::process::id(), &others.join(","))
    };
    if !pinned {
        eprintln!("note: not pinned to separate cores (needs 2 CPUs and taskset)");
    }
    let http = reqwest::Client::new();
    let base = node.url("");
    let room = "bench";
    let publisher = loadgen::publish(
        &http,
        &base,
        room,
        &dev_token(room, "publisher"),
        &SIMULCAST_720P,
    )
    .await
    .context("WHIP publisher")?;
    loadgen::wait_connected(std::slice::from_ref(&publisher), Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss = rss_bytes_of(&node.pid().to_string()).unwrap_or(0) as f64;

    println!(
        "moim sfu benchmark: one 720p simulcast publisher ({} kb/s in three layers + audio), \
         WHEP subscribers; node pinned to cpu {}: {pinned}",
        SIMULCAST_720P.iter().map(|l| l.bitrate_bps).sum::<u32>() / 1000,
        args.node_cpu
    );
    println!(
        "{:>6} {:>10} {:>10} {:>12} {:>10} {:>8} {:>9} {:>9} {:>9}",
        "subs",
        "node cpu",
        "gen cpu",
        "fwd pkt/s",
        "µs/pkt",
        "loss %",
        "lat p50",
        "lat p99",
        "rss MB"
    );
    let mut subs: Vec<Client> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut limit = "every step passed";
    for &target in &args.steps {
        while subs.len() < target {
            let i = subs.len();
            let token = dev_token(room, &format!("viewer-{i}"));
            let sub = loadgen::subscribe(&http, &base, room, &token, i < args.full_subscribers)
                .await
                .with_context(|| format!("WHEP subscriber {i}"))?;
            subs.push(sub);
        }
        loadgen::wait_connected(&subs, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        for s in subs.iter().take(args.full_subscribers) {
            if let Ok(mut v) = s.counters.latency_us.lock() {
                v.clear();
            }
        }
        let a = snapshot(&http, &node, &subs).await?;
        tokio::time::sleep(Duration::from_secs(args.window)).await;
        let b = snapshot(&http, &node, &subs).await?;
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let packets = b.sent - a.sent;
        let expected = (b.expected - a.expected) as f64;
        let received = (b.received - a.received) as f64;
        let lat = loadgen::latencies_ms(&subs[..args.full_subscribers.min(subs.len())]);
        let step = Step {
            subscribers: subs.len(),
            node_cores: (b.node_cpu - a.node_cpu) / wall,
            loadgen_cores: (b.own_cpu - a.own_cpu) / wall,
            packets_per_second: packets / wall,
            cpu_us_per_packet: if packets > 0.0 {
                (b.node_cpu - a.node_cpu) * 1e6 / packets
            } else {
                f64::NAN
            },
            loss: if expected > 0.0 {
                (1.0 - received / expected).max(0.0)
            } else {
                1.0
            },
            latency_p50_ms: moim_e2e::percentile(&lat, 0.5),
            latency_p99_ms: moim_e2e::percentile(&lat, 0.99),
            node_rss_mb: rss_bytes_of(&node.pid().to_string()).unwrap_or(0) as f64 / 1e6,
        };
        println!(
            "{:>6} {:>10.2} {:>10.2} {:>12.0} {:>10.2} {:>8.3} {:>9.2} {:>9.2} {:>9.1}",
            step.subscribers,
            step.node_cores,
            step.loadgen_cores,
            step.packets_per_second,
            step.cpu_us_per_packet,
            step.loss * 100.0,
            step.latency_p50_ms,
            step.latency_p99_ms,
            step.node_rss_mb
        );
        let failed = step.loss > MAX_LOSS;
        let node_saturated = step.node_cores > SATURATED;
        let gen_saturated = step.loadgen_cores > SATURATED * (cpus.max(2) - 1) as f64;
        steps.push(step);
        if failed || node_saturated || gen_saturated {
            limit = if gen_saturated && !node_saturated {
                "the load generator saturated its cores first (the figure is a lower bound)"
            } else if node_saturated {
                "the media-node saturated its core"
            } else {
                "loss passed 1%"
            };
            break;
        }
    }
    let passing: Vec<&Step> = steps
        .iter()
        .filter(|s| s.loss <= MAX_LOSS && s.node_cores <= SATURATED)
        .collect();
    let best = passing.last().copied().or(steps.first());
    let max_subscribers = passing.last().map_or(0, |s| s.subscribers);
    let cpu_us = best.map_or(f64::NAN, |s| s.cpu_us_per_packet);
    let rss_per_sub = best.map_or(f64::NAN, |s| {
        (s.node_rss_mb * 1e6 - idle_rss) / s.subscribers.max(1) as f64 / 1e6
    });
    println!("stopped: {limit}");
    let send_errors = publisher.counters.send_errors.load(Ordering::Relaxed);
    if send_errors > 0 {
        bail!("the load generator failed to send {send_errors} packets; figures are not valid");
    }
    drop(subs);
    drop(publisher);

    let joins = if args.joins > 0 {
        join_times(&node, args.joins).await?
    } else {
        Vec::new()
    };
    let join_p50 = moim_e2e::percentile(&joins, 0.5);
    println!("max subscribers below 1% loss: {max_subscribers}");
    println!("cpu per forwarded packet at that load: {cpu_us:.2} µs");
    println!("node memory per subscriber: {rss_per_sub:.3} MB");
    if !joins.is_empty() {
        println!(
            "chromium join to first decoded frame: p50 {join_p50:.0} ms (runs: {})",
            joins
                .iter()
                .map(|j| format!("{j:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if args.json {
        let out = json!({
            "bench": "sfu",
            "cpu_us_per_forwarded_packet": cpu_us,
            "max_subscribers": max_subscribers,
            "join_ms_p50": join_p50,
            "join_ms": joins,
            "memory_mb_per_subscriber": rss_per_sub,
            "latency_ms_p50": best.map_or(f64::NAN, |s| s.latency_p50_ms),
            "latency_ms_p99": best.map_or(f64::NAN, |s| s.latency_p99_ms),
            "limit": limit,
            "pinned": pinned,
            "steps": steps.iter().map(Step::json).collect::<Vec<_>>(),
        });
        println!("{out}");
    }
    Ok(())
}

/// Chromium joins a room where another Chromium publishes simulcast camera video; each run is
/// a fresh page load, timed from navigation start to the first decoded frame.
async fn join_times(node: &Node, runs: usize) -> anyhow::Result<Vec<f64>> {
    let room = "join-bench";
    let publisher = Browser::start().await?;
    publisher
        .goto(&node.url(&format!("/?room={room}&name=pub&autojoin=1")))
        .await?;
    publisher
        .wait_for(
            "return !!(window.moim && moim.pub && moim.pub.connectionState === 'connected')",
            Duration::from_secs(20),
        )
        .await?;
    let viewer = Browser::start().await?;
    let mut out = Vec::new();
    for i in 0..runs {
        viewer
            .goto(&node.url(&format!("/?room={room}&name=v{i}&autojoin=1&publish=0")))
            .await?;
        let v = viewer
            .js(
                "return (async () => { let connected = -1; for (;;) { \
                   if (window.moim && moim.sub) { \
                     if (connected < 0 && moim.sub.connectionState === 'connected') connected = performance.now(); \
                     const r = await moim.sub.getStats(); let f = 0; \
                     r.forEach(s => { if (s.type === 'inbound-rtp' && s.kind === 'video') f += s.framesDecoded || 0; }); \
                     if (f > 0) return [connected, performance.now(), moim.marks]; } \
                   await new Promise(r => setTimeout(r, 5)); \
                   if (performance.now() > 20000) return [connected, -1]; } })()",
            )
            .await?;
        let at = |i: usize| v.get(i).and_then(Value::as_f64).unwrap_or(-1.0);
        let ms = at(1);
        if ms < 0.0 {
            bail!("join {i}: no decoded frame within 20 s");
        }
        eprintln!(
            "join {i}: first frame at {ms:.0} ms; steps (ms since page load): {}",
            v.get(2).unwrap_or(&Value::Null)
        );
        out.push(ms);
        // Leave before the next run so each join is a fresh subscriber.
        viewer.goto("about:blank").await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    viewer.close().await;
    publisher.close().await;
    let mut sorted = out.clone();
    sorted.sort_by(f64::total_cmp);
    Ok(sorted)
}
