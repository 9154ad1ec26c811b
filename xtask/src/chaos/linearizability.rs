//! A linearizability checker for one register with read, write and compare-and-set:
//! Wing and Gong's search with Lowe's memoization (the algorithm Knossos and Porcupine use),
//! run per key, since a key-value store is linearizable exactly when each key is
//! (P-compositionality).
//!
//! An operation whose outcome the client never learned (a timeout) may have taken effect at
//! any moment after it was invoked, or never: it gets a return time of infinity, so the search
//! may place it anywhere after its call, including after everything else (the same as never).

use std::collections::HashSet;

/// One operation on the register, with what the client observed.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// A read that returned this value.
    Read(Option<String>),
    /// A write of this value.
    Write(String),
    /// Compare-and-set; `swapped` is what the client was told, `None` if it never learned.
    Cas {
        expected: Option<String>,
        new: Option<String>,
        swapped: Option<bool>,
    },
}

/// An operation with its call and return times (`None`: it never returned).
#[derive(Clone, Debug)]
pub struct Timed {
    pub op: RegisterOp,
    pub call_us: u64,
    pub return_us: Option<u64>,
}

/// What the search concluded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    NotLinearizable,
    /// The search gave up after its step budget.
    Inconclusive,
}

fn apply(state: &Option<String>, op: &RegisterOp) -> Option<Option<String>> {
    match op {
        RegisterOp::Read(v) => (v == state).then(|| state.clone()),
        RegisterOp::Write(v) => Some(Some(v.clone())),
        RegisterOp::Cas {
            expected,
            new,
            swapped,
        } => {
            let matches = expected == state;
            match swapped {
                Some(s) if *s != matches => None,
                _ if matches => Some(new.clone()),
                _ => Some(state.clone()),
            }
        }
    }
}

