//! The MediaNode reconciler: keep the node's pod, read the node's `/status`, write the
//! MediaNode's status, and pass a drain request on to the node.
//!
//! One reconcile: `GET` the pod → create it by server-side apply when the node has none and
//! never had one running (a pod that ran and is gone means the node is Gone: its rooms died
//! with it) → read `/status` over the admin API when the pod has an address → one
//! server-side-apply patch of `status`, only when it changed. Every `node_poll` it runs again,
//! which is how load reaches the placement.

use crate::conditions::{Want, settle};
use crate::context::{Context, FIELD_MANAGER, apply_status};
use crate::crd::{MediaNode, MediaNodePhase, MediaNodeStatus, NodeLoad};
use crate::error::{Error, Result};
use crate::pod::{media_pod, media_service, public_address, service_name};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use moim_wire::status::NodeStatus;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;
use tracing::{info, warn};

/// Controller name, in metrics and logs.
pub const CONTROLLER: &str = "medianode";

/// Reconciles one MediaNode.
pub async fn reconcile(node: Arc<MediaNode>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = apply(&node, &ctx).await;
    if let Err(e) = &result
        && let Some(refused) = e.forbidden()
        && let Some(ns) = node.namespace()
    {
        let api: Api<MediaNode> = Api::namespaced(ctx.client.clone(), &ns);
        let conditions = node
            .status
            .as_ref()
            .map(|s| s.conditions.as_slice())
            .unwrap_or(&[]);
        crate::context::report_forbidden(
            &api,
            &node.name_any(),
            conditions,
            node.metadata.generation.unwrap_or(0),
            refused,
            (ctx.clock)(),
        )
        .await;
    }
    ctx.metrics.reconciled(CONTROLLER, started.elapsed());
    if result.is_ok() {
        ctx.succeeded(&key(&node));
    }
    result
}

/// What to do after a failed reconcile: back off per object, 1 s doubling to 5 minutes.
pub fn error_policy(node: Arc<MediaNode>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(node = %key(&node), %error, "reconcile failed");
    ctx.metrics.reconcile_failed(CONTROLLER, error);
    Action::requeue(ctx.backoff(&key(&node)))
}

fn key(n: &MediaNode) -> String {
    format!(
        "medianode:{}/{}",
        n.namespace().unwrap_or_default(),
        n.name_any()
    )
}

