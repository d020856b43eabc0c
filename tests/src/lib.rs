//! Harness for moim's end-to-end tests and benchmarks: real `media-node` processes on
//! loopback, and real headless Chromium driven through ChromeDriver.
//!
//! Nothing here fakes media: browsers use Chromium's fake camera and microphone, which produce
//! real encoded video and audio over real ICE, DTLS and SRTP.

pub mod autoscale_bench;
pub mod cascade_bench;
pub mod fabric;
pub mod failover;
pub mod impair;
pub mod janus;
pub mod k8s;
pub mod kube_bench;
pub mod livekit;
pub mod loadgen;
pub mod placement_bench;
pub mod room_bench;
pub mod sfu_bench;
pub mod signalled;
pub mod webinar_bench;

use anyhow::{Context, bail};
use fantoccini::{Client, ClientBuilder};
use moim_wire::JoinClaims;
use moim_wire::token::DEV_SECRET;
use serde_json::Value;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Browser tests take this lock so that at most one runs at a time: each starts several
/// Chromium processes, and two such tests side by side on a 2-core machine starve each other.
pub static BROWSER_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends `signal` (`"TERM"`, `"INT"`) to `child` and waits up to `timeout` for it to exit;
/// returns its exit status, or `None` if it is still running (the caller decides whether to
/// kill it).
pub fn signal_and_wait(
    child: &mut Child,
    signal: &str,
    timeout: Duration,
) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs a measurement in real time (browsers, nodes and an impaired path, judged on seconds
/// and percents) and, if it fails, once more from the start, failing only if both do; prints
/// the first failure and how much of the machine's CPU time its host took meanwhile (steal).
///
/// On this project's shared 2-core machine the same measurement that passes with room to
/// spare has, a few times, failed while something else took the CPU (CI on 2026-12-02: audio
/// gaps of half a second in two tests that never show 5 ms alone, and alone again with two
/// busy loops beside them, within bounds). One retry tells a starved machine from a
/// regression: what the code gets wrong fails twice.
pub async fn measured<F, Fut>(what: &str, mut attempt: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let before = cpu_times();
    let Err(first) = attempt().await else {
        return Ok(());
    };
    let steal = match (before, cpu_times()) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => (s1 - s0) as f64 / (t1 - t0) as f64,
        _ => 0.0,
    };
    eprintln!(
        "{what}: the first attempt failed ({first:#}); the host took {:.1}% of the CPU meanwhile; \
         once more",
        steal * 100.0
    );
    attempt()
        .await
        .map_err(|e| e.context(format!("{what} failed twice; the first time: {first:#}")))
}

