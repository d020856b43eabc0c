//! Failures a meeting must survive, each set up with real processes and real Chromium and timed
//! from the fault to both participants decoding fresh video: a media node SIGKILLed, a media
//! node whose machine is lost (SIGSTOPped: nothing answers, nothing closes), the hub of a
//! cascade tree SIGKILLed, a participant's UDP path remapped. `tests/tests/failover.rs`
//! runs each once and checks how the pages recovered; `moim-bench failover` runs each many
//! times and prints p50/p99.

use crate::fabric::{Fabric, fresh_video_at, join_through_page, watch_fresh_video};
use crate::{Browser, Node, wait_decoding};
use serde_json::json;
use std::time::{Duration, Instant};

/// A Meeting manifest with `per_region` expected participants (`"seoul: 2, frankfurt: 2"`).
pub fn meeting(name: &str, per_region: &str) -> String {
    format!(
        "apiVersion: media.moim.dev/v1alpha1\nkind: Meeting\nmetadata:\n  name: {name}\nspec:\n  \
         title: {name}\n  participants:\n    perRegion: {{{per_region}}}\n"
    )
}

/// How a media node dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Death {
    /// SIGKILL: the process is gone and the kernel closes its sockets, so pages see their
    /// signalling connection close at once.
    Killed,
    /// SIGSTOP, as a machine that is lost (powered off, cut from the network) looks to the
    /// outside: nothing answers, yet no connection is closed or reset. Pages learn it only from
    /// media that stops; the operator from `/status` reads that time out. (The kernel still
    /// completes TCP handshakes into the listen backlog, which a lost machine would not: a new
    /// connection there hangs instead of timing out at connect, the same to a page.)
    Frozen,
}

impl Death {
    fn signal(self) -> &'static str {
        match self {
            Death::Killed => "KILL",
            Death::Frozen => "STOP",
        }
    }
}

/// Makes `node` die as `death` says once `a` and `b` decode each other, and returns how long
/// until both decoded fresh video again (milliseconds).
pub async fn kill_and_time(
    fabric: &Fabric,
    node: &str,
    death: Death,
    a: &Browser,
    b: &Browser,
) -> anyhow::Result<f64> {
    wait_decoding(a, "moim.sub", 1, Duration::from_secs(40)).await?;
    wait_decoding(b, "moim.sub", 1, Duration::from_secs(40)).await?;
    watch_fresh_video(a).await?;
    watch_fresh_video(b).await?;
    let killed = fabric.signal_node(node, death.signal())?;
    let a_at = fresh_video_at(a, Duration::from_secs(30)).await?;
    let b_at = fresh_video_at(b, Duration::from_secs(30)).await?;
    // What each page did meanwhile (times after the fault), for a slow run's cause.
    let what =
        "return JSON.stringify({recoveries: moim.recoveries, restarts: moim.restartLog || []});";
    eprintln!(
        "{death:?} {node}: fresh video after {:.0} ms and {:.0} ms; pages: {} | {}",
        a_at - killed,
        b_at - killed,
        regex_lite_times(a.js(what).await?.as_str().unwrap_or_default(), killed),
        regex_lite_times(b.js(what).await?.as_str().unwrap_or_default(), killed),
    );
    Ok(a_at.max(b_at) - killed)
}

/// A two-region meeting in the local fabric (ana in seoul, bo in frankfurt); seoul's node dies
/// as `death` says. Returns the fabric, both pages and the recovery time.
pub async fn dead_node(tag: &str, death: Death) -> anyhow::Result<(Fabric, Browser, Browser, f64)> {
    let fabric = Fabric::start(tag, &["--regions", "seoul,frankfurt"])?;
    let run = async {
        fabric
            .apply(
                "sync.yaml",
                &meeting("sync", "seoul: 2, frankfurt: 2"),
                "default/sync",
            )
            .await?;
        let page = format!("http://{}/", fabric.listen);
        let ana = join_through_page(&page, "seoul", "ana").await?;
        let bo = join_through_page(&page, "frankfurt", "bo").await?;
        let took = kill_and_time(&fabric, "seoul-1", death, &ana, &bo).await?;
        anyhow::Ok((ana, bo, took))
    }
    .await;
    match run {
        Ok((a, b, took)) => Ok((fabric, a, b, took)),
        Err(e) => Err(with_output(e, fabric)),
    }
}

