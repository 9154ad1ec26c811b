//! The status page (`GET /`) and the cluster view it polls (`GET /cluster`).
//!
//! The page is one HTML file with its style and script inline, built into the binary: it
//! loads nothing from anywhere else (its content security policy says so to the browser),
//! so it works on a machine without Internet access. It holds no data of its own; once a
//! second it asks `/cluster` for every member's status, as this node pulls them over the
//! native protocol ([`crate::cluster_view`]), and draws them. The alarms are decided here,
//! not in the page, so that their thresholds are the named limits below.
//!
//! With authentication on, `/cluster` needs a token of the read role like `/status`; the
//! page itself is answered with the refusal's status (401 or 403) when the request carries
//! none, and then asks for one, keeps it for the browser tab (session storage) and sends it
//! as `Authorization: Bearer` on its polls.

use hyper::StatusCode;
use raft_proto::NodeStatus;
use serde_json::json;

use super::{status_json, Answer};
use crate::cluster_view::ClusterView;
use crate::router::Router;

/// The page: HTML, CSS and script in one file.
const PAGE_HTML: &str = include_str!("page.html");

/// Nothing from elsewhere: scripts and styles inline only, requests to this origin only.
const PAGE_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
    ),
    ("cache-control", "no-store"),
    ("x-content-type-options", "nosniff"),
];

/// A follower whose log trails the leader's by more entries than this is flagged lagging.
pub const MATCH_LAG_ALARM_ENTRIES: u64 = 1_000;
/// A follower the leader has not heard from for longer than this is flagged lagging (its
/// process may answer probes while its peer link is cut).
pub const LAST_CONTACT_ALARM_MS: u64 = 2_000;
/// A node whose key-value memory use reaches this share of `kv_memory_bytes_max` raises
/// the memory alarm (writes start failing with OOM at 100).
pub const MEMORY_ALARM_PERCENT: u64 = 90;

/// The page, with `refused`'s status and challenge when the request's credentials were not
/// good enough to see the data (the page then asks for a token).
pub(super) fn page(refused: Option<Answer>) -> Answer {
    let mut a = Answer::new(StatusCode::OK, "text/html; charset=utf-8", PAGE_HTML);
    if let Some(r) = refused {
        a.status = r.status;
        a.www_authenticate = r.www_authenticate;
    }
    a.extra = PAGE_HEADERS;
    a
}

/// `GET /cluster`: every member's status and the alarms they raise.
pub(super) async fn cluster(router: &Router) -> Answer {
    let view = router.cluster.view(&router.handle).await;
    Answer::new(
        StatusCode::OK,
        "application/json",
        serde_json::to_vec(&cluster_json(&view)).unwrap_or_default(),
    )
}

/// The leader as the members say: the reachable member claiming leadership in the highest
/// term (two can claim it for a moment, in different terms).
fn leader_of(view: &ClusterView) -> Option<&NodeStatus> {
    view.members
        .iter()
        .filter_map(|m| m.status.as_ref().ok())
        .filter(|s| s.role == "Leader")
        .max_by_key(|s| s.term)
}

fn cluster_json(view: &ClusterView) -> serde_json::Value {
    let leader = leader_of(view);
    json!({
        "from": view.from,
        "at_unix_ms": view.at_unix_ms,
        "leader": leader.map(|l| json!({ "id": l.id, "term": l.term, "http_addr": l.http_addr })),
        "members": view.members.iter().map(|m| match &m.status {
            Ok(s) => json!({ "id": m.id, "up": true, "status": status_json(s) }),
            Err(e) => json!({ "id": m.id, "up": false, "error": e }),
        }).collect::<Vec<_>>(),
        "alarms": alarms(view).into_iter().map(|a| json!({
            "kind": a.kind, "node": a.node, "message": a.message,
        })).collect::<Vec<_>>(),
        "limits": {
            "match_lag_alarm_entries": MATCH_LAG_ALARM_ENTRIES,
            "last_contact_alarm_ms": LAST_CONTACT_ALARM_MS,
            "memory_alarm_percent": MEMORY_ALARM_PERCENT,
        },
    })
}

/// Something an operator should look at.
#[derive(Debug, PartialEq, Eq)]
struct Alarm {
    /// `no_leader`, `down`, `lagging`, `divergence` or `memory`.
    kind: &'static str,
    /// The member it concerns, if one.
    node: Option<u64>,
    message: String,
}

