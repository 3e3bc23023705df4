//! Status of the custom resources: the `Ready` condition and the counters
//! of a subscription's durable group, as `kubectl get` shows them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

use super::crd::SubscriptionStatus;
use super::reconcile::condition;
use crate::broker::SubscriptionInfo;

/// A `Ready=True` condition, keeping the transition time of `old` when it
/// was already true.
pub fn ready(old: &[Condition], reason: &str, message: &str, generation: Option<i64>) -> Condition {
    condition(old, true, reason, message, generation)
}

/// A `Ready=False` condition, keeping the transition time of `old` when it
/// was already false.
pub fn not_ready(
    old: &[Condition],
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    condition(old, false, reason, message, generation)
}

/// The status of a subscription whose group is in force.
///
/// `pending` is what waits for a consumer; `lag` is everything not yet
/// acked (pending, in flight, and waiting for a retry).
pub fn subscription(
    old: &[Condition],
    generation: Option<i64>,
    info: &SubscriptionInfo,
) -> SubscriptionStatus {
    let group = info.spec.name.clone();
    SubscriptionStatus {
        conditions: vec![ready(
            old,
            "Active",
            &format!("durable group {group:?} is in the routing config"),
            generation,
        )],
        observed_generation: generation,
        group: Some(group),
        pending: Some(info.pending),
        lag: Some(info.pending + info.in_flight + info.retrying),
        dead_letters: Some(info.dead_letters),
        consumers: Some(info.consumers),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_is_kept_while_the_status_holds() {
        let first = not_ready(&[], "InvalidSpec", "bad", Some(1));
        let again = not_ready(
            std::slice::from_ref(&first),
            "InvalidSpec",
            "worse",
            Some(2),
        );
        assert_eq!(first.last_transition_time, again.last_transition_time);
        assert_eq!(again.message, "worse");
        assert_eq!(again.observed_generation, Some(2));
        let flipped = ready(std::slice::from_ref(&again), "Active", "ok", Some(3));
        assert_eq!(flipped.status, "True");
    }
}