/// A three-region tree rooted at frankfurt (the hub, with nobody of the two on it), ana in
/// seoul and cy in virginia; the hub is killed. Returns the fabric, both pages and the
/// recovery time.
pub async fn dead_hub(
    tag: &str,
    node_log: &str,
) -> anyhow::Result<(Fabric, Browser, Browser, f64)> {
    let fabric = Fabric::start(tag, &["--node-log", node_log])?;
    let run = async {
        let placed = fabric
            .apply(
                "tree.yaml",
                &meeting("tree", "frankfurt: 6, seoul: 2, virginia: 2"),
                "default/tree",
            )
            .await?;
        anyhow::ensure!(placed.contains("virginia-1 (virginia)"), "{placed}");
        let page = format!("http://{}/", fabric.listen);
        let ana = join_through_page(&page, "seoul", "ana").await?;
        let cy = join_through_page(&page, "virginia", "cy").await?;
        let took = kill_and_time(&fabric, "frankfurt-1", Death::Killed, &ana, &cy).await?;
        anyhow::Ok((ana, cy, took))
    }
    .await;
    match run {
        Ok((a, b, took)) => Ok((fabric, a, b, took)),
        Err(e) => Err(with_output(e, fabric)),
    }
}

fn with_output(e: anyhow::Error, fabric: Fabric) -> anyhow::Error {
    let (_, text) = fabric.interrupt();
    e.context(format!("fabric output:\n{text}"))
}

