//! Helm, as the tests run it: the binary `.ci/run` installs from npm, rendering the chart for a
//! set-up, and installing it on a test cluster.

use anyhow::{Context as _, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The Kubernetes version charts are rendered for without a cluster: the oldest the chart
/// claims (`kubeVersion` in charts/moim/Chart.yaml).
pub const RENDER_KUBE_VERSION: &str = "1.34.0";

/// `helm`: `$HELM`, else the copy `.ci/run` installs from npm, else `helm` on the PATH.
pub fn helm() -> PathBuf {
    if let Ok(h) = std::env::var("HELM") {
        return h.into();
    }
    let local = crate::workspace_root().join(".ci/tools/node_modules/.bin/helm");
    if local.exists() {
        return local;
    }
    "helm".into()
}

/// The chart.
pub fn chart() -> PathBuf {
    crate::workspace_root().join("charts/moim")
}

/// Runs `helm args…` against the cluster of `kubeconfig`; returns stdout.
pub fn run(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(helm())
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running helm (.ci/run installs it from npm)")?;
    if !out.status.success() {
        bail!(
            "helm {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `helm template` of the chart for `values` (release `moim` in `moim-system`), with the CRDs
/// when `crds`.
pub fn render(values: Option<&Path>, crds: bool) -> anyhow::Result<String> {
    let mut cmd = Command::new(helm());
    cmd.args(["template", "moim"]).arg(chart()).args([
        "--namespace",
        "moim-system",
        "--kube-version",
        RENDER_KUBE_VERSION,
    ]);
    if crds {
        cmd.arg("--include-crds");
    }
    if let Some(v) = values {
        cmd.arg("-f").arg(v);
    }
    let out = cmd
        .output()
        .context("helm runs (.ci/run installs it from npm)")?;
    if !out.status.success() {
        bail!(
            "helm template {values:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The documents of a YAML stream.
pub fn docs(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .filter_map(|d| {
            let v: Value = serde::Deserialize::deserialize(d).ok()?;
            (!v.is_null()).then_some(v)
        })
        .collect()
}

/// The operator container's environment in a rendered chart, as `(name, value)` for the
/// variables with a literal value.
pub fn operator_env(rendered: &[Value]) -> Vec<(String, String)> {
    rendered
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "moim-operator")
        .and_then(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .cloned()
        })
        .unwrap_or_default()
        .iter()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// The user the chart's operator acts as.
pub const OPERATOR_USER: &str = "system:serviceaccount:moim-system:moim-operator";

/// A control plane with moim's CRDs, the chart's ServiceAccount and RBAC for `values`, and a
/// small cluster to reconcile in the namespace the operator watches (a Meeting, a MediaNode
/// without a pod, a MediaPool): enough for the operator to make every kind of call it makes.
/// Returns the control plane, the rendered chart and the ServiceAccount's kubeconfig.
pub async fn control_plane_with_chart_rbac(
    values: Option<&Path>,
) -> anyhow::Result<(super::ControlPlane, Vec<Value>, PathBuf)> {
    // With the controller manager: a pod needs its namespace's `default` ServiceAccount,
    // which the serviceaccount controller makes.
    let cp = super::ControlPlane::start(super::ControlPlaneOptions::default()).await?;
    cp.kubectl(&[
        "apply",
        "--server-side",
        "-f",
        &crate::workspace_root().join("crds").to_string_lossy(),
    ])?;
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/meetings.media.moim.dev",
        "crd/medianodes.media.moim.dev",
        "crd/mediapools.media.moim.dev",
    ])?;
    let rendered = docs(&render(values, false)?);
    let env = operator_env(&rendered);
    let watched = env
        .iter()
        .find(|(k, _)| k == "MOIM_NAMESPACE")
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "team".to_owned());
    for ns in ["moim-system", watched.as_str()] {
        if cp.kubectl(&["get", "namespace", ns]).is_err() {
            cp.kubectl(&["create", "namespace", ns])?;
        }
    }
    let rbac: Vec<&Value> = rendered
        .iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                        | "Lease"
                )
            )
        })
        .collect();
    apply(&cp, &rbac)?;
    let seed = [
        serde_json::json!({"apiVersion": "media.moim.dev/v1alpha1", "kind": "Meeting",
         "metadata": {"name": "standup", "namespace": watched},
         "spec": {"title": "Standup", "participants": {"perRegion": {"seoul": 5}}}}),
        serde_json::json!({"apiVersion": "media.moim.dev/v1alpha1", "kind": "MediaNode",
         "metadata": {"name": "seoul-1", "namespace": watched},
         "spec": {"region": "seoul", "capacity": 100}}),
        serde_json::json!({"apiVersion": "media.moim.dev/v1alpha1", "kind": "MediaPool",
         "metadata": {"name": "seoul", "namespace": watched},
         "spec": {"region": "seoul", "minNodes": 1, "maxNodes": 3}}),
    ];
    apply(&cp, &seed.iter().collect::<Vec<_>>())?;
    let kubeconfig = cp
        .service_account_kubeconfig("moim-system", "moim-operator")
        .await?;
    Ok((cp, rendered, kubeconfig))
}

/// `kubectl apply --server-side` of `objects` as the admin.
pub fn apply(cp: &super::ControlPlane, objects: &[&Value]) -> anyhow::Result<()> {
    let file = cp
        .dir
        .join(format!("apply-{}.yaml", crate::free_tcp_port()));
    let text: Vec<String> = objects
        .iter()
        .map(serde_yaml::to_string)
        .collect::<Result<_, _>>()?;
    std::fs::write(&file, text.join("---\n"))?;
    cp.kubectl(&["apply", "--server-side", "-f", &file.to_string_lossy()])?;
    Ok(())
}

/// Whether `events` hold every kind of call a reconcile of the small cluster of
/// [`control_plane_with_chart_rbac`] makes, by `user`.
pub fn saw_full_reconcile(events: &[super::AuditEvent], user: &str) -> bool {
    let has = |verb: &str, resource: &str| {
        events
            .iter()
            .any(|e| e.user == user && e.verb == verb && e.resource == resource)
    };
    // An apply that creates an object is a `patch` answered 201 (RBAC checks `create` too).
    let created = |resource: &str| {
        events
            .iter()
            .any(|e| e.user == user && e.verb == "patch" && e.resource == resource && e.code == 201)
    };
    has("update", "leases")
        && has("patch", "meetings")
        && has("get", "pods")
        && created("pods")
        && has("patch", "medianodes/status")
        && created("medianodes")
        && has("patch", "mediapools/status")
        && has("create", "events")
}
