//! The local fabric: moim on one machine, no Kubernetes (`operator local`).
//!
//! The same operator core that runs in a cluster, with stand-ins for what a cluster provides:
//! - **pods** are `media-node` child processes, one per node, in each region, on loopback
//!   ports (`--port-base`, then +10 per node); they are cascaded over QUIC (`--dev` trust:
//!   self-signed, one machine) with the tree links the placement core plans;
//! - **the API server** is an in-process store: kube's reflector [`Store`]s of Meetings and
//!   MediaNodes, written here instead of by watches, read by the real join API;
//! - **`kubectl apply`** is a folder of Meeting YAML files (the files `kubectl` takes), read
//!   again every second: a new or changed file places its meetings, a removed one releases them.
//!
//! Every second the fabric reads each node's `/status` into its MediaNode, places each live
//! meeting with [`place`] (the ledger, the cascade tree and the pushes to the nodes' admin API
//! are the operator's own), and writes the Meeting's status with [`running_status`]. It prints
//! what it does: nodes starting and stopping, where each meeting runs and its relay links.
//! Ctrl-C stops every child: SIGTERM (they drain), then a kill after a few seconds.
//!
//! With `--autoscale` each region behaves as a MediaPool: the real autoscaler
//! ([`autoscale::decide`], fed by [`crate::pool::snapshot_of`]) starts new children ahead of
//! demand, drains idle ones over the admin API (they exit once empty), takes draining ones
//! back, and at the drain deadline marks a node evacuated so the next placement moves its
//! rooms and the node sends its participants to the new one.

use crate::api::{self, ApiState};
use crate::autoscale::{self, PoolMemory};
use crate::context::{Clock, system_clock};
use crate::crd::{
    DRAIN_STARTED, Headroom, MediaNode, MediaNodePhase, MediaPool, MediaPoolSpec, Meeting,
    PoolNodeCapacity,
};
use crate::ledger::Ledger;
use crate::meeting::{ScheduleState, enact, plan_meeting, release, running_status, schedule_state};
use crate::metrics::Metrics;
use crate::nodeapi::{HttpNodeAdmin, NodeAdmin};
use crate::secret::SecretSource;
use anyhow::Context as _;
use axum::Router;
use axum::extract::State;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::SignedDuration;
use kube::ResourceExt;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher;
use moim_wire::admin::room_of;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::process::{Child, Command};

/// Namespace of the fabric's MediaNodes (Meetings keep theirs, `default` when unset).
pub const NODE_NAMESPACE: &str = "moim-local";
/// How often nodes are read, the folder is read and meetings are placed.
const TICK: Duration = Duration::from_secs(1);
/// A meeting's plan is pushed to its nodes again this often even when nothing changed (a
/// node that restarted or missed a push gets it).
const REPUSH_EVERY: u32 = 10;
/// Time a child has to drain and exit after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Flags of `operator local`.
#[derive(Debug, Clone, clap::Args)]
pub struct LocalArgs {
    /// Folder of Meeting YAML files (what `kubectl apply -f` takes), read again every second.
    #[arg(long, default_value = "operator/examples/meetings")]
    pub meetings: PathBuf,
    /// Regions, each with its own media nodes.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "seoul,frankfurt,virginia"
    )]
    pub regions: Vec<String>,
    /// Media nodes per region.
    #[arg(long, default_value_t = 1)]
    pub nodes_per_region: u16,
    /// Address of the join page and the join API (`POST /v1/join`).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// First port of the media nodes: node i serves HTTP on base+10i, media on +1, relay +2.
    #[arg(long, default_value_t = 7900)]
    pub port_base: u16,
    /// Participants the placement puts on one node.
    #[arg(long, default_value_t = 100)]
    pub capacity: u32,
    /// The `media-node` binary (default: the one next to this binary, else on the PATH).
    #[arg(long)]
    pub media_node: Option<PathBuf>,
    /// Join API key (default: a random one, printed; the join page holds it).
    #[arg(long, env = "MOIM_LOCAL_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Log filter of the media nodes (their logs go to this terminal).
    #[arg(long, default_value = "warn")]
    pub node_log: String,
    /// TURN server the join API hands out (repeatable; `REGION=turn:HOST:PORT` or
    /// `turn:HOST:PORT`), e.g. a local coturn with `use-auth-secret`.
    #[arg(long = "turn-url")]
    pub turn_urls: Vec<String>,
    /// The secret shared with the TURN server (its `static-auth-secret`).
    #[arg(long, env = "MOIM_LOCAL_TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,
    /// Autoscale each region like a MediaPool: `--nodes-per-region` is the minimum, new
    /// media-node processes start ahead of demand, idle ones drain and exit.
    #[arg(long)]
    pub autoscale: bool,
    /// Most media nodes per region (with `--autoscale`).
    #[arg(long, default_value_t = 4)]
    pub max_nodes_per_region: u16,
    /// Spare participants kept ready per region (with `--autoscale`).
    #[arg(long, default_value_t = 10)]
    pub headroom: u32,
    /// Spare capacity as a share of demand, percent (with `--autoscale`).
    #[arg(long, default_value_t = 10)]
    pub headroom_percent: u32,
    /// A region shrinks only to the most nodes it wanted over this many seconds.
    #[arg(long, default_value_t = 30)]
    pub scale_down_delay: u32,
    /// Seconds after which participants still on a draining node move to another node.
    #[arg(long, default_value_t = 120)]
    pub drain_deadline: u32,
}