/// Page script: note when decoding resumes after a stall (`window.__resume`): the sum of
/// frames decoded on the subscribe connection is sampled every 50 ms; a rise after at least
/// 300 ms without one is a resumption. (Fresh SSRCs, as [`watch_fresh_video`] waits for, do
/// not come: an ICE restart keeps the streams.)
const WATCH_RESUME: &str = "
    if (window.__resume) clearInterval(window.__resume.timer);
    const r = { last: -1, lastRiseAt: performance.now(), stalled: false, resumedAt: null, maxGap: 0 };
    window.__resume = r;
    r.timer = setInterval(async () => {
      if (!moim.sub) return;
      let sum = 0;
      (await moim.sub.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') sum += s.framesDecoded || 0; });
      const now = performance.now();
      if (sum > r.last) {
        const gap = now - r.lastRiseAt;
        r.maxGap = Math.max(r.maxGap, gap);
        if (r.last >= 0 && gap >= 300 && r.resumedAt === null) r.resumedAt = performance.timeOrigin + now;
        r.last = sum; r.lastRiseAt = now;
      }
    }, 50);
    return true;";

/// What a page's connections carry, for a failure message: per connection the nominated
/// candidate pairs and every RTP stream's counters (simulcast rid, PLIs, keyframes).
const RTP_STATS: &str = "return (async () => { const out = []; for (const [k, pc] of [['pub', moim.pub], ['sub', moim.sub]]) { if (!pc) continue; (await pc.getStats()).forEach(r => { if (r.type === 'inbound-rtp' || r.type === 'outbound-rtp' || (r.type === 'candidate-pair' && r.nominated)) out.push([k, r.type, r.kind, r.rid, r.packetsReceived, r.packetsSent, r.framesDecoded, r.state, r.pliCount, r.keyFramesEncoded, r.framesEncoded, r.active]); }); out.push([k, pc.iceConnectionState, pc.connectionState]); } return JSON.stringify(out); })()";

/// What [`network_change`] leaves for its caller to inspect.
pub struct NetworkChange {
    /// The node both joined.
    pub node: Node,
    /// The NAT in front of it (kept: dropping it cuts the path).
    pub nat: crate::impair::UdpNat,
    /// Ana's and Bo's pages.
    pub pages: [Browser; 2],
    /// Each page's `moim.participantId` before the remap.
    pub ids_before: [serde_json::Value; 2],
    /// From the remap until both pages decoded again.
    pub took_ms: f64,
    /// ICE restarts each page made meanwhile.
    pub ice_restarts: [u64; 2],
    /// When each page decoded again, from the remap.
    pub each_ms: [f64; 2],
}

/// Two participants on one node behind the port-mapping NAT; once both decode, the NAT
/// remaps every client (a changed network, as the node sees it), and both pages are timed
/// until they decode again.
pub async fn network_change(room: &str) -> anyhow::Result<NetworkChange> {
    let (node, nat) = crate::impair::node_behind_nat(0.0).await?;
    let ana = Browser::join(&node, room, "ana", true).await?;
    let bo = Browser::join(&node, room, "bo", true).await?;
    wait_decoding(&ana, "moim.sub", 1, Duration::from_secs(30)).await?;
    wait_decoding(&bo, "moim.sub", 1, Duration::from_secs(30)).await?;
    let ids = "return moim.participantId;";
    let ids_before = [ana.js(ids).await?, bo.js(ids).await?];
    for b in [&ana, &bo] {
        b.js(&format!("return (async () => {{ {WATCH_RESUME} }})()"))
            .await?;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let remapped = crate::fabric::epoch_ms();
    nat.remap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut each_ms = [0.0; 2];
    for (i, b) in [&ana, &bo].into_iter().enumerate() {
        let at = loop {
            if let Some(at) = b.js("return window.__resume.resumedAt;").await?.as_f64() {
                break at;
            }
            if Instant::now() > deadline {
                let state = b
                    .js("return JSON.stringify({status: document.getElementById('status').textContent, ice: moim.iceRestarts, r: window.__resume, rec: moim.recoveries});")
                    .await?;
                let http = reqwest::Client::new();
                let mut counts = Vec::new();
                for _ in 0..2 {
                    for m in [
                        "moim_rtp_packets_received_total",
                        "moim_rtp_packets_sent_total",
                    ] {
                        counts.push(crate::metric(&http, &node, m).await.unwrap_or(-1.0));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let mut stats = String::new();
                for who in [&ana, &bo] {
                    stats += &who.js(RTP_STATS).await?.to_string();
                    stats.push('\n');
                }
                anyhow::bail!(
                    "video did not resume: {state}\nnode RTP in/out, twice 1 s apart: {counts:?}\n{stats}"
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        each_ms[i] = at - remapped;
    }
    // A slow page says why: each restart's trigger, from the remap.
    for (i, b) in [&ana, &bo].into_iter().enumerate() {
        if each_ms[i] > 2000.0 {
            let log = b
                .js("return JSON.stringify({restarts: moim.restartLog || [], pub: moim.pub && moim.pub.connectionState, sub: moim.sub && moim.sub.connectionState, recoveries: moim.recoveries});")
                .await?;
            let log = log.as_str().unwrap_or_default().to_owned();
            let relative = regex_lite_times(&log, remapped);
            eprintln!("page {i} took {:.0} ms: {relative}", each_ms[i]);
        }
    }
    let mut ice_restarts = [0; 2];
    for (n, b) in ice_restarts.iter_mut().zip([&ana, &bo]) {
        *n = b
            .js("return moim.iceRestarts;")
            .await?
            .as_u64()
            .unwrap_or(0);
    }
    Ok(NetworkChange {
        node,
        nat,
        pages: [ana, bo],
        ids_before,
        took_ms: each_ms[0].max(each_ms[1]),
        ice_restarts,
        each_ms,
    })
}

/// A run slower than this prints what the fabric logged (`MOIM_TEST_LOG` sets the nodes'
/// filter; `MOIM_KEEP_TEST_DIRS=1` keeps each node's own log).
const SLOW_RUN_MS: f64 = 2_000.0;

/// `moim-bench failover` options.
#[derive(clap::Args)]
pub struct FailoverArgs {
    /// Runs per fault.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Which faults: any of node (SIGKILLed), lost (a machine lost: SIGSTOPped), hub, network.
    #[arg(long, value_delimiter = ',', default_value = "node,lost,hub,network")]
    pub faults: Vec<String>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

/// Each fault `runs` times; prints and returns p50/p99/max recovery per fault. A run that does
/// not recover (within the scenario's 20 s) is counted and its error printed; the bench goes on.
pub async fn run(args: &FailoverArgs) -> anyhow::Result<serde_json::Value> {
    let mut out = serde_json::Map::new();
    println!(
        "{:<10} {:>5} {:>9} {:>9} {:>9} {:>7}",
        "fault", "runs", "p50 ms", "p99 ms", "max ms", "failed"
    );
    // The nodes' log filter (MOIM_TEST_LOG, as in the tests), for a slow run's cause.
    let node_log = std::env::var("MOIM_TEST_LOG").unwrap_or_else(|_| "warn".into());
    for fault in &args.faults {
        let mut took = Vec::new();
        let mut failed = 0;
        for i in 0..args.runs {
            let tag = format!("bench-{fault}-{i}");
            let result = match fault.as_str() {
                "node" => dead_node(&tag, Death::Killed)
                    .await
                    .map(|(f, a, b, t)| (Some(f), a, b, t)),
                "lost" => dead_node(&tag, Death::Frozen)
                    .await
                    .map(|(f, a, b, t)| (Some(f), a, b, t)),
                "hub" => dead_hub(&tag, &node_log)
                    .await
                    .map(|(f, a, b, t)| (Some(f), a, b, t)),
                "network" => network_change(&tag).await.map(|n| {
                    eprintln!(
                        "{fault} run {i}: ICE restarts {:?}, decoding again after {:.0?} ms",
                        n.ice_restarts, n.each_ms
                    );
                    let [a, b] = n.pages;
                    (None, a, b, n.took_ms)
                }),
                other => anyhow::bail!("unknown fault {other:?}: node, lost, hub or network"),
            };
            match result {
                Ok((fabric, a, b, t)) => {
                    a.close().await;
                    b.close().await;
                    if let Some(f) = fabric {
                        if fault == "lost" {
                            // Stopped, it could not handle the fabric's SIGTERM.
                            let _ = f.signal_node("seoul-1", "KILL");
                        }
                        let (_, text) = f.interrupt();
                        if t > SLOW_RUN_MS {
                            eprintln!("{fault} run {i} was slow; the fabric's output:\n{text}");
                        }
                    }
                    eprintln!("{fault} run {i}: {t:.0} ms");
                    took.push(t);
                }
                Err(e) => {
                    failed += 1;
                    eprintln!("{fault} run {i} failed: {e:#}");
                }
            }
        }
        took.sort_by(f64::total_cmp);
        let (p50, p99) = (
            crate::percentile(&took, 0.5),
            crate::percentile(&took, 0.99),
        );
        let max = took.last().copied().unwrap_or(f64::NAN);
        println!(
            "{fault:<10} {:>5} {p50:>9.0} {p99:>9.0} {max:>9.0} {failed:>7}",
            took.len()
        );
        out.insert(
            fault.clone(),
            json!({"runs": took.len(), "failed": failed, "p50_ms": p50, "p99_ms": p99, "max_ms": max, "all_ms": took}),
        );
    }
    Ok(serde_json::Value::Object(out))
}

/// `log` with each `"at":<epoch ms>` written as milliseconds after `since`.
fn regex_lite_times(log: &str, since: f64) -> String {
    let mut out = String::new();
    let mut rest = log;
    while let Some(i) = rest.find("\"at\":") {
        out.push_str(&rest[..i + 5]);
        rest = &rest[i + 5..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .unwrap_or(rest.len());
        match rest[..end].parse::<f64>() {
            Ok(at) => out.push_str(&format!("+{:.0}ms", at - since)),
            Err(_) => out.push_str(&rest[..end]),
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
