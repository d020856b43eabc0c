//! The MediaNode controller's kube side: [`crate::control::medianode`]'s decisions, a refusal
//! reported on the object, back-off after errors. The workload is the node's pod (see
//! [`super::cluster`]).

use super::context::Context;
pub use crate::control::medianode::{CONTROLLER, load_of, meetings_of, placement_relevant};
use crate::crd::MediaNode;
use crate::error::{Error, Result};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::warn;

/// Reconciles one MediaNode.
pub async fn reconcile(node: Arc<MediaNode>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = crate::control::medianode::reconcile(&node, &ctx.control())
        .await
        .map(super::meeting::action);
    ctx.finish(CONTROLLER, &*node, &key(&node), started, &result)
        .await;
    result
}

/// Longest wait after failed reconciles of a MediaNode. Its reconcile is also how a dead node
/// is noticed (the `/status` read), so it must not back off for minutes as other objects do: a
/// spell of API errors (a narrowed RBAC role, an API server restart) left a node's next read
/// 18 s away, and a machine lost meanwhile went unnoticed as long.
const MAX_NODE_BACKOFF: Duration = Duration::from_secs(5);

/// What to do after a failed reconcile: back off per object, 1 s doubling to
/// [`MAX_NODE_BACKOFF`].
pub fn error_policy(node: Arc<MediaNode>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(node = %key(&node), %error, "reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error);
    Action::requeue(ctx.backoff(&key(&node)).min(MAX_NODE_BACKOFF))
}

fn key(n: &MediaNode) -> String {
    format!(
        "medianode:{}/{}",
        n.namespace().unwrap_or_default(),
        n.name_any()
    )
}
