//! Lease-based leader election (`coordination.k8s.io/v1` Lease), so that of several operator
//! replicas exactly one reconciles.
//!
//! The decision is pure ([`decide`]): given the Lease as read and `now`, take it, renew it or
//! wait. The adapter writes with `replace` carrying the read `resourceVersion`, so two
//! replicas that decide to take an expired Lease at once cannot both win: the API server
//! refuses the second write with 409 Conflict.

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use std::time::Duration;
use tokio::sync::watch;
use tracing::{info, warn};

/// What to do with the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseDecision {
    /// Nobody holds it, or the holder let it expire: take it.
    Acquire,
    /// It is ours: renew it.
    Renew,
    /// Someone else holds it until the given time.
    Wait {
        /// The holder.
        holder: String,
    },
}

/// Decides what `me` does with `lease` at `now`.
pub fn decide(lease: Option<&LeaseSpec>, me: &str, now: Timestamp) -> LeaseDecision {
    let Some(spec) = lease else {
        return LeaseDecision::Acquire;
    };
    let Some(holder) = spec.holder_identity.as_deref().filter(|h| !h.is_empty()) else {
        return LeaseDecision::Acquire;
    };
    if holder == me {
        return LeaseDecision::Renew;
    }
    let duration = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
    let expired = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .is_none_or(|t| t.0.checked_add(duration).is_ok_and(|until| until < now));
    if expired {
        LeaseDecision::Acquire
    } else {
        LeaseDecision::Wait {
            holder: holder.to_owned(),
        }
    }
}

/// One replica's side of the election.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    me: String,
    ttl: Duration,
}

impl LeaderElector {
    /// Elects among replicas that share the Lease `name` (in `api`'s namespace); `me` must be
    /// unique per replica (the pod name).
    pub fn new(api: Api<Lease>, name: &str, me: &str, ttl: Duration) -> Self {
        Self {
            api,
            name: name.to_owned(),
            me: me.to_owned(),
            ttl,
        }
    }

    /// One round: read, decide, write. Returns whether this replica leads afterwards.
    pub async fn step(&self, now: Timestamp) -> kube::Result<bool> {
        let current = self.api.get_opt(&self.name).await?;
        let decision = decide(
            current.as_ref().and_then(|l| l.spec.as_ref()),
            &self.me,
            now,
        );
        let LeaseDecision::Wait { .. } = decision else {
            let previous = current
                .as_ref()
                .and_then(|l| l.spec.clone())
                .unwrap_or_default();
            let spec = LeaseSpec {
                holder_identity: Some(self.me.clone()),
                lease_duration_seconds: Some(self.ttl.as_secs().try_into().unwrap_or(15)),
                renew_time: Some(MicroTime(now)),
                acquire_time: if decision == LeaseDecision::Renew {
                    previous.acquire_time.clone()
                } else {
                    Some(MicroTime(now))
                },
                lease_transitions: Some(
                    previous.lease_transitions.unwrap_or(0)
                        + i32::from(decision == LeaseDecision::Acquire && current.is_some()),
                ),
                ..LeaseSpec::default()
            };
            let write = match current {
                None => {
                    let lease = Lease {
                        metadata: ObjectMeta {
                            name: Some(self.name.clone()),
                            ..ObjectMeta::default()
                        },
                        spec: Some(spec),
                    };
                    self.api.create(&PostParams::default(), &lease).await
                }
                Some(mut lease) => {
                    // Keeps metadata.resourceVersion: a concurrent writer makes this a 409.
                    lease.spec = Some(spec);
                    self.api
                        .replace(&self.name, &PostParams::default(), &lease)
                        .await
                }
            };
            return match write {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        Ok(false)
    }

    /// Gives the Lease up when this replica holds it (on a clean shutdown), so that another
    /// replica takes over at its next round instead of waiting for the Lease to expire.
    pub async fn release(&self) -> kube::Result<()> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.me.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        info!(lease = %self.name, "leader lease released");
        Ok(())
    }

    /// Runs the election for ever, renewing every third of the Lease's duration, and tells
    /// `leading` whether this replica leads. Losing the Lease after holding it ends the loop
    /// (the caller exits, so a former leader never keeps reconciling).
    pub async fn run(self, leading: watch::Sender<bool>, clock: crate::context::Clock) {
        let mut led = false;
        loop {
            let now = clock();
            match self.step(now).await {
                Ok(true) => {
                    if !led {
                        info!(lease = %self.name, me = %self.me, "became leader");
                    }
                    led = true;
                    let _ = leading.send(true);
                }
                Ok(false) if led => {
                    warn!(lease = %self.name, "lost the leader lease");
                    let _ = leading.send(false);
                    return;
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(error = %e, "lease round failed");
                    if led {
                        // Holding on past the Lease's expiry would let two replicas lead.
                        let _ = leading.send(false);
                        return;
                    }
                }
            }
            tokio::time::sleep(self.ttl / 3).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn held_by(holder: &str, renewed: &str) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn take_free_or_expired_leases_renew_own_wait_for_live_ones() {
        let now = at("2026-11-21T10:00:20Z");
        assert_eq!(decide(None, "a", now), LeaseDecision::Acquire);
        assert_eq!(
            decide(Some(&held_by("a", "2026-11-21T10:00:10Z")), "a", now),
            LeaseDecision::Renew
        );
        assert_eq!(
            decide(Some(&held_by("b", "2026-11-21T10:00:10Z")), "a", now),
            LeaseDecision::Wait { holder: "b".into() }
        );
        assert_eq!(
            decide(Some(&held_by("b", "2026-11-21T10:00:00Z")), "a", now),
            LeaseDecision::Acquire,
            "renewed 20 s ago with a 15 s lease: expired"
        );
        assert_eq!(
            decide(Some(&held_by("", "2026-11-21T10:00:19Z")), "a", now),
            LeaseDecision::Acquire
        );
    }
}
