//! Exact-output tests of one replica and of a primary/standby pair wired by hand.

use meshreg_membership::loopback_addr;

use super::*;
use crate::session::{Answer, Body, Call, Outcome, Policy, Reassertion, RequestId};

const SHARD: ShardId = ShardId(7);

fn node(i: u32) -> NodeId {
    NodeId::new(loopback_addr(i, 7000), 1)
}

fn pid(n: u32, serial: u64) -> Pid {
    Pid {
        node: node(n),
        serial,
    }
}

/// The client node every request in these tests comes from.
fn client() -> NodeId {
    node(100)
}

fn rid(id: u64) -> RequestId {
    RequestId {
        client: client(),
        id,
    }
}

fn req(id: u64, epoch: Epoch, body: Body) -> Request {
    Request {
        shard: SHARD,
        epoch,
        id: rid(id),
        answered_below: 0,
        body,
    }
}

fn register(key: u64, pid: Pid, policy: Policy) -> Call {
    Call::Register {
        key: key.into(),
        pid,
        metadata: Box::default(),
        policy,
    }
}

fn reg(key: u64, pid: Pid) -> Body {
    Body::One(register(key, pid, Policy::Reject))
}

fn replace(key: u64, pid: Pid) -> Body {
    Body::One(register(key, pid, Policy::Replace))
}

fn unreg(key: u64, pid: Pid) -> Body {
    Body::One(Call::Unregister {
        key: key.into(),
        pid,
    })
}

fn lookup(key: u64) -> Body {
    Body::One(Call::Lookup { key: key.into() })
}

fn ok(id: u64, answer: Answer) -> Output {
    Output::Reply(Reply {
        to: rid(id),
        result: Ok(Outcome::One(answer)),
    })
}

fn err(id: u64, e: SessionError) -> Output {
    Output::Reply(Reply {
        to: rid(id),
        result: Err(e),
    })
}

fn found(pid: Pid, version: Seq) -> Answer {
    Answer::Found(Some(Session {
        pid,
        metadata: Box::default(),
        version,
    }))
}

fn primary() -> Shard {
    Shard::primary(SHARD, 1, ShardConfig::default())
}

/// Send a request, return what came out.
fn send(shard: &mut Shard, r: Request) -> Vec<Output> {
    let mut out = Vec::new();
    shard.handle_request(r, &mut out);
    out
}

/// Primary on node 1 (epoch 1), standby on node 2 filled from it, snapshot acknowledged.
fn pair() -> (Shard, Shard) {
    let mut p = primary();
    let snapshot = p.attach_standby(node(2)).expect("primary");
    let mut out = Vec::new();
    let s = Shard::standby(snapshot, node(1), ShardConfig::default(), &mut out);
    let mut released = Vec::new();
    for o in out {
        let Output::Ack { to, msg } = o else {
            panic!("a fresh standby only acknowledges: {o:?}")
        };
        assert_eq!(to, node(1));
        p.handle_replica_ack(node(2), msg, &mut released);
    }
    assert!(released.is_empty());
    (p, s)
}

/// Deliver every Replicate in `outs` to the standby and its acks back to the primary; returns
/// the other outputs of both sides in order.
fn pump(p: &mut Shard, s: &mut Shard, outs: Vec<Output>) -> Vec<Output> {
    let mut rest = Vec::new();
    for o in outs {
        match o {
            Output::Replicate { to, msg } => {
                assert_eq!(to, node(2).addr());
                let mut acks = Vec::new();
                s.handle_replicate(node(1), msg, &mut acks);
                for a in acks {
                    let Output::Ack { msg, .. } = a else {
                        panic!("standby output {a:?}")
                    };
                    p.handle_replica_ack(node(2), msg, &mut rest);
                }
            }
            other => rest.push(other),
        }
    }
    rest
}

/// Send a request to the primary and run replication to completion.
fn exec(p: &mut Shard, s: &mut Shard, r: Request) -> Vec<Output> {
    let out = send(p, r);
    pump(p, s, out)
}

#[test]
fn register_of_a_free_key_answers_registered_at_the_next_seq() {
    let mut p = primary();
    assert_eq!(
        send(&mut p, req(1, 1, reg(5, pid(1, 1)))),
        [ok(1, Answer::Registered { version: 1 })]
    );
    assert_eq!(
        send(&mut p, req(2, 1, lookup(5))),
        [ok(2, found(pid(1, 1), 1))]
    );
    assert_eq!((p.applied_seq(), p.committed_seq(), p.len()), (1, 1, 1));
}