/// One media node child.
struct LocalNode {
    name: String,
    region: String,
    http: SocketAddr,
    relay: SocketAddr,
    child: Option<Child>,
    created: k8s_openapi::jiff::Timestamp,
}

/// Starts media-node children: what a MediaNode's pod is in a cluster.
struct Spawner {
    binary: PathBuf,
    token_secret: String,
    admin_token: String,
    node_log: String,
    port_base: u16,
    /// Index of the next node (its ports are `port_base + 10 * index`).
    next: u16,
    /// Node numbers used per region (names are never reused).
    numbers: BTreeMap<String, u16>,
    /// `--drain-timeout` of each child.
    drain_timeout: String,
}

impl Spawner {
    fn spawn(
        &mut self,
        region: &str,
        now: k8s_openapi::jiff::Timestamp,
    ) -> anyhow::Result<LocalNode> {
        let port = self
            .port_base
            .checked_add(self.next.saturating_mul(10))
            .filter(|p| p.checked_add(2).is_some())
            .context("--port-base too high for this many nodes")?;
        self.next += 1;
        let n = self.numbers.entry(region.to_owned()).or_default();
        *n += 1;
        let mut node = LocalNode {
            name: format!("{region}-{n}"),
            region: region.to_owned(),
            http: SocketAddr::from(([127, 0, 0, 1], port)),
            relay: SocketAddr::from(([127, 0, 0, 1], port + 2)),
            child: None,
            created: now,
        };
        let udp = SocketAddr::from(([127, 0, 0, 1], port + 1));
        let child = Command::new(&self.binary)
            .args(["--dev", "--node-id", &node.name, "--region", &node.region])
            .args(["--http", &node.http.to_string(), "--udp", &udp.to_string()])
            .args(["--relay-listen", &node.relay.to_string()])
            .args([
                "--drain-timeout",
                &self.drain_timeout,
                "--log",
                &self.node_log,
            ])
            .env("MOIM_TOKEN_SECRET", &self.token_secret)
            .env("MOIM_ADMIN_TOKEN", &self.admin_token)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} (give --media-node)", self.binary.display()))?;
        println!(
            "node {} ({}) starting: http://{} (media udp {udp}, relay quic {})",
            node.name, node.region, node.http, node.relay
        );
        node.child = Some(child);
        Ok(node)
    }
}

impl LocalNode {
    fn base(&self) -> String {
        format!("http://{}", self.http)
    }
}

/// One Meeting file's object, as last read.
struct Applied {
    meeting: Meeting,
    file: PathBuf,
}

fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn media_node_binary(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_owned();
    }
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("media-node")))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("media-node"))
}

