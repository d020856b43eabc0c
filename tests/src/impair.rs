//! A user-space UDP impairment proxy for relay links (`tc netem` is not available here) that
//! behaves like a WAN path: each direction has a bottleneck of a given rate with a bounded
//! queue in front of it (so delay grows before anything is lost, and then the queue's tail is
//! dropped), random or bursty loss (a Gilbert-Elliott channel), a one-way delay and jitter that
//! keeps the order of datagrams. The profile can change while the path carries traffic (a
//! transit link that gets congested and recovers). The path can also go dark and come back on
//! the same address, and drop every datagram over a size (an MTU that shrank: a tunnel, a route
//! change), which is what makes QUIC's black-hole detection lower its packet size.

use rand::{Rng, SeedableRng};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Bytes a datagram takes on the wire beyond its payload (IPv4 and UDP headers).
const WIRE_OVERHEAD: usize = 28;

/// Loss on a path.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// Each datagram independently, with this probability.
    Random(f64),
    /// Bursts: a two-state (good/bad) Markov chain, stepped once per datagram.
    Bursty(GilbertElliott),
}

/// A Gilbert-Elliott loss channel: the path is good or bad; it turns bad with probability
/// `to_bad` and good again with `to_good` per datagram, and loses `loss_bad` of what crosses it
/// while bad and `loss_good` while good.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GilbertElliott {
    /// P(good → bad) per datagram.
    pub to_bad: f64,
    /// P(bad → good) per datagram.
    pub to_good: f64,
    /// Loss while good.
    pub loss_good: f64,
    /// Loss while bad.
    pub loss_bad: f64,
}

impl GilbertElliott {
    /// Loses `loss` of all datagrams on average, in bursts of `mean_burst` datagrams on average
    /// (every datagram of a bad spell is lost, none while good).
    pub fn bursts(loss: f64, mean_burst: f64) -> Self {
        let to_good = 1.0 / mean_burst.max(1.0);
        let loss = loss.clamp(0.0, 0.99);
        Self {
            // Stationary share of bad: to_bad / (to_bad + to_good) = loss.
            to_bad: loss * to_good / (1.0 - loss),
            to_good,
            loss_good: 0.0,
            loss_bad: 1.0,
        }
    }
}

/// What a path does to each datagram, in each direction (each direction has its own queue and
/// loss state).
#[derive(Clone, Debug, PartialEq)]
pub struct PathProfile {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Extra one-way delay, uniform in `0..jitter` per datagram; the order is kept (a datagram
    /// never overtakes the one before it).
    pub jitter: Duration,
    /// The bottleneck's rate, bits per second on the wire (`None`: no bottleneck).
    pub rate_bps: Option<u64>,
    /// The queue in front of the bottleneck, as the time it takes to drain: a datagram that
    /// would wait longer is dropped (tail drop).
    pub queue: Duration,
    /// Loss after the bottleneck.
    pub loss: Loss,
    /// Datagrams longer than this are dropped (`None`: any size passes).
    pub max_size: Option<usize>,
}

impl PathProfile {
    /// A fixed delay and random loss, nothing else.
    pub fn lossy(delay: Duration, loss: f64) -> Self {
        Self {
            delay,
            jitter: Duration::ZERO,
            rate_bps: None,
            queue: Duration::from_millis(60),
            loss: Loss::Random(loss),
            max_size: None,
        }
    }

    /// A WAN path: `rtt` (half each way), a bottleneck of `rate_bps` with a 60 ms queue, no loss
    /// beyond the queue's.
    pub fn wan(rtt: Duration, rate_bps: u64) -> Self {
        Self {
            rate_bps: Some(rate_bps),
            ..Self::lossy(rtt / 2, 0.0)
        }
    }
}

/// What happens to one datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Delivered at this time.
    Deliver(Instant),
    /// Dropped at the bottleneck: its queue was full.
    QueueFull,
    /// Lost on the path.
    Lost,
    /// Over the path's size limit.
    TooLarge,
}

