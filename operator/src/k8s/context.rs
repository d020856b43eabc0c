//! What every reconcile shares: the API client, the watch caches, the reservation ledger, the
//! node admin client, the clock, metrics and settings.

use crate::autoscale::PoolMemory;
use crate::crd::{MediaNode, MediaPool, Meeting};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::nodeapi::NodeAdmin;
use crate::pod::PodSettings;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Client, Resource};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The one field manager every server-side apply of the operator uses.
pub const FIELD_MANAGER: &str = "moim-operator";

/// A clock; tests pass a fixed one.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock.
pub fn system_clock() -> Clock {
    Arc::new(Timestamp::now)
}

/// Timings and pod shape.
#[derive(Debug, Clone)]
pub struct Settings {
    /// A node whose last report is older than this is not ready for placement.
    pub stale_after: SignedDuration,
    /// A scheduled meeting is placed this long before its start.
    pub prepare_ahead: SignedDuration,
    /// How often each MediaNode's `/status` is read: how soon a dead node is noticed when
    /// nothing else (its pod, its process) says so.
    pub node_poll: Duration,
    /// A MediaNode status whose only change is load figures and the report time is written at
    /// most this often (what placement depends on is written at once).
    pub report_every: Duration,
    /// Round-trip times between regions: which region serves one that lost its nodes, and
    /// which nodes a participant falls back to.
    pub distances: crate::core::regions::Distances,
    /// Where a participant whose node died asks for another (`POST {rejoinUrl}` with its
    /// token): the operator's join API as browsers reach it, when it is exposed to them.
    pub rejoin_url: Option<String>,
    /// How often a Meeting is looked at again with no change (participant counts).
    pub meeting_resync: Duration,
    /// How often each MediaPool's autoscaler looks at its pool.
    pub pool_interval: Duration,
    /// Media pods.
    pub pod: PodSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            stale_after: SignedDuration::from_secs(30),
            prepare_ahead: SignedDuration::from_mins(10),
            node_poll: Duration::from_secs(2),
            report_every: Duration::from_secs(10),
            distances: crate::core::regions::Distances::default(),
            rejoin_url: None,
            meeting_resync: Duration::from_secs(30),
            pool_interval: Duration::from_secs(15),
            pod: PodSettings::default(),
        }
    }
}

/// Shared by every reconcile.
pub struct Context {
    /// Kubernetes client.
    pub client: Client,
    /// The MediaNode watch cache.
    pub nodes: Store<MediaNode>,
    /// Reservations of every placed meeting.
    pub ledger: Mutex<Ledger>,
    /// The media nodes' admin API.
    pub node_admin: Arc<dyn NodeAdmin>,
    /// Publishes Kubernetes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Now.
    pub clock: Clock,
    /// Timings and pod shape.
    pub settings: Settings,
    /// The Meeting watch cache, once the meeting controller runs (pools read scheduled
    /// meetings from it).
    pub meetings: std::sync::OnceLock<Store<Meeting>>,
    /// What each pool's autoscaler remembers between looks (`namespace/name`).
    pub pools: Mutex<HashMap<String, PoolMemory>>,
    /// Consecutive failures per object, for error backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// A context.
    pub fn new(
        client: Client,
        nodes: Store<MediaNode>,
        node_admin: Arc<dyn NodeAdmin>,
        recorder: Recorder,
        metrics: Metrics,
        clock: Clock,
        settings: Settings,
    ) -> Self {
        Self {
            client,
            nodes,
            ledger: Mutex::new(Ledger::default()),
            node_admin,
            recorder,
            metrics,
            clock,
            settings,
            meetings: std::sync::OnceLock::new(),
            pools: Mutex::new(HashMap::new()),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// What a reconcile decides with, now: this cluster, the node admin API, the ledger, and
    /// the watch caches' view of the fleet.
    pub fn control(&self) -> crate::control::ControlCtx<'_> {
        crate::control::ControlCtx {
            cluster: self,
            admin: self.node_admin.as_ref(),
            ledger: &self.ledger,
            pools: &self.pools,
            metrics: &self.metrics,
            settings: &self.settings,
            now: (self.clock)(),
            nodes: self.nodes.state(),
            meetings: self.meetings.get().map(|s| s.state()).unwrap_or_default(),
        }
    }

    /// The ledger. A panic while holding it cannot leave it half-written (every change is one
    /// `record` or `forget`), so a poisoned lock is taken over.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Backoff after a failed reconcile of `key`: 1 s, 2 s, 4 s … capped at 5 minutes.
    pub fn backoff(&self, key: &str) -> Duration {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_owned()).or_insert(0);
        *n = n.saturating_add(1);
        Duration::from_secs(1u64 << (*n - 1).min(8)).min(Duration::from_secs(300))
    }

