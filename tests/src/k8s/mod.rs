//! A real Kubernetes control plane for the tests: etcd, kube-apiserver and
//! kube-controller-manager, built from Kubernetes' own sources by `tests/k8s/build.sh`, on
//! free ports, torn down with their process groups.
//!
//! The API server runs as a cluster's does: TLS with a generated CA, client certificates
//! (an admin in `system:masters`), service-account tokens (the TokenRequest API hands out a
//! token for any ServiceAccount), `--authorization-mode=Node,RBAC` (RBAC really judges every
//! call of a ServiceAccount) and its default admission plugins (Pod Security, ServiceAccount,
//! …). kube-controller-manager runs the controllers a namespace, an ownerReference, a
//! Deployment, a ServiceAccount and a PodDisruptionBudget need (garbage collector, namespace,
//! deployment, replicaset, serviceaccount, root CA publisher, pod GC, disruption).
//!
//! There is no container runtime on the machines the tests run on: [`kubelet`] plays the
//! Nodes (registers them, schedules and binds pods, runs each container as a process of the
//! locally built binary in its own network and mount namespace). [`Cluster`] puts the three
//! together; several clusters can run side by side (one per region).
//!
//! `cargo run -p moim-e2e --bin moim-k8s` starts one for a contributor and prints its
//! kubeconfig.

pub mod helm;
pub mod kubelet;
pub mod net;
pub mod operator;
mod pki;

use anyhow::{Context as _, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use kubelet::{FakeNode, Kubelet};
pub use net::PodNetwork;

/// kube-controller-manager's controllers the tests rely on: ownerReference clean-up,
/// namespaces, Deployments (the operator's), ServiceAccounts and the root CA ConfigMap (a
/// pod's service-account volume), pods of Nodes that are gone, PodDisruptionBudget status.
/// Not the node lifecycle controller: it would evict pods of Nodes whose kubelet heartbeats
/// it misses, and the harness posts none.
const CONTROLLERS: &[&str] = &[
    "garbage-collector-controller",
    "namespace-controller",
    "deployment-controller",
    "replicaset-controller",
    "serviceaccount-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
    "disruption-controller",
];

/// Audit every request at `Metadata` level (who, what, the response code): once when done,
/// and for watches also when they start.
const AUDIT_POLICY: &str = "apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
";

/// One request, as the API server's audit log records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// Who (`system:serviceaccount:moim-system:moim-operator`).
    pub user: String,
    /// The RBAC verb (`get`, `list`, `watch`, `create`, `update`, `patch`, `delete`).
    pub verb: String,
    /// API group (`""` for the core group).
    pub group: String,
    /// Resource, with `/subresource` (`meetings/status`).
    pub resource: String,
    /// Namespace, when namespaced.
    pub namespace: Option<String>,
    /// Object name, when there is one.
    pub name: Option<String>,
    /// The response code (403 when RBAC refused it).
    pub code: u16,
    /// The request URI.
    pub uri: String,
    /// The pod a bound service-account token was issued for (which replica called).
    pub pod: Option<String>,
    /// When the API server finished it (RFC 3339, microseconds).
    pub time: String,
}

impl AuditEvent {
    fn parse(line: &str) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let o = &v["objectRef"];
        let mut resource = o["resource"].as_str().unwrap_or_default().to_owned();
        if let Some(sub) = o["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        Some(Self {
            user: v["user"]["username"].as_str()?.to_owned(),
            verb: v["verb"].as_str()?.to_owned(),
            group: o["apiGroup"].as_str().unwrap_or_default().to_owned(),
            resource,
            namespace: o["namespace"].as_str().map(str::to_owned),
            name: o["name"].as_str().map(str::to_owned),
            code: u16::try_from(v["responseStatus"]["code"].as_u64().unwrap_or(0)).unwrap_or(0),
            uri: v["requestURI"].as_str().unwrap_or_default().to_owned(),
            pod: v["user"]["extra"]["authentication.kubernetes.io/pod-name"][0]
                .as_str()
                .map(str::to_owned),
            time: v["stageTimestamp"].as_str().unwrap_or_default().to_owned(),
        })
    }
}

/// How long the control plane may take to answer `/readyz` (a cold, busy machine is slow).
const START_TIMEOUT: Duration = Duration::from_secs(180);

