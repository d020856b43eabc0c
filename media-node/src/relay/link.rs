//! One relay link: a QUIC connection to another media node, with the hello exchange, framed
//! control messages on one bidirectional stream, and media datagrams.
//!
//! The dialling node opens the control stream and speaks first; both send [`Control::Hello`]
//! and check the other's within [`HELLO_TIMEOUT`]. Anything malformed from the peer closes the
//! link with a logged reason (the QUIC close frame carries it too); the node's own sessions are
//! never touched by a link's failure.

use super::fragment::{Reassembler, is_fragment, split};
use super::proto::{Control, MAX_FRAME, MediaDatagram, PROTOCOL_VERSION, ProtoError};
use super::tls::{RELAY_SERVER_NAME, RelayTls};
use bytes::{Bytes, BytesMut};
use std::net::SocketAddr;
use std::time::Duration;

/// How long the peer has to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest an incoming link may take from its first packet to its hello.
pub const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Incoming links in their handshake at once; more knocking meanwhile are refused (they dial
/// again later), so a flood of half-open handshakes cannot hold the node's memory.
pub const MAX_HANDSHAKES: usize = 32;

/// Why a link failed or closed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// QUIC connection set-up or I/O.
    #[error("quic: {0}")]
    Quic(String),
    /// The peer sent bytes that are not the protocol.
    #[error("protocol: {0}")]
    Protocol(#[from] ProtoError),
    /// The peer's first message was not a hello, or came too late, or its version is not ours.
    #[error("handshake: {0}")]
    Handshake(String),
    /// The peer closed the link.
    #[error("closed by peer: {0}")]
    Closed(String),
    /// A message this node was to send encodes to a frame over the protocol's limit; it was
    /// not sent.
    #[error("a {0}-byte control frame is over the {MAX_FRAME}-byte limit; not sent")]
    TooLarge(usize),
}

fn quic(e: impl std::fmt::Display) -> LinkError {
    LinkError::Quic(e.to_string())
}

/// What the peer said about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHello {
    /// Its node id.
    pub node_id: String,
    /// Its region.
    pub region: String,
    /// The protocol version both speak (the lower of the two).
    pub version: u16,
}

/// A node's QUIC endpoint for relay links (one UDP socket, both directions).
pub struct RelayEndpoint {
    endpoint: quinn::Endpoint,
    /// For dialling; replaced when the certificate is renewed.
    client: std::sync::Mutex<quinn::ClientConfig>,
    node_id: String,
    region: String,
}

impl RelayEndpoint {
    /// Binds `addr` (port 0 picks one).
    pub fn bind(
        addr: SocketAddr,
        tls: RelayTls,
        node_id: &str,
        region: &str,
    ) -> Result<Self, LinkError> {
        let endpoint = quinn::Endpoint::server(tls.server, addr).map_err(quic)?;
        Ok(Self {
            endpoint,
            client: std::sync::Mutex::new(tls.client),
            node_id: node_id.to_owned(),
            region: region.to_owned(),
        })
    }

    /// Uses renewed TLS configurations for links made from now on (links up keep theirs).
    pub fn set_tls(&self, tls: RelayTls) {
        self.endpoint.set_server_config(Some(tls.server));
        if let Ok(mut c) = self.client.lock() {
            *c = tls.client;
        }
    }

    /// The bound address.
    pub fn local_addr(&self) -> Result<SocketAddr, LinkError> {
        self.endpoint.local_addr().map_err(quic)
    }

    fn hello(&self) -> Control {
        Control::Hello {
            version: PROTOCOL_VERSION,
            node_id: self.node_id.clone(),
            region: self.region.clone(),
        }
    }

    /// Dials `peer` and completes the hello exchange.
    pub async fn dial(&self, peer: SocketAddr) -> Result<Link, LinkError> {
        let client = self
            .client
            .lock()
            .map_err(|_| LinkError::Handshake("tls configuration unavailable".into()))?
            .clone();
        let conn = self
            .endpoint
            .connect_with(client, peer, RELAY_SERVER_NAME)
            .map_err(quic)?
            .await
            .map_err(quic)?;
        let (send, recv) = conn.open_bi().await.map_err(quic)?;
        let mut link = Link::new(conn, send, recv);
        link.send(&self.hello()).await?;
        link.expect_hello().await?;
        Ok(link)
    }

    /// Waits for the next incoming link and completes its hello exchange. `None` once the
    /// endpoint is closed. An error concerns that one peer only. One at a time: a node's
    /// accept loop uses [`Self::incoming`] and runs [`Self::handshake`] per peer instead.
    pub async fn accept(&self) -> Option<Result<Link, LinkError>> {
        let incoming = self.incoming().await?;
        Some(self.handshake(incoming).await)
    }

