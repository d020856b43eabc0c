//! The tasks that keep a node's relay links: accept links, dial each `--peer` and each
//! upstream node the operator's assignments name (again after a failure, with backoff), and
//! per link a control reader, a control writer, a datagram reader and a stats sampler, all
//! feeding the engine task through its command queue.

use super::fragment::{Reassembler, is_fragment};
use super::link::{Link, LinkError, MAX_HANDSHAKES, RelayEndpoint};
use super::proto::Control;
use crate::driver::{Command, EngineHandle, LinkIo};
use crate::metrics::Metrics;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Control messages waiting for one link's writer, at most.
pub const CONTROL_QUEUE: usize = 1024;
/// First wait before dialling again; doubles up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between dials (a link that returns is back within about a second).
pub const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// A dial that has not completed its handshake by then is abandoned and tried again (a dial
/// into a dark path would otherwise wait out QUIC's handshake backoff long after the path
/// returns).
pub const DIAL_TIMEOUT: Duration = Duration::from_millis(700);
/// Most addresses the operator's assignments can make a node dial at once.
pub const MAX_DIALS: usize = 256;

static NEXT_LINK: AtomicU64 = AtomicU64::new(1);

/// A node's relay links: the accept loop and the dial loops.
pub struct Relay {
    endpoint: Arc<RelayEndpoint>,
    engine: EngineHandle,
    metrics: Metrics,
    /// Upstream addresses per assigned room.
    wanted: Mutex<Wanted>,
    /// The peers with a link up, dialled or accepted.
    live: LivePeers,
}

/// How often a dial loop whose peer is linked by the other side's link looks again.
const LINKED_LOOK_EVERY: Duration = Duration::from_millis(250);

/// Relay links up per peer node id. Two nodes that each dial the other keep one link (see
/// [`crate::sfu::cascade::which_link_stays`]); the side whose dialled link lost waits while the
/// kept one is up instead of redialling a duplicate that is closed again.
#[derive(Clone, Default)]
struct LivePeers(Arc<Mutex<HashMap<String, usize>>>);

impl LivePeers {
    /// Counts a link to `peer` for as long as the guard lives.
    fn up(&self, peer: &str) -> LiveGuard {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *m.entry(peer.to_owned()).or_default() += 1;
        LiveGuard {
            peers: self.clone(),
            peer: peer.to_owned(),
        }
    }

    fn is_up(&self, peer: &str) -> bool {
        let m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.get(peer).is_some_and(|n| *n > 0)
    }
}

struct LiveGuard {
    peers: LivePeers,
    peer: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut m = self.peers.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.peer);
            }
        }
    }
}

#[derive(Default)]
struct Wanted {
    /// Per room: upstream address → the node the plan names there.
    by_room: HashMap<String, BTreeMap<String, String>>,
    /// Dial loops of assigned (address, node)s: cleared to let one stop.
    dials: HashMap<(String, String), Arc<AtomicBool>>,
}

