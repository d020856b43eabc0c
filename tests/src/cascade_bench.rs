//! `moim-bench cascade`: what a relay hop costs.
//!
//! - Hop latency: one synthetic 720p simulcast publisher on node A (seoul); timed subscribers
//!   on A and on node B (frankfurt), which gets the stream over the QUIC link. The added
//!   latency per hop is B's forwarding latency minus A's, at p50 and p99.
//! - Overhead: UDP bytes A sent B on the link, over the RTP bytes it relayed, in the same
//!   window (datagram header, QUIC framing and encryption, acknowledgements, control).
//! - Relay throughput: two relay endpoints in this process, one sending 1,200-byte media
//!   datagrams as fast as the link takes them, the other decoding them; packets received per
//!   CPU-second of the process (both ends on one thread, so it is a per-core figure).
//! - With `--link PROFILE` (and `--no-relay-fit` to compare without the link budget) the link crosses the user-space WAN path of [`crate::impair`]
//!   (`rtt=180ms,loss=2%,burst=3`, `rate=3Mbit,rtt=60ms`, `rate=1Mbit->4Mbit`: the rate changes
//!   halfway through the window): what the far node's subscribers got over time, the path's
//!   loss, the link's estimate and queue, and the added latency over the path's own delay.

use crate::impair::{GilbertElliott, ImpairedPath, Loss, PathProfile};
use crate::loadgen::{self, SIMULCAST_720P, latencies_ms, wait_connected};
use crate::{Node, dev_token, free_udp_port, metric, percentile};
use anyhow::Context;
use bytes::Bytes;
use media_node::process::cpu_seconds_of;
use media_node::relay::link::RelayEndpoint;
use media_node::relay::proto::{Datagram, MediaDatagram};
use media_node::relay::tls::{RelayTls, RelayTrust};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Flags of `moim-bench cascade`.
#[derive(clap::Args)]
pub struct CascadeArgs {
    /// Seconds measured (after a settling period).
    #[arg(long, default_value_t = 10)]
    pub window: u64,
    /// Timed subscribers on each node.
    #[arg(long, default_value_t = 2)]
    pub subscribers: usize,
    /// Seconds of the in-process relay throughput run.
    #[arg(long, default_value_t = 5)]
    pub throughput_secs: u64,
    /// Print a JSON object as the last line.
    #[arg(long)]
    pub json: bool,
    /// Send the link through a WAN path: comma-separated `rtt=MS`, `loss=PCT`, `burst=N` (mean
    /// loss burst in datagrams: Gilbert-Elliott), `jitter=MS`, `queue=MS` (bottleneck queue),
    /// `rate=RATE` or `rate=RATE->RATE` (the second from halfway through the window), RATE as
    /// `800kbit` or `2.5Mbit`.
    #[arg(long)]
    pub link: Option<String>,
    /// Start the nodes with `--relay-fit false`: links send whatever the far side asks for,
    /// fitting or not.
    #[arg(long)]
    pub no_relay_fit: bool,
}

/// A `--link` profile: the path, and the rate it changes to halfway (if it does).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkProfile {
    /// The path at the start.
    pub path: PathProfile,
    /// The bottleneck's rate from halfway through the window.
    pub then_bps: Option<u64>,
}

fn rate_bps(v: &str) -> anyhow::Result<u64> {
    let v = v.trim().to_ascii_lowercase();
    let (num, unit) = if let Some(n) = v.strip_suffix("mbit") {
        (n, 1e6)
    } else if let Some(n) = v.strip_suffix("kbit") {
        (n, 1e3)
    } else {
        anyhow::bail!("rate {v:?}: give it as 800kbit or 2.5Mbit");
    };
    let n: f64 = num.parse().with_context(|| format!("rate {v:?}"))?;
    anyhow::ensure!(n > 0.0, "rate {v:?} must be above 0");
    Ok((n * unit) as u64)
}

fn millis(v: &str) -> anyhow::Result<Duration> {
    let n: u64 = v
        .trim()
        .trim_end_matches("ms")
        .parse()
        .with_context(|| format!("{v:?}: milliseconds, as 60ms"))?;
    Ok(Duration::from_millis(n))
}

