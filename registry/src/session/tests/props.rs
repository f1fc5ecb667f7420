//! Properties of one shard and of a primary/standby pair, against the reference model.

use std::collections::{BTreeMap, VecDeque};

use meshreg_membership::{NodeId, loopback_addr};
use proptest::prelude::*;

use super::model::Model;
use crate::Pid;
use crate::session::{
    Body, Call, Epoch, Outcome, Output, Policy, Replicate, Reply, Request, RequestId, SessionError,
    SessionKey, Shard, ShardConfig, ShardId,
};

const SHARD: ShardId = ShardId(3);
const PRIMARY: u32 = 200;
const STANDBY: u32 = 201;

fn node(i: u32, generation: u32) -> NodeId {
    NodeId::new(loopback_addr(i, 7000), generation)
}

fn client() -> NodeId {
    node(100, 1)
}

fn arb_pid() -> impl Strategy<Value = Pid> {
    (0u32..3, 1u32..3, 0u64..3).prop_map(|(n, g, serial)| Pid {
        node: node(n, g),
        serial,
    })
}

fn arb_key() -> impl Strategy<Value = SessionKey> {
    prop_oneof![
        3 => (0u64..6).prop_map(SessionKey::U64),
        1 => (0u8..2).prop_map(|b| SessionKey::Bytes(vec![b; 3].into())),
    ]
}

fn arb_call() -> impl Strategy<Value = Call> {
    let meta = proptest::collection::vec(any::<u8>(), 0..3);
    prop_oneof![
        3 => (arb_key(), arb_pid(), meta, any::<bool>()).prop_map(|(key, pid, m, replace)| {
            Call::Register {
                key,
                pid,
                metadata: m.into(),
                policy: if replace { Policy::Replace } else { Policy::Reject },
            }
        }),
        2 => (arb_key(), arb_pid()).prop_map(|(key, pid)| Call::Unregister { key, pid }),
        1 => arb_key().prop_map(|key| Call::Lookup { key }),
    ]
}

fn arb_body() -> impl Strategy<Value = Body> {
    prop_oneof![
        4 => arb_call().prop_map(Body::One),
        1 => proptest::collection::vec(arb_call(), 0..4).prop_map(Body::Batch),
    ]
}

fn request(id: u64, epoch: Epoch, body: Body) -> Request {
    Request {
        shard: SHARD,
        epoch,
        id: RequestId {
            client: client(),
            id,
        },
        answered_below: 0,
        body,
    }
}

/// Collect replies by request id and notices; nothing else may come out of a primary here.
#[derive(Default)]
struct Client {
    replies: BTreeMap<u64, Vec<Result<Outcome, SessionError>>>,
    notices: Vec<u64>,
}

impl Client {
    fn take(&mut self, outs: Vec<Output>, replicas: &mut VecDeque<Replicate>) {
        for o in outs {
            match o {
                Output::Reply(Reply { to, result }) => {
                    self.replies.entry(to.id).or_default().push(result);
                }
                Output::Notify { msg, .. } => self.notices.push(msg.version),
                Output::Replicate { msg, .. } => replicas.push_back(msg),
                other => panic!("unexpected output {other:?}"),
            }
        }
    }

    fn first(&self, id: u64) -> Option<&Result<Outcome, SessionError>> {
        self.replies.get(&id).and_then(|r| r.first())
    }
}

fn pair() -> (Shard, Shard) {
    let mut p = Shard::primary(SHARD, 1, ShardConfig::default());
    let snapshot = p.attach_standby(node(STANDBY, 1)).expect("primary");
    let mut out = Vec::new();
    let s = Shard::standby(snapshot, node(PRIMARY, 1), ShardConfig::default(), &mut out);
    let mut released = Vec::new();
    for o in out {
        if let Output::Ack { msg, .. } = o {
            p.handle_replica_ack(node(STANDBY, 1), msg, &mut released);
        }
    }
    (p, s)
}

/// Apply `msg` at the standby; return the acks it produced.
fn deliver(s: &mut Shard, msg: Replicate) -> Vec<Output> {
    let mut acks = Vec::new();
    s.handle_replicate(node(PRIMARY, 1), msg, &mut acks);
    acks
}

fn ack_all(p: &mut Shard, acks: Vec<Output>) -> Vec<Output> {
    let mut out = Vec::new();
    for a in acks {
        let Output::Ack { msg, .. } = a else {
            panic!("standby output {a:?}")
        };
        p.handle_replica_ack(node(STANDBY, 1), msg, &mut out);
    }
    out
}

#[derive(Clone, Debug)]
enum Step {
    Send(Body),
    Retry(usize),
    DropNode(u32, u32),
    DropPid(Pid),
}

