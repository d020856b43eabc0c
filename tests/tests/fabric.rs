//! The local fabric, started as the README says (`operator local`): a Meeting file dropped in
//! its folder is placed on nodes in two regions, two browsers join through the join page (one
//! per region) and each decodes the other's video across the QUIC cascade; Ctrl-C stops every
//! media node.

use moim_e2e::{Browser, binary, wait_decoding};
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// The fabric's output so far (stdout and stderr go to one file).
fn output(log: &std::path::Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(log) {
        let _ = f.read_to_string(&mut s);
    }
    s
}

/// Joins `meeting` through the fabric's join page, as a person would: pick the meeting and the
/// region, type a name, press Join; the page sends the browser to that region's node.
async fn join_through_page(page: &str, region: &str, name: &str) -> anyhow::Result<Browser> {
    let b = Browser::start().await?;
    b.goto(page).await?;
    b.wait_for(
        "return document.getElementById('meeting').options.length > 0;",
        Duration::from_secs(10),
    )
    .await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_meeting_file_is_placed_and_two_regions_meet_across_the_cascade() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let dir = std::env::temp_dir().join(format!("moim-fabric-{}", std::process::id()));
    let meetings = dir.join("meetings");
    std::fs::create_dir_all(&meetings)?;
    let log = dir.join("fabric.log");
    let listen = format!("127.0.0.1:{}", moim_e2e::free_tcp_port());
    let port_base = 20_000 + (std::process::id() % 4_000) as u16 * 10;
    let mut fabric = Command::new(binary("operator")?)
        .args(["local", "--meetings"])
        .arg(&meetings)
        .args(["--listen", &listen, "--port-base", &port_base.to_string()])
        .arg("--media-node")
        .arg(binary("media-node")?)
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::from(std::fs::File::create(dir.join("fabric.err"))?))
        .spawn()?;
    let result = async {
        // `kubectl apply`, the local way: a file in the folder.
        std::fs::write(meetings.join("sync.yaml"), MEETING)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !output(&log).contains("meeting default/sync on ") {
            anyhow::ensure!(Instant::now() < deadline, "not placed:\n{}", output(&log));
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let placed = output(&log);
        assert!(
            placed.contains("seoul-1 (seoul)") && placed.contains("frankfurt-1 (frankfurt)"),
            "{placed}"
        );
        let page = format!("http://{listen}/");
        let ana = join_through_page(&page, "seoul", "ana").await?;
        let bo = join_through_page(&page, "frankfurt", "bo").await?;
        // Each landed on its own region's node.
        let port = "return location.port;";
        assert_eq!(ana.js(port).await?, port_base.to_string());
        assert_eq!(bo.js(port).await?, (port_base + 10).to_string());
        wait_decoding(&ana, "moim.sub", 1, Duration::from_secs(40)).await?;
        wait_decoding(&bo, "moim.sub", 1, Duration::from_secs(40)).await?;
        ana.close().await;
        bo.close().await;
        anyhow::Ok(())
    }
    .await;
    // Ctrl-C: every media node stops, then the fabric.
    let _ = Command::new("kill")
        .args(["-INT", &fabric.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(15);
    let exited = loop {
        if let Ok(Some(status)) = fabric.try_wait() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = fabric.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = output(&log);
    result.map_err(|e| e.context(format!("fabric output:\n{text}")))?;
    assert!(
        exited.is_some_and(|s| s.success()),
        "the fabric exits on Ctrl-C:\n{text}"
    );
    for node in ["seoul-1", "frankfurt-1", "virginia-1"] {
        assert!(text.contains(&format!("node {node} stopped")), "{text}");
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
