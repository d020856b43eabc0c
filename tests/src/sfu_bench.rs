//! `moim-bench sfu [--vs janus,livekit]`: how many subscribers one core carries, and at what CPU
//! cost per forwarded packet, for one 720p simulcast publisher; with `--vs`, the same load on
//! Debian's Janus (VideoRoom) and/or LiveKit (`livekit-server` built from the Go module proxy)
//! pinned to the same core, in the same run, one server after the other.
//!
//! "Forwarded packets" are the distinct media packets the subscribers received (counted the
//! same way for every server), so a server is credited only for what arrived; each step also
//! prints packets per subscriber per second and bytes per packet as the subscribers counted
//! them, which shows the servers carried the same load (the same layer and the audio).
//!
//! A step whose connections do not all complete is the server's limit, recorded as such; the
//! run goes on to the next server.
//!
//! `--shape room` is a meeting rather than a webinar: [`ROOM_PUBLISHERS`] publishers, and
//! viewers that each receive all of them as [`TILE`]-sized tiles (the quarter layer) and their
//! audio, over each server's meeting signalling (moim's `/ws`, LiveKit's `/rtc`, a multistream
//! VideoRoom subscription on Janus). The first [`ROOM_PUBLISHERS`] viewers stand for the
//! publishers' own screens (each also sees itself, which a meeting client would not ask for:
//! the same for every server); the steps count all viewers.

use crate::janus::{self, Janus};
use crate::livekit::LiveKit;
use crate::loadgen::{self, Client, SIMULCAST_720P};
use crate::signalled::{Protocol, Session};
use crate::{Browser, Node, dev_token, percentile};
use anyhow::{Context, bail};
use media_node::process::{cpu_seconds_of, rss_bytes_of};
use serde_json::{Value, json};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// What the load looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// One publisher, every subscriber takes its top layer and audio.
    Webinar,
    /// [`ROOM_PUBLISHERS`] publishers; every viewer takes all of them as small tiles.
    Room,
}

/// Publishers in the room shape.
pub const ROOM_PUBLISHERS: usize = 10;
/// The tile size room viewers ask for (a gallery of 10+; the quarter simulcast layer).
pub const TILE: (u32, u32) = (320, 180);

/// Flags of `moim-bench sfu`.
#[derive(clap::Args)]
pub struct SfuArgs {
    /// Subscriber counts to step through, until loss passes 1% or a core saturates (default:
    /// 10,25,50,100,150,200,250,300,350,400,500,600,800 for a webinar; 10,20,40,60,80,100,
    /// 130,160,200 viewers for a room).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<usize>,
    /// The load: one publisher to many (`webinar`), or a meeting (`room`).
    #[arg(long, value_enum, default_value_t = Shape::Webinar)]
    pub shape: Shape,
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
    /// Run the same load on peer SFUs too, one after the other (`janus`, `livekit`, or both
    /// comma-separated).
    #[arg(long, value_delimiter = ',', value_parser = ["janus", "livekit"])]
    pub vs: Vec<String>,
    /// Janus's static event loops (0: its default, a thread per handle).
    #[arg(long, default_value_t = 1)]
    pub janus_event_loops: usize,
    /// Print a JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

/// How many publishers a shape has.
fn publisher_count(shape: Shape) -> usize {
    match shape {
        Shape::Webinar => 1,
        Shape::Room => ROOM_PUBLISHERS,
    }
}

/// The subscriber counts to step through.
fn steps_of(args: &SfuArgs) -> Vec<usize> {
    if !args.steps.is_empty() {
        return args.steps.clone();
    }
    match args.shape {
        Shape::Webinar => vec![10, 25, 50, 100, 150, 200, 250, 300, 350, 400, 500, 600, 800],
        Shape::Room => vec![10, 20, 40, 60, 80, 100, 130, 160, 200],
    }
}

/// Where the load generator binds.
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Loss above which a step fails.
const MAX_LOSS: f64 = 0.01;
/// Share of one core above which a process counts as saturated.
const SATURATED: f64 = 0.95;
/// The room both servers serve.
const ROOM: &str = "bench";

/// Pins every thread of `pid` to `cpus` (a taskset list); false if that is not possible.
pub(crate) fn pin(pid: u32, cpus: &str) -> bool {
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
        feeds: Vec<u64>,
    },
    LiveKit {
        livekit: LiveKit,
    },
}