/// The machine's CPU time stolen by its host and its total CPU time, in clock ticks
/// (`/proc/stat`'s first line).
fn cpu_times() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|t| t.parse().ok())
        .collect();
    Some((*ticks.get(7)?, ticks.iter().take(8).sum()))
}

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Path of a workspace binary, building it first (once per process).
pub fn binary(name: &str) -> anyhow::Result<PathBuf> {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    let release = std::env::current_exe()
        .ok()
        .is_some_and(|p| p.components().any(|c| c.as_os_str() == "release"));
    let built = BUILT.get_or_init(|| {
        let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        cmd.current_dir(workspace_root()).args([
            "build",
            "-q",
            "--bin",
            "media-node",
            "--bin",
            "operator",
        ]);
        if release {
            cmd.arg("--release");
        }
        match cmd.status() {
            Ok(s) if s.success() => Ok(()),
            Ok(s) => Err(format!("cargo build exited with {s}")),
            Err(e) => Err(e.to_string()),
        }
    });
    if let Err(e) = built {
        bail!("building binaries failed: {e}");
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    Ok(target
        .join(if release { "release" } else { "debug" })
        .join(name))
}

/// The last `n` lines of the file at `path` (empty when it cannot be read), for error messages.
pub fn file_tail(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A command running `program`, pinned to `cpu` with `taskset` when one is given (a peer
/// server benchmarked on the node's core).
pub fn pinned_command(program: &std::ffi::OsStr, cpu: Option<usize>) -> Command {
    match cpu {
        Some(c) => {
            let mut t = Command::new("taskset");
            t.arg("-c").arg(c.to_string()).arg(program);
            t
        }
        None => Command::new(program),
    }
}

/// A free loopback TCP port.
pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A free loopback UDP port.
pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A token for a `--dev` node.
pub fn dev_token(room: &str, identity: &str) -> String {
    JoinClaims {
        identity: identity.into(),
        room: room.into(),
        name: identity.into(),
        can_publish: true,
        can_subscribe: true,
        can_chat: None,
        exp: now_unix() + 3600,
        nbf: None,
    }
    .sign(DEV_SECRET.as_bytes())
}

/// A running `media-node --dev` process, killed on drop.
pub struct Node {
    child: Child,
    /// HTTP address.
    pub http: SocketAddr,
    /// UDP media address.
    pub udp: SocketAddr,
}

impl Node {
    /// Starts a dev node on free loopback ports with `extra` arguments and waits for `/healthz`.
    pub async fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let udp: SocketAddr = format!("127.0.0.1:{}", free_udp_port()).parse()?;
        Self::start_on(udp, extra).await
    }

    /// Starts a dev node with its media on `udp` (for a test that puts something in front of
    /// that port before the node starts).
    pub async fn start_on(udp: SocketAddr, extra: &[&str]) -> anyhow::Result<Self> {
        let http: SocketAddr = format!("127.0.0.1:{}", free_tcp_port()).parse()?;
        let log = std::env::var("MOIM_TEST_LOG").unwrap_or_else(|_| "warn".into());
        let child = Command::new(binary("media-node")?)
            .args([
                "--dev",
                "--http",
                &http.to_string(),
                "--udp",
                &udp.to_string(),
                "--log",
                &log,
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(if std::env::var("MOIM_TEST_LOG").is_ok() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .context("starting media-node")?;
        let node = Self { child, http, udp };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(r) = reqwest::get(node.url("/healthz")).await
                && r.status().is_success()
            {
                return Ok(node);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("media-node did not become healthy")
    }

    /// Starts a dev node `id` in `region` with relay links on `listen`, dialling `peers`, with
    /// `extra` arguments.
    pub async fn start_relay(
        id: &str,
        region: &str,
        listen: &str,
        peers: &[&str],
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let mut args = vec![
            "--node-id",
            id,
            "--region",
            region,
            "--relay-listen",
            listen,
        ];
        for p in peers {
            args.extend(["--peer", p]);
        }
        args.extend_from_slice(extra);
        Self::start(&args).await
    }

    /// `http://<node><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the process to exit, up to `timeout`; returns whether it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
    }
}

impl Node {
    /// The process's exit status, once it has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium with fake camera and microphone, driven over WebDriver.
pub struct Browser {
    driver: Child,
    profile: PathBuf,
    /// The WebDriver client.
    pub client: Client,
}

fn chromium_path() -> String {
    std::env::var("MOIM_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into())
}

impl Browser {
    /// Starts ChromeDriver and a fresh Chromium profile.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(&[]).await
    }

    /// [`Browser::start`] for pages at `origins` other than localhost: Chromium gives the
    /// camera only to secure contexts, so these plain-HTTP origins are treated as secure (what
    /// a real deployment gets from TLS in front of the nodes).
    pub async fn start_for(origins: &[String]) -> anyhow::Result<Self> {
        Self::start_with(&[format!(
            "--unsafely-treat-insecure-origin-as-secure={}",
            origins.join(",")
        )])
        .await
    }

    /// [`Browser::start`] with extra Chromium arguments.
    pub async fn start_with(extra: &[String]) -> anyhow::Result<Self> {
        Self::start_emulating(extra, None).await
    }

    /// [`Browser::start_with`] as a phone whose screen is `width`×`height` CSS pixels (Chrome's
    /// device emulation: the page's viewport, media queries and touch are the phone's; a
    /// headless window cannot be narrower than 500 px).
    pub async fn start_phone(width: u32, height: u32) -> anyhow::Result<Self> {
        Self::start_emulating(&[], Some((width, height))).await
    }

    async fn start_emulating(extra: &[String], phone: Option<(u32, u32)>) -> anyhow::Result<Self> {
        // reqwest and fantoccini both use rustls; pick its crypto provider once.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let port = free_tcp_port();
        let driver = Command::new(
            std::env::var("MOIM_CHROMEDRIVER").unwrap_or_else(|_| "chromedriver".into()),
        )
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group, which Chromium joins: dropping the Browser kills the whole
        // group, so a failed or killed test leaves no Chromium behind to load the machine.
        .process_group(0)
        .spawn()
        .context("starting chromedriver (install Debian's chromium-driver)")?;
        let profile =
            std::env::temp_dir().join(format!("moim-chromium-{}-{port}", std::process::id()));
        let _ = std::fs::create_dir_all(&profile);
        let args = vec![
            "--headless".to_owned(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            "--no-first-run".into(),
            "--disable-dev-shm-usage".into(),
            "--use-fake-device-for-media-stream".into(),
            "--use-fake-ui-for-media-stream".into(),
            "--autoplay-policy=no-user-gesture-required".into(),
            "--allow-loopback-in-peer-connection".into(),
            "--auto-select-desktop-capture-source=Entire screen".into(),
            format!("--user-data-dir={}", profile.display()),
        ];
        // An extra argument replaces a default of the same switch (Chromium would keep the
        // first of two).
        let switch = |a: &str| a.split('=').next().unwrap_or(a).to_owned();
        let args: Vec<String> = args
            .into_iter()
            .filter(|a| !extra.iter().any(|e| switch(e) == switch(a)))
            .chain(extra.iter().cloned())
            .collect();
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            serde_json::json!({ "binary": chromium_path(), "args": args }),
        );
        if let Some((width, height)) = phone {
            caps["goog:chromeOptions"]["mobileEmulation"] = serde_json::json!({
                "deviceMetrics": { "width": width, "height": height, "pixelRatio": 2.0, "touch": true },
            });
        }
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        let client = loop {
            match ClientBuilder::rustls()?
                .capabilities(caps.clone())
                .connect(&url)
                .await
            {
                Ok(c) => break c,
                Err(e) if Instant::now() > deadline => {
                    bail!("chromedriver did not start a session: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        Ok(Self {
            driver,
            profile,
            client,
        })
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        self.client.goto(url).await.context("navigating")?;
        Ok(())
    }

    /// Runs JavaScript (a promise it returns is awaited) and returns its JSON result.
    pub async fn js(&self, script: &str) -> anyhow::Result<Value> {
        self.client
            .execute(script, vec![])
            .await
            .with_context(|| format!("running script: {script}"))
    }

    /// Polls `script` until it returns `true`, or fails after `timeout`.
    pub async fn wait_for(&self, script: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.js(script).await? == Value::Bool(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("timed out waiting for: {script}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Frames decoded per received video track (from `getStats()` of `expr`, a peer
    /// connection expression such as `moim.sub`).
    pub async fn frames_decoded(&self, pc_expr: &str) -> anyhow::Result<Vec<u64>> {
        let script = format!(
            "const pc = {pc_expr}; if (!pc) return []; const r = await pc.getStats(); const out = []; \
             r.forEach(s => {{ if (s.type === 'inbound-rtp' && s.kind === 'video') out.push(s.framesDecoded || 0); }}); return out;"
        );
        let v = self
            .js(&format!("return (async () => {{ {script} }})()"))
            .await?;
        Ok(v.as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default())
    }

    /// Closes the browser.
    pub async fn close(self) {
        let _ = self.client.clone().close().await;
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Waits until every node in `nodes` has `links` relay links up (`moim_relay_links`), or fails
/// after `timeout` with the last metrics read.
pub async fn wait_relay_links(nodes: &[Node], links: f64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    for n in nodes {
        loop {
            let text = reqwest::get(n.url("/metrics")).await?.text().await?;
            if sample(&text, "moim_relay_links") == Some(links) {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "relay links did not come up:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// Packets the publisher's page has sent per simulcast rid (`outbound-rtp`).
pub const SENT_BY_RID: &str = "return (async () => { const r = {}; (await moim.pub.getStats()).forEach(s => { if (s.type === 'outbound-rtp' && s.kind === 'video') r[s.rid || '-'] = s.packetsSent || 0; }); return r; })()";

/// Dynacast seen from the publisher's browser: the viewer's tiles become thumbnails, and the
/// publisher must be told to stop above the lowest layer (within `stop_within`, which covers
/// the 2 s hold) and stop sending rid `f`; then the tiles grow and `f` must flow again.
/// Returns how long after the tiles grew `f` came back (at most 10 s, or an error).
pub async fn dynacast_round(
    publisher: &Browser,
    viewer: &Browser,
    stop_within: Duration,
) -> anyhow::Result<Duration> {
    let sent_f = |v: Value| v["f"].as_u64().unwrap_or(0);
    viewer
        .js("document.querySelectorAll('.tile').forEach(t => { t.style.width = '160px'; t.style.height = '90px'; }); return true;")
        .await?;
    publisher
        .wait_for(
            "return Object.values(moim.publishedLayers).includes(0);",
            stop_within,
        )
        .await?;
    let a = sent_f(publisher.js(SENT_BY_RID).await?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let b = sent_f(publisher.js(SENT_BY_RID).await?);
    anyhow::ensure!(a > 0, "the top layer never flowed");
    anyhow::ensure!(
        a == b,
        "rid f kept sending with nobody wanting it ({a} → {b})"
    );
    let asked = Instant::now();
    viewer
        .js("document.querySelectorAll('.tile').forEach(t => { t.style.width = '1280px'; t.style.height = '720px'; }); return true;")
        .await?;
    loop {
        if sent_f(publisher.js(SENT_BY_RID).await?) > b {
            return Ok(asked.elapsed());
        }
        anyhow::ensure!(
            asked.elapsed() < Duration::from_secs(10),
            "rid f did not come back within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every one of `expected` video tracks in `pc_expr` decodes frames and the count
/// keeps rising; returns the last counts.
pub async fn wait_decoding(
    b: &Browser,
    pc_expr: &str,
    expected: usize,
    timeout: Duration,
) -> anyhow::Result<Vec<u64>> {
    let deadline = Instant::now() + timeout;
    let mut last: Vec<u64> = Vec::new();
    loop {
        let now = b.frames_decoded(pc_expr).await?;
        let live = now.iter().filter(|&&f| f > 0).count();
        if live >= expected
            && now.len() == last.len()
            && now.iter().zip(&last).filter(|(a, b)| a > b).count() >= expected
        {
            return Ok(now);
        }
        if Instant::now() > deadline {
            bail!("expected {expected} decoding video tracks, frames decoded: {now:?}");
        }
        last = now;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A bare WebSocket signalling client (no media), for protocol and drain tests.
pub struct SignalClient {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
}

impl SignalClient {
    /// Connects to the node's `/ws`.
    pub async fn connect(node: &Node) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", node.http)).await?;
        Ok(Self { ws })
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: String) -> anyhow::Result<()> {
        use futures_util::SinkExt;
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::Text(text.into()))
            .await?;
        Ok(())
    }

    /// Sends `join` with `token`.
    pub async fn join(&mut self, token: &str) -> anyhow::Result<()> {
        self.send_text(serde_json::json!({"type": "join", "token": token}).to_string())
            .await
    }

    /// The next JSON message, or `None` when the socket closed (with its close code).
    pub async fn recv(&mut self, timeout: Duration) -> anyhow::Result<Result<Value, Option<u16>>> {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        loop {
            let msg = tokio::time::timeout(timeout, self.ws.next())
                .await
                .context("no message in time")?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(Ok(serde_json::from_str(&t)?)),
                Some(Ok(Message::Close(frame))) => {
                    return Ok(Err(frame.map(|f| u16::from(f.code))));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Ok(Err(None)),
            }
        }
    }

    /// Waits for a message of `type`, skipping others.
    pub async fn recv_type(&mut self, typ: &str, timeout: Duration) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left).await? {
                Ok(v) if v["type"] == typ => return Ok(v),
                Ok(_) => continue,
                Err(code) => bail!("socket closed ({code:?}) while waiting for {typ}"),
            }
        }
    }
}

/// `/status` of a node as JSON.
pub async fn status(node: &Node) -> anyhow::Result<Value> {
    Ok(reqwest::get(node.url("/status")).await?.json().await?)
}

/// `/status` of a node started with `--admin-token admin_token`.
pub async fn admin_status(
    http: &reqwest::Client,
    node: &Node,
    admin_token: &str,
) -> anyhow::Result<Value> {
    Ok(http
        .get(node.url("/status"))
        .bearer_auth(admin_token)
        .send()
        .await?
        .json()
        .await?)
}

/// Waits until `/status` satisfies `pred`.
pub async fn wait_status(
    node: &Node,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> anyhow::Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let s = status(node).await?;
        if pred(&s) {
            return Ok(s);
        }
        if Instant::now() > deadline {
            bail!("status never matched: {s}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A syntactically valid SDP offer with one send-only VP8 video stream, for clients that
/// never actually connect.
pub fn static_offer() -> String {
    let fp: Vec<String> = (0..32).map(|i| format!("{:02X}", i * 7 % 256)).collect();
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=msid-semantic: WMS s",
        "m=video 9 UDP/TLS/RTP/SAVPF 96",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=ice-ufrag:abcd",
        "a=ice-pwd:abcdefghijklmnopqrstuvwx",
        &format!("a=fingerprint:sha-256 {}", fp.join(":")),
        "a=setup:actpass",
        "a=mid:0",
        "a=sendonly",
        "a=msid:s v0",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=ssrc:1111 cname:x",
        "",
    ]
    .join("\r\n")
}

/// A WHIP or WHEP exchange in the page: `setup` adds transceivers to `pc`, the offer goes to
/// `path` with `token`, and the connection and `Location` are kept as `window[name]` and
/// `window[name + "Location"]`. Returns "ok" or the refusal.
pub fn http_signalled(name: &str, path: &str, token: &str, setup: &str) -> String {
    format!(
        r#"return (async () => {{
  const pc = new RTCPeerConnection();
  {setup}
  await pc.setLocalDescription(await pc.createOffer());
  const r = await fetch('{path}', {{ method: 'POST', headers: {{ 'Content-Type': 'application/sdp', 'Authorization': 'Bearer {token}' }}, body: pc.localDescription.sdp }});
  if (r.status !== 201) return 'status ' + r.status + ': ' + await r.text();
  window.{name}Location = r.headers.get('Location');
  await pc.setRemoteDescription({{ type: 'answer', sdp: await r.text() }});
  window.{name} = pc;
  return 'ok';
}})()"#
    )
}

/// Page script: publish the fake camera and microphone on `pc`.
pub const PUBLISH_CAMERA: &str = "const stream = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 360 } }); \
    for (const t of stream.getTracks()) pc.addTransceiver(t, { direction: 'sendonly', streams: [stream] });";
/// Page script: receive one video and one audio track on `pc`.
pub const RECEIVE_AUDIO_VIDEO: &str = "pc.addTransceiver('video', { direction: 'recvonly' }); pc.addTransceiver('audio', { direction: 'recvonly' });";

impl Browser {
    /// A new browser that opens the web client on `node` and joins `room` as `name` with a
    /// dev token; `publish` says whether it sends its fake camera and microphone.
    pub async fn join(node: &Node, room: &str, name: &str, publish: bool) -> anyhow::Result<Self> {
        let b = Self::start().await?;
        let token = dev_token(room, name);
        let publish = if publish { "" } else { "&publish=0" };
        b.goto(&node.url(&format!(
            "/?room={room}&name={name}&autojoin=1{publish}&token={token}"
        )))
        .await?;
        Ok(b)
    }

    /// A new browser that publishes its fake camera and microphone to `room` on `node` over
    /// WHIP (the connection is `window.whip`).
    pub async fn whip(node: &Node, room: &str) -> anyhow::Result<Self> {
        Self::http_signalled(node, "whip", room, PUBLISH_CAMERA).await
    }

    /// A new browser that plays `room` on `node` over WHEP (the connection is `window.whep`).
    pub async fn whep(node: &Node, room: &str) -> anyhow::Result<Self> {
        Self::http_signalled(node, "whep", room, RECEIVE_AUDIO_VIDEO).await
    }

    async fn http_signalled(
        node: &Node,
        kind: &str,
        room: &str,
        setup: &str,
    ) -> anyhow::Result<Self> {
        let b = Self::start().await?;
        b.goto(&node.url("/healthz")).await?;
        let script = http_signalled(
            kind,
            &format!("/{kind}/{room}"),
            &dev_token(room, kind),
            setup,
        );
        let answer = b.js(&script).await?;
        anyhow::ensure!(answer == "ok", "{kind} to {room}: {answer}");
        Ok(b)
    }
}

/// The value of sample `name` (with its labels, as written) in a node's `/metrics`.
pub async fn metric(http: &reqwest::Client, node: &Node, name: &str) -> anyhow::Result<f64> {
    let text = http.get(node.url("/metrics")).send().await?.text().await?;
    sample(&text, name).with_context(|| format!("{name} not in /metrics"))
}

/// The value of sample `name` (with its labels, as written) in Prometheus text.
pub fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The `p` quantile of sorted values (nearest rank); NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Runs `promtool check metrics` on `text`; returns its verdict.
pub fn promtool(text: &str) -> anyhow::Result<(bool, String)> {
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .map(|mut s| std::io::Write::write_all(&mut s, text.as_bytes()));
    let out = child.wait_with_output()?;
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    Ok((out.status.success(), said))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A measurement that fails once passes on its second attempt; one that fails twice
    /// fails, naming both failures.
    #[tokio::test]
    async fn a_measurement_gets_one_more_attempt_and_no_more() {
        let tries = std::cell::Cell::new(0);
        let once = measured("flaky", || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move {
                anyhow::ensure!(n > 1, "try {n}");
                Ok(())
            }
        })
        .await;
        assert!(once.is_ok());
        assert_eq!(tries.get(), 2);
        tries.set(0);
        let always = measured("broken", || {
            tries.set(tries.get() + 1);
            let n = tries.get();
            async move { anyhow::bail!("try {n}") }
        })
        .await;
        let msg = format!("{:#}", always.expect_err("failed twice"));
        assert!(msg.contains("try 2") && msg.contains("try 1"), "{msg}");
        assert_eq!(tries.get(), 2);
    }
}
