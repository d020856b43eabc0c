//! The reconcilers' decisions, written once for both clusters moim runs on.
//!
//! Each reconciler ([`meeting`], [`medianode`], [`pool`]) reads the object, the observed view
//! of the fleet, `now` and the [`Settings`], decides with the pure [`crate::core`], talks to the
//! media nodes' admin API, and acts through [`Cluster`]: a small write interface (apply or
//! delete a MediaNode, write a status, publish an Event) plus the node's workload (its pod, or
//! its child process). The Kubernetes operator implements it with kube
//! ([`crate::k8s::cluster::KubeCluster`]); the local fabric with its in-process store and
//! `media-node` children ([`crate::local`]). So `operator local` runs the operator's own
//! decisions, as LiveKit's `Router` has a local and a distributed implementation behind one
//! interface.

pub mod medianode;
pub mod meeting;
pub mod pool;

use crate::core::autoscale::PoolMemory;
use crate::core::ledger::Ledger;
use crate::crd::{MediaNode, MediaNodeStatus, MediaPool, MediaPoolStatus, Meeting, MeetingStatus};
use crate::error::Result;
use crate::k8s::context::Settings;
use crate::metrics::Metrics;
use crate::nodeapi::NodeAdmin;
use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A media node's workload as the cluster sees it now: the pod (Kubernetes) or the child
/// process (local fabric) that runs `media-node` for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Workload {
    /// None exists (never made, or deleted and gone).
    Absent,
    /// It exists and has no address yet.
    Starting,
    /// It runs and is reachable.
    Running {
        /// Its admin API (`http://host:port`).
        admin_url: String,
        /// The URL browsers join at.
        signalling_url: String,
        /// Where other nodes reach its relay listener, when it cascades.
        relay_address: Option<String>,
    },
    /// It ran and is gone, or is on its way out (terminating, failed, exited): the rooms it
    /// held died with it.
    Gone,
}

/// What [`Cluster::start_workload`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Started {
    /// The workload was made; it starts now.
    Created,
    /// It waits for an address it must advertise (a LoadBalancer Service without an IP yet):
    /// the named object holds it back.
    WaitingForAddress(String),
}

/// How the reconcilers act on a cluster. Every write is the whole of what the operator owns
/// (server-side apply under one field manager in Kubernetes), so repeating one is harmless.
pub trait Cluster: Send + Sync {
    /// Writes a Meeting's status.
    fn meeting_status<'a>(
        &'a self,
        m: &'a Meeting,
        status: &'a MeetingStatus,
    ) -> BoxFuture<'a, Result<()>>;
    /// Writes a MediaNode's status.
    fn node_status<'a>(
        &'a self,
        n: &'a MediaNode,
        status: &'a MediaNodeStatus,
    ) -> BoxFuture<'a, Result<()>>;
    /// Writes a MediaPool's status.
    fn pool_status<'a>(
        &'a self,
        p: &'a MediaPool,
        status: &'a MediaPoolStatus,
    ) -> BoxFuture<'a, Result<()>>;
    /// Creates or changes a MediaNode (the whole object the pool owns).
    fn apply_node<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, Result<()>>;
    /// Deletes a MediaNode (its workload goes with it); deleting one that is gone is no error.
    fn delete_node<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<()>>;
    /// Publishes an Event about `object` for people (best effort: a failure is logged).
    fn event<'a>(
        &'a self,
        object: ObjectReference,
        warning: bool,
        reason: &'a str,
        note: String,
    ) -> BoxFuture<'a, ()>;
    /// The node's workload as it is now.
    fn workload<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, Result<Workload>>;
    /// Makes the node's workload.
    fn start_workload<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, Result<Started>>;
    /// A name for a new MediaNode of `pool`.
    fn new_node_name(&self, pool: &MediaPool) -> String;
    /// `pool`'s autoscaler decided something (not idle): for a cluster that tells a person
    /// what it does as it goes (the local fabric prints it). Events say it anyway.
    fn scaled(&self, _pool: &MediaPool, _decision: &crate::core::autoscale::ScaleDecision) {}
}

/// What every reconcile decides with: the cluster to act on, the media nodes' admin API, the
/// reservations, the observed fleet, the clock reading and the settings.
pub struct ControlCtx<'a> {
    /// Where writes go.
    pub cluster: &'a dyn Cluster,
    /// The media nodes' admin API.
    pub admin: &'a dyn NodeAdmin,
    /// Reservations of every placed meeting.
    pub ledger: &'a Mutex<Ledger>,
    /// What each pool's autoscaler remembers between looks (`namespace/name`).
    pub pools: &'a Mutex<HashMap<String, PoolMemory>>,
    /// Metrics.
    pub metrics: &'a Metrics,
    /// Timings and pod shape.
    pub settings: &'a Settings,
    /// Now.
    pub now: Timestamp,
    /// Every MediaNode, as last observed.
    pub nodes: Vec<Arc<MediaNode>>,
    /// Every Meeting, as last observed (pools look at scheduled ones).
    pub meetings: Vec<Arc<Meeting>>,
}

impl ControlCtx<'_> {
    /// The ledger. A panic while holding it cannot leave it half-written (every change is one
    /// `record` or `forget`), so a poisoned lock is taken over.
    pub fn ledger(&self) -> MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The MediaNode called `name`, as observed.
    pub fn node(&self, name: &str) -> Option<&MediaNode> {
        self.nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(name))
            .map(AsRef::as_ref)
    }
}

/// When a reconciler wants to look at an object again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// After this long (or sooner, on a change).
    After(std::time::Duration),
    /// Only when something changes.
    OnChange,
}
