//! `operator local` as a test drives it: started as the README says, Meeting files dropped in
//! its folder, browsers joining through its join page, its media nodes killed.

use crate::{Browser, binary};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The fabric's output so far (stdout and stderr go to one file).
pub fn output(log: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// `operator local` running in `dir`, with Meeting files in `dir/meetings`.
pub struct Fabric {
    child: std::process::Child,
    /// Its folder (Meeting files in `meetings/`).
    pub dir: std::path::PathBuf,
    /// What it printed.
    pub log: std::path::PathBuf,
    /// The join page and API address.
    pub listen: String,
    /// Node i serves HTTP on `port_base + 10 i`.
    pub port_base: u16,
}

impl Fabric {
    /// Starts `operator local` with `extra` flags, in a fresh folder named after `name`.
    pub fn start(name: &str, extra: &[&str]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("moim-{name}-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("meetings"))?;
        let log = dir.join("fabric.log");
        let listen = format!("127.0.0.1:{}", crate::free_tcp_port());
        // In 20,000-31,999, below Linux's ephemeral range (32,768 and up: a node's port taken
        // by some client socket made a node fail to start), apart per test process and per
        // fabric in it (a benchmark starts dozens).
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port_base = 20_000 + ((std::process::id() % 300) * 40 + n * 20) % 12_000;
        let port_base = u16::try_from(port_base)?;
        let child = Command::new(binary("operator")?)
            .args(["local", "--meetings"])
            .arg(dir.join("meetings"))
            .args(["--listen", &listen, "--port-base", &port_base.to_string()])
            .args(extra)
            .arg("--media-node")
            .arg(binary("media-node")?)
            .stdout(Stdio::from(std::fs::File::create(&log)?))
            .stderr(Stdio::from(std::fs::File::create(dir.join("fabric.err"))?))
            .spawn()?;
        Ok(Self {
            child,
            dir,
            log,
            listen,
            port_base,
        })
    }

    /// `kubectl apply`, the local way: a file in the folder; waits until it is placed.
    pub async fn apply(&self, file: &str, yaml: &str, key: &str) -> anyhow::Result<String> {
        std::fs::write(self.dir.join("meetings").join(file), yaml)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = output(&self.log);
            if text.contains(&format!("meeting {key} on ")) {
                return Ok(text);
            }
            anyhow::ensure!(Instant::now() < deadline, "not placed:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the fabric has printed `line`; returns everything it printed.
    pub async fn wait_for_line(&self, line: &str, timeout: Duration) -> anyhow::Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = output(&self.log);
            if text.contains(line) {
                return Ok(text);
            }
            anyhow::ensure!(Instant::now() < deadline, "no {line:?} in:\n{text}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Ctrl-C; returns whether it exited cleanly in time, and everything it printed.
    pub fn interrupt(mut self) -> (bool, String) {
        let clean = match crate::signal_and_wait(&mut self.child, "INT", Duration::from_secs(15)) {
            Some(status) => status.success(),
            None => {
                let _ = self.child.kill();
                false
            }
        };
        let text = output(&self.log);
        // MOIM_KEEP_TEST_DIRS=1 keeps the folder (the nodes' logs are in fabric.err).
        if std::env::var_os("MOIM_KEEP_TEST_DIRS").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
        (clean, text)
    }
}

impl Drop for Fabric {
    /// A test that fails before `interrupt` still stops the fabric (and with it every media
    /// node): nothing is left running to load the machine for the next test.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            crate::signal_and_wait(&mut self.child, "TERM", Duration::from_secs(10));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Joins `meeting` through the fabric's join page, as a person would: pick the meeting and the
/// region, type a name, press Join; the page sends the browser to that region's node.
pub async fn join_through_page(page: &str, region: &str, name: &str) -> anyhow::Result<Browser> {
    join_meeting(page, None, region, name).await
}

/// [`join_through_page`], choosing `meeting` (`namespace/name`) when given.
pub async fn join_meeting(
    page: &str,
    meeting: Option<&str>,
    region: &str,
    name: &str,
) -> anyhow::Result<Browser> {
    let b = Browser::start().await?;
    b.goto(page).await?;
    b.wait_for(
        "return document.getElementById('meeting').options.length > 0;",
        Duration::from_secs(10),
    )
    .await?;
    if let Some(m) = meeting {
        let (ns, name) = m.split_once('/').unwrap_or(("default", m));
        b.js(&format!(
            "document.getElementById('meeting').value = JSON.stringify(['{ns}', '{name}']); return true;"
        ))
        .await?;
    }
    b.js(&format!(
        "document.getElementById('region').value = '{region}';
         document.getElementById('name').value = '{name}';
         document.getElementById('join').requestSubmit();
         return true;"
    ))
    .await?;
    b.wait_for(
        "return typeof moim !== 'undefined' && !!moim.ws;",
        Duration::from_secs(10),
    )
    .await?;
    Ok(b)
}

impl Fabric {
    /// The pid of media node `name` (from the line the fabric printed when it started it).
    pub fn node_pid(&self, name: &str) -> anyhow::Result<u32> {
        let text = output(&self.log);
        let line = text
            .lines()
            .rev()
            .find(|l| l.starts_with(&format!("node {name} (")) && l.contains(" starting: "))
            .ok_or_else(|| anyhow::anyhow!("node {name} was never started:\n{text}"))?;
        let pid = line
            .split("(pid ")
            .nth(1)
            .and_then(|r| r.split([',', ')']).next())
            .and_then(|p| p.trim().parse().ok())
            .ok_or_else(|| anyhow::anyhow!("no pid in {line:?}"))?;
        Ok(pid)
    }

    /// `kill -9` media node `name`, as a machine failing would; returns when it happened
    /// (milliseconds since the Unix epoch).
    pub fn kill_node(&self, name: &str) -> anyhow::Result<f64> {
        self.signal_node(name, "KILL")
    }

    /// Sends `signal` (`KILL`, `STOP`, `CONT`) to media node `name`; returns when (milliseconds
    /// since the Unix epoch).
    pub fn signal_node(&self, name: &str, signal: &str) -> anyhow::Result<f64> {
        let pid = self.node_pid(name)?;
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} ({name}) failed");
        Ok(epoch_ms())
    }
}

/// Milliseconds since the Unix epoch (what a page's `performance.timeOrigin + now()` is).
pub fn epoch_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Page script: from now on, note when the page first decodes a frame of a video stream it
/// did not have before (a new SSRC on its current subscribe connection): `window.__fresh.at`,
/// milliseconds since the Unix epoch. After a failure, every stream a participant gets again
/// is a new one (new connection, or a new track from the node that took over).
pub const WATCH_FRESH_VIDEO: &str = "
    const known = new Set();
    if (moim.sub) (await moim.sub.getStats()).forEach((s) => {
      if (s.type === 'inbound-rtp' && s.kind === 'video') known.add(s.ssrc);
    });
    if (window.__fresh) clearInterval(window.__fresh.timer);
    window.__fresh = { at: null, known };
    window.__fresh.timer = setInterval(async () => {
      if (window.__fresh.at || !moim.sub) return;
      const r = await moim.sub.getStats();
      r.forEach((s) => {
        if (s.type === 'inbound-rtp' && s.kind === 'video' && !known.has(s.ssrc) && (s.framesDecoded || 0) > 0 && !window.__fresh.at) {
          window.__fresh.at = performance.timeOrigin + performance.now();
        }
      });
    }, 50);
    return true;";

/// Starts [`WATCH_FRESH_VIDEO`] in `b`.
pub async fn watch_fresh_video(b: &Browser) -> anyhow::Result<()> {
    b.js(&format!("return (async () => {{ {WATCH_FRESH_VIDEO} }})()"))
        .await?;
    Ok(())
}

/// Waits until `b` decodes fresh video (see [`WATCH_FRESH_VIDEO`]); returns when it first did
/// (milliseconds since the Unix epoch).
pub async fn fresh_video_at(b: &Browser, timeout: Duration) -> anyhow::Result<f64> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(at) = b
            .js("return window.__fresh && window.__fresh.at;")
            .await?
            .as_f64()
        {
            return Ok(at);
        }
        if Instant::now() > deadline {
            let state = b
                .js("const v = []; if (moim.sub) (await moim.sub.getStats()).forEach((s) => { if (s.type === 'inbound-rtp' && s.kind === 'video') v.push([s.ssrc, s.framesDecoded || 0, s.packetsReceived || 0]); });
                     return JSON.stringify({status: document.getElementById('status').textContent, recoveries: moim.recoveries, errors: moim.errors, node: moim.node, ice: moim.iceRestarts, known: [...window.__fresh.known], video: v, tracks: [...moim.tracks.keys()]});")
                .await?;
            anyhow::bail!("no fresh video within {timeout:?}: {state}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
