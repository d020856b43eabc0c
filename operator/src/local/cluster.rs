//! [`Cluster`] for the local fabric: an in-process store of Meetings, MediaNodes and
//! MediaPools (the join API reads it through reflector stores, as it reads the operator's
//! watch caches), and `media-node` child processes as the MediaNodes' workloads, on loopback
//! ports (`--port-base`, then +10 per node).
//!
//! It prints what a person running `operator local` wants to see: nodes starting, ready,
//! exiting and removed, and what each region's autoscaler does.

use crate::control::{Cluster, Started, Workload};
use crate::core::autoscale::ScaleDecision;
use crate::crd::{
    MediaNode, MediaNodePhase, MediaNodeStatus, MediaPool, MediaPoolStatus, Meeting, MeetingStatus,
};
use crate::error::{Error, Result};
use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use kube::ResourceExt;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Time a child has to drain and exit after SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// One media node child: what a MediaNode's pod is in a cluster.
struct LocalNode {
    http: SocketAddr,
    relay: SocketAddr,
    child: Option<Child>,
    /// It exited (or was stopped): the workload is gone for good.
    exited: bool,
}

impl LocalNode {
    fn base(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// How children are started.
pub struct Spawner {
    /// The `media-node` binary.
    pub binary: PathBuf,
    /// Join token secret (the join API signs with it).
    pub token_secret: String,
    /// The nodes' admin token.
    pub admin_token: String,
    /// `--log` of each child.
    pub node_log: String,
    /// First port: node i serves HTTP on base+10i, media on +1, relay on +2.
    pub port_base: u16,
    /// `--drain-timeout` of each child.
    pub drain_timeout: String,
}

struct State {
    meetings: BTreeMap<String, Meeting>,
    nodes: BTreeMap<String, MediaNode>,
    pools: BTreeMap<String, MediaPool>,
    meeting_store: Writer<Meeting>,
    node_store: Writer<MediaNode>,
    children: BTreeMap<String, LocalNode>,
    /// Each node's port index (its ports are `port_base + 10 * index`), given when the
    /// MediaNode is made, so nodes keep the order they were made in.
    ports: BTreeMap<String, u16>,
    /// Index of the next node.
    next_port: u16,
    /// Node numbers used per region (names are never reused).
    numbers: BTreeMap<String, u16>,
}

/// The local fabric's cluster.
pub struct LocalCluster {
    state: Mutex<State>,
    spawner: Spawner,
}

fn key_of(m: &Meeting) -> String {
    format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any())
}

impl LocalCluster {
    /// An empty cluster whose stores the join API reads.
    pub fn new(
        spawner: Spawner,
        mut meeting_store: Writer<Meeting>,
        mut node_store: Writer<MediaNode>,
    ) -> Self {
        meeting_store.apply_watcher_event(&watcher::Event::Init);
        meeting_store.apply_watcher_event(&watcher::Event::InitDone);
        node_store.apply_watcher_event(&watcher::Event::Init);
        node_store.apply_watcher_event(&watcher::Event::InitDone);
        Self {
            state: Mutex::new(State {
                meetings: BTreeMap::new(),
                nodes: BTreeMap::new(),
                pools: BTreeMap::new(),
                meeting_store,
                node_store,
                children: BTreeMap::new(),
                ports: BTreeMap::new(),
                next_port: 0,
                numbers: BTreeMap::new(),
            }),
            spawner,
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every Meeting, MediaNode and MediaPool as stored now.
    pub fn snapshot(&self) -> (Vec<Meeting>, Vec<MediaNode>, Vec<MediaPool>) {
        let s = self.state();
        (
            s.meetings.values().cloned().collect(),
            s.nodes.values().cloned().collect(),
            s.pools.values().cloned().collect(),
        )
    }

    /// `kubectl apply` of a Meeting: a new one, or a new spec for one already stored (its
    /// status is kept).
    pub fn apply_meeting(&self, mut m: Meeting) {
        let mut s = self.state();
        let key = key_of(&m);
        if let Some(old) = s.meetings.get(&key) {
            m.status = old.status.clone();
        }
        s.meeting_store
            .apply_watcher_event(&watcher::Event::Apply(m.clone()));
        s.meetings.insert(key, m);
    }

    /// A Meeting is gone (its file was removed).
    pub fn delete_meeting(&self, key: &str) -> Option<Meeting> {
        let mut s = self.state();
        let m = s.meetings.remove(key)?;
        s.meeting_store
            .apply_watcher_event(&watcher::Event::Delete(m.clone()));
        Some(m)
    }

    /// A MediaPool, as the chart would make it.
    pub fn apply_pool(&self, p: MediaPool) {
        let mut s = self.state();
        s.pools.insert(p.name_any(), p);
    }

    /// Notices children that exited (their workloads are then Gone).
    pub fn reap(&self) {
        let mut s = self.state();
        for (name, n) in s.children.iter_mut() {
            let exited = match n.child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            if let Some(why) = exited {
                n.child = None;
                n.exited = true;
                println!("node {name} exited ({why})");
            }
        }
    }

    /// SIGTERM to every child (they drain), then a kill for any still running after
    /// [`STOP_GRACE`].
    pub async fn stop_all(&self) {
        let children: Vec<(String, Child)> = {
            let mut s = self.state();
            s.children
                .iter_mut()
                .filter_map(|(name, n)| Some((name.clone(), n.child.take()?)))
                .collect()
        };
        for (_, child) in &children {
            terminate(child);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for (name, mut child) in children {
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(_) => println!("node {name} stopped"),
                Err(_) => {
                    let _ = child.kill().await;
                    println!("node {name} killed (did not stop in {STOP_GRACE:?})");
                }
            }
        }
    }

    /// Stops one child: SIGTERM, then a kill after [`STOP_GRACE`].
    async fn stop(&self, name: &str) {
        let child = {
            let mut s = self.state();
            s.children.get_mut(name).and_then(|n| n.child.take())
        };
        if let Some(mut child) = child {
            terminate(&child);
            if tokio::time::timeout(STOP_GRACE, child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }

    fn spawn(&self, s: &mut State, name: &str, region: &str) -> Result<LocalNode> {
        let index = match s.ports.get(name) {
            Some(i) => *i,
            None => {
                let i = s.next_port;
                s.next_port += 1;
                s.ports.insert(name.to_owned(), i);
                i
            }
        };
        let port = self
            .spawner
            .port_base
            .checked_add(index.saturating_mul(10))
            .filter(|p| p.checked_add(2).is_some())
            .ok_or_else(|| Error::Config("--port-base too high for this many nodes".into()))?;
        let http = SocketAddr::from(([127, 0, 0, 1], port));
        let udp = SocketAddr::from(([127, 0, 0, 1], port + 1));
        let relay = SocketAddr::from(([127, 0, 0, 1], port + 2));
        let sp = &self.spawner;
        let child = Command::new(&sp.binary)
            .args(["--dev", "--node-id", name, "--region", region])
            .args(["--http", &http.to_string(), "--udp", &udp.to_string()])
            .args(["--relay-listen", &relay.to_string()])
            .args(["--drain-timeout", &sp.drain_timeout, "--log", &sp.node_log])
            .env("MOIM_TOKEN_SECRET", &sp.token_secret)
            .env("MOIM_ADMIN_TOKEN", &sp.admin_token)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                Error::Config(format!(
                    "starting {} (give --media-node): {e}",
                    sp.binary.display()
                ))
            })?;
        println!(
            "node {name} ({region}) starting: http://{http} (pid {}, media udp {udp}, relay quic {relay})",
            child.id().unwrap_or(0)
        );
        Ok(LocalNode {
            http,
            relay,
            child: Some(child),
            exited: false,
        })
    }
}

/// SIGTERM to a child: it drains, then exits.
fn terminate(child: &Child) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
}

impl Cluster for LocalCluster {
    fn meeting_status<'a>(
        &'a self,
        m: &'a Meeting,
        status: &'a MeetingStatus,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut s = self.state();
            let key = key_of(m);
            if let Some(stored) = s.meetings.get_mut(&key) {
                stored.status = Some(status.clone());
                let obj = stored.clone();
                s.meeting_store
                    .apply_watcher_event(&watcher::Event::Apply(obj));
            }
            Ok(())
        })
    }

    fn node_status<'a>(
        &'a self,
        n: &'a MediaNode,
        status: &'a MediaNodeStatus,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut s = self.state();
            let name = n.name_any();
            if let Some(stored) = s.nodes.get_mut(&name) {
                let was = stored.status.as_ref().and_then(|st| st.phase);
                if status.phase == Some(MediaNodePhase::Ready) && was != status.phase {
                    println!("node {name} ({}) ready", stored.spec.region);
                }
                stored.status = Some(status.clone());
                let obj = stored.clone();
                s.node_store
                    .apply_watcher_event(&watcher::Event::Apply(obj));
            }
            Ok(())
        })
    }

    fn pool_status<'a>(
        &'a self,
        p: &'a MediaPool,
        status: &'a MediaPoolStatus,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            if let Some(stored) = self.state().pools.get_mut(&p.name_any()) {
                stored.status = Some(status.clone());
            }
            Ok(())
        })
    }

    fn apply_node<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut s = self.state();
            let name = n.name_any();
            let mut obj = n.clone();
            match s.nodes.get(&name) {
                Some(old) => {
                    obj.status = old.status.clone();
                    obj.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
                }
                None => {
                    let i = s.next_port;
                    s.next_port += 1;
                    s.ports.insert(name.clone(), i);
                    obj.metadata.creation_timestamp =
                        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                            k8s_openapi::jiff::Timestamp::now(),
                        ));
                }
            }
            s.node_store
                .apply_watcher_event(&watcher::Event::Apply(obj.clone()));
            s.nodes.insert(name, obj);
            Ok(())
        })
    }

    fn delete_node<'a>(&'a self, _namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.stop(name).await;
            let mut s = self.state();
            s.children.remove(name);
            if let Some(obj) = s.nodes.remove(name) {
                s.node_store
                    .apply_watcher_event(&watcher::Event::Delete(obj));
                println!("node {name} removed");
            }
            Ok(())
        })
    }

    fn event<'a>(
        &'a self,
        object: ObjectReference,
        warning: bool,
        reason: &'a str,
        note: String,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let what = format!(
                "{}/{}",
                object.kind.unwrap_or_default(),
                object.name.unwrap_or_default()
            );
            if warning {
                tracing::warn!(%what, %reason, "{note}");
            } else {
                tracing::info!(%what, %reason, "{note}");
            }
        })
    }

    fn workload<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, Result<Workload>> {
        Box::pin(async move {
            let s = self.state();
            Ok(match s.children.get(&n.name_any()) {
                None => Workload::Absent,
                Some(c) if c.exited || c.child.is_none() => Workload::Gone,
                Some(c) => Workload::Running {
                    admin_url: c.base(),
                    signalling_url: c.base(),
                    relay_address: Some(c.relay.to_string()),
                },
            })
        })
    }

    fn start_workload<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, Result<Started>> {
        Box::pin(async move {
            let mut s = self.state();
            let name = n.name_any();
            let node = self.spawn(&mut s, &name, &n.spec.region)?;
            s.children.insert(name, node);
            Ok(Started::Created)
        })
    }

    fn new_node_name(&self, pool: &MediaPool) -> String {
        self.next_name(&pool.spec.region)
    }

    fn scaled(&self, pool: &MediaPool, d: &ScaleDecision) {
        let f = d.forecast;
        let listed = |what: &str, names: &[String]| {
            if names.is_empty() {
                String::new()
            } else {
                format!(";{what} {}", names.join(", "))
            }
        };
        println!(
            "pool {}: demand {} participants (target {}), wants {} node{}{}{}{}{}{}",
            pool.spec.region,
            f.demand,
            f.target,
            d.desired,
            if d.desired == 1 { "" } else { "s" },
            if d.create == 0 {
                String::new()
            } else {
                format!("; starting {}", d.create)
            },
            listed(" taking back", &d.undrain),
            listed(" draining", &d.drain),
            listed(" moving people off", &d.migrate),
            listed(" removing", &d.delete),
        );
    }
}

impl LocalCluster {
    /// Names a node of `region` as the fabric does without pools (`seoul-1`, `seoul-2`, …).
    pub fn next_name(&self, region: &str) -> String {
        let mut s = self.state();
        let n = s.numbers.entry(region.to_owned()).or_default();
        *n += 1;
        format!("{region}-{n}")
    }
}
