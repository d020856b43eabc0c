//! The local fabric: moim on one machine, no Kubernetes (`operator local`).
//!
//! The operator's own reconcilers ([`crate::control`]) on a cluster of the fabric's making
//! ([`cluster::LocalCluster`]):
//! - **pods** are `media-node` child processes, one per MediaNode, on loopback ports
//!   (`--port-base`, then +10 per node), cascaded over QUIC (`--dev` trust: self-signed, one
//!   machine) with the tree links the placement plans;
//! - **the API server** is an in-process store of Meetings, MediaNodes and MediaPools, which
//!   the real join API reads as it reads watch caches;
//! - **`kubectl apply`** is a folder of Meeting YAML files (the files `kubectl` takes), read
//!   again every second: a new or changed file places its meetings, a removed one releases them.
//!
//! Every second the fabric reconciles each MediaNode (its child, its `/status`, a drain request
//! passed on), each MediaPool with `--autoscale` (each region behaves as one: the real
//! autoscaler starts children ahead of demand, drains idle ones, moves people off at the drain
//! deadline and removes drained ones), and each Meeting whose resync is due or whose nodes
//! changed, with the operator's timings ([`Settings`]). It prints what it does. Ctrl-C stops
//! every child: SIGTERM (they drain), then a kill after a few seconds.

mod cluster;
mod page;

use crate::api::{self, ApiState};
use crate::control::{ControlCtx, Next};
use crate::core::autoscale::PoolMemory;
use crate::core::ledger::Ledger;
use crate::crd::{
    Headroom, MediaNode, MediaPool, MediaPoolSpec, Meeting, MeetingPhase, PoolNodeCapacity,
};
use crate::k8s::context::{Clock, Settings, system_clock};
use crate::metrics::Metrics;
use crate::nodeapi::HttpNodeAdmin;
use crate::secret::SecretSource;
use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use cluster::{LocalCluster, Spawner};
use kube::ResourceExt;
use kube::runtime::reflector;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Namespace of the fabric's MediaNodes and MediaPools (Meetings keep theirs, `default` when
/// unset).
pub const NODE_NAMESPACE: &str = "moim-local";
/// How often the fabric looks at everything.
const TICK: Duration = Duration::from_secs(1);

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
    /// Round-trip times between regions in milliseconds (`a:b=ms,...`): the nearest region
    /// serves one whose node died. The default is roughly the real one between the default
    /// regions.
    #[arg(
        long,
        default_value = "seoul:frankfurt=230,seoul:virginia=190,frankfurt:virginia=90"
    )]
    pub region_distances: crate::core::regions::Distances,
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
        let (meetings, said) = parse_meetings(&text);
        out.extend(meetings.into_iter().map(|m| (file.clone(), m)));
        problems.extend(said.into_iter().map(|p| format!("{}: {p}", file.display())));
    }
    (out, problems)
}

/// The Meetings in one YAML text (several documents allowed; documents of other kinds are
/// skipped), each checked against the CRD's rules, with what was wrong with the rest. A
/// document that does not parse ends the text (YAML cannot resynchronise after it).
pub fn parse_meetings(text: &str) -> (Vec<Meeting>, Vec<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let value: serde_yaml::Value = match serde::Deserialize::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                problems.push(e.to_string());
                break;
            }
        };
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("Meeting") {
            continue;
        }
        match serde_yaml::from_value::<Meeting>(value) {
            Ok(mut m) => {
                if let Err(e) = m.validate_cel() {
                    problems.push(format!("{} is invalid: {e}", m.name_any()));
                    continue;
                }
                if m.metadata.namespace.is_none() {
                    m.metadata.namespace = Some("default".into());
                }
                m.status = None;
                out.push(m);
            }
            Err(e) => problems.push(format!("not a Meeting: {e}")),
        }
    }
    (out, problems)
}

/// The operator's timings, as the fabric runs them: the same placement and autoscaling
/// settings, looked at every second (children are there in a second, pods take longer).
fn local_settings(args: &LocalArgs) -> Settings {
    Settings {
        node_poll: TICK,
        report_every: Duration::ZERO,
        meeting_resync: Duration::from_secs(10),
        pool_interval: TICK,
        distances: args.region_distances.clone(),
        rejoin_url: Some(format!("http://{}/v1/rejoin", browser_addr(args.listen))),
        ..Settings::default()
    }
}

