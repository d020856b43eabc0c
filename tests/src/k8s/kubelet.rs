//! The test's kubelet and scheduler: there is no container runtime on the machines the tests
//! run on, so this module plays the Nodes of a [`super::Cluster`].
//!
//! - **Nodes.** Each [`FakeNode`] is a Node object (labels `kubernetes.io/hostname`,
//!   `topology.kubernetes.io/region` and `zone`, `Ready`, an `InternalIP`) and a network
//!   namespace with that address: the machine. Pods with `hostNetwork` run in it.
//! - **Scheduling.** A pod with no `nodeName` is bound (the `binding` subresource) to a Node
//!   that fits: node selector, required node affinity, taints and tolerations, host ports
//!   (a `hostNetwork` pod's container ports are host ports), resource requests against the
//!   Node's allocatable; among those, the one with the fewest pods of the same owner and the
//!   same region (spread). A pod nothing fits gets `PodScheduled=False` with the reasons, as
//!   the real scheduler writes it.
//! - **Running.** A pod bound to one of these Nodes gets a network namespace of its own (its
//!   pod IP; or its Node's, with `hostNetwork`) and each container runs as a process of the
//!   locally built binary its image names (the image's `ENTRYPOINT`/`CMD` from its
//!   Dockerfile, overridden by `command`/`args` as a runtime does, `$(VAR)` expanded), with
//!   its env (values, `fieldRef` including `status.podIP`/`status.hostIP`, `secretKeyRef`,
//!   `configMapKeyRef`, `envFrom`), the user of its `securityContext`, and in a mount
//!   namespace of its own: the image's binaries at their paths under `/usr/local/bin`, and
//!   every volume (Secret, ConfigMap, projected service-account token from the TokenRequest
//!   API, downward API, emptyDir) at its `mountPath`, read-only where asked.
//! - **Status.** Phase, `podIP`, `hostIP`, container states with restart counts, and the
//!   `Ready` condition from the readiness probe (HTTP, TCP or exec), written to `pods/status`.
//!   A failing liveness probe kills the container. `restartPolicy` is honoured (with a
//!   back-off). On deletion: the `preStop` hook, SIGTERM, the grace period, SIGKILL, then the
//!   final delete, as the kubelet does.
//!
//! What differs from a real kubelet, and why the tests still find what they are for: no
//! images (the binary is the one just built, which is what is under test; the Dockerfiles'
//! entrypoints are read so the command line is the image's), no cgroups (resource limits are
//! not enforced; QoS class is still assigned by the API server, which is what a test reads),
//! no kube-proxy (ClusterIPs do not route: tests reach pods at their pod IPs, and pods reach
//! the API server at its real address through `KUBERNETES_SERVICE_HOST`), probes every
//! second at most whatever `periodSeconds` says (tests are faster; a probe that fails still
//! fails), one shared root filesystem besides the mounts (the mount points are made on the
//! host), and the harness writes Node and pod status with the admin's credentials rather
//! than a Node identity (the operator's own calls are what RBAC is tested on).

use super::net::{NetHost, PodNetwork};
use super::{ControlPlane, client_from};
use anyhow::{Context as _, bail};
use futures_util::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    Binding, ConfigMap, Container, EnvVar, Node, ObjectReference, Pod, Probe, Secret,
    ServiceAccount, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A Node to register.
#[derive(Debug, Clone)]
pub struct FakeNode {
    /// Node name.
    pub name: String,
    /// `topology.kubernetes.io/region`.
    pub region: String,
    /// `topology.kubernetes.io/zone`.
    pub zone: String,
}

impl FakeNode {
    /// A Node `name` in `region`, zone `<region>-a`.
    pub fn new(name: &str, region: &str) -> Self {
        Self {
            name: name.into(),
            region: region.into(),
            zone: format!("{region}-a"),
        }
    }

    /// The same Node in another zone.
    pub fn zone(mut self, zone: &str) -> Self {
        self.zone = zone.into();
        self
    }
}

/// Allocatable of every Node.
const NODE_CPU: &str = "8";
const NODE_MEMORY: &str = "32Gi";
const NODE_PODS: &str = "110";

/// An image the harness can run: its binary here, and its `ENTRYPOINT` and `CMD`.
#[derive(Debug, Clone)]
struct Image {
    binary: PathBuf,
    entrypoint: Vec<String>,
    cmd: Vec<String>,
}

/// `ENTRYPOINT ["a", "b"]` / `CMD ["x"]` (exec form) from a Dockerfile.
fn dockerfile_directive(text: &str, directive: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.trim().strip_prefix(directive))
        .filter_map(|rest| serde_json::from_str::<Vec<String>>(rest.trim()).ok())
        .next_back()
        .unwrap_or_default()
}

/// The images of this repository: `<repository>/<name>:<tag>` runs `target/…/<name>`, as
/// `<name>/Dockerfile` (or `media-node/Dockerfile`, `operator/Dockerfile`) builds it.
fn known_images() -> anyhow::Result<BTreeMap<String, Image>> {
    let mut out = BTreeMap::new();
    for (name, dockerfile) in [
        ("media-node", "media-node/Dockerfile"),
        ("operator", "operator/Dockerfile"),
    ] {
        let text = std::fs::read_to_string(crate::workspace_root().join(dockerfile))
            .with_context(|| format!("reading {dockerfile}"))?;
        out.insert(
            name.to_owned(),
            Image {
                binary: crate::binary(name)?,
                entrypoint: dockerfile_directive(&text, "ENTRYPOINT"),
                cmd: dockerfile_directive(&text, "CMD"),
            },
        );
    }
    Ok(out)
}

/// `ghcr.io/moim-dev/media-node:0.1.0` → `media-node`.
fn image_name(image: &str) -> &str {
    let last = image.rsplit('/').next().unwrap_or(image);
    let last = last.split('@').next().unwrap_or(last);
    last.split(':').next().unwrap_or(last)
}

struct NodeState {
    host: NetHost,
    /// The machine is gone: its pods were killed and nothing about it is written any more.
    lost: bool,
}

/// A pod this kubelet runs.
struct PodHandle {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    node: String,
}

struct Agent {
    client: Client,
    network: Arc<PodNetwork>,
    api: SocketAddr,
    dir: PathBuf,
    images: BTreeMap<String, Image>,
    nodes: Mutex<BTreeMap<String, NodeState>>,
    pods: Mutex<HashMap<String, PodHandle>>,
    /// Pods bound here whose binding the watch has not shown yet (the scheduler's "assume").
    assumed: Mutex<HashMap<String, String>>,
    /// Main process ids by `namespace/name`, for tests that kill a container.
    pids: Mutex<HashMap<String, u32>>,
    http: reqwest::Client,
}

