//! `moim-bench sfu [--vs janus]`: how many subscribers one core carries, and at what CPU cost per
//! forwarded packet, for one 720p simulcast publisher; with `--vs janus`, the same load on
//! Debian's Janus (VideoRoom) pinned to the same core, in the same run, one server after the
//! other.
//!
//! "Forwarded packets" are the distinct media packets the subscribers received (counted the
//! same way for both servers), so a server is credited only for what arrived.

use crate::janus::{self, Janus};
use crate::loadgen::{self, Client, SIMULCAST_720P};
use crate::{Browser, Node, dev_token, percentile};
use anyhow::{Context, bail};
use media_node::process::{cpu_seconds_of, rss_bytes_of};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Flags of `moim-bench sfu`.
#[derive(clap::Args)]
pub struct SfuArgs {
    /// Subscriber counts to step through, until loss passes 1% or a core saturates.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10,25,50,100,150,200,250,300,350,400,500,600,800"
    )]
    pub steps: Vec<usize>,
    /// Seconds measured at each step (after a settling period).
    #[arg(long, default_value_t = 8)]
    pub window: u64,
    /// Subscribers that decrypt and time every packet; the rest count from RTP headers.
    #[arg(long, default_value_t = 4)]
    pub full_subscribers: usize,
    /// Chromium joins to moim timed to the first decoded frame (0 skips them).
    #[arg(long, default_value_t = 7)]
    pub joins: usize,
    /// Load-generator subscribers timed from signalling to the first video packet, on an
    /// otherwise idle server (both servers, for the join-time comparison).
    #[arg(long, default_value_t = 7)]
    pub subscriber_joins: usize,
    /// CPU to pin the server to (the load generator takes the others).
    #[arg(long, default_value_t = 0)]
    pub node_cpu: usize,
    /// Run the same load on a peer SFU too (`janus`).
    #[arg(long, value_parser = ["janus"])]
    pub vs: Option<String>,
    /// Janus's static event loops (0: its default, a thread per handle).
    #[arg(long, default_value_t = 1)]
    pub janus_event_loops: usize,
    /// Print a JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

/// Loss above which a step fails.
const MAX_LOSS: f64 = 0.01;
/// Share of one core above which a process counts as saturated.
const SATURATED: f64 = 0.95;
/// The room both servers serve.
const ROOM: &str = "bench";

