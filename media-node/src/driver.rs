//! The one task that owns the [`Engine`]: it moves datagrams between the UDP socket and the
//! engine, runs the engine's timers, and carries requests in and signalling messages out.
//!
//! Requests arrive on a bounded channel ([`COMMAND_QUEUE`]); a full queue makes the HTTP layer
//! answer 503. Each WebSocket session has a bounded outbox ([`SESSION_OUTBOX`]); a session that
//! does not read its messages is dropped rather than allowed to grow the node's memory.

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::relay::link::PeerHello;
use crate::relay::proto::Control;
use crate::sfu::engine::cascade::{LinkId, RelayOut};
use crate::sfu::engine::{Engine, SessionId};
use bytes::Bytes;
use moim_wire::JoinClaims;
use moim_wire::admin::RoomAssignment;
use moim_wire::signal::{PublishedTrackInfo, ServerMessage};
use moim_wire::status::NodeStatus;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

/// Requests waiting for the engine, at most.
pub const COMMAND_QUEUE: usize = 4096;
/// Signalling messages waiting for one WebSocket client, at most.
pub const SESSION_OUTBOX: usize = 512;
/// Datagrams read in one go before commands and timers get a turn.
const RECV_BATCH: usize = 64;

type Reply<T> = oneshot::Sender<Result<T>>;