/// The harness's Nodes: see the module doc.
pub struct Kubelet {
    agent: Arc<Agent>,
    task: JoinHandle<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

impl Kubelet {
    /// Registers `nodes`, then schedules and runs pods until dropped.
    pub async fn start(
        cp: &ControlPlane,
        network: Arc<PodNetwork>,
        nodes: &[FakeNode],
    ) -> anyhow::Result<Self> {
        let client = client_from(&cp.kubeconfig).await?;
        let agent = Arc::new(Agent {
            client,
            network,
            api: cp.address,
            dir: cp.dir.join("pods"),
            images: known_images()?,
            nodes: Mutex::new(BTreeMap::new()),
            pods: Mutex::new(HashMap::new()),
            assumed: Mutex::new(HashMap::new()),
            pids: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(1))
                .build()?,
        });
        std::fs::create_dir_all(&agent.dir)?;
        for n in nodes {
            agent.register(n).await?;
        }
        let a = agent.clone();
        let task = tokio::spawn(async move { a.run().await });
        Ok(Self { agent, task })
    }

    /// Adds a Node while the cluster runs.
    pub async fn add_node(&self, node: &FakeNode) -> anyhow::Result<()> {
        self.agent.register(node).await
    }

    /// The address of `node`'s machine.
    pub fn node_ip(&self, node: &str) -> Option<Ipv4Addr> {
        lock(&self.agent.nodes).get(node).map(|n| n.host.ip)
    }

    /// The machine of `node` dies: every process of its pods is SIGKILLed and nothing about
    /// the Node or its pods is written again (its pods stay `Running` in the API, as they do
    /// when a real Node vanishes, until something notices).
    pub fn lose_node(&self, node: &str) {
        if let Some(n) = lock(&self.agent.nodes).get_mut(node) {
            n.lost = true;
        }
        let pods = lock(&self.agent.pods);
        for p in pods.values().filter(|p| p.node == node) {
            let _ = p.stop.send(true);
        }
    }

    /// The main process of the first container of pod `namespace/name`, while it runs.
    pub fn pid(&self, namespace: &str, name: &str) -> Option<u32> {
        lock(&self.agent.pids)
            .get(&format!("{namespace}/{name}"))
            .copied()
    }

    /// The log of container `container` of pod `namespace/name` (all restarts).
    pub fn log(&self, namespace: &str, name: &str, container: &str) -> String {
        std::fs::read_to_string(
            self.agent
                .dir
                .join(format!("{namespace}_{name}"))
                .join(format!("{container}.log")),
        )
        .unwrap_or_default()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.task.abort();
        // Every pod's processes, at once (the cluster is going away).
        let pods: Vec<PodHandle> = lock(&self.agent.pods).drain().map(|(_, p)| p).collect();
        for p in &pods {
            p.task.abort();
        }
        for pid in lock(&self.agent.pids).values() {
            kill_group(*pid, "KILL");
        }
        let nodes = std::mem::take(&mut *lock(&self.agent.nodes));
        // A moment for the kernel to reap them, then their machines go (the pod network
        // removes the pods' namespaces when it is dropped).
        std::thread::sleep(Duration::from_millis(100));
        for n in nodes.values() {
            self.agent.network.remove_host(&n.host);
        }
    }
}

