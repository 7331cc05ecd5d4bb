//! The one function every front-end (HTTP, CLI via HTTP, DNS) builds answers through.
//!
//! It is the seam for endpoint health ([`crate::health`], three states). Answers list healthy
//! endpoints first, then unknown ones (never probed, or not probed because the probe policy
//! forbids it), and leave unhealthy ones out while any healthy or unknown endpoint remains.
//! They never answer empty while the record has endpoints: if every endpoint is unhealthy, all
//! are returned, marked unhealthy (fail open). An empty answer is the outage dpin exists to
//! prevent. Within one state the record's order is kept (the sort is stable).

use dpin_protocol::record::HostRef;
use dpin_protocol::store::Store;
use dpin_protocol::{Endpoint, EndpointsView, Host, SignedRecord};

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

/// An IP literal endpoint's address: what DNS `A` and `AAAA` answers carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Literal {
    /// IPv4.
    V4([u8; 4]),
    /// IPv6.
    V6([u8; 16]),
}

impl Literal {
    fn of(host: &Host) -> Option<Self> {
        match host {
            Host::V4(a) => Some(Literal::V4(*a)),
            Host::V6(a) => Some(Literal::V6(*a)),
            Host::Name(_) => None,
        }
    }

    fn of_ref(host: HostRef<'_>) -> Option<Self> {
        match host {
            HostRef::V4(a) => Some(Literal::V4(a)),
            HostRef::V6(a) => Some(Literal::V6(a)),
            HostRef::Name(_) => None,
        }
    }
}

/// What a DNS address answer needs of an [`Answer`]: the record's expiry and the IP literals
/// of the answer's endpoints, in the answer's order (hostname endpoints left out).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Literals {
    /// Expiry of the winning record (Unix ms).
    pub expires_at_ms: u64,
    /// The answer's IP literal endpoints, in its order (repeats kept).
    pub addrs: Vec<Literal>,
}

impl Literals {
    /// The literals of `answer`.
    pub fn of_answer(answer: &Answer) -> Self {
        Self::of_selected(answer.record.body.expires_at_ms, &answer.endpoints)
    }

    /// The literals of endpoints [`select`] chose, in its order.
    fn of_selected(expires_at_ms: u64, selected: &[(Endpoint, HealthState)]) -> Self {
        Literals {
            expires_at_ms,
            addrs: selected
                .iter()
                .filter_map(|(e, _)| Literal::of(&e.host))
                .collect(),
        }
    }

    /// The literals of a stored record read in place, in the record's order: the answer when
    /// every endpoint's health is unknown (probing off), which [`select`] keeps whole.
    pub fn of_view(view: &EndpointsView<'_>) -> Self {
        Literals {
            expires_at_ms: view.expires_at_ms(),
            addrs: view
                .iter()
                .filter_map(|e| Literal::of_ref(e.host))
                .collect(),
        }
    }
}

/// [`dns_answer`] as a DNS address answer needs it ([`Literals`]), read in place from the
/// stored bytes ([`EndpointsView`]) under the store's read lock instead of decoding the whole
/// record: `None` exactly where [`dns_answer`] gives no answer or one without endpoints, else
/// the same endpoints in the same order, through the same health seam. With probing off every
/// endpoint is of unknown health, so the answer keeps them all in the record's order and the
/// only allocation is the list; with probing on, the endpoints are copied out (a hostname's
/// text too) and selected after the lock is let go, as [`dns_answer`] does.
pub fn dns_literals(node: &Node, name: &str, now_ms: u64) -> Option<Literals> {
    enum Read {
        Done(Literals),
        Select(u64, Vec<Endpoint>),
    }
    let probing = node.health().config().enabled;
    let read = node.read_store_for_answer(|s| {
        let entry = s.entry(name).filter(|e| e.is_live(now_ms))?;
        let view = EndpointsView::of(entry.bytes.as_deref()?)?;
        if view.is_empty() {
            return None;
        }
        Some(if probing {
            Read::Select(
                view.expires_at_ms(),
                view.iter().map(|e| e.to_endpoint()).collect(),
            )
        } else {
            Read::Done(Literals::of_view(&view))
        })
    })?;
    match read {
        Read::Done(literals) => Some(literals),
        Read::Select(expires_at_ms, eps) => {
            let health: Vec<HealthState> = eps.iter().map(|e| node.health().state(e)).collect();
            Some(Literals::of_selected(expires_at_ms, &select(eps, &health)))
        }
    }
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

    /// The DNS fast path's in-place read gives what the full answer gives, with probing off
    /// and on (healthy first, unhealthy left out, all of them when all are unhealthy), and
    /// nothing for a name not held live.
    #[tokio::test]
    async fn dns_literals_are_the_answers_literals_in_its_order() -> anyhow::Result<()> {
        let now = crate::node::now_ms();
        for probing in [false, true] {
            let dir = tempfile::tempdir()?;
            let (node, _api) = crate::metrics::tests::node_with_probing(dir.path(), probing).await;
            let key = dpin_protocol::ZoneKey::generate(&mut rand::rngs::OsRng);
            let mixed: Vec<Endpoint> = [
                "10.0.0.1:80",
                "db.example.org:5432",
                "[2001:db8::2]:443",
                "10.0.0.1:81",
                "10.0.0.3:80",
            ]
            .iter()
            .map(|e| e.parse())
            .collect::<Result<_, _>>()?;
            let down: Vec<Endpoint> = vec!["10.0.0.7:80".parse()?, "10.0.0.8:80".parse()?];
            for (label, eps) in [("mixed", mixed.clone()), ("down", down.clone())] {
                let content = dpin_protocol::Content::Endpoints(eps);
                let record = crate::publish::sign(&key, label, content, 1, 60_000, now)?;
                node.publish(record, None).await?;
            }
            if probing {
                // 10.0.0.1:80 and both of `down` are unhealthy, 10.0.0.3 healthy.
                node.health().set_shared_votes_for_tests(
                    [
                        (&mixed[0], (0, 2)),
                        (&mixed[4], (2, 0)),
                        (&down[0], (0, 2)),
                        (&down[1], (0, 2)),
                    ],
                    2,
                );
            }
            let zone = key.zone();
            for label in ["mixed", "down", "absent"] {
                let name = format!("{label}.{zone}");
                let full = answer(&node, &name, now).map(|a| Literals::of_answer(&a));
                assert_eq!(
                    dns_literals(&node, &name, now),
                    full,
                    "{name}, probing {probing}"
                );
            }
            let mixed_now = dns_literals(&node, &format!("mixed.{zone}"), now);
            let want = if probing {
                vec![
                    Literal::V4([10, 0, 0, 3]),
                    Literal::V6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
                    Literal::V4([10, 0, 0, 1]),
                ]
            } else {
                vec![
                    Literal::V4([10, 0, 0, 1]),
                    Literal::V6([0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]),
                    Literal::V4([10, 0, 0, 1]),
                    Literal::V4([10, 0, 0, 3]),
                ]
            };
            assert_eq!(mixed_now.map(|l| l.addrs), Some(want), "probing {probing}");
        }
        Ok(())
    }

    #[test]
    fn no_healthy_or_unknown_endpoint_fails_open_with_all_marked_unhealthy() {
        let got = select(vec![ep(1), ep(2)], &[Unhealthy, Unhealthy]);
        assert_eq!(got, vec![(ep(1), Unhealthy), (ep(2), Unhealthy)]);
    }
}