fn arb_step() -> impl Strategy<Value = Step> {
    prop_oneof![
        12 => arb_body().prop_map(Step::Send),
        3 => any::<usize>().prop_map(Step::Retry),
        1 => (0u32..3, 1u32..3).prop_map(|(n, g)| Step::DropNode(n, g)),
        1 => arb_pid().prop_map(Step::DropPid),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// A primary without standby answers every request as the model does, a retry returns the
    /// original answer of a write, and the final sessions equal the model's.
    #[test]
    fn prop_shard_matches_the_reference_model(steps in proptest::collection::vec(arb_step(), 1..60)) {
        let mut shard = Shard::primary(SHARD, 1, ShardConfig::default());
        let mut model = Model::default();
        let mut sent: Vec<(Body, Vec<Output>)> = Vec::new();
        for step in steps {
            let mut out = Vec::new();
            match step {
                Step::Send(body) => {
                    let id = sent.len() as u64 + 1;
                    let expected = model.apply(&body);
                    shard.handle_request(request(id, 1, body.clone()), &mut out);
                    let want = Output::Reply(Reply { to: request(id, 1, Body::Batch(vec![])).id, result: Ok(expected) });
                    prop_assert_eq!(out.first(), Some(&want));
                    sent.push((body, out));
                }
                Step::Retry(i) if !sent.is_empty() => {
                    let (body, first) = sent[i % sent.len()].clone();
                    let id = (i % sent.len()) as u64 + 1;
                    shard.handle_request(request(id, 1, body.clone()), &mut out);
                    if body.is_write() {
                        prop_assert_eq!(out.first(), first.first(), "a retried write answers as first time");
                        prop_assert_eq!(out.len(), 1, "a retry notifies no one again");
                    } else {
                        let want = model.apply(&body);
                        let ok = matches!(&out[..], [Output::Reply(Reply { result: Ok(o), .. })] if *o == want);
                        prop_assert!(ok, "a re-read answers from the current state");
                    }
                }
                Step::Retry(_) => {}
                Step::DropNode(n, g) => {
                    let gone = node(n, g);
                    let expect = model.map.values().filter(|s| s.pid.node == gone).count();
                    model.drop_pids(|p| p.node == gone);
                    prop_assert_eq!(shard.drop_node(gone, &mut out), Ok(expect));
                }
                Step::DropPid(pid) => {
                    let expect = model.map.values().filter(|s| s.pid == pid).count();
                    if model.map.values().any(|s| s.pid.node == pid.node) {
                        model.drop_pids(|p| p == pid);
                    }
                    prop_assert_eq!(shard.drop_pid(pid, &mut out), Ok(expect));
                }
            }
            prop_assert_eq!(shard.applied_seq(), model.seq);
        }
        prop_assert_eq!(shard.sessions(), model.sessions());
    }
}

#[derive(Clone, Debug)]
enum Net {
    Send(Body),
    DropNode(u32, u32),
    /// Deliver the in-flight entry at this index (mod length), optionally keeping a duplicate.
    Deliver(usize, bool),
    Retransmit,
}

fn arb_net() -> impl Strategy<Value = Net> {
    prop_oneof![
        6 => arb_body().prop_map(Net::Send),
        1 => (0u32..3, 1u32..3).prop_map(|(n, g)| Net::DropNode(n, g)),
        6 => (any::<usize>(), any::<bool>()).prop_map(|(i, d)| Net::Deliver(i, d)),
        1 => Just(Net::Retransmit),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever the order, loss and duplication of replication messages, once everything is
    /// retransmitted and delivered the standby equals the primary and every request was
    /// answered exactly once.
    #[test]
    fn prop_standby_converges_despite_reordering_duplication_and_loss(steps in proptest::collection::vec(arb_net(), 1..80)) {
        let (mut p, mut s) = pair();
        let mut client = Client::default();
        let mut flight: VecDeque<Replicate> = VecDeque::new();
        let mut sent = 0u64;
        for step in steps {
            let mut out = Vec::new();
            match step {
                Net::Send(body) => {
                    sent += 1;
                    p.handle_request(request(sent, 1, body), &mut out);
                }
                Net::DropNode(n, g) => {
                    prop_assert!(p.drop_node(node(n, g), &mut out).is_ok());
                }
                Net::Deliver(i, dup) if !flight.is_empty() => {
                    let i = i % flight.len();
                    let msg = if dup { flight[i].clone() } else { flight.remove(i).expect("in range") };
                    let acks = deliver(&mut s, msg);
                    out = ack_all(&mut p, acks);
                }
                Net::Deliver(..) => {}
                Net::Retransmit => {
                    flight.clear(); // whatever was in flight is lost; retransmit resends it
                    p.retransmit(&mut out);
                }
            }
            client.take(out, &mut flight);
        }
        flight.clear();
        let mut out = Vec::new();
        p.retransmit(&mut out);
        client.take(out, &mut flight);
        while let Some(msg) = flight.pop_front() {
            let acks = deliver(&mut s, msg);
            let out = ack_all(&mut p, acks);
            client.take(out, &mut flight);
        }
        prop_assert_eq!(s.sessions(), p.sessions());
        prop_assert_eq!(s.applied_seq(), p.applied_seq());
        prop_assert_eq!(p.committed_seq(), p.applied_seq());
        prop_assert_eq!(client.replies.len() as u64, sent);
        prop_assert!(client.replies.values().all(|r| r.len() == 1));
    }
}

#[derive(Clone, Debug)]
enum Pre {
    Send(Body),
    /// Deliver the next `n` in-flight entries in order; pass the standby's acks back or lose them.
    Deliver(usize, bool),
}

fn arb_pre() -> impl Strategy<Value = Pre> {
    prop_oneof![
        3 => arb_body().prop_map(Pre::Send),
        2 => (0usize..4, any::<bool>()).prop_map(|(n, ack)| Pre::Deliver(n, ack)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The primary crashes at an arbitrary point (entries in flight lost, acks possibly lost);
    /// the standby is promoted and the client retries every request with the same id.
    /// - every write answered before the crash is in the promoted standby's state;
    /// - every retry gets a definite answer, equal to the first answer when there was one;
    /// - each write is applied once: answers and final state equal the model fed each request
    ///   once, in the order the surviving lineage applied it;
    /// - no notice was sent for a write that was not answered.
    #[test]
    fn prop_failover_keeps_acknowledged_writes_and_applies_each_request_once(steps in proptest::collection::vec(arb_pre(), 1..60)) {
        let (mut p, mut s) = pair();
        let mut client = Client::default();
        let mut flight: VecDeque<Replicate> = VecDeque::new();
        let mut bodies: Vec<Body> = Vec::new();
        for step in steps {
            let mut out = Vec::new();
            match step {
                Pre::Send(body) => {
                    bodies.push(body.clone());
                    p.handle_request(request(bodies.len() as u64, 1, body), &mut out);
                }
                Pre::Deliver(n, ack) => {
                    for _ in 0..n {
                        let Some(msg) = flight.pop_front() else { break };
                        let acks = deliver(&mut s, msg);
                        if ack {
                            out.extend(ack_all(&mut p, acks));
                        }
                    }
                }
            }
            client.take(out, &mut flight);
        }
        // Before the crash, the primary answered exactly as the model in arrival order.
        let mut before = Model::default();
        let pre: Vec<Outcome> = bodies.iter().map(|b| before.apply(b)).collect();
        for (i, want) in pre.iter().enumerate() {
            if let Some(got) = client.first(i as u64 + 1) {
                prop_assert_eq!(got, &Ok(want.clone()));
            }
        }
        let answered_seqs: Vec<u64> = (0..bodies.len())
            .filter(|i| bodies[*i].is_write() && client.first(*i as u64 + 1).is_some())
            .map(|i| bodies[..=i].iter().filter(|b| b.is_write()).count() as u64)
            .collect();
        prop_assert!(client.notices.iter().all(|v| answered_seqs.contains(v)), "notice for an unanswered write");

        // Crash: the primary and everything in flight are gone.
        drop(p);
        let survived = s.applied_seq();
        prop_assert!(answered_seqs.iter().all(|seq| *seq <= survived), "an acknowledged write was lost");
        prop_assert_eq!(s.promote(2), Ok(()));

        // The surviving lineage: the first `survived` writes, then the retries in id order.
        let mut after = Model::default();
        let mut writes = 0u64;
        let mut lineage: Vec<Option<Outcome>> = Vec::new();
        for b in &bodies {
            if b.is_write() && writes < survived {
                writes += 1;
                lineage.push(Some(after.apply(b)));
            } else {
                lineage.push(None);
            }
        }
        for (i, b) in bodies.iter().enumerate() {
            let id = i as u64 + 1;
            let answered = client.first(id).cloned();
            if !b.is_write() && answered.is_some() {
                continue; // a re-read may see later writes: nothing to compare
            }
            let mut out = Vec::new();
            s.handle_request(request(id, 2, b.clone()), &mut out);
            let want = match &lineage[i] {
                Some(o) => o.clone(),
                None => after.apply(b),
            };
            let reply = out.into_iter().find_map(|o| match o {
                Output::Reply(r) => Some(r.result),
                _ => None,
            });
            prop_assert_eq!(reply.as_ref(), Some(&Ok(want)), "retry of {} is definite and consistent", id);
            if let Some(first) = answered {
                prop_assert_eq!(reply, Some(first), "retry of {} repeats the first answer", id);
            }
        }
        prop_assert_eq!(s.sessions(), after.sessions());
        prop_assert_eq!(s.applied_seq(), after.seq);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// `handle_requests` (with read-ahead) is exactly `handle_request` in a loop.
    #[test]
    fn prop_pipelined_requests_answer_as_one_at_a_time(bodies in proptest::collection::vec(arb_body(), 0..100)) {
        let mut one = Shard::primary(SHARD, 1, ShardConfig::default());
        let mut many = Shard::primary(SHARD, 1, ShardConfig::default());
        let requests: Vec<Request> = bodies
            .into_iter()
            .enumerate()
            .map(|(i, b)| request(i as u64 + 1, 1, b))
            .collect();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for r in requests.clone() {
            one.handle_request(r, &mut a);
        }
        many.handle_requests(requests, &mut b);
        prop_assert_eq!(a, b);
        prop_assert_eq!(one.sessions(), many.sessions());
    }
}