/// The address a browser on this machine reaches `listen` at (a wildcard listens on loopback
/// too).
fn browser_addr(listen: SocketAddr) -> SocketAddr {
    if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), listen.port())
    } else {
        listen
    }
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
    p.metadata.uid = Some(format!("local-pool-{region}"));
    p
}

fn key_of(m: &Meeting) -> String {
    format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any())
}

/// What the reconcilers act with.
struct Parts {
    cluster: Arc<LocalCluster>,
    admin: Arc<HttpNodeAdmin>,
    ledger: Mutex<Ledger>,
    memories: Mutex<HashMap<String, PoolMemory>>,
    metrics: Metrics,
    clock: Clock,
    settings: Settings,
}

/// The fabric's state between ticks.
struct Fabric {
    parts: Parts,
    /// Spec and generation per Meeting file key (nodes refuse older plans).
    generations: BTreeMap<String, (String, i64)>,
    /// Where each meeting came from.
    files: BTreeMap<String, PathBuf>,
    notes: Notes,
    ticks: u32,
}

/// What the fabric remembers about its meetings between ticks.
#[derive(Default)]
struct Notes {
    /// When each meeting is looked at again, and the generation it was last looked at.
    due: HashMap<String, (Instant, i64)>,
    /// The nodes' placement-relevant state at the last look at the meetings.
    fleet: u64,
    /// What was last printed per meeting (or problem), so only changes are printed.
    shown: BTreeMap<String, String>,
}

impl Notes {
    /// Prints `line` for `key` when it differs from what was printed last.
    fn show(&mut self, key: &str, line: String) {
        if self.shown.get(key) != Some(&line) {
            println!("{line}");
            self.shown.insert(key.to_owned(), line);
        }
    }
}

/// Runs the fabric until Ctrl-C or SIGTERM.
pub async fn run(args: LocalArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!args.regions.is_empty(), "--regions names no region");
    let token_secret = random_hex(32);
    let admin_token = random_hex(24);
    let api_key = args.api_key.clone().unwrap_or_else(|| random_hex(16));
    let spawner = Spawner {
        binary: media_node_binary(args.media_node.as_deref()),
        token_secret: token_secret.clone(),
        admin_token: admin_token.clone(),
        node_log: args.node_log.clone(),
        port_base: args.port_base,
        // Without autoscaling a drain is only Ctrl-C; with it, a drained node must outlive
        // the drain deadline (its participants are moved then, never cut).
        drain_timeout: if args.autoscale {
            format!("{}s", u64::from(args.drain_deadline) + 60)
        } else {
            "3s".into()
        },
    };
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
    let cluster = Arc::new(LocalCluster::new(spawner, meeting_store, node_store));
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
        distances: args.region_distances.clone(),
    });
    let page = page::PageState {
        api_key: api_key.clone(),
        meetings: meetings_reader,
        regions: args.regions.clone(),
    };
    let app = api::router(state).merge(
        Router::new()
            .route("/", get(page::join_page))
            .route("/local/meetings", get(page::list_meetings))
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
    // Each region: a pool that makes its nodes (`--autoscale`), or fixed nodes.
    for region in &args.regions {
        if args.autoscale {
            cluster.apply_pool(local_pool(region, &args));
        } else {
            for _ in 0..args.nodes_per_region {
                let mut n = MediaNode::in_region(
                    &cluster.next_name(region),
                    NODE_NAMESPACE,
                    region,
                    args.capacity,
                );
                n.metadata.generation = Some(1);
                crate::control::Cluster::apply_node(cluster.as_ref(), &n).await?;
            }
        }
    }
    let mut fabric = Fabric {
        parts: Parts {
            cluster: cluster.clone(),
            admin,
            ledger: Mutex::new(Ledger::default()),
            memories: Mutex::new(HashMap::new()),
            metrics,
            clock,
            settings: local_settings(&args),
        },
        generations: BTreeMap::new(),
        files: BTreeMap::new(),
        notes: Notes::default(),
        ticks: 0,
    };
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
    let (_, nodes, _) = cluster.snapshot();
    println!("stopping {} media nodes", nodes.len());
    cluster.stop_all().await;
    Ok(())
}

