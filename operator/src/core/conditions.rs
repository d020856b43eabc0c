//! Status conditions the Kubernetes way: type, status, reason, message, observedGeneration,
//! and a lastTransitionTime that moves only when the status does.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// A condition to set, before its transition time is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Want {
    /// Condition type, e.g. `Placed`.
    pub type_: &'static str,
    /// True or False.
    pub ok: bool,
    /// CamelCase reason.
    pub reason: &'static str,
    /// A sentence for a person.
    pub message: String,
}

impl Want {
    /// A True condition.
    pub fn yes(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: true,
            reason,
            message: message.into(),
        }
    }

    /// A False condition.
    pub fn no(type_: &'static str, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: false,
            reason,
            message: message.into(),
        }
    }
}

/// The conditions to write: `want` in order, keeping each one's lastTransitionTime from
/// `previous` when its status did not change.
pub fn settle(
    want: Vec<Want>,
    previous: &[Condition],
    generation: i64,
    now: Timestamp,
) -> Vec<Condition> {
    want.into_iter()
        .map(|w| {
            let status = if w.ok { "True" } else { "False" }.to_owned();
            let since = previous
                .iter()
                .find(|c| c.type_ == w.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: w.type_.to_owned(),
                status,
                reason: w.reason.to_owned(),
                message: w.message,
                observed_generation: Some(generation),
                last_transition_time: since,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_with_the_status() {
        let t0: Timestamp = "2026-11-21T10:00:00Z".parse().expect("timestamp");
        let t1: Timestamp = "2026-11-21T10:05:00Z".parse().expect("timestamp");
        let first = settle(vec![Want::yes("Placed", "Placed", "a")], &[], 1, t0);
        let same = settle(vec![Want::yes("Placed", "Placed", "b")], &first, 2, t1);
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = settle(vec![Want::no("Placed", "RegionFull", "c")], &same, 2, t1);
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "False");
    }
}