/// Reads every Meeting in `dir` (`*.yaml`/`*.yml`, several documents per file allowed).
/// A file that does not parse or breaks the CRD's rules is reported and skipped; the rest
/// still apply.
pub fn read_meetings(dir: &Path) -> (Vec<(PathBuf, Meeting)>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(d) => d
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect(),
        Err(e) => {
            problems.push(format!("{}: {e}", dir.display()));
            return (out, problems);
        }
    };
    files.sort();
    for file in files {
        let Ok(text) = std::fs::read_to_string(&file) else {
            problems.push(format!("{}: unreadable", file.display()));
            continue;
        };
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value: serde_yaml::Value = match serde::Deserialize::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(format!("{}: {e}", file.display()));
                    break;
                }
            };
            if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("Meeting") {
                continue;
            }
            match serde_yaml::from_value::<Meeting>(value) {
                Ok(mut m) => {
                    if let Err(e) = m.validate_cel() {
                        problems.push(format!(
                            "{}: {} is invalid: {e}",
                            file.display(),
                            m.name_any()
                        ));
                        continue;
                    }
                    if m.metadata.namespace.is_none() {
                        m.metadata.namespace = Some("default".into());
                    }
                    m.status = None;
                    out.push((file.clone(), m));
                }
                Err(e) => problems.push(format!("{}: not a Meeting: {e}", file.display())),
            }
        }
    }
    (out, problems)
}

fn plural(what: &str, n: usize) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(";{what} {n}")
    }
}

fn listed(what: &str, names: &[String]) -> String {
    if names.is_empty() {
        String::new()
    } else {
        format!(";{what} {}", names.join(", "))
    }
}

fn key_of(m: &Meeting) -> String {
    format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any())
}

/// The fabric's state.
struct Fabric {
    nodes: Vec<LocalNode>,
    node_store: Writer<MediaNode>,
    meeting_store: Writer<Meeting>,
    node_objects: BTreeMap<String, MediaNode>,
    applied: BTreeMap<String, Applied>,
    /// Spec generations: bumped when a file's spec changes (nodes refuse older plans).
    generations: BTreeMap<String, (String, i64)>,
    ledger: Ledger,
    admin: Arc<dyn NodeAdmin>,
    metrics: Metrics,
    clock: Clock,
    capacity: u32,
    ticks: u32,
    /// What was last printed per meeting, so only changes are printed.
    shown: BTreeMap<String, String>,
    /// With `--autoscale`: each region's pool and what its autoscaler remembers.
    pools: BTreeMap<String, (MediaPool, PoolMemory)>,
    spawner: Spawner,
}

/// The MediaPool a region of the fabric behaves as.
fn local_pool(region: &str, args: &LocalArgs) -> MediaPool {
    let mut p = MediaPool::new(
        region,
        MediaPoolSpec {
            region: region.to_owned(),
            zone: None,
            min_nodes: u32::from(args.nodes_per_region),
            max_nodes: u32::from(args.max_nodes_per_region.max(args.nodes_per_region)),
            node_capacity: PoolNodeCapacity {
                participants: args.capacity,
                published_tracks: None,
                egress_mbps: None,
            },
            headroom: Headroom {
                participants: args.headroom,
                percent: args.headroom_percent,
            },
            scale_down_delay_seconds: args.scale_down_delay,
            drain_deadline_seconds: args.drain_deadline,
            // A local process is serving within a second or two.
            node_startup_seconds: 3,
            resources: None,
            priority_class_name: None,
        },
    );
    p.metadata.namespace = Some(NODE_NAMESPACE.to_owned());
    p
}

