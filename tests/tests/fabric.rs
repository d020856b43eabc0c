//! The local fabric, started as the README says (`operator local`): a Meeting file dropped in
//! its folder is placed on nodes in two regions, two browsers join through the join page (one
//! per region) and each decodes the other's video across the QUIC cascade; Ctrl-C stops every
//! media node.

use moim_e2e::fabric::{Fabric, join_meeting, join_through_page, output};
use moim_e2e::{Browser, wait_decoding};
use std::process::{Command, Stdio};
use std::time::Duration;

const MEETING: &str = "\
apiVersion: media.moim.dev/v1alpha1
kind: Meeting
metadata:
  name: sync
spec:
  title: Two-region sync
  participants:
    perRegion: {seoul: 2, frankfurt: 2}
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_file_is_placed_and_two_regions_meet_across_the_cascade() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let fabric = Fabric::start("fabric", &[])?;
    let result = async {
        let placed = fabric.apply("sync.yaml", MEETING, "default/sync").await?;
        assert!(
            placed.contains("seoul-1 (seoul)") && placed.contains("frankfurt-1 (frankfurt)"),
            "{placed}"
        );
        let page = format!("http://{}/", fabric.listen);
        let ana = join_through_page(&page, "seoul", "ana").await?;
        let bo = join_through_page(&page, "frankfurt", "bo").await?;
        // Each landed on its own region's node.
        let port = "return location.port;";
        assert_eq!(ana.js(port).await?, fabric.port_base.to_string());
        assert_eq!(bo.js(port).await?, (fabric.port_base + 10).to_string());
        wait_decoding(&ana, "moim.sub", 1, Duration::from_secs(40)).await?;
        wait_decoding(&bo, "moim.sub", 1, Duration::from_secs(40)).await?;
        ana.close().await;
        bo.close().await;
        anyhow::Ok(())
    }
    .await;
    // Ctrl-C: every media node stops, then the fabric.
    let (clean, text) = fabric.interrupt();
    result.map_err(|e| e.context(format!("fabric output:\n{text}")))?;
    assert!(clean, "the fabric exits on Ctrl-C:\n{text}");
    for node in ["seoul-1", "frankfurt-1", "virginia-1"] {
        assert!(text.contains(&format!("node {node} stopped")), "{text}");
    }
    Ok(())
}

/// A coturn TURN server on loopback that takes TURN REST credentials made with `secret`.
struct Coturn {
    child: std::process::Child,
    port: u16,
}

