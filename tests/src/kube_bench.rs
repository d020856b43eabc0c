//! `moim-bench kube`: the operator on a real Kubernetes control plane (the one the tests use,
//! `tests/k8s/build.sh`).
//!
//! - **control plane start-up**: etcd and kube-apiserver started until `/readyz` answers, a few
//!   times (what every Kubernetes test pays first);
//! - **apply to Running**: the chart installed on a cluster of `--nodes` media pods (real
//!   `media-node` processes run by the test kubelet, each in its own network namespace), then
//!   one Meeting over two regions created at a time and its status read every 20 ms until it
//!   is `Running` with its relay link (watch → reconcile → placement → plan pushed to the
//!   nodes' admin API → status applied);
//! - **reconciles per second and memory**: `--meetings` Meetings created at once (16 requests
//!   in flight), the time until every one runs, the operator's reconciles per second over
//!   that time (its own `moim_operator_reconcile_duration_seconds_count`) and at rest after,
//!   and the operator's resident memory holding them all.

use crate::k8s::helm;
use crate::k8s::{Cluster, ControlPlane, ControlPlaneOptions, FakeNode};
use futures_util::StreamExt;
use kube::api::{Api, DynamicObject, PostParams};
use kube::core::ApiResource;
use moim_operator::crd::Meeting;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// Options of `moim-bench kube`.
#[derive(Debug, Clone, clap::Args)]
pub struct KubeArgs {
    /// Meetings created at once for the throughput and memory figures.
    #[arg(long, default_value_t = 1000)]
    pub meetings: usize,
    /// Media nodes (media pods), half in each of two regions.
    #[arg(long, default_value_t = 50)]
    pub nodes: u32,
    /// Meetings applied one at a time for the apply-to-Running latency.
    #[arg(long, default_value_t = 20)]
    pub applies: usize,
    /// Control plane start-ups to time.
    #[arg(long, default_value_t = 3)]
    pub startups: usize,
    /// Print a JSON object as the last line.
    #[arg(long)]
    pub json: bool,
}

const REGIONS: [&str; 2] = ["seoul", "frankfurt"];

fn meeting(name: &str) -> DynamicObject {
    let v = json!({
        "apiVersion": "media.moim.dev/v1alpha1", "kind": "Meeting",
        "metadata": {"name": name, "namespace": "bench"},
        "spec": {"title": name, "participants": {"perRegion": {"seoul": 3, "frankfurt": 2}},
                 "maxParticipants": 10},
    });
    serde_json::from_value(v).unwrap_or_else(|_| DynamicObject::new(name, &ar()))
}

fn ar() -> ApiResource {
    ApiResource::erase::<Meeting>(&())
}

fn running(m: &DynamicObject) -> bool {
    let st = &m.data["status"];
    st["phase"] == "Running" && st["links"].as_array().is_some_and(|l| !l.is_empty())
}

fn percentile(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    crate::percentile(&v, p)
}

/// The operator's reconcile count for `controller`, from its metrics.
async fn reconciles(http: &reqwest::Client, base: &str, controller: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let key =
        format!("moim_operator_reconcile_duration_seconds_count{{controller=\"{controller}\"}}");
    Ok(crate::sample(&text, &key).unwrap_or(0.0))
}

