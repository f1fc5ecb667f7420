//! Property: random joins, leaves, exits, partial deliveries, crashes and restarts (bosses
//! included) end, after quiescence, with every live table identical and equal to a reference
//! model built from the calls that completed `Ok`.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::harness::Cluster;
use crate::CallError;

const NODES: usize = 5;

#[derive(Clone, Debug)]
enum Step {
    Join {
        node: usize,
        group: u8,
        serial: u64,
    },
    Leave {
        node: usize,
        group: u8,
        serial: u64,
    },
    Exit {
        node: usize,
        serial: u64,
    },
    Deliver(usize),
    /// Everything queued, delivered with every node holding its frames over the burst.
    Burst,
    Crash(usize),
    /// A crash that only nodes below the second index notice at once; the others notice at
    /// the next `Deliver` or `Settle` (views disagree in between).
    CrashNoticedLate(usize, usize),
    Restart(usize),
    Settle,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..NODES, 0u8..4, 0u64..3).prop_map(|(node, group, serial)| Step::Join { node, group, serial }),
        3 => (0..NODES, 0u8..4, 0u64..3).prop_map(|(node, group, serial)| Step::Leave { node, group, serial }),
        1 => (0..NODES, 0u64..3).prop_map(|(node, serial)| Step::Exit { node, serial }),
        4 => (1usize..12).prop_map(Step::Deliver),
        2 => Just(Step::Burst),
        1 => (0..NODES).prop_map(Step::Crash),
        1 => (0..NODES, 0..NODES).prop_map(|(n, k)| Step::CrashNoticedLate(n, k)),
        1 => (0..NODES).prop_map(Step::Restart),
        1 => Just(Step::Settle),
    ]
}

/// `(node, generation, group, serial)` -> occurrences, from completed calls.
type Model = BTreeMap<(usize, u32, u8, u64), i64>;

struct Run {
    c: Cluster,
    /// `(node, req)` -> `(generation, group, serial, +1 join / -1 leave)`.
    calls: BTreeMap<(usize, u64), (u32, u8, u64, i64)>,
    exited: BTreeSet<(usize, u32, u64)>,
    seen: usize,
    model: Model,
    /// `Down`s not delivered yet: (receiver, dead identity).
    late_downs: Vec<(usize, meshreg_membership::NodeId)>,
}

impl Run {
    fn flush_downs(&mut self) {
        for (j, id) in std::mem::take(&mut self.late_downs) {
            if self.c.alive[j] {
                self.c
                    .member_event(j, meshreg_membership::MemberEvent::Down(id));
            }
        }
    }

    fn gen_of(&self, node: usize) -> u32 {
        self.c.nodes[node].me().generation()
    }

    fn absorb(&mut self) {
        for done in &self.c.completions[self.seen..] {
            let Some(&(generation, group, serial, delta)) = self.calls.get(&(done.node, done.req))
            else {
                continue;
            };
            match &done.result {
                Ok(()) => {
                    *self
                        .model
                        .entry((done.node, generation, group, serial))
                        .or_insert(0) += delta
                }
                Err(CallError::Group(_)) => {}
                Err(e @ CallError::Unavailable(_)) => panic!("live cluster was unavailable: {e}"),
            }
        }
        self.seen = self.c.completions.len();
    }

    fn apply(&mut self, s: &Step) {
        match *s {
            Step::Join {
                node,
                group,
                serial,
            }
            | Step::Leave {
                node,
                group,
                serial,
            } => {
                let generation = self.gen_of(node);
                if !self.c.alive[node] || self.exited.contains(&(node, generation, serial)) {
                    return;
                }
                let g = format!("g{group}");
                let (req, delta) = if matches!(s, Step::Join { .. }) {
                    (
                        self.c
                            .join(node, "s", &g, serial, &[u8::try_from(serial).unwrap()]),
                        1,
                    )
                } else {
                    (self.c.leave(node, "s", &g, serial), -1)
                };
                self.calls
                    .insert((node, req), (generation, group, serial, delta));
            }
            Step::Exit { node, serial } => {
                if self.c.alive[node] {
                    let generation = self.gen_of(node);
                    self.exited.insert((node, generation, serial));
                    self.c.exit(node, serial);
                }
            }
            Step::Deliver(n) => {
                for _ in 0..n {
                    self.c.step();
                }
                self.flush_downs();
            }
            Step::Burst => {
                self.c.burst();
                self.flush_downs();
            }
            Step::CrashNoticedLate(node, k) => {
                if self.c.alive[node] && self.c.live().len() > 2 && self.late_downs.is_empty() {
                    let id = self.c.crash_silently(node);
                    for j in self.c.live() {
                        if j < k {
                            self.c
                                .member_event(j, meshreg_membership::MemberEvent::Down(id));
                        } else {
                            self.late_downs.push((j, id));
                        }
                    }
                }
            }
            Step::Crash(node) => {
                if self.c.alive[node] && self.c.live().len() > 2 {
                    self.c.crash(node);
                }
            }
            Step::Restart(node) => {
                if !self.c.alive[node] && self.late_downs.is_empty() {
                    self.c.restart(node);
                }
            }
            Step::Settle => {
                self.flush_downs();
                self.c.settle();
            }
        }
        self.absorb();
    }

    fn expected(&self) -> Vec<(String, String, crate::Pid, Vec<u8>)> {
        let mut all = Vec::new();
        for (&(node, generation, group, serial), &count) in &self.model {
            let alive = self.c.alive[node] && self.gen_of(node) == generation;
            if !alive || self.exited.contains(&(node, generation, serial)) {
                continue;
            }
            assert!(count >= 0, "more leaves than joins completed");
            let pid = crate::Pid {
                node: self.c.nodes[node].me().root(),
                serial,
            };
            for _ in 0..count {
                all.push((
                    "s".to_string(),
                    format!("g{group}"),
                    pid,
                    vec![u8::try_from(serial).unwrap()],
                ));
            }
        }
        all.sort();
        all
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn prop_random_ops_and_boss_crashes_converge_to_the_model(
        steps in proptest::collection::vec(step(), 1..60),
        partitions in prop_oneof![Just(1u16), Just(4), Just(256)],
    ) {
        let mut run = Run {
            c: Cluster::new(NODES, partitions),
            calls: BTreeMap::new(),
            exited: BTreeSet::new(),
            seen: 0,
            model: Model::new(),
            late_downs: Vec::new(),
        };
        for s in &steps {
            run.apply(s);
        }
        run.flush_downs();
        run.c.settle();
        run.absorb();
        let view = run.c.assert_converged();
        prop_assert_eq!(view, run.expected());
        for i in run.c.live() {
            prop_assert!(run.c.nodes[i].is_quiet(), "node {} still busy", i);
        }
    }
}
