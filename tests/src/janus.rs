//! Janus, the peer `moim-bench sfu --vs janus` runs beside moim: Debian's `janus` with only its
//! VideoRoom plugin and HTTP transport, started from its own configuration in a temporary
//! folder, its API on 127.0.0.1 and its ICE on one local address (see [`media_ip`]), and driven
//! through its HTTP API (a session, one plugin handle per publisher or subscriber, events by
//! long poll).

use crate::loadgen::{self, Client, LayerSpec};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Where Debian installs Janus's plugins.
const LIB: &str = "/usr/lib/x86_64-linux-gnu/janus";
/// The VideoRoom room the benchmark uses (configured statically).
pub const ROOM: u64 = 1234;

/// A running Janus; killed when dropped.
pub struct Janus {
    child: Child,
    dir: PathBuf,
    /// The HTTP API's base URL (`http://127.0.0.1:PORT/janus`).
    pub api: String,
    /// The one address Janus gathers ICE candidates on (its clients bind there too).
    pub media_ip: IpAddr,
}

impl Drop for Janus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Janus's configuration: VideoRoom and HTTP only, ICE on `media_ip` only, no session timeout (the
/// benchmark's sessions live as long as it does), warnings-only logging, and `event_loops`
/// static ICE loops (Janus's recommended setting at scale; 0 keeps its default of a thread per
/// handle).
fn core_config(dir: &Path, media_ip: IpAddr, event_loops: usize) -> String {
    let loops = if event_loops > 0 {
        format!("  event_loops = {event_loops}\n")
    } else {
        String::new()
    };
    format!(
        r#"general: {{
  configs_folder = "{dir}"
  plugins_folder = "{dir}/plugins"
  transports_folder = "{dir}/transports"
  events_folder = "{dir}/none"
  loggers_folder = "{dir}/none"
  debug_level = 3
  session_timeout = 0
{loops}}}
nat: {{
  nice_debug = false
  ice_enforce_list = "{media_ip}"
}}
"#,
        dir = dir.display()
    )
}

fn http_config(port: u16) -> String {
    format!(
        r#"general: {{
  json = "plain"
  base_path = "/janus"
  http = true
  port = {port}
  ip = "127.0.0.1"
  https = false
}}
admin: {{
  admin_http = false
}}
"#
    )
}

/// One room for one publisher, VP8 and Opus, no bitrate cap and no periodic keyframe requests
/// (the same as the room moim serves in the benchmark).
fn videoroom_config() -> String {
    format!(
        r#"general: {{
}}
room-{ROOM}: {{
  description = "moim-bench"
  publishers = 16
  bitrate = 0
  fir_freq = 0
  audiocodec = "opus"
  videocodec = "vp8"
}}
"#
    )
}

/// A local IPv4 address that is not loopback, for Janus's media.
///
/// Janus never gathers ICE candidates on a loopback interface (whatever `ice_enforce_list`
/// says), so its media uses the machine's own address instead, and so do its clients. Packets
/// between two local addresses go through the kernel's loopback path all the same: nothing
/// leaves the machine, and the cost per packet is the same as moim's on 127.0.0.1.
fn media_ip() -> anyhow::Result<IpAddr> {
    if let Ok(ip) = std::env::var("MOIM_JANUS_IP") {
        return ip.parse().context("MOIM_JANUS_IP");
    }
    let out = Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .context("running `ip` (install iproute2)")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .context("no non-loopback IPv4 address for Janus's media (set MOIM_JANUS_IP)")
}

