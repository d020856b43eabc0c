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
}

/// Runs the benchmark; returns the JSON summary.
pub async fn run(args: &CascadeArgs) -> anyhow::Result<serde_json::Value> {
    let relay_a = format!("127.0.0.1:{}", free_udp_port());
    let relay_b = format!("127.0.0.1:{}", free_udp_port());
    let a = Node::start_relay("seoul-1", "seoul", &relay_a, &[], &[]).await?;
    let b = Node::start_relay("fra-1", "frankfurt", &relay_b, &[&relay_a], &[]).await?;
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
    tokio::time::sleep(Duration::from_secs(args.window)).await;
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
    Ok(json!({
        "hop_latency_ms_p50": hop_p50,
        "hop_latency_ms_p99": hop_p99,
        "latency_ms_p50_local": percentile(&lat_a, 0.5),
        "latency_ms_p99_local": percentile(&lat_a, 0.99),
        "relay_packets_per_core_second": per_core,
        "overhead_ratio": overhead,
        "relayed_packets_per_second": relayed_per_s,
    }))
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
