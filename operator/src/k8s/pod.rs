//! The pod of a MediaNode, built the way Agones builds a game server's pod: one pod per node,
//! named after it and owned by it (a controller ownerReference, so deleting the MediaNode
//! deletes the pod), never restarted in place (`restartPolicy: Never`: a restarted media node
//! has lost its rooms, so the node is reported Gone and its meetings re-placed), pinned to its
//! region, with a termination grace period long enough to drain, and ready only while
//! `/readyz` says so (false while draining).

use crate::crd::MediaNode;
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, HTTPGetAction,
    Lifecycle, LifecycleHandler, ObjectFieldSelector, Pod, PodSecurityContext, PodSpec, Probe,
    ResourceRequirements, SeccompProfile, SecretKeySelector, SecretVolumeSource, SecurityContext,
    Service, ServicePort, ServiceSpec, TopologySpreadConstraint, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use std::collections::BTreeMap;

/// Where the media-node image holds its binary (see `media-node/Dockerfile`).
pub const MEDIA_NODE_BINARY: &str = "/usr/local/bin/media-node";

/// Label every media pod carries with its MediaNode's name.
pub const NODE_LABEL: &str = "media.moim.dev/node";

/// How media pods are made.
#[derive(Debug, Clone, PartialEq)]
pub struct PodSettings {
    /// media-node image.
    pub image: String,
    /// HTTP port: web client, WHIP/WHEP, signalling, admin API.
    pub http_port: u16,
    /// UDP port of all WebRTC media.
    pub udp_port: u16,
    /// Run on the host's network (media reachable at the host's address, no NAT).
    pub host_network: bool,
    /// Expose the UDP port on the host (`hostPort`), when not on the host network.
    pub host_port: bool,
    /// Seconds Kubernetes waits after SIGTERM (the node drains meanwhile).
    pub termination_grace_seconds: i64,
    /// Secret holding `token-secret` (join tokens) and `admin-token` (admin API).
    pub secret_name: String,
    /// Resources of the media container when its MediaNode names none: by default 2 CPUs and
    /// 2 GiB as both request and limit (QoS Guaranteed; a pod without requests would be
    /// BestEffort, the first evicted under node pressure, with no CPU it can count on).
    pub resources: Option<ResourceRequirements>,
    /// URL browsers join at; `{podIP}`, `{node}`, `{region}` and `{port}` are filled in.
    pub signalling_url_template: String,
    /// UDP port of relay links (QUIC) between media nodes.
    pub relay_port: u16,
    /// Secret with the relay links' mutual TLS: `ca.crt`, `tls.crt`, `tls.key` (the layout
    /// cert-manager writes). Unset: nodes are not cascaded.
    pub relay_secret: Option<String>,
    /// A Service per media node that exposes its media port, instead of host networking or a
    /// host port.
    pub service: Option<MediaService>,
}

/// The kind of per-node Service that exposes a media node's UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaService {
    /// A port on every Kubernetes node (30000-32767), reached at the pod's host address:
    /// no host networking, but clients need the node port open in the firewall.
    NodePort,
    /// A cloud load balancer per media node: its own public address, at the cloud's price.
    LoadBalancer,
}

impl MediaService {
    /// The Service `type`.
    pub fn type_name(self) -> &'static str {
        match self {
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }

    /// Parses `NodePort` / `LoadBalancer` (any case); empty is none.
    pub fn parse(s: &str) -> Result<Option<Self>, String> {
        match s.to_ascii_lowercase().as_str() {
            "" | "none" => Ok(None),
            "nodeport" => Ok(Some(Self::NodePort)),
            "loadbalancer" => Ok(Some(Self::LoadBalancer)),
            other => Err(format!(
                "unknown media Service type {other:?}: NodePort or LoadBalancer"
            )),
        }
    }
}

/// Where clients reach a media node's UDP port through its Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicAddress {
    /// The address (a load balancer's); `None`: the address of the host the pod runs on.
    pub ip: Option<String>,
    /// The port.
    pub port: u16,
}