impl Server {
    fn name(&self) -> &'static str {
        match self {
            Server::Moim { .. } => "moim",
            Server::Janus { .. } => "janus",
            Server::LiveKit { .. } => "livekit",
        }
    }

    fn pid(&self) -> u32 {
        match self {
            Server::Moim { node, .. } => node.pid(),
            Server::Janus { janus, .. } => janus.pid(),
            Server::LiveKit { livekit } => livekit.pid(),
        }
    }

    /// Publisher `i` (moim: over WHIP).
    async fn publish(&mut self, i: usize) -> anyhow::Result<Client> {
        let identity = format!("publisher-{i}");
        match self {
            Server::Moim { node, http } => loadgen::publish(
                http,
                &node.url(""),
                ROOM,
                &dev_token(ROOM, &identity),
                &SIMULCAST_720P,
            )
            .await
            .context("WHIP publisher"),
            Server::Janus { session, feeds, .. } => {
                let (client, id) = session.publish(&SIMULCAST_720P).await?;
                feeds.push(id);
                Ok(client)
            }
            Server::LiveKit { livekit } => livekit.publish(ROOM, &identity, &SIMULCAST_720P).await,
        }
    }

    /// Ends the subscribers' sessions (WHEP `DELETE` on moim; a leave request on LiveKit's
    /// signalling, sent when a client is dropped; Janus notices when ICE stops).
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

    /// Subscriber `i`: a webinar viewer of the one publisher's top layer (moim: over WHEP), or a
    /// room viewer of every publisher as a [`TILE`].
    async fn subscribe(&self, i: usize, full: bool, shape: Shape) -> anyhow::Result<Client> {
        let identity = format!("viewer-{i}");
        let tiles = (shape == Shape::Room).then_some(TILE);
        match self {
            Server::Moim { node, http } => {
                let token = dev_token(ROOM, &identity);
                match shape {
                    Shape::Webinar => {
                        loadgen::subscribe(http, &node.url(""), ROOM, &token, full).await
                    }
                    Shape::Room => {
                        let ws = format!("ws://{}/ws", node.http);
                        Session::join(Protocol::Moim, &ws, &token)
                            .await?
                            .subscribe(LOOPBACK, full, tiles)
                            .await
                    }
                }
            }
            Server::Janus { session, feeds, .. } => {
                if feeds.is_empty() {
                    bail!("nothing published yet");
                }
                // Janus numbers simulcast layers from the lowest, as the tile's layer is.
                let substream = tiles.map(|_| 0);
                session.subscribe_many(feeds, substream, full).await
            }
            Server::LiveKit { livekit } => livekit.subscribe(ROOM, &identity, full, tiles).await,
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
    bytes: u64,
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
        bytes: subs
            .iter()
            .map(|s| s.counters.bytes.load(Ordering::Relaxed))
            .sum(),
    })
}

struct Step {
    subscribers: usize,
    server_cores: f64,
    loadgen_cores: f64,
    packets_per_second: f64,
    /// Packets each subscriber received per second, and their mean size: the load itself.
    packets_per_subscriber: f64,
    bytes_per_packet: f64,
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
            "packets_per_subscriber_per_second": self.packets_per_subscriber,
            "bytes_per_packet": self.bytes_per_packet,
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
    limit: String,
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
        "{:>6} {:>10} {:>10} {:>12} {:>9} {:>7} {:>10} {:>8} {:>9} {:>9} {:>9}",
        "subs",
        "srv cpu",
        "gen cpu",
        "fwd pkt/s",
        "pkt/s/sub",
        "B/pkt",
        "µs/pkt",
        "loss %",
        "lat p50",
        "lat p99",
        "rss MB"
    );
}

