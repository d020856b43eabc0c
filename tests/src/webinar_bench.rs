//! `moim-bench webinar`: one host and `--viewers` (default 1,000) viewers over three linked
//! media nodes, two in the host's region and one in a remote region, as the operator spreads
//! a large webinar. The host (a load-generator publisher of 720p simulcast and audio) is on
//! the first node; viewers join the three nodes in turn over moim's WebSocket signalling and
//! show the host as a `--tile` (the quarter layer by default), `--batch` at a time. The two
//! other nodes get the host's stream once each over a QUIC relay link.
//!
//! Figures: viewer join time (from opening signalling to the first media packet) p50/p95/max,
//! per node, and each node's CPU (cores) and packets sent per second while all viewers watch.
//! The three nodes and the load generator share this machine's cores; nothing is pinned.

use crate::loadgen::{self, Client, SIMULCAST_720P};
use crate::signalled::{Protocol, Session};
use crate::{Node, dev_token, free_udp_port, percentile, sample};
use anyhow::Context;
use futures_util::future::join_all;
use media_node::process::cpu_seconds_of;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Flags of `moim-bench webinar`.
#[derive(clap::Args)]
pub struct WebinarArgs {
    /// Viewers, spread evenly over the three nodes.
    #[arg(long, default_value_t = 1000)]
    pub viewers: usize,
    /// Viewers joining at once.
    #[arg(long, default_value_t = 10)]
    pub batch: usize,
    /// The tile viewers show the host in, `WxH` (320x180: the quarter layer).
    #[arg(long, default_value = "320x180")]
    pub tile: String,
    /// Seconds measured once everyone watches.
    #[arg(long, default_value_t = 8)]
    pub window: u64,
    /// Print a JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

const ROOM: &str = "all-hands";
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
const NAMES: [(&str, &str); 3] = [
    ("seoul-a", "seoul"),
    ("seoul-b", "seoul"),
    ("frankfurt-a", "frankfurt"),
];

fn parse_tile(s: &str) -> anyhow::Result<(u32, u32)> {
    let (w, h) = s.split_once('x').context("--tile is WxH")?;
    Ok((w.parse()?, h.parse()?))
}

/// Three nodes linked as a mesh; returns once every node has its two links.
async fn fleet() -> anyhow::Result<Vec<Node>> {
    let relay: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", free_udp_port()))
        .collect();
    let extra = ["--max-room-participants", "5000"];
    let mut nodes = Vec::new();
    for (i, (id, region)) in NAMES.iter().enumerate() {
        let peers: Vec<&str> = relay[..i].iter().map(String::as_str).collect();
        nodes.push(Node::start_relay(id, region, &relay[i], &peers, &extra).await?);
    }
    crate::wait_relay_links(&nodes, 2.0, Duration::from_secs(30)).await?;
    Ok(nodes)
}

/// One viewer on `node`: joined, answered, and its first media packet arrived; with the time
/// that took.
async fn viewer(node: &Node, i: usize, tile: (u32, u32)) -> anyhow::Result<(Client, Duration)> {
    let start = Instant::now();
    let ws = format!("ws://{}/ws", node.http);
    let token = dev_token(ROOM, &format!("viewer-{i:04}"));
    let client = Session::join(Protocol::Moim, &ws, &token)
        .await?
        .subscribe(LOOPBACK, false, Some(tile))
        .await?;
    while client.counters.received.load(Ordering::Relaxed) == 0 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(20),
            "viewer {i}: no media within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((client, start.elapsed()))
}

/// A node's packets sent to its viewers, and relay packets sent and received, so far.
async fn sent_packets(node: &Node) -> [f64; 3] {
    let Ok(r) = reqwest::get(node.url("/metrics")).await else {
        return [0.0; 3];
    };
    let text = r.text().await.unwrap_or_default();
    [
        "moim_rtp_packets_sent_total",
        "moim_relay_packets_sent_total",
        "moim_relay_packets_received_total",
    ]
    .map(|m| sample(&text, m).unwrap_or(0.0))
}

/// Runs the bench; prints a table and returns the figures.
pub async fn run(args: &WebinarArgs) -> anyhow::Result<Value> {
    let tile = parse_tile(&args.tile)?;
    let nodes = fleet().await?;
    println!(
        "webinar: 1 host (720p simulcast + audio) on {}; {} viewers as {}x{} tiles over {} (seoul), {} (seoul), {} (frankfurt), {} joining at once",
        NAMES[0].0, args.viewers, tile.0, tile.1, NAMES[0].0, NAMES[1].0, NAMES[2].0, args.batch
    );
    let http = reqwest::Client::new();
    let host = loadgen::publish(
        &http,
        &nodes[0].url(""),
        ROOM,
        &dev_token(ROOM, "host"),
        &SIMULCAST_720P,
    )
    .await
    .context("host")?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let mut viewers: Vec<Client> = Vec::new();
    let mut joins: [Vec<f64>; 3] = Default::default();
    let started = Instant::now();
    let mut i = 0;
    while i < args.viewers {
        let batch: Vec<usize> = (i..(i + args.batch.max(1)).min(args.viewers)).collect();
        i += batch.len();
        let done = join_all(batch.iter().map(|&k| viewer(&nodes[k % 3], k, tile))).await;
        for (k, r) in batch.iter().zip(done) {
            let (c, took) = r?;
            joins[k % 3].push(took.as_secs_f64() * 1000.0);
            viewers.push(c);
        }
        if i % 100 == 0 {
            eprintln!("{i} viewers in {:.0} s", started.elapsed().as_secs_f64());
        }
    }
    let all_joined = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;

    let pids: Vec<String> = nodes.iter().map(|n| n.pid().to_string()).collect();
    let cpu = |pids: &[String]| -> anyhow::Result<Vec<f64>> {
        pids.iter()
            .map(|p| cpu_seconds_of(p).context("node cpu"))
            .collect()
    };
    let sum = |f: fn(&Client) -> u64, v: &[Client]| -> u64 { v.iter().map(f).sum() };
    let t0 = Instant::now();
    let cpu0 = cpu(&pids)?;
    let mut sent0 = Vec::new();
    for n in &nodes {
        sent0.push(sent_packets(n).await);
    }
    let per_viewer = |v: &[Client]| -> Vec<u64> {
        v.iter()
            .map(|c| c.counters.received.load(Ordering::Relaxed))
            .collect()
    };
    let got0 = per_viewer(&viewers);
    let rx0 = sum(|c| c.counters.received.load(Ordering::Relaxed), &viewers);
    let ex0 = sum(|c| c.counters.expected.load(Ordering::Relaxed), &viewers);
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu1 = cpu(&pids)?;
    let mut sent1 = Vec::new();
    for n in &nodes {
        sent1.push(sent_packets(n).await);
    }
    let got1 = per_viewer(&viewers);
    let rx = sum(|c| c.counters.received.load(Ordering::Relaxed), &viewers) - rx0;
    // Distinct packets each node's viewers received per second, on average (viewer k joined
    // node k % 3).
    let received_per_viewer = |node: usize| -> f64 {
        let mine: Vec<u64> = (0..got1.len())
            .filter(|k| k % 3 == node)
            .map(|k| got1[k] - got0[k])
            .collect();
        mine.iter().sum::<u64>() as f64 / mine.len().max(1) as f64 / secs
    };
    let ex = (sum(|c| c.counters.expected.load(Ordering::Relaxed), &viewers) - ex0).max(1);
    let loss = (1.0 - rx as f64 / ex as f64).max(0.0);

    println!(
        "{:>12} {:>9} {:>8} {:>8} {:>8} {:>8} {:>10} {:>11} {:>11}",
        "node",
        "viewers",
        "join p50",
        "p95",
        "max ms",
        "cores",
        "pkt/s out",
        "relay out/s",
        "relay in/s"
    );
    let mut per_node = Vec::new();
    let mut every: Vec<f64> = Vec::new();
    for (k, (id, region)) in NAMES.iter().enumerate() {
        let mut j = joins[k].clone();
        j.sort_by(f64::total_cmp);
        every.extend(&j);
        let cores = (cpu1[k] - cpu0[k]) / secs;
        let rate = |m: usize| (sent1[k][m] - sent0[k][m]) / secs;
        let (pps, relay_out, relay_in) = (rate(0), rate(1), rate(2));
        println!(
            "{:>12} {:>9} {:>8.0} {:>8.0} {:>8.0} {:>8.2} {:>10.0} {:>11.0} {:>11.0} {:>8.0}",
            id,
            j.len(),
            percentile(&j, 0.5),
            percentile(&j, 0.95),
            j.last().copied().unwrap_or(0.0),
            cores,
            pps,
            relay_out,
            relay_in,
            received_per_viewer(k)
        );
        per_node.push(json!({
            "node": id, "region": region, "viewers": j.len(),
            "join_ms_p50": percentile(&j, 0.5), "join_ms_p95": percentile(&j, 0.95),
            "join_ms_max": j.last().copied().unwrap_or(0.0),
            "cores": cores, "packets_sent_per_s": pps,
            "relay_packets_out_per_s": relay_out, "relay_packets_in_per_s": relay_in,
            "received_per_viewer_per_s": received_per_viewer(k),
        }));
    }
    every.sort_by(f64::total_cmp);
    println!(
        "all {} viewers joined in {:.0} s; join p50 {:.0} ms, p95 {:.0} ms; loss {:.2}% over {:.0} s",
        viewers.len(),
        all_joined.as_secs_f64(),
        percentile(&every, 0.5),
        percentile(&every, 0.95),
        loss * 100.0,
        secs
    );
    drop(viewers);
    drop(host);
    Ok(json!({
        "viewers": args.viewers,
        "tile": args.tile,
        "join_ms_p50": percentile(&every, 0.5),
        "join_ms_p95": percentile(&every, 0.95),
        "all_joined_s": all_joined.as_secs_f64(),
        "loss": loss,
        "nodes": per_node,
    }))
}