/// A request to the engine.
pub enum Command {
    /// A WebSocket participant joins.
    Join {
        /// Verified claims.
        claims: JoinClaims,
        /// Where the engine sends this session's messages.
        outbox: mpsc::Sender<ServerMessage>,
        /// The session and its `joined` message.
        reply: Reply<(SessionId, ServerMessage)>,
    },
    /// A publish offer.
    Publish {
        /// Session.
        session: SessionId,
        /// SDP offer.
        sdp: String,
        /// Declared sources.
        tracks: Vec<PublishedTrackInfo>,
        /// SDP answer.
        reply: Reply<String>,
    },
    /// An answer to a subscribe offer.
    SubscribeAnswer {
        /// Session.
        session: SessionId,
        /// SDP answer.
        sdp: String,
        /// Done.
        reply: Reply<()>,
    },
    /// A participant muted or unmuted one of its tracks.
    Mute {
        /// Session.
        session: SessionId,
        /// Its own track id.
        track_id: String,
        /// Muted or not.
        muted: bool,
        /// Done.
        reply: Reply<()>,
    },
    /// A participant raised or lowered a hand.
    RaiseHand {
        /// Session.
        session: SessionId,
        /// Raised or not.
        raised: bool,
        /// Done.
        reply: Reply<()>,
    },
    /// A subscriber's last-N choice.
    LastN {
        /// Session.
        session: SessionId,
        /// Most recent speakers' videos to receive; None: all.
        n: Option<u32>,
        /// Participants always received.
        pinned: Vec<String>,
        /// Done.
        reply: Reply<()>,
    },
    /// Wanted size of a received track.
    LayerPreference {
        /// Session.
        session: SessionId,
        /// Track.
        track_id: String,
        /// Width.
        max_width: u32,
        /// Height.
        max_height: u32,
        /// Done.
        reply: Reply<()>,
    },
    /// The participant's network changed: restart ICE (see [`Engine::ws_ice_restart`]).
    IceRestart {
        /// Session.
        session: SessionId,
        /// Done.
        reply: Reply<()>,
    },
    /// Chat over signalling.
    Chat {
        /// Session.
        session: SessionId,
        /// Text.
        text: String,
        /// Done.
        reply: Reply<()>,
    },
    /// The session ends.
    Leave {
        /// Session.
        session: SessionId,
    },
    /// WHIP publish.
    Whip {
        /// Verified claims.
        claims: JoinClaims,
        /// SDP offer.
        sdp: String,
        /// Resource id and SDP answer.
        reply: Reply<(String, String)>,
    },
    /// WHEP play.
    Whep {
        /// Verified claims.
        claims: JoinClaims,
        /// SDP offer.
        sdp: String,
        /// Resource id and SDP answer.
        reply: Reply<(String, String)>,
    },
    /// End a WHIP/WHEP resource.
    Delete {
        /// Resource id.
        resource: String,
        /// Done.
        reply: Reply<()>,
    },
    /// Start draining (the operator asked; it may take the node back).
    Drain,
    /// Start draining for good (SIGTERM).
    Terminate,
    /// Take new rooms again after [`Command::Drain`].
    Undrain {
        /// Refused once terminating.
        reply: Reply<()>,
    },
    /// Send a room's participants to another node.
    MoveRoom {
        /// Room.
        room: String,
        /// Signalling URL they reconnect to.
        url: String,
        /// Participants told.
        reply: oneshot::Sender<usize>,
    },
    /// The operator assigns a room (see [`Engine::assign`]).
    Assign {
        /// Room.
        room: String,
        /// The node's share of the meeting.
        assignment: RoomAssignment,
        /// Whether it was taken (false: older than the one held).
        reply: Reply<bool>,
    },
    /// The operator releases a room.
    Release {
        /// Room.
        room: String,
        /// Whether the room was assigned.
        reply: oneshot::Sender<bool>,
    },
    /// A relay link finished its hello exchange.
    RelayUp {
        /// Link number.
        link: LinkId,
        /// The far node.
        hello: PeerHello,
        /// How to reach it.
        io: LinkIo,
    },
    /// A control message from a relay link.
    RelayControl {
        /// Link.
        link: LinkId,
        /// Message.
        msg: Box<Control>,
    },
    /// A media datagram from a relay link.
    RelayMedia {
        /// Link.
        link: LinkId,
        /// Encoded datagram.
        datagram: Bytes,
    },
    /// A relay link's round-trip time, sampled.
    RelayRtt {
        /// Link.
        link: LinkId,
        /// RTT.
        rtt: Duration,
    },
    /// What a relay link's path carries, as its congestion controller estimates it (bits per
    /// second; `None`: no sign of a limit).
    RelayEstimate {
        /// Link.
        link: LinkId,
        /// Estimate.
        bps: Option<f64>,
    },
    /// A probe of a relay link's path stopped because the path's queue grew: the path does not
    /// carry the rate it asked for.
    RelayProbeQueued {
        /// Link.
        link: LinkId,
    },
    /// A relay link closed.
    RelayDown {
        /// Link.
        link: LinkId,
    },
    /// Load figures.
    Status {
        /// The figures.
        reply: oneshot::Sender<NodeStatus>,
    },
    /// Where a room's participants go if this node stops answering
    /// (see [`Engine::resume_info`]).
    Resume {
        /// Room.
        room: String,
        /// Fallback URLs, rejoin URL, this node's region.
        reply: oneshot::Sender<(Vec<String>, Option<String>, String)>,
    },
    /// Test-only fault (`--fault-injection`): the engine task panics, as a bug would.
    Panic,
}

/// The engine task's pulse: it beats on every turn of its loop, and its loop turns at least
/// every [`MAX_TURN`]. `/healthz` fails when it stops (a task stuck or gone), so a node whose
/// engine died does not pass for healthy.
#[derive(Debug)]
pub struct Heartbeat {
    epoch: Instant,
    last_ms: std::sync::atomic::AtomicU64,
}

/// Longest the engine loop waits without a turn.
pub const MAX_TURN: Duration = Duration::from_secs(1);

/// An engine silent this long is not healthy.
pub const STALLED_AFTER: Duration = Duration::from_secs(5);