    /// The next peer knocking, before any handshake. `None` once the endpoint is closed.
    pub async fn incoming(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Completes the QUIC/TLS handshake and the hello exchange with a peer that knocked, within
    /// [`ACCEPT_TIMEOUT`] in all (a peer that stalls costs only its own link).
    pub async fn handshake(&self, incoming: quinn::Incoming) -> Result<Link, LinkError> {
        let shake = async {
            let conn = incoming.await.map_err(quic)?;
            let Ok(stream) = tokio::time::timeout(HELLO_TIMEOUT, conn.accept_bi()).await else {
                let reason = "no control stream opened in time";
                conn.close(1u32.into(), reason.as_bytes());
                return Err(LinkError::Handshake(reason.into()));
            };
            let (send, recv) = stream.map_err(quic)?;
            let mut link = Link::new(conn, send, recv);
            link.expect_hello().await?;
            link.send(&self.hello()).await?;
            Ok(link)
        };
        tokio::time::timeout(ACCEPT_TIMEOUT, shake)
            .await
            .map_err(|_| LinkError::Handshake("handshake and hello took too long".into()))?
    }

    /// Closes every link of the endpoint.
    pub fn close(&self) {
        self.endpoint.close(0u32.into(), b"node shutting down");
    }
}

/// An established link.
pub struct Link {
    conn: quinn::Connection,
    reader: LinkReader,
    writer: LinkWriter,
    /// The peer, once its hello arrived.
    pub peer: Option<PeerHello>,
}

impl Link {
    fn new(conn: quinn::Connection, send: quinn::SendStream, recv: quinn::RecvStream) -> Self {
        Self {
            reader: LinkReader {
                conn: conn.clone(),
                recv,
                buf: BytesMut::with_capacity(4096),
            },
            writer: LinkWriter { send },
            conn,
            peer: None,
        }
    }

    async fn expect_hello(&mut self) -> Result<(), LinkError> {
        let first = tokio::time::timeout(HELLO_TIMEOUT, self.recv())
            .await
            .map_err(|_| LinkError::Handshake("no hello in time".into()));
        let first = match first {
            Ok(Ok(m)) => m,
            Ok(Err(e)) | Err(e) => {
                self.close_with(&e);
                return Err(e);
            }
        };
        match first {
            Control::Hello {
                version,
                node_id,
                region,
            } if version >= 1 => {
                self.peer = Some(PeerHello {
                    node_id,
                    region,
                    version: version.min(PROTOCOL_VERSION),
                });
                Ok(())
            }
            other => {
                let e = LinkError::Handshake(format!("expected hello, got {other:?}"));
                self.close_with(&e);
                Err(e)
            }
        }
    }

    /// Sends one control message.
    pub async fn send(&mut self, msg: &Control) -> Result<(), LinkError> {
        self.writer.send(msg).await
    }

    /// Receives the next control message. A malformed frame closes the link (with the
    /// reason in the close frame) and is returned as the error.
    pub async fn recv(&mut self) -> Result<Control, LinkError> {
        let r = self.reader.recv().await;
        if let Err(e @ LinkError::Protocol(_)) = &r {
            tracing::warn!(peer = ?self.peer, error = %e, "closing relay link");
        }
        r
    }

    /// Queues a media datagram, in fragments when the path carries less (see
    /// [`super::fragment`]). `false` when it was dropped (the peer takes no datagrams);
    /// QUIC's own buffer drops the oldest when full.
    pub fn send_media(&self, d: &MediaDatagram) -> bool {
        send_datagram(&self.conn, d.encode()).is_ok()
    }

    /// The next media datagram, put back together when it came in fragments.
    pub async fn recv_media(
        &self,
        reassembly: &mut Reassembler,
    ) -> Result<MediaDatagram, LinkError> {
        loop {
            let d: Bytes = self.conn.read_datagram().await.map_err(quic)?;
            if !is_fragment(&d) {
                return Ok(MediaDatagram::decode(d)?);
            }
            if let Some(whole) = reassembly.push(&d) {
                return Ok(MediaDatagram::decode(whole)?);
            }
        }
    }

    /// Round-trip time QUIC measures on the link.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// QUIC's counters (packets lost, bytes sent and received).
    pub fn stats(&self) -> quinn::ConnectionStats {
        self.conn.stats()
    }

    /// Whether the far end's hello names `node` (anything, when `None`).
    pub fn is_node(&self, node: Option<&str>) -> bool {
        node.is_none_or(|n| self.peer.as_ref().is_some_and(|h| h.node_id == n))
    }

    /// Closes the link, telling the far end `reason`.
    pub fn close(&self, reason: &str) {
        self.conn.close(1u32.into(), reason.as_bytes());
    }

    fn close_with(&self, e: &LinkError) {
        tracing::warn!(peer = ?self.peer, error = %e, "closing relay link");
        let reason = e.to_string();
        self.close(&reason[..reason.len().min(200)]);
    }