/// The folder holding `etcd`, `kube-apiserver` and `kube-controller-manager`:
/// `MOIM_K8S_BIN`, else the cache `tests/k8s/build.sh` fills.
pub fn binaries_dir() -> PathBuf {
    if let Ok(d) = std::env::var("MOIM_K8S_BIN") {
        return d.into();
    }
    if let Ok(d) = std::env::var("MOIM_K8S_CACHE") {
        return PathBuf::from(d).join("bin");
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cache")
        });
    cache.join("moim/k8s/bin")
}

fn control_plane_binary(name: &str) -> anyhow::Result<PathBuf> {
    let p = binaries_dir().join(name);
    if !p.exists() {
        bail!(
            "{} is missing: build the test control plane first with `tests/k8s/build.sh` \
             (needs Go 1.26 and the Go module proxy; `tests/run` does it for you)",
            p.display()
        );
    }
    Ok(p)
}

/// A free TCP port on `ip`.
fn free_port(ip: IpAddr) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// A child process in its own process group, killed with its group on drop.
pub(crate) struct GroupChild {
    pub(crate) child: Child,
    pub(crate) name: String,
    pub(crate) log: PathBuf,
}

impl GroupChild {
    /// Starts `program args…` under `setpriv --pdeathsig KILL`, so that it dies with the
    /// thread that started it even when this process is killed without unwinding.
    fn spawn(name: &str, program: &Path, args: Vec<String>, log: PathBuf) -> anyhow::Result<Self> {
        let mut cmd = Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(program)
            .args(args);
        let out = std::fs::File::create(&log)?;
        let err = out.try_clone()?;
        use std::os::unix::process::CommandExt;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            child,
            name: name.to_owned(),
            log,
        })
    }

    /// The last `n` lines of its log.
    pub(crate) fn log_tail(&self, n: usize) -> String {
        crate::file_tail(&self.log, n)
    }

    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub(crate) fn kill_group(&mut self) {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// Options of a control plane.
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// Address the API server listens on (and the one in its kubeconfig).
    pub address: IpAddr,
    /// Also run kube-controller-manager.
    pub controller_manager: bool,
    /// `--emulated-version` of the API server and controller manager (`1.34`): the oldest
    /// Kubernetes moim supports, emulated by the newest binaries.
    pub emulated_version: Option<String>,
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            controller_manager: true,
            emulated_version: None,
        }
    }
}