impl Heartbeat {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn beat(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since the last beat.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(std::sync::atomic::Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// A cheap handle for sending requests to the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    /// The engine task's pulse.
    pub heartbeat: Arc<Heartbeat>,
    /// True once the node drains (for `/readyz`).
    pub draining: watch::Receiver<bool>,
    /// True once draining finished (no sessions left).
    pub drained: watch::Receiver<bool>,
}

impl EngineHandle {
    /// Sends a request, failing fast when the engine is gone or its queue is full.
    pub fn send(&self, cmd: Command) -> Result<()> {
        self.tx.try_send(cmd).map_err(|_| Error::EngineUnavailable)
    }

    /// Sends a request, waiting for room in the queue (relay control messages: they are the
    /// room's state and must not be dropped; the wait is the backpressure on the link).
    pub async fn send_wait(&self, cmd: Command) -> Result<()> {
        self.tx
            .send(cmd)
            .await
            .map_err(|_| Error::EngineUnavailable)
    }

    /// Sends a request built around a reply channel and waits for the reply.
    pub async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(make(tx))?;
        match tokio::time::timeout(Duration::from_secs(10), rx).await {
            Ok(Ok(r)) => r,
            _ => Err(Error::EngineUnavailable),
        }
    }
}

/// Starts the engine task on `socket`; returns its handle and the task (which ends when every
/// handle is dropped, or with a panic).
pub fn spawn(engine: Engine, socket: UdpSocket) -> (EngineHandle, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (draining_tx, draining) = watch::channel(false);
    let (drained_tx, drained) = watch::channel(false);
    let heartbeat = Arc::new(Heartbeat::new());
    let task = tokio::spawn(run(
        engine,
        Arc::new(socket),
        rx,
        draining_tx,
        drained_tx,
        heartbeat.clone(),
    ));
    (
        EngineHandle {
            tx,
            heartbeat,
            draining,
            drained,
        },
        task,
    )
}

async fn run(
    mut engine: Engine,
    socket: Arc<UdpSocket>,
    mut commands: mpsc::Receiver<Command>,
    draining: watch::Sender<bool>,
    drained: watch::Sender<bool>,
    heartbeat: Arc<Heartbeat>,
) {
    let mut outboxes: HashMap<SessionId, mpsc::Sender<ServerMessage>> = HashMap::new();
    let mut links: HashMap<LinkId, LinkIo> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    let metrics = engine.metrics().clone();
    loop {
        heartbeat.beat();
        let deadline = engine
            .poll_timeout()
            .map_or(Instant::now() + MAX_TURN, |d| {
                d.min(Instant::now() + MAX_TURN)
            });
        let sleep = tokio::time::sleep_until(deadline.into());
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, from)) => {
                        engine.handle_datagram(Instant::now(), from, &buf[..n]);
                        send_transmits(&mut engine, &socket).await;
                        for _ in 1..RECV_BATCH {
                            match socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => {
                                    engine.handle_datagram(Instant::now(), from, &buf[..n]);
                                    // Each datagram's fan-out leaves before the next is read:
                                    // no packet waits for the rest of the batch's work, and
                                    // subscribers get short bursts, not one of the whole batch.
                                    send_transmits(&mut engine, &socket).await;
                                }
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "udp receive error"),
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Command::RelayUp { link, hello, io } => relay_up(&mut engine, &mut links, link, hello, io),
                    Command::RelayDown { link } => {
                        links.remove(&link);
                        engine.relay_down(link, Instant::now());
                    }
                    cmd => handle(&mut engine, cmd, &mut outboxes),
                }
                engine.flush(Instant::now());
            }
            () = sleep => engine.handle_timeout(Instant::now()),
        }
        // Timers may have come due while the other branches ran.
        if engine.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            engine.handle_timeout(Instant::now());
        }
        send_transmits(&mut engine, &socket).await;
        while let Some(out) = engine.poll_relay() {
            send_relay(&links, out, &metrics);
        }
        let mut slow = Vec::new();
        while let Some((session, msg)) = engine.poll_signal() {
            if let Some(out) = outboxes.get(&session)
                && out.try_send(msg).is_err()
            {
                slow.push(session);
            }
        }
        for s in slow {
            tracing::warn!(session = s, "signalling client too slow; dropping it");
            outboxes.remove(&s);
            engine.leave(s, Instant::now());
        }
        engine.drop_overflowed(Instant::now());
        while let Some(s) = engine.poll_closed() {
            outboxes.remove(&s);
        }
        let now_draining = engine.is_draining();
        draining.send_if_modified(|d| std::mem::replace(d, now_draining) != now_draining);
        let now_drained = now_draining && engine.session_count() == 0;
        drained.send_if_modified(|d| std::mem::replace(d, now_drained) != now_drained);
    }
}