fn kill_group(pid: u32, signal: &str) {
    let _ = std::process::Command::new("kill")
        .args([&format!("-{signal}"), "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

impl Agent {
    async fn register(&self, n: &FakeNode) -> anyhow::Result<()> {
        let host = self.network.add_host(&n.name)?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let obj: Node = serde_json::from_value(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": n.name,
                "labels": {
                    "kubernetes.io/hostname": n.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "topology.kubernetes.io/region": n.region,
                    "topology.kubernetes.io/zone": n.zone,
                },
            },
        }))?;
        nodes
            .create(&PostParams::default(), &obj)
            .await
            .with_context(|| format!("registering Node {}", n.name))?;
        let status = json!({ "status": {
            "capacity": {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": NODE_PODS},
            "allocatable": {"cpu": NODE_CPU, "memory": NODE_MEMORY, "pods": NODE_PODS},
            "addresses": [
                {"type": "InternalIP", "address": host.ip.to_string()},
                {"type": "Hostname", "address": n.name},
            ],
            "conditions": [{
                "type": "Ready", "status": "True", "reason": "KubeletReady",
                "message": "moim test kubelet is posting ready status",
                "lastHeartbeatTime": now_rfc3339(), "lastTransitionTime": now_rfc3339(),
            }],
            "nodeInfo": {
                "machineID": n.name, "systemUUID": n.name, "bootID": n.name,
                "kernelVersion": "", "osImage": "moim test kubelet",
                "containerRuntimeVersion": "moim://processes", "kubeletVersion": "v1.37.2",
                "kubeProxyVersion": "", "operatingSystem": "linux", "architecture": "amd64",
            },
        }});
        nodes
            .patch_status(&n.name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        // The admission plugin TaintNodesByCondition taints a new Node not-ready; the node
        // lifecycle controller lifts the taint once the Node is Ready. That controller is not
        // run here (it would evict pods of Nodes whose heartbeats it misses), so the harness
        // does its part.
        nodes
            .patch(
                &n.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"taints": null}})),
            )
            .await?;
        lock(&self.nodes).insert(n.name.clone(), NodeState { host, lost: false });
        Ok(())
    }

    async fn run(self: Arc<Self>) {
        let pods: Api<Pod> = Api::all(self.client.clone());
        let mut stream = watcher(pods, watcher::Config::default()).boxed();
        let mut known: HashMap<String, Pod> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p))) => {
                        known.insert(p.uid().unwrap_or_default(), p.clone());
                        self.clone().on_pod(p, &known).await;
                    }
                    Some(Ok(watcher::Event::Delete(p))) => {
                        let uid = p.uid().unwrap_or_default();
                        known.remove(&uid);
                        // Gone from the API (force-deleted): stop it at once.
                        if let Some(h) = lock(&self.pods).get(&uid) {
                            let _ = h.stop.send(true);
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::debug!(error = %e, "kubelet pod watch");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    None => return,
                },
                _ = tick.tick() => {
                    // Pods nothing fitted are tried again, as the scheduler does.
                    let pending: Vec<Pod> = known
                        .values()
                        .filter(|p| unscheduled(p) && !lock(&self.assumed).contains_key(&p.uid().unwrap_or_default()))
                        .cloned()
                        .collect();
                    for p in pending {
                        self.clone().on_pod(p, &known).await;
                    }
                    // Finished pod workers are forgotten.
                    lock(&self.pods).retain(|_, h| !h.task.is_finished());
                }
            }
        }
    }

    async fn on_pod(self: Arc<Self>, pod: Pod, known: &HashMap<String, Pod>) {
        let uid = pod.uid().unwrap_or_default();
        if unscheduled(&pod) {
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = self.final_delete(&pod).await;
                return;
            }
            if lock(&self.assumed).contains_key(&uid) {
                return;
            }
            if let Err(e) = self.schedule(&pod, known).await {
                tracing::debug!(pod = %key(&pod), error = %e, "not scheduled");
            }
            return;
        }
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        lock(&self.assumed).remove(&uid);
        let lost = match lock(&self.nodes).get(&node) {
            Some(n) => n.lost,
            None => return, // not one of ours
        };
        if lost {
            return;
        }
        let mut pods = lock(&self.pods);
        if let Some(h) = pods.get(&uid) {
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = h.stop.send(true);
            }
            return;
        }
        let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
        if matches!(phase, Some("Succeeded" | "Failed"))
            && pod.metadata.deletion_timestamp.is_none()
        {
            return;
        }
        let (stop, stop_rx) = watch::channel(pod.metadata.deletion_timestamp.is_some());
        let agent = self.clone();
        let p = pod.clone();
        let task = tokio::spawn(async move { agent.run_pod(p, stop_rx).await });
        pods.insert(uid, PodHandle { stop, task, node });
    }

    /// Binds `pod` to a Node that fits, or writes why none does.
    async fn schedule(&self, pod: &Pod, known: &HashMap<String, Pod>) -> anyhow::Result<()> {
        let spec = pod.spec.as_ref().context("pod without spec")?;
        let nodes: Api<Node> = Api::all(self.client.clone());
        let list = nodes.list(&Default::default()).await?;
        let assumed = lock(&self.assumed).clone();
        let on_node = |node: &str| -> Vec<&Pod> {
            known
                .values()
                .filter(|p| {
                    let uid = p.uid().unwrap_or_default();
                    let bound = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
                    (bound == Some(node) || assumed.get(&uid).map(String::as_str) == Some(node))
                        && !matches!(
                            p.status.as_ref().and_then(|s| s.phase.as_deref()),
                            Some("Succeeded" | "Failed")
                        )
                })
                .collect()
        };
        let mut reasons: BTreeMap<String, u32> = BTreeMap::new();
        let mut best: Option<(usize, String)> = None;
        for n in &list {
            let name = n.name_any();
            let lost = lock(&self.nodes).get(&name).is_none_or(|s| s.lost);
            let why = if lost {
                Some("node(s) were not ready".to_owned())
            } else {
                fits(pod, spec, n, &on_node(&name))
            };
            match why {
                Some(r) => *reasons.entry(r).or_default() += 1,
                None => {
                    let same = spread_score(pod, spec, n, &list.items, &on_node);
                    if best
                        .as_ref()
                        .is_none_or(|(b, bn)| same < *b || (same == *b && name < *bn))
                    {
                        best = Some((same, name));
                    }
                }
            }
        }
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let Some((_, node)) = best else {
            let detail = reasons
                .iter()
                .map(|(r, n)| format!("{n} {r}"))
                .collect::<Vec<_>>()
                .join(", ");
            let message = format!("0/{} nodes are available: {detail}.", list.items.len());
            let status = json!({"status": {"conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": now_rfc3339(),
            }]}});
            let already = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| {
                    c.iter().any(|c| {
                        c.type_ == "PodScheduled" && c.message.as_deref() == Some(message.as_str())
                    })
                });
            if !already {
                pods.patch_status(
                    &pod.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(&status),
                )
                .await?;
            }
            bail!("{message}");
        };
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(pod.name_any()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Node".into()),
                name: Some(node.clone()),
                ..ObjectReference::default()
            },
        };
        let _: Value = pods
            .create_subresource("binding", &pod.name_any(), &PostParams::default(), &binding)
            .await
            .with_context(|| format!("binding {} to {node}", key(pod)))?;
        lock(&self.assumed).insert(pod.uid().unwrap_or_default(), node);
        Ok(())
    }

    /// Deletes a pod for good (what the kubelet does once its containers have stopped).
    async fn final_delete(&self, pod: &Pod) -> anyhow::Result<()> {
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.uid(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match pods.delete(&pod.name_any(), &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    fn node_lost(&self, node: &str) -> bool {
        lock(&self.nodes).get(node).is_none_or(|n| n.lost)
    }

    /// One pod, from start to its final delete.
    async fn run_pod(self: Arc<Self>, pod: Pod, mut stop: watch::Receiver<bool>) {
        let k = key(&pod);
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let mut run = match PodRun::prepare(&self, &pod).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(pod = %k, error = %e, "pod cannot start");
                let _ = self
                    .write_status(
                        &pod,
                        &waiting_status(&pod, "CreateContainerConfigError", &e.to_string()),
                    )
                    .await;
                // Kept until deleted; a deletion finishes it.
                let _ = stop.wait_for(|s| *s).await;
                if !self.node_lost(&node) {
                    let _ = self.final_delete(&pod).await;
                }
                return;
            }
        };
        run.main_loop(&self, &mut stop).await;
        let lost = self.node_lost(&node);
        if lost {
            run.kill_all().await;
        } else {
            run.terminate(&self).await;
        }
        lock(&self.pids).remove(&k);
        if let Some(ns) = &run.own_netns {
            self.network.remove_host(ns);
        }
        if !lost {
            let _ = self.final_delete(&pod).await;
        }
    }

    async fn write_status(&self, pod: &Pod, status: &Value) -> anyhow::Result<()> {
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .unwrap_or_default();
        if self.node_lost(node) {
            return Ok(());
        }
        let pods: Api<Pod> =
            Api::namespaced(self.client.clone(), &pod.namespace().unwrap_or_default());
        match pods
            .patch_status(
                &pod.name_any(),
                &PatchParams::default(),
                &Patch::Merge(status),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn unscheduled(p: &Pod) -> bool {
    p.spec.as_ref().is_some_and(|s| s.node_name.is_none())
        && !matches!(
            p.status.as_ref().and_then(|s| s.phase.as_deref()),
            Some("Succeeded" | "Failed")
        )
}

/// How crowded `n` is for `pod`: with `topologySpreadConstraints`, the pods each constraint
/// selects in `n`'s domain of its topology key (the scheduler's PodTopologySpread score);
/// without, the pods on `n`. Lower is better.
fn spread_score<'a>(
    pod: &Pod,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    n: &Node,
    nodes: &[Node],
    on_node: &dyn Fn(&str) -> Vec<&'a Pod>,
) -> usize {
    let Some(constraints) = spec
        .topology_spread_constraints
        .as_ref()
        .filter(|c| !c.is_empty())
    else {
        return on_node(&n.name_any()).len();
    };
    let ns = pod.namespace();
    constraints
        .iter()
        .map(|c| {
            let Some(domain) = n.labels().get(&c.topology_key) else {
                return 0;
            };
            let wanted = c
                .label_selector
                .as_ref()
                .and_then(|s| s.match_labels.clone())
                .unwrap_or_default();
            nodes
                .iter()
                .filter(|m| m.labels().get(&c.topology_key) == Some(domain))
                .flat_map(|m| on_node(&m.name_any()))
                .filter(|p| {
                    p.namespace() == ns && wanted.iter().all(|(k, v)| p.labels().get(k) == Some(v))
                })
                .count()
        })
        .sum()
}

/// Why `pod` does not fit on node `n` that already runs `others`; `None` when it fits.
fn fits(
    pod: &Pod,
    spec: &k8s_openapi::api::core::v1::PodSpec,
    n: &Node,
    others: &[&Pod],
) -> Option<String> {
    let labels = n.labels();
    if let Some(sel) = &spec.node_selector
        && sel.iter().any(|(k, v)| labels.get(k) != Some(v))
    {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    if let Some(terms) = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })
    {
        let term_ok = |t: &k8s_openapi::api::core::v1::NodeSelectorTerm| {
            t.match_expressions.iter().flatten().all(|e| {
                let v = labels.get(&e.key);
                let vals = e.values.clone().unwrap_or_default();
                match e.operator.as_str() {
                    "In" => v.is_some_and(|v| vals.contains(v)),
                    "NotIn" => v.is_none_or(|v| !vals.contains(v)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    _ => false,
                }
            })
        };
        if !terms.node_selector_terms.iter().any(term_ok) {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    let tolerations = spec.tolerations.clone().unwrap_or_default();
    for t in n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default()
    {
        if t.effect == "PreferNoSchedule" {
            continue;
        }
        let tolerated = tolerations.iter().any(|tol| {
            let key_ok = tol
                .key
                .as_deref()
                .is_none_or(|k| k.is_empty() || k == t.key);
            let op = tol.operator.as_deref().unwrap_or("Equal");
            let val_ok = op == "Exists" || tol.value.as_deref() == t.value.as_deref();
            let eff_ok = tol
                .effect
                .as_deref()
                .is_none_or(|e| e.is_empty() || e == t.effect);
            key_ok && val_ok && eff_ok
        });
        if !tolerated {
            return Some(format!("node(s) had untolerated taint {{{}}}", t.key));
        }
    }
    let used: Vec<(i32, String)> = others.iter().flat_map(|p| host_ports(p)).collect();
    if host_ports(pod).iter().any(|hp| used.contains(hp)) {
        return Some("node(s) didn't have free ports for the requested pod ports".into());
    }
    let alloc = n
        .status
        .as_ref()
        .and_then(|s| s.allocatable.clone())
        .unwrap_or_default();
    for (res, reason) in [
        ("cpu", "Insufficient cpu"),
        ("memory", "Insufficient memory"),
    ] {
        let cap = alloc.get(res).map_or(0.0, quantity);
        let want = requests(pod, res) + others.iter().map(|p| requests(p, res)).sum::<f64>();
        if want > cap {
            return Some(reason.into());
        }
    }
    None
}

/// Host ports a pod takes on its node: `hostPort`s, and every container port with
/// `hostNetwork`.
fn host_ports(p: &Pod) -> Vec<(i32, String)> {
    let Some(spec) = p.spec.as_ref() else {
        return Vec::new();
    };
    let host = spec.host_network == Some(true);
    spec.containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|port| {
            let hp = port.host_port.or(host.then_some(port.container_port))?;
            Some((hp, port.protocol.clone().unwrap_or_else(|| "TCP".into())))
        })
        .collect()
}

/// A resource quantity as a number (cores, bytes).
fn quantity(q: &Quantity) -> f64 {
    let s = q.0.trim();
    let (num, mult) = [
        ("Ki", 1024f64),
        ("Mi", 1024f64.powi(2)),
        ("Gi", 1024f64.powi(3)),
        ("Ti", 1024f64.powi(4)),
        ("m", 0.001),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
    ]
    .iter()
    .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((s, 1.0));
    num.parse::<f64>().unwrap_or(0.0) * mult
}

/// A pod's request of `res`: its containers' requests (a limit alone counts as the request,
/// as the API server defaults it).
fn requests(p: &Pod, res: &str) -> f64 {
    p.spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter_map(|c| {
            let r = c.resources.as_ref()?;
            r.requests
                .as_ref()
                .and_then(|m| m.get(res))
                .or_else(|| r.limits.as_ref().and_then(|m| m.get(res)))
                .map(quantity)
        })
        .sum()
}

/// A container process and its probes.
struct ContainerRun {
    spec: Container,
    env: Vec<(String, String)>,
    argv: Vec<String>,
    child: Option<Child>,
    restarts: u32,
    started_at: String,
    /// When the running process started.
    started: Option<Instant>,
    ready: bool,
    readiness: ProbeCounter,
    liveness: ProbeCounter,
    last_exit: Option<(i32, String)>,
    next_start: Option<Instant>,
    log: PathBuf,
}

#[derive(Default)]
struct ProbeCounter {
    failures: i32,
    successes: i32,
    last: Option<Instant>,
}

struct PodRun {
    pod: Pod,
    netns: String,
    pod_ip: Ipv4Addr,
    host_ip: Ipv4Addr,
    own_netns: Option<NetHost>,
    dir: PathBuf,
    mounts: Vec<(String, PathBuf, bool)>,
    run_as: Option<(i64, i64)>,
    containers: Vec<ContainerRun>,
    started: String,
}

/// A status for a pod whose containers cannot start.
fn waiting_status(pod: &Pod, reason: &str, message: &str) -> Value {
    let containers: Vec<Value> = pod
        .spec
        .iter()
        .flat_map(|s| s.containers.iter())
        .map(|c| {
            json!({
                "name": c.name, "image": c.image, "imageID": "", "ready": false, "restartCount": 0,
                "started": false, "state": {"waiting": {"reason": reason, "message": message}},
            })
        })
        .collect();
    json!({"status": {"phase": "Pending", "containerStatuses": containers}})
}

/// Quotes `s` for `sh`.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Expands `$(VAR)` from `env` (`$$(VAR)` stays literal), as Kubernetes does in command and
/// args.
fn expand(s: &str, env: &[(String, String)]) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find("$(") {
        if i > 0 && rest.as_bytes()[i - 1] == b'$' {
            out.push_str(&rest[..i - 1]);
            out.push_str("$(");
            rest = &rest[i + 2..];
            continue;
        }
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        match after.find(')') {
            Some(j) => {
                let name = &after[..j];
                match env.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => out.push_str(v),
                    None => {
                        out.push_str("$(");
                        out.push_str(name);
                        out.push(')');
                    }
                }
                rest = &after[j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

impl PodRun {
    /// Network, volumes, env and command lines, before anything runs.
    async fn prepare(agent: &Agent, pod: &Pod) -> anyhow::Result<Self> {
        let spec = pod.spec.clone().context("pod without spec")?;
        if spec.init_containers.as_ref().is_some_and(|c| !c.is_empty()) {
            bail!("the test kubelet runs no init containers");
        }
        let ns = pod.namespace().unwrap_or_default();
        let node = spec.node_name.clone().unwrap_or_default();
        let (node_host, node_lost) = {
            let nodes = lock(&agent.nodes);
            let n = nodes
                .get(&node)
                .context("not one of this kubelet's nodes")?;
            (n.host.clone(), n.lost)
        };
        if node_lost {
            bail!("node {node} is gone");
        }
        let dir = agent.dir.join(format!("{ns}_{}", pod.name_any()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let client = agent.client.clone();

        // Volumes, each a folder the containers see at their mount paths.
        let mut volume_dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
        for v in spec.volumes.iter().flatten() {
            let d = dir.join("volumes").join(&v.name);
            std::fs::create_dir_all(&d)?;
            write_volume(&client, pod, &ns, v, &d).await?;
            volume_dirs.insert(v.name.clone(), d);
        }
        let mut mounts = Vec::new();
        for c in &spec.containers {
            for m in c.volume_mounts.iter().flatten() {
                let src = volume_dirs
                    .get(&m.name)
                    .with_context(|| format!("volume {} is not defined", m.name))?;
                let src = match &m.sub_path {
                    Some(sp) if !sp.is_empty() => src.join(sp),
                    _ => src.clone(),
                };
                mounts.push((m.mount_path.clone(), src, m.read_only == Some(true)));
            }
        }

        let (own_netns, netns, pod_ip) = if spec.host_network == Some(true) {
            (None, node_host.netns.clone(), node_host.ip)
        } else {
            let h = agent.network.add_host(&pod.name_any())?;
            (Some(h.clone()), h.netns, h.ip)
        };
        let psc = spec.security_context.clone().unwrap_or_default();
        let mut containers = Vec::new();
        let mut run_as = None;
        for c in &spec.containers {
            let image = c.image.clone().unwrap_or_default();
            let img = agent.images.get(image_name(&image)).with_context(|| {
                format!(
                    "image {image}: the test kubelet runs only this repository's images ({})",
                    agent.images.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })?;
            let mut env = vec![
                (
                    "PATH".to_owned(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                ),
                ("HOSTNAME".to_owned(), pod.name_any()),
                (
                    "KUBERNETES_SERVICE_HOST".to_owned(),
                    agent.api.ip().to_string(),
                ),
                (
                    "KUBERNETES_SERVICE_PORT".to_owned(),
                    agent.api.port().to_string(),
                ),
                (
                    "KUBERNETES_SERVICE_PORT_HTTPS".to_owned(),
                    agent.api.port().to_string(),
                ),
                ("KUBERNETES_PORT".to_owned(), format!("tcp://{}", agent.api)),
            ];
            for from in c.env_from.iter().flatten() {
                let prefix = from.prefix.clone().unwrap_or_default();
                if let Some(s) = &from.secret_ref {
                    let api: Api<Secret> = Api::namespaced(client.clone(), &ns);
                    let secret = api.get(&s.name).await?;
                    for (k, v) in secret.data.unwrap_or_default() {
                        env.push((format!("{prefix}{k}"), String::from_utf8_lossy(&v.0).into()));
                    }
                }
                if let Some(s) = &from.config_map_ref {
                    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
                    for (k, v) in api.get(&s.name).await?.data.unwrap_or_default() {
                        env.push((format!("{prefix}{k}"), v));
                    }
                }
            }
            for e in c.env.iter().flatten() {
                let v = env_value(&client, pod, &ns, e, &node_host, pod_ip, &env).await?;
                env.push((e.name.clone(), v));
            }
            // command replaces the entrypoint and drops CMD; args replaces CMD.
            let mut argv = match &c.command {
                Some(cmd) if !cmd.is_empty() => cmd.clone(),
                _ => img.entrypoint.clone(),
            };
            match (&c.command, &c.args) {
                (_, Some(args)) => argv.extend(args.iter().cloned()),
                (Some(cmd), None) if !cmd.is_empty() => {}
                _ => argv.extend(img.cmd.iter().cloned()),
            }
            let argv: Vec<String> = argv.iter().map(|a| expand(a, &env)).collect();
            if argv.is_empty() {
                bail!("container {} has no command", c.name);
            }
            let csc = c.security_context.clone().unwrap_or_default();
            let uid = csc.run_as_user.or(psc.run_as_user);
            let gid = csc.run_as_group.or(psc.run_as_group).or(uid);
            if let (Some(u), Some(g)) = (uid, gid) {
                run_as = Some((u, g));
            }
            containers.push(ContainerRun {
                spec: c.clone(),
                env,
                argv,
                child: None,
                restarts: 0,
                started_at: String::new(),
                started: None,
                ready: false,
                readiness: ProbeCounter::default(),
                liveness: ProbeCounter::default(),
                last_exit: None,
                next_start: Some(Instant::now()),
                log: dir.join(format!("{}.log", c.name)),
            });
        }
        Ok(Self {
            pod: pod.clone(),
            netns,
            pod_ip,
            host_ip: node_host.ip,
            own_netns,
            dir,
            mounts,
            run_as,
            containers,
            started: now_rfc3339(),
        })
    }

    /// The script that enters the pod's mount namespace, mounts the image's binaries and the
    /// volumes, drops to the pod's user and runs `argv`.
    fn script(&self, agent: &Agent, argv: &[String]) -> String {
        let mut s = String::from("set -e\nmount -t tmpfs -o mode=0755 tmpfs /usr/local/bin\n");
        for img in agent.images.values() {
            if let Some(path) = img.entrypoint.first() {
                s += &format!(
                    ": > {p}\nmount --bind {b} {p}\n",
                    p = sh_quote(path),
                    b = sh_quote(&img.binary.to_string_lossy())
                );
            }
        }
        for (path, src, ro) in &self.mounts {
            let p = sh_quote(path);
            if src.is_dir() {
                s += &format!("mkdir -p {p}\n");
            } else {
                s += &format!("mkdir -p \"$(dirname {p})\"\n[ -e {p} ] || : > {p}\n");
            }
            s += &format!("mount --bind {} {p}\n", sh_quote(&src.to_string_lossy()));
            if *ro {
                s += &format!("mount -o remount,bind,ro {p}\n");
            }
        }
        // The process dies with the harness even when the test is killed without unwinding
        // (set after the change of user, which would clear it).
        s += "cd /\nexec setpriv --pdeathsig KILL ";
        if let Some((u, g)) = self.run_as.filter(|(u, _)| *u != 0) {
            s += &format!("--reuid={u} --regid={g} --clear-groups ");
        }
        s += "-- ";
        s += &argv
            .iter()
            .map(|a| sh_quote(a))
            .collect::<Vec<_>>()
            .join(" ");
        s.push('\n');
        s
    }

    fn start(&mut self, agent: &Agent, i: usize) -> anyhow::Result<()> {
        let script = self.script(agent, &self.containers[i].argv);
        let c = &mut self.containers[i];
        let file = self.dir.join(format!("{}.sh", c.spec.name));
        std::fs::write(&file, script)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&c.log)?;
        let child = Command::new("ip")
            .args(["netns", "exec", &self.netns, "sh"])
            .arg(&file)
            .env_clear()
            .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context("starting a container")?;
        if i == 0
            && let Some(pid) = child.id()
        {
            lock(&agent.pids).insert(key(&self.pod), pid);
        }
        c.child = Some(child);
        c.started_at = now_rfc3339();
        c.started = Some(Instant::now());
        c.ready = false;
        c.readiness = ProbeCounter::default();
        c.liveness = ProbeCounter::default();
        c.next_start = None;
        Ok(())
    }

    fn restart_policy(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always")
    }

    async fn main_loop(&mut self, agent: &Agent, stop: &mut watch::Receiver<bool>) {
        let mut last_status = Value::Null;
        loop {
            if *stop.borrow() {
                return;
            }
            let now = Instant::now();
            for i in 0..self.containers.len() {
                if self.containers[i].next_start.is_some_and(|t| t <= now)
                    && let Err(e) = self.start(agent, i)
                {
                    tracing::warn!(pod = %key(&self.pod), error = %e, "container did not start");
                    self.containers[i].last_exit = Some((128, e.to_string()));
                }
            }
            // Exits.
            let policy = self.restart_policy().to_owned();
            for c in &mut self.containers {
                let Some(child) = c.child.as_mut() else {
                    continue;
                };
                if let Ok(Some(st)) = child.try_wait() {
                    let code = st.code().unwrap_or(128 + st.signal_number());
                    c.child = None;
                    c.started = None;
                    c.ready = false;
                    c.last_exit = Some((
                        code,
                        if code == 0 {
                            "Completed".into()
                        } else {
                            "Error".into()
                        },
                    ));
                    let again = policy == "Always" || (policy == "OnFailure" && code != 0);
                    if again {
                        c.restarts += 1;
                        let backoff =
                            Duration::from_secs(10u64 << c.restarts.saturating_sub(1).min(5))
                                .min(Duration::from_secs(300));
                        // The first restart is quick: tests kill a process and expect it back.
                        c.next_start = Some(
                            Instant::now()
                                + if c.restarts == 1 {
                                    Duration::from_secs(1)
                                } else {
                                    backoff
                                },
                        );
                    }
                }
            }
            // Probes.
            for i in 0..self.containers.len() {
                if self.containers[i].child.is_none() {
                    continue;
                }
                let spec = self.containers[i].spec.clone();
                if let Some(p) = &spec.readiness_probe {
                    if let Some(ok) = self.probe(agent, i, p, true).await {
                        self.containers[i].ready = ok;
                    }
                } else {
                    self.containers[i].ready = true;
                }
                if let Some(p) = &spec.liveness_probe
                    && self.probe(agent, i, p, false).await == Some(false)
                    && let Some(child) = self.containers[i].child.as_ref()
                    && let Some(pid) = child.id()
                {
                    tracing::info!(pod = %key(&self.pod), container = %spec.name, "liveness probe failed; killing");
                    kill_group(pid, "KILL");
                }
            }
            let status = self.status();
            if status != last_status && agent.write_status(&self.pod, &status).await.is_ok() {
                last_status = status;
            }
            let all_done = self
                .containers
                .iter()
                .all(|c| c.child.is_none() && c.next_start.is_none());
            if all_done {
                // Terminated for good: the pod stays until it is deleted.
                let _ = stop.wait_for(|s| *s).await;
                return;
            }
            tokio::select! {
                _ = stop.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Runs probe `p` of container `i` when due (every second, after `initialDelaySeconds`);
    /// `Some(result)` once its thresholds decide.
    async fn probe(&mut self, agent: &Agent, i: usize, p: &Probe, readiness: bool) -> Option<bool> {
        let secs = |v: Option<i32>, d: i32| {
            Duration::from_secs(u64::try_from(v.unwrap_or(d)).unwrap_or(0))
        };
        let c = &self.containers[i];
        let since = c.started?;
        if since.elapsed() < secs(p.initial_delay_seconds, 0) {
            return None;
        }
        let counter = if readiness { &c.readiness } else { &c.liveness };
        if counter
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return None;
        }
        let timeout = secs(p.timeout_seconds, 1).max(Duration::from_secs(1));
        let ok = self.run_probe(agent, i, p, timeout).await;
        let c = &mut self.containers[i];
        let counter = if readiness {
            &mut c.readiness
        } else {
            &mut c.liveness
        };
        counter.last = Some(Instant::now());
        if ok {
            counter.successes += 1;
            counter.failures = 0;
            (counter.successes >= p.success_threshold.unwrap_or(1)).then_some(true)
        } else {
            counter.failures += 1;
            counter.successes = 0;
            (counter.failures >= p.failure_threshold.unwrap_or(3)).then_some(false)
        }
    }

    async fn run_probe(&self, agent: &Agent, i: usize, p: &Probe, timeout: Duration) -> bool {
        let c = &self.containers[i];
        let port_of = |port: &IntOrString| -> Option<u16> {
            match port {
                IntOrString::Int(n) => u16::try_from(*n).ok(),
                IntOrString::String(name) => c
                    .spec
                    .ports
                    .iter()
                    .flatten()
                    .find(|p| p.name.as_deref() == Some(name.as_str()))
                    .and_then(|p| u16::try_from(p.container_port).ok()),
            }
        };
        if let Some(h) = &p.http_get {
            let Some(port) = port_of(&h.port) else {
                return false;
            };
            let host = h.host.clone().unwrap_or_else(|| self.pod_ip.to_string());
            let url = format!(
                "{}://{host}:{port}{}",
                h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase(),
                h.path.as_deref().unwrap_or("/")
            );
            return matches!(
                tokio::time::timeout(timeout, agent.http.get(&url).send()).await,
                Ok(Ok(r)) if (200..400).contains(&r.status().as_u16())
            );
        }
        if let Some(t) = &p.tcp_socket {
            let Some(port) = port_of(&t.port) else {
                return false;
            };
            return matches!(
                tokio::time::timeout(
                    timeout,
                    tokio::net::TcpStream::connect((IpAddr::V4(self.pod_ip), port))
                )
                .await,
                Ok(Ok(_))
            );
        }
        if let Some(e) = &p.exec {
            let argv = e.command.clone().unwrap_or_default();
            return matches!(
                tokio::time::timeout(timeout, self.exec(i, &argv)).await,
                Ok(Ok(true))
            );
        }
        false
    }

    /// Runs `argv` in container `i`'s namespaces as its user; whether it exited 0.
    async fn exec(&self, i: usize, argv: &[String]) -> anyhow::Result<bool> {
        let c = &self.containers[i];
        let pid = c
            .child
            .as_ref()
            .and_then(Child::id)
            .context("container not running")?;
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &pid.to_string(), "-n", "-m", "--"]);
        if let Some((u, g)) = self.run_as.filter(|(u, _)| *u != 0) {
            cmd.args([
                "setpriv",
                &format!("--reuid={u}"),
                &format!("--regid={g}"),
                "--clear-groups",
                "--",
            ]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&c.log)?;
        let st = cmd
            .args(argv)
            .env_clear()
            .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .status()
            .await?;
        Ok(st.success())
    }

    fn status(&self) -> Value {
        let running = self.containers.iter().any(|c| c.child.is_some());
        let all_ready = !self.containers.is_empty() && self.containers.iter().all(|c| c.ready);
        let done = self
            .containers
            .iter()
            .all(|c| c.child.is_none() && c.next_start.is_none());
        let phase = if done {
            if self
                .containers
                .iter()
                .all(|c| c.last_exit.as_ref().is_some_and(|(code, _)| *code == 0))
            {
                "Succeeded"
            } else {
                "Failed"
            }
        } else if running || self.containers.iter().any(|c| c.restarts > 0) {
            "Running"
        } else {
            "Pending"
        };
        let tf = |b: bool| if b { "True" } else { "False" };
        let containers: Vec<Value> = self
            .containers
            .iter()
            .map(|c| {
                let state = match (&c.child, &c.last_exit) {
                    (Some(child), _) => json!({"running": {"startedAt": c.started_at}, "_pid": child.id()}),
                    (None, Some((code, reason))) if c.next_start.is_none() => json!({"terminated": {
                        "exitCode": code, "reason": reason, "startedAt": c.started_at, "finishedAt": now_rfc3339()}}),
                    (None, Some((code, _))) => json!({"waiting": {"reason": "CrashLoopBackOff",
                        "message": format!("back-off restarting failed container (exit code {code})")}}),
                    (None, None) => json!({"waiting": {"reason": "ContainerCreating"}}),
                };
                let mut state = state;
                if let Some(o) = state.as_object_mut() {
                    o.remove("_pid");
                }
                json!({
                    "name": c.spec.name, "image": c.spec.image, "imageID": "", "ready": c.ready,
                    "started": c.child.is_some(), "restartCount": c.restarts, "state": state,
                    "containerID": format!("moim://{}", c.spec.name),
                })
            })
            .collect();
        let ready = all_ready && !done;
        let conditions = json!([
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": self.started},
            {"type": "Initialized", "status": "True", "lastTransitionTime": self.started},
            {"type": "ContainersReady", "status": tf(ready)},
            {"type": "Ready", "status": tf(ready)},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": self.started},
        ]);
        json!({"status": {
            "phase": phase,
            "hostIP": self.host_ip.to_string(), "hostIPs": [{"ip": self.host_ip.to_string()}],
            "podIP": self.pod_ip.to_string(), "podIPs": [{"ip": self.pod_ip.to_string()}],
            "startTime": self.started,
            "conditions": conditions,
            "containerStatuses": containers,
        }})
    }

    /// The kubelet's termination: preStop hooks, SIGTERM, the grace period, SIGKILL.
    async fn terminate(&mut self, agent: &Agent) {
        let grace = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or(self
                .pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds))
            .unwrap_or(30)
            .max(0);
        // The object as it is now: the deletion's grace period may be shorter than the spec's.
        let pods: Api<Pod> = Api::namespaced(
            agent.client.clone(),
            &self.pod.namespace().unwrap_or_default(),
        );
        let grace = match pods.get_opt(&self.pod.name_any()).await {
            Ok(Some(p)) => p.metadata.deletion_grace_period_seconds.unwrap_or(grace),
            _ => grace,
        };
        let deadline = Instant::now() + Duration::from_secs(u64::try_from(grace).unwrap_or(0));
        for i in 0..self.containers.len() {
            let hook = self.containers[i]
                .spec
                .lifecycle
                .as_ref()
                .and_then(|l| l.pre_stop.as_ref())
                .and_then(|h| h.exec.as_ref())
                .and_then(|e| e.command.clone());
            if let Some(argv) = hook
                && self.containers[i].child.is_some()
            {
                let left = deadline.saturating_duration_since(Instant::now());
                let _ = tokio::time::timeout(left, self.exec(i, &argv)).await;
            }
        }
        for c in &self.containers {
            if let Some(pid) = c.child.as_ref().and_then(Child::id) {
                kill_group(pid, "TERM");
            }
        }
        for c in &mut self.containers {
            if let Some(child) = c.child.as_mut() {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, child.wait()).await.is_err()
                    && let Some(pid) = child.id()
                {
                    kill_group(pid, "KILL");
                    let _ = child.wait().await;
                }
            }
        }
    }

    async fn kill_all(&mut self) {
        for c in &mut self.containers {
            if let Some(child) = c.child.as_mut() {
                if let Some(pid) = child.id() {
                    kill_group(pid, "KILL");
                }
                let _ = child.wait().await;
            }
        }
    }
}

trait SignalNumber {
    fn signal_number(&self) -> i32;
}

impl SignalNumber for std::process::ExitStatus {
    fn signal_number(&self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        self.signal().unwrap_or(0)
    }
}

/// Writes volume `v` of `pod` into `dir`.
async fn write_volume(
    client: &Client,
    pod: &Pod,
    ns: &str,
    v: &Volume,
    dir: &Path,
) -> anyhow::Result<()> {
    let put = |name: &str, bytes: &[u8], mode: Option<i32>| -> anyhow::Result<()> {
        let p = dir.join(name);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(&p, bytes)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            &p,
            std::fs::Permissions::from_mode(u32::try_from(mode.unwrap_or(0o644)).unwrap_or(0o644)),
        )?;
        Ok(())
    };
    if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let secret = api
            .get(&name)
            .await
            .with_context(|| format!("secret {name}"))?;
        let data = secret.data.unwrap_or_default();
        match &s.items {
            Some(items) => {
                for it in items {
                    let b = data
                        .get(&it.key)
                        .with_context(|| format!("secret {name} has no key {}", it.key))?;
                    put(&it.path, &b.0, it.mode.or(s.default_mode))?;
                }
            }
            None => {
                for (k, b) in &data {
                    put(k, &b.0, s.default_mode)?;
                }
            }
        }
    } else if let Some(c) = &v.config_map {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let cm = api
            .get(&c.name)
            .await
            .with_context(|| format!("configmap {}", c.name))?;
        for (k, val) in cm.data.unwrap_or_default() {
            if c.items
                .as_ref()
                .is_none_or(|items| items.iter().any(|i| i.key == k))
            {
                let path = c
                    .items
                    .iter()
                    .flatten()
                    .find(|i| i.key == k)
                    .map_or(k.clone(), |i| i.path.clone());
                put(&path, val.as_bytes(), c.default_mode)?;
            }
        }
    } else if let Some(p) = &v.projected {
        for src in p.sources.iter().flatten() {
            if let Some(t) = &src.service_account_token {
                let sa = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.service_account_name.clone())
                    .unwrap_or_else(|| "default".into());
                let api: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
                let req = TokenRequest {
                    spec: TokenRequestSpec {
                        audiences: t.audience.clone().into_iter().collect(),
                        expiration_seconds: t.expiration_seconds.or(Some(3607)),
                        bound_object_ref: Some(BoundObjectReference {
                            api_version: Some("v1".into()),
                            kind: Some("Pod".into()),
                            name: Some(pod.name_any()),
                            uid: pod.uid(),
                        }),
                    },
                    ..TokenRequest::default()
                };
                let out: TokenRequest = api
                    .create_subresource("token", &sa, &PostParams::default(), &req)
                    .await
                    .with_context(|| format!("TokenRequest for {ns}/{sa}"))?;
                let token = out.status.map(|s| s.token).unwrap_or_default();
                put(&t.path, token.as_bytes(), p.default_mode)?;
            }
            if let Some(c) = &src.config_map {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
                let cm = api
                    .get(&c.name)
                    .await
                    .with_context(|| format!("configmap {}", c.name))?;
                let data = cm.data.unwrap_or_default();
                for it in c.items.iter().flatten() {
                    if let Some(val) = data.get(&it.key) {
                        put(&it.path, val.as_bytes(), it.mode.or(p.default_mode))?;
                    }
                }
            }
            if let Some(d) = &src.downward_api {
                for it in d.items.iter().flatten() {
                    if let Some(f) = &it.field_ref {
                        put(
                            &it.path,
                            field(pod, &f.field_path, None, None).as_bytes(),
                            it.mode.or(p.default_mode),
                        )?;
                    }
                }
            }
            if let Some(s) = &src.secret {
                let api: Api<Secret> = Api::namespaced(client.clone(), ns);
                let data = api.get(&s.name).await?.data.unwrap_or_default();
                for (k, b) in &data {
                    let path = s
                        .items
                        .iter()
                        .flatten()
                        .find(|i| &i.key == k)
                        .map(|i| i.path.clone());
                    if s.items.is_none() || path.is_some() {
                        put(&path.unwrap_or_else(|| k.clone()), &b.0, p.default_mode)?;
                    }
                }
            }
        }
    } else if let Some(d) = &v.downward_api {
        for it in d.items.iter().flatten() {
            if let Some(f) = &it.field_ref {
                put(
                    &it.path,
                    field(pod, &f.field_path, None, None).as_bytes(),
                    it.mode.or(d.default_mode),
                )?;
            }
        }
    } else if v.empty_dir.is_some() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))?;
    } else {
        bail!(
            "volume {}: the test kubelet supports Secret, ConfigMap, projected, downwardAPI and emptyDir volumes",
            v.name
        );
    }
    Ok(())
}

/// A downward-API field of `pod`.
fn field(pod: &Pod, path: &str, host_ip: Option<Ipv4Addr>, pod_ip: Option<Ipv4Addr>) -> String {
    let label = |m: &Option<BTreeMap<String, String>>, k: &str| {
        m.as_ref()
            .and_then(|m| m.get(k).cloned())
            .unwrap_or_default()
    };
    match path {
        "metadata.name" => pod.name_any(),
        "metadata.namespace" => pod.namespace().unwrap_or_default(),
        "metadata.uid" => pod.uid().unwrap_or_default(),
        "spec.nodeName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default(),
        "spec.serviceAccountName" => pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_default(),
        "status.hostIP" | "status.hostIPs" => host_ip.map(|i| i.to_string()).unwrap_or_default(),
        "status.podIP" | "status.podIPs" => pod_ip.map(|i| i.to_string()).unwrap_or_default(),
        p => {
            if let Some(k) = p
                .strip_prefix("metadata.labels['")
                .and_then(|r| r.strip_suffix("']"))
            {
                label(&pod.metadata.labels, k)
            } else if let Some(k) = p
                .strip_prefix("metadata.annotations['")
                .and_then(|r| r.strip_suffix("']"))
            {
                label(&pod.metadata.annotations, k)
            } else {
                String::new()
            }
        }
    }
}

/// The value of env var `e`.
async fn env_value(
    client: &Client,
    pod: &Pod,
    ns: &str,
    e: &EnvVar,
    node: &NetHost,
    pod_ip: Ipv4Addr,
    earlier: &[(String, String)],
) -> anyhow::Result<String> {
    if let Some(v) = &e.value {
        return Ok(expand(v, earlier));
    }
    let Some(from) = &e.value_from else {
        return Ok(String::new());
    };
    if let Some(f) = &from.field_ref {
        return Ok(field(pod, &f.field_path, Some(node.ip), Some(pod_ip)));
    }
    if let Some(s) = &from.secret_key_ref {
        let api: Api<Secret> = Api::namespaced(client.clone(), ns);
        let secret = match api.get_opt(&s.name).await? {
            Some(s) => s,
            None if s.optional == Some(true) => return Ok(String::new()),
            None => bail!("secret {} not found (env {})", s.name, e.name),
        };
        return match secret.data.unwrap_or_default().get(&s.key) {
            Some(b) => Ok(String::from_utf8_lossy(&b.0).into_owned()),
            None if s.optional == Some(true) => Ok(String::new()),
            None => bail!("secret {} has no key {} (env {})", s.name, s.key, e.name),
        };
    }
    if let Some(c) = &from.config_map_key_ref {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
        let cm = api.get(&c.name).await?;
        return cm
            .data
            .unwrap_or_default()
            .get(&c.key)
            .cloned()
            .with_context(|| format!("configmap {} has no key {}", c.name, c.key));
    }
    if let Some(r) = &from.resource_field_ref {
        let c = pod
            .spec
            .iter()
            .flat_map(|s| s.containers.iter())
            .find(|c| r.container_name.as_deref().is_none_or(|n| n == c.name));
        let (kind, res) = r
            .resource
            .split_once('.')
            .unwrap_or(("limits", r.resource.as_str()));
        let q = c.and_then(|c| c.resources.as_ref()).and_then(|rr| {
            if kind == "limits" {
                rr.limits.as_ref()
            } else {
                rr.requests.as_ref()
            }?
            .get(res)
            .cloned()
        });
        let v = q.map_or(
            if res == "cpu" {
                8.0
            } else {
                32.0 * 1024f64.powi(3)
            },
            |q| quantity(&q),
        );
        let div = r
            .divisor
            .as_ref()
            .map_or(1.0, quantity)
            .max(f64::MIN_POSITIVE);
        return Ok(format!("{}", (v / div).ceil() as i64));
    }
    Ok(String::new())
}