/// One direction of a path: the bottleneck's queue, the loss channel's state and the last
/// delivery time (for order). Pure: the proxy feeds it arrivals, tests feed it made-up ones.
#[derive(Debug, Default)]
pub struct Direction {
    /// When the bottleneck has sent everything queued so far.
    free_at: Option<Instant>,
    /// When the previous datagram is delivered.
    last_delivery: Option<Instant>,
    /// The Gilbert-Elliott channel is in its bad state.
    bad: bool,
}

impl Direction {
    /// The fate of a datagram of `size` bytes arriving at `now`.
    pub fn admit(
        &mut self,
        profile: &PathProfile,
        now: Instant,
        size: usize,
        rng: &mut impl Rng,
    ) -> Fate {
        if profile.max_size.is_some_and(|max| size > max) {
            return Fate::TooLarge;
        }
        let mut departs = now;
        if let Some(rate) = profile.rate_bps.filter(|r| *r > 0) {
            let start = self.free_at.filter(|f| *f > now).unwrap_or(now);
            if start - now > profile.queue {
                return Fate::QueueFull;
            }
            let bits = ((size + WIRE_OVERHEAD) * 8) as f64;
            departs = start + Duration::from_secs_f64(bits / rate as f64);
            self.free_at = Some(departs);
        }
        let lost = match profile.loss {
            Loss::Random(p) => p > 0.0 && rng.random::<f64>() < p,
            Loss::Bursty(ge) => {
                let flip = if self.bad { ge.to_good } else { ge.to_bad };
                if rng.random::<f64>() < flip {
                    self.bad = !self.bad;
                }
                let p = if self.bad { ge.loss_bad } else { ge.loss_good };
                p > 0.0 && rng.random::<f64>() < p
            }
        };
        if lost {
            return Fate::Lost;
        }
        let jitter = if profile.jitter.is_zero() {
            Duration::ZERO
        } else {
            profile.jitter.mul_f64(rng.random::<f64>())
        };
        let at = (departs + profile.delay + jitter).max(self.last_delivery.unwrap_or(now));
        self.last_delivery = Some(at);
        Fate::Deliver(at)
    }
}

/// What one direction of a path did so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DirectionStats {
    /// Datagrams that arrived at the path.
    pub offered: u64,
    /// Delivered.
    pub delivered: u64,
    /// Dropped at the bottleneck's full queue.
    pub queue_drops: u64,
    /// Lost on the path (random or bursty loss).
    pub lost: u64,
    /// Dropped as too large.
    pub too_large: u64,
    /// Bytes delivered (payload).
    pub bytes: u64,
    /// The longest wait in the bottleneck's queue, microseconds.
    pub max_queue_us: u64,
}

impl DirectionStats {
    /// What happened between `before` and this snapshot (`max_queue_us` stays this one's).
    pub fn since(&self, before: &Self) -> Self {
        Self {
            offered: self.offered - before.offered,
            delivered: self.delivered - before.delivered,
            queue_drops: self.queue_drops - before.queue_drops,
            lost: self.lost - before.lost,
            too_large: self.too_large - before.too_large,
            bytes: self.bytes - before.bytes,
            max_queue_us: self.max_queue_us,
        }
    }

    /// Datagrams the path did not deliver: its queue was full, or they were lost.
    pub fn dropped(&self) -> u64 {
        self.queue_drops + self.lost
    }

    /// [`DirectionStats::dropped`] as a share of those offered.
    pub fn dropped_share(&self) -> f64 {
        self.dropped() as f64 / self.offered.max(1) as f64
    }
}

#[derive(Default)]
struct Counters {
    offered: AtomicU64,
    delivered: AtomicU64,
    queue_drops: AtomicU64,
    lost: AtomicU64,
    too_large: AtomicU64,
    bytes: AtomicU64,
    max_queue_us: AtomicU64,
}

