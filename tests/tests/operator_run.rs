//! The real `operator run` binary against a stand-in API server: it takes the leader Lease,
//! lists and watches its resources, reconciles what it finds (finalizer on a Meeting, a pod
//! and a status for a MediaNode), turns ready, serves metrics, and stops on SIGTERM.

use moim_e2e::fake_apiserver::{ApiCall, FakeApiServer};
use moim_e2e::{binary, free_tcp_port};
use serde_json::json;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn has(calls: &[ApiCall], verb: &str, resource: &str) -> bool {
    calls
        .iter()
        .any(|c| c.verb == verb && c.resource == resource)
}

#[tokio::test]
async fn the_operator_binary_leads_reconciles_and_stops_cleanly() -> anyhow::Result<()> {
    let api = FakeApiServer::default()
        .with_objects(
            "meetings",
            vec![json!({
                "apiVersion": "media.moim.dev/v1alpha1", "kind": "Meeting",
                "metadata": {"name": "standup", "namespace": "team", "uid": "u1", "generation": 1, "resourceVersion": "1"},
                "spec": {"title": "Standup", "participants": {"perRegion": {"seoul": 5}}},
            })],
        )
        .with_objects(
            "medianodes",
            vec![json!({
                "apiVersion": "media.moim.dev/v1alpha1", "kind": "MediaNode",
                "metadata": {"name": "seoul-1", "namespace": "team", "uid": "u2", "generation": 1, "resourceVersion": "1"},
                "spec": {"region": "seoul", "capacity": 100},
            })],
        );
    let addr = api.serve().await?;
    let dir = std::env::temp_dir().join(format!("moim-operator-run-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = FakeApiServer::kubeconfig(addr, &dir)?;
    for (file, content) in [
        ("keys", "k1\n"),
        ("token", "secret\n"),
        ("admin", "admin\n"),
    ] {
        std::fs::write(dir.join(file), content)?;
    }
    let port = free_tcp_port();
    let child = Command::new(binary("operator")?)
        .arg("run")
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--api-keys-file")
        .arg(dir.join("keys"))
        .arg("--token-secret-file")
        .arg(dir.join("token"))
        .arg("--admin-token-file")
        .arg(dir.join("admin"))
        .args(["--identity", "operator-test-0", "--log", "warn"])
        .env("KUBECONFIG", &kubeconfig)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut child = Killed(child);
    let base = format!("http://127.0.0.1:{port}");

    // Ready once it leads and its caches are synced.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/readyz")).await
            && r.status().is_success()
        {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "operator never became ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let metrics = reqwest::get(format!("{base}/metrics"))
        .await?
        .text()
        .await?;
    assert!(metrics.contains("moim_operator_leader 1"), "{metrics}");

    // The reconciles it should have made of the two objects.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let calls = api.calls();
        let done = has(&calls, "create", "leases")
            && has(&calls, "patch", "meetings")
            && has(&calls, "get", "pods")
            && has(&calls, "patch", "pods")
            && has(&calls, "patch", "medianodes/status")
            && has(&calls, "create", "events");
        if done {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "missing reconcile traffic: {:#?}",
            calls.iter().map(|c| &c.raw).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let calls = api.calls();
    let kinds: BTreeSet<(String, String, String)> = calls
        .iter()
        .map(|c| (c.group.clone(), c.resource.clone(), c.verb.clone()))
        .collect();
    for want in [
        ("media.moim.dev", "meetings", "list"),
        ("media.moim.dev", "meetings", "watch"),
        ("media.moim.dev", "medianodes", "watch"),
        ("", "pods", "watch"),
        ("coordination.k8s.io", "leases", "get"),
    ] {
        assert!(
            kinds.contains(&(want.0.into(), want.1.into(), want.2.into())),
            "{want:?} not in {kinds:?}"
        );
    }
    // The pod watch is limited to the operator's own pods.
    assert!(calls.iter().any(|c| {
        c.resource == "pods"
            && c.verb == "watch"
            && c.raw
                .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmoim-operator")
    }));

    // SIGTERM: the controllers stop and the process exits.
    Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.0.try_wait()? {
            assert!(status.success(), "operator exited with {status}");
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "operator did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
