//! Leases, as the API server checks them.

use gannet_k8s::FieldProblem;
use k8s_openapi::api::coordination::v1::Lease;

use super::problem;

/// As the API server: a duration and a transition count that are not negative (duration above 0).
pub(super) fn validate_lease(lease: &Lease, problems: &mut Vec<FieldProblem>) {
    let Some(spec) = &lease.spec else { return };
    if let Some(seconds) = spec.lease_duration_seconds
        && seconds <= 0
    {
        problems.push(problem(
            "spec.leaseDurationSeconds",
            format!("{seconds}: must be greater than 0"),
        ));
    }
    if let Some(transitions) = spec.lease_transitions
        && transitions < 0
    {
        problems.push(problem(
            "spec.leaseTransitions",
            format!("{transitions}: must not be negative"),
        ));
    }
}
