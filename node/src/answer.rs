//! The one function every front-end (HTTP, CLI via HTTP, DNS) builds answers through.
//!
//! It is the seam for endpoint health ([`crate::health`], three states). Answers list healthy
//! endpoints first, then unknown ones (never probed, or not probed because the probe policy
//! forbids it), and leave unhealthy ones out while any healthy or unknown endpoint remains.
//! They never answer empty while the record has endpoints: if every endpoint is unhealthy, all
//! are returned, marked unhealthy (fail open). An empty answer is the outage dpin exists to
//! prevent. Within one state the record's order is kept (the sort is stable).

use dpin_protocol::store::Store;
use dpin_protocol::{Endpoint, SignedRecord};

use crate::health::HealthState;
use crate::node::Node;

/// A live record and the endpoints to answer with.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The winning record.
    pub record: SignedRecord,
    /// Endpoints to serve, healthy first, then unknown, each with its health. Never empty.
    pub endpoints: Vec<(Endpoint, HealthState)>,
}

/// Builds the answer for `name` (normalised `label.zone`) at `now_ms`, or `None` if the node
/// holds no live record for it.
pub fn answer(node: &Node, name: &str, now_ms: u64) -> Option<Answer> {
    answer_held(node, node.read_store(|s| s.resolve(name, now_ms))?)
}

/// [`answer`] for the DNS front-end: the same answer, with its wait for the store's lock
/// measured ([`Node::read_store_for_answer`]).
pub fn dns_answer(node: &Node, name: &str, now_ms: u64) -> Option<Answer> {
    answer_held(
        node,
        node.read_store_for_answer(|s| s.resolve(name, now_ms))?,
    )
}

fn answer_held(node: &Node, record: SignedRecord) -> Option<Answer> {
    let eps = record.endpoints()?.to_vec();
    let health: Vec<HealthState> = eps.iter().map(|e| node.health().state(e)).collect();
    let endpoints = select(eps, &health);
    Some(Answer { record, endpoints })
}

/// Healthy, then unknown endpoints; all of them (marked unhealthy) if every one is unhealthy.
/// Endpoints without a given state are unknown.
pub fn select(eps: Vec<Endpoint>, health: &[HealthState]) -> Vec<(Endpoint, HealthState)> {
    let mut paired: Vec<(Endpoint, HealthState)> = eps
        .into_iter()
        .zip(
            health
                .iter()
                .copied()
                .chain(std::iter::repeat(HealthState::Unknown)),
        )
        .collect();
    // HealthState's order is healthy < unknown < unhealthy.
    paired.sort_by_key(|(_, h)| *h);
    if paired.iter().any(|(_, h)| *h != HealthState::Unhealthy) {
        paired.retain(|(_, h)| *h != HealthState::Unhealthy);
    }
    paired
}

#[cfg(test)]
mod tests {
    use super::*;
    use HealthState::{Healthy, Unhealthy, Unknown};

    fn ep(port: u16) -> Endpoint {
        format!("127.0.0.1:{port}").parse().expect("valid endpoint")
    }

    #[test]
    fn unhealthy_endpoints_are_left_out_while_one_is_healthy() {
        let got = select(vec![ep(1), ep(2), ep(3)], &[Unhealthy, Healthy, Unhealthy]);
        assert_eq!(got, vec![(ep(2), Healthy)]);
    }

    #[test]
    fn healthy_come_before_unknown_and_unhealthy_are_left_out() {
        let got = select(
            vec![ep(1), ep(2), ep(3), ep(4)],
            &[Unknown, Unhealthy, Healthy, Unknown],
        );
        assert_eq!(
            got,
            vec![(ep(3), Healthy), (ep(1), Unknown), (ep(4), Unknown)]
        );
    }

    #[test]
    fn unknown_endpoints_are_served_when_nothing_is_healthy() {
        let got = select(vec![ep(1), ep(2)], &[Unhealthy, Unknown]);
        assert_eq!(got, vec![(ep(2), Unknown)]);
    }

    #[test]
    fn no_healthy_or_unknown_endpoint_fails_open_with_all_marked_unhealthy() {
        let got = select(vec![ep(1), ep(2)], &[Unhealthy, Unhealthy]);
        assert_eq!(got, vec![(ep(1), Unhealthy), (ep(2), Unhealthy)]);
    }
}