    /// Resolves when the link is closed; says why.
    pub async fn closed(&self) -> String {
        self.conn.closed().await.to_string()
    }

    /// The QUIC connection (datagrams, stats, close), shareable between tasks.
    pub fn connection(&self) -> quinn::Connection {
        self.conn.clone()
    }

    /// Splits the link into its control reader and control writer, for separate tasks.
    pub fn split(self) -> (LinkReader, LinkWriter) {
        (self.reader, self.writer)
    }
}

/// The receiving half of a link's control stream.
pub struct LinkReader {
    conn: quinn::Connection,
    recv: quinn::RecvStream,
    buf: BytesMut,
}

impl LinkReader {
    /// The next control message; a malformed frame closes the link and is the error.
    pub async fn recv(&mut self) -> Result<Control, LinkError> {
        loop {
            match Control::decode(&mut self.buf) {
                Ok(Some(m)) => return Ok(m),
                Ok(None) => {}
                Err(e) => {
                    let reason = e.to_string();
                    self.conn.close(1u32.into(), reason.as_bytes());
                    return Err(LinkError::Protocol(e));
                }
            }
            let mut chunk = [0u8; 8192];
            match self.recv.read(&mut chunk).await {
                Ok(Some(n)) => self.buf.extend_from_slice(&chunk[..n]),
                Ok(None) => return Err(LinkError::Closed("control stream finished".into())),
                Err(e) => return Err(quic(e)),
            }
        }
    }
}

/// The sending half of a link's control stream.
pub struct LinkWriter {
    send: quinn::SendStream,
}

impl LinkWriter {
    /// Sends one control message.
    /// Writes `msg` as one frame. A message whose frame would exceed [`MAX_FRAME`] is not sent
    /// ([`LinkError::TooLarge`], the link stays up): the far side would close the link on it,
    /// and again after every reconnect.
    pub async fn send(&mut self, msg: &Control) -> Result<(), LinkError> {
        let mut out = BytesMut::new();
        msg.encode(&mut out);
        let len = out.len().saturating_sub(4);
        if len > MAX_FRAME {
            return Err(LinkError::TooLarge(len));
        }
        self.send.write_all(&out).await.map_err(quic)
    }
}

/// Fragment ids: unique among the datagrams a link reassembles at once.
static FRAGMENT_IDS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// `d` as the datagrams `conn` can carry now: itself, or fragments when it is larger than the
/// path carries ([`super::fragment`]).
fn pieces(conn: &quinn::Connection, d: Bytes) -> Result<Vec<Bytes>, String> {
    let max = conn
        .max_datagram_size()
        .ok_or("the peer takes no datagrams")?;
    let id = if d.len() > max {
        FRAGMENT_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    } else {
        0
    };
    split(d, max, id).ok_or_else(|| format!("no datagram fits a {max}-byte path"))
}

/// Sends a relay datagram on `conn`, in fragments when it is larger than the path carries now.
/// Returns how many datagrams went out (more than one: it was split).
pub fn send_datagram(conn: &quinn::Connection, d: Bytes) -> Result<usize, String> {
    use futures_util::FutureExt;
    // Each send completes at once, so the future is ready when first polled.
    send_split(conn, d, |p| std::future::ready(conn.send_datagram(p)))
        .now_or_never()
        .unwrap_or_else(|| Err("a datagram send did not complete at once".into()))
}

/// [`send_datagram`], waiting for room in QUIC's send buffer instead of dropping the oldest.
pub async fn send_datagram_wait(conn: &quinn::Connection, d: Bytes) -> Result<usize, String> {
    send_split(conn, d, |p| conn.send_datagram_wait(p)).await
}

/// Splits `d` for the path's current size and sends the pieces with `send`. The size read for
/// splitting can fall before a piece is queued (black-hole detection runs on quinn's side): a
/// piece refused as too large makes it split again for the new size, a few times at most.
async fn send_split<F, Fut>(
    conn: &quinn::Connection,
    d: Bytes,
    mut send: F,
) -> Result<usize, String>
where
    F: FnMut(Bytes) -> Fut,
    Fut: std::future::Future<Output = Result<(), quinn::SendDatagramError>>,
{
    'attempt: for _ in 0..SPLIT_ATTEMPTS {
        let parts = pieces(conn, d.clone())?;
        let n = parts.len();
        for p in parts {
            match send(p).await {
                Ok(()) => {}
                Err(quinn::SendDatagramError::TooLarge) => continue 'attempt,
                Err(e) => return Err(e.to_string()),
            }
        }
        return Ok(n);
    }
    Err("the path's datagram size kept falling while splitting".into())
}

/// How many times a datagram is split again when the path's size fell meanwhile.
const SPLIT_ATTEMPTS: usize = 3;