/// What the reconcilers decide with, now (borrowing only what does not change between ticks,
/// so the fabric can keep its own notes meanwhile).
fn control_ctx<'a>(parts: &'a Parts) -> ControlCtx<'a> {
    let (meetings, nodes, _) = parts.cluster.snapshot();
    ControlCtx {
        cluster: parts.cluster.as_ref(),
        admin: parts.admin.as_ref(),
        ledger: &parts.ledger,
        pools: &parts.memories,
        metrics: &parts.metrics,
        settings: &parts.settings,
        now: (parts.clock)(),
        nodes: nodes.into_iter().map(Arc::new).collect(),
        meetings: meetings.into_iter().map(Arc::new).collect(),
    }
}

impl Fabric {
    fn cx(&self) -> ControlCtx<'_> {
        control_ctx(&self.parts)
    }

    async fn tick(&mut self, dir: &Path) {
        self.ticks = self.ticks.wrapping_add(1);
        self.parts.cluster.reap();
        self.read_folder(dir).await;
        // The operator's MediaNode reconciler, for every node.
        let cx = self.cx();
        for n in cx.nodes.clone() {
            if let Err(e) = crate::control::medianode::reconcile(&n, &cx).await {
                tracing::warn!(node = %n.name_any(), error = %e, "node not reconciled");
            }
        }
        // The autoscaler, for every region (with `--autoscale`).
        let (_, _, pools) = self.parts.cluster.snapshot();
        if !pools.is_empty() {
            let cx = self.cx();
            for p in &pools {
                if let Err(e) = crate::control::pool::reconcile(p, &cx).await {
                    eprintln!("pool {}: {e}", p.spec.region);
                }
            }
        }
        // Give the nodes a few seconds to come up before placing (a meeting placed on no
        // node would only be placed again a second later).
        let cx = control_ctx(&self.parts);
        let starting = cx.nodes.iter().any(|n| {
            n.status.as_ref().is_none_or(|s| {
                s.phase.is_none() || s.phase == Some(crate::crd::MediaNodePhase::Starting)
            })
        });
        if starting && self.ticks <= 10 {
            return;
        }
        place_all(&mut self.notes, &cx).await;
    }

    /// Applies the folder: new and changed Meetings go into the store, removed ones are
    /// released and deleted.
    async fn read_folder(&mut self, dir: &Path) {
        let (found, problems) = read_meetings(dir);
        for p in problems {
            if let std::collections::btree_map::Entry::Vacant(e) =
                self.notes.shown.entry(format!("problem {p}"))
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
            if changed {
                m.metadata.generation = Some(generation);
                println!("meeting {key} applied from {}", file.display());
                self.parts.cluster.apply_meeting(m);
            }
            self.files.insert(key, file);
        }
        let gone: Vec<String> = self
            .generations
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for key in gone {
            self.generations.remove(&key);
            self.notes.shown.remove(&key);
            self.notes.due.remove(&key);
            let file = self.files.remove(&key).unwrap_or_default();
            let Some(m) = self.parts.cluster.delete_meeting(&key) else {
                continue;
            };
            let cx = self.cx();
            if let Err(e) = crate::control::meeting::cleanup(&m, &cx).await {
                tracing::warn!(meeting = %key, error = %e, "not released");
            }
            println!(
                "meeting {key} removed ({} is gone); its rooms were released",
                file.display()
            );
        }
    }
}