/// Runs the fabric until Ctrl-C or SIGTERM.
pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    let token_secret = random_hex(32);
    let admin_token = random_hex(24);
    let api_key = args.api_key.clone().unwrap_or_else(|| random_hex(16));
    let binary = media_node_binary(args.media_node.as_deref());
    anyhow::ensure!(!args.regions.is_empty(), "--regions names no region");
    let mut spawner = Spawner {
        binary,
        token_secret: token_secret.clone(),
        admin_token: admin_token.clone(),
        node_log: args.node_log.clone(),
        port_base: args.port_base,
        next: 0,
        numbers: BTreeMap::new(),
        // Without autoscaling a drain is only Ctrl-C; with it, a drained node must outlive
        // the drain deadline (its participants are moved then, never cut).
        drain_timeout: if args.autoscale {
            format!("{}s", u64::from(args.drain_deadline) + 60)
        } else {
            "3s".into()
        },
    };
    let mut nodes = Vec::new();
    let started = k8s_openapi::jiff::Timestamp::now();
    for region in &args.regions {
        for _ in 0..args.nodes_per_region {
            nodes.push(spawner.spawn(region, started)?);
        }
    }

    let turn = if args.turn_urls.is_empty() {
        None
    } else {
        Some(crate::turn::TurnConfig {
            secret: SecretSource::Value(
                args.turn_secret
                    .clone()
                    .context("--turn-url needs --turn-secret")?,
            ),
            urls: crate::turn::parse_urls(&args.turn_urls).map_err(anyhow::Error::msg)?,
            ttl_secs: 3600,
        })
    };
    let (meetings_reader, meeting_store) = reflector::store::<Meeting>();
    let (nodes_reader, node_store) = reflector::store::<MediaNode>();
    let metrics = Metrics::new();
    let clock = system_clock();
    let (_ready_tx, ready) = tokio::sync::watch::channel(true);
    let state = Arc::new(ApiState {
        meetings: meetings_reader.clone(),
        nodes: nodes_reader,
        metrics: metrics.clone(),
        api_keys: SecretSource::Value(api_key.clone()),
        token_secret: SecretSource::Value(token_secret.clone()),
        clock: clock.clone(),
        token_ttl_secs: 3600,
        ready,
        turn,
    });
    let page = PageState {
        api_key: api_key.clone(),
        meetings: meetings_reader,
        regions: args.regions.clone(),
    };
    let app = api::router(state).merge(
        Router::new()
            .route("/", get(join_page))
            .route("/local/meetings", get(list_meetings))
            .with_state(Arc::new(page)),
    );
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let admin = Arc::new(
        HttpNodeAdmin::new(SecretSource::Value(admin_token.clone()))
            .map_err(|e| anyhow::anyhow!("node admin client: {e}"))?,
    );
    let mut fabric = Fabric {
        nodes,
        node_store,
        meeting_store,
        node_objects: BTreeMap::new(),
        applied: BTreeMap::new(),
        generations: BTreeMap::new(),
        ledger: Ledger::default(),
        admin,
        metrics,
        clock,
        capacity: args.capacity,
        ticks: 0,
        shown: BTreeMap::new(),
        pools: if args.autoscale {
            args.regions
                .iter()
                .map(|r| (r.clone(), (local_pool(r, &args), PoolMemory::default())))
                .collect()
        } else {
            BTreeMap::new()
        },
        spawner,
    };
    fabric.node_store.apply_watcher_event(&watcher::Event::Init);
    fabric
        .node_store
        .apply_watcher_event(&watcher::Event::InitDone);
    fabric
        .meeting_store
        .apply_watcher_event(&watcher::Event::Init);
    fabric
        .meeting_store
        .apply_watcher_event(&watcher::Event::InitDone);
    println!(
        "join page: http://{}/  (join API: POST http://{}/v1/join, API key {api_key})",
        args.listen, args.listen
    );
    println!("meetings from {}", args.meetings.display());
    let mut tick = tokio::time::interval(TICK);
    let stop = wait_for_stop();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = tick.tick() => fabric.tick(&args.meetings).await,
            () = &mut stop => break,
        }
        if server.is_finished() {
            eprintln!("the join API stopped");
            break;
        }
    }
    println!("stopping {} media nodes", fabric.nodes.len());
    fabric.stop().await;
    Ok(())
}

impl Fabric {
    async fn tick(&mut self, dir: &Path) {
        self.ticks = self.ticks.wrapping_add(1);
        self.observe_nodes().await;
        self.read_folder(dir).await;
        // Give the nodes a few seconds to come up before placing (a meeting placed on no node
        // would only be placed again a second later).
        let starting = self.node_objects.values().any(|n| {
            n.status
                .as_ref()
                .is_none_or(|s| s.phase.is_none() || s.phase == Some(MediaNodePhase::Starting))
        });
        if !self.pools.is_empty() {
            self.autoscale().await;
        }
        if !starting || self.ticks > 10 {
            self.place_all().await;
        }
    }