impl Relay {
    /// Starts accepting links on `endpoint` and dialling `peers` for as long as the node runs.
    pub fn start(
        endpoint: Arc<RelayEndpoint>,
        peers: Vec<SocketAddr>,
        engine: EngineHandle,
        metrics: Metrics,
    ) -> Arc<Self> {
        let relay = Arc::new(Self {
            endpoint,
            engine,
            metrics,
            wanted: Mutex::new(Wanted::default()),
            live: LivePeers::default(),
        });
        let accepting = relay.clone();
        tokio::spawn(async move {
            // Each peer's handshake runs on its own: one that stalls (or never finishes its
            // TLS or hello) must not hold back another's reconnect.
            let slots = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
            while let Some(incoming) = accepting.endpoint.incoming().await {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(
                        peer = %incoming.remote_address(),
                        "relay link refused: {MAX_HANDSHAKES} handshakes already under way"
                    );
                    incoming.refuse();
                    continue;
                };
                let relay = accepting.clone();
                tokio::spawn(async move {
                    let shaken = relay.endpoint.handshake(incoming).await;
                    drop(slot);
                    match shaken {
                        Ok(link) => {
                            let (engine, metrics) = (relay.engine.clone(), relay.metrics.clone());
                            run_link(link, false, engine, metrics, &relay.live).await;
                        }
                        Err(e) => tracing::warn!(error = %e, "relay link refused"),
                    }
                });
            }
        });
        for peer in peers {
            relay.spawn_dial(peer.to_string(), None, Arc::new(AtomicBool::new(true)));
        }
        relay
    }

    /// The operator assigned `room` with these upstream relay addresses (`host:port`), each
    /// with the node the plan names there: they are dialled until no assignment names them,
    /// and a link whose far end says it is another node is closed (an address reused by
    /// another pod, a stale plan). A link already up when its last room goes stays until it
    /// breaks (the far node may carry other rooms over it).
    pub fn assign(&self, room: &str, upstream: BTreeMap<String, String>) {
        let Ok(mut w) = self.wanted.lock() else {
            return;
        };
        w.by_room.insert(room.to_owned(), upstream);
        self.sync(&mut w);
    }

    /// The operator released `room`.
    pub fn release(&self, room: &str) {
        let Ok(mut w) = self.wanted.lock() else {
            return;
        };
        w.by_room.remove(room);
        self.sync(&mut w);
    }

    fn sync(&self, w: &mut Wanted) {
        let all: BTreeSet<(String, String)> = w
            .by_room
            .values()
            .flatten()
            .map(|(a, p)| (a.clone(), p.clone()))
            .collect();
        w.dials.retain(|dial, keep| {
            let wanted = all.contains(dial);
            if !wanted {
                keep.store(false, Ordering::Relaxed);
            }
            wanted
        });
        for dial in all {
            if w.dials.len() >= MAX_DIALS {
                tracing::warn!(
                    limit = MAX_DIALS,
                    "too many relay addresses assigned; not dialling the rest"
                );
                break;
            }
            if !w.dials.contains_key(&dial) {
                let keep = Arc::new(AtomicBool::new(true));
                w.dials.insert(dial.clone(), keep.clone());
                let (addr, node) = dial;
                self.spawn_dial(addr, Some(node), keep);
            }
        }
    }

    /// Dials `addr` (`host:port`), again whenever the link fails, while `keep` holds; when
    /// `expected` names a node, a far end that says it is another is closed.
    fn spawn_dial(&self, addr: String, expected: Option<String>, keep: Arc<AtomicBool>) {
        let (endpoint, engine, metrics, live) = (
            self.endpoint.clone(),
            self.engine.clone(),
            self.metrics.clone(),
            self.live.clone(),
        );
        tokio::spawn(async move {
            let mut backoff = MIN_BACKOFF;
            // The node at `addr`: as planned, or as it said when last dialled.
            let mut known = expected.clone();
            while keep.load(Ordering::Relaxed) {
                // Linked already by the link it dialled to us: not another duplicate.
                if let Some(peer) = &known
                    && live.is_up(peer)
                {
                    tokio::time::sleep(LINKED_LOOK_EVERY).await;
                    backoff = MIN_BACKOFF;
                    continue;
                }
                let dial = async {
                    let peer = tokio::net::lookup_host(addr.as_str())
                        .await
                        .map_err(|e| LinkError::Handshake(format!("resolving {addr}: {e}")))?
                        .next()
                        .ok_or_else(|| LinkError::Handshake(format!("{addr} has no address")))?;
                    endpoint.dial(peer).await
                };
                match tokio::time::timeout(DIAL_TIMEOUT, dial)
                    .await
                    .unwrap_or_else(|_| Err(LinkError::Handshake("dial timed out".into())))
                {
                    Ok(link) if !link.is_node(expected.as_deref()) => {
                        let said = link.peer.as_ref().map(|h| h.node_id.clone());
                        tracing::warn!(
                            %addr,
                            expected = expected.as_deref().unwrap_or_default(),
                            said = said.as_deref().unwrap_or_default(),
                            "relay link closed: another node answered at the planned address"
                        );
                        link.close("not the node the plan names at this address");
                    }
                    Ok(link) => {
                        let up = Instant::now();
                        if let Some(h) = &link.peer {
                            known = Some(h.node_id.clone());
                        }
                        run_link(link, true, engine.clone(), metrics.clone(), &live).await;
                        if up.elapsed() > Duration::from_secs(10) {
                            backoff = MIN_BACKOFF;
                        }
                    }
                    Err(e) => tracing::debug!(%addr, error = %e, "relay dial failed"),
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            tracing::debug!(%addr, "no longer dialled");
        });
    }
}

/// Watches the relay certificate, key and CA files of `trust` every `every`, and when they
/// change (a renewal: cert-manager, or a Secret volume's atomic swap) loads them for new links.
/// Files caught half-written fail to load and are tried again at the next look; the links up
/// keep the TLS session they have.
pub fn watch_tls(
    endpoint: Arc<RelayEndpoint>,
    trust: super::tls::RelayTrust,
    every: Duration,
    metrics: Metrics,
) {
    let Some(mut seen) = trust.contents() else {
        return;
    };
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            let Some(now) = trust.contents() else { return };
            if now == seen {
                continue;
            }
            match super::tls::RelayTls::new(&trust) {
                Ok(tls) => {
                    endpoint.set_tls(tls);
                    seen = now;
                    metrics.relay_tls_reloads.inc();
                    tracing::info!("relay certificate files changed; new links use them");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "relay certificate files changed but do not load; keeping the old ones");
                }
            }
        }
    });
}