impl std::str::FromStr for LinkProfile {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut path = PathProfile::lossy(Duration::ZERO, 0.0);
        let (mut loss, mut burst, mut then_bps) = (0.0, None, None);
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("{part:?}: expected key=value"))?;
            match k.trim() {
                "rtt" => path.delay = millis(v)? / 2,
                "jitter" => path.jitter = millis(v)?,
                "queue" => path.queue = millis(v)?,
                "loss" => {
                    loss = v.trim().trim_end_matches('%').parse::<f64>()? / 100.0;
                    anyhow::ensure!((0.0..1.0).contains(&loss), "loss {v:?}: 0 to 99%");
                }
                "burst" => burst = Some(v.trim().parse::<f64>()?),
                "rate" => {
                    let (a, b) = match v.split_once("->").or_else(|| v.split_once('→')) {
                        Some((a, b)) => (a, Some(b)),
                        None => (v, None),
                    };
                    path.rate_bps = Some(rate_bps(a)?);
                    then_bps = b.map(rate_bps).transpose()?;
                }
                other => anyhow::bail!(
                    "unknown link setting {other:?}: rtt, loss, burst, jitter, queue, rate"
                ),
            }
        }
        path.loss = match burst {
            Some(b) => Loss::Bursty(GilbertElliott::bursts(loss, b)),
            None => Loss::Random(loss),
        };
        Ok(Self { path, then_bps })
    }
}

