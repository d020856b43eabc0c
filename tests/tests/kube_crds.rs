//! moim's CRDs on a real API server (built from Kubernetes' sources: `tests/k8s/build.sh`):
//! they are accepted by server-side apply (structural schema, CEL cost budget), every example
//! Meeting is accepted, and every CEL rule is enforced *by the API server* with the rule's
//! own message, update-only rules (immutability) through a real update. The same runs against
//! the newest Kubernetes and against the oldest one moim supports (1.34, the same binaries
//! with `--emulated-version`).

use kube::CustomResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use moim_e2e::k8s::{ControlPlane, ControlPlaneOptions};
use moim_e2e::workspace_root;
use moim_operator::crd::{MediaNode, MediaPool, Meeting};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::Instant;

/// The oldest Kubernetes the chart claims (`kubeVersion` in charts/moim/Chart.yaml).
const OLDEST: &str = "1.34";

/// Applies `crds/` with server-side apply (as the README tells users) and waits until each is
/// Established.
async fn install_crds(cp: &ControlPlane) -> anyhow::Result<()> {
    let out = cp.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=moim-test",
        "-f",
        &workspace_root().join("crds").to_string_lossy(),
    ])?;
    assert!(
        out.contains("meetings.media.moim.dev serverside-applied"),
        "{out}"
    );
    cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/meetings.media.moim.dev",
        "crd/medianodes.media.moim.dev",
        "crd/mediapools.media.moim.dev",
    ])?;
    Ok(())
}

/// Every `message` of every `x-kubernetes-validations` rule in `v`.
fn rule_messages(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(rules)) = m.get("x-kubernetes-validations") {
                for r in rules {
                    if let Some(msg) = r["message"].as_str() {
                        out.insert(msg.to_owned());
                    }
                }
            }
            for x in m.values() {
                rule_messages(x, out);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| rule_messages(x, out)),
        _ => {}
    }
}

fn meeting(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "media.moim.dev/v1alpha1", "kind": "Meeting",
           "metadata": {"name": name}, "spec": spec})
}

fn good_meeting() -> Value {
    json!({"title": "Daily standup", "participants": {"perRegion": {"seoul": 12}}, "maxParticipants": 60})
}

fn with(mut base: Value, path: &[&str], v: Value) -> Value {
    let mut at = &mut base;
    for p in &path[..path.len() - 1] {
        at = &mut at[*p];
    }
    at[path[path.len() - 1]] = v;
    base
}

fn pool(spec: Value) -> Value {
    json!({"apiVersion": "media.moim.dev/v1alpha1", "kind": "MediaPool",
           "metadata": {"name": "p"}, "spec": spec})
}

fn node(spec: Value) -> Value {
    json!({"apiVersion": "media.moim.dev/v1alpha1", "kind": "MediaNode",
           "metadata": {"name": "n"}, "spec": spec})
}

/// Objects that break exactly one rule on create, with the rule's message.
fn bad_creates() -> Vec<(&'static str, Value)> {
    let m = good_meeting();
    vec![
        (
            "participants.total is more than maxParticipants",
            json!({"title": "t", "participants": {"total": 100, "regions": ["seoul"]}, "maxParticipants": 10}),
        ),
        (
            "a region expects more participants than maxParticipants",
            with(m.clone(), &["maxParticipants"], json!(5)),
        ),
        (
            "title must be 1 to 200 characters",
            with(m.clone(), &["title"], json!("")),
        ),
        (
            "maxParticipants must be at least 1",
            with(m.clone(), &["maxParticipants"], json!(0)),
        ),
        (
            "give either perRegion, or total with regions",
            with(
                m.clone(),
                &["participants"],
                json!({"perRegion": {"seoul": 1}, "total": 3, "regions": ["seoul"]}),
            ),
        ),
        (
            "total and regions go together",
            with(m.clone(), &["participants"], json!({"total": 3})),
        ),
        (
            "perRegion needs at least one region",
            with(m.clone(), &["participants"], json!({"perRegion": {}})),
        ),
        (
            "total must be at least 1",
            with(
                m.clone(),
                &["participants"],
                json!({"total": 0, "regions": ["seoul"]}),
            ),
        ),
        (
            "regions needs at least one region",
            with(
                m.clone(),
                &["participants"],
                json!({"total": 3, "regions": []}),
            ),
        ),
        (
            "schedule.start must be before schedule.end",
            with(
                m.clone(),
                &["schedule"],
                json!({"start": "2026-12-01T11:00:00Z", "end": "2026-12-01T10:00:00Z"}),
            ),
        ),
        (
            "maxBitrateKbps below 100 cannot carry video",
            with(m, &["media"], json!({"maxBitrateKbps": 50})),
        ),
    ]
}

