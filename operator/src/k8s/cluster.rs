//! [`Cluster`] on Kubernetes: statuses and MediaNodes by server-side apply under the
//! operator's one field manager, Events through kube's recorder, and a media node's workload
//! as its pod (with a Service first when the node is exposed through one).

use super::context::{Context, FIELD_MANAGER, apply_status};
use super::pod::{media_pod, media_service, public_address, service_name};
use crate::control::{Cluster, Started, Workload};
use crate::crd::{MediaNode, MediaNodeStatus, MediaPool, MediaPoolStatus, Meeting, MeetingStatus};
use crate::error::{Error, Result};
use futures_util::future::BoxFuture;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::EventType;

fn namespace_of<K: ResourceExt>(o: &K) -> Result<String> {
    o.namespace().ok_or(Error::MissingField("namespace"))
}

impl Cluster for Context {
    fn meeting_status<'a>(
        &'a self,
        m: &'a Meeting,
        status: &'a MeetingStatus,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let api: Api<Meeting> = Api::namespaced(self.client.clone(), &namespace_of(m)?);
            Ok(apply_status(&api, &m.name_any(), status).await?)
        })
    }

    fn node_status<'a>(
        &'a self,
        n: &'a MediaNode,
        status: &'a MediaNodeStatus,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let api: Api<MediaNode> = Api::namespaced(self.client.clone(), &namespace_of(n)?);
            Ok(apply_status(&api, &n.name_any(), status).await?)
        })
    }

    fn pool_status<'a>(
        &'a self,
        p: &'a MediaPool,
        status: &'a MediaPoolStatus,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let api: Api<MediaPool> = Api::namespaced(self.client.clone(), &namespace_of(p)?);
            Ok(apply_status(&api, &p.name_any(), status).await?)
        })
    }

    fn apply_node<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let api: Api<MediaNode> = Api::namespaced(self.client.clone(), &namespace_of(n)?);
            api.patch(
                &n.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(n),
            )
            .await?;
            Ok(())
        })
    }

    fn delete_node<'a>(&'a self, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let api: Api<MediaNode> = Api::namespaced(self.client.clone(), namespace);
            match api.delete(name, &DeleteParams::background()).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
                Err(e) => Err(e.into()),
            }
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
            let type_ = if warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            self.publish(&object, type_, reason, note).await;
        })
    }

    fn workload<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, Result<Workload>> {
        Box::pin(async move {
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &namespace_of(n)?);
            let Some(pod) = pods.get_opt(&n.name_any()).await? else {
                return Ok(Workload::Absent);
            };
            let gone = pod.metadata.deletion_timestamp.is_some()
                || matches!(
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()),
                    Some("Failed" | "Succeeded")
                );
            if gone {
                return Ok(Workload::Gone);
            }
            let s = &self.settings.pod;
            Ok(match pod.status.as_ref().and_then(|st| st.pod_ip.clone()) {
                Some(ip) => Workload::Running {
                    admin_url: format!("http://{ip}:{}", s.http_port),
                    signalling_url: s.signalling_url(n, &ip),
                    relay_address: s.relay_address(&pod),
                },
                None => Workload::Starting,
            })
        })
    }

    fn start_workload<'a>(&'a self, n: &'a MediaNode) -> BoxFuture<'a, Result<Started>> {
        Box::pin(async move {
            let ns = namespace_of(n)?;
            let name = n.name_any();
            let s = &self.settings.pod;
            let ssa = PatchParams::apply(FIELD_MANAGER).force();
            // With a per-node Service, the pod is made once the Service has the address
            // clients will use (the node puts it in its ICE candidates).
            let mut public = None;
            if let Some(kind) = s.service
                && let Some(svc) = media_service(n, s)
            {
                let services: Api<Service> = Api::namespaced(self.client.clone(), &ns);
                let svc_name = service_name(&name);
                let applied = services.patch(&svc_name, &ssa, &Patch::Apply(&svc)).await?;
                public = public_address(&applied, kind);
                if public.is_none() {
                    return Ok(Started::WaitingForAddress(svc_name));
                }
            }
            let pod =
                media_pod(n, s, public.as_ref()).ok_or(Error::MissingField("name or namespace"))?;
            let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
            pods.patch(&name, &ssa, &Patch::Apply(&pod)).await?;
            Ok(Started::Created)
        })
    }

    fn new_node_name(&self, pool: &MediaPool) -> String {
        crate::control::pool::new_name(&pool.name_any())
    }
}
