//! The Helm chart: it lints, renders for every supported set-up, the rendered manifests pass
//! Kubernetes' own schemas strictly, its CRDs are `crds/`, its MediaPools pass the CRD's
//! rules, and its RBAC allows every call the real operator makes (the operator binary runs as
//! the chart's ServiceAccount against a real API server, whose authorizer judges each call).

use moim_e2e::k8s::helm::{
    OPERATOR_USER, RENDER_KUBE_VERSION, chart, control_plane_with_chart_rbac, docs, helm,
    operator_env, saw_full_reconcile,
};
use moim_e2e::k8s::operator::HostOperator;
use moim_e2e::workspace_root;
use serde_json::Value;
use std::path::PathBuf;
use std::process::Command;

/// Value files of the supported set-ups: the defaults and every `ci/*-values.yaml`.
fn setups() -> Vec<Option<PathBuf>> {
    let mut out = vec![None];
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart().join("ci"))
        .expect("charts/moim/ci")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    out.extend(files.into_iter().map(Some));
    out
}

fn render(values: Option<&PathBuf>, crds: bool) -> String {
    moim_e2e::k8s::helm::render(values.map(PathBuf::as_path), crds).expect("helm template")
}

#[test]
fn the_chart_lints_and_renders_valid_manifests_for_every_setup() {
    let out = Command::new(helm())
        .args(["lint", "--strict"])
        .arg(chart())
        .output()
        .expect("helm lint");
    assert!(
        out.status.success(),
        "helm lint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for setup in setups() {
        let rendered = render(setup.as_ref(), true);
        let file = std::env::temp_dir().join(format!("moim-chart-{}.yaml", std::process::id()));
        std::fs::write(&file, &rendered).expect("write");
        let out = Command::new("kubernetes-validate")
            .args([
                "--strict",
                "--quiet",
                "--no-warn",
                "-k",
                RENDER_KUBE_VERSION,
            ])
            .arg(&file)
            .output()
            .expect("kubernetes-validate (pip install kubernetes-validate)");
        assert!(
            out.status.success(),
            "{setup:?} refused by Kubernetes' schemas: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let _ = std::fs::remove_file(&file);
        // Our own resources: Kubernetes' schemas do not know them; the CRD's rules do.
        let pools: Vec<Value> = docs(&rendered)
            .into_iter()
            .filter(|d| d["kind"] == "MediaPool")
            .collect();
        assert!(!pools.is_empty(), "{setup:?}: no MediaPool");
        for d in pools {
            let pool: moim_operator::crd::MediaPool =
                serde_json::from_value(d.clone()).expect("a MediaPool");
            pool.validate_cel()
                .unwrap_or_else(|e| panic!("{setup:?}: {d}: {e}"));
        }
        // The operator pod meets Pod Security "restricted".
        let deploy = docs(&rendered)
            .into_iter()
            .find(|d| d["kind"] == "Deployment")
            .expect("operator Deployment");
        let pod = &deploy["spec"]["template"]["spec"];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let c = &pod["containers"][0]["securityContext"];
        assert_eq!(c["allowPrivilegeEscalation"], false);
        assert_eq!(c["capabilities"]["drop"][0], "ALL");
    }
}

#[test]
fn the_chart_ships_exactly_the_generated_crds() {
    for file in ["meetings.yaml", "medianodes.yaml", "mediapools.yaml"] {
        let ours =
            std::fs::read_to_string(workspace_root().join("crds").join(file)).expect("crds/");
        let chart = std::fs::read_to_string(chart().join("crds").join(file)).expect("chart crds/");
        assert_eq!(
            ours, chart,
            "charts/moim/crds/{file} differs from crds/{file}: copy it (cp crds/*.yaml charts/moim/crds/)"
        );
    }
}

/// The real operator runs with each set-up's RBAC on a real API server, as the chart's
/// ServiceAccount: the authorizer refuses nothing it does (the audit log holds every call and
/// its answer). The rules themselves stay tight: no wildcards, no Secrets (the operator reads
/// its secrets from mounted files).
#[tokio::test]
async fn rbac_allows_every_call_the_operator_makes_and_no_more_scope() -> anyhow::Result<()> {
    // The operator runs once per distinct setting that changes its calls or its rights: the
    // namespace it watches (Role instead of ClusterRole) and the media settings (a Service per
    // node with nodePort exposure).
    let mut seen = std::collections::BTreeSet::new();
    for setup in setups() {
        let rendered = docs(&render(setup.as_ref(), false));
        let env: Vec<(String, String)> = operator_env(&rendered)
            .into_iter()
            .filter(|(k, _)| k == "MOIM_NAMESPACE" || k.starts_with("MOIM_MEDIA_"))
            .collect();
        if seen.insert(env.clone()) {
            let (cp, rendered, kubeconfig) =
                control_plane_with_chart_rbac(setup.as_deref()).await?;
            let op = HostOperator::start(&kubeconfig, &operator_env(&rendered), "rbac-test", true)
                .await?;
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while !saw_full_reconcile(&cp.audit(), OPERATOR_USER) {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "{setup:?}: no full reconcile:\n{}",
                    op.log()
                );
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            let forbidden = cp.forbidden(OPERATOR_USER);
            assert!(
                forbidden.is_empty(),
                "{setup:?}: the chart's RBAC does not allow {:#?}\noperator log:\n{}",
                forbidden,
                op.log()
            );
        }
        let rules_of = |kind: &str| -> Vec<Value> {
            rendered
                .iter()
                .filter(|d| d["kind"] == kind)
                .flat_map(|d| d["rules"].as_array().cloned().unwrap_or_default())
                .collect()
        };
        // Nothing beyond what the operator uses: no wildcards, no secrets.
        for r in rules_of("ClusterRole")
            .iter()
            .chain(rules_of("Role").iter())
        {
            let text = r.to_string();
            assert!(!text.contains('*'), "wildcard in {text}");
            assert!(!text.contains("secrets"), "secrets access in {text}");
        }
    }
    Ok(())
}

/// The relay certificate the chart generates is one media nodes accept from each other: two
/// nodes given the rendered Secret's files link over mutual TLS.
#[tokio::test]
async fn the_generated_relay_certificate_links_two_media_nodes() -> anyhow::Result<()> {
    use base64::Engine as _;
    let rendered = render(None, false);
    let secret = docs(&rendered)
        .into_iter()
        .find(|d| d["kind"] == "Secret" && d["metadata"]["name"] == "moim-relay-tls")
        .expect("the relay Secret");
    let dir = std::env::temp_dir().join(format!("moim-relay-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut args: Vec<String> = Vec::new();
    for (flag, key) in [
        ("--relay-ca", "ca.crt"),
        ("--relay-cert", "tls.crt"),
        ("--relay-key", "tls.key"),
    ] {
        let b64 = secret["data"][key].as_str().expect("base64 data");
        let path = dir.join(key);
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD.decode(b64)?,
        )?;
        args.extend([flag.to_owned(), path.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let relay_a = format!("127.0.0.1:{}", moim_e2e::free_udp_port());
    let relay_b = format!("127.0.0.1:{}", moim_e2e::free_udp_port());
    let _a = moim_e2e::Node::start_relay("seoul-1", "seoul", &relay_a, &[], &args).await?;
    let b = moim_e2e::Node::start_relay("fra-1", "frankfurt", &relay_b, &[&relay_a], &args).await?;
    let http = reqwest::Client::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while moim_e2e::metric(&http, &b, "moim_relay_links").await? < 1.0 {
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "nodes with the chart's relay certificate did not link"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The Grafana dashboard renders into a valid ConfigMap (checked with the others above), is
/// JSON Grafana can load, and every metric its queries use is one moim exports (a renamed
/// metric would leave a panel silently empty).
#[test]
fn the_dashboard_queries_only_metrics_moim_exports() {
    let rendered = render(Some(&chart().join("ci/single-region-values.yaml")), false);
    let cm = docs(&rendered)
        .into_iter()
        .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "moim-dashboard")
        .expect("the dashboard ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let dash: Value =
        serde_json::from_str(cm["data"]["moim.json"].as_str().expect("moim.json")).expect("json");
    let sources = ["media-node/src/metrics.rs", "operator/src/metrics.rs"]
        .map(|f| std::fs::read_to_string(workspace_root().join(f)).expect("metrics source"))
        .join("\n");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    let mut checked = 0;
    for p in panels {
        for t in p["targets"].as_array().expect("targets") {
            let expr = t["expr"].as_str().expect("expr");
            let mut rest = expr;
            while let Some(i) = rest.find("moim_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                let base = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| name.strip_suffix(s))
                    .unwrap_or(&name);
                assert!(
                    sources.contains(&format!("\"{base}\"")),
                    "panel {:?} queries {name}, which moim does not export",
                    p["title"]
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 20, "{checked} metric references");
}