/// Runs one link until it closes, then tells the engine.
async fn run_link(
    link: Link,
    dialled: bool,
    engine: EngineHandle,
    metrics: Metrics,
    live: &LivePeers,
) {
    let Some(hello) = link.peer.clone() else {
        return;
    };
    let id = NEXT_LINK.fetch_add(1, Ordering::Relaxed);
    let conn = link.connection();
    let (mut reader, mut writer) = link.split();
    let (control_tx, mut control_rx) = mpsc::channel::<Control>(CONTROL_QUEUE);
    let (probe_tx, probe_rx) = tokio::sync::watch::channel(None);
    let peer = hello.node_id.clone();
    let version = hello.version;
    metrics.relay.connects.with_label_values(&[&peer]).inc();
    let up = Command::RelayUp {
        link: id,
        hello,
        io: LinkIo {
            conn: conn.clone(),
            control: control_tx,
            dialled,
            peer: peer.clone(),
            version,
            probe: probe_tx,
        },
    };
    if engine.send_wait(up).await.is_err() {
        return;
    }
    let _live = live.up(&peer);
    let writer_task = tokio::spawn(async move {
        while let Some(m) = control_rx.recv().await {
            match writer.send(&m).await {
                Ok(()) => {}
                Err(e @ LinkError::TooLarge(_)) => {
                    tracing::warn!(error = %e, "relay control message dropped");
                }
                Err(_) => break,
            }
        }
    });
    let prober = {
        let engine = engine.clone();
        tokio::spawn(super::probe::run(
            conn.clone(),
            probe_rx,
            metrics.relay.padding_bytes.with_label_values(&[&peer]),
            move || {
                let _ = engine.send(Command::RelayProbeQueued { link: id });
            },
        ))
    };
    let datagrams = {
        let (conn, engine) = (conn.clone(), engine.clone());
        tokio::spawn(async move {
            let mut reassembly = Reassembler::default();
            while let Ok(datagram) = conn.read_datagram().await {
                let datagram = if is_fragment(&datagram) {
                    match reassembly.push(&datagram) {
                        Some(whole) => whole,
                        None => continue,
                    }
                } else {
                    datagram
                };
                // A full engine queue drops media rather than stalling the link.
                let _ = engine.send(Command::RelayMedia { link: id, datagram });
            }
        })
    };
    let stats = {
        let (conn, metrics, peer) = (conn.clone(), metrics.clone(), peer.clone());
        let engine = engine.clone();
        tokio::spawn(async move {
            let (mut lost, mut sent, mut recv) = (0u64, 0u64, 0u64);
            // The estimate four times a second (the engine holds layers back by it); the rest
            // once a second.
            let mut tick = 0u32;
            loop {
                let path = super::congestion::path_of(&conn);
                let (bps, queueing) = (path.estimate, path.queue);
                let _ = engine.send(Command::RelayEstimate { link: id, bps });
                metrics
                    .relay
                    .estimate_bps
                    .with_label_values(&[&peer])
                    .set(bps.unwrap_or(0.0));
                metrics
                    .relay
                    .queue_delay_seconds
                    .with_label_values(&[&peer])
                    .set(queueing.unwrap_or_default().as_secs_f64());
                tick = tick.wrapping_add(1);
                if tick % 4 != 1 {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
                let s = conn.stats();
                let rtt = conn.rtt();
                let _ = engine.send(Command::RelayRtt { link: id, rtt });
                metrics
                    .relay
                    .rtt_seconds
                    .with_label_values(&[&peer])
                    .set(rtt.as_secs_f64());
                let m = &metrics.relay;
                m.lost_packets
                    .with_label_values(&[&peer])
                    .inc_by(s.path.lost_packets.saturating_sub(lost));
                m.sent_bytes
                    .with_label_values(&[&peer])
                    .inc_by(s.udp_tx.bytes.saturating_sub(sent));
                m.received_bytes
                    .with_label_values(&[&peer])
                    .inc_by(s.udp_rx.bytes.saturating_sub(recv));
                (lost, sent, recv) = (s.path.lost_packets, s.udp_tx.bytes, s.udp_rx.bytes);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };
    loop {
        match reader.recv().await {
            Ok(msg) => {
                let cmd = Command::RelayControl {
                    link: id,
                    msg: Box::new(msg),
                };
                if engine.send_wait(cmd).await.is_err() {
                    break;
                }
            }
            Err(e @ LinkError::Protocol(_)) => {
                tracing::warn!(%peer, reason = %e, "relay peer broke the protocol; link closed");
                break;
            }
            Err(e) => {
                tracing::info!(%peer, reason = %e, "relay link closed");
                break;
            }
        }
    }
    conn.close(0u32.into(), b"link closed");
    writer_task.abort();
    datagrams.abort();
    stats.abort();
    prober.abort();
    let _ = engine.send_wait(Command::RelayDown { link: id }).await;
}