fn print_step(s: &Step) {
    println!(
        "{:>6} {:>10.2} {:>10.2} {:>12.0} {:>9.1} {:>7.0} {:>10.2} {:>8.3} {:>9.2} {:>9.2} {:>9.1}",
        s.subscribers,
        s.server_cores,
        s.loadgen_cores,
        s.packets_per_second,
        s.packets_per_subscriber,
        s.bytes_per_packet,
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
    let mut publishers = Vec::new();
    for i in 0..publisher_count(args.shape) {
        publishers.push(server.publish(i).await?);
    }
    loadgen::wait_connected(&publishers, Duration::from_secs(10)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_rss_mb = rss_bytes_of(&pid.to_string()).unwrap_or(0) as f64 / 1e6;
    println!("\n{}:", server.name());
    print_header();
    let mut subs: Vec<Client> = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut limit = String::from("every step passed");
    'steps: for &target in &steps_of(args) {
        // A server that cannot take every subscriber of a step has reached its limit: that is
        // a result, not a failure of the run.
        while subs.len() < target {
            let i = subs.len();
            match server
                .subscribe(i, i < args.full_subscribers, args.shape)
                .await
            {
                Ok(c) => subs.push(c),
                Err(e) => {
                    limit = format!("subscriber {} of {target} could not join: {e:#}", i + 1);
                    break 'steps;
                }
            }
        }
        if let Err(e) = loadgen::wait_connected(&subs, Duration::from_secs(30)).await {
            limit = format!("at {target} subscribers: {e:#}");
            break;
        }
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
        let bytes = (b.bytes - a.bytes) as f64;
        let lat = loadgen::latencies_ms(timed);
        let step = Step {
            subscribers: subs.len(),
            server_cores: (b.server_cpu - a.server_cpu) / wall,
            loadgen_cores: (b.own_cpu - a.own_cpu) / wall,
            packets_per_second: packets / wall,
            packets_per_subscriber: packets / wall / subs.len().max(1) as f64,
            bytes_per_packet: if packets > 0.0 {
                bytes / packets
            } else {
                f64::NAN
            },
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
            }
            .into();
            break;
        }
    }
    println!("stopped: {limit}");
    let send_errors: u64 = publishers
        .iter()
        .map(|p| p.counters.send_errors.load(Ordering::Relaxed))
        .sum();
    if send_errors > 0 {
        bail!("the load generator failed to send {send_errors} packets; figures are not valid");
    }
    server.leave(subs).await;
    wait_idle(pid).await;
    let mut subscriber_joins_ms = Vec::new();
    for i in 0..args.subscriber_joins {
        let start = Instant::now();
        let sub = match server.subscribe(100_000 + i, true, args.shape).await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("{} subscriber join {i}: {e:#}", server.name());
                continue;
            }
        };
        let deadline = start + Duration::from_secs(10);
        let ms = loop {
            if let Some(t) = sub.counters.time_to_video(start) {
                break Some(t.as_secs_f64() * 1e3);
            }
            if Instant::now() > deadline {
                eprintln!(
                    "{} subscriber join {i}: no video within 10 s",
                    server.name()
                );
                break None;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        };
        subscriber_joins_ms.extend(ms);
        drop(sub);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    subscriber_joins_ms.sort_by(f64::total_cmp);
    drop(publishers);
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
    let kbps = SIMULCAST_720P.iter().map(|l| l.bitrate_bps).sum::<u32>() / 1000;
    match args.shape {
        Shape::Webinar => println!(
            "sfu benchmark, webinar: one 720p simulcast publisher ({kbps} kb/s in three layers + \
             audio); subscribers take the top layer and the audio; server pinned to cpu {}: \
             {can_pin}",
            args.node_cpu
        ),
        Shape::Room => println!(
            "sfu benchmark, room: {ROOM_PUBLISHERS} 720p simulcast publishers ({kbps} kb/s each \
             in three layers + audio); every viewer takes all of them as {}x{} tiles (the \
             quarter layer) and their audio; server pinned to cpu {}: {can_pin}",
            TILE.0, TILE.1, args.node_cpu
        ),
    }

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

    let cpu = can_pin.then_some(args.node_cpu);
    let mut peers = Vec::new();
    for name in &args.vs {
        // A peer that fails outright (it does not start, its publisher cannot connect) loses
        // its own column, not the figures already measured.
        match run_peer(name, cpu, args, cpus).await {
            Ok(r) => peers.push(r),
            Err(e) => eprintln!("{name}: {e:#}"),
        }
    }
    Ok(summarize(args, &report, &peers, &joins, pinned))
}

/// Starts the peer `name` on `cpu` and puts the load on it.
async fn run_peer(
    name: &str,
    cpu: Option<usize>,
    args: &SfuArgs,
    cpus: usize,
) -> anyhow::Result<Report> {
    let mut server = match name {
        "janus" => {
            let j = Janus::start(cpu, args.janus_event_loops).await?;
            let session = janus::Session::create(&j).await?;
            Server::Janus {
                janus: j,
                session,
                feeds: Vec::new(),
            }
        }
        "livekit" => Server::LiveKit {
            livekit: LiveKit::start(cpu).await?,
        },
        other => bail!("unknown peer {other}"),
    };
    let r = load(&mut server, args, cpus).await;
    if r.is_err() {
        match &server {
            Server::Janus { janus, .. } => eprintln!("janus log:\n{}", janus.log_tail()),
            Server::LiveKit { livekit } => eprintln!("livekit log:\n{}", livekit.log_tail()),
            Server::Moim { .. } => {}
        }
    }
    r
}