/// Sends every datagram the engine has queued.
async fn send_transmits(engine: &mut Engine, socket: &UdpSocket) {
    while let Some(t) = engine.poll_transmit() {
        match socket.try_send_to(&t.data, t.to) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = socket.send_to(&t.data, t.to).await;
            }
            Err(e) => tracing::debug!(to = %t.to, error = %e, "udp send error"),
        }
    }
}

fn handle(
    engine: &mut Engine,
    cmd: Command,
    outboxes: &mut HashMap<SessionId, mpsc::Sender<ServerMessage>>,
) {
    let now = Instant::now();
    match cmd {
        Command::Join {
            claims,
            outbox,
            reply,
        } => {
            let r = engine.ws_join(&claims, now);
            if let Ok((session, _)) = &r {
                outboxes.insert(*session, outbox);
            }
            if reply.send(r).is_err() {
                // The socket went away while joining.
            }
        }
        Command::Publish {
            session,
            sdp,
            tracks,
            reply,
        } => {
            let _ = reply.send(engine.ws_publish(session, sdp, tracks, now));
        }
        Command::SubscribeAnswer {
            session,
            sdp,
            reply,
        } => {
            let _ = reply.send(engine.ws_subscribe_answer(session, sdp, now));
        }
        Command::Mute {
            session,
            track_id,
            muted,
            reply,
        } => {
            let _ = reply.send(engine.ws_mute(session, &track_id, muted));
        }
        Command::RaiseHand {
            session,
            raised,
            reply,
        } => {
            let _ = reply.send(engine.ws_raise_hand(session, raised, now));
        }
        Command::LastN {
            session,
            n,
            pinned,
            reply,
        } => {
            let _ = reply.send(engine.ws_last_n(session, n, pinned));
        }
        Command::LayerPreference {
            session,
            track_id,
            max_width,
            max_height,
            reply,
        } => {
            let _ =
                reply.send(engine.ws_layer_preference(session, &track_id, max_width, max_height));
        }
        Command::Chat {
            session,
            text,
            reply,
        } => {
            let _ = reply.send(engine.chat(session, &text, now));
        }
        Command::IceRestart { session, reply } => {
            let _ = reply.send(engine.ws_ice_restart(session, now));
        }
        Command::Leave { session } => {
            outboxes.remove(&session);
            engine.leave(session, now);
        }
        Command::Whip { claims, sdp, reply } => {
            let _ = reply.send(engine.whip(&claims, sdp, now).map(|(_, r, a)| (r, a)));
        }
        Command::Whep { claims, sdp, reply } => {
            let _ = reply.send(engine.whep(&claims, sdp, now).map(|(_, r, a)| (r, a)));
        }
        Command::Delete { resource, reply } => {
            let _ = reply.send(engine.delete_resource(&resource, now));
        }
        Command::Drain => engine.drain(),
        Command::Terminate => engine.terminate(),
        Command::Undrain { reply } => {
            let _ = reply.send(engine.undrain());
        }
        Command::MoveRoom { room, url, reply } => {
            let _ = reply.send(engine.move_room(&room, &url));
        }
        Command::Assign {
            room,
            assignment,
            reply,
        } => {
            let _ = reply.send(engine.assign(&room, assignment, now));
        }
        Command::Release { room, reply } => {
            let _ = reply.send(engine.release(&room));
        }
        Command::Status { reply } => {
            let _ = reply.send(engine.status());
        }
        Command::Resume { room, reply } => {
            let _ = reply.send(engine.resume_info(&room));
        }
        Command::Panic => panic!("injected engine fault (--fault-injection)"),
        Command::RelayControl { link, msg } => engine.relay_control(link, *msg, now),
        Command::RelayMedia { link, datagram } => engine.relay_media(link, datagram, now),
        Command::RelayRtt { link, rtt } => engine.relay_rtt(link, rtt),
        Command::RelayEstimate { link, bps } => engine.relay_estimate(link, bps, now),
        Command::RelayProbeQueued { link } => engine.relay_probe_queued(link),
        // Handled in the loop, which owns the links.
        Command::RelayUp { .. } | Command::RelayDown { .. } => {}
    }
}

