//! A user-space UDP impairment proxy for relay links (`tc netem` is not available here):
//! every datagram is delayed by a fixed one-way delay and dropped with a given probability,
//! both ways. It can be stopped (the path goes dark) and started again on the same address,
//! and it can drop every datagram over a size (a path whose MTU shrank: a tunnel, a route
//! change), which is what makes QUIC's black-hole detection lower its packet size.

use rand::Rng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::task::JoinHandle;

/// A proxy in front of `target`.
pub struct ImpairedPath {
    listen: SocketAddr,
    target: SocketAddr,
    delay: Duration,
    loss: f64,
    /// Datagrams longer than this are dropped (`usize::MAX`: none).
    max_size: Arc<std::sync::atomic::AtomicUsize>,
    task: Option<JoinHandle<()>>,
}

impl ImpairedPath {
    /// Starts a proxy on a free loopback port in front of `target`.
    pub async fn start(target: SocketAddr, delay: Duration, loss: f64) -> anyhow::Result<Self> {
        let listen = UdpSocket::bind("127.0.0.1:0").await?.local_addr()?;
        let mut p = Self {
            listen,
            target,
            delay,
            loss,
            max_size: Arc::new(std::sync::atomic::AtomicUsize::new(usize::MAX)),
            task: None,
        };
        p.resume().await?;
        Ok(p)
    }

    /// Where to send instead of `target`.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// From now on datagrams longer than `max` bytes are dropped both ways (`None`: all pass).
    pub fn set_max_size(&self, max: Option<usize>) {
        self.max_size.store(
            max.unwrap_or(usize::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The path goes dark: nothing passes, the proxy's sockets close.
    pub fn kill(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Starts passing packets again (a new upstream socket: the far side sees a new address).
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.kill();
        let client_side = Arc::new(UdpSocket::bind(self.listen).await?);
        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let (target, delay, loss) = (self.target, self.delay, self.loss);
        let max_size = self.max_size.clone();
        let passes = move |n: usize| {
            n <= max_size.load(std::sync::atomic::Ordering::Relaxed)
                && rand::rng().random::<f64>() >= loss
        };
        self.task = Some(tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
            loop {
                tokio::select! {
                    r = client_side.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        if passes(n) {
                            let (sock, data) = (upstream.clone(), a[..n].to_vec());
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = sock.send_to(&data, target).await;
                            });
                        }
                    }
                    r = upstream.recv_from(&mut b) => {
                        let (Ok((n, _)), Some(to)) = (r, client) else { continue };
                        if passes(n) {
                            let (sock, data) = (client_side.clone(), b[..n].to_vec());
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = sock.send_to(&data, to).await;
                            });
                        }
                    }
                }
            }
        }));
        Ok(())
    }
}

impl Drop for ImpairedPath {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port-mapping NAT in front of `target`, for any number of clients: each client gets its
/// own upstream socket (so the target sees one address per client, as behind a real NAT) and
/// replies go back to the client they belong to.
pub struct UdpNat {
    listen: SocketAddr,
    task: JoinHandle<()>,
    epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl UdpNat {
    /// Starts the mapping on a free loopback port, dropping each (S)RTP or RTCP datagram from `target` back to a
    /// client with probability `loss`; ICE and DTLS pass untouched, so connections come up the
    /// same way every run.
    pub async fn start_lossy(target: SocketAddr, loss: f64) -> anyhow::Result<Self> {
        use std::sync::atomic::Ordering;
        let outside = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        let listen = outside.local_addr()?;
        let epoch = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let now_epoch = epoch.clone();
        let task = tokio::spawn(async move {
            let mut inside: std::collections::HashMap<SocketAddr, Arc<UdpSocket>> =
                std::collections::HashMap::new();
            let mut seen = 0;
            let mut buf = vec![0u8; 2048];
            loop {
                let Ok((n, client)) = outside.recv_from(&mut buf).await else {
                    continue;
                };
                let current = now_epoch.load(Ordering::Relaxed);
                if current != seen {
                    // Remapped: every client gets a new outside port; the old ones are dead.
                    inside.clear();
                    seen = current;
                }
                let sock = match inside.get(&client) {
                    Some(s) => s.clone(),
                    None => {
                        let Ok(s) = UdpSocket::bind("127.0.0.1:0").await else {
                            continue;
                        };
                        let s = Arc::new(s);
                        inside.insert(client, s.clone());
                        let (back, out, epoch) = (s.clone(), outside.clone(), now_epoch.clone());
                        tokio::spawn(async move {
                            let mut b = vec![0u8; 2048];
                            while let Ok((n, _)) = back.recv_from(&mut b).await {
                                if epoch.load(Ordering::Relaxed) != current {
                                    break;
                                }
                                // RFC 7983: a first byte of 128-191 is RTP or RTCP.
                                let media = (128..=191).contains(&b[0]);
                                if media && loss > 0.0 && rand::rng().random::<f64>() < loss {
                                    continue;
                                }
                                let _ = out.send_to(&b[..n], client).await;
                            }
                        });
                        s
                    }
                };
                let _ = sock.send_to(&buf[..n], target).await;
            }
        });
        Ok(Self {
            listen,
            task,
            epoch,
        })
    }

    /// The mapped (public) address.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// Forgets every mapping, as a NAT that rebinds does (or a phone that moves from Wi-Fi to
    /// cellular): each client's next datagram leaves from a new port, and what the target
    /// sends to the old one goes nowhere.
    pub fn remap(&self) {
        self.epoch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A node that binds one port and advertises another (`--public-ip`, `--public-port`), reached
/// only through a port-mapping NAT that drops `loss` of the media it returns to clients.
pub async fn node_behind_nat(loss: f64) -> anyhow::Result<(crate::Node, UdpNat)> {
    let udp: std::net::SocketAddr = format!("127.0.0.1:{}", crate::free_udp_port()).parse()?;
    let nat = UdpNat::start_lossy(udp, loss).await?;
    let public_port = nat.addr().port().to_string();
    let node = crate::Node::start_on(
        udp,
        &["--public-ip", "127.0.0.1", "--public-port", &public_port],
    )
    .await?;
    Ok((node, nat))
}

impl Drop for UdpNat {
    fn drop(&mut self) {
        self.task.abort();
    }
}