    /// One autoscaler look at every region, applied to the children: new processes, drains
    /// and take-backs over the admin API, evacuations (the next placement moves the rooms)
    /// and removal of nodes that drained empty (they exit by themselves) or died.
    async fn autoscale(&mut self) {
        let now = (self.clock)();
        let meetings: Vec<Meeting> = self.applied.values().map(|a| a.meeting.clone()).collect();
        let regions: Vec<String> = self.pools.keys().cloned().collect();
        for region in regions {
            let decision = {
                let Some((pool, memory)) = self.pools.get_mut(&region) else {
                    continue;
                };
                let snap = crate::pool::snapshot_of(
                    pool,
                    self.node_objects.values(),
                    meetings.iter(),
                    &self.ledger,
                    now,
                    SignedDuration::from_secs(30),
                    SignedDuration::from_mins(10),
                );
                let policy = crate::pool::policy_of(pool, TICK);
                autoscale::decide(&policy, &snap, memory)
            };
            if decision.is_idle() {
                continue;
            }
            let f = decision.forecast;
            println!(
                "pool {region}: demand {} participants (target {}), wants {} node{}{}{}{}{}{}",
                f.demand,
                f.target,
                decision.desired,
                if decision.desired == 1 { "" } else { "s" },
                plural(" starting", decision.create as usize),
                listed(" taking back", &decision.undrain),
                listed(" draining", &decision.drain),
                listed(" moving people off", &decision.migrate),
                listed(" removing", &decision.delete),
            );
            for _ in 0..decision.create {
                match self.spawner.spawn(&region, now) {
                    Ok(n) => self.nodes.push(n),
                    Err(e) => eprintln!("pool {region}: cannot start a node: {e:#}"),
                }
            }
            for name in &decision.undrain {
                self.set_drain(name, None, false);
                if let Some(base) = self.base_of(name)
                    && let Err(e) = self.admin.undrain(&base).await
                {
                    eprintln!("node {name}: not taken back: {e}");
                }
            }
            for name in &decision.drain {
                self.set_drain(name, Some(now), false);
                if let Some(base) = self.base_of(name)
                    && let Err(e) = self.admin.drain(&base).await
                {
                    eprintln!("node {name}: drain refused: {e}");
                }
            }
            for name in &decision.migrate {
                let started = self
                    .node_objects
                    .get(name)
                    .and_then(|n| n.annotations().get(DRAIN_STARTED)?.parse().ok())
                    .unwrap_or(now);
                self.set_drain(name, Some(started), true);
            }
            for name in &decision.delete {
                self.remove_node(name).await;
            }
        }
    }