/// The figures of `ours` (and each peer's, with ratios), printed and as JSON.
fn summarize(
    args: &SfuArgs,
    ours: &Report,
    peers: &[Report],
    joins: &[f64],
    pinned: bool,
) -> Value {
    // Per-packet cost depends on load, so the servers are compared at the largest step all
    // passed; each server's own figure is at its own largest passing step.
    let compared_at = peers
        .iter()
        .map(Report::max_subscribers)
        .fold(ours.max_subscribers(), usize::min);
    fn at(r: &Report, n: usize) -> Option<&Step> {
        r.at(n).or(r.passing())
    }
    let cpu_us = |r: &Report| at(r, compared_at).map_or(f64::NAN, |s| s.cpu_us_per_packet);
    let lat = |r: &Report, p50: bool| {
        at(r, compared_at).map_or(f64::NAN, |s| {
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
        "shape": format!("{:?}", args.shape).to_lowercase(),
        "publishers": publisher_count(args.shape),
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
    print!("{:<44} {:>12}", "figure", ours.name);
    for p in peers {
        print!(" {:>12}", p.name);
    }
    for p in peers {
        print!(" {:>14}", format!("moim/{}", p.name));
    }
    println!();
    let line = |name: &str, f: &dyn Fn(&Report) -> f64, higher_is_better: bool| {
        let a = f(ours);
        print!("{name:<44} {a:>12.2}");
        for p in peers {
            print!(" {:>12.2}", f(p));
        }
        for p in peers {
            let b = f(p);
            let ratio = if higher_is_better { a / b } else { b / a };
            print!(" {ratio:>14.2}");
        }
        println!();
    };
    let pps = |r: &Report| 1e6 / cpu_us(r);
    line(
        &format!("packets per cpu-second (at {compared_at} subs)"),
        &pps,
        true,
    );
    line("cpu µs per forwarded packet", &cpu_us, false);
    line(
        "max subscribers below 1% loss",
        &|r| r.max_subscribers() as f64,
        true,
    );
    line("latency p50 ms", &|r| lat(r, true), false);
    line("latency p99 ms", &|r| lat(r, false), false);
    line(
        "subscriber join to first video, p50 ms",
        &|r| percentile(&r.subscriber_joins_ms, 0.5),
        false,
    );
    line(
        "memory per subscriber, MB",
        &Report::memory_mb_per_subscriber,
        false,
    );
    line(
        "packets per subscriber per second",
        &|r| at(r, compared_at).map_or(f64::NAN, |s| s.packets_per_subscriber),
        true,
    );
    line(
        "bytes per packet",
        &|r| at(r, compared_at).map_or(f64::NAN, |s| s.bytes_per_packet),
        true,
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
    for p in peers {
        println!("{} stopped: {}", p.name, p.limit);
    }
    let o = &mut out;
    o["peers"] = json!(peers.iter().map(|p| p.name).collect::<Vec<_>>());
    for (i, p) in peers.iter().enumerate() {
        let n = p.name;
        let ratio = cpu_us(p) / cpu_us(ours);
        let max_ratio = ours.max_subscribers() as f64 / p.max_subscribers().max(1) as f64;
        if i == 0 {
            // The first peer's figures also under the keys a single `--vs` always had.
            o["peer"] = json!(n);
            o["ratio_packets_per_cpu_second"] = json!(ratio);
            o["ratio_max_subscribers"] = json!(max_ratio);
        }
        o[format!("{n}_ratio_packets_per_cpu_second")] = json!(ratio);
        o[format!("{n}_ratio_max_subscribers")] = json!(max_ratio);
        o[format!("{n}_cpu_us_per_forwarded_packet")] = json!(cpu_us(p));
        o[format!("{n}_max_subscribers")] = json!(p.max_subscribers());
        o[format!("{n}_memory_mb_per_subscriber")] = json!(p.memory_mb_per_subscriber());
        o[format!("{n}_latency_ms_p50")] = json!(lat(p, true));
        o[format!("{n}_latency_ms_p99")] = json!(lat(p, false));
        o[format!("{n}_subscriber_join_ms_p50")] = json!(percentile(&p.subscriber_joins_ms, 0.5));
        o[format!("{n}_limit")] = json!(p.limit);
        o[format!("{n}_steps")] = json!(p.steps.iter().map(Step::json).collect::<Vec<_>>());
    }
    if peers.iter().any(|p| p.name == "janus") {
        o["janus_event_loops"] = json!(args.janus_event_loops);
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