/// How the driver reaches one relay link.
pub struct LinkIo {
    /// The connection (datagrams, close).
    pub conn: quinn::Connection,
    /// Control messages to the link's writer task (bounded; full means the link is stuck and
    /// is closed, to be re-established and resynchronised).
    pub control: mpsc::Sender<Control>,
    /// This node dialled the link.
    pub dialled: bool,
    /// The far node's id.
    pub peer: String,
    /// The relay protocol version both ends speak.
    pub version: u16,
    /// Probes for the link's prober task ([`crate::relay::probe`]).
    pub probe: tokio::sync::watch::Sender<Option<crate::relay::probe::ProbeRequest>>,
}

impl std::fmt::Debug for LinkIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkIo")
            .field("peer", &self.peer)
            .field("dialled", &self.dialled)
            .finish()
    }
}

/// Registers a link with the engine, which decides whether it stays (one link per pair of
/// nodes, see [`crate::sfu::engine::cascade::which_link_stays`]) and closes the one that does
/// not through its relay output.
fn relay_up(
    engine: &mut Engine,
    links: &mut HashMap<LinkId, LinkIo>,
    link: LinkId,
    hello: PeerHello,
    io: LinkIo,
) {
    let dialled = io.dialled;
    links.insert(link, io);
    engine.relay_up(link, hello.node_id, hello.region, dialled, Instant::now());
}

fn send_relay(links: &HashMap<LinkId, LinkIo>, out: RelayOut, metrics: &Metrics) {
    match out {
        RelayOut::Control { link, msg } => {
            // What a version 1 peer would refuse (and close the link over) is not sent to it.
            if matches!(*msg, Control::TrackMuted { .. })
                && links.get(&link).is_some_and(|io| io.version < 2)
            {
                return;
            }
            if let Some(io) = links.get(&link)
                && io.control.try_send(*msg).is_err()
            {
                tracing::warn!(peer = %io.peer, "relay control queue full; closing the link to resync");
                io.conn.close(4u32.into(), b"control queue full");
            }
        }
        RelayOut::Media { link, datagram } => {
            if let Some(io) = links.get(&link) {
                // QUIC's datagram buffer drops the oldest when full. A datagram larger than
                // the path carries now goes in fragments; an error means the peer takes no
                // datagrams: dropped.
                let len = datagram.len();
                match crate::relay::link::send_datagram(&io.conn, datagram) {
                    Ok(1) => {}
                    Ok(_) => metrics.relay_split_datagrams.inc(),
                    Err(e) => {
                        metrics.relay_refused_datagrams.inc();
                        tracing::debug!(peer = %io.peer, len, error = %e, "relay datagram refused");
                    }
                }
            }
        }
        RelayOut::Probe {
            link,
            from_bps,
            bps,
            len,
            careful,
        } => {
            if let Some(io) = links.get(&link) {
                let until = Instant::now() + len;
                io.probe
                    .send_replace(Some(crate::relay::probe::ProbeRequest {
                        from_bps,
                        bps,
                        until,
                        careful,
                    }));
            }
        }
        RelayOut::Close { link, reason } => {
            if let Some(io) = links.get(&link) {
                io.conn.close(5u32.into(), reason.as_bytes());
            }
        }
    }
}