#[test]
fn register_reject_on_a_taken_key_answers_taken_and_changes_nothing() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    let before = p.sessions();
    assert_eq!(
        send(&mut p, req(2, 1, reg(5, pid(2, 9)))),
        [ok(2, Answer::Taken { holder: pid(1, 1) })]
    );
    assert_eq!(p.sessions(), before);
}

#[test]
fn register_replace_answers_replaced_and_notifies_the_old_node() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    assert_eq!(
        send(&mut p, req(2, 1, replace(5, pid(2, 9)))),
        [
            ok(
                2,
                Answer::Replaced {
                    old: pid(1, 1),
                    version: 2
                }
            ),
            Output::Notify {
                to: node(1),
                msg: Replaced {
                    shard: SHARD,
                    epoch: 1,
                    key: 5u64.into(),
                    old: pid(1, 1),
                    new: pid(2, 9),
                    version: 2,
                },
            },
        ]
    );
    assert_eq!(p.peek(&5u64.into()).map(|s| s.pid), Some(pid(2, 9)));
}

#[test]
fn reregistration_by_the_holder_updates_metadata_and_version() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    let with_meta = Body::One(Call::Register {
        key: 5u64.into(),
        pid: pid(1, 1),
        metadata: b"m"[..].into(),
        policy: Policy::Reject,
    });
    assert_eq!(
        send(&mut p, req(2, 1, with_meta)),
        [ok(2, Answer::Registered { version: 2 })]
    );
    assert_eq!(
        p.peek(&5u64.into()),
        Some(Session {
            pid: pid(1, 1),
            metadata: b"m"[..].into(),
            version: 2
        })
    );
}

#[test]
fn a_newer_generation_of_the_holders_node_takes_the_key_without_notice() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    let reborn = Pid {
        node: node(1).next_generation(),
        serial: 1,
    };
    assert_eq!(
        send(&mut p, req(2, 1, reg(5, reborn))),
        [ok(2, Answer::Registered { version: 2 })]
    );
    assert_eq!(p.node_sessions(&node(1)), 0);
}

#[test]
fn unregister_by_a_non_holder_is_refused_and_changes_nothing() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    let before = p.sessions();
    assert_eq!(
        send(&mut p, req(2, 1, unreg(5, pid(1, 2)))),
        [ok(
            2,
            Answer::NotHolder {
                holder: Some(pid(1, 1))
            }
        )]
    );
    assert_eq!(
        send(&mut p, req(3, 1, unreg(6, pid(1, 2)))),
        [ok(3, Answer::NotHolder { holder: None })]
    );
    assert_eq!(p.sessions(), before);
}

#[test]
fn unregister_by_the_holder_removes_the_key() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    assert_eq!(
        send(&mut p, req(2, 1, unreg(5, pid(1, 1)))),
        [ok(2, Answer::Unregistered)]
    );
    assert!(p.is_empty());
}

#[test]
fn oversized_key_and_metadata_are_refused_naming_the_limit_and_change_nothing() {
    let mut p = primary();
    let big_key = Body::Batch(vec![
        register(1, pid(1, 1), Policy::Reject),
        Call::Register {
            key: SessionKey::Bytes(vec![0; 257].into()),
            pid: pid(1, 1),
            metadata: Box::default(),
            policy: Policy::Reject,
        },
    ]);
    assert_eq!(
        send(&mut p, req(1, 1, big_key)),
        [err(
            1,
            SessionError::KeyTooLarge {
                call: 1,
                len: 257,
                max: 256
            }
        )]
    );
    let big_meta = Body::One(Call::Register {
        key: 1u64.into(),
        pid: pid(1, 1),
        metadata: vec![0; 300].into(),
        policy: Policy::Reject,
    });
    assert_eq!(
        send(&mut p, req(2, 1, big_meta)),
        [err(
            2,
            SessionError::MetadataTooLarge {
                call: 0,
                len: 300,
                max: 256
            }
        )]
    );
    let many = Body::lookup_many((0..4097u64).map(SessionKey::U64));
    assert_eq!(
        send(&mut p, req(3, 1, many)),
        [err(
            3,
            SessionError::TooManyCalls {
                len: 4097,
                max: 4096
            }
        )]
    );
    assert!(p.is_empty());
    assert_eq!(p.applied_seq(), 0);
}

