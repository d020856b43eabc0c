//! Load-generator clients behind a signalling WebSocket that stays open for the whole session,
//! as a meeting client has: LiveKit's (protobuf `SignalRequest`/`SignalResponse`, two peer
//! connections, trickled candidates, pings) and moim's own (`/ws`, JSON [`ClientMessage`] and
//! [`ServerMessage`], candidates in the descriptions). The server offers on the subscriber
//! connection and offers again as tracks come and go; the client publishes by offering. What
//! concerns a peer connection goes to its running [`Client`] as a [`Signal`].

use crate::loadgen::{self, Client, LayerSpec, Signal};
use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use livekit_protocol as lk;
use lk::signal_request::Message as LkRequest;
use lk::signal_response::Message as LkResponse;
use moim_wire::signal::{ClientMessage, ServerMessage};
use prost::Message as _;
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a signalling step may take.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a LiveKit session pings when the server does not say (LiveKit's default).
const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);

/// Which server's signalling a session speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// LiveKit's `/rtc`.
    LiveKit,
    /// moim's `/ws`.
    Moim,
}

/// What a signalling message means to the load generator.
pub enum Incoming {
    /// An offer for the subscriber connection (LiveKit numbers them; moim does not).
    Offer {
        /// SDP.
        sdp: String,
        /// LiveKit's offer id, echoed in the answer.
        id: u32,
    },
    /// The answer to the publisher connection's offer.
    Answer(String),
    /// A trickled candidate for the subscriber (`true`) or publisher connection.
    Candidate(bool, String),
    /// LiveKit published a track the session announced.
    TrackPublished,
    /// moim announced a video track published after the session joined (its id).
    Video(String),
    /// Anything else (participants, speakers, quality reports, pongs).
    Other,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// One participant's signalling WebSocket.
pub struct Session {
    ws: Ws,
    protocol: Protocol,
    ping_every: Option<Duration>,
    /// The video tracks already published in the room when this session joined (track ids:
    /// moim's node-assigned ids, LiveKit's track sids).
    pub videos: Vec<String>,
    /// The tile size this session shows videos at (moim: a track published later is asked
    /// for at it too, as a meeting page does when the track arrives).
    tiles: Option<(u32, u32)>,
}

impl Session {
    /// Connects to `url` and joins: LiveKit joins by the token in the URL, moim by a `join`
    /// message with `token`. Returns once the server said the participant is in.
    pub async fn join(protocol: Protocol, url: &str, token: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio::time::timeout(SIGNAL_TIMEOUT, tokio_tungstenite::connect_async(url))
            .await
            .context("signalling: connect timed out")?
            .context("signalling: connect")?;
        let mut s = Session {
            ws,
            protocol,
            ping_every: None,
            videos: Vec::new(),
            tiles: None,
        };
        match protocol {
            Protocol::LiveKit => loop {
                if let LkResponse::Join(j) = s.recv_livekit().await? {
                    s.videos = j
                        .other_participants
                        .iter()
                        .flat_map(|p| &p.tracks)
                        .filter(|t| t.r#type == lk::TrackType::Video as i32)
                        .map(|t| t.sid.clone())
                        .collect();
                    s.ping_every = Some(if j.ping_interval > 0 {
                        Duration::from_secs(j.ping_interval as u64)
                    } else {
                        DEFAULT_PING_INTERVAL
                    });
                    return Ok(s);
                }
            },
            Protocol::Moim => {
                s.send_moim(&ClientMessage::Join {
                    token: token.to_owned(),
                })
                .await?;
                loop {
                    match s.recv_moim().await? {
                        ServerMessage::Joined { tracks, .. } => {
                            s.videos = tracks
                                .into_iter()
                                .filter(|t| t.kind == "video")
                                .map(|t| t.track_id)
                                .collect();
                            return Ok(s);
                        }
                        ServerMessage::Error { code, message } => {
                            bail!("moim refused the join: {code}: {message}")
                        }
                        _ => {}
                    }
                }
            }
        }
    }

    /// Sends a LiveKit request.
    pub async fn send_livekit(&mut self, m: LkRequest) -> anyhow::Result<()> {
        let req = lk::SignalRequest { message: Some(m) };
        self.ws
            .send(WsMessage::Binary(req.encode_to_vec().into()))
            .await
            .context("signalling: send")
    }

    /// Sends a moim signalling message.
    pub async fn send_moim(&mut self, m: &ClientMessage) -> anyhow::Result<()> {
        self.ws
            .send(WsMessage::Text(serde_json::to_string(m)?.into()))
            .await
            .context("signalling: send")
    }

    /// The next data frame (text or binary).
    async fn frame(&mut self) -> anyhow::Result<WsMessage> {
        loop {
            let m = self
                .ws
                .next()
                .await
                .context("signalling: closed")?
                .context("signalling")?;
            match m {
                WsMessage::Close(c) => bail!("signalling closed: {c:?}"),
                WsMessage::Binary(_) | WsMessage::Text(_) => return Ok(m),
                _ => continue,
            }
        }
    }

    async fn next_livekit(&mut self) -> anyhow::Result<LkResponse> {
        loop {
            let WsMessage::Binary(data) = self.frame().await? else {
                continue;
            };
            let resp = lk::SignalResponse::decode(data.as_ref())
                .context("signalling: undecodable LiveKit response")?;
            match resp.message {
                Some(LkResponse::Leave(l)) => {
                    bail!("LiveKit asked the participant to leave: {l:?}")
                }
                Some(m) => return Ok(m),
                None => continue,
            }
        }
    }

    async fn recv_livekit(&mut self) -> anyhow::Result<LkResponse> {
        tokio::time::timeout(SIGNAL_TIMEOUT, self.next_livekit())
            .await
            .context("signalling: nothing within 10 s")?
    }

    async fn next_moim(&mut self) -> anyhow::Result<ServerMessage> {
        loop {
            let WsMessage::Text(text) = self.frame().await? else {
                continue;
            };
            return serde_json::from_str(&text).context("signalling: undecodable moim message");
        }
    }

    async fn recv_moim(&mut self) -> anyhow::Result<ServerMessage> {
        tokio::time::timeout(SIGNAL_TIMEOUT, self.next_moim())
            .await
            .context("signalling: nothing within 10 s")?
    }

    /// The next message, as the load generator sees it (no time limit).
    async fn next(&mut self) -> anyhow::Result<Incoming> {
        Ok(match self.protocol {
            Protocol::LiveKit => match self.next_livekit().await? {
                LkResponse::Offer(o) => Incoming::Offer {
                    sdp: o.sdp,
                    id: o.id,
                },
                LkResponse::Answer(a) => Incoming::Answer(a.sdp),
                LkResponse::Trickle(t) => Incoming::Candidate(
                    t.target == lk::SignalTarget::Subscriber as i32,
                    t.candidate_init,
                ),
                LkResponse::TrackPublished(_) => Incoming::TrackPublished,
                _ => Incoming::Other,
            },
            Protocol::Moim => match self.next_moim().await? {
                ServerMessage::SubscribeOffer { sdp } => Incoming::Offer { sdp, id: 0 },
                ServerMessage::PublishAnswer { sdp } => Incoming::Answer(sdp),
                ServerMessage::TrackPublished { track } if track.kind == "video" => {
                    Incoming::Video(track.track_id)
                }
                ServerMessage::Error { code, message } => {
                    bail!("moim signalling error: {code}: {message}")
                }
                _ => Incoming::Other,
            },
        })
    }

    /// The next message within [`SIGNAL_TIMEOUT`].
    pub async fn recv(&mut self) -> anyhow::Result<Incoming> {
        tokio::time::timeout(SIGNAL_TIMEOUT, self.next())
            .await
            .context("signalling: nothing within 10 s")?
    }

    async fn send_answer(&mut self, sdp: String, id: u32) -> anyhow::Result<()> {
        match self.protocol {
            Protocol::LiveKit => {
                self.send_livekit(LkRequest::Answer(description("answer", sdp, id)))
                    .await
            }
            Protocol::Moim => {
                self.send_moim(&ClientMessage::SubscribeAnswer { sdp })
                    .await
            }
        }
    }

    /// Asks for every video in [`Session::videos`] at `width`×`height`, as a client showing
    /// them in tiles of that size does (moim: `layer_preference`; LiveKit: `UpdateTrackSettings`
    /// with the size and the quality it implies).
    pub async fn show_videos_at(&mut self, width: u32, height: u32) -> anyhow::Result<()> {
        match self.protocol {
            Protocol::Moim => {
                for track_id in self.videos.clone() {
                    self.send_moim(&ClientMessage::LayerPreference {
                        track_id,
                        max_width: width,
                        max_height: height,
                    })
                    .await?;
                }
                Ok(())
            }
            Protocol::LiveKit => {
                let quality = match width {
                    0..=320 => lk::VideoQuality::Low,
                    321..=640 => lk::VideoQuality::Medium,
                    _ => lk::VideoQuality::High,
                };
                self.send_livekit(LkRequest::TrackSetting(lk::UpdateTrackSettings {
                    track_sids: self.videos.clone(),
                    quality: quality as i32,
                    width,
                    height,
                    ..Default::default()
                }))
                .await
            }
        }
    }

    async fn leave(&mut self) {
        let _ = match self.protocol {
            Protocol::LiveKit => {
                self.send_livekit(LkRequest::Leave(lk::LeaveRequest::default()))
                    .await
            }
            Protocol::Moim => self.send_moim(&ClientMessage::Leave).await,
        };
        let _ = self.ws.close(None).await;
    }

    async fn ping(&mut self) -> anyhow::Result<()> {
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        self.send_livekit(LkRequest::PingReq(lk::Ping {
            timestamp: ts,
            rtt: 0,
        }))
        .await
    }

    /// Hands `m` to the clients it concerns: trickled candidates to the connection they are
    /// for, new offers to the subscriber (answered here).
    async fn forward(&mut self, m: Incoming, to: &Routes) {
        match m {
            Incoming::Candidate(subscriber, init) => {
                let route = if subscriber {
                    &to.subscriber
                } else {
                    &to.publisher
                };
                if let (Some(tx), Ok(c)) = (route, serde_json::from_str(&init)) {
                    let _ = tx.send(Signal::Candidate(c));
                }
            }
            Incoming::Offer { sdp, id } => {
                let Some(tx) = &to.subscriber else { return };
                let (reply, answer) = oneshot::channel();
                if tx.send(Signal::Offer(sdp, reply)).is_err() {
                    return;
                }
                if let Ok(Ok(answer)) = answer.await {
                    let _ = self.send_answer(answer, id).await;
                }
            }
            Incoming::Video(track_id) => {
                if !self.videos.contains(&track_id) {
                    self.videos.push(track_id.clone());
                }
                if let Some((w, h)) = self.tiles {
                    let _ = self
                        .send_moim(&ClientMessage::LayerPreference {
                            track_id,
                            max_width: w,
                            max_height: h,
                        })
                        .await;
                }
            }
            _ => {}
        }
    }

    /// Keeps the session for as long as its client lives: forwards, pings (LiveKit), and says
    /// goodbye when the client is dropped.
    async fn run(mut self, to: Routes, mut leave: oneshot::Receiver<()>) {
        let mut ping = tokio::time::interval(self.ping_every.unwrap_or(Duration::from_secs(3600)));
        loop {
            tokio::select! {
                m = self.next() => match m {
                    Ok(m) => self.forward(m, &to).await,
                    Err(_) => return,
                },
                _ = ping.tick(), if self.ping_every.is_some() => {
                    if self.ping().await.is_err() {
                        return;
                    }
                }
                _ = &mut leave => {
                    self.leave().await;
                    return;
                }
            }
        }
    }

    /// Hands the session to a task that lives as long as `client`.
    fn keep(self, client: &mut Client, to: Routes) {
        let (leave, on_leave) = oneshot::channel();
        client.on_drop = Some(leave);
        tokio::spawn(self.run(to, on_leave));
    }

    /// Publishes the load generator's simulcast video (as `layers`) and audio on this session
    /// (LiveKit: after `AddTrack` requests were answered; see [`Session::send_livekit`]).
    pub async fn publish(mut self, ip: IpAddr, layers: &[LayerSpec]) -> anyhow::Result<Client> {
        let (tx, rx) = mpsc::unbounded_channel();
        let routes = Routes {
            publisher: Some(tx),
            subscriber: None,
        };
        let s = &mut self;
        let r = &routes;
        let mut client = loadgen::publish_signalled(
            ip,
            layers,
            move |offer| async move {
                match s.protocol {
                    Protocol::LiveKit => {
                        s.send_livekit(LkRequest::Offer(description("offer", offer, 0)))
                            .await?
                    }
                    Protocol::Moim => bail!("moim publishers use WHIP here"),
                }
                loop {
                    match s.recv().await? {
                        Incoming::Answer(sdp) => return Ok((sdp, None)),
                        other => s.forward(other, r).await,
                    }
                }
            },
            Some(rx),
        )
        .await?;
        self.keep(&mut client, routes);
        Ok(client)
    }

    /// Waits for the server's first offer and answers it with a subscriber on `ip`; `full` as
    /// in [`loadgen::subscribe`]. Later offers renegotiate it. With `tiles`, asks for the
    /// room's videos at that size once the answer is sent ([`Session::show_videos_at`]).
    pub async fn subscribe(
        mut self,
        ip: IpAddr,
        full: bool,
        tiles: Option<(u32, u32)>,
    ) -> anyhow::Result<Client> {
        let (tx, rx) = mpsc::unbounded_channel();
        let routes = Routes {
            publisher: None,
            subscriber: Some(tx),
        };
        let (sdp, id) = loop {
            match self.recv().await? {
                Incoming::Offer { sdp, id } => break (sdp, id),
                other => self.forward(other, &routes).await,
            }
        };
        let (mut client, answer) =
            loadgen::subscribe_to_offer_signalled(ip, sdp, full, Some(rx)).await?;
        self.send_answer(answer, id).await?;
        if let Some((w, h)) = tiles {
            self.show_videos_at(w, h).await?;
        }
        self.tiles = tiles;
        self.keep(&mut client, routes);
        Ok(client)
    }
}

/// Where a session's signals go.
struct Routes {
    publisher: Option<mpsc::UnboundedSender<Signal>>,
    subscriber: Option<mpsc::UnboundedSender<Signal>>,
}

/// A LiveKit session description.
pub fn description(kind: &str, sdp: String, id: u32) -> lk::SessionDescription {
    lk::SessionDescription {
        r#type: kind.to_owned(),
        sdp,
        id,
        ..Default::default()
    }
}