fn bad_pools() -> Vec<(&'static str, Value)> {
    let p = json!({"region": "seoul", "minNodes": 1, "maxNodes": 3});
    vec![
        (
            "minNodes is more than maxNodes",
            with(p.clone(), &["minNodes"], json!(5)),
        ),
        (
            "region must be 1 to 63 characters",
            with(p.clone(), &["region"], json!("")),
        ),
        (
            "maxNodes must be at least 1",
            json!({"region": "seoul", "minNodes": 0, "maxNodes": 0}),
        ),
        (
            "drainDeadlineSeconds must be at least 60",
            with(p.clone(), &["drainDeadlineSeconds"], json!(10)),
        ),
        (
            "participants must be at least 1",
            with(p.clone(), &["nodeCapacity"], json!({"participants": 0})),
        ),
        (
            "headroom.percent is at most 400",
            with(p, &["headroom"], json!({"participants": 1, "percent": 500})),
        ),
    ]
}

fn bad_nodes() -> Vec<(&'static str, Value)> {
    vec![(
        "capacity must be at least 1",
        json!({"region": "seoul", "capacity": 0}),
    )]
}

/// Creates `obj` and returns the API server's refusal message (panics if it was accepted).
async fn refusal(api: &Api<DynamicObject>, obj: Value) -> String {
    let o: DynamicObject = serde_json::from_value(obj.clone()).expect("object");
    match api.create(&PostParams::default(), &o).await {
        Ok(_) => panic!("the API server accepted {obj}"),
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 422, "{e:?}");
            e.message
        }
        Err(e) => panic!("{e}"),
    }
}

async fn cel_rules_are_enforced(cp: &ControlPlane) -> anyhow::Result<()> {
    install_crds(cp).await?;
    let client = cp.client().await?;
    let ns = "cel";
    cp.kubectl(&["create", "namespace", ns])?;
    let api = |ar: ApiResource| Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar);
    let meetings = api(ApiResource::erase::<Meeting>(&()));
    let pools = api(ApiResource::erase::<MediaPool>(&()));
    let nodes = api(ApiResource::erase::<MediaNode>(&()));

    let mut covered = BTreeSet::new();
    for (msg, spec) in bad_creates() {
        let said = refusal(&meetings, meeting("bad", spec)).await;
        assert!(
            said.contains(msg),
            "wanted {msg:?}, the API server said {said:?}"
        );
        covered.insert(msg.to_owned());
    }
    for (msg, spec) in bad_pools() {
        let said = refusal(&pools, pool(spec)).await;
        assert!(
            said.contains(msg),
            "wanted {msg:?}, the API server said {said:?}"
        );
        covered.insert(msg.to_owned());
    }
    for (msg, spec) in bad_nodes() {
        let said = refusal(&nodes, node(spec)).await;
        assert!(
            said.contains(msg),
            "wanted {msg:?}, the API server said {said:?}"
        );
        covered.insert(msg.to_owned());
    }

    // Update-only rules: create a good object, then change what may not change.
    let ssa = PatchParams::apply("moim-test");
    for (api, obj, field, value, msg) in [
        (
            &meetings,
            meeting("m", good_meeting()),
            "mode",
            json!("Webinar"),
            "mode cannot change once the meeting exists",
        ),
        (
            &pools,
            pool(json!({"region": "seoul"})),
            "region",
            json!("virginia"),
            "region cannot change; create a new MediaPool",
        ),
        (
            &nodes,
            node(json!({"region": "seoul"})),
            "region",
            json!("virginia"),
            "region cannot change; create a new MediaNode",
        ),
    ] {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        api.patch(&name, &ssa, &Patch::Apply(&obj)).await?;
        let mut current = api.get(&name).await?;
        current.data["spec"][field] = value;
        match api.replace(&name, &PostParams::default(), &current).await {
            Ok(_) => panic!("the API server let {name}.spec.{field} change"),
            Err(kube::Error::Api(e)) => {
                assert_eq!(e.code, 422, "{e:?}");
                assert!(e.message.contains(msg), "wanted {msg:?}: {}", e.message);
            }
            Err(e) => return Err(e.into()),
        }
        covered.insert(msg.to_owned());
    }

    // Every rule in the CRDs has its case here.
    let mut all = BTreeSet::new();
    for crd in [Meeting::crd(), MediaNode::crd(), MediaPool::crd()] {
        rule_messages(&serde_json::to_value(&crd)?, &mut all);
    }
    let missing: Vec<&String> = all.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "CEL rules with no case here: {missing:?}"
    );
    Ok(())
}