#[test]
fn a_batch_is_one_log_entry_answered_in_order() {
    let mut p = primary();
    let batch = Body::Batch(vec![
        register(1, pid(1, 1), Policy::Reject),
        register(1, pid(2, 2), Policy::Reject),
        Call::Lookup { key: 1u64.into() },
        Call::Unregister {
            key: 1u64.into(),
            pid: pid(1, 1),
        },
        Call::Lookup { key: 1u64.into() },
    ]);
    assert_eq!(
        send(&mut p, req(1, 1, batch)),
        [Output::Reply(Reply {
            to: rid(1),
            result: Ok(Outcome::Many(vec![
                Answer::Registered { version: 1 },
                Answer::Taken { holder: pid(1, 1) },
                found(pid(1, 1), 1),
                Answer::Unregistered,
                Answer::Found(None),
            ])),
        })]
    );
    assert_eq!(p.applied_seq(), 1);
}

#[test]
fn lookup_many_reads_every_key_without_a_log_entry() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(1, pid(1, 1))));
    let out = send(
        &mut p,
        req(2, 1, Body::lookup_many([1u64.into(), 2u64.into()])),
    );
    assert_eq!(
        out,
        [Output::Reply(Reply {
            to: rid(2),
            result: Ok(Outcome::Many(vec![
                found(pid(1, 1), 1),
                Answer::Found(None)
            ])),
        })]
    );
    assert_eq!(p.applied_seq(), 1);
}

#[test]
fn a_retry_returns_the_original_answer_without_applying_twice() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    let first = send(&mut p, req(2, 1, replace(5, pid(2, 2))));
    send(&mut p, req(3, 1, unreg(5, pid(2, 2))));
    // Applied again, the Replace would now answer Registered and notify no one.
    assert_eq!(send(&mut p, req(2, 1, replace(5, pid(2, 2)))), first[..1]);
    assert!(p.is_empty());
    assert_eq!(p.applied_seq(), 3);
}

#[test]
fn a_retry_below_answered_below_is_refused_as_expired() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    let mut later = req(2, 1, reg(6, pid(1, 1)));
    later.answered_below = 2;
    send(&mut p, later);
    assert_eq!(
        send(&mut p, req(1, 1, reg(5, pid(1, 1)))),
        [err(1, SessionError::RetryExpired { id: 1, floor: 2 })]
    );
    assert_eq!(p.applied_seq(), 2);
}

#[test]
fn routing_errors_are_typed_and_retryable() {
    let mut p = Shard::primary(SHARD, 4, ShardConfig::default());
    let mut other = req(1, 4, lookup(1));
    other.shard = ShardId(8);
    let refusals = [
        (other, SessionError::UnknownShard { shard: ShardId(8) }),
        (
            req(1, 3, reg(1, pid(1, 1))),
            SessionError::StaleEpoch { current: 4 },
        ),
        (
            req(1, 5, reg(1, pid(1, 1))),
            SessionError::NotPrimary { epoch: 4 },
        ),
    ];
    for (r, e) in refusals {
        assert!(e.is_retryable());
        assert_eq!(send(&mut p, r), [err(1, e)]);
    }
    assert_eq!(p.applied_seq(), 0);
}

#[test]
fn a_standby_refuses_client_requests_with_not_primary() {
    let (_, mut s) = pair();
    assert_eq!(
        send(&mut s, req(1, 1, lookup(1))),
        [err(1, SessionError::NotPrimary { epoch: 1 })]
    );
}

#[test]
fn the_primary_holds_reply_and_notice_until_the_standby_acknowledges() {
    let (mut p, mut s) = pair();
    exec(&mut p, &mut s, req(1, 1, reg(5, pid(1, 1))));
    let out = send(&mut p, req(2, 1, replace(5, pid(3, 3))));
    let op = LogOp::Request {
        id: rid(2),
        answered_below: 0,
        body: replace(5, pid(3, 3)),
    };
    let replicate = Replicate {
        shard: SHARD,
        epoch: 1,
        seq: 2,
        op,
    };
    assert_eq!(
        out,
        [Output::Replicate {
            to: node(2).addr(),
            msg: replicate.clone()
        }]
    );
    let mut acks = Vec::new();
    s.handle_replicate(node(1), replicate, &mut acks);
    let ack = ReplicaAck {
        shard: SHARD,
        epoch: 1,
        seq: 2,
    };
    assert_eq!(
        acks,
        [Output::Ack {
            to: node(1),
            msg: ack
        }]
    );
    let mut released = Vec::new();
    p.handle_replica_ack(node(2), ack, &mut released);
    assert_eq!(
        released,
        [
            ok(
                2,
                Answer::Replaced {
                    old: pid(1, 1),
                    version: 2
                }
            ),
            Output::Notify {
                to: node(1),
                msg: Replaced {
                    shard: SHARD,
                    epoch: 1,
                    key: 5u64.into(),
                    old: pid(1, 1),
                    new: pid(3, 3),
                    version: 2,
                },
            },
        ]
    );
    assert_eq!(s.sessions(), p.sessions());
}

