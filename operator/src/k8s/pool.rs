//! The MediaPool controller's kube side: [`crate::control::pool`]'s decisions, a refusal
//! reported on the object, back-off after errors.

use super::context::Context;
pub use crate::control::pool::{
    CONTROLLER, is_member, new_name, node_object, policy_of, pool_node, snapshot_of,
};
use crate::crd::MediaPool;
use crate::error::{Error, Result};
use kube::ResourceExt;
use kube::runtime::controller::Action;
use std::sync::Arc;
use std::time::Instant;
use tracing::warn;

/// Reconciles one MediaPool.
pub async fn reconcile(pool: Arc<MediaPool>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = crate::control::pool::reconcile(&pool, &ctx.control())
        .await
        .map(super::meeting::action);
    ctx.finish(CONTROLLER, &*pool, &key(&pool), started, &result)
        .await;
    result
}

/// What to do after a failed reconcile: back off per object.
pub fn error_policy(pool: Arc<MediaPool>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(pool = %key(&pool), %error, "reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error);
    Action::requeue(ctx.backoff(&key(&pool)))
}

fn key(p: &MediaPool) -> String {
    format!("{}/{}", p.namespace().unwrap_or_default(), p.name_any())
}
