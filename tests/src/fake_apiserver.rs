//! A stand-in Kubernetes API server for running the real `operator` binary on a machine with
//! no cluster: it serves lists and (silent, held-open) watches from fixed objects, keeps one
//! Lease, echoes writes, and records every request as `VERB path` (the verbs RBAC speaks:
//! get, list, watch, create, update, patch, delete), so a test can check what the operator
//! called and derive the permissions it needs.

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// One request, as RBAC sees it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ApiCall {
    /// RBAC verb.
    pub verb: String,
    /// API group (`""` for the core group).
    pub group: String,
    /// Resource, with `/subresource` when there is one (`meetings/status`).
    pub resource: String,
    /// Namespace, when namespaced.
    pub namespace: Option<String>,
    /// The request as sent, `METHOD path?query`.
    pub raw: String,
}

#[derive(Default)]
struct Inner {
    calls: Vec<ApiCall>,
    /// Objects listed per collection path suffix (`meetings`, `medianodes`, `pods`).
    objects: BTreeMap<String, Vec<Value>>,
    lease: Option<Value>,
}

/// The fake API server.
#[derive(Clone, Default)]
pub struct FakeApiServer {
    inner: Arc<Mutex<Inner>>,
}

impl FakeApiServer {
    /// Lists `objects` for the resource `plural` (`meetings`, `medianodes`, `pods`).
    pub fn with_objects(self, plural: &str, objects: Vec<Value>) -> Self {
        self.lock().objects.insert(plural.to_owned(), objects);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every request so far.
    pub fn calls(&self) -> Vec<ApiCall> {
        self.lock().calls.clone()
    }

    /// Serves on a free loopback port; returns the address.
    pub async fn serve(&self) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(handle).with_state(self.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok(addr)
    }

    /// A kubeconfig file pointing at `addr` (plain HTTP, no credentials).
    pub fn kubeconfig(
        addr: SocketAddr,
        dir: &std::path::Path,
    ) -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: http://{addr}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n"
            ),
        )?;
        Ok(path)
    }
}

/// Splits `/api/v1/namespaces/ns/pods/name/status` or `/apis/g/v/...` into RBAC terms.
fn classify(method: &Method, uri: &Uri) -> ApiCall {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", _v, rest @ ..] => (String::new(), rest.to_vec()),
        ["apis", g, _v, rest @ ..] => ((*g).to_owned(), rest.to_vec()),
        _ => (String::new(), parts.clone()),
    };
    let (namespace, rest) = match rest.as_slice() {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => {
            (Some((*ns).to_owned()), rest.to_vec())
        }
        _ => (None, rest),
    };
    let resource = match rest.as_slice() {
        [plural] | [plural, _] => (*plural).to_owned(),
        [plural, _, sub, ..] => format!("{plural}/{sub}"),
        [] => String::new(),
    };
    let named = rest.len() >= 2;
    let watch = uri
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true"));
    let verb = match *method {
        Method::GET if watch => "watch",
        Method::GET if named => "get",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    };
    ApiCall {
        verb: verb.to_owned(),
        group,
        resource,
        namespace,
        raw: format!("{method} {uri}"),
    }
}

async fn handle(
    State(s): State<FakeApiServer>,
    method: Method,
    uri: Uri,
    headers: axum::http::HeaderMap,
    body: Bytes,
) -> Response {
    let call = classify(&method, &uri);
    s.lock().calls.push(call.clone());
    // A server-side apply of an object that does not exist creates it, and the API server
    // authorizes that as `create` as well as `patch` (RBAC with `patch` alone is refused).
    let apply = headers
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/apply-patch"));
    if apply && !call.resource.contains('/') {
        let name = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
        let exists = s
            .lock()
            .objects
            .get(&call.resource)
            .is_some_and(|v| v.iter().any(|o| o["metadata"]["name"] == name.as_str()));
        if !exists {
            s.lock().calls.push(ApiCall {
                verb: "create".into(),
                ..call.clone()
            });
        }
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let not_found = || {
        (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"})),
        )
            .into_response()
    };
    match (call.verb.as_str(), call.resource.as_str()) {
        ("watch", _) => {
            // Held open and silent: no changes happen in this cluster.
            let stream = futures_util::stream::pending::<Result<Bytes, std::io::Error>>();
            Response::new(Body::from_stream(stream))
        }
        ("list", plural) => {
            let items = s.lock().objects.get(plural).cloned().unwrap_or_default();
            axum::Json(json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items})).into_response()
        }
        ("get", "leases") => match s.lock().lease.clone() {
            Some(l) => axum::Json(l).into_response(),
            None => not_found(),
        },
        ("create" | "update", "leases") => {
            let mut lease = body;
            lease["metadata"]["resourceVersion"] = json!("2");
            s.lock().lease = Some(lease.clone());
            (StatusCode::CREATED, axum::Json(lease)).into_response()
        }
        ("get", plural) => {
            let name = uri.path().rsplit('/').next().unwrap_or_default().to_owned();
            let found = s.lock().objects.get(plural).and_then(|v| {
                v.iter()
                    .find(|o| o["metadata"]["name"] == name.as_str())
                    .cloned()
            });
            match found {
                Some(o) => axum::Json(o).into_response(),
                None => not_found(),
            }
        }
        ("patch", r) => {
            // Answer with the stored object when there is one (a patch returns the object).
            let plural = r.split('/').next().unwrap_or_default().to_owned();
            let name = uri
                .path()
                .trim_end_matches("/status")
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned();
            let found = s.lock().objects.get(&plural).and_then(|v| {
                v.iter()
                    .find(|o| o["metadata"]["name"] == name.as_str())
                    .cloned()
            });
            let mut out = found.unwrap_or(body);
            // A new NodePort Service gets its port, as the API server allocates one.
            if plural == "services"
                && out["spec"]["type"] == "NodePort"
                && let Some(ports) = out["spec"]["ports"].as_array_mut()
            {
                for (i, p) in ports.iter_mut().enumerate() {
                    p["nodePort"] = json!(30_000 + i);
                }
            }
            axum::Json(out).into_response()
        }
        _ => (StatusCode::CREATED, axum::Json(body)).into_response(),
    }
}

