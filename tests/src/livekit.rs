//! LiveKit, the peer `moim-bench sfu --vs livekit` runs beside moim: `livekit-server` built from
//! the Go module proxy (`tests/livekit/build.sh`, pinned by `tests/livekit/go.mod`, cached
//! outside the repository), started from its own configuration in a temporary folder (API on
//! 127.0.0.1, ICE on 127.0.0.1 through one UDP port, no Redis, no TURN, warnings-only logging),
//! and driven by moim's own load generator through LiveKit's signalling: protobuf
//! `SignalRequest`/`SignalResponse` over a WebSocket (`/rtc`, protocol 16, two peer
//! connections: the client offers on its publisher connection, the server offers on the
//! subscriber one), with candidates trickled after the descriptions.
//!
//! The load is the one moim and Janus get: the same synthetic 720p simulcast VP8 (rids q, h, f)
//! and Opus from [`crate::loadgen`], counted the same way at the subscribers.

use crate::loadgen::{Client, LayerSpec};
use crate::signalled::{Incoming, Protocol, Session};
use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use livekit_protocol as lk;
use lk::signal_request::Message as Request;
use serde_json::json;
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The API key and secret of the benchmark's LiveKit (LiveKit wants secrets of 32 bytes or
/// more).
const API_KEY: &str = "moimbench";
const API_SECRET: &str = "moim-bench-livekit-secret-0123456789";
/// The signalling protocol version the driver speaks (that of LiveKit's current client SDKs).
const PROTOCOL: u32 = 16;
/// Where LiveKit and its clients put their media.
const MEDIA_IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// The `livekit-server` binary: `MOIM_LIVEKIT_BIN`, or what `tests/livekit/build.sh` builds (at
/// once from its cache when warm).
pub fn binary() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("MOIM_LIVEKIT_BIN") {
        return Ok(PathBuf::from(p));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("livekit/build.sh");
    let out = Command::new(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed", script.display());
    }
    let path = String::from_utf8(out.stdout)?.trim().to_owned();
    Ok(PathBuf::from(path))
}

