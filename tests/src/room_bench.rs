//! `moim-bench room`: a large meeting on one media node (pinned to one core), with and without
//! the node sending only what viewers show. `--publishers` load-generator publishers (two small
//! simulcast layers each, as gallery tiles need; `--speakers` of them with their microphone
//! on, the rest muted and sending no audio, as muted clients with Opus DTX nearly do) and
//! `--viewers` viewers over moim's WebSocket signalling, in three modes, each on a fresh node:
//!
//! - `all`: every viewer shows every publisher as a 320×180 tile (what a client without
//!   paging asks for);
//! - `page`: every viewer shows one page of `--page` tiles and reports 0×0 for the rest (the
//!   meeting page's grid: the node pauses what is off the page);
//! - `last-n`: every viewer asks for last-N with `n = --page` and 320×180 tiles.
//!
//! Per mode: the node's CPU (cores), its media egress to the viewers (as they received it:
//! Mbit/s and packets/s), the video streams each viewer received, and loss.

use crate::loadgen::{self, Client, LayerSpec};
use crate::sfu_bench::pin;
use crate::signalled::{Protocol, Session};
use crate::{Node, dev_token};
use anyhow::Context;
use media_node::process::cpu_seconds_of;
use moim_wire::signal::ClientMessage;
use serde_json::{Value, json};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Flags of `moim-bench room`.
#[derive(clap::Args)]
pub struct RoomArgs {
    /// Publishers in the room.
    #[arg(long, default_value_t = 50)]
    pub publishers: usize,
    /// Viewers in the room.
    #[arg(long, default_value_t = 50)]
    pub viewers: usize,
    /// Publishers whose microphone is on.
    #[arg(long, default_value_t = 3)]
    pub speakers: usize,
    /// Tiles a viewer shows in the `page` mode, and the N of `last-n`.
    #[arg(long, default_value_t = 9)]
    pub page: usize,
    /// Modes to run, in order.
    #[arg(long, value_delimiter = ',', default_values_t = vec!["all".to_owned(), "page".to_owned(), "last-n".to_owned()])]
    pub modes: Vec<String>,
    /// Seconds measured per mode (after the room settled).
    #[arg(long, default_value_t = 8)]
    pub window: u64,
    /// CPU to pin the node to (the load generator takes the others).
    #[arg(long, default_value_t = 0)]
    pub node_cpu: usize,
    /// Print a JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

/// Two small layers, as a gallery of tiles takes (the paged-grid browser test's).
const LAYERS: [LayerSpec; 2] = [
    LayerSpec {
        rid: "q",
        bitrate_bps: 100_000,
    },
    LayerSpec {
        rid: "h",
        bitrate_bps: 300_000,
    },
];
const TILE: (u32, u32) = (320, 180);
const ROOM: &str = "large";
const LOOPBACK: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

struct Counts {
    at: Instant,
    cpu: f64,
    received: u64,
    expected: u64,
    bytes: u64,
}

fn counts(pid: u32, viewers: &[Client]) -> anyhow::Result<Counts> {
    let sum = |f: fn(&Client) -> u64| viewers.iter().map(f).sum();
    Ok(Counts {
        at: Instant::now(),
        cpu: cpu_seconds_of(&pid.to_string()).context("node cpu")?,
        received: sum(|c| c.counters.received.load(Ordering::Relaxed)),
        expected: sum(|c| c.counters.expected.load(Ordering::Relaxed)),
        bytes: sum(|c| c.counters.bytes.load(Ordering::Relaxed)),
    })
}

/// Runs one mode; returns its figures.
async fn run_mode(args: &RoomArgs, mode: &str, pinned_ok: bool) -> anyhow::Result<Value> {
    let node = Node::start(&["--max-room-participants", "5000"]).await?;
    let pinned = pinned_ok && pin(node.pid(), &args.node_cpu.to_string());
    let http = reqwest::Client::new();
    let mut publishers = Vec::new();
    for i in 0..args.publishers {
        let token = dev_token(ROOM, &format!("p{i:03}"));
        let p = loadgen::publish(&http, &node.url(""), ROOM, &token, &LAYERS)
            .await
            .with_context(|| format!("publisher {i}"))?;
        p.counters
            .audio_muted
            .store(i >= args.speakers, Ordering::Relaxed);
        publishers.push(p);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ws = format!("ws://{}/ws", node.http);
    let mut viewers = Vec::new();
    let joining = Instant::now();
    for i in 0..args.viewers {
        let token = dev_token(ROOM, &format!("v{i:03}"));
        let mut s = Session::join(Protocol::Moim, &ws, &token).await?;
        let tiles = match mode {
            "all" => Some(TILE),
            "page" => {
                let videos = s.videos.clone();
                for (k, track_id) in videos.into_iter().enumerate() {
                    let (w, h) = if k < args.page { TILE } else { (0, 0) };
                    s.send_moim(&ClientMessage::LayerPreference {
                        track_id,
                        max_width: w,
                        max_height: h,
                    })
                    .await?;
                }
                None
            }
            "last-n" => {
                s.send_moim(&ClientMessage::LastN {
                    n: Some(args.page as u32),
                    pinned: Vec::new(),
                })
                .await?;
                Some(TILE)
            }
            other => anyhow::bail!("unknown mode {other:?} (all, page, last-n)"),
        };
        let v = s
            .subscribe(LOOPBACK, i < 2, tiles)
            .await
            .with_context(|| format!("viewer {i}"))?;
        viewers.push(v);
    }
    let joined_in = joining.elapsed();
    // Settle: every viewer connected, layers chosen, paused tracks stopped.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let a = counts(node.pid(), &viewers)?;
    tokio::time::sleep(Duration::from_secs(args.window)).await;
    let b = counts(node.pid(), &viewers)?;
    let secs = b.at.duration_since(a.at).as_secs_f64();
    let received = (b.received - a.received) as f64;
    let expected = (b.expected - a.expected).max(1) as f64;
    let figures = json!({
        "mode": mode,
        "pinned": pinned,
        "node_cores": (b.cpu - a.cpu) / secs,
        "egress_mbit_s": (b.bytes - a.bytes) as f64 * 8.0 / secs / 1e6,
        "packets_per_s": received / secs,
        "packets_per_viewer_s": received / secs / args.viewers.max(1) as f64,
        "loss": (1.0 - received / expected).max(0.0),
        "viewers_joined_s": joined_in.as_secs_f64(),
    });
    drop(viewers);
    drop(publishers);
    drop(node);
    Ok(figures)
}

/// Runs the bench; prints a table and returns the figures.
pub async fn run(args: &RoomArgs) -> anyhow::Result<Value> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let others: Vec<String> = (0..cpus)
        .filter(|&c| c != args.node_cpu)
        .map(|c| c.to_string())
        .collect();
    let pinned_ok = cpus >= 2 && pin(std::process::id(), &others.join(","));
    println!(
        "room: {} publishers ({} with the microphone on, two layers {}+{} kb/s), {} viewers; page/last-N {}; node pinned to cpu {}: {pinned_ok}",
        args.publishers,
        args.speakers.min(args.publishers),
        LAYERS[0].bitrate_bps / 1000,
        LAYERS[1].bitrate_bps / 1000,
        args.viewers,
        args.page,
        args.node_cpu
    );
    println!(
        "{:>8} {:>10} {:>12} {:>10} {:>14} {:>7} {:>10}",
        "mode", "node cores", "egress Mb/s", "pkt/s", "pkt/s/viewer", "loss %", "joined s"
    );
    let mut out = Vec::new();
    for mode in &args.modes {
        let f = run_mode(args, mode, pinned_ok).await?;
        println!(
            "{:>8} {:>10.2} {:>12.1} {:>10.0} {:>14.0} {:>7.2} {:>10.1}",
            mode,
            f["node_cores"].as_f64().unwrap_or(0.0),
            f["egress_mbit_s"].as_f64().unwrap_or(0.0),
            f["packets_per_s"].as_f64().unwrap_or(0.0),
            f["packets_per_viewer_s"].as_f64().unwrap_or(0.0),
            f["loss"].as_f64().unwrap_or(0.0) * 100.0,
            f["viewers_joined_s"].as_f64().unwrap_or(0.0),
        );
        out.push(f);
    }
    let find = |m: &str| out.iter().find(|f| f["mode"] == m).cloned();
    let ratio = |m: &str, key: &str| -> Option<f64> {
        let all = find("all")?[key].as_f64()?;
        let x = find(m)?[key].as_f64()?;
        (x > 0.0).then_some(all / x)
    };
    if let Some(r) = ratio("page", "egress_mbit_s") {
        println!(
            "egress all/page: {r:.1}×; node CPU all/page: {:.1}×",
            ratio("page", "node_cores").unwrap_or(0.0)
        );
    }
    if let Some(r) = ratio("last-n", "egress_mbit_s") {
        println!(
            "egress all/last-n: {r:.1}×; node CPU all/last-n: {:.1}×",
            ratio("last-n", "node_cores").unwrap_or(0.0)
        );
    }
    Ok(json!({
        "publishers": args.publishers,
        "viewers": args.viewers,
        "speakers": args.speakers,
        "page": args.page,
        "modes": out,
    }))
}
