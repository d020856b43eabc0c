//! Wiring of the running operator: watch caches, the three controllers (MediaNode, Meeting,
//! MediaPool), leader election, and the HTTP server. Everything here is I/O; the decisions live
//! in `placement`, `autoscale`, `join`, `leader`.
//!
//! Every replica serves the join API from its own watch caches of Meetings and MediaNodes (a
//! join only reads them), and is ready once they have synced; only the replica holding the
//! Lease reconciles. So a rolling update of a single replica completes (the new pod is ready
//! before the old one has let the Lease go), and with two replicas joins never wait for a
//! fail-over. A replica that stops cleanly gives the Lease up at once.

use crate::api::ApiState;
use crate::context::{Context, Settings, system_clock};
use crate::crd::{MediaNode, MediaPool, Meeting};
use crate::error::{Error, Result};
use crate::leader::LeaderElector;
use crate::ledger::plan_from_status;
use crate::metrics::Metrics;
use crate::nodeapi::HttpNodeAdmin;
use crate::secret::SecretSource;
use crate::{medianode, meeting, pool};
use futures_util::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Client, ResourceExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tracing::info;

/// MediaNode events buffered for the slowest of the three controllers (a burst beyond it waits
/// for them; the cache itself is never behind).
const NODE_EVENTS_BUFFER: usize = 1024;

/// Start-up options of `operator run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch only this namespace (`None`: every namespace).
    pub namespace: Option<String>,
    /// HTTP listen address (join API, metrics, probes).
    pub listen: SocketAddr,
    /// Join API keys.
    pub api_keys: SecretSource,
    /// Join token signing secret (shared with the nodes).
    pub token_secret: SecretSource,
    /// Node admin token.
    pub admin_token: SecretSource,
    /// Join token lifetime, seconds.
    pub token_ttl_secs: u64,
    /// Lease name and namespace for leader election; `None` runs without election.
    pub lease: Option<(String, String)>,
    /// This replica's identity in the election (the pod name).
    pub identity: String,
    /// Timings and pod shape.
    pub settings: Settings,
    /// TURN servers handed out by the join API.
    pub turn: Option<crate::turn::TurnConfig>,
}