impl Janus {
    /// Starts Janus pinned to `cpu` (if given), with `event_loops` as in [`core_config`], and
    /// waits until its HTTP API answers.
    pub async fn start(cpu: Option<usize>, event_loops: usize) -> anyhow::Result<Self> {
        let port = crate::free_tcp_port();
        let dir = std::env::temp_dir().join(format!("moim-janus-{}-{port}", std::process::id()));
        for sub in ["plugins", "transports", "none"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        // Janus loads every library in its folders: link in only the two it needs.
        for (sub, lib) in [
            ("plugins", "libjanus_videoroom.so"),
            ("transports", "libjanus_http.so"),
        ] {
            let from = Path::new(LIB).join(sub).join(lib);
            if !from.exists() {
                bail!("{} not found: install Debian's janus", from.display());
            }
            let _ = std::fs::remove_file(dir.join(sub).join(lib));
            std::os::unix::fs::symlink(&from, dir.join(sub).join(lib))?;
        }
        let media_ip = media_ip()?;
        std::fs::write(
            dir.join("janus.jcfg"),
            core_config(&dir, media_ip, event_loops),
        )?;
        std::fs::write(dir.join("janus.transport.http.jcfg"), http_config(port))?;
        std::fs::write(dir.join("janus.plugin.videoroom.jcfg"), videoroom_config())?;
        let log = std::fs::File::create(dir.join("janus.log"))?;
        let child = crate::pinned_command("janus".as_ref(), cpu)
            .arg("-C")
            .arg(dir.join("janus.jcfg"))
            .arg("-F")
            .arg(&dir)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .context("starting janus (install Debian's janus)")?;
        let janus = Self {
            child,
            dir,
            api: format!("http://127.0.0.1:{port}/janus"),
            media_ip,
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let info = http.get(format!("{}/info", janus.api)).send().await;
            if info.is_ok_and(|r| r.status().is_success()) {
                return Ok(janus);
            }
            if Instant::now() > deadline {
                bail!(
                    "janus did not answer on {} within 15 s; its log: {}",
                    janus.api,
                    janus.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        crate::file_tail(&self.dir.join("janus.log"), 20)
    }
}

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// A Janus API session: requests, and the events its long poll delivers to whoever waits for
/// that transaction.
pub struct Session {
    http: reqwest::Client,
    url: String,
    pending: Pending,
    media_ip: IpAddr,
    next: AtomicU64,
    poller: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.poller.abort();
    }
}

/// The error Janus or its plugin reported in `v`, if any.
fn janus_error(v: &Value) -> Option<String> {
    if v["janus"] == "error" {
        return Some(v["error"].to_string());
    }
    let data = &v["plugindata"]["data"];
    data.get("error")
        .map(|e| format!("{} ({})", e, data["error_code"]))
}

/// Posts a Janus request that creates something (a session, a handle); returns its id.
async fn post_for_id(
    http: &reqwest::Client,
    url: &str,
    mut body: Value,
    what: &str,
) -> anyhow::Result<u64> {
    body["transaction"] = json!(what);
    let v: Value = http.post(url).json(&body).send().await?.json().await?;
    if let Some(e) = janus_error(&v) {
        bail!("janus {what}: {e}");
    }
    v["data"]["id"]
        .as_u64()
        .with_context(|| format!("janus {what}: no id"))
}

impl Session {
    /// Creates a session on `janus` and starts its long poll.
    pub async fn create(janus: &Janus) -> anyhow::Result<Self> {
        let http = reqwest::Client::new();
        let id = post_for_id(&http, &janus.api, json!({"janus": "create"}), "create").await?;
        let url = format!("{}/{id}", janus.api);
        let pending: Pending = Arc::default();
        let poller = tokio::spawn(poll(http.clone(), url.clone(), pending.clone()));
        Ok(Self {
            http,
            url,
            pending,
            media_ip: janus.media_ip,
            next: AtomicU64::new(1),
            poller,
        })
    }

    fn transaction(&self) -> String {
        format!("t{}", self.next.fetch_add(1, Ordering::Relaxed))
    }

    /// Attaches a VideoRoom handle.
    async fn attach(&self) -> anyhow::Result<u64> {
        post_for_id(
            &self.http,
            &self.url,
            json!({"janus": "attach", "plugin": "janus.plugin.videoroom"}),
            "attach",
        )
        .await
    }

    /// Sends a plugin message on `handle`; returns the plugin's reply, waiting for the
    /// asynchronous event when Janus first only acknowledges it.
    async fn message(
        &self,
        handle: u64,
        body: Value,
        jsep: Option<Value>,
    ) -> anyhow::Result<Value> {
        let tx = self.transaction();
        let (send, recv) = oneshot::channel();
        if let Ok(mut p) = self.pending.lock() {
            p.insert(tx.clone(), send);
        }
        let mut msg = json!({"janus": "message", "transaction": tx, "body": body});
        if let Some(j) = jsep {
            msg["jsep"] = j;
        }
        let v: Value = self
            .http
            .post(format!("{}/{handle}", self.url))
            .json(&msg)
            .send()
            .await?
            .json()
            .await?;
        let reply = if v["janus"] == "ack" {
            tokio::time::timeout(Duration::from_secs(20), recv)
                .await
                .context("no janus event within 20 s")?
                .context("janus long poll ended")?
        } else {
            if let Ok(mut p) = self.pending.lock() {
                p.remove(&tx);
            }
            v
        };
        if let Some(e) = janus_error(&reply) {
            bail!("janus {}: {e}", body["request"]);
        }
        Ok(reply)
    }

    /// Publishes the load generator's synthetic simulcast stream in [`ROOM`]; returns the
    /// publisher and its feed id.
    pub async fn publish(&self, layers: &[LayerSpec]) -> anyhow::Result<(Client, u64)> {
        let handle = self.attach().await?;
        let mut feed = None;
        let slot = &mut feed;
        let client = loadgen::publish_with(self.media_ip, layers, |offer| async move {
            let reply = self
                .message(
                    handle,
                    json!({"request": "joinandconfigure", "room": ROOM, "ptype": "publisher",
                           "display": "publisher", "audio": true, "video": true}),
                    // The layers are offered low to high; Janus assumes high to low unless told.
                    Some(json!({"type": "offer", "sdp": offer, "trickle": false,
                                "rid_order": "lmh"})),
                )
                .await?;
            *slot = reply["plugindata"]["data"]["id"].as_u64();
            let answer = reply["jsep"]["sdp"]
                .as_str()
                .context("janus publish: no answer")?;
            Ok((answer.to_owned(), None))
        })
        .await?;
        Ok((client, feed.context("janus publish: no feed id")?))
    }

    /// Subscribes to `feed`'s audio and video (Janus forwards the top simulcast layer unless
    /// told otherwise, as moim does for a subscriber with no bandwidth limit).
    pub async fn subscribe(&self, feed: u64, full: bool) -> anyhow::Result<Client> {
        self.subscribe_many(&[feed], None, full).await
    }

    /// Subscribes to the audio and video of every feed in `feeds` on one connection (VideoRoom's
    /// multistream subscription), at simulcast layer `substream` (0 = the lowest) if given.
    pub async fn subscribe_many(
        &self,
        feeds: &[u64],
        substream: Option<u8>,
        full: bool,
    ) -> anyhow::Result<Client> {
        let handle = self.attach().await?;
        let streams: Vec<Value> = feeds
            .iter()
            .map(|&feed| match substream {
                Some(sub) => json!({"feed": feed, "substream": sub}),
                None => json!({"feed": feed}),
            })
            .collect();
        let reply = self
            .message(
                handle,
                json!({"request": "join", "room": ROOM, "ptype": "subscriber",
                       "streams": streams}),
                None,
            )
            .await?;
        let offer = reply["jsep"]["sdp"]
            .as_str()
            .context("janus subscribe: no offer")?;
        let (client, answer) =
            loadgen::subscribe_to_offer(self.media_ip, offer.to_owned(), full).await?;
        self.message(
            handle,
            json!({"request": "start", "room": ROOM}),
            Some(json!({"type": "answer", "sdp": answer, "trickle": false})),
        )
        .await?;
        Ok(client)
    }
}

/// The session's long poll: hands each event to the request waiting for its transaction.
async fn poll(http: reqwest::Client, url: String, pending: Pending) {
    loop {
        let events = match http.get(format!("{url}?maxev=20")).send().await {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let list = match events {
            Value::Array(a) => a,
            other => vec![other],
        };
        for ev in list {
            let Some(tx) = ev["transaction"].as_str() else {
                continue;
            };
            let waiter = pending.lock().ok().and_then(|mut p| p.remove(tx));
            if let Some(w) = waiter {
                let _ = w.send(ev);
            }
        }
    }
}