async fn examples_are_accepted(cp: &ControlPlane) -> anyhow::Result<()> {
    let dir = workspace_root().join("operator/examples/meetings");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    cp.kubectl(&["create", "namespace", "examples"])?;
    for f in files {
        // As a user runs it: kubectl's client-side validation reads the CRD's schema too, and
        // warns about anything it does not understand.
        let out = std::process::Command::new(moim_e2e::k8s::kubectl_binary())
            .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
            .args(["apply", "-n", "examples", "-f"])
            .arg(&f)
            .output()?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{}: {stderr}", f.display());
        assert!(stdout.contains("created"), "{}: {stdout}", f.display());
        let warnings: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert!(
            warnings.is_empty(),
            "{}: kubectl warned: {warnings:?}",
            f.display()
        );
    }
    Ok(())
}

async fn check(emulated: Option<&str>) -> anyhow::Result<()> {
    let started = Instant::now();
    let cp = ControlPlane::start(ControlPlaneOptions {
        controller_manager: false,
        emulated_version: emulated.map(str::to_owned),
        ..ControlPlaneOptions::default()
    })
    .await?;
    let version = cp.kubectl(&["version", "-o", "json"])?;
    let v: Value = serde_json::from_str(&version)?;
    println!(
        "API server {} (emulating {}), ready in {:.1} s",
        v["serverVersion"]["gitVersion"],
        emulated.unwrap_or("nothing"),
        started.elapsed().as_secs_f64()
    );
    cel_rules_are_enforced(&cp).await?;
    examples_are_accepted(&cp).await?;
    Ok(())
}

#[tokio::test]
async fn crds_and_cel_rules_on_the_newest_kubernetes() -> anyhow::Result<()> {
    check(None).await
}

#[tokio::test]
async fn crds_and_cel_rules_on_the_oldest_supported_kubernetes() -> anyhow::Result<()> {
    let chart = std::fs::read_to_string(workspace_root().join("charts/moim/Chart.yaml"))?;
    assert!(
        chart.contains(&format!("kubeVersion: \">={OLDEST}.0-0\"")),
        "charts/moim/Chart.yaml must claim what this test checks (>= {OLDEST})"
    );
    check(Some(OLDEST)).await
}

/// Without the built control plane, the harness says which script builds it (checked in a
/// child process, which alone sees the changed `MOIM_K8S_BIN`).
#[test]
fn missing_binaries_name_the_build_script() {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .args([
            "--exact",
            "missing_binaries_child",
            "--nocapture",
            "--ignored",
        ])
        .env("MOIM_K8S_BIN", "/nonexistent")
        .output()
        .expect("run child");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tests/k8s/build.sh"), "{text}");
}

#[tokio::test]
#[ignore = "run by missing_binaries_name_the_build_script"]
async fn missing_binaries_child() {
    if let Err(e) = ControlPlane::start(ControlPlaneOptions::default()).await {
        println!("{e:#}");
    }
}