/// Name of a media node's Service.
pub fn service_name(node: &str) -> String {
    format!("{node}-media")
}

/// The Service exposing `node`'s media port, when `s` asks for one. `externalTrafficPolicy:
/// Local`: packets reach the pod from the host they arrive at, with the client's address kept
/// (ICE checks the 5-tuple; a second hop through another host would rewrite it).
pub fn media_service(node: &MediaNode, s: &PodSettings) -> Option<Service> {
    let kind = s.service?;
    let name = node.metadata.name.clone()?;
    let namespace = node.metadata.namespace.clone()?;
    let owner = node.controller_owner_ref(&())?;
    Some(Service {
        metadata: ObjectMeta {
            name: Some(service_name(&name)),
            namespace: Some(namespace),
            labels: Some(BTreeMap::from([
                ("app.kubernetes.io/name".to_owned(), "media-node".to_owned()),
                ("app.kubernetes.io/part-of".to_owned(), "moim".to_owned()),
                (NODE_LABEL.to_owned(), name.clone()),
            ])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some(kind.type_name().to_owned()),
            selector: Some(BTreeMap::from([(NODE_LABEL.to_owned(), name)])),
            external_traffic_policy: Some("Local".to_owned()),
            ports: Some(vec![ServicePort {
                name: Some("media".to_owned()),
                protocol: Some("UDP".to_owned()),
                port: i32::from(s.udp_port),
                target_port: Some(IntOrString::Int(i32::from(s.udp_port))),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

/// Where the Service `svc` (as the API server returned it) lets clients reach the media port:
/// a NodePort Service once its port is allocated, a LoadBalancer once it has an IP address.
/// `None` until then (a load balancer takes a while; one that has only a host name cannot go
/// in an ICE candidate).
pub fn public_address(svc: &Service, kind: MediaService) -> Option<PublicAddress> {
    let port = svc
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.name.as_deref() == Some("media"))?;
    match kind {
        MediaService::NodePort => Some(PublicAddress {
            ip: None,
            port: u16::try_from(port.node_port?).ok()?,
        }),
        MediaService::LoadBalancer => {
            let ip = svc
                .status
                .as_ref()?
                .load_balancer
                .as_ref()?
                .ingress
                .as_ref()?
                .iter()
                .find_map(|i| i.ip.clone())?;
            Some(PublicAddress {
                ip: Some(ip),
                port: u16::try_from(port.port).ok()?,
            })
        }
    }
}

/// Where a media pod finds its relay certificate (the relay Secret, mounted; Kubernetes swaps
/// the files when the Secret changes, and the node reloads them).
pub const RELAY_CERT_DIR: &str = "/etc/moim/relay";

impl Default for PodSettings {
    fn default() -> Self {
        Self {
            image: "ghcr.io/moim-dev/media-node:0.1.0".into(),
            http_port: 7880,
            udp_port: 7881,
            host_network: false,
            host_port: false,
            termination_grace_seconds: 7200,
            secret_name: "moim-node-secrets".into(),
            resources: Some(guaranteed("2", "2Gi")),
            signalling_url_template: "http://{podIP}:{port}".into(),
            relay_port: 7882,
            relay_secret: None,
            service: None,
        }
    }
}

/// Requests equal to limits: the pod's QoS class is Guaranteed.
pub fn guaranteed(cpu: &str, memory: &str) -> ResourceRequirements {
    let both = BTreeMap::from([
        ("cpu".to_owned(), Quantity(cpu.to_owned())),
        ("memory".to_owned(), Quantity(memory.to_owned())),
    ]);
    ResourceRequirements {
        requests: Some(both.clone()),
        limits: Some(both),
        ..ResourceRequirements::default()
    }
}

impl PodSettings {
    /// The signalling URL of `node` whose pod has `pod_ip`.
    pub fn signalling_url(&self, node: &MediaNode, pod_ip: &str) -> String {
        self.signalling_url_template
            .replace("{podIP}", pod_ip)
            .replace("{node}", &node.name_any())
            .replace("{region}", &node.spec.region)
            .replace("{port}", &self.http_port.to_string())
    }

    /// The relay address other nodes dial for a node whose pod is `pod`, when nodes are
    /// cascaded: the host's address when the relay port is a host port, else the pod's.
    pub fn relay_address(&self, pod: &Pod) -> Option<String> {
        self.relay_secret.as_ref()?;
        let st = pod.status.as_ref()?;
        let ip = if self.host_port && !self.host_network {
            st.host_ip.as_ref()?
        } else {
            st.pod_ip.as_ref()?
        };
        Some(if ip.contains(':') {
            format!("[{ip}]:{}", self.relay_port)
        } else {
            format!("{ip}:{}", self.relay_port)
        })
    }
}

/// The pod for `node`, reached at `public` when a Service exposes it. `None` when the node has
/// no name or namespace (never for a stored object).
pub fn media_pod(node: &MediaNode, s: &PodSettings, public: Option<&PublicAddress>) -> Option<Pod> {
    let name = node.metadata.name.clone()?;
    let namespace = node.metadata.namespace.clone()?;
    let mut owner = node.controller_owner_ref(&())?;
    // The MediaNode stays until its pod is gone (foreground deletion). Needs `update` on
    // `medianodes/finalizers` in RBAC.
    owner.block_owner_deletion = Some(true);
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), "media-node".to_owned()),
        ("app.kubernetes.io/part-of".to_owned(), "moim".to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            "moim-operator".to_owned(),
        ),
        (NODE_LABEL.to_owned(), name.clone()),
        ("media.moim.dev/region".to_owned(), node.spec.region.clone()),
    ]);
    if let Some(pool) = &node.spec.pool {
        labels.insert("media.moim.dev/pool".to_owned(), pool.clone());
    }
    let mut node_selector = BTreeMap::from([(
        "topology.kubernetes.io/region".to_owned(),
        node.spec.region.clone(),
    )]);
    if let Some(zone) = &node.spec.zone {
        node_selector.insert("topology.kubernetes.io/zone".to_owned(), zone.clone());
    }
    let env = |k: &str, v: String| EnvVar {
        name: k.to_owned(),
        value: Some(v),
        value_from: None,
    };
    let mut envs = vec![
        env("MOIM_HTTP", format!("0.0.0.0:{}", s.http_port)),
        env("MOIM_UDP", format!("0.0.0.0:{}", s.udp_port)),
        env("MOIM_REGION", node.spec.region.clone()),
        env("MOIM_NODE_ID", name.clone()),
        env(
            "MOIM_TOKEN_SECRET_FILE",
            "/etc/moim/secrets/token-secret".to_owned(),
        ),
        // Exit a minute before Kubernetes would kill the pod, so the exit is the node's own.
        env(
            "MOIM_DRAIN_TIMEOUT",
            format!("{}s", (s.termination_grace_seconds - 60).max(1)),
        ),
        EnvVar {
            name: "MOIM_ADMIN_TOKEN".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: s.secret_name.clone(),
                    key: "admin-token".to_owned(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
    ];
    if let Some(p) = public {
        envs.push(env("MOIM_PUBLIC_PORT", p.port.to_string()));
        if let Some(ip) = &p.ip {
            envs.push(env("MOIM_PUBLIC_IP", ip.clone()));
        }
    }
    // ICE candidates carry the address clients reach the node at: the host's (host network,
    // host port, node port), the load balancer's (set above), or else the pod's own (a
    // routable pod network). The node binds every address and needs to be told which.
    let public_field = if s.host_network || s.host_port || public.is_some_and(|p| p.ip.is_none()) {
        Some("status.hostIP")
    } else if public.is_none() {
        Some("status.podIP")
    } else {
        None
    };
    if let Some(field) = public_field {
        envs.push(EnvVar {
            name: "MOIM_PUBLIC_IP".to_owned(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: field.to_owned(),
                    api_version: None,
                }),
                ..EnvVarSource::default()
            }),
        });
    }
    let mut ports = vec![
        ContainerPort {
            name: Some("http".to_owned()),
            container_port: i32::from(s.http_port),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        },
        ContainerPort {
            name: Some("media".to_owned()),
            container_port: i32::from(s.udp_port),
            protocol: Some("UDP".to_owned()),
            host_port: (s.host_port && !s.host_network).then_some(i32::from(s.udp_port)),
            ..ContainerPort::default()
        },
    ];
    let mut mounts = vec![VolumeMount {
        name: "secrets".to_owned(),
        mount_path: "/etc/moim/secrets".to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }];
    let mut volumes = vec![Volume {
        name: "secrets".to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(s.secret_name.clone()),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }];
    if let Some(relay_secret) = &s.relay_secret {
        envs.push(env(
            "MOIM_RELAY_LISTEN",
            format!("0.0.0.0:{}", s.relay_port),
        ));
        for (var, file) in [
            ("MOIM_RELAY_CA", "ca.crt"),
            ("MOIM_RELAY_CERT", "tls.crt"),
            ("MOIM_RELAY_KEY", "tls.key"),
        ] {
            envs.push(env(var, format!("{RELAY_CERT_DIR}/{file}")));
        }
        ports.push(ContainerPort {
            name: Some("relay".to_owned()),
            container_port: i32::from(s.relay_port),
            protocol: Some("UDP".to_owned()),
            host_port: (s.host_port && !s.host_network).then_some(i32::from(s.relay_port)),
            ..ContainerPort::default()
        });
        mounts.push(VolumeMount {
            name: "relay".to_owned(),
            mount_path: RELAY_CERT_DIR.to_owned(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        volumes.push(Volume {
            name: "relay".to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(relay_secret.clone()),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        });
    }
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        ..Probe::default()
    };
    let container = Container {
        name: "media-node".to_owned(),
        image: Some(s.image.clone()),
        env: Some(envs),
        ports: Some(ports),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: node.spec.resources.clone().or_else(|| s.resources.clone()),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                add: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        // Before SIGTERM: drain for good and wait until the last participant has left (an
        // eviction or a rollout then ends no meeting within the grace period).
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(
                        [MEDIA_NODE_BINARY, "drain", "--wait"]
                            .map(str::to_owned)
                            .to_vec(),
                    ),
                }),
                ..LifecycleHandler::default()
            }),
            ..Lifecycle::default()
        }),
        ..Container::default()
    };
    Some(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace),
            labels: Some(labels),
            annotations: Some(BTreeMap::from([(
                // A media pod is never moved to pack nodes tighter: that would cut meetings.
                "cluster-autoscaler.kubernetes.io/safe-to-evict".to_owned(),
                "false".to_owned(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            containers: vec![container],
            node_selector: Some(node_selector),
            host_network: s.host_network.then_some(true),
            dns_policy: s.host_network.then(|| "ClusterFirstWithHostNet".to_owned()),
            restart_policy: Some("Never".to_owned()),
            termination_grace_period_seconds: Some(s.termination_grace_seconds),
            automount_service_account_token: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(65532),
                run_as_group: Some(65532),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".to_owned(),
                    localhost_profile: None,
                }),
                ..PodSecurityContext::default()
            }),
            volumes: Some(volumes),
            priority_class_name: node.spec.priority_class_name.clone(),
            // A pool's nodes spread over hosts and zones, so that losing one machine or one
            // zone costs the region as few nodes as it can (soft: a small region still runs).
            topology_spread_constraints: node.spec.pool.as_ref().map(|pool| {
                ["kubernetes.io/hostname", "topology.kubernetes.io/zone"]
                    .map(|key| TopologySpreadConstraint {
                        max_skew: 1,
                        topology_key: key.to_owned(),
                        when_unsatisfiable: "ScheduleAnyway".to_owned(),
                        label_selector: Some(LabelSelector {
                            match_labels: Some(BTreeMap::from([(
                                "media.moim.dev/pool".to_owned(),
                                pool.clone(),
                            )])),
                            ..LabelSelector::default()
                        }),
                        ..TopologySpreadConstraint::default()
                    })
                    .to_vec()
            }),
            ..PodSpec::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;

    fn node() -> MediaNode {
        let mut n = MediaNode::in_region("seoul-1", "team", "seoul", 100);
        n.metadata.uid = Some("uid-1".into());
        n
    }

    fn running(pod: &mut Pod) {
        pod.status = Some(PodStatus {
            pod_ip: Some("10.1.2.3".into()),
            host_ip: Some("192.0.2.7".into()),
            ..PodStatus::default()
        });
    }

    #[test]
    fn a_relay_secret_cascades_the_node_with_its_certificate_mounted() {
        let s = PodSettings {
            relay_secret: Some("moim-relay-tls".into()),
            ..PodSettings::default()
        };
        let mut pod = media_pod(&node(), &s, None).expect("pod");
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        let env: BTreeMap<&str, &str> = c
            .env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.as_str(), e.value.as_deref()?)))
            .collect();
        assert_eq!(env["MOIM_RELAY_LISTEN"], "0.0.0.0:7882");
        assert_eq!(env["MOIM_RELAY_CA"], "/etc/moim/relay/ca.crt");
        assert_eq!(env["MOIM_RELAY_CERT"], "/etc/moim/relay/tls.crt");
        assert_eq!(env["MOIM_RELAY_KEY"], "/etc/moim/relay/tls.key");
        let relay_port = c
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("relay"))
            .expect("relay port");
        assert_eq!(
            (relay_port.container_port, relay_port.protocol.as_deref()),
            (7882, Some("UDP"))
        );
        let volumes = pod
            .spec
            .as_ref()
            .and_then(|s| s.volumes.clone())
            .expect("volumes");
        assert!(volumes.iter().any(|v| v.name == "relay"
            && v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("moim-relay-tls")));
        assert_eq!(
            s.relay_address(&pod),
            None,
            "no address before the pod has one"
        );
        running(&mut pod);
        assert_eq!(s.relay_address(&pod).as_deref(), Some("10.1.2.3:7882"));
        // With host ports, other nodes reach the relay at the host's address.
        let host = PodSettings {
            host_port: true,
            ..s.clone()
        };
        assert_eq!(host.relay_address(&pod).as_deref(), Some("192.0.2.7:7882"));
    }

    /// The field a pod's `MOIM_PUBLIC_IP` comes from, if any.
    fn public_ip_field(pod: &Pod) -> Option<String> {
        pod.spec.as_ref()?.containers[0]
            .env
            .iter()
            .flatten()
            .find(|e| e.name == "MOIM_PUBLIC_IP")
            .and_then(|e| {
                Some(
                    e.value_from
                        .as_ref()?
                        .field_ref
                        .as_ref()?
                        .field_path
                        .clone(),
                )
            })
    }

    #[test]
    fn every_exposure_tells_the_node_its_public_address() {
        // Found on a real control plane: with the pod's own address (media.exposure podIP)
        // the node bound 0.0.0.0 without knowing what to put in its ICE candidates, and
        // exited at start.
        let pod_ip = media_pod(&node(), &PodSettings::default(), None).expect("pod");
        assert_eq!(public_ip_field(&pod_ip).as_deref(), Some("status.podIP"));
        let host = PodSettings {
            host_network: true,
            ..PodSettings::default()
        };
        let pod = media_pod(&node(), &host, None).expect("pod");
        assert_eq!(public_ip_field(&pod).as_deref(), Some("status.hostIP"));
        let lb = PublicAddress {
            ip: Some("203.0.113.9".into()),
            port: 7881,
        };
        let pod = media_pod(&node(), &PodSettings::default(), Some(&lb)).expect("pod");
        assert_eq!(public_ip_field(&pod), None);
    }

    #[test]
    fn without_a_relay_secret_the_node_is_not_cascaded() {
        let s = PodSettings::default();
        let mut pod = media_pod(&node(), &s, None).expect("pod");
        running(&mut pod);
        let c = &pod.spec.as_ref().expect("spec").containers[0];
        assert!(
            !c.env
                .iter()
                .flatten()
                .any(|e| e.name.starts_with("MOIM_RELAY"))
        );
        assert_eq!(s.relay_address(&pod), None);
    }
}