/// The operator's Meeting reconciler, for every meeting whose resync is due, whose spec
/// changed, or whose nodes changed (what the operator's watches wake it for).
async fn place_all(notes: &mut Notes, cx: &ControlCtx<'_>) {
    let fleet = {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        for n in &cx.nodes {
            crate::control::medianode::placement_relevant(n).hash(&mut h);
        }
        h.finish()
    };
    let fleet_changed = fleet != notes.fleet;
    notes.fleet = fleet;
    let now = Instant::now();
    for m in cx.meetings.clone() {
        let key = key_of(&m);
        let generation = m.metadata.generation.unwrap_or(0);
        let due = match notes.due.get(&key) {
            Some((at, g)) => *at <= now || *g != generation || fleet_changed,
            None => true,
        };
        if !due {
            continue;
        }
        let next = match crate::control::meeting::reconcile(&m, cx).await {
            Ok(next) => next,
            Err(e) => {
                tracing::warn!(meeting = %key, error = %e, "not reconciled");
                Next::After(Duration::from_secs(1))
            }
        };
        let after = match next {
            Next::After(d) => d,
            Next::OnChange => Duration::from_secs(3600),
        };
        notes.due.insert(key.clone(), (now + after, generation));
    }
    // What changed, for the person watching.
    let meetings = cx.meetings.clone();
    for m in meetings {
        let key = key_of(&m);
        if let Some(line) = describe(&m, &key, cx) {
            notes.show(&key, line);
        }
    }
}

/// One line saying where meeting `m` stands, from its status.
fn describe(m: &Meeting, key: &str, cx: &ControlCtx<'_>) -> Option<String> {
    let status = m.status.as_ref()?;
    Some(match status.phase? {
        MeetingPhase::Scheduled => {
            match crate::control::meeting::schedule_state(m, cx.now, cx.settings.prepare_ahead) {
                crate::control::meeting::ScheduleState::NotYet(at) => {
                    format!("meeting {key} is scheduled; placed at {at}")
                }
                _ => return None,
            }
        }
        MeetingPhase::Ended => format!("meeting {key} has ended"),
        _ if status.nodes.is_empty() => {
            let why = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Placed")
                .map(|c| c.message.clone())
                .unwrap_or_default();
            format!("meeting {key} not placed: {why}")
        }
        _ => {
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
            // Placed, but not all it expects fits: say how short.
            let short = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Placed" && c.status == "False")
                .map(|c| format!("; placed short ({}): {}", c.reason, c.message))
                .unwrap_or_default();
            format!(
                "meeting {key} on {}; relay links: {}{short}",
                nodes.join(", "),
                if links.is_empty() {
                    "none".into()
                } else {
                    links.join(", ")
                }
            )
        }
    })
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

    /// The examples work whatever the day: at every moment that matters (now, and the start
    /// of each scheduled one) every example live then is placed in full on the local fabric's
    /// default fleet, one node of `--capacity` in each default region. (The all-hands once had
    /// 1,200 people on a fixed date: on that day it took every seat and the standup got none.)
    #[test]
    fn the_examples_fit_the_default_local_fleet_on_any_day() {
        use crate::core::placement::{Demand, NodeView, place_with};
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            local: LocalArgs,
        }
        let args = <Cli as clap::Parser>::parse_from(["local"]).local;
        let settings = local_settings(&args);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/meetings");
        let (found, problems) = read_meetings(&dir);
        assert!(problems.is_empty(), "{problems:?}");
        let mut moments = vec![k8s_openapi::jiff::Timestamp::now()];
        moments.extend(
            found
                .iter()
                .filter_map(|(_, m)| Some(m.spec.schedule.as_ref()?.start.0)),
        );
        for now in moments {
            let mut reserved: HashMap<String, u32> = HashMap::new();
            for (_, m) in &found {
                if crate::control::meeting::schedule_state(m, now, settings.prepare_ahead)
                    != crate::control::meeting::ScheduleState::Live
                {
                    continue;
                }
                let views: Vec<NodeView> = args
                    .regions
                    .iter()
                    .map(|r| NodeView {
                        name: format!("{r}-1"),
                        region: r.clone(),
                        ready: true,
                        draining: false,
                        capacity: args.capacity,
                        reserved_by_others: reserved.get(r).copied().unwrap_or(0),
                    })
                    .collect();
                let key = key_of(m);
                let demand = Demand {
                    meeting: key.clone(),
                    per_region: m.spec.participants.per_region(),
                };
                let plan = place_with(&demand, &views, None, &settings.distances);
                assert!(
                    plan.shortfalls.is_empty(),
                    "at {now} {key} is placed short: {:?}",
                    plan.shortfalls
                );
                for a in &plan.assignments {
                    *reserved.entry(a.region.clone()).or_default() += a.participants;
                }
            }
        }
    }
}