impl Coturn {
    fn start(dir: &std::path::Path, secret: &str) -> anyhow::Result<Self> {
        let port = moim_e2e::free_udp_port();
        let relay_ports = 40_000 + (std::process::id() % 500) as u16 * 40;
        let child = Command::new("turnserver")
            .args(["-n", "--no-cli", "--no-tls", "--no-dtls", "--fingerprint"])
            .args(["--listening-ip", "127.0.0.1", "--relay-ip", "127.0.0.1"])
            .args(["--listening-port", &port.to_string()])
            .args(["--min-port", &relay_ports.to_string()])
            .args(["--max-port", &(relay_ports + 39).to_string()])
            .args(["--use-auth-secret", "--static-auth-secret", secret])
            .args(["--realm", "moim.test"])
            // The media nodes of this test are on loopback; everything private stays denied.
            .arg("--allow-loopback-peers")
            .args(["--denied-peer-ip", "10.0.0.0-10.255.255.255"])
            .args(["--denied-peer-ip", "172.16.0.0-172.31.255.255"])
            .args(["--denied-peer-ip", "192.168.0.0-192.168.255.255"])
            .arg(format!("--userdb={}", dir.join("turndb").display()))
            .arg(format!("--pidfile={}", dir.join("turn.pid").display()))
            // `--simple-log`: the file is `turn.log` itself, not `turn_<date>.log` beside it.
            .args([
                "--log-file",
                &dir.join("turn.log").display().to_string(),
                "--simple-log",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("starting turnserver (Debian's coturn): {e}"))?;
        Ok(Self { child, port })
    }

    /// Stops coturn (SIGTERM, so that its log is written out, then SIGKILL after 2 s) and
    /// returns the last `lines` of its log.
    fn stop(mut self, dir: &std::path::Path, lines: usize) -> String {
        moim_e2e::signal_and_wait(&mut self.child, "TERM", Duration::from_secs(2));
        drop(self);
        let log = std::fs::read_to_string(dir.join("turn.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Page script: whether `pc`'s media goes through a TURN relay (the selected candidate pair's
/// local candidate is a relay candidate).
const VIA_TURN: &str = "
    const stats = await PC.getStats();
    let relay = false;
    stats.forEach((r) => {
      if (r.type === 'candidate-pair' && r.state === 'succeeded' && r.nominated) {
        const local = stats.get(r.localCandidateId);
        if (local && local.candidateType === 'relay') relay = true;
      }
    });
    return relay;";

/// Page script: each connection's state and the candidate types of its pairs, and the ICE
/// restarts so far (what a failure shows of the page).
const PAGE_STATE: &str = "
    const out = { restarts: moim.restartLog || [] };
    for (const [name, pc] of [['pub', moim.pub], ['sub', moim.sub]]) {
      if (!pc) { out[name] = null; continue; }
      const pairs = [];
      (await pc.getStats()).forEach((r) => {
        if (r.type === 'local-candidate') pairs.push('local ' + r.candidateType + ' ' + r.protocol);
        if (r.type === 'candidate-pair') pairs.push('pair ' + r.state + (r.nominated ? ' nominated' : ''));
      });
      out[name] = { ice: pc.iceConnectionState, gathering: pc.iceGatheringState, state: pc.connectionState, pairs };
    }
    return JSON.stringify(out);";

/// A participant whose browser may only use TURN (`iceTransportPolicy: relay`) still meets:
/// the join API hands out TURN REST credentials that a real coturn accepts, and the media of
/// both directions goes through it.
///
/// Once more after a failure (`measured`, the first failure printed whole): CI on 2026-12-02
/// saw the relay-only page decode nothing in 40 s, once, in a run whose coturn log was lost;
/// it passed in every run on the machine before and since. The failure now shows coturn's log
/// and each page's ICE state, so a second sighting says where it stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_participant_that_can_only_use_turn_gets_media_through_coturn() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    moim_e2e::measured(
        "the TURN-only meeting",
        a_participant_that_can_only_use_turn_gets_media_through_coturn_once,
    )
    .await
}

async fn a_participant_that_can_only_use_turn_gets_media_through_coturn_once() -> anyhow::Result<()>
{
    let secret = "turn-shared-secret";
    let turn_dir = std::env::temp_dir().join(format!("moim-coturn-{}", std::process::id()));
    std::fs::create_dir_all(&turn_dir)?;
    let turn = Coturn::start(&turn_dir, secret)?;
    let turn_url = format!("turn:127.0.0.1:{}?transport=udp", turn.port);
    let fabric = Fabric::start(
        "turn",
        &[
            "--regions",
            "seoul,frankfurt",
            "--api-key",
            "key",
            "--turn-url",
            &turn_url,
            "--turn-secret",
            secret,
        ],
    )?;
    let listen = fabric.listen.clone();
    let result = async {
        fabric.apply("sync.yaml", MEETING, "default/sync").await?;
        let http = reqwest::Client::new();
        let join = |identity: &'static str, region: &'static str| {
            let (http, listen) = (http.clone(), listen.clone());
            async move {
                let r = http
                    .post(format!("http://{listen}/v1/join"))
                    .bearer_auth("key")
                    .json(&serde_json::json!({"meeting": "sync", "identity": identity, "region": region}))
                    .send()
                    .await?;
                anyhow::ensure!(r.status().is_success(), "join: {}", r.text().await?);
                anyhow::Ok(r.json::<serde_json::Value>().await?)
            }
        };
        let ana = join("ana", "seoul").await?;
        let ice = &ana["iceServers"][0];
        assert_eq!(ice["urls"][0], format!("turn:127.0.0.1:{}?transport=udp", turn.port));
        assert!(ice["username"].as_str().is_some_and(|u| u.ends_with(":ana")), "{ana}");
        let open = |j: &serde_json::Value, name: &str, extra: &str| {
            format!(
                "{}/?room={}&name={name}&autojoin=1&token={}&ice={}{extra}",
                j["url"].as_str().unwrap_or_default(),
                j["room"].as_str().unwrap_or_default(),
                j["token"].as_str().unwrap_or_default(),
                urlencode(&j["iceServers"].to_string()),
            )
        };
        let a = Browser::start().await?;
        a.goto(&open(&ana, "ana", "&relay=1")).await?;
        let bo = join("bo", "frankfurt").await?;
        let b = Browser::start().await?;
        b.goto(&open(&bo, "bo", "")).await?;
        for (page, name) in [(&a, "ana (TURN only)"), (&b, "bo")] {
            if let Err(e) = wait_decoding(page, "moim.sub", 1, Duration::from_secs(40)).await {
                let state = page.js(PAGE_STATE).await.unwrap_or_default();
                return Err(e.context(format!("{name}'s page: {state}")));
            }
        }
        // Each connection's selected pair is a relay one (asked until it is, for 10 s: an ICE
        // restart in between has new checks in progress for a moment).
        for pc in ["moim.pub", "moim.sub"] {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while a.js(&VIA_TURN.replace("PC", pc)).await? != serde_json::Value::Bool(true) {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{pc} of the relay-only participant does not go through TURN; ICE restarts: {}",
                    a.js("return JSON.stringify(moim.restartLog || []);").await?
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        a.close().await;
        b.close().await;
        anyhow::Ok(())
    }
    .await;
    let (_, text) = fabric.interrupt();
    let turn_log = turn.stop(&turn_dir, 40);
    let _ = std::fs::remove_dir_all(&turn_dir);
    result.map_err(|e| {
        e.context(format!(
            "fabric output:\n{text}\ncoturn log (tail):\n{turn_log}"
        ))
    })
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn seoul_meeting(name: &str, participants: u32) -> String {
    format!(
        "apiVersion: media.moim.dev/v1alpha1\nkind: Meeting\nmetadata:\n  name: {name}\nspec:\n  \
         title: {name}\n  participants:\n    perRegion: {{seoul: {participants}}}\n"
    )
}

/// Autoscaling end to end with real processes and real browsers: a second meeting that does
/// not fit starts a second media node, which takes it; two people meet on it; when the
/// meetings shrink the pool scales in by draining that node, and at the drain deadline its
/// participants are sent to the remaining node, where video flows again; the drained node
/// exits once empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_starts_a_node_and_a_drained_node_hands_its_people_over() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let fabric = Fabric::start(
        "autoscale",
        &[
            "--regions",
            "seoul",
            "--autoscale",
            "--capacity",
            "5",
            "--max-nodes-per-region",
            "2",
            "--headroom",
            "0",
            "--headroom-percent",
            "0",
            "--scale-down-delay",
            "5",
            "--drain-deadline",
            "10",
        ],
    )?;
    let result = async {
        // One node, and a meeting that fills it.
        fabric
            .apply("a.yaml", &seoul_meeting("a", 5), "default/a")
            .await?;
        assert!(
            !output(&fabric.log).contains("seoul-2"),
            "{}",
            output(&fabric.log)
        );
        // A second meeting does not fit: a second node starts and takes it.
        std::fs::write(fabric.dir.join("meetings/b.yaml"), seoul_meeting("b", 5))?;
        fabric
            .wait_for_line("node seoul-2 (seoul) starting", Duration::from_secs(20))
            .await?;
        fabric
            .wait_for_line(
                "meeting default/b on seoul-2 (seoul)",
                Duration::from_secs(30),
            )
            .await?;

        let page = format!("http://{}/", fabric.listen);
        let ana = join_meeting(&page, Some("default/b"), "seoul", "ana").await?;
        let bo = join_meeting(&page, Some("default/b"), "seoul", "bo").await?;
        let second = (fabric.port_base + 10).to_string();
        assert_eq!(ana.js("return location.port;").await?, second);
        wait_decoding(&bo, "moim.sub", 1, Duration::from_secs(40)).await?;
        wait_decoding(&ana, "moim.sub", 1, Duration::from_secs(40)).await?;

        // Both meetings shrink to two: one node holds all. The newer of two equally loaded
        // nodes drains; at the deadline its people are moved, never cut.
        std::fs::write(fabric.dir.join("meetings/a.yaml"), seoul_meeting("a", 2))?;
        std::fs::write(fabric.dir.join("meetings/b.yaml"), seoul_meeting("b", 2))?;
        fabric
            .wait_for_line("draining seoul-2", Duration::from_secs(30))
            .await?;
        fabric
            .wait_for_line("moving people off seoul-2", Duration::from_secs(30))
            .await?;
        let first = format!("http://127.0.0.1:{}", fabric.port_base);
        for b in [&ana, &bo] {
            b.wait_for(
                &format!("return moim.moves === 1 && moim.node === '{first}';"),
                Duration::from_secs(20),
            )
            .await?;
        }
        // Video flows again on the node they were moved to.
        wait_decoding(&bo, "moim.sub", 1, Duration::from_secs(40)).await?;
        wait_decoding(&ana, "moim.sub", 1, Duration::from_secs(40)).await?;
        let text = fabric
            .wait_for_line("node seoul-2 removed", Duration::from_secs(30))
            .await?;
        assert!(
            text.contains("meeting default/b on seoul-1 (seoul)"),
            "{text}"
        );
        ana.close().await;
        bo.close().await;
        anyhow::Ok(())
    }
    .await;
    let (clean, text) = fabric.interrupt();
    result.map_err(|e| e.context(format!("fabric output:\n{text}")))?;
    assert!(clean, "the fabric exits on Ctrl-C:\n{text}");
    Ok(())
}