/// Pins every thread of `pid` to `cpus` (a taskset list); false if that is not possible.
fn pin(pid: u32, cpus: &str) -> bool {
    Command::new("taskset")
        .args(["-a", "-cp", cpus, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A server under test.
enum Server {
    Moim {
        node: Node,
        http: reqwest::Client,
    },
    Janus {
        janus: Janus,
        session: janus::Session,
        feed: Option<u64>,
    },
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Moim { .. } => "moim",
            Server::Janus { .. } => "janus",
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Moim { node, .. } => node.pid(),
            Server::Janus { janus, .. } => janus.pid(),
        }
    }

    async fn publish(&mut self) -> anyhow::Result<Client> {
        match self {
            Server::Moim { node, http } => loadgen::publish(
                http,
                &node.url(""),
                ROOM,
                &dev_token(ROOM, "publisher"),
                &SIMULCAST_720P,
            )
            .await
            .context("WHIP publisher"),
            Server::Janus { session, feed, .. } => {
                let (client, id) = session.publish(&SIMULCAST_720P).await?;
                *feed = Some(id);
                Ok(client)
            }
        }
    }

    /// Ends the subscribers' sessions (WHEP `DELETE` on moim; Janus notices when ICE stops).
    async fn leave(&self, subs: Vec<Client>) {
        if let Server::Moim { http, .. } = self {
            for s in &subs {
                if let Some(url) = &s.resource {
                    let _ = http.delete(url).send().await;
                }
            }
        }
        drop(subs);
    }

    async fn subscribe(&self, i: usize, full: bool) -> anyhow::Result<Client> {
        match self {
            Server::Moim { node, http } => {
                let token = dev_token(ROOM, &format!("viewer-{i}"));
                loadgen::subscribe(http, &node.url(""), ROOM, &token, full).await
            }
            Server::Janus { session, feed, .. } => {
                session
                    .subscribe(feed.context("nothing published yet")?, full)
                    .await
            }
        }
        .with_context(|| format!("{} subscriber {i}", self.name()))
    }
}

#[derive(Clone, Copy)]
struct Snapshot {
    at: Instant,
    server_cpu: f64,
    own_cpu: f64,
    received: u64,
    expected: u64,
}

fn snapshot(pid: u32, subs: &[Client]) -> anyhow::Result<Snapshot> {
    Ok(Snapshot {
        at: Instant::now(),
        server_cpu: cpu_seconds_of(&pid.to_string()).context("server cpu")?,
        own_cpu: cpu_seconds_of("self").context("own cpu")?,
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
    server_cores: f64,
    loadgen_cores: f64,
    packets_per_second: f64,
    cpu_us_per_packet: f64,
    loss: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    rss_mb: f64,
}

impl Step {
    fn passed(&self) -> bool {
        self.loss <= MAX_LOSS && self.server_cores <= SATURATED
    }

    fn json(&self) -> Value {
        json!({
            "subscribers": self.subscribers,
            "server_cores": self.server_cores,
            "loadgen_cores": self.loadgen_cores,
            "forwarded_packets_per_second": self.packets_per_second,
            "cpu_us_per_forwarded_packet": self.cpu_us_per_packet,
            "loss": self.loss,
            "latency_ms_p50": self.latency_p50_ms,
            "latency_ms_p99": self.latency_p99_ms,
            "rss_mb": self.rss_mb,
        })
    }
}

/// What one server did under the load.
struct Report {
    name: &'static str,
    steps: Vec<Step>,
    limit: &'static str,
    idle_rss_mb: f64,
    subscriber_joins_ms: Vec<f64>,
}

impl Report {
    fn passing(&self) -> Option<&Step> {
        self.steps.iter().rev().find(|s| s.passed())
    }

    fn at(&self, subscribers: usize) -> Option<&Step> {
        self.steps.iter().find(|s| s.subscribers == subscribers)
    }

    fn max_subscribers(&self) -> usize {
        self.passing().map_or(0, |s| s.subscribers)
    }

    fn memory_mb_per_subscriber(&self) -> f64 {
        self.passing().map_or(f64::NAN, |s| {
            (s.rss_mb - self.idle_rss_mb) / s.subscribers.max(1) as f64
        })
    }
}

fn print_header() {
    println!(
        "{:>6} {:>10} {:>10} {:>12} {:>10} {:>8} {:>9} {:>9} {:>9}",
        "subs",
        "srv cpu",
        "gen cpu",
        "fwd pkt/s",
        "µs/pkt",
        "loss %",
        "lat p50",
        "lat p99",
        "rss MB"
    );
}

fn print_step(s: &Step) {
    println!(
        "{:>6} {:>10.2} {:>10.2} {:>12.0} {:>10.2} {:>8.3} {:>9.2} {:>9.2} {:>9.1}",
        s.subscribers,
        s.server_cores,
        s.loadgen_cores,
        s.packets_per_second,
        s.cpu_us_per_packet,
        s.loss * 100.0,
        s.latency_p50_ms,
        s.latency_p99_ms,
        s.rss_mb
    );
}

/// Waits (at most 45 s) until the server uses under a tenth of a core: the subscribers that
/// left may take until their ICE consent times out to be dropped.
async fn wait_idle(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(45);
    let pid = pid.to_string();
    while Instant::now() < deadline {
        let Some(a) = cpu_seconds_of(&pid) else {
            return;
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(b) = cpu_seconds_of(&pid) else {
            return;
        };
        if b - a < 0.1 {
            return;
        }
    }
}

/// Steps `server` through the subscriber counts; then times subscriber joins on it idle.
async fn load(server: &mut Server, args: &SfuArgs, cpus: usize) -> anyhow::Result<Report> {
    let pid = server.pid();
    let publisher = server.publish().await?;
    loadgen::wait_connected(std::slice::from_ref(&publisher), Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_mb = rss_bytes_of(&pid.to_string()).unwrap_or(0) as f64 / 1e6;
    println!("\n{}:", server.name());
    print_header();
    let mut subs: Vec<Client> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut limit = "every step passed";
    for &target in &args.steps {
        while subs.len() < target {
            let i = subs.len();
            subs.push(server.subscribe(i, i < args.full_subscribers).await?);
        }
        loadgen::wait_connected(&subs, Duration::from_secs(30)).await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let timed = &subs[..args.full_subscribers.min(subs.len())];
        for s in timed {
            if let Ok(mut v) = s.counters.latency_us.lock() {
                v.clear();
            }
        }
        let a = snapshot(pid, &subs)?;
        tokio::time::sleep(Duration::from_secs(args.window)).await;
        let b = snapshot(pid, &subs)?;
        let wall = b.at.duration_since(a.at).as_secs_f64();
        let packets = (b.received - a.received) as f64;
        let expected = (b.expected - a.expected) as f64;
        let lat = loadgen::latencies_ms(timed);
        let step = Step {
            subscribers: subs.len(),
            server_cores: (b.server_cpu - a.server_cpu) / wall,
            loadgen_cores: (b.own_cpu - a.own_cpu) / wall,
            packets_per_second: packets / wall,
            cpu_us_per_packet: if packets > 0.0 {
                (b.server_cpu - a.server_cpu) * 1e6 / packets
            } else {
                f64::NAN
            },
            loss: if expected > 0.0 {
                (1.0 - packets / expected).max(0.0)
            } else {
                1.0
            },
            latency_p50_ms: percentile(&lat, 0.5),
            latency_p99_ms: percentile(&lat, 0.99),
            rss_mb: rss_bytes_of(&pid.to_string()).unwrap_or(0) as f64 / 1e6,
        };
        print_step(&step);
        let node_saturated = step.server_cores > SATURATED;
        let gen_saturated = step.loadgen_cores > SATURATED * (cpus.max(2) - 1) as f64;
        let failed = step.loss > MAX_LOSS;
        steps.push(step);
        if failed || node_saturated || gen_saturated {
            limit = if gen_saturated && !node_saturated {
                "the load generator saturated its cores first (the figure is a lower bound)"
            } else if node_saturated {
                "the server saturated its core"
            } else {
                "loss passed 1%"
            };
            break;
        }
    }
    println!("stopped: {limit}");
    let send_errors = publisher.counters.send_errors.load(Ordering::Relaxed);
    if send_errors > 0 {
        bail!("the load generator failed to send {send_errors} packets; figures are not valid");
    }
    server.leave(subs).await;
    wait_idle(pid).await;
    let mut subscriber_joins_ms = Vec::new();
    for i in 0..args.subscriber_joins {
        let start = Instant::now();
        let sub = server.subscribe(100_000 + i, true).await?;
        let deadline = start + Duration::from_secs(10);
        let ms = loop {
            if let Some(t) = sub.counters.time_to_video(start) {
                break t.as_secs_f64() * 1e3;
            }
            if Instant::now() > deadline {
                bail!(
                    "{} subscriber join {i}: no video within 10 s",
                    server.name()
                );
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        subscriber_joins_ms.push(ms);
        drop(sub);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    subscriber_joins_ms.sort_by(f64::total_cmp);
    drop(publisher);
    Ok(Report {
        name: server.name(),
        steps,
        limit,
        idle_rss_mb,
        subscriber_joins_ms,
    })
}

/// Runs the benchmark; returns the JSON summary.
pub async fn run(args: &SfuArgs) -> anyhow::Result<Value> {
    loadgen::epoch();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let others: Vec<String> = (0..cpus)
        .filter(|&c| c != args.node_cpu)
        .map(|c| c.to_string())
        .collect();
    let can_pin = cpus >= 2 && pin(std::process::id(), &others.join(","));
    if !can_pin {
        eprintln!("note: not pinned to separate cores (needs 2 CPUs and taskset)");
    }
    println!(
        "sfu benchmark: one 720p simulcast publisher ({} kb/s in three layers + audio); \
         subscribers take the top layer and the audio; server pinned to cpu {}: {can_pin}",
        SIMULCAST_720P.iter().map(|l| l.bitrate_bps).sum::<u32>() / 1000,
        args.node_cpu
    );

    let node = Node::start(&["--max-room-participants", "5000"]).await?;
    let pinned = can_pin && pin(node.pid(), &args.node_cpu.to_string());
    let mut moim = Server::Moim {
        node,
        http: reqwest::Client::new(),
    };
    let report = load(&mut moim, args, cpus).await?;
    let Server::Moim { node, .. } = moim else {
        unreachable!("built as moim above")
    };
    let joins = if args.joins > 0 {
        chromium_join_times(&node, args.joins).await?
    } else {
        Vec::new()
    };
    drop(node);

    let peer = match args.vs.as_deref() {
        Some("janus") => {
            let j = Janus::start(can_pin.then_some(args.node_cpu), args.janus_event_loops).await?;
            let session = janus::Session::create(&j).await?;
            let mut server = Server::Janus {
                janus: j,
                session,
                feed: None,
            };
            let r = load(&mut server, args, cpus).await;
            if let (Err(_), Server::Janus { janus, .. }) = (&r, &server) {
                eprintln!("janus log:\n{}", janus.log_tail());
            }
            Some(r?)
        }
        _ => None,
    };
    Ok(summarize(args, &report, peer.as_ref(), &joins, pinned))
}

/// The figures of `ours` (and the peer's, with ratios), printed and as JSON.
fn summarize(
    args: &SfuArgs,
    ours: &Report,
    peer: Option<&Report>,
    joins: &[f64],
    pinned: bool,
) -> Value {
    // Per-packet cost depends on load, so the servers are compared at the largest step both
    // passed; each server's own figure is at its own largest passing step.
    let compared_at = match peer {
        Some(p) => ours.max_subscribers().min(p.max_subscribers()),
        None => ours.max_subscribers(),
    };
    let cpu_us = |r: &Report| {
        r.at(compared_at)
            .or(r.passing())
            .map_or(f64::NAN, |s| s.cpu_us_per_packet)
    };
    let lat = |r: &Report, p50: bool| {
        r.at(compared_at).or(r.passing()).map_or(f64::NAN, |s| {
            if p50 {
                s.latency_p50_ms
            } else {
                s.latency_p99_ms
            }
        })
    };
    let join_p50 = percentile(joins, 0.5);
    let mut out = json!({
        "bench": "sfu",
        "compared_at_subscribers": compared_at,
        "cpu_us_per_forwarded_packet": cpu_us(ours),
        "max_subscribers": ours.max_subscribers(),
        "memory_mb_per_subscriber": ours.memory_mb_per_subscriber(),
        "latency_ms_p50": lat(ours, true),
        "latency_ms_p99": lat(ours, false),
        "subscriber_join_ms_p50": percentile(&ours.subscriber_joins_ms, 0.5),
        "join_ms_p50": join_p50,
        "join_ms": joins,
        "limit": ours.limit,
        "pinned": pinned,
        "steps": ours.steps.iter().map(Step::json).collect::<Vec<_>>(),
    });
    println!();
    println!(
        "{:<44} {:>12} {:>12} {:>12}",
        "figure",
        ours.name,
        peer.map_or("", |p| p.name),
        if peer.is_some() { "moim/peer" } else { "" }
    );
    let line = |name: &str, a: f64, b: Option<f64>, higher_is_better: bool| {
        let ratio = b.map(|b| if higher_is_better { a / b } else { b / a });
        println!(
            "{:<44} {:>12.2} {:>12} {:>12}",
            name,
            a,
            b.map_or(String::new(), |b| format!("{b:.2}")),
            ratio.map_or(String::new(), |r| format!("{r:.2}"))
        );
    };
    let pps = |us: f64| 1e6 / us;
    line(
        &format!("packets per cpu-second (at {compared_at} subs)"),
        pps(cpu_us(ours)),
        peer.map(|p| pps(cpu_us(p))),
        true,
    );
    line(
        "cpu µs per forwarded packet",
        cpu_us(ours),
        peer.map(cpu_us),
        false,
    );
    line(
        "max subscribers below 1% loss",
        ours.max_subscribers() as f64,
        peer.map(|p| p.max_subscribers() as f64),
        true,
    );
    line(
        "latency p50 ms",
        lat(ours, true),
        peer.map(|p| lat(p, true)),
        false,
    );
    line(
        "latency p99 ms",
        lat(ours, false),
        peer.map(|p| lat(p, false)),
        false,
    );
    line(
        "subscriber join to first video, p50 ms",
        percentile(&ours.subscriber_joins_ms, 0.5),
        peer.map(|p| percentile(&p.subscriber_joins_ms, 0.5)),
        false,
    );
    line(
        "memory per subscriber, MB",
        ours.memory_mb_per_subscriber(),
        peer.map(Report::memory_mb_per_subscriber),
        false,
    );
    if !joins.is_empty() {
        println!(
            "chromium join to moim, to first decoded frame: p50 {join_p50:.0} ms (runs: {})",
            joins
                .iter()
                .map(|j| format!("{j:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    if let Some(p) = peer {
        let o = &mut out;
        o["peer"] = json!(p.name);
        o["ratio_packets_per_cpu_second"] = json!(cpu_us(p) / cpu_us(ours));
        o["janus_cpu_us_per_forwarded_packet"] = json!(cpu_us(p));
        o["janus_max_subscribers"] = json!(p.max_subscribers());
        o["ratio_max_subscribers"] =
            json!(ours.max_subscribers() as f64 / p.max_subscribers().max(1) as f64);
        o["janus_memory_mb_per_subscriber"] = json!(p.memory_mb_per_subscriber());
        o["janus_latency_ms_p50"] = json!(lat(p, true));
        o["janus_latency_ms_p99"] = json!(lat(p, false));
        o["janus_subscriber_join_ms_p50"] = json!(percentile(&p.subscriber_joins_ms, 0.5));
        o["janus_limit"] = json!(p.limit);
        o["janus_event_loops"] = json!(args.janus_event_loops);
        o["janus_steps"] = json!(p.steps.iter().map(Step::json).collect::<Vec<_>>());
    }
    out
}

/// Chromium joins a moim room where another Chromium publishes simulcast camera video; each
/// run is a fresh page load, timed from navigation start to the first decoded frame.
async fn chromium_join_times(node: &Node, runs: usize) -> anyhow::Result<Vec<f64>> {
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
    out.sort_by(f64::total_cmp);
    Ok(out)
}
