//! The one function every front-end (HTTP, CLI via HTTP, DNS) builds answers through.
//!
//! It is the seam for endpoint health: answers list healthy endpoints and leave unhealthy ones
//! out, but never answer empty while the record has endpoints — if none is healthy, all are
//! returned, marked unhealthy (fail open). An empty answer is the outage dpin exists to prevent.

use dpin_protocol::store::Store;
use dpin_protocol::{Endpoint, SignedRecord};

use crate::node::Node;

/// A live record and the endpoints to answer with.
#[derive(Clone, Debug)]
pub struct Answer {
    /// The winning record.
    pub record: SignedRecord,
    /// Endpoints to serve, healthy first, each with its health flag. Never empty.
    pub endpoints: Vec<(Endpoint, bool)>,
}

/// Builds the answer for `name` (normalised `label.zone`) at `now_ms`, or `None` if the node
/// holds no live record for it.
pub fn answer(node: &Node, name: &str, now_ms: u64) -> Option<Answer> {
    let record = node.read_store(|s| s.resolve(name, now_ms))?;
    let eps = record.endpoints()?.to_vec();
    let health: Vec<bool> = eps.iter().map(|e| node.endpoint_healthy(e)).collect();
    let endpoints = select(eps, &health);
    Some(Answer { record, endpoints })
}

/// Healthy endpoints only; all of them (marked unhealthy) if none is healthy.
pub fn select(eps: Vec<Endpoint>, health: &[bool]) -> Vec<(Endpoint, bool)> {
    let paired: Vec<(Endpoint, bool)> = eps
        .into_iter()
        .zip(health.iter().copied().chain(std::iter::repeat(true)))
        .collect();
    if paired.iter().any(|(_, h)| *h) {
        paired.into_iter().filter(|(_, h)| *h).collect()
    } else {
        paired
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16) -> Endpoint {
        format!("127.0.0.1:{port}").parse().expect("valid endpoint")
    }

    #[test]
    fn unhealthy_endpoints_are_left_out_while_one_is_healthy() {
        let got = select(vec![ep(1), ep(2), ep(3)], &[false, true, false]);
        assert_eq!(got, vec![(ep(2), true)]);
    }

    #[test]
    fn no_healthy_endpoint_fails_open_with_all_marked_unhealthy() {
        let got = select(vec![ep(1), ep(2)], &[false, false]);
        assert_eq!(got, vec![(ep(1), false), (ep(2), false)]);
    }
}