#[test]
fn a_lookup_waits_for_an_earlier_unacknowledged_write() {
    let (mut p, mut s) = pair();
    let write = send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    assert_eq!(send(&mut p, req(2, 1, lookup(5))), []);
    assert_eq!(
        pump(&mut p, &mut s, write),
        [
            ok(1, Answer::Registered { version: 1 }),
            ok(2, found(pid(1, 1), 1))
        ]
    );
}

#[test]
fn the_standby_applies_entries_in_seq_order_and_acknowledges_cumulatively() {
    let (mut p, mut s) = pair();
    let mut replicates = Vec::new();
    for k in 1..=3 {
        for o in send(&mut p, req(k, 1, reg(k, pid(1, k)))) {
            if let Output::Replicate { msg, .. } = o {
                replicates.push(msg);
            }
        }
    }
    let ack = |seq| Output::Ack {
        to: node(1),
        msg: ReplicaAck {
            shard: SHARD,
            epoch: 1,
            seq,
        },
    };
    let mut out = Vec::new();
    s.handle_replicate(node(1), replicates[2].clone(), &mut out);
    s.handle_replicate(node(1), replicates[1].clone(), &mut out);
    assert_eq!(s.len(), 0, "nothing applied ahead of the gap");
    s.handle_replicate(node(1), replicates[0].clone(), &mut out);
    s.handle_replicate(node(1), replicates[0].clone(), &mut out); // a duplicate
    assert_eq!(out, [ack(0), ack(0), ack(3), ack(3)]);
    assert_eq!(s.sessions(), p.sessions());
}

#[test]
fn retransmit_resends_unacknowledged_entries() {
    let (mut p, mut s) = pair();
    let first = send(&mut p, req(1, 1, reg(1, pid(1, 1))));
    let lost = send(&mut p, req(2, 1, reg(2, pid(1, 1))));
    assert_eq!(
        pump(&mut p, &mut s, first),
        [ok(1, Answer::Registered { version: 1 })]
    );
    let mut again = Vec::new();
    p.retransmit(&mut again);
    assert_eq!(again, lost);
    assert_eq!(
        pump(&mut p, &mut s, again),
        [ok(2, Answer::Registered { version: 2 })]
    );
}

#[test]
fn fencing_answers_held_replies_not_primary_and_drops_held_notices() {
    let (mut p, mut s) = pair();
    exec(&mut p, &mut s, req(1, 1, reg(5, pid(1, 1))));
    send(&mut p, req(2, 1, replace(5, pid(3, 3))));
    let mut out = Vec::new();
    assert!(p.fence(2, &mut out));
    assert_eq!(
        out,
        [
            err(2, SessionError::NotPrimary { epoch: 2 }),
            Output::Fenced {
                shard: SHARD,
                epoch: 2
            },
        ]
    );
    assert_eq!(p.role(), Role::Fenced);
    assert_eq!(
        send(&mut p, req(3, 2, lookup(5))),
        [err(3, SessionError::NotPrimary { epoch: 2 })]
    );
    assert!(!p.fence(2, &mut out));
    assert_eq!(p.promote(3), Err(RoleError::Fenced));
}

#[test]
fn promotion_requires_a_higher_epoch() {
    let (_, mut s) = pair();
    assert_eq!(s.promote(1), Err(RoleError::EpochNotNewer { current: 1 }));
    assert_eq!(s.promote(2), Ok(()));
    assert_eq!((s.role(), s.epoch()), (Role::Primary, 2));
}