    fn base_of(&self, name: &str) -> Option<String> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .map(LocalNode::base)
    }

    /// Writes `drain` (since when) and `evacuate` into the node's MediaNode.
    fn set_drain(
        &mut self,
        name: &str,
        since: Option<k8s_openapi::jiff::Timestamp>,
        evacuate: bool,
    ) {
        let Some(obj) = self.node_objects.get_mut(name) else {
            return;
        };
        obj.spec.drain = since.is_some();
        obj.spec.evacuate = evacuate && since.is_some();
        let annotations = obj.metadata.annotations.get_or_insert_with(BTreeMap::new);
        match since {
            Some(t) => annotations.insert(DRAIN_STARTED.to_owned(), t.to_string()),
            None => annotations.remove(DRAIN_STARTED),
        };
        self.node_store
            .apply_watcher_event(&watcher::Event::Apply(obj.clone()));
    }

    /// Deletes a node that drained empty or died: its process is stopped if it still runs.
    async fn remove_node(&mut self, name: &str) {
        if let Some(i) = self.nodes.iter().position(|n| n.name == name) {
            let mut node = self.nodes.remove(i);
            if let Some(mut child) = node.child.take() {
                terminate(&child);
                if tokio::time::timeout(STOP_GRACE, child.wait())
                    .await
                    .is_err()
                {
                    let _ = child.kill().await;
                }
            }
        }
        if let Some(obj) = self.node_objects.remove(name) {
            self.node_store
                .apply_watcher_event(&watcher::Event::Delete(obj));
        }
        println!("node {name} removed");
    }

    /// Reads each node's `/status` into its MediaNode; notices children that exited.
    async fn observe_nodes(&mut self) {
        let now = (self.clock)();
        for i in 0..self.nodes.len() {
            let exited = match self.nodes[i].child.as_mut().map(Child::try_wait) {
                Some(Ok(Some(status))) => Some(status.to_string()),
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            };
            let (name, region, base, relay) = {
                let n = &self.nodes[i];
                (n.name.clone(), n.region.clone(), n.base(), n.relay)
            };
            let created = self.nodes[i].created;
            let pooled = self.pools.contains_key(&region);
            let mut obj = self.node_objects.get(&name).cloned().unwrap_or_else(|| {
                let mut n = MediaNode::in_region(&name, NODE_NAMESPACE, &region, self.capacity);
                n.metadata.creation_timestamp = Some(Time(created));
                if pooled {
                    n.spec.pool = Some(region.clone());
                }
                n
            });
            let mut status = obj.status.clone().unwrap_or_default();
            let before = status.phase;
            status.signalling_url = Some(base.clone());
            status.admin_url = Some(base.clone());
            status.relay_address = Some(relay.to_string());
            if let Some(why) = exited {
                if self.nodes[i].child.take().is_some() {
                    println!("node {name} exited ({why})");
                }
                status.phase = Some(MediaNodePhase::Gone);
                status.load = None;
            } else if self.nodes[i].child.is_some() {
                match self.admin.status(&base).await {
                    Ok(report) => {
                        status.phase = Some(if report.draining {
                            MediaNodePhase::Draining
                        } else {
                            MediaNodePhase::Ready
                        });
                        status.load = Some(crate::medianode::load_of(&report));
                        status.meetings = crate::medianode::meetings_of(&report);
                        status.last_report = Some(Time(now));
                    }
                    Err(_) => {
                        if status.phase.is_none() {
                            status.phase = Some(MediaNodePhase::Starting);
                        }
                    }
                }
            }
            if status.phase != before && status.phase == Some(MediaNodePhase::Ready) {
                println!("node {name} ({region}) ready");
            }
            obj.status = Some(status);
            self.node_store
                .apply_watcher_event(&watcher::Event::Apply(obj.clone()));
            self.node_objects.insert(name, obj);
        }
    }

    /// Applies the folder: new and changed Meetings go into the store, removed ones are
    /// released and deleted.
    async fn read_folder(&mut self, dir: &Path) {
        let (found, problems) = read_meetings(dir);
        for p in problems {
            if let std::collections::btree_map::Entry::Vacant(e) =
                self.shown.entry(format!("problem {p}"))
            {
                eprintln!("skipped: {p}");
                e.insert(String::new());
            }
        }
        let mut seen = Vec::new();
        for (file, mut m) in found {
            let key = key_of(&m);
            if seen.contains(&key) {
                continue;
            }
            seen.push(key.clone());
            let spec = serde_json::to_string(&m.spec).unwrap_or_default();
            let generation = match self.generations.get(&key) {
                Some((old, g)) if *old == spec => *g,
                Some((_, g)) => g + 1,
                None => 1,
            };
            let changed = self
                .generations
                .get(&key)
                .is_none_or(|(_, g)| *g != generation);
            self.generations.insert(key.clone(), (spec, generation));
            m.metadata.generation = Some(generation);
            if let Some(old) = self.applied.get(&key) {
                m.status = old.meeting.status.clone();
            }
            if changed {
                println!("meeting {key} applied from {}", file.display());
            }
            self.applied.insert(key, Applied { meeting: m, file });
        }
        let gone: Vec<String> = self
            .applied
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for key in gone {
            let Some(a) = self.applied.remove(&key) else {
                continue;
            };
            self.generations.remove(&key);
            self.shown.remove(&key);
            let plan = self.ledger.forget(&key);
            let nodes = self.node_list();
            let room = room_of(
                &a.meeting.namespace().unwrap_or_default(),
                &a.meeting.name_any(),
            );
            release(
                self.admin.as_ref(),
                &self.metrics,
                &nodes,
                &room,
                plan.iter().flat_map(|p| p.nodes()),
            )
            .await;
            self.meeting_store
                .apply_watcher_event(&watcher::Event::Delete(a.meeting));
            println!(
                "meeting {key} removed ({} is gone); its rooms were released",
                a.file.display()
            );
        }
    }

    fn node_list(&self) -> Vec<Arc<MediaNode>> {
        self.node_objects.values().cloned().map(Arc::new).collect()
    }

    /// Places every applied meeting and writes its status.
    async fn place_all(&mut self) {
        let now = (self.clock)();
        let nodes = self.node_list();
        let keys: Vec<String> = self.applied.keys().cloned().collect();
        for key in keys {
            let Some(m) = self.applied.get(&key).map(|a| a.meeting.clone()) else {
                continue;
            };
            let room = room_of(&m.namespace().unwrap_or_default(), &m.name_any());
            let status = match schedule_state(&m, now, SignedDuration::from_mins(10)) {
                ScheduleState::Live => {
                    let previous = self.ledger.plan(&key).cloned();
                    let plan = plan_meeting(
                        &mut self.ledger,
                        &m,
                        previous.as_ref(),
                        nodes.iter().map(AsRef::as_ref),
                        now,
                        SignedDuration::from_secs(30),
                    );
                    // Pushed when it changed, and every few seconds in case a node missed it.
                    let errors = if previous.as_ref() != Some(&plan)
                        || self.ticks.is_multiple_of(REPUSH_EVERY)
                    {
                        enact(
                            self.admin.as_ref(),
                            &self.metrics,
                            &m,
                            &plan,
                            previous.as_ref(),
                            &nodes,
                        )
                        .await
                    } else {
                        Vec::new()
                    };
                    running_status(&m, &plan, &nodes, &errors, now)
                }
                ScheduleState::NotYet(at) => {
                    self.show(&key, format!("meeting {key} is scheduled; placed at {at}"));
                    continue;
                }
                ScheduleState::Ended => {
                    if let Some(plan) = self.ledger.forget(&key) {
                        release(
                            self.admin.as_ref(),
                            &self.metrics,
                            &nodes,
                            &room,
                            plan.nodes().into_iter(),
                        )
                        .await;
                    }
                    self.show(&key, format!("meeting {key} has ended"));
                    continue;
                }
            };
            let placed = if status.nodes.is_empty() {
                let why = status
                    .conditions
                    .iter()
                    .find(|c| c.type_ == "Placed")
                    .map(|c| c.message.clone())
                    .unwrap_or_default();
                format!("meeting {key} not placed: {why}")
            } else {
                let nodes: Vec<String> = status
                    .nodes
                    .iter()
                    .map(|n| format!("{} ({})", n.node, n.region))
                    .collect();
                let links: Vec<String> = status
                    .links
                    .iter()
                    .map(|l| format!("{} → {}", l.from, l.to))
                    .collect();
                format!(
                    "meeting {key} on {}; relay links: {}",
                    nodes.join(", "),
                    if links.is_empty() {
                        "none".into()
                    } else {
                        links.join(", ")
                    }
                )
            };
            self.show(&key, placed);
            if let Some(a) = self.applied.get_mut(&key) {
                a.meeting.status = Some(status);
                self.meeting_store
                    .apply_watcher_event(&watcher::Event::Apply(a.meeting.clone()));
            }
        }
    }

    /// Prints `line` for `key` when it differs from what was printed last.
    fn show(&mut self, key: &str, line: String) {
        if self.shown.get(key) != Some(&line) {
            println!("{line}");
            self.shown.insert(key.to_owned(), line);
        }
    }

    /// SIGTERM to every child (they drain), then a kill for any still running.
    async fn stop(&mut self) {
        for child in self.nodes.iter().filter_map(|n| n.child.as_ref()) {
            terminate(child);
        }
        let deadline = tokio::time::Instant::now() + STOP_GRACE;
        for n in &mut self.nodes {
            let Some(child) = n.child.as_mut() else {
                continue;
            };
            match tokio::time::timeout_at(deadline, child.wait()).await {
                Ok(_) => println!("node {} stopped", n.name),
                Err(_) => {
                    let _ = child.kill().await;
                    println!("node {} killed (did not stop in {STOP_GRACE:?})", n.name);
                }
            }
        }
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

async fn wait_for_stop() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

struct PageState {
    api_key: String,
    meetings: Store<Meeting>,
    regions: Vec<String>,
}

/// `GET /local/meetings`: the applied meetings, with where they run.
async fn list_meetings(State(s): State<Arc<PageState>>) -> Response {
    let mut list: Vec<serde_json::Value> = s
        .meetings
        .state()
        .iter()
        .map(|m| {
            let st = m.status.clone().unwrap_or_default();
            serde_json::json!({
                "namespace": m.namespace().unwrap_or_default(),
                "name": m.name_any(),
                "title": m.spec.title,
                "regions": m.spec.participants.per_region().keys().collect::<Vec<_>>(),
                "nodes": st.nodes.iter().map(|n| format!("{} ({})", n.node, n.region)).collect::<Vec<_>>(),
                "participants": st.participants.unwrap_or(0),
            })
        })
        .collect();
    list.sort_by_key(|v| v["name"].as_str().unwrap_or_default().to_owned());
    axum::Json(serde_json::json!({"regions": s.regions, "meetings": list})).into_response()
}

/// `GET /`: pick a meeting, a region and a name; the page asks the join API for a token and
/// opens the chosen node's web client with it. The page holds the fabric's API key: the local
/// fabric is for one machine (in a cluster your backend calls the join API, never a browser).
async fn join_page(State(s): State<Arc<PageState>>) -> Html<String> {
    Html(JOIN_PAGE.replace(
        "__API_KEY__",
        &serde_json::to_string(&s.api_key).unwrap_or_default(),
    ))
}

const JOIN_PAGE: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>moim — local fabric</title>
<style>
body { font: 15px system-ui, sans-serif; max-width: 44rem; margin: 2rem auto; padding: 0 1rem; }
table { border-collapse: collapse; width: 100%; } td, th { text-align: left; padding: .3rem .5rem; border-bottom: 1px solid #ddd; }
form { margin: 1rem 0; display: flex; gap: .5rem; flex-wrap: wrap; } #error { color: #b00; }
</style></head><body>
<h1>moim (모임) — local fabric</h1>
<p>Meetings from the folder, placed on media nodes in each region. Join one: you are sent to
the node of the region you pick, and the nodes relay each stream between regions over QUIC.</p>
<table id="meetings"><thead><tr><th>meeting</th><th>title</th><th>runs on</th><th>people</th></tr></thead><tbody></tbody></table>
<form id="join">
  <select id="meeting" aria-label="meeting"></select>
  <select id="region" aria-label="region"></select>
  <input id="name" placeholder="your name" required>
  <button>Join</button>
</form>
<p id="error"></p>
<script>
const API_KEY = __API_KEY__;
const $ = (id) => document.getElementById(id);
async function refresh() {
  const r = await (await fetch('/local/meetings')).json();
  const body = $('meetings').tBodies[0];
  body.replaceChildren(...r.meetings.map((m) => {
    const tr = document.createElement('tr');
    for (const v of [`${m.namespace}/${m.name}`, m.title, m.nodes.join(', ') || 'not placed', m.participants]) {
      const td = document.createElement('td'); td.textContent = v; tr.append(td);
    }
    return tr;
  }));
  if (!$('meeting').options.length) {
    for (const m of r.meetings) $('meeting').add(new Option(`${m.namespace}/${m.name}`, JSON.stringify([m.namespace, m.name])));
    for (const g of r.regions) $('region').add(new Option(g, g));
  }
}
$('join').onsubmit = async (e) => {
  e.preventDefault();
  const [namespace, meeting] = JSON.parse($('meeting').value);
  const name = $('name').value;
  const identity = name.toLowerCase().replace(/[^a-z0-9]+/g, '-') + '-' + Math.random().toString(36).slice(2, 7);
  const r = await fetch('/v1/join', {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ namespace, meeting, identity, name, region: $('region').value }),
  });
  const j = await r.json();
  if (!r.ok) { $('error').textContent = j.message; return; }
  const ice = j.iceServers ? `&ice=${encodeURIComponent(JSON.stringify(j.iceServers))}` : '';
  location.href = `${j.url}/?room=${encodeURIComponent(j.room)}&name=${encodeURIComponent(name)}&token=${encodeURIComponent(j.token)}&autojoin=1${ice}`;
};
refresh(); setInterval(refresh, 2000);
</script></body></html>
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_meetings_are_read_and_bad_files_are_reported_not_fatal() {
        let dir = std::env::temp_dir().join(format!("moim-local-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/meetings");
        for e in std::fs::read_dir(&examples).expect("examples") {
            let p = e.expect("entry").path();
            std::fs::copy(&p, dir.join(p.file_name().expect("name"))).expect("copy");
        }
        std::fs::write(dir.join("broken.yaml"), "kind: Meeting\nspec: [").expect("write");
        std::fs::write(
            dir.join("invalid.yaml"),
            "apiVersion: media.moim.dev/v1alpha1\nkind: Meeting\nmetadata: {name: x}\nspec:\n  title: t\n  participants: {}\n",
        )
        .expect("write");
        std::fs::write(dir.join("notes.txt"), "not yaml").expect("write");
        let (found, problems) = read_meetings(&dir);
        let names: Vec<String> = found.iter().map(|(_, m)| key_of(m)).collect();
        assert_eq!(names, ["default/all-hands", "default/standup"]);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems.iter().any(|p| p.contains("broken.yaml")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("invalid.yaml")),
            "{problems:?}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