async fn apply(node: &MediaNode, ctx: &Context) -> Result<Action> {
    let now = (ctx.clock)();
    let ns = node.namespace().ok_or(Error::MissingField("namespace"))?;
    let name = node.name_any();
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let old = node.status.clone().unwrap_or_default();
    let generation = node.metadata.generation.unwrap_or(0);
    let s = &ctx.settings.pod;

    let pod = pods.get_opt(&name).await?;
    let pod_gone = pod.as_ref().is_some_and(|p| {
        p.metadata.deletion_timestamp.is_some()
            || matches!(
                p.status.as_ref().and_then(|s| s.phase.as_deref()),
                Some("Failed" | "Succeeded")
            )
    });
    let ever_ran = matches!(
        old.phase,
        Some(MediaNodePhase::Ready | MediaNodePhase::Draining | MediaNodePhase::Gone)
    );
    let mut status = MediaNodeStatus {
        observed_generation: Some(generation),
        capacity: Some(NodeLoad {
            participants: node.spec.capacity,
            ..NodeLoad::default()
        }),
        ..old.clone()
    };
    let mut conditions: Vec<Want> = Vec::new();

    // With a per-node Service, the pod is made once the Service has the address clients will
    // use (the node puts it in its ICE candidates).
    let mut public = None;
    let mut waiting_for_address = None;
    if pod.is_none()
        && !ever_ran
        && let Some(kind) = s.service
        && let Some(svc) = media_service(node, s)
    {
        let services: Api<Service> = Api::namespaced(ctx.client.clone(), &ns);
        let svc_name = service_name(&name);
        let applied = services
            .patch(
                &svc_name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&svc),
            )
            .await?;
        public = public_address(&applied, kind);
        if public.is_none() {
            waiting_for_address = Some(svc_name);
        }
    }

    if let Some(svc_name) = waiting_for_address {
        status.phase = Some(MediaNodePhase::Starting);
        conditions.push(Want::no(
            "Ready",
            "WaitingForAddress",
            format!("the media Service {svc_name} has no external address yet"),
        ));
    } else if pod.is_none() && !ever_ran {
        let pod =
            media_pod(node, s, public.as_ref()).ok_or(Error::MissingField("name or namespace"))?;
        pods.patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&pod),
        )
        .await?;
        info!(node = %name, region = %node.spec.region, "media pod created");
        ctx.publish(
            &node.object_ref(&()),
            EventType::Normal,
            "PodCreated",
            format!("created pod {name} in region {}", node.spec.region),
        )
        .await;
        status.phase = Some(MediaNodePhase::Starting);
        conditions.push(Want::no(
            "Ready",
            "PodStarting",
            "the media pod was created and is starting",
        ));
    } else if pod.is_none() || pod_gone {
        if old.phase != Some(MediaNodePhase::Gone) {
            ctx.publish(
                &node.object_ref(&()),
                EventType::Warning,
                "PodGone",
                format!("pod {name} is gone; meetings on it are placed again"),
            )
            .await;
        }
        status.phase = Some(MediaNodePhase::Gone);
        status.load = None;
        status.meetings = BTreeMap::new();
        conditions.push(Want::no(
            "Ready",
            "PodGone",
            "the media pod is gone; delete this MediaNode or let its pool replace it",
        ));
    } else if let Some(ip) = pod.as_ref().and_then(|p| p.status.as_ref()?.pod_ip.clone()) {
        let base = format!("http://{ip}:{}", s.http_port);
        status.admin_url = Some(base.clone());
        status.signalling_url = Some(s.signalling_url(node, &ip));
        status.relay_address = pod.as_ref().and_then(|p| s.relay_address(p));
        match ctx.node_admin.status(&base).await {
            Ok(report) => {
                if node.spec.drain && !report.draining {
                    match ctx.node_admin.drain(&base).await {
                        Ok(()) => {
                            ctx.publish(
                                &node.object_ref(&()),
                                EventType::Normal,
                                "Draining",
                                "drain requested: the node takes no new meetings".into(),
                            )
                            .await;
                        }
                        Err(e) => {
                            ctx.metrics.node_api_error("drain");
                            warn!(node = %name, error = %e, "drain request failed");
                        }
                    }
                }
                if !node.spec.drain && report.draining && !report.terminating {
                    // Taken back by its pool: the node resumes. A node whose pod is stopping
                    // (SIGTERM) reports `terminating` and is left alone; it would refuse.
                    match ctx.node_admin.undrain(&base).await {
                        Ok(()) => {
                            ctx.publish(
                                &node.object_ref(&()),
                                EventType::Normal,
                                "Undrained",
                                "taken back into service: the node takes meetings again".into(),
                            )
                            .await;
                        }
                        Err(e) => {
                            ctx.metrics.node_api_error("undrain");
                            warn!(node = %name, error = %e, "undrain refused; the node stays draining");
                        }
                    }
                }
                let draining = report.draining || node.spec.drain;
                status.phase = Some(if draining {
                    MediaNodePhase::Draining
                } else if report.ready {
                    MediaNodePhase::Ready
                } else {
                    MediaNodePhase::Starting
                });
                status.load = Some(load_of(&report));
                status.meetings = meetings_of(&report);
                status.last_report = Some(Time(now));
                conditions.push(if draining {
                    Want::no(
                        "Ready",
                        "Draining",
                        "draining: hosts its meetings, takes no new ones",
                    )
                } else if report.ready {
                    Want::yes("Ready", "NodeReady", "ready for meetings")
                } else {
                    Want::no("Ready", "NodeNotReady", "the node reports it is not ready")
                });
                conditions.push(Want::yes(
                    "Reporting",
                    "StatusReceived",
                    "the node's /status was read",
                ));
            }
            Err(e) => {
                ctx.metrics.node_api_error("status");
                status.phase = Some(old.phase.unwrap_or(MediaNodePhase::Starting));
                conditions.push(Want::no(
                    "Ready",
                    "StatusUnreachable",
                    format!("cannot read the node's /status: {e}"),
                ));
                conditions.push(Want::no(
                    "Reporting",
                    "StatusUnreachable",
                    format!("GET {base}/status: {e}"),
                ));
            }
        }
    } else {
        status.phase = Some(MediaNodePhase::Starting);
        conditions.push(Want::no(
            "Ready",
            "PodStarting",
            "the media pod has no address yet",
        ));
    }
    status.conditions = settle(conditions, &old.conditions, generation, now);

    if status != old {
        let api: Api<MediaNode> = Api::namespaced(ctx.client.clone(), &ns);
        apply_status(&api, &name, &status).await?;
    }
    Ok(Action::requeue(ctx.settings.node_poll))
}

/// A node's load as its MediaNode status shows it, from its `/status`.
pub(crate) fn load_of(r: &NodeStatus) -> NodeLoad {
    NodeLoad {
        participants: u32::try_from(r.participants).unwrap_or(u32::MAX),
        published_tracks: u32::try_from(r.published_tracks).unwrap_or(u32::MAX),
        forwarded_streams: u32::try_from(r.forwarded_streams).unwrap_or(u32::MAX),
        egress_bps: r.egress_bps,
        cpu_cores: Some(format!("{:.2}", r.cpu_cores)),
    }
}

/// Meetings the node hosts (`namespace/name` → participants), from its rooms: every assigned
/// room, and every room named like a Meeting's (`namespace.name`) with people in it.
pub(crate) fn meetings_of(r: &NodeStatus) -> BTreeMap<String, u32> {
    let mut out = BTreeMap::new();
    let as_meeting = |room: &str| room.split_once('.').map(|(ns, n)| format!("{ns}/{n}"));
    for room in r.assignments.keys() {
        if let Some(m) = as_meeting(room) {
            out.insert(m, 0);
        }
    }
    for (room, n) in &r.room_participants {
        if let Some(m) = as_meeting(room) {
            out.insert(m, u32::try_from(*n).unwrap_or(u32::MAX));
        }
    }
    out
}

/// A hash of what the meetings placed on `node` depend on: where it is, whether it takes
/// meetings, its addresses, the meetings it reports and their participant counts. The meeting
/// controller wakes a node's meetings only when this changes, not on every report (each
/// carries a new `lastReport` time: with 50 nodes and 1,000 meetings that was 200 needless
/// reconciles a second).
pub fn placement_relevant(node: &MediaNode) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let s = &node.spec;
    (&s.region, &s.zone, s.capacity, s.drain, s.evacuate).hash(&mut h);
    node.metadata.deletion_timestamp.is_some().hash(&mut h);
    if let Some(st) = &node.status {
        (
            st.phase.map(|p| p as u8),
            &st.admin_url,
            &st.signalling_url,
            &st.relay_address,
            &st.meetings,
        )
            .hash(&mut h);
        for c in &st.conditions {
            (&c.type_, &c.status).hash(&mut h);
        }
    }
    h.finish()
}
