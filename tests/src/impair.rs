//! A user-space UDP impairment proxy for relay links (`tc netem` is not available here):
//! every datagram is delayed by a fixed one-way delay and dropped with a given probability,
//! both ways. It can be stopped (the path goes dark) and started again on the same address.

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
            task: None,
        };
        p.resume().await?;
        Ok(p)
    }

    /// Where to send instead of `target`.
    pub fn addr(&self) -> SocketAddr {
        self.listen
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
        self.task = Some(tokio::spawn(async move {
            let mut client: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
            loop {
                tokio::select! {
                    r = client_side.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        if rand::rng().random::<f64>() >= loss {
                            let (sock, data) = (upstream.clone(), a[..n].to_vec());
                            tokio::spawn(async move {
                                tokio::time::sleep(delay).await;
                                let _ = sock.send_to(&data, target).await;
                            });
                        }
                    }
                    r = upstream.recv_from(&mut b) => {
                        let (Ok((n, _)), Some(to)) = (r, client) else { continue };
                        if rand::rng().random::<f64>() >= loss {
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