/// Checks one register's history, starting from an absent value, within `steps_max` steps.
pub fn check(history: &[Timed], steps_max: u64) -> Verdict {
    let n = history.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events: (time, is_return, op). Calls sort before returns at equal times, which treats
    // touching operations as concurrent: the permissive reading.
    let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, t) in history.iter().enumerate() {
        events.push((t.call_us, false, i));
        events.push((t.return_us.unwrap_or(u64::MAX), true, i));
    }
    events.sort();
    // A doubly linked list over the events (positions in `events`), with a head sentinel.
    let (head, end) = (2 * n, usize::MAX);
    let mut next = vec![end; 2 * n + 1];
    let mut prev = vec![head; 2 * n + 1];
    next[head] = 0;
    for i in 0..2 * n {
        next[i] = if i + 1 < 2 * n { i + 1 } else { end };
        prev[i] = if i == 0 { head } else { i - 1 };
    }
    let mut call_pos = vec![0; n];
    let mut return_pos = vec![0; n];
    for (pos, &(_, is_return, op)) in events.iter().enumerate() {
        if is_return {
            return_pos[op] = pos;
        } else {
            call_pos[op] = pos;
        }
    }
    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, q) = (prev[pos], next[pos]);
        next[p] = q;
        if q != end {
            prev[q] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, pos: usize| {
        let (p, q) = (prev[pos], next[pos]);
        next[p] = pos;
        if q != end {
            prev[q] = pos;
        }
    };

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: Option<String> = None;
    let mut stack: Vec<(usize, Option<String>)> = Vec::new();
    let mut seen: HashSet<(Vec<u64>, Option<String>)> = HashSet::new();
    let mut entry = next[head];
    let mut steps = 0u64;
    while next[head] != end {
        steps += 1;
        if steps > steps_max {
            return Verdict::Inconclusive;
        }
        let (_, is_return, op) = events[entry];
        if !is_return {
            if let Some(new_state) = apply(&state, &history[op].op) {
                let mut candidate = linearized.clone();
                candidate[op / 64] |= 1 << (op % 64);
                if seen.insert((candidate.clone(), new_state.clone())) {
                    stack.push((op, std::mem::replace(&mut state, new_state)));
                    linearized = candidate;
                    unlink(&mut next, &mut prev, call_pos[op]);
                    unlink(&mut next, &mut prev, return_pos[op]);
                    entry = next[head];
                    continue;
                }
            }
            entry = next[entry];
        } else {
            // Something must be linearized before this return: undo the last choice.
            let Some((op, old_state)) = stack.pop() else {
                return Verdict::NotLinearizable;
            };
            state = old_state;
            linearized[op / 64] &= !(1 << (op % 64));
            relink(&mut next, &mut prev, return_pos[op]);
            relink(&mut next, &mut prev, call_pos[op]);
            entry = next[call_pos[op]];
        }
    }
    Verdict::Linearizable
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(op: RegisterOp, call_us: u64, return_us: Option<u64>) -> Timed {
        Timed {
            op,
            call_us,
            return_us,
        }
    }
    fn w(v: &str) -> RegisterOp {
        RegisterOp::Write(v.into())
    }
    fn r(v: Option<&str>) -> RegisterOp {
        RegisterOp::Read(v.map(String::from))
    }

    #[test]
    fn known_histories() {
        use Verdict::*;
        let cases: Vec<(&str, Vec<Timed>, Verdict)> = vec![
            ("empty read", vec![op(r(None), 0, Some(1))], Linearizable),
            (
                "read of a value never written",
                vec![op(r(Some("x")), 0, Some(1))],
                NotLinearizable,
            ),
            (
                "sequential write then read",
                vec![op(w("a"), 0, Some(1)), op(r(Some("a")), 2, Some(3))],
                Linearizable,
            ),
            (
                "stale read after a completed write",
                vec![op(w("a"), 0, Some(1)), op(r(None), 2, Some(3))],
                NotLinearizable,
            ),
            (
                "concurrent read may see either",
                vec![
                    op(w("a"), 0, Some(10)),
                    op(r(None), 1, Some(2)),
                    op(r(Some("a")), 3, Some(4)),
                ],
                Linearizable,
            ),
            (
                "reads going back in time",
                vec![
                    op(w("a"), 0, Some(10)),
                    op(r(Some("a")), 1, Some(2)),
                    op(r(None), 3, Some(4)),
                ],
                NotLinearizable,
            ),
            (
                "unknown write may apply late",
                vec![
                    op(w("a"), 0, None),
                    op(r(None), 5, Some(6)),
                    op(r(Some("a")), 7, Some(8)),
                ],
                Linearizable,
            ),
            (
                "unknown write may never apply",
                vec![op(w("a"), 0, None), op(r(None), 5, Some(6))],
                Linearizable,
            ),
            (
                "lost acknowledged write",
                vec![
                    op(w("a"), 0, Some(1)),
                    op(w("b"), 2, Some(3)),
                    op(r(Some("a")), 4, Some(5)),
                ],
                NotLinearizable,
            ),
            (
                "cas that swapped",
                vec![
                    op(w("a"), 0, Some(1)),
                    op(
                        RegisterOp::Cas {
                            expected: Some("a".into()),
                            new: Some("b".into()),
                            swapped: Some(true),
                        },
                        2,
                        Some(3),
                    ),
                    op(r(Some("b")), 4, Some(5)),
                ],
                Linearizable,
            ),
            (
                "cas claiming a swap it could not make",
                vec![
                    op(w("a"), 0, Some(1)),
                    op(
                        RegisterOp::Cas {
                            expected: Some("z".into()),
                            new: Some("b".into()),
                            swapped: Some(true),
                        },
                        2,
                        Some(3),
                    ),
                ],
                NotLinearizable,
            ),
        ];
        for (name, history, want) in cases {
            assert_eq!(check(&history, 1_000_000), want, "{name}");
        }
    }

    #[test]
    fn many_concurrent_unknown_writes_stay_tractable() {
        // 40 writes that never returned, then reads of the last one: the memoization keeps
        // the search from trying every order.
        let mut history: Vec<Timed> = (0..40).map(|i| op(w(&format!("v{i}")), i, None)).collect();
        history.push(op(r(Some("v39")), 100, Some(101)));
        history.push(op(r(Some("v39")), 102, Some(103)));
        assert_eq!(check(&history, 10_000_000), Verdict::Linearizable);
    }
}