/// Issue 5's durability scenario: the primary crashes between receiving a registration and
/// acknowledging it, after the standby applied it; the standby is promoted and the client
/// retries with the same request id.
#[test]
fn an_applied_but_unacknowledged_write_is_answered_once_after_failover() {
    let (mut p, mut s) = pair();
    exec(&mut p, &mut s, req(1, 1, reg(5, pid(1, 1))));
    let acked_before_crash = exec(&mut p, &mut s, req(2, 1, replace(5, pid(3, 3))));
    assert_eq!(acked_before_crash.len(), 2); // reply + notice

    // Entry 3 reaches the standby; the primary dies before the ack arrives.
    let out = send(&mut p, req(3, 1, replace(5, pid(4, 4))));
    let Some(Output::Replicate { msg, .. }) = out.into_iter().next() else {
        panic!("expected a replicate")
    };
    let mut lost_acks = Vec::new();
    s.handle_replicate(node(1), msg, &mut lost_acks);
    drop(p);

    assert_eq!(s.promote(2), Ok(()));
    // The client retries request 3 at epoch 2: the original answer, applied once.
    assert_eq!(
        send(&mut s, req(3, 2, replace(5, pid(4, 4)))),
        [ok(
            3,
            Answer::Replaced {
                old: pid(3, 3),
                version: 3
            }
        )]
    );
    // An acknowledged request retried late also gets its original answer.
    assert_eq!(
        send(&mut s, req(2, 2, replace(5, pid(3, 3)))),
        acked_before_crash[..1]
    );
    assert_eq!(s.applied_seq(), 3);
    assert_eq!(s.peek(&5u64.into()).map(|x| x.pid), Some(pid(4, 4)));
}

#[test]
fn a_write_lost_with_the_primary_is_applied_by_the_retry() {
    let (mut p, mut s) = pair();
    let _never_delivered = send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    drop(p);
    assert_eq!(s.promote(2), Ok(()));
    assert_eq!(
        send(&mut s, req(1, 2, reg(5, pid(1, 1)))),
        [ok(1, Answer::Registered { version: 1 })]
    );
}

/// An old primary paused past its term resumes: the promoted standby answers its Replicate
/// with the newer epoch, which fences it before it can acknowledge anything.
#[test]
fn a_resumed_old_primary_is_fenced_by_the_promoted_standby() {
    let (mut p, mut s) = pair();
    exec(&mut p, &mut s, req(1, 1, reg(5, pid(1, 1))));
    assert_eq!(s.promote(2), Ok(()));
    assert_eq!(
        send(&mut s, req(10, 2, replace(5, pid(6, 6)))),
        [
            ok(
                10,
                Answer::Replaced {
                    old: pid(1, 1),
                    version: 2
                }
            ),
            Output::Notify {
                to: node(1),
                msg: Replaced {
                    shard: SHARD,
                    epoch: 2,
                    key: 5u64.into(),
                    old: pid(1, 1),
                    new: pid(6, 6),
                    version: 2,
                },
            },
        ]
    );
    // The old primary still believes in epoch 1 and takes a conflicting write.
    let out = send(&mut p, req(11, 1, replace(5, pid(7, 7))));
    let released = pump(&mut p, &mut s, out);
    assert_eq!(
        released,
        [
            err(11, SessionError::NotPrimary { epoch: 2 }),
            Output::Fenced {
                shard: SHARD,
                epoch: 2
            },
        ]
    );
    assert_eq!(s.peek(&5u64.into()).map(|x| x.pid), Some(pid(6, 6)));
}

#[test]
fn reassertion_restores_missing_sessions_and_reports_conflicts_as_taken() {
    let mut p = primary();
    send(&mut p, req(1, 1, reg(2, pid(3, 3))));
    let mine = |key: u64, serial| Reassertion {
        key: key.into(),
        pid: Pid {
            node: client(),
            serial,
        },
        metadata: b"x"[..].into(),
    };
    let out = send(
        &mut p,
        req(2, 1, Body::Reassert(vec![mine(1, 1), mine(2, 2)])),
    );
    assert_eq!(
        out,
        [Output::Reply(Reply {
            to: rid(2),
            result: Ok(Outcome::Many(vec![
                Answer::Registered { version: 2 },
                Answer::Taken { holder: pid(3, 3) },
            ])),
        })]
    );
    assert_eq!(p.node_sessions(&client()), 1);
}