/// A running control plane.
pub struct ControlPlane {
    /// Its folder: PKI, etcd's data, logs, kubeconfigs.
    pub dir: PathBuf,
    /// `https://ADDRESS:PORT`.
    pub server: String,
    /// Where the API server listens.
    pub address: SocketAddr,
    /// The admin kubeconfig (`system:masters`).
    pub kubeconfig: PathBuf,
    /// The CA (PEM) the API server's certificate chains to.
    pub ca_pem: String,
    /// Time from start to the API server answering `/readyz`.
    pub startup: Duration,
    // Dropped in this order: controller manager, API server, etcd.
    kcm: Option<GroupChild>,
    apiserver: GroupChild,
    etcd: GroupChild,
    keep_dir: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl ControlPlane {
    /// Starts etcd, kube-apiserver and (unless told not to) kube-controller-manager, and waits
    /// until the API server is ready (at most [`START_TIMEOUT`], with the components' last log
    /// lines on failure).
    pub async fn start(opts: ControlPlaneOptions) -> anyhow::Result<Self> {
        let started = Instant::now();
        let etcd_bin = control_plane_binary("etcd")?;
        let apiserver_bin = control_plane_binary("kube-apiserver")?;
        let kcm_bin = control_plane_binary("kube-controller-manager")?;
        let dir = std::env::temp_dir().join(format!(
            "moim-k8s-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut addresses = vec![loopback];
        if opts.address != loopback {
            addresses.push(opts.address);
        }
        let pki = pki::Pki::create(&dir.join("pki"), &addresses)?;

        let (client_port, peer_port) = (free_port(loopback)?, free_port(loopback)?);
        let etcd_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let args = vec![
            "--name=default".to_owned(),
            format!("--data-dir={}", dir.join("etcd").display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=default={peer_url}"),
            // A test's data need not survive a power cut; fsync would make every write wait
            // for the disk.
            "--unsafe-no-fsync".to_owned(),
            "--log-level=warn".to_owned(),
        ];
        let etcd = GroupChild::spawn("etcd", &etcd_bin, args, dir.join("etcd.log"))?;

        let port = free_port(opts.address)?;
        let address = SocketAddr::new(opts.address, port);
        let server = format!("https://{address}");
        let issuer = "https://kubernetes.default.svc.cluster.local";
        let audit_policy = dir.join("audit-policy.yaml");
        std::fs::write(&audit_policy, AUDIT_POLICY)?;
        let mut args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--bind-address={}", opts.address),
            format!("--advertise-address={}", opts.address),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", dir.join("certs").display()),
            format!("--tls-cert-file={}", pki.serving_cert.display()),
            format!("--tls-private-key-file={}", pki.serving_key.display()),
            format!("--client-ca-file={}", pki.ca_file.display()),
            format!("--service-account-key-file={}", pki.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ),
            format!("--service-account-issuer={issuer}"),
            "--authorization-mode=Node,RBAC".to_owned(),
            "--service-cluster-ip-range=10.96.0.0/16".to_owned(),
            "--allow-privileged=true".to_owned(),
            // Nothing routes the `kubernetes` Service here (no kube-proxy); pods are given the
            // API server's real address instead. A loopback address may not be an endpoint.
            "--endpoint-reconciler-type=none".to_owned(),
            // Every request's outcome, so tests can see what the authorizer refused.
            format!("--audit-policy-file={}", audit_policy.display()),
            format!("--audit-log-path={}", dir.join("audit.log").display()),
            "--audit-log-maxsize=0".to_owned(),
            "--v=1".to_owned(),
        ];
        if let Some(v) = &opts.emulated_version {
            args.push(format!("--emulated-version={v}"));
        }
        let apiserver = GroupChild::spawn(
            "kube-apiserver",
            &apiserver_bin,
            args,
            dir.join("kube-apiserver.log"),
        )?;

        let kubeconfig = dir.join("admin.kubeconfig");
        write_private(
            &kubeconfig,
            kubeconfig_yaml(
                &server,
                &pki.ca_pem,
                User::Certificate {
                    cert: &pki.admin_cert_pem,
                    key: &pki.admin_key_pem,
                },
            ),
        )?;
        let mut cp = Self {
            dir: dir.clone(),
            server,
            address,
            kubeconfig: kubeconfig.clone(),
            ca_pem: pki.ca_pem.clone(),
            startup: Duration::ZERO,
            kcm: None,
            apiserver,
            etcd,
            keep_dir: std::env::var_os("MOIM_K8S_KEEP").is_some(),
        };
        cp.wait_ready().await?;

        if opts.controller_manager {
            let mut args = vec![
                format!("--kubeconfig={}", kubeconfig.display()),
                "--leader-elect=false".to_owned(),
                "--secure-port=0".to_owned(),
                format!(
                    "--service-account-private-key-file={}",
                    pki.sa_key.display()
                ),
                format!("--root-ca-file={}", pki.ca_file.display()),
                format!("--cluster-signing-cert-file={}", pki.ca_file.display()),
                format!("--cluster-signing-key-file={}", pki.ca_key_file.display()),
                format!("--controllers={}", CONTROLLERS.join(",")),
                "--v=1".to_owned(),
            ];
            if let Some(v) = &opts.emulated_version {
                args.push(format!("--emulated-version={v}"));
            }
            cp.kcm = Some(GroupChild::spawn(
                "kube-controller-manager",
                &kcm_bin,
                args,
                dir.join("kube-controller-manager.log"),
            )?);
        }
        cp.startup = started.elapsed();
        Ok(cp)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last;
        loop {
            for c in [&mut self.etcd, &mut self.apiserver] {
                if let Some(status) = c.exited() {
                    bail!(
                        "{} exited ({status}) while starting; its log ends:\n{}",
                        c.name,
                        c.log_tail(30)
                    );
                }
            }
            match self.client().await {
                Ok(client) => {
                    let req = http::Request::get("/readyz")
                        .body(Vec::new())
                        .context("request")?;
                    match client.request_text(req).await {
                        Ok(t) if t.trim() == "ok" => return Ok(()),
                        Ok(t) => last = t,
                        Err(e) => last = e.to_string(),
                    }
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() > deadline {
                bail!(
                    "the API server was not ready within {START_TIMEOUT:?} (last answer: {last}); \
                     kube-apiserver's log ends:\n{}\netcd's log ends:\n{}",
                    self.apiserver.log_tail(30),
                    self.etcd.log_tail(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A client with the admin's credentials.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        client_from(&self.kubeconfig).await
    }

    /// A token for `namespace/service_account` from the TokenRequest API, valid an hour.
    pub async fn token(&self, namespace: &str, service_account: &str) -> anyhow::Result<String> {
        let api: Api<ServiceAccount> = Api::namespaced(self.client().await?, namespace);
        let req = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(3600),
                bound_object_ref: None,
            },
            ..TokenRequest::default()
        };
        let out: TokenRequest = api
            .create_subresource("token", service_account, &PostParams::default(), &req)
            .await
            .with_context(|| format!("TokenRequest for {namespace}/{service_account}"))?;
        out.status
            .map(|s| s.token)
            .context("TokenRequest answered without a token")
    }

    /// A kubeconfig that acts as `namespace/service_account` (a TokenRequest token): what
    /// RBAC allows that ServiceAccount is all it may do.
    pub async fn service_account_kubeconfig(
        &self,
        namespace: &str,
        service_account: &str,
    ) -> anyhow::Result<PathBuf> {
        let token = self.token(namespace, service_account).await?;
        let path = self
            .dir
            .join(format!("{namespace}-{service_account}.kubeconfig"));
        write_private(
            &path,
            kubeconfig_yaml(&self.server, &self.ca_pem, User::Token(&token)),
        )?;
        Ok(path)
    }

    /// Runs `kubectl` with the admin kubeconfig; returns stdout, or an error with stderr.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        kubectl_with(&self.kubeconfig, args)
    }

    /// Every request the API server has finished so far (its audit log).
    pub fn audit(&self) -> Vec<AuditEvent> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(AuditEvent::parse)
            .collect()
    }

    /// Requests of `user` that the API server refused with 403 Forbidden.
    pub fn forbidden(&self, user: &str) -> Vec<AuditEvent> {
        self.audit()
            .into_iter()
            .filter(|e| e.user == user && e.code == 403)
            .collect()
    }

    /// The last lines of a component's log (`etcd`, `kube-apiserver`,
    /// `kube-controller-manager`).
    pub fn log_tail(&self, component: &str, n: usize) -> String {
        [Some(&self.etcd), Some(&self.apiserver), self.kcm.as_ref()]
            .into_iter()
            .flatten()
            .find(|c| c.name == component)
            .map(|c| c.log_tail(n))
            .unwrap_or_default()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(k) = &mut self.kcm {
            k.kill_group();
        }
        self.apiserver.kill_group();
        self.etcd.kill_group();
        if !self.keep_dir && !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Writes a credential file readable by its owner only (kubectl and helm warn otherwise).
fn write_private(path: &Path, text: String) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// `kubectl`: the one `tests/k8s/build.sh` builds with the control plane (same version, no
/// skew warnings), else the one on the PATH.
pub fn kubectl_binary() -> PathBuf {
    let built = binaries_dir().join("kubectl");
    if built.exists() {
        built
    } else {
        "kubectl".into()
    }
}

/// Runs `kubectl --kubeconfig KUBECONFIG args…`.
pub fn kubectl_with(kubeconfig: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(kubectl_binary())
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running kubectl")?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A kube client from a kubeconfig file.
pub async fn client_from(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kc = Kubeconfig::read_from(kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

enum User<'a> {
    Certificate { cert: &'a str, key: &'a str },
    Token(&'a str),
}

fn kubeconfig_yaml(server: &str, ca_pem: &str, user: User<'_>) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let user = match user {
        User::Certificate { cert, key } => format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(cert),
            b64(key)
        ),
        User::Token(t) => format!("    token: {t}\n"),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: moim-test\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: moim-test\n  context:\n    cluster: moim-test\n    user: moim-test\ncurrent-context: moim-test\nusers:\n- name: moim-test\n  user:\n{user}",
        b64(ca_pem)
    )
}

/// A control plane with a pod network and Nodes played by [`Kubelet`]: a cluster whose pods
/// run.
pub struct Cluster {
    /// Nodes and pods (dropped first: pods stop before the API server goes).
    pub kubelet: Kubelet,
    /// The control plane.
    pub control_plane: ControlPlane,
    /// The pod network (dropped last).
    pub network: Arc<PodNetwork>,
}

impl Cluster {
    /// A control plane listening on a new pod network, and `nodes` registered and running.
    pub async fn start(nodes: &[FakeNode]) -> anyhow::Result<Self> {
        let network = Arc::new(PodNetwork::create()?);
        let control_plane = ControlPlane::start(ControlPlaneOptions {
            address: IpAddr::V4(network.gateway()),
            ..ControlPlaneOptions::default()
        })
        .await?;
        let kubelet = Kubelet::start(&control_plane, network.clone(), nodes).await?;
        Ok(Self {
            kubelet,
            control_plane,
            network,
        })
    }
}
