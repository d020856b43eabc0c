//! The real `operator run` binary against a real API server (`tests/k8s/build.sh`), acting as
//! the chart's ServiceAccount (a TokenRequest token; RBAC judges every call): it takes the
//! leader Lease, lists and watches its resources, reconciles what it finds (finalizer on a
//! Meeting, a pod and a status for a MediaNode, a pool's status), turns ready, serves metrics,
//! and stops on SIGTERM.

use moim_e2e::k8s::helm::{
    OPERATOR_USER, control_plane_with_chart_rbac, operator_env, saw_full_reconcile,
};
use moim_e2e::k8s::operator::HostOperator;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[tokio::test]
async fn the_operator_binary_leads_reconciles_and_stops_cleanly() -> anyhow::Result<()> {
    let (cp, rendered, kubeconfig) = control_plane_with_chart_rbac(None).await?;
    let op = HostOperator::start(
        &kubeconfig,
        &operator_env(&rendered),
        "operator-test-0",
        true,
    )
    .await?;
    let metrics = reqwest::get(format!("{}/metrics", op.base))
        .await?
        .text()
        .await?;
    assert!(metrics.contains("moim_operator_leader 1"), "{metrics}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let calls = loop {
        let calls = cp.audit();
        if saw_full_reconcile(&calls, OPERATOR_USER) {
            break calls;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no full reconcile:\n{}",
            op.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let kinds: BTreeSet<(String, String, String)> = calls
        .iter()
        .filter(|c| c.user == OPERATOR_USER)
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
        c.user == OPERATOR_USER
            && c.resource == "pods"
            && c.verb == "watch"
            && c.uri
                .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmoim-operator")
    }));
    // What the reconcile did is in the API server: the finalizer, the media pod, the Lease.
    let finalizers = cp.kubectl(&[
        "get",
        "meeting",
        "-n",
        "team",
        "standup",
        "-o",
        "jsonpath={.metadata.finalizers}",
    ])?;
    assert!(
        finalizers.contains("media.moim.dev/release-nodes"),
        "{finalizers}"
    );
    cp.kubectl(&["get", "pod", "-n", "team", "seoul-1"])?;
    let holder = cp.kubectl(&[
        "get",
        "lease",
        "-n",
        "moim-system",
        "moim-operator",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])?;
    assert!(holder.starts_with("operator-test-0_"), "{holder}");

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

    let forbidden = cp.forbidden(OPERATOR_USER);
    assert!(
        forbidden.is_empty(),
        "RBAC refused the operator: {forbidden:#?}"
    );
    let status = op.terminate().await?;
    assert!(status.success(), "operator exited with {status}");
    Ok(())
}