/// Resident memory of process `pid`, MB.
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Runs the benchmark; returns its figures.
pub async fn run(args: &KubeArgs) -> anyhow::Result<Value> {
    // Start-up of a bare control plane.
    let mut startups = Vec::new();
    for _ in 0..args.startups {
        let cp = ControlPlane::start(ControlPlaneOptions {
            controller_manager: false,
            ..ControlPlaneOptions::default()
        })
        .await?;
        startups.push(cp.startup.as_secs_f64() * 1000.0);
    }
    let startup_p50 = percentile(startups.clone(), 0.5);
    println!(
        "control plane start-up (etcd + kube-apiserver to /readyz): p50 {startup_p50:.0} ms over {startups:.0?}"
    );

    // A cluster: enough Nodes for the media pods (8 CPUs each, pods of 0.1 CPU).
    let per_region = args.nodes.div_ceil(2);
    let hosts = per_region.div_ceil(20).max(1);
    let nodes: Vec<FakeNode> = REGIONS
        .iter()
        .flat_map(|r| (0..hosts).map(move |i| FakeNode::new(&format!("{r}-{i}"), r)))
        .collect();
    let cluster = Cluster::start(&nodes).await?;
    let cp = &cluster.control_plane;
    for ns in ["moim-system", "bench"] {
        cp.kubectl(&["create", "namespace", ns])?;
    }
    let values = cp.dir.join("bench-values.yaml");
    let pools: Vec<Value> = REGIONS
        .iter()
        .map(|r| {
            json!({"region": r, "minNodes": per_region, "maxNodes": per_region, "capacity": 200,
                   "headroom": {"participants": 0, "percent": 0}, "nodeStartupSeconds": 5})
        })
        .collect();
    std::fs::write(
        &values,
        serde_yaml::to_string(&json!({
            "operator": {"logLevel": "warn"},
            "media": {"exposure": "podIP", "terminationGracePeriodSeconds": 60,
                      "resources": {"requests": {"cpu": "100m", "memory": "128Mi"},
                                    "limits": {"cpu": "100m", "memory": "128Mi"}}},
            "pools": pools,
        }))?,
    )?;
    let installed = Instant::now();
    helm::run(
        &cp.kubeconfig,
        &[
            "install",
            "moim",
            &helm::chart().to_string_lossy(),
            "-n",
            "moim-system",
            "-f",
            &values.to_string_lossy(),
            "--wait",
            "--timeout",
            "5m",
        ],
    )?;
    let client = cp.client().await?;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = cp.kubectl(&[
            "get",
            "medianodes",
            "-n",
            "moim-system",
            "-o",
            "jsonpath={.items[*].status.phase}",
        ])?;
        let ready = out.split_whitespace().filter(|p| *p == "Ready").count();
        if ready >= args.nodes as usize {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {ready} media nodes became Ready"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    println!(
        "helm install to {} Ready media nodes: {:.1} s",
        args.nodes,
        installed.elapsed().as_secs_f64()
    );

    let pods = cp.kubectl(&[
        "get",
        "pods",
        "-n",
        "moim-system",
        "-l",
        "app.kubernetes.io/component=operator",
        "-o",
        "jsonpath={.items[0].metadata.name} {.items[0].status.podIP}",
    ])?;
    let (op_pod, op_ip) = pods.split_once(' ').unwrap_or_default();
    let op_base = format!("http://{op_ip}:8080");
    let op_pid = cluster
        .kubelet
        .pid("moim-system", op_pod)
        .ok_or_else(|| anyhow::anyhow!("operator pod {op_pod} has no process"))?;
    let http = reqwest::Client::new();
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "bench", &ar());

    // kubectl apply → Running, one meeting at a time.
    let mut latencies = Vec::new();
    for i in 0..args.applies {
        let name = format!("apply-{i}");
        let t = Instant::now();
        api.create(&PostParams::default(), &meeting(&name)).await?;
        loop {
            if running(&api.get(&name).await?) {
                break;
            }
            anyhow::ensure!(t.elapsed() < Duration::from_secs(60), "{name} never ran");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        latencies.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (apply_p50, apply_p99) = (
        percentile(latencies.clone(), 0.5),
        percentile(latencies.clone(), 0.99),
    );
    println!(
        "apply to Running (two regions, relay link): p50 {apply_p50:.0} ms, p99 {apply_p99:.0} ms over {} meetings",
        latencies.len()
    );

    // Many meetings at once.
    let before = reconciles(&http, &op_base, "meeting").await?;
    let t = Instant::now();
    let names: Vec<String> = (0..args.meetings).map(|i| format!("m-{i}")).collect();
    let created: Vec<anyhow::Result<()>> = futures_util::stream::iter(names.iter())
        .map(|n| {
            let api = api.clone();
            async move {
                api.create(&PostParams::default(), &meeting(n)).await?;
                Ok(())
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for c in created {
        c?;
    }
    let create_s = t.elapsed().as_secs_f64();
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let list = api.list(&Default::default()).await?;
        let n = list.items.iter().filter(|m| running(m)).count();
        if n >= args.meetings + args.applies {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "only {n} of {} meetings ran",
            args.meetings + args.applies
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let all_s = t.elapsed().as_secs_f64();
    let during = reconciles(&http, &op_base, "meeting").await? - before;
    let placing_rps = during / all_s;
    println!(
        "{} meetings created in {create_s:.1} s, all Running after {all_s:.1} s: {during:.0} meeting reconciles, {placing_rps:.0}/s",
        args.meetings
    );
    // At rest: every meeting is looked at again each resync and when its nodes report.
    let rest = Duration::from_secs(30);
    let (a, b) = (
        reconciles(&http, &op_base, "meeting").await?,
        reconciles(&http, &op_base, "medianode").await?,
    );
    tokio::time::sleep(rest).await;
    let rest_meeting = (reconciles(&http, &op_base, "meeting").await? - a) / rest.as_secs_f64();
    let rest_node = (reconciles(&http, &op_base, "medianode").await? - b) / rest.as_secs_f64();
    let rss = rss_mb(op_pid);
    println!(
        "at rest: {rest_meeting:.0} meeting and {rest_node:.1} media node reconciles/s; operator resident memory {rss:.1} MB"
    );
    Ok(json!({
        "controlplane_startup_ms_p50": startup_p50.round(),
        "apply_to_running_ms_p50": apply_p50.round(),
        "apply_to_running_ms_p99": apply_p99.round(),
        "meetings": args.meetings,
        "media_nodes": args.nodes,
        "all_running_seconds": (all_s * 10.0).round() / 10.0,
        "reconciles_per_second_placing": placing_rps.round(),
        "reconciles_per_second_at_rest": rest_meeting.round(),
        "operator_rss_mb": (rss * 10.0).round() / 10.0,
    }))
}