/// Runs the benchmark; returns the JSON summary.
pub async fn run(args: &CascadeArgs) -> anyhow::Result<serde_json::Value> {
    let link: Option<LinkProfile> = args.link.as_deref().map(str::parse).transpose()?;
    let extra: &[&str] = if args.no_relay_fit {
        &["--relay-fit", "false"]
    } else {
        &[]
    };
    let relay_a = format!("127.0.0.1:{}", free_udp_port());
    let relay_b = format!("127.0.0.1:{}", free_udp_port());
    let a = Node::start_relay("seoul-1", "seoul", &relay_a, &[], extra).await?;
    let path = match &link {
        Some(l) => Some(ImpairedPath::with_profile(relay_a.parse()?, l.path.clone()).await?),
        None => None,
    };
    let via = path
        .as_ref()
        .map_or(relay_a.clone(), |p| p.addr().to_string());
    let b = Node::start_relay("fra-1", "frankfurt", &relay_b, &[&via], extra).await?;
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&http, &b, "moim_relay_links").await? < 1.0 {
        anyhow::ensure!(Instant::now() < deadline, "the relay link did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let room = "bench";
    let publisher = loadgen::publish(
        &http,
        &a.url(""),
        room,
        &dev_token(room, "publisher"),
        &SIMULCAST_720P,
    )
    .await?;
    wait_connected(std::slice::from_ref(&publisher), Duration::from_secs(10)).await?;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..args.subscribers {
        let t = dev_token(room, &format!("a-{i}"));
        on_a.push(loadgen::subscribe(&http, &a.url(""), room, &t, true).await?);
        let t = dev_token(room, &format!("b-{i}"));
        on_b.push(loadgen::subscribe(&http, &b.url(""), room, &t, true).await?);
    }
    wait_connected(&on_a, Duration::from_secs(30)).await?;
    wait_connected(&on_b, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    for s in on_a.iter().chain(&on_b) {
        if let Ok(mut v) = s.counters.latency_us.lock() {
            v.clear();
        }
    }
    let udp = r#"moim_relay_sent_bytes_total{peer="fra-1"}"#;
    let (udp0, rtp0, pkts0) = (
        metric(&http, &a, udp).await?,
        metric(&http, &a, "moim_relay_rtp_bytes_sent_total").await?,
        metric(&http, &a, "moim_relay_packets_sent_total").await?,
    );
    let timeline = match (&path, &link) {
        (Some(path), Some(link)) => Some(
            watch_link(
                &http,
                &a,
                path,
                link,
                &on_b,
                Duration::from_secs(args.window),
            )
            .await?,
        ),
        _ => {
            tokio::time::sleep(Duration::from_secs(args.window)).await;
            None
        }
    };
    // The link's byte counters are sampled every second: wait for the next sample.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (udp1, rtp1, pkts1) = (
        metric(&http, &a, udp).await?,
        metric(&http, &a, "moim_relay_rtp_bytes_sent_total").await?,
        metric(&http, &a, "moim_relay_packets_sent_total").await?,
    );
    let (lat_a, lat_b) = (latencies_ms(&on_a), latencies_ms(&on_b));
    anyhow::ensure!(
        !lat_a.is_empty() && !lat_b.is_empty(),
        "no latency samples (A {}, B {})",
        lat_a.len(),
        lat_b.len()
    );
    let hop_p50 = percentile(&lat_b, 0.5) - percentile(&lat_a, 0.5);
    let hop_p99 = percentile(&lat_b, 0.99) - percentile(&lat_a, 0.99);
    let overhead = (udp1 - udp0) / (rtp1 - rtp0).max(1.0);
    let relayed_per_s = (pkts1 - pkts0) / (args.window as f64 + 1.1);
    drop((publisher, on_a, on_b));
    let per_core = relay_throughput(Duration::from_secs(args.throughput_secs)).await?;
    println!("moim cascade benchmark: two media-node processes linked over QUIC on loopback");
    println!(
        "forwarding latency p50/p99: {:.2}/{:.2} ms on the publisher's node, {:.2}/{:.2} ms one hop away ({} + {} samples)",
        percentile(&lat_a, 0.5),
        percentile(&lat_a, 0.99),
        percentile(&lat_b, 0.5),
        percentile(&lat_b, 0.99),
        lat_a.len(),
        lat_b.len()
    );
    println!("hop latency p50 {hop_p50:.2} ms, p99 {hop_p99:.2} ms");
    println!(
        "link: {relayed_per_s:.0} packets/s relayed, {:.0} kB/s RTP, {:.0} kB/s on the wire: overhead ratio {overhead:.3}",
        (rtp1 - rtp0) / 1000.0 / (args.window as f64 + 1.1),
        (udp1 - udp0) / 1000.0 / (args.window as f64 + 1.1)
    );
    println!(
        "relay link alone (in process, both ends on one core): {per_core:.0} packets per core-second"
    );
    let mut link_json = serde_json::Value::Null;
    if let (Some(t), Some(l)) = (&timeline, &link) {
        let own = l.path.delay.as_secs_f64() * 1000.0;
        println!(
            "link {}{}: path lost {:.2}% of {} datagrams ({:.2}% after the first 5 s), longest \
             queue {} ms; added latency over the path's {own:.0} ms: p50 {:.1} ms, p99 {:.1} ms; \
             far subscribers lost {:.2}%, longest gap in their video {} ms",
            args.link.as_deref().unwrap_or_default(),
            if args.no_relay_fit {
                " (--relay-fit false)"
            } else {
                ""
            },
            t.loss_pct,
            t.offered,
            t.loss_pct_after_5s,
            t.max_queue_ms,
            hop_p50 - own,
            hop_p99 - own,
            t.subscriber_loss_pct,
            t.longest_gap_ms,
        );
        println!("  t(s)  far kbit/s  estimate kbit/s  queue ms  held");
        for r in &t.rows {
            println!(
                "  {:>4.1}  {:>10.0}  {:>15.0}  {:>8.1}  {:>4}",
                r.0, r.1, r.2, r.3, r.4
            );
        }
        link_json = json!({
            "profile": args.link,
            "relay_fit": !args.no_relay_fit,
            "path_loss_pct": t.loss_pct,
            "path_loss_pct_after_5s": t.loss_pct_after_5s,
            "max_queue_ms": t.max_queue_ms,
            "added_latency_ms_p50": hop_p50 - own,
            "added_latency_ms_p99": hop_p99 - own,
            "subscriber_loss_pct": t.subscriber_loss_pct,
            "longest_gap_ms": t.longest_gap_ms,
            "timeline": t.rows,
        });
    }
    Ok(json!({
        "link": link_json,
        "hop_latency_ms_p50": hop_p50,
        "hop_latency_ms_p99": hop_p99,
        "latency_ms_p50_local": percentile(&lat_a, 0.5),
        "latency_ms_p99_local": percentile(&lat_a, 0.99),
        "relay_packets_per_core_second": per_core,
        "overhead_ratio": overhead,
        "relayed_packets_per_second": relayed_per_s,
    }))
}

/// What crossed an impaired link during the window.
struct LinkTimeline {
    offered: u64,
    loss_pct: f64,
    loss_pct_after_5s: f64,
    max_queue_ms: u64,
    subscriber_loss_pct: f64,
    longest_gap_ms: u64,
    /// Every 500 ms: seconds into the window, what the far subscribers received (kbit/s, the
    /// mean over them), the link's estimate (kbit/s, 0: no limit seen), its queue delay (ms)
    /// and the layers it held back.
    rows: Vec<(f64, f64, f64, f64, f64)>,
}

/// Samples the link for `window` (changing the path's rate halfway when the profile says so).
async fn watch_link(
    http: &reqwest::Client,
    a: &Node,
    path: &ImpairedPath,
    link: &LinkProfile,
    far: &[loadgen::Client],
    window: Duration,
) -> anyhow::Result<LinkTimeline> {
    let counts =
        |f: &dyn Fn(&loadgen::Counters) -> u64| -> u64 { far.iter().map(|s| f(&s.counters)).sum() };
    // The far node dialled the path: direction 1 carries what the publisher's node sends it.
    let [_, start] = path.stats();
    let (recv0, exp0) = (
        counts(&|c| c.received.load(Ordering::Relaxed)),
        counts(&|c| c.expected.load(Ordering::Relaxed)),
    );
    let began = Instant::now();
    let step = Duration::from_millis(500);
    let mut rows = Vec::new();
    let mut at_5s = None;
    let (mut last_bytes, mut last_at) = (counts(&|c| c.bytes.load(Ordering::Relaxed)), began);
    let (mut last_recv, mut gap, mut longest_gap) = (recv0, Duration::ZERO, Duration::ZERO);
    let mut changed = false;
    while began.elapsed() < window {
        tokio::time::sleep(step).await;
        if !changed && began.elapsed() >= window / 2 {
            if let Some(bps) = link.then_bps {
                path.update(|p| p.rate_bps = Some(bps));
            }
            changed = true;
        }
        if at_5s.is_none() && began.elapsed() >= Duration::from_secs(5) {
            at_5s = Some(path.stats()[1]);
        }
        let now = Instant::now();
        let bytes = counts(&|c| c.bytes.load(Ordering::Relaxed));
        let kbps = (bytes - last_bytes) as f64 * 8.0
            / 1000.0
            / now.duration_since(last_at).as_secs_f64()
            / far.len().max(1) as f64;
        (last_bytes, last_at) = (bytes, now);
        // A step in which no subscriber got a packet is part of a gap.
        let recv = counts(&|c| c.received.load(Ordering::Relaxed));
        if recv == last_recv {
            gap += step;
            longest_gap = longest_gap.max(gap);
        } else {
            gap = Duration::ZERO;
        }
        last_recv = recv;
        // Absent until the link has something to say (no limit seen, nothing held): 0.
        let text = http.get(a.url("/metrics")).send().await?.text().await?;
        let link =
            |name: &str| crate::sample(&text, &format!("{name}{{peer=\"fra-1\"}}")).unwrap_or(0.0);
        rows.push((
            began.elapsed().as_secs_f64(),
            kbps,
            link("moim_relay_estimate_bps") / 1000.0,
            link("moim_relay_queue_delay_seconds") * 1000.0,
            link("moim_relay_layers_held"),
        ));
    }
    let [_, end] = path.stats();
    let offered = end.since(&start).offered;
    let loss_pct = end.since(&start).dropped_share() * 100.0;
    let loss_pct_after_5s = end.since(at_5s.as_ref().unwrap_or(&start)).dropped_share() * 100.0;
    let (recv, exp) = (
        counts(&|c| c.received.load(Ordering::Relaxed)) - recv0,
        counts(&|c| c.expected.load(Ordering::Relaxed)) - exp0,
    );
    Ok(LinkTimeline {
        offered,
        loss_pct,
        loss_pct_after_5s,
        max_queue_ms: end.max_queue_us / 1000,
        subscriber_loss_pct: exp.saturating_sub(recv) as f64 * 100.0 / exp.max(1) as f64,
        longest_gap_ms: longest_gap.as_millis() as u64,
        rows,
    })
}

/// Packets per CPU-second through one relay link, both ends in this process.
async fn relay_throughput(secs: Duration) -> anyhow::Result<f64> {
    let any = "127.0.0.1:0".parse()?;
    let tx = RelayEndpoint::bind(any, RelayTls::new(&RelayTrust::Dev)?, "tx", "x")?;
    let rx = RelayEndpoint::bind(any, RelayTls::new(&RelayTrust::Dev)?, "rx", "y")?;
    let addr = rx.local_addr()?;
    let (accepted, dialled) = tokio::join!(rx.accept(), tx.dial(addr));
    let at_rx = accepted.context("no incoming link")??;
    let at_tx = dialled?;
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (conn, received, stop) = (at_rx.connection(), received.clone(), stop.clone());
        tokio::spawn(async move {
            let mut reassembly = media_node::relay::fragment::Reassembler::default();
            while !stop.load(Ordering::Relaxed) {
                let Ok(d) = conn.read_datagram().await else {
                    break;
                };
                // Put back together what the sender split for a smaller path.
                let d = if media_node::relay::fragment::is_fragment(&d) {
                    match reassembly.push(&d) {
                        Some(whole) => whole,
                        None => continue,
                    }
                } else {
                    d
                };
                if let Ok(Datagram::Media(m)) = Datagram::decode(d)
                    && m.rtp.len() > 12
                {
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    let conn = at_tx.connection();
    let mut rtp = vec![0u8; 1200];
    rtp[0] = 0x80;
    rtp[1] = 96;
    let cpu0 = cpu_seconds_of("self").context("cpu")?;
    let start = Instant::now();
    let mut seq: u16 = 0;
    while start.elapsed() < secs {
        seq = seq.wrapping_add(1);
        rtp[2..4].copy_from_slice(&seq.to_be_bytes());
        let d = MediaDatagram {
            track: 1,
            layer: 0,
            rtp: Bytes::copy_from_slice(&rtp),
        };
        // Waits for room in the send buffer: the link's pace, not drops, sets the rate.
        media_node::relay::link::send_datagram_wait(&conn, d.encode())
            .await
            .map_err(anyhow::Error::msg)?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let cpu = cpu_seconds_of("self").context("cpu")? - cpu0;
    let n = received.load(Ordering::Relaxed) as f64;
    reader.abort();
    Ok(n / cpu.max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_profiles_parse_and_bad_ones_say_why() -> anyhow::Result<()> {
        let p: LinkProfile = "rtt=180ms,loss=2%,burst=3".parse()?;
        assert_eq!(p.path.delay, Duration::from_millis(90));
        assert_eq!(p.path.loss, Loss::Bursty(GilbertElliott::bursts(0.02, 3.0)));
        assert_eq!(p.path.rate_bps, None);
        let p: LinkProfile = "rate=1Mbit->4Mbit, rtt=60ms".parse()?;
        assert_eq!(p.path.rate_bps, Some(1_000_000));
        assert_eq!(p.then_bps, Some(4_000_000));
        assert_eq!(p.path.loss, Loss::Random(0.0));
        let p: LinkProfile = "rate=2.5Mbit→800kbit".parse()?;
        assert_eq!(
            (p.path.rate_bps, p.then_bps),
            (Some(2_500_000), Some(800_000))
        );
        for bad in ["rtt=fast", "loss=120%", "rate=3", "speed=1Mbit", "rtt"] {
            assert!(bad.parse::<LinkProfile>().is_err(), "{bad}");
        }
        Ok(())
    }
}