/// The `operator` binary running against a [`FakeApiServer`].
pub struct RunningOperator {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// `http://127.0.0.1:<port>` of its join API, metrics and probes.
    pub base: String,
}

impl RunningOperator {
    /// Starts `operator run` with a kubeconfig pointing at `api` and secrets in files, and
    /// waits until `/readyz` answers 200 (it leads and its caches synced).
    pub async fn start(api: SocketAddr) -> anyhow::Result<Self> {
        Self::start_with_env(api, &[]).await
    }

    /// [`RunningOperator::start`] with extra environment variables (the chart's settings).
    pub async fn start_with_env(api: SocketAddr, env: &[(String, String)]) -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "moim-operator-{}-{}",
            std::process::id(),
            crate::free_tcp_port()
        ));
        std::fs::create_dir_all(&dir)?;
        let kubeconfig = FakeApiServer::kubeconfig(api, &dir)?;
        for (file, content) in [
            ("keys", "k1\n"),
            ("token", "secret\n"),
            ("admin", "admin\n"),
        ] {
            std::fs::write(dir.join(file), content)?;
        }
        let port = crate::free_tcp_port();
        let child = std::process::Command::new(crate::binary("operator")?)
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
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::inherit())
            .spawn()?;
        let op = Self {
            child,
            dir,
            base: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(r) = reqwest::get(format!("{}/readyz", op.base)).await
                && r.status().is_success()
            {
                return Ok(op);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "operator never became ready"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Waits until `api` has seen calls that satisfy `done`; returns them.
    pub async fn wait_for_calls(
        &self,
        api: &FakeApiServer,
        done: impl Fn(&[ApiCall]) -> bool,
    ) -> anyhow::Result<Vec<ApiCall>> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let calls = api.calls();
            if done(&calls) {
                return Ok(calls);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "missing operator traffic; saw {:#?}",
                calls.iter().map(|c| &c.raw).collect::<Vec<_>>()
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits up to 15 s for the exit status.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "operator did not stop on SIGTERM"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

impl Drop for RunningOperator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A cluster with one Meeting and one MediaNode (no pod yet): enough for the operator to
/// make every kind of call it makes.
pub fn small_cluster() -> FakeApiServer {
    FakeApiServer::default()
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
        )
        .with_objects(
            "mediapools",
            vec![json!({
                "apiVersion": "media.moim.dev/v1alpha1", "kind": "MediaPool",
                "metadata": {"name": "seoul", "namespace": "team", "uid": "u3", "generation": 1, "resourceVersion": "1"},
                "spec": {"region": "seoul", "minNodes": 1, "maxNodes": 3},
            })],
        )
}

/// Whether `calls` hold every kind of call a reconcile of [`small_cluster`] makes.
pub fn saw_full_reconcile(calls: &[ApiCall]) -> bool {
    let has = |verb: &str, resource: &str| {
        calls
            .iter()
            .any(|c| c.verb == verb && c.resource == resource)
    };
    has("create", "leases")
        && has("patch", "meetings")
        && has("get", "pods")
        && has("patch", "pods")
        && has("patch", "medianodes/status")
        && has("create", "medianodes")
        && has("patch", "mediapools/status")
        && has("create", "events")
}
