//! The real `operator run` binary against a stand-in API server: it takes the leader Lease,
//! lists and watches its resources, reconciles what it finds (finalizer on a Meeting, a pod
//! and a status for a MediaNode), turns ready, serves metrics, and stops on SIGTERM.

use moim_e2e::fake_apiserver::{RunningOperator, saw_full_reconcile, small_cluster};
use std::collections::BTreeSet;

#[tokio::test]
async fn the_operator_binary_leads_reconciles_and_stops_cleanly() -> anyhow::Result<()> {
    let api = small_cluster();
    let op = RunningOperator::start(api.serve().await?).await?;
    let metrics = reqwest::get(format!("{}/metrics", op.base))
        .await?
        .text()
        .await?;
    assert!(metrics.contains("moim_operator_leader 1"), "{metrics}");

    let calls = op.wait_for_calls(&api, saw_full_reconcile).await?;
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

    // The pool's autoscaler looked: its figures are exported, and promtool accepts the text.
    let metrics = reqwest::get(format!("{}/metrics", op.base))
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("moim_operator_pool_nodes{pool=\"team/seoul\",state=\"desired\"} 1"),
        "{metrics}"
    );
    let (ok, said) = moim_e2e::promtool(&metrics)?;
    assert!(ok, "promtool: {said}");

    let status = op.terminate().await?;
    assert!(status.success(), "operator exited with {status}");
    Ok(())
}