    /// Forgets `key`'s failures after a successful reconcile.
    pub fn succeeded(&self, key: &str) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.remove(key);
    }

    /// Publishes an Event about `object`. Events are for people: failing to write one is
    /// logged and does not fail the reconcile.
    pub async fn publish(
        &self,
        object: &ObjectReference,
        type_: EventType,
        reason: &str,
        note: String,
    ) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, object).await {
            tracing::warn!(error = %e, %reason, "event not written");
        }
    }
}

/// Writes `status` of the object `name` by server-side apply under [`FIELD_MANAGER`] (the
/// status subresource; `force` because the operator is the status's only writer).
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> kube::Result<()>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let patch = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await
    .map(drop)
}

/// Reports a refused call on the object it was for: the `Ready` condition turns False with
/// reason `Forbidden` and the API server's message (what was refused, and who asked), other
/// conditions kept, the rest of the status untouched (a merge patch of `status.conditions`).
/// Best effort: when writing the status is refused too, the log line is all there is.
pub async fn report_forbidden<K>(
    api: &Api<K>,
    name: &str,
    conditions: &[Condition],
    generation: i64,
    refused: &str,
    now: Timestamp,
) where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    tracing::error!(
        kind = %K::kind(&()),
        %name,
        refused,
        "the API server refused a call: give the operator's ServiceAccount the right (charts/moim/templates/rbac.yaml) or lift the policy that forbids it"
    );
    let mut out: Vec<Condition> = conditions
        .iter()
        .filter(|c| c.type_ != "Ready")
        .cloned()
        .collect();
    out.extend(crate::conditions::settle(
        vec![crate::conditions::Want::no(
            "Ready",
            "Forbidden",
            format!("the API server refused a call of the operator: {refused}"),
        )],
        conditions,
        generation,
        now,
    ));
    if out.as_slice() == conditions {
        return;
    }
    let patch = serde_json::json!({"status": {"conditions": out}});
    if let Err(e) = api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        tracing::warn!(%name, error = %e, "could not report the refusal on the object either");
    }
}

/// A moim object whose status carries conditions, where a refusal by the API server is reported.
pub trait WithConditions:
    Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
{
    /// Its status conditions (none before it has a status).
    fn conditions(&self) -> &[Condition];
}

impl WithConditions for Meeting {
    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }
}

impl WithConditions for MediaNode {
    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }
}

impl WithConditions for MediaPool {
    fn conditions(&self) -> &[Condition] {
        self.status
            .as_ref()
            .map_or(&[], |s| s.conditions.as_slice())
    }
}

impl Context {
    /// What every controller does when a reconcile of `obj` (back-off key `key`) ends: a
    /// refusal by the API server goes on the object's conditions, the time since `started` is
    /// recorded for `controller`, and success resets the object's back-off.
    pub async fn finish<K>(
        &self,
        controller: &str,
        obj: &K,
        key: &str,
        started: Instant,
        result: &crate::error::Result<kube::runtime::controller::Action>,
    ) where
        K: WithConditions + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        if let Err(e) = result
            && let Some(refused) = e.forbidden()
            && let Some(ns) = obj.meta().namespace.as_deref()
        {
            let api: Api<K> = Api::namespaced(self.client.clone(), ns);
            report_forbidden(
                &api,
                obj.meta().name.as_deref().unwrap_or_default(),
                obj.conditions(),
                obj.meta().generation.unwrap_or(0),
                refused,
                (self.clock)(),
            )
            .await;
        }
        self.metrics.reconciled(controller, started.elapsed());
        if result.is_ok() {
            self.succeeded(key);
        }
    }
}