impl Counters {
    fn record(&self, fate: Fate, size: usize, queued: Duration) {
        self.offered.fetch_add(1, Ordering::Relaxed);
        let counter = match fate {
            Fate::Deliver(_) => {
                self.bytes.fetch_add(size as u64, Ordering::Relaxed);
                let us = u64::try_from(queued.as_micros()).unwrap_or(u64::MAX);
                self.max_queue_us.fetch_max(us, Ordering::Relaxed);
                &self.delivered
            }
            Fate::QueueFull => &self.queue_drops,
            Fate::Lost => &self.lost,
            Fate::TooLarge => &self.too_large,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> DirectionStats {
        DirectionStats {
            offered: self.offered.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            queue_drops: self.queue_drops.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            too_large: self.too_large.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            max_queue_us: self.max_queue_us.load(Ordering::Relaxed),
        }
    }
}

/// A proxy in front of `target`: what is sent to [`ImpairedPath::addr`] reaches `target`
/// through the path's profile, and the answers come back through it too.
pub struct ImpairedPath {
    listen: SocketAddr,
    target: SocketAddr,
    profile: Arc<Mutex<PathProfile>>,
    /// Toward the target, and back.
    counters: Arc<[Counters; 2]>,
    tasks: Vec<JoinHandle<()>>,
}

impl ImpairedPath {
    /// Starts a proxy on a free loopback port in front of `target`, with a fixed one-way
    /// `delay` and random `loss`.
    pub async fn start(target: SocketAddr, delay: Duration, loss: f64) -> anyhow::Result<Self> {
        Self::with_profile(target, PathProfile::lossy(delay, loss)).await
    }

    /// Starts a proxy on a free loopback port in front of `target`.
    pub async fn with_profile(target: SocketAddr, profile: PathProfile) -> anyhow::Result<Self> {
        let listen = UdpSocket::bind("127.0.0.1:0").await?.local_addr()?;
        let mut p = Self {
            listen,
            target,
            profile: Arc::new(Mutex::new(profile)),
            counters: Arc::new([Counters::default(), Counters::default()]),
            tasks: Vec::new(),
        };
        p.resume().await?;
        Ok(p)
    }

    /// Where to send instead of `target`.
    pub fn addr(&self) -> SocketAddr {
        self.listen
    }

    /// The profile from now on (both directions; queued datagrams keep their times).
    pub fn set_profile(&self, profile: PathProfile) {
        *self.profile.lock().unwrap_or_else(|e| e.into_inner()) = profile;
    }

    /// Changes the profile in place (e.g. the bottleneck's rate mid-test).
    pub fn update(&self, change: impl FnOnce(&mut PathProfile)) {
        change(&mut self.profile.lock().unwrap_or_else(|e| e.into_inner()));
    }

    /// From now on datagrams longer than `max` bytes are dropped both ways (`None`: all pass).
    pub fn set_max_size(&self, max: Option<usize>) {
        self.update(|p| p.max_size = max);
    }

    /// What each direction did so far: toward the target, and back.
    pub fn stats(&self) -> [DirectionStats; 2] {
        [self.counters[0].snapshot(), self.counters[1].snapshot()]
    }

    /// The path goes dark: nothing passes, the proxy's sockets close.
    pub fn kill(&mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }

    /// Starts passing packets again (a new upstream socket: the far side sees a new address).
    pub async fn resume(&mut self) -> anyhow::Result<()> {
        self.kill();
        let client_side = Arc::new(UdpSocket::bind(self.listen).await?);
        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
        // Each direction delivers in order from its own queue (delivery times never go back).
        let (to_target, mut forward) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
        let (to_client, mut back) = mpsc::unbounded_channel::<(Instant, Vec<u8>, SocketAddr)>();
        let (sock, target) = (upstream.clone(), self.target);
        self.tasks.push(tokio::spawn(async move {
            while let Some((at, data)) = forward.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = sock.send_to(&data, target).await;
            }
        }));
        let sock = client_side.clone();
        self.tasks.push(tokio::spawn(async move {
            while let Some((at, data, to)) = back.recv().await {
                tokio::time::sleep_until(at).await;
                let _ = sock.send_to(&data, to).await;
            }
        }));
        let (profile, counters) = (self.profile.clone(), self.counters.clone());
        self.tasks.push(tokio::spawn(async move {
            let mut dirs = [Direction::default(), Direction::default()];
            let mut client: Option<SocketAddr> = None;
            let (mut a, mut b) = (vec![0u8; 2048], vec![0u8; 2048]);
            let mut rng = rand::rngs::StdRng::from_os_rng();
            let mut admit = |dir: usize, n: usize| {
                let now = Instant::now();
                let queued = dirs[dir].free_at.filter(|f| *f > now).map(|f| f - now);
                let p = profile.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let fate = dirs[dir].admit(&p, now, n, &mut rng);
                counters[dir].record(fate, n, queued.unwrap_or_default());
                match fate {
                    Fate::Deliver(at) => Some(at),
                    _ => None,
                }
            };
            loop {
                tokio::select! {
                    r = client_side.recv_from(&mut a) => {
                        let Ok((n, from)) = r else { continue };
                        client = Some(from);
                        if let Some(at) = admit(0, n) {
                            let _ = to_target.send((at, a[..n].to_vec()));
                        }
                    }
                    r = upstream.recv_from(&mut b) => {
                        let (Ok((n, _)), Some(to)) = (r, client) else { continue };
                        if let Some(at) = admit(1, n) {
                            let _ = to_client.send((at, b[..n].to_vec(), to));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }

    /// Offered twice what the bottleneck carries: the queue fills to its bound (delay grows
    /// first), then its tail is dropped; what passes leaves at the bottleneck's rate.
    #[test]
    fn a_bottleneck_queues_up_to_its_bound_then_drops_the_tail() {
        let profile = PathProfile::wan(Duration::from_millis(60), 1_000_000);
        let mut dir = Direction::default();
        let t0 = Instant::now();
        // 1,172-byte datagrams (1,200 on the wire: 9.6 ms at 1 Mbit/s) every 4.8 ms for 2 s.
        let (mut delivered, mut dropped, mut last) = (0u32, 0u32, t0);
        let mut first_drop = None;
        for i in 0..417u32 {
            let now = t0 + Duration::from_micros(4_800 * u64::from(i));
            match dir.admit(&profile, now, 1_172, &mut rng()) {
                Fate::Deliver(at) => {
                    let waited = at - now - profile.delay;
                    assert!(waited <= Duration::from_micros(69_601), "{waited:?}");
                    assert!(at >= last, "in order");
                    last = at;
                    delivered += 1;
                }
                Fate::QueueFull => {
                    dropped += 1;
                    first_drop.get_or_insert(i);
                }
                other => panic!("{other:?}"),
            }
        }
        // The queue (60 ms = 6 datagrams) fills after about 13 arrivals; then every other one
        // is dropped.
        assert!(
            first_drop.is_some_and(|i| (10..=16).contains(&i)),
            "{first_drop:?}"
        );
        assert!((200..=222).contains(&delivered), "{delivered} delivered");
        assert_eq!(delivered + dropped, 417);
        // What passes leaves at the bottleneck's rate: 9.6 ms apart.
        let span = last - t0 - profile.delay;
        let rate = f64::from(delivered) * 9_600.0 / span.as_secs_f64();
        assert!((950_000.0..=1_050_000.0).contains(&rate), "{rate}");
    }

    /// Under the bottleneck's rate nothing waits and nothing is dropped.
    #[test]
    fn under_its_rate_a_bottleneck_only_delays() {
        let profile = PathProfile::wan(Duration::from_millis(180), 2_500_000);
        let mut dir = Direction::default();
        let t0 = Instant::now();
        for i in 0..1000u64 {
            let now = t0 + Duration::from_millis(5 * i);
            let Fate::Deliver(at) = dir.admit(&profile, now, 1_172, &mut rng()) else {
                panic!("dropped");
            };
            assert!(at - now < Duration::from_millis(95), "{:?}", at - now);
        }
    }

    /// Bursty loss loses the share asked for, in bursts of the length asked for.
    #[test]
    fn gilbert_elliott_loses_the_mean_share_in_bursts() {
        let profile = PathProfile {
            loss: Loss::Bursty(GilbertElliott::bursts(0.03, 4.0)),
            ..PathProfile::lossy(Duration::from_millis(90), 0.0)
        };
        let mut dir = Direction::default();
        let mut r = rng();
        let now = Instant::now();
        let (mut lost, mut bursts, mut in_burst) = (0u32, 0u32, false);
        const N: u32 = 400_000;
        for _ in 0..N {
            let l = dir.admit(&profile, now, 100, &mut r) == Fate::Lost;
            lost += u32::from(l);
            bursts += u32::from(l && !in_burst);
            in_burst = l;
        }
        let share = f64::from(lost) / f64::from(N);
        let mean_burst = f64::from(lost) / f64::from(bursts);
        assert!((0.027..=0.033).contains(&share), "{share}");
        assert!((3.6..=4.4).contains(&mean_burst), "{mean_burst}");
        // Random loss of the same share comes in bursts of about one.
        let random = PathProfile::lossy(Duration::ZERO, 0.03);
        let (mut lost, mut bursts, mut in_burst) = (0u32, 0u32, false);
        for _ in 0..N {
            let l = dir.admit(&random, now, 100, &mut r) == Fate::Lost;
            lost += u32::from(l);
            bursts += u32::from(l && !in_burst);
            in_burst = l;
        }
        assert!(f64::from(lost) / f64::from(bursts) < 1.1);
    }

    /// Jitter spreads delivery times but never reorders.
    #[test]
    fn jitter_keeps_the_order() {
        let profile = PathProfile {
            jitter: Duration::from_millis(30),
            ..PathProfile::lossy(Duration::from_millis(50), 0.0)
        };
        let mut dir = Direction::default();
        let mut r = rng();
        let t0 = Instant::now();
        let (mut last, mut spread) = (t0, Duration::ZERO);
        for i in 0..2000u64 {
            let now = t0 + Duration::from_millis(2 * i);
            let Fate::Deliver(at) = dir.admit(&profile, now, 100, &mut r) else {
                panic!("dropped");
            };
            assert!(at >= last);
            assert!(at - now >= profile.delay);
            spread = spread.max(at - now - profile.delay);
            last = at;
        }
        assert!(spread >= Duration::from_millis(25), "{spread:?}");
    }

    /// Through real sockets: every datagram sent is counted once, and what the far side
    /// receives is exactly what the path says it delivered.
    #[tokio::test]
    async fn the_proxy_counts_what_it_does_to_each_datagram() -> anyhow::Result<()> {
        let far = UdpSocket::bind("127.0.0.1:0").await?;
        let path = ImpairedPath::with_profile(
            far.local_addr()?,
            PathProfile {
                max_size: Some(1_200),
                ..PathProfile::wan(Duration::from_millis(20), 1_000_000)
            },
        )
        .await?;
        let near = UdpSocket::bind("127.0.0.1:0").await?;
        // A burst of 100 (the queue takes 6 of 1,200 bytes), and 10 over the size limit.
        // (In bursts of 20: the proxy's receive buffer holds about 90.)
        for i in 0..100 {
            near.send_to(&[0u8; 1_172], path.addr()).await?;
            if i % 20 == 19 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        for _ in 0..10 {
            near.send_to(&[0u8; 1_300], path.addr()).await?;
        }
        let mut got = 0;
        let mut buf = [0u8; 2048];
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), far.recv_from(&mut buf)).await
        {
            got += 1;
        }
        let [forward, back] = path.stats();
        assert_eq!(forward.offered, 110);
        assert_eq!(forward.too_large, 10);
        assert!(forward.queue_drops > 50, "{forward:?}");
        assert_eq!(
            forward.delivered + forward.queue_drops + forward.too_large,
            110
        );
        assert_eq!(got, forward.delivered);
        assert_eq!(back, DirectionStats::default());
        // Turned down mid-run: a path without a bottleneck carries the next burst whole.
        path.update(|p| p.rate_bps = None);
        for _ in 0..50 {
            near.send_to(&[0u8; 500], path.addr()).await?;
        }
        let mut more = 0;
        while let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(300), far.recv_from(&mut buf)).await
        {
            more += 1;
        }
        assert_eq!(more, 50);
        Ok(())
    }
}
