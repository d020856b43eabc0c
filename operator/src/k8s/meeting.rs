//! The Meeting controller's kube side: the finalizer around [`crate::control::meeting`]'s
//! decisions, a refusal reported on the object, back-off after errors.

use super::context::Context;
use crate::control::Next;
pub use crate::control::meeting::{
    CONTROLLER, FINALIZER, ScheduleState, enact, plan_meeting, release, running_status,
    schedule_state,
};
use crate::crd::Meeting;
use crate::error::{Error, Result};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use std::sync::Arc;
use std::time::Instant;
use tracing::warn;

/// The controller's `Action` for what a reconcile wants.
pub(crate) fn action(next: Next) -> Action {
    match next {
        Next::After(d) => Action::requeue(d),
        Next::OnChange => Action::await_change(),
    }
}

/// Reconciles one Meeting.
pub async fn reconcile(meeting: Arc<Meeting>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let ns = meeting
        .namespace()
        .ok_or(Error::MissingField("namespace"))?;
    let key = format!("{ns}/{}", meeting.name_any());
    let api: Api<Meeting> = Api::namespaced(ctx.client.clone(), &ns);
    let cx = ctx.control();
    let result = finalizer(&api, FINALIZER, meeting.clone(), |event| async {
        match event {
            Event::Apply(m) => crate::control::meeting::reconcile(&m, &cx)
                .await
                .map(action),
            Event::Cleanup(m) => crate::control::meeting::cleanup(&m, &cx).await.map(action),
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    ctx.finish(CONTROLLER, &*meeting, &key, started, &result)
        .await;
    result
}

/// What to do after a failed reconcile: back off per object, 1 s doubling to 5 minutes.
pub fn error_policy(meeting: Arc<Meeting>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!(
        "{}/{}",
        meeting.namespace().unwrap_or_default(),
        meeting.name_any()
    );
    warn!(meeting = %key, %error, "reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error);
    Action::requeue(ctx.backoff(&key))
}