#[test]
fn reassertion_of_another_nodes_pid_is_refused() {
    let mut p = primary();
    let foreign = Reassertion {
        key: 1u64.into(),
        pid: pid(3, 3),
        metadata: Box::default(),
    };
    assert_eq!(
        send(&mut p, req(1, 1, Body::Reassert(vec![foreign]))),
        [err(
            1,
            SessionError::ForeignPid {
                call: 0,
                pid: pid(3, 3)
            }
        )]
    );
    assert!(p.is_empty());
}

#[test]
fn drop_node_removes_its_sessions_and_retry_window_on_both_replicas() {
    let (mut p, mut s) = pair();
    for k in 0..4 {
        let out = send(&mut p, req(k + 1, 1, reg(k, pid((k % 2) as u32, k))));
        pump(&mut p, &mut s, out);
    }
    let mut out = Vec::new();
    assert_eq!(p.drop_node(node(0), &mut out), Ok(2));
    assert_eq!(pump(&mut p, &mut s, out), []);
    assert_eq!(s.sessions(), p.sessions());
    assert_eq!(p.len(), 2);
    // Only node(0)'s retry window went: the client's retry still gets its original answer.
    assert_eq!(
        exec(&mut p, &mut s, req(1, 1, reg(0, pid(0, 0)))),
        [ok(1, Answer::Registered { version: 1 })]
    );
    let mut out = Vec::new();
    assert_eq!(p.drop_node(client(), &mut out), Ok(0));
    pump(&mut p, &mut s, out);
    // With the client's window gone (entry 6), the same id is a new request (entry 7).
    assert_eq!(
        exec(&mut p, &mut s, req(1, 1, reg(0, pid(0, 0)))),
        [ok(1, Answer::Registered { version: 7 })]
    );
    assert_eq!(s.sessions(), p.sessions());
}

#[test]
fn drop_pid_removes_only_that_process() {
    let mut p = primary();
    for k in 0..6 {
        send(&mut p, req(k + 1, 1, reg(k, pid(1, k % 3))));
    }
    let mut out = Vec::new();
    assert_eq!(p.drop_pid(pid(1, 0), &mut out), Ok(2));
    assert_eq!(p.drop_pid(pid(9, 0), &mut out), Ok(0));
    assert!(out.is_empty());
    assert_eq!(p.len(), 4);
    assert!(p.sessions().iter().all(|(_, x)| x.pid.serial != 0));
    let (_, mut standby) = pair();
    assert_eq!(
        standby.drop_pid(pid(1, 1), &mut out),
        Err(SessionError::NotPrimary { epoch: 1 })
    );
}

#[test]
fn detaching_the_standby_releases_held_outputs() {
    let (mut p, _s) = pair();
    let out = send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    assert!(matches!(out[..], [Output::Replicate { .. }]));
    let mut released = Vec::new();
    p.detach_standby(&mut released);
    assert_eq!(released, [ok(1, Answer::Registered { version: 1 })]);
    assert_eq!(
        send(&mut p, req(2, 1, lookup(5))),
        [ok(2, found(pid(1, 1), 1))]
    );
}

#[test]
fn a_new_standby_commits_held_entries_by_acknowledging_its_snapshot() {
    let (mut p, _old) = pair();
    send(&mut p, req(1, 1, reg(5, pid(1, 1))));
    let snapshot = p.attach_standby(node(3)).expect("primary");
    let mut out = Vec::new();
    let fresh = Shard::standby(snapshot, node(1), ShardConfig::default(), &mut out);
    assert_eq!(fresh.sessions(), p.sessions());
    let Some(Output::Ack { msg, .. }) = out.pop() else {
        panic!("ack expected")
    };
    let mut released = Vec::new();
    p.handle_replica_ack(node(3), msg, &mut released);
    assert_eq!(released, [ok(1, Answer::Registered { version: 1 })]);
}

#[test]
fn heap_bytes_grows_with_sessions_and_shrinks_with_metadata_removal() {
    let mut p = primary();
    let empty = p.heap_bytes();
    for k in 0..1000 {
        send(&mut p, req(k + 1, 1, reg(k, pid(1, k))));
    }
    let full = p.heap_bytes();
    assert!(full > empty + 1000 * 32, "{empty} -> {full}");
}

/// Every write's reply waits in the held queue: its entries stay well under an `Output`'s size.
#[test]
fn held_entries_are_smaller_than_outputs() {
    assert!(size_of::<(Seq, super::Held)>() <= 88);
    assert!(size_of::<(Seq, super::Held)>() < size_of::<(Seq, Output)>());
}