/// A running LiveKit; killed when dropped.
pub struct LiveKit {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Drop for LiveKit {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// LiveKit's configuration for the benchmark. Congestion control stays on (LiveKit's default,
/// as moim's is); nothing else is tuned.
fn config(port: u16, udp_port: u16) -> String {
    format!(
        r#"port: {port}
bind_addresses: ["127.0.0.1"]
log_level: warn
rtc:
  udp_port: {udp_port}
  tcp_port: 0
  use_external_ip: false
  node_ip: 127.0.0.1
  enable_loopback_candidate: true
  ips:
    includes: ["127.0.0.1/32"]
keys:
  {API_KEY}: {API_SECRET}
"#
    )
}

impl LiveKit {
    /// Starts LiveKit pinned to `cpu` (if given) and waits until its HTTP endpoint answers.
    pub async fn start(cpu: Option<usize>) -> anyhow::Result<Self> {
        let bin = binary()?;
        let port = crate::free_tcp_port();
        let udp_port = crate::free_udp_port();
        let dir = std::env::temp_dir().join(format!("moim-livekit-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("livekit.yaml"), config(port, udp_port))?;
        let log = std::fs::File::create(dir.join("livekit.log"))?;
        let child = crate::pinned_command(bin.as_os_str(), cpu)
            .arg("--config")
            .arg(dir.join("livekit.yaml"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut lk = LiveKit { child, dir, port };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = http.get(format!("http://127.0.0.1:{port}/")).send().await
                && r.status().is_success()
            {
                return Ok(lk);
            }
            if let Ok(Some(status)) = lk.child.try_wait() {
                bail!("livekit-server exited ({status}):\n{}", lk.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "livekit-server did not answer within 20 s:\n{}",
                    lk.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        crate::file_tail(&self.dir.join("livekit.log"), 20)
    }

    fn rtc_url(&self, room: &str, identity: &str, publish: bool) -> String {
        format!(
            "ws://127.0.0.1:{}/rtc?access_token={}&auto_subscribe=1&adaptive_stream=0\
             &protocol={PROTOCOL}&sdk=rust&version=0.0.0",
            self.port,
            token(room, identity, publish, SystemTime::now()),
        )
    }

    /// Joins `room` as `identity` and publishes the load generator's simulcast video (as
    /// `layers`) and audio.
    pub async fn publish(
        &self,
        room: &str,
        identity: &str,
        layers: &[LayerSpec],
    ) -> anyhow::Result<Client> {
        let mut session =
            Session::join(Protocol::LiveKit, &self.rtc_url(room, identity, true), "").await?;
        session
            .send_livekit(Request::AddTrack(video_track(layers)))
            .await?;
        session
            .send_livekit(Request::AddTrack(audio_track()))
            .await?;
        let mut published = 0;
        while published < 2 {
            if let Incoming::TrackPublished = session.recv().await? {
                published += 1;
            }
        }
        session
            .publish(MEDIA_IP, layers)
            .await
            .context("LiveKit publisher")
    }

    /// Joins `room` as a subscriber `identity` (no publishing), which LiveKit subscribes to every
    /// track there; `full` and `tiles` as in [`Session::subscribe`].
    pub async fn subscribe(
        &self,
        room: &str,
        identity: &str,
        full: bool,
        tiles: Option<(u32, u32)>,
    ) -> anyhow::Result<Client> {
        Session::join(Protocol::LiveKit, &self.rtc_url(room, identity, false), "")
            .await?
            .subscribe(MEDIA_IP, full, tiles)
            .await
            .context("LiveKit subscriber")
    }
}

/// A LiveKit access token (an HS256 JWT) for `identity` in `room`, valid for a day from `now`.
pub fn token(room: &str, identity: &str, publish: bool, now: SystemTime) -> String {
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let claims = json!({
        "iss": API_KEY,
        "sub": identity,
        "name": identity,
        "nbf": now.saturating_sub(60),
        "exp": now + 86_400,
        "video": {
            "room": room,
            "roomJoin": true,
            "canPublish": publish,
            "canSubscribe": !publish,
            "canPublishData": false,
        },
    });
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(API_SECRET.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(signing_input.as_bytes());
    let sig = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{sig}")
}

/// The simulcast camera track, as LiveKit's web SDK announces a 720p camera: three layers
/// whose rids are the load generator's (q, h, f).
fn video_track(layers: &[LayerSpec]) -> lk::AddTrackRequest {
    let sizes = [(320, 180), (640, 360), (1280, 720)];
    let qualities = [
        lk::VideoQuality::Low,
        lk::VideoQuality::Medium,
        lk::VideoQuality::High,
    ];
    let layers = layers
        .iter()
        .zip(sizes.iter().zip(qualities))
        .map(|(l, (&(width, height), quality))| lk::VideoLayer {
            quality: quality as i32,
            width,
            height,
            bitrate: l.bitrate_bps,
            rid: l.rid.to_owned(),
            ..Default::default()
        })
        .collect::<Vec<_>>();
    lk::AddTrackRequest {
        // The load generator's track id (its SDP's msid), by which LiveKit matches the track.
        cid: "camera".into(),
        name: "camera".into(),
        r#type: lk::TrackType::Video as i32,
        width: 1280,
        height: 720,
        source: lk::TrackSource::Camera as i32,
        simulcast_codecs: vec![lk::SimulcastCodec {
            codec: "vp8".into(),
            cid: "camera".into(),
            layers: layers.clone(),
            ..Default::default()
        }],
        layers,
        ..Default::default()
    }
}

fn audio_track() -> lk::AddTrackRequest {
    lk::AddTrackRequest {
        cid: "microphone".into(),
        name: "microphone".into(),
        r#type: lk::TrackType::Audio as i32,
        source: lk::TrackSource::Microphone as i32,
        // The load generator sends plain Opus.
        disable_red: true,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_hs256_jwts_with_livekits_video_grant() {
        let t = token(
            "bench",
            "viewer-1",
            false,
            UNIX_EPOCH + Duration::from_secs(1_000),
        );
        let parts: Vec<&str> = t.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("base64"))
                .expect("json");
        assert_eq!(claims["iss"], API_KEY);
        assert_eq!(claims["sub"], "viewer-1");
        assert_eq!(claims["video"]["room"], "bench");
        assert_eq!(claims["video"]["canSubscribe"], true);
        assert_eq!(claims["video"]["canPublish"], false);
        assert_eq!(claims["exp"], 1_000 + 86_400);
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(API_SECRET.as_bytes()).expect("key");
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).expect("base64"))
            .expect("signature");
    }
}
