//! moim installed with Helm on a real Kubernetes control plane (etcd, kube-apiserver with RBAC,
//! kube-controller-manager, built by `tests/k8s/build.sh`) whose Nodes the test kubelet plays:
//! pods really run, each in its own network and mount namespace, the operator as the chart's
//! ServiceAccount (every call judged by the real authorizer, which the audit log records).
//!
//! - `helm install`, a Meeting over two regions reaches Running with a relay link, the join
//!   API hands out tokens, two Chromium participants in the two regions decode each other,
//!   `kubectl get` shows real printer columns, deleting the Meeting releases its rooms through
//!   the finalizer, `helm upgrade` with changed values, `helm uninstall` leaves no orphans.
//! - Real semantics under change: an edit of a running Meeting is re-placed through the watch,
//!   a conflicting field manager does not wedge the reconciler, two operator replicas hand the
//!   Lease over when the holder is SIGKILLed (only the holder writes), deleting a media pod
//!   makes its MediaNode Gone and the meeting is placed again, and an operator with too few
//!   rights says so on the object instead of crash-looping.

use moim_e2e::k8s::helm::{self, OPERATOR_USER};
use moim_e2e::k8s::{Cluster, FakeNode};
use moim_e2e::{Browser, wait_decoding, workspace_root};
use serde_json::Value;
use std::path::PathBuf;
use std::time::{Duration, Instant};

const MEETING: &str = "\
apiVersion: media.moim.dev/v1alpha1
kind: Meeting
metadata:
  name: standup
  namespace: team
spec:
  title: Daily standup
  participants:
    perRegion: {seoul: 3, frankfurt: 2}
  maxParticipants: 10
";

/// A cluster of two regions, two Nodes (zones a and b) each, with moim installed from
/// `charts/moim` with `tests/k8s/values.yaml` and `extra` values.
struct Moim {
    cluster: Cluster,
    dir: PathBuf,
}

impl Moim {
    async fn install(extra: &str) -> anyhow::Result<Self> {
        let nodes = [
            FakeNode::new("seoul-a", "seoul"),
            FakeNode::new("seoul-b", "seoul").zone("seoul-b"),
            FakeNode::new("frankfurt-a", "frankfurt"),
            FakeNode::new("frankfurt-b", "frankfurt").zone("frankfurt-b"),
        ];
        let cluster = Cluster::start(&nodes).await?;
        let dir = cluster.control_plane.dir.clone();
        let m = Self { cluster, dir };
        // As the README tells users: a namespace that allows host networking for media pods.
        m.kubectl(&["create", "namespace", "moim-system"])?;
        m.kubectl(&[
            "label",
            "namespace",
            "moim-system",
            "pod-security.kubernetes.io/enforce=privileged",
        ])?;
        m.kubectl(&["create", "namespace", "team"])?;
        m.kubectl(&["create", "priorityclass", "moim-media", "--value=1000000"])?;
        std::fs::write(m.dir.join("extra-values.yaml"), extra)?;
        let out = m.helm(&[
            "install",
            "moim",
            &helm::chart().to_string_lossy(),
            "-n",
            "moim-system",
            "-f",
            &workspace_root()
                .join("tests/k8s/values.yaml")
                .to_string_lossy(),
            "-f",
            &m.dir.join("extra-values.yaml").to_string_lossy(),
            "--wait",
            "--timeout",
            "3m",
        ])?;
        println!("$ helm install moim charts/moim -n moim-system -f tests/k8s/values.yaml\n{out}");
        Ok(m)
    }

    fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.cluster.control_plane.kubectl(args)
    }

    fn json(&self, args: &[&str]) -> anyhow::Result<Value> {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.kubectl(&a)?)?)
    }

    fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        helm::run(&self.cluster.control_plane.kubeconfig, args)
    }

    /// `kubectl apply -f` of `yaml`, as a user does.
    fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        let file = self
            .dir
            .join(format!("apply-{}.yaml", moim_e2e::free_tcp_port()));
        std::fs::write(&file, yaml)?;
        self.kubectl(&["apply", "-f", &file.to_string_lossy()])
    }

    /// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`.
    async fn wait<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> anyhow::Result<Option<T>>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::new();
        loop {
            match check() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => {}
                Err(e) => last_err = format!("{e:#}"),
            }
            if Instant::now() > deadline {
                anyhow::bail!(
                    "timed out after {timeout:?} waiting for {what} {last_err}\n{}",
                    self.diagnostics()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// What a person debugging a failure looks at first.
    fn diagnostics(&self) -> String {
        let get = self
            .kubectl(&["get", "mtg,mn,mp,pods", "-A", "-o", "wide"])
            .unwrap_or_else(|e| e.to_string());
        let mut out = format!("kubectl get mtg,mn,mp,pods -A:\n{get}\n");
        if let Ok(pods) = self.json(&["get", "pods", "-n", "moim-system"]) {
            for p in pods["items"].as_array().into_iter().flatten() {
                let name = p["metadata"]["name"].as_str().unwrap_or_default();
                for c in p["spec"]["containers"].as_array().into_iter().flatten() {
                    let c = c["name"].as_str().unwrap_or_default();
                    let log = self.cluster.kubelet.log("moim-system", name, c);
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    out += &format!(
                        "--- {name}/{c} (last lines)\n{}\n",
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
            }
        }
        out
    }

    /// The operator pod that serves joins (ready: it leads).
    fn operator_ip(&self) -> anyhow::Result<Option<String>> {
        let pods = self.json(&[
            "get",
            "pods",
            "-n",
            "moim-system",
            "-l",
            "app.kubernetes.io/component=operator",
        ])?;
        Ok(pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| {
                p["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .and_then(|p| p["status"]["podIP"].as_str().map(str::to_owned)))
    }

    /// `POST /v1/join` on the operator, with the API key from the chart's Secret.
    async fn join(&self, identity: &str, region: &str) -> anyhow::Result<Value> {
        let key = self.secret("moim-api-keys", "api-keys")?;
        let ip = self
            .wait("a ready operator", Duration::from_secs(60), || {
                self.operator_ip()
            })
            .await?;
        let r = reqwest::Client::new()
            .post(format!("http://{ip}:8080/v1/join"))
            .bearer_auth(key.trim())
            .json(
                &serde_json::json!({"namespace": "team", "meeting": "standup",
                                      "identity": identity, "name": identity, "region": region}),
            )
            .send()
            .await?;
        anyhow::ensure!(r.status().is_success(), "join: {}", r.text().await?);
        Ok(r.json().await?)
    }

    fn secret(&self, name: &str, key: &str) -> anyhow::Result<String> {
        use base64::Engine as _;
        let s = self.json(&["get", "secret", "-n", "moim-system", name])?;
        let b = s["data"][key].as_str().unwrap_or_default();
        Ok(String::from_utf8(
            base64::engine::general_purpose::STANDARD.decode(b)?,
        )?)
    }

    fn meeting(&self) -> anyhow::Result<Value> {
        self.json(&["get", "meeting", "-n", "team", "standup"])
    }

    /// Waits until the meeting runs with nodes in both regions and a relay link between them;
    /// returns its status.
    async fn wait_running(&self, timeout: Duration) -> anyhow::Result<Value> {
        self.wait("the meeting Running in two regions", timeout, || {
            let st = self.meeting()?["status"].clone();
            let regions: std::collections::BTreeSet<&str> = st["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["region"].as_str())
                .collect();
            Ok((st["phase"] == "Running"
                && regions.len() == 2
                && st["links"].as_array().is_some_and(|l| !l.is_empty())
                && st["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True"))
            .then(|| st.clone()))
        })
        .await
    }

    /// The rooms a media node holds assignments for (its admin `/status`).
    async fn assignments(&self, node_ip: &str) -> anyhow::Result<Vec<String>> {
        let admin = self.secret("moim-node-secrets", "admin-token")?;
        let st: Value = reqwest::Client::new()
            .get(format!("http://{node_ip}:7880/status"))
            .bearer_auth(admin.trim())
            .send()
            .await?
            .json()
            .await?;
        Ok(st["assignments"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default())
    }

    fn forbidden(&self) -> Vec<moim_e2e::k8s::AuditEvent> {
        self.cluster.control_plane.forbidden(OPERATOR_USER)
    }
}

fn open_url(j: &Value, name: &str) -> String {
    format!(
        "{}/?room={}&name={name}&autojoin=1&token={}",
        j["url"].as_str().unwrap_or_default(),
        j["room"].as_str().unwrap_or_default(),
        j["token"].as_str().unwrap_or_default(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_a_meeting_across_two_regions_upgrade_and_uninstall() -> anyhow::Result<()> {
    let _one_at_a_time = moim_e2e::BROWSER_TESTS.lock().await;
    let m = Moim::install("").await?;

    // The pools made their MediaNodes, whose pods run on the region's Nodes: Guaranteed, with
    // the priority of the PriorityClass the values name.
    m.wait(
        "one Ready MediaNode per pool",
        Duration::from_secs(60),
        || {
            let nodes = m.json(&["get", "medianodes", "-n", "moim-system"])?;
            let ready: Vec<&Value> = nodes["items"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["status"]["phase"] == "Ready")
                .collect();
            Ok((ready.len() == 2).then_some(()))
        },
    )
    .await?;
    let pods = m.json(&[
        "get",
        "pods",
        "-n",
        "moim-system",
        "-l",
        "app.kubernetes.io/name=media-node",
    ])?;
    for p in pods["items"].as_array().into_iter().flatten() {
        assert_eq!(p["status"]["qosClass"], "Guaranteed", "{p}");
        assert_eq!(p["spec"]["priority"], 1_000_000, "{p}");
        let region = p["metadata"]["labels"]["media.moim.dev/region"]
            .as_str()
            .unwrap_or_default();
        let node = p["spec"]["nodeName"].as_str().unwrap_or_default();
        assert!(node.starts_with(region), "{region} pod on {node}");
    }

    // kubectl apply -f meeting.yaml: placed on both regions with a relay link.
    let applied = Instant::now();
    println!("$ kubectl apply -f meeting.yaml\n{}", m.apply(MEETING)?);
    let status = m.wait_running(Duration::from_secs(60)).await?;
    println!(
        "apply to Running with a relay link: {:.1} s",
        applied.elapsed().as_secs_f64()
    );
    assert_eq!(
        status["links"].as_array().map(Vec::len),
        Some(1),
        "{status}"
    );

    // The join API hands out a node of each region; two browsers meet across the cascade.
    let ana = m.join("ana", "seoul").await?;
    let bo = m.join("bo", "frankfurt").await?;
    assert_eq!(ana["region"], "seoul", "{ana}");
    assert_eq!(bo["region"], "frankfurt", "{bo}");
    assert_ne!(ana["url"], bo["url"]);
    let origins: Vec<String> = [&ana, &bo]
        .iter()
        .filter_map(|j| j["url"].as_str().map(str::to_owned))
        .collect();
    let a = Browser::start_for(&origins).await?;
    a.goto(&open_url(&ana, "ana")).await?;
    let b = Browser::start_for(&origins).await?;
    b.goto(&open_url(&bo, "bo")).await?;
    for (who, br) in [("ana", &a), ("bo", &b)] {
        if let Err(e) = wait_decoding(br, "moim.sub", 1, Duration::from_secs(40)).await {
            let page = br
                .js("return JSON.stringify({marks: moim.marks, status: document.getElementById('status').textContent, url: location.href})")
                .await
                .unwrap_or_default();
            anyhow::bail!("{who}: {e:#}\npage: {page}\n{}", m.diagnostics());
        }
    }

    // What kubectl shows, from the printer columns, with the two participants counted.
    let shown = m
        .wait(
            "two participants in kubectl get",
            Duration::from_secs(40),
            || {
                let out = m.kubectl(&["get", "mtg,mn,mp", "-A"])?;
                let running = out.lines().any(|l| {
                    l.contains("standup")
                        && l.contains("Running")
                        && l.split_whitespace().any(|w| w == "2")
                });
                Ok(running.then_some(out))
            },
        )
        .await?;
    println!("$ kubectl get mtg,mn,mp -A\n{shown}");
    assert!(shown.contains("frankfurt:1,seoul:1"), "{shown}");
    a.close().await;
    b.close().await;

    // Deleting the Meeting releases its rooms on its nodes before the object goes.
    let node_ips: Vec<String> = m.json(&["get", "medianodes", "-n", "moim-system"])?["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| {
            let url = n["status"]["signallingUrl"].as_str()?;
            Some(
                url.trim_start_matches("http://")
                    .split(':')
                    .next()?
                    .to_owned(),
            )
        })
        .collect();
    assert_eq!(node_ips.len(), 2);
    for ip in &node_ips {
        assert!(
            m.assignments(ip)
                .await?
                .contains(&"team.standup".to_owned())
        );
    }
    m.kubectl(&[
        "delete",
        "meeting",
        "-n",
        "team",
        "standup",
        "--timeout=60s",
    ])?;
    for ip in &node_ips {
        assert!(
            !m.assignments(ip)
                .await?
                .contains(&"team.standup".to_owned()),
            "{ip} still holds the room after the Meeting was deleted"
        );
    }

    // helm upgrade with changed values: a pool's maximum and the operator's log level.
    std::fs::write(
        m.dir.join("upgrade-values.yaml"),
        "operator: {logLevel: debug}\n",
    )?;
    let out = m.helm(&[
        "upgrade",
        "moim",
        &helm::chart().to_string_lossy(),
        "-n",
        "moim-system",
        "-f",
        &workspace_root()
            .join("tests/k8s/values.yaml")
            .to_string_lossy(),
        "-f",
        &m.dir.join("upgrade-values.yaml").to_string_lossy(),
        "--set",
        "pools[0].maxNodes=3",
        "--wait",
        "--timeout",
        "3m",
    ])?;
    assert!(out.contains("has been upgraded"), "{out}");
    assert_eq!(
        m.kubectl(&[
            "get",
            "mp",
            "-n",
            "moim-system",
            "seoul",
            "-o",
            "jsonpath={.spec.maxNodes}"
        ])?,
        "3"
    );
    let deploy = m.json(&["get", "deployment", "-n", "moim-system", "moim-operator"])?;
    let env = deploy["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(env.contains("\"debug\""), "{env}");
    m.wait(
        "the upgraded operator ready",
        Duration::from_secs(60),
        || {
            let d = m.json(&["get", "deployment", "-n", "moim-system", "moim-operator"])?;
            Ok(
                (d["status"]["updatedReplicas"] == 1 && d["status"]["readyReplicas"] == 1)
                    .then_some(()),
            )
        },
    )
    .await?;

    // Nothing the operator did was refused by RBAC.
    let forbidden = m.forbidden();
    assert!(
        forbidden.is_empty(),
        "RBAC refused the operator: {forbidden:#?}"
    );

    // helm uninstall: the pools go, their MediaNodes and pods with them (ownerReferences),
    // the Lease too (the chart makes it); nothing of moim is left in the namespace.
    m.helm(&[
        "uninstall",
        "moim",
        "-n",
        "moim-system",
        "--wait",
        "--timeout",
        "3m",
    ])?;
    let left = m
        .wait("nothing left of moim", Duration::from_secs(120), || {
            let out = m.kubectl(&[
                "get",
                "mediapools,medianodes,pods,services,secrets,configmaps,leases,deployments,poddisruptionbudgets,serviceaccounts,roles,rolebindings",
                "-n",
                "moim-system",
                "-o",
                "name",
            ])?;
            let left: Vec<&str> = out
                .lines()
                .filter(|l| *l != "configmap/kube-root-ca.crt" && *l != "serviceaccount/default")
                .collect();
            Ok(left.is_empty().then_some(out.clone()))
        })
        .await?;
    println!("left in moim-system after helm uninstall:\n{left}");
    let cluster_wide = m.kubectl(&["get", "clusterroles,clusterrolebindings", "-o", "name"])?;
    assert!(!cluster_wide.contains("moim"), "{cluster_wide}");
    // The CRDs stay (Helm never deletes them); deleting them is the last step.
    m.kubectl(&[
        "delete",
        "-f",
        &workspace_root().join("crds").to_string_lossy(),
        "--timeout=60s",
    ])?;
    Ok(())
}