/// Runs the operator until SIGTERM or until it loses the leader Lease.
pub async fn run(opts: RunOptions) -> Result<()> {
    let client = Client::try_default().await?;
    let metrics = Metrics::new();
    let clock = system_clock();
    let (meetings_api, nodes_api, pods_api): (Api<Meeting>, Api<MediaNode>, Api<Pod>) =
        match &opts.namespace {
            Some(ns) => (
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
                Api::namespaced(client.clone(), ns),
            ),
            None => (
                Api::all(client.clone()),
                Api::all(client.clone()),
                Api::all(client.clone()),
            ),
        };
    let nodes_for_api = nodes_api.clone();
    // One watch of MediaNodes feeds the node controller's cache and wakes all three
    // controllers. A controller woken by its own watch would read the node controller's cache,
    // which may not have the change yet: a pool woken by its node going Gone saw it still Ready
    // and did nothing until its next periodic look (15 s), and a meeting woken by a new node's
    // Ready saw it Starting. Subscribers of the shared reflector are told only after the cache
    // holds the change.
    let (nodes, node_writer) = reflector::store_shared::<MediaNode>(NODE_EVENTS_BUFFER);
    let subscribe = || {
        node_writer
            .subscribe()
            .ok_or_else(|| Error::Config("the MediaNode cache cannot be subscribed".into()))
    };
    let (node_events, meeting_node_events, pool_node_events) =
        (subscribe()?, subscribe()?, subscribe()?);
    let node_reflector = watcher(nodes_api, watcher::Config::default())
        .default_backoff()
        .reflect_shared(node_writer)
        .for_each(|_| futures_util::future::ready(()));
    let node_controller = Controller::for_shared_stream(node_events, nodes.clone()).owns(
        pods_api,
        watcher::Config::default().labels("app.kubernetes.io/managed-by=moim-operator"),
    );
    let node_admin = HttpNodeAdmin::new(opts.admin_token.clone()).map_err(Error::Config)?;
    let reporter = Reporter {
        controller: "moim-operator".into(),
        instance: Some(opts.identity.clone()),
    };
    let ctx = Arc::new(Context::new(
        client.clone(),
        nodes.clone(),
        Arc::new(node_admin),
        kube::runtime::events::Recorder::new(client.clone(), reporter),
        metrics.clone(),
        clock.clone(),
        opts.settings.clone(),
    ));
    // A node's change (lost, drained, new load, ready) wakes the meetings it hosts and those
    // placed short.
    let mapper_ctx = ctx.clone();
    let seen_nodes = std::sync::Mutex::new(std::collections::HashMap::<String, u64>::new());
    let meeting_controller = Controller::new(meetings_api.clone(), watcher::Config::default())
        .watches_shared_stream(meeting_node_events, move |node: Arc<MediaNode>| {
            let name = node.name_any();
            // Only a change that matters to placement wakes the node's meetings.
            let hash = medianode::placement_relevant(&node);
            let mut seen = seen_nodes.lock().unwrap_or_else(|e| e.into_inner());
            if seen.insert(name.clone(), hash) == Some(hash) {
                return Vec::new();
            }
            drop(seen);
            let ledger = mapper_ctx.ledger();
            // Its meetings, meetings short of room anywhere (this node may have it), and
            // meetings whose people of its region are served elsewhere (they may come home).
            let woken: std::collections::BTreeSet<&str> = ledger
                .meetings_on(&name)
                .chain(ledger.short())
                .chain(ledger.served_away(&node.spec.region))
                .collect();
            woken
                .into_iter()
                .filter_map(|key| {
                    let (ns, n) = key.split_once('/')?;
                    Some(ObjectRef::<Meeting>::new(n).within(ns))
                })
                .collect::<Vec<_>>()
        });
    let meetings = meeting_controller.store();
    // Pools read scheduled meetings; the store is there before any pool reconciles.
    let _ = ctx.meetings.set(meetings.clone());
    let pools_api: Api<MediaPool> = match &opts.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let pool_controller =
        Controller::new(pools_api, watcher::Config::default()).owns_shared_stream(pool_node_events);

    // The join API's own caches, filled whether or not this replica leads.
    let (api_meetings, meetings_writer) = reflector::store::<Meeting>();
    let (api_nodes, nodes_writer) = reflector::store::<MediaNode>();
    tokio::spawn(
        reflector(
            meetings_writer,
            watcher(meetings_api.clone(), watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| futures_util::future::ready(())),
    );
    tokio::spawn(
        reflector(
            nodes_writer,
            watcher(nodes_for_api, watcher::Config::default()),
        )
        .default_backoff()
        .for_each(|_| futures_util::future::ready(())),
    );
    let (ready_tx, ready_rx) = watch::channel(false);
    {
        let (m, n) = (api_meetings.clone(), api_nodes.clone());
        tokio::spawn(async move {
            let _ = m.wait_until_ready().await;
            let _ = n.wait_until_ready().await;
            info!("caches synced: serving joins");
            let _ = ready_tx.send(true);
        });
    }
    let api_state = Arc::new(ApiState {
        meetings: api_meetings,
        nodes: api_nodes,
        metrics: metrics.clone(),
        api_keys: opts.api_keys.clone(),
        token_secret: opts.token_secret.clone(),
        clock: clock.clone(),
        token_ttl_secs: opts.token_ttl_secs,
        ready: ready_rx,
        turn: opts.turn.clone(),
        distances: opts.settings.distances.clone(),
    });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| Error::Config(format!("listening on {}: {e}", opts.listen)))?;
    info!(addr = %opts.listen, "join API, metrics and probes listening");
    tokio::spawn(async move {
        if let Err(e) = crate::api::serve(listener, api_state).await {
            tracing::error!(error = %e, "http server stopped");
        }
    });

    // Leader election: wait for the Lease; losing it later ends the process. The identity is
    // the pod's name and a random suffix, as client-go's: a container restarted in the same
    // pod (after a crash, within the Lease's duration) must not take itself for the holder.
    let (leading_tx, mut leading_rx) = watch::channel(opts.lease.is_none());
    let me = format!("{}_{:08x}", opts.identity, rand::random::<u32>());
    let elector = |name: &str, ns: &str| {
        LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), ns),
            name,
            &me,
            Duration::from_secs(15),
        )
    };
    if let Some((name, ns)) = &opts.lease {
        tokio::spawn(elector(name, ns).run(leading_tx, clock.clone()));
        info!(lease = %name, "waiting to lead");
        tokio::select! {
            led = async {
                while !*leading_rx.borrow_and_update() {
                    if leading_rx.changed().await.is_err() {
                        return false;
                    }
                }
                true
            } => if !led {
                return Err(Error::Config("leader election stopped".into()));
            },
            _ = stop_signal() => {
                info!("stopped before leading");
                return Ok(());
            }
        }
    }
    metrics.leader.set(1);

    // The reservations in force, before any meeting is placed.
    for m in meetings_api.list(&ListParams::default()).await? {
        if let (Some(ns), Some(plan)) = (m.namespace(), plan_from_status(&m)) {
            ctx.ledger().record(&format!("{ns}/{}", m.name_any()), plan);
        }
    }
    info!(meetings = ctx.ledger().len(), "reservations loaded");

    let node_run = node_controller
        .shutdown_on_signal()
        .run(medianode::reconcile, medianode::error_policy, ctx.clone())
        .for_each(|_| futures_util::future::ready(()));
    // Meetings and pools decide from the observed MediaNodes (and pools from the meetings):
    // deciding before those caches hold the cluster's objects would see an empty fleet, so a
    // new leader would unplace every meeting and a pool would make its nodes again. They wait
    // for the first full list; the node controller fills its cache as it starts.
    let meeting_run = {
        let nodes = nodes.clone();
        let controller = meeting_controller.shutdown_on_signal();
        let ctx = ctx.clone();
        async move {
            if nodes.wait_until_ready().await.is_err() {
                return;
            }
            controller
                .run(meeting::reconcile, meeting::error_policy, ctx)
                .for_each(|_| futures_util::future::ready(()))
                .await
        }
    };
    let pool_run = {
        let (nodes, meetings) = (nodes.clone(), meetings.clone());
        let controller = pool_controller.shutdown_on_signal();
        let ctx = ctx.clone();
        async move {
            if nodes.wait_until_ready().await.is_err() || meetings.wait_until_ready().await.is_err()
            {
                return;
            }
            controller
                .run(pool::reconcile, pool::error_policy, ctx)
                .for_each(|_| futures_util::future::ready(()))
                .await
        }
    };
    let lost = async {
        while *leading_rx.borrow_and_update() {
            if leading_rx.changed().await.is_err() {
                break;
            }
        }
    };
    tokio::select! {
        _ = futures_util::future::join3(node_run, meeting_run, pool_run) => info!("controllers stopped"),
        // Runs as long as the controllers (it ends only if they all dropped their streams).
        _ = node_reflector => info!("the MediaNode watch stopped"),
        _ = lost => {
            metrics.leader.set(0);
            return Err(Error::Config("lost the leader lease".into()));
        }
    }
    metrics.leader.set(0);
    if let Some((name, ns)) = &opts.lease
        && let Err(e) = elector(name, ns).release().await
    {
        tracing::warn!(error = %e, "could not release the leader lease; it expires on its own");
    }
    Ok(())
}

/// SIGTERM or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    if let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    {
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        return;
    }
    let _ = tokio::signal::ctrl_c().await;
}