fn alarms(view: &ClusterView) -> Vec<Alarm> {
    let mut out = Vec::new();
    let leader = leader_of(view);
    // The configuration as the leader (else this node) knows it.
    let config = leader.or_else(|| {
        view.members
            .iter()
            .find(|m| m.id == view.from)
            .and_then(|m| m.status.as_ref().ok())
    });
    let voters: Vec<u64> = config.map(|s| s.voters.clone()).unwrap_or_default();
    let up = |id: u64| view.members.iter().any(|m| m.id == id && m.status.is_ok());
    if leader.is_none() {
        let reachable = voters.iter().filter(|&&v| up(v)).count();
        out.push(Alarm {
            kind: "no_leader",
            node: None,
            message: format!(
                "no leader: {reachable} of {} voters reachable from node {}{}",
                voters.len(),
                view.from,
                if reachable * 2 <= voters.len() {
                    " (no majority: writes and linearizable reads fail until one is back)"
                } else {
                    " (an election should settle this within a few seconds)"
                }
            ),
        });
    }
    for m in &view.members {
        if let Err(e) = &m.status {
            out.push(Alarm {
                kind: "down",
                node: Some(m.id),
                message: format!("node {} does not answer: {e}", m.id),
            });
        }
    }
    if let Some(l) = leader {
        for p in &l.peers {
            let silent = p
                .last_contact_ms
                .is_some_and(|ms| ms > LAST_CONTACT_ALARM_MS);
            if p.match_lag > MATCH_LAG_ALARM_ENTRIES || (silent && up(p.id)) {
                out.push(Alarm {
                    kind: "lagging",
                    node: Some(p.id),
                    message: format!(
                        "node {} trails the leader by {} entries; last heard {} ago",
                        p.id,
                        p.match_lag,
                        p.last_contact_ms
                            .map_or("never".to_string(), |ms| format!("{ms} ms"))
                    ),
                });
            }
        }
        for d in &l.anti_entropy.divergent {
            out.push(Alarm {
                kind: "divergence",
                node: Some(d.node),
                message: format!(
                    "node {}'s state differs from the majority's at index {} (digest {}, \
                     majority {})",
                    d.node,
                    d.index,
                    d.digest,
                    d.majority_digest.as_deref().unwrap_or("none")
                ),
            });
        }
    }
    for s in view.members.iter().filter_map(|m| m.status.as_ref().ok()) {
        if s.memory_bytes_max > 0
            && s.memory_used_bytes.saturating_mul(100)
                >= s.memory_bytes_max.saturating_mul(MEMORY_ALARM_PERCENT)
        {
            out.push(Alarm {
                kind: "memory",
                node: Some(s.id),
                message: format!(
                    "node {} holds {} of its {} bytes of kv_memory_bytes_max; writes fail \
                     with OOM at the limit",
                    s.id, s.memory_used_bytes, s.memory_bytes_max
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use raft_proto::{DivergentReplica, PeerInfo};

    use super::*;
    use crate::cluster_view::MemberView;

    fn member(id: u64, role: &str, term: u64) -> MemberView {
        MemberView {
            id,
            status: Ok(NodeStatus {
                id,
                role: role.into(),
                term,
                voters: vec![1, 2, 3],
                ..NodeStatus::default()
            }),
        }
    }

    fn kinds(view: &ClusterView) -> Vec<(&'static str, Option<u64>)> {
        alarms(view).into_iter().map(|a| (a.kind, a.node)).collect()
    }

    #[test]
    fn a_healthy_cluster_raises_nothing() {
        let view = ClusterView {
            from: 1,
            members: vec![
                member(1, "Leader", 2),
                member(2, "Follower", 2),
                member(3, "Follower", 2),
            ],
            at_unix_ms: 0,
        };
        assert_eq!(kinds(&view), vec![]);
        assert_eq!(cluster_json(&view)["leader"]["id"], 1);
    }

    #[test]
    fn down_lagging_diverged_and_full_members_are_named() {
        let mut leader = member(1, "Leader", 3);
        let s = leader.status.as_mut().unwrap();
        s.peers = vec![
            PeerInfo {
                id: 2,
                match_lag: MATCH_LAG_ALARM_ENTRIES + 1,
                last_contact_ms: Some(10),
                ..PeerInfo::default()
            },
            PeerInfo {
                id: 3,
                last_contact_ms: Some(LAST_CONTACT_ALARM_MS + 1),
                ..PeerInfo::default()
            },
        ];
        s.anti_entropy.divergent = vec![DivergentReplica {
            node: 2,
            index: 100,
            ..DivergentReplica::default()
        }];
        s.memory_bytes_max = 100;
        s.memory_used_bytes = MEMORY_ALARM_PERCENT;
        let view = ClusterView {
            from: 1,
            members: vec![
                leader,
                member(2, "Follower", 3),
                MemberView {
                    id: 3,
                    status: Err("connection refused".into()),
                },
            ],
            at_unix_ms: 0,
        };
        // Node 3 is down, so its silence is not reported again as lagging.
        assert_eq!(
            kinds(&view),
            vec![
                ("down", Some(3)),
                ("lagging", Some(2)),
                ("divergence", Some(2)),
                ("memory", Some(1)),
            ]
        );
    }

    #[test]
    fn no_leader_says_whether_a_majority_is_reachable() {
        let view = ClusterView {
            from: 1,
            members: vec![
                member(1, "Candidate", 5),
                MemberView {
                    id: 2,
                    status: Err("refused".into()),
                },
                MemberView {
                    id: 3,
                    status: Err("refused".into()),
                },
            ],
            at_unix_ms: 0,
        };
        let a = alarms(&view);
        assert_eq!(a[0].kind, "no_leader");
        assert!(
            a[0].message.contains("1 of 3 voters") && a[0].message.contains("no majority"),
            "{}",
            a[0].message
        );
        assert!(cluster_json(&view)["leader"].is_null());
    }
}
