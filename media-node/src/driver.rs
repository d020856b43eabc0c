//! The one task that owns the [`Engine`]: it moves datagrams between the UDP socket and the
//! engine, runs the engine's timers, and carries requests in and signalling messages out.
//!
//! Requests arrive on a bounded channel ([`COMMAND_QUEUE`]); a full queue makes the HTTP layer
//! answer 503. Each WebSocket session has a bounded outbox ([`SESSION_OUTBOX`]); a session that
//! does not read its messages is dropped rather than allowed to grow the node's memory.

use crate::error::{Error, Result};
use crate::sfu::engine::{Engine, SessionId};
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
/// Datagrams read in one go before the engine's output is flushed.
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
    /// Start draining.
    Drain,
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
    /// Load figures.
    Status {
        /// The figures.
        reply: oneshot::Sender<NodeStatus>,
    },
}

/// A cheap handle for sending requests to the engine task.
#[derive(Clone)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
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

/// Starts the engine task on `socket`; returns its handle.
pub fn spawn(engine: Engine, socket: UdpSocket) -> EngineHandle {
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let (draining_tx, draining) = watch::channel(false);
    let (drained_tx, drained) = watch::channel(false);
    tokio::spawn(run(engine, Arc::new(socket), rx, draining_tx, drained_tx));
    EngineHandle {
        tx,
        draining,
        drained,
    }
}

async fn run(
    mut engine: Engine,
    socket: Arc<UdpSocket>,
    mut commands: mpsc::Receiver<Command>,
    draining: watch::Sender<bool>,
    drained: watch::Sender<bool>,
) {
    let mut outboxes: HashMap<SessionId, mpsc::Sender<ServerMessage>> = HashMap::new();
    let mut buf = vec![0u8; 2048];
    loop {
        let deadline = engine.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = socket.recv_from(&mut buf) => {
                match r {
                    Ok((n, from)) => {
                        engine.handle_datagram(Instant::now(), from, &buf[..n]);
                        for _ in 1..RECV_BATCH {
                            match socket.try_recv_from(&mut buf) {
                                Ok((n, from)) => engine.handle_datagram(Instant::now(), from, &buf[..n]),
                                Err(_) => break,
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "udp receive error"),
                }
            }
            cmd = commands.recv() => {
                let Some(cmd) = cmd else { break };
                handle(&mut engine, cmd, &mut outboxes);
            }
            () = sleep => engine.handle_timeout(Instant::now()),
        }
        // Timers may have come due while the other branches ran.
        if engine.poll_timeout().is_some_and(|t| t <= Instant::now()) {
            engine.handle_timeout(Instant::now());
        }
        while let Some(t) = engine.poll_transmit() {
            match socket.try_send_to(&t.data, t.to) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    let _ = socket.send_to(&t.data, t.to).await;
                }
                Err(e) => tracing::debug!(to = %t.to, error = %e, "udp send error"),
            }
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
        while let Some(s) = engine.poll_closed() {
            outboxes.remove(&s);
        }
        if engine.is_draining() {
            draining.send_if_modified(|d| !std::mem::replace(d, true));
            if engine.session_count() == 0 {
                drained.send_if_modified(|d| !std::mem::replace(d, true));
            }
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
        Command::Assign {
            room,
            assignment,
            reply,
        } => {
            let _ = reply.send(engine.assign(&room, assignment));
        }
        Command::Release { room, reply } => {
            let _ = reply.send(engine.release(&room));
        }
        Command::Status { reply } => {
            let _ = reply.send(engine.status());
        }
    }
}
