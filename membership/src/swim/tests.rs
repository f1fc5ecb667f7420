use super::*;
use crate::{loopback_addr, loopback_index};
use proptest::prelude::*;

const CLUSTER: u32 = 0xC0FFEE;

fn id(i: u32) -> NodeId {
    NodeId::new(loopback_addr(i, 7946), 1)
}

fn node(i: u32) -> Swim {
    Swim::new(id(i), CLUSTER, Profile::Test, 16, u64::from(i))
}

/// Delivers every send instantly (timers are dropped) until quiet; returns events per node.
fn pump(nodes: &mut [Swim], mut queue: Vec<(usize, Output<SwimTimer>)>) -> Vec<Vec<MemberEvent>> {
    let mut events = vec![Vec::new(); nodes.len()];
    let mut steps = 0;
    while let Some((src, o)) = queue.pop() {
        steps += 1;
        assert!(steps < 100_000, "did not quiesce");
        match o {
            Output::Send {
                to,
                channel,
                payload,
            } => {
                let dst = loopback_index(to).expect("sim addr") as usize;
                let mut out = Vec::new();
                let from = nodes[src].id().addr();
                let r = match channel {
                    Channel::Datagram => {
                        nodes[dst].handle_datagram(Time::ZERO, from, &payload, &mut out)
                    }
                    Channel::Stream => {
                        nodes[dst].handle_stream(Time::ZERO, from, &payload, &mut out)
                    }
                };
                r.expect("valid traffic is accepted");
                queue.extend(out.into_iter().map(|o| (dst, o)));
            }
            Output::Event(e) => events[src].push(e),
            _ => {}
        }
    }
    events
}

#[test]
fn start_announces_pulls_from_the_seed_and_arms_anti_entropy() {
    let mut a = node(1);
    let mut out = Vec::new();
    a.start(Time::ZERO, &[loopback_addr(0, 7946)], &mut out);
    assert_eq!(out.len(), 3, "{out:?}");
    assert!(
        matches!(&out[0], Output::Send { to, channel: Channel::Datagram, .. } if *to == loopback_addr(0, 7946))
    );
    let Output::Send {
        channel: Channel::Stream,
        payload,
        ..
    } = &out[1]
    else {
        panic!("{:?}", out[1])
    };
    let (_, p) = wire::open(payload, CLUSTER, wire::MAX_FRAME_PAYLOAD).expect("envelope");
    assert_eq!(
        SyncMsg::decode(p),
        Ok(SyncMsg::Push {
            from: id(1),
            live: 1,
            want: ALL_BUCKETS,
            members: vec![Member::alive(id(1))]
        })
    );
    assert!(matches!(
        out[2],
        Output::SetTimer {
            timer: SwimTimer::AntiEntropy,
            ..
        }
    ));
}

#[test]
fn a_joiner_learns_the_whole_view_of_its_seed_in_one_pull() {
    let mut nodes: Vec<Swim> = (0..6).map(node).collect();
    let all: Vec<NodeId> = (0..5).map(id).collect();
    for n in nodes.iter_mut().take(5) {
        n.preseed(Time::ZERO, &all, &mut Vec::new());
    }
    let mut out = Vec::new();
    nodes[5].start(Time::ZERO, &[loopback_addr(0, 7946)], &mut out);
    let events = pump(&mut nodes, out.into_iter().map(|o| (5, o)).collect());
    let mut ups: Vec<NodeId> = events[5]
        .iter()
        .filter_map(|e| {
            if let MemberEvent::Up(x) = e {
                Some(*x)
            } else {
                None
            }
        })
        .collect();
    ups.sort();
    assert_eq!(ups, all);
    assert_eq!(nodes[5].num_members(), 5);
    assert_eq!(nodes[0].num_members(), 5, "the seed learned the joiner");
}

#[test]
fn equal_digests_end_the_round_with_no_reply() {
    let mut nodes: Vec<Swim> = (0..3).map(node).collect();
    let all: Vec<NodeId> = (0..3).map(id).collect();
    for n in &mut nodes {
        n.preseed(Time::ZERO, &all, &mut Vec::new());
    }
    // Digests differ between nodes only by who is "self": compare through the wire instead.
    let (count, hash) = nodes[0].digest().summary();
    let msg = SyncMsg::Digest {
        from: id(0),
        count,
        hash,
    };
    let mut out = Vec::new();
    nodes[0]
        .handle_datagram(Time::ZERO, id(1).addr(), &msg.encode(CLUSTER), &mut out)
        .expect("ok");
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn a_differing_digest_repairs_the_missing_member_both_ways() {
    let mut nodes: Vec<Swim> = (0..4).map(node).collect();
    // Node 0 knows 1 and 2; node 1 knows 0 and 3.
    nodes[0].preseed(Time::ZERO, &[id(1), id(2)], &mut Vec::new());
    nodes[1].preseed(Time::ZERO, &[id(0), id(3)], &mut Vec::new());
    let (count, hash) = nodes[0].digest().summary();
    let msg = SyncMsg::Digest {
        from: id(0),
        count,
        hash,
    };
    let mut out = Vec::new();
    nodes[1]
        .handle_datagram(Time::ZERO, id(0).addr(), &msg.encode(CLUSTER), &mut out)
        .expect("ok");
    assert_eq!(out.len(), 1, "buckets reply");
    let events = pump(&mut nodes, out.into_iter().map(|o| (1, o)).collect());
    assert!(
        events[0].contains(&MemberEvent::Up(id(3))),
        "{:?}",
        events[0]
    );
    assert!(
        events[1].contains(&MemberEvent::Up(id(2))),
        "{:?}",
        events[1]
    );
    let mut m0 = nodes[0].members();
    m0.sort();
    assert_eq!(m0, vec![id(1), id(2), id(3)]);
}

#[test]
fn a_renamed_active_member_is_reported_down_then_up() {
    let mut a = node(0);
    a.preseed(Time::ZERO, &[id(1)], &mut Vec::new());
    let newer = id(1).next_generation();
    let push = SyncMsg::Push {
        from: newer,
        live: 2,
        want: 0,
        members: vec![Member::alive(newer)],
    };
    let mut out = Vec::new();
    a.handle_stream(Time::ZERO, newer.addr(), &push.encode(CLUSTER), &mut out)
        .expect("ok");
    let events: Vec<_> = out
        .iter()
        .filter_map(|o| {
            if let Output::Event(e) = o {
                Some(*e)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        events,
        vec![MemberEvent::Down(id(1)), MemberEvent::Up(newer)]
    );
    assert_eq!(a.members(), vec![newer]);
}

#[test]
fn a_packet_of_another_cluster_is_refused_without_output() {
    let mut a = node(0);
    let mut out = Vec::new();
    let msg = SyncMsg::Digest {
        from: id(1),
        count: 1,
        hash: 1,
    };
    let err = a.handle_datagram(Time::ZERO, id(1).addr(), &msg.encode(CLUSTER + 1), &mut out);
    assert!(matches!(
        err,
        Err(Error::Wire(wire::WireError::WrongCluster { .. }))
    ));
    assert!(out.is_empty());
}

proptest! {
    #[test]
    fn prop_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), kind in 0u8..4) {
        let mut a = node(0);
        a.preseed(Time::ZERO, &[id(1), id(2)], &mut Vec::new());
        let mut out = Vec::new();
        let _ = a.handle_datagram(Time::ZERO, id(1).addr(), &bytes, &mut out);
        let mut framed = wire::begin(Kind::Swim, CLUSTER, bytes.len());
        framed[3] = kind;
        framed.extend_from_slice(&bytes);
        let _ = a.handle_datagram(Time::ZERO, id(1).addr(), &framed, &mut out);
        let _ = a.handle_stream(Time::ZERO, id(1).addr(), &framed, &mut out);
    }
}

#[test]
fn a_node_alone_reannounces_to_its_seeds_each_anti_entropy_round() {
    let mut a = node(1);
    let seed = loopback_addr(0, 7946);
    a.start(Time::ZERO, &[seed], &mut Vec::new());
    // Nobody answered: the next round announces and pulls again instead of gossiping.
    let mut out = Vec::new();
    a.handle_timer(Time::from_secs(1), SwimTimer::AntiEntropy, &mut out);
    let sends: Vec<(SocketAddrV4, Channel)> = out
        .iter()
        .filter_map(|o| {
            if let Output::Send { to, channel, .. } = o {
                Some((*to, *channel))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        sends,
        vec![(seed, Channel::Datagram), (seed, Channel::Stream)]
    );
    assert!(out.iter().any(|o| matches!(
        o,
        Output::SetTimer {
            timer: SwimTimer::AntiEntropy,
            ..
        }
    )));
}

#[test]
fn a_member_declared_down_renews_its_generation() {
    let mut a = node(0);
    a.preseed(Time::ZERO, &[id(1)], &mut Vec::new());
    // A peer says our identity is Down: foca renews, the digest follows, the driver is told.
    let push = SyncMsg::Push {
        from: id(1),
        live: 2,
        want: 0,
        members: vec![Member::new(id(0), 0, State::Down)],
    };
    let mut out = Vec::new();
    a.handle_stream(Time::ZERO, id(1).addr(), &push.encode(CLUSTER), &mut out)
        .expect("ok");
    let renewed = id(0).next_generation();
    assert!(out.contains(&Output::Renewed(renewed)), "{out:?}");
    assert_eq!(a.id(), renewed);
    let mut fresh = Digest::default();
    fresh.add(&renewed);
    fresh.add(&id(1));
    assert_eq!(a.digest(), &fresh);
}

#[test]
fn a_member_that_says_farewell_is_reported_left_then_down() {
    let mut nodes: Vec<Swim> = (0..2).map(node).collect();
    let all: Vec<NodeId> = (0..2).map(id).collect();
    for n in nodes.iter_mut() {
        n.preseed(Time::ZERO, &all, &mut Vec::new());
    }
    let mut out = Vec::new();
    nodes[1].leave(Time::ZERO, &mut out);
    let mut farewell = Vec::new();
    for o in out {
        if let Output::Send { payload, .. } = o {
            nodes[0]
                .handle_datagram(Time::ZERO, id(1).addr(), &payload, &mut farewell)
                .expect("valid");
        }
    }
    let seen: Vec<_> = farewell
        .into_iter()
        .filter(|o| matches!(o, Output::Left(_) | Output::Event(_)))
        .collect();
    assert_eq!(
        seen,
        vec![Output::Left(id(1)), Output::Event(MemberEvent::Down(id(1)))]
    );
}

/// Three converged nodes; node 0 is the one whose links we drive.
fn trio() -> Vec<Swim> {
    let all: Vec<NodeId> = (0..3).map(id).collect();
    let mut nodes: Vec<Swim> = (0..3).map(node).collect();
    for n in nodes.iter_mut() {
        n.preseed(Time::ZERO, &all, &mut Vec::new());
    }
    nodes
}

fn link(n: &mut Swim, event: LinkEvent) -> Vec<Output<SwimTimer>> {
    let mut out = Vec::new();
    n.handle_link(Time::ZERO, event, &mut out);
    out
}

/// A reset of the link to member `peer` makes `n` redial it (a check starts).
fn reset_redials(n: &mut Swim, peer: SocketAddrV4) {
    assert_eq!(
        link(n, LinkEvent::Reset(peer)),
        vec![Output::Connect { to: peer }]
    );
}

#[test]
fn a_reset_link_to_a_member_is_redialled_once() {
    let mut nodes = trio();
    let peer = id(1).addr();
    reset_redials(&mut nodes[0], peer);
    // A second reset while the check is pending dials nothing more.
    assert_eq!(link(&mut nodes[0], LinkEvent::Reset(peer)), vec![]);
    // A reset of a link to an address that is no member is none of our business.
    assert_eq!(
        link(&mut nodes[0], LinkEvent::Reset(loopback_addr(9, 7946))),
        vec![]
    );
}

#[test]
fn a_reset_link_whose_redial_succeeds_or_keeps_failing_declares_nothing() {
    let mut nodes = trio();
    let peer = id(1).addr();
    reset_redials(&mut nodes[0], peer);
    assert_eq!(link(&mut nodes[0], LinkEvent::Up(peer)), vec![]);
    // Failed dials (no refusal) are repeated up to CHECK_DIALS dials, then probing decides.
    reset_redials(&mut nodes[0], peer);
    for _ in 1..CHECK_DIALS {
        assert_eq!(
            link(&mut nodes[0], LinkEvent::ConnectFailed(peer)),
            vec![Output::Connect { to: peer }]
        );
    }
    assert_eq!(link(&mut nodes[0], LinkEvent::ConnectFailed(peer)), vec![]);
    assert!(nodes[0].members().contains(&id(1)));
    // A failed dial that was no check (an on-demand send) dials nothing.
    assert_eq!(link(&mut nodes[0], LinkEvent::ConnectFailed(peer)), vec![]);
    // A link closed on purpose is not even checked.
    assert_eq!(link(&mut nodes[0], LinkEvent::Down(peer)), vec![]);
    assert_eq!(nodes[0].num_members(), 2);
}

#[test]
fn a_refused_redial_declares_the_member_down_and_gossips_it() {
    let mut nodes = trio();
    let peer = id(1).addr();
    link(&mut nodes[0], LinkEvent::Reset(peer));
    // The first dial raced the dying process's teardown (reset, not refused); the next is
    // refused.
    assert_eq!(
        link(&mut nodes[0], LinkEvent::ConnectFailed(peer)),
        vec![Output::Connect { to: peer }]
    );
    let out = link(&mut nodes[0], LinkEvent::Refused(peer));
    assert!(
        out.contains(&Output::Event(MemberEvent::Down(id(1)))),
        "{out:?}"
    );
    assert_eq!(nodes[0].members(), vec![id(2)]);
    let mut fresh = Digest::default();
    fresh.add(&id(0));
    fresh.add(&id(2));
    assert_eq!(nodes[0].digest(), &fresh);
    // The verdict leaves at once (foca gossip), and the third node takes it from those packets.
    let sends: Vec<_> = out
        .into_iter()
        .filter(|o| matches!(o, Output::Send { .. }))
        .map(|o| (0, o))
        .collect();
    assert!(!sends.is_empty());
    let events = pump(&mut nodes, sends);
    assert!(
        events[2].contains(&MemberEvent::Down(id(1))),
        "{:?}",
        events[2]
    );
    // Down is final for the identity: a second refusal changes nothing.
    assert_eq!(link(&mut nodes[0], LinkEvent::Refused(peer)), vec![]);
}

#[test]
fn a_refused_on_demand_dial_is_evidence_too_but_not_after_leaving() {
    let mut nodes = trio();
    let out = link(&mut nodes[0], LinkEvent::Refused(id(2).addr()));
    assert!(out.contains(&Output::Event(MemberEvent::Down(id(2)))));
    nodes[0].leave(Time::ZERO, &mut Vec::new());
    assert_eq!(link(&mut nodes[0], LinkEvent::Reset(id(1).addr())), vec![]);
    assert_eq!(
        link(&mut nodes[0], LinkEvent::Refused(id(1).addr())),
        vec![]
    );
}

#[test]
fn a_live_node_wrongly_refused_renews_when_the_verdict_reaches_it() {
    let mut nodes = trio();
    link(&mut nodes[0], LinkEvent::Refused(id(1).addr()));
    // The gossip went to active members only; node 1 hears the verdict by anti-entropy.
    let push = SyncMsg::Push {
        from: id(0),
        live: nodes[0].live_count(),
        want: 0,
        members: nodes[0].members_in(ALL_BUCKETS),
    };
    let mut out = Vec::new();
    nodes[1]
        .handle_stream(Time::ZERO, id(0).addr(), &push.encode(CLUSTER), &mut out)
        .expect("ok");
    let renewed = id(1).next_generation();
    assert!(out.contains(&Output::Renewed(renewed)), "{out:?}");
    assert_eq!(nodes[1].id(), renewed);
}

/// The `SuspectToDown` timer `out` arms, if any.
fn suspicion_timer(out: &[Output<SwimTimer>]) -> Option<SwimTimer> {
    out.iter().find_map(|o| match o {
        Output::SetTimer {
            timer: t @ SwimTimer::SuspectToDown { .. },
            ..
        } => Some(t.clone()),
        _ => None,
    })
}

/// The view a push carries counts members known alive: a suspected one may be across a cut
/// not yet detected, and counting it lets a cut-off node's view tie the majority's at a heal.
#[test]
fn a_suspected_member_does_not_count_in_the_view() {
    let mut nodes = trio();
    assert_eq!(nodes[0].live_count(), 3);
    nodes[0].suspect(Time::ZERO, id(1), &mut Vec::new());
    assert!(nodes[0].members().contains(&id(1)));
    assert_eq!(nodes[0].live_count(), 2);
}

#[test]
fn an_outside_suspicion_declares_the_member_down_after_the_suspicion_time() {
    let mut nodes = trio();
    let mut out = Vec::new();
    nodes[0].suspect(Time::ZERO, id(1), &mut out);
    let timer = suspicion_timer(&out).expect("a suspicion deadline");
    assert!(out.iter().any(|o| matches!(
        o,
        Output::SetTimer { after, timer: SwimTimer::SuspectToDown { .. } }
            if *after == Profile::Test.foca_config(16).suspect_to_down_after
    )));
    assert!(
        out.iter().any(|o| matches!(o, Output::Send { .. })),
        "gossiped at once: {out:?}"
    );
    assert_eq!(nodes[0].suspected(), 1);
    // Still a member while suspected; a second suspicion keeps the first deadline.
    assert!(nodes[0].members().contains(&id(1)));
    let mut again = Vec::new();
    nodes[0].suspect(Time::ZERO, id(1), &mut again);
    assert_eq!(suspicion_timer(&again), None);
    // Neither this node nor a stranger is ever suspected.
    nodes[0].suspect(Time::ZERO, id(0), &mut again);
    nodes[0].suspect(Time::ZERO, id(9), &mut again);
    assert_eq!(again, vec![]);
    let mut out = Vec::new();
    nodes[0].handle_timer(Time::ZERO, timer, &mut out);
    assert!(
        out.contains(&Output::Event(MemberEvent::Down(id(1)))),
        "{out:?}"
    );
    assert_eq!(nodes[0].members(), vec![id(2)]);
}

#[test]
fn a_live_member_refutes_an_outside_suspicion_and_stays_up() {
    let mut nodes = trio();
    let mut out = Vec::new();
    nodes[0].suspect(Time::ZERO, id(1), &mut out);
    let timer = suspicion_timer(&out).expect("a suspicion deadline");
    let sends: Vec<_> = out
        .into_iter()
        .filter(|o| matches!(o, Output::Send { .. }))
        .map(|o| (0, o))
        .collect();
    // Node 1 hears it is suspected and refutes with a higher incarnation, which its next
    // gossip carries back.
    pump(&mut nodes, sends);
    let mut refute = Vec::new();
    nodes[1]
        .with_foca(&mut refute, |f, rt| f.gossip(rt))
        .expect("gossip");
    let events = pump(&mut nodes, refute.into_iter().map(|o| (1, o)).collect());
    assert!(!events[0].contains(&MemberEvent::Down(id(1))));
    let mut out = Vec::new();
    nodes[0].handle_timer(Time::ZERO, timer, &mut out);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Event(_))),
        "a refuted suspicion declares nothing: {out:?}"
    );
    assert!(nodes[0].members().contains(&id(1)));
}

/// The foca packets among `out`: (destination, sender incarnation, message).
fn swim_sent(out: &[Output<SwimTimer>]) -> Vec<(SocketAddrV4, foca::Incarnation, Message<NodeId>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, payload, .. } => {
                let (kind, p) = wire::open(payload, CLUSTER, wire::MAX_DATAGRAM_PAYLOAD).ok()?;
                let header: Header<NodeId> = PostcardCodec.decode_header(p).ok()?;
                (kind == Kind::Swim).then_some((*to, header.src_incarnation, header.message))
            }
            _ => None,
        })
        .collect()
}

/// Whoever suspects a member tells it directly: piggybacked alone, the suspicion may reach
/// everyone but its subject, the only node that can refute it.
#[test]
fn a_suspicion_is_sent_to_its_suspect() {
    let mut nodes = trio();
    let mut out = Vec::new();
    nodes[0].suspect(Time::ZERO, id(1), &mut out);
    let told: Vec<_> = sync_sent(&out)
        .into_iter()
        .filter(|(to, _)| *to == id(1).addr())
        .collect();
    assert_eq!(
        told,
        vec![(
            id(1).addr(),
            SyncMsg::Push {
                from: id(0),
                live: 2,
                want: 0,
                members: vec![Member::new(id(1), 0, State::Suspect)],
            }
        )],
        "{out:?}"
    );
}

/// The suspect refutes (foca bumps its incarnation) and announces itself to the suspecter,
/// whose foca takes the new incarnation from the header: the suspicion ends there, before
/// its deadline, whatever the gossip does. A suspicion of an older incarnation, which foca
/// ignores, is answered the same way, with the current incarnation.
#[test]
fn a_suspect_told_directly_refutes_and_announces_itself_to_the_suspecter() {
    let mut nodes = trio();
    let mut out = Vec::new();
    nodes[0].suspect(Time::ZERO, id(1), &mut out);
    let timer = suspicion_timer(&out).expect("a suspicion deadline");
    for (round, suspected) in [(0, 0), (1, 0)] {
        let out = push(
            &mut nodes[1],
            id(0),
            2,
            vec![Member::new(id(1), suspected, State::Suspect)],
        );
        assert!(!renewed(&out), "round {round}: {out:?}");
        let announces: Vec<_> = swim_sent(&out)
            .into_iter()
            .filter(|(to, _, m)| *to == id(0).addr() && *m == Message::Announce)
            .collect();
        assert_eq!(
            announces,
            vec![(id(0).addr(), 1, Message::Announce)],
            "round {round}: {out:?}"
        );
        if round == 0 {
            // Only the announce reaches the suspecter.
            let to_zero: Vec<_> = out
                .into_iter()
                .filter(|o| matches!(o, Output::Send { to, .. } if *to == id(0).addr()))
                .map(|o| (1, o))
                .collect();
            pump(&mut nodes, to_zero);
        }
    }
    let state = nodes[0]
        .foca
        .iter_membership_state()
        .find(|m| *m.id() == id(1))
        .map(|m| (m.state(), m.incarnation()));
    assert_eq!(state, Some((State::Alive, 1)));
    let mut out = Vec::new();
    nodes[0].handle_timer(Time::ZERO, timer, &mut out);
    assert!(
        !out.iter().any(|o| matches!(o, Output::Event(_))),
        "a refuted suspicion declares nothing: {out:?}"
    );
}

/// Node 0 of a converged four-node view `{0, 1, 2, 3}` that holds node 3 Down (learnt from
/// node 1).
fn holding_three_down() -> Swim {
    let all: Vec<NodeId> = (0..4).map(id).collect();
    let mut a = node(0);
    a.preseed(Time::ZERO, &all, &mut Vec::new());
    let out = push(&mut a, id(1), 4, vec![Member::new(id(3), 0, State::Down)]);
    assert!(out.contains(&Output::Event(MemberEvent::Down(id(3)))));
    a
}

/// Delivers a `Push { from, live, members }` to `n`; returns its outputs.
fn push(
    n: &mut Swim,
    from: NodeId,
    live: u32,
    members: Vec<Member<NodeId>>,
) -> Vec<Output<SwimTimer>> {
    let msg = SyncMsg::Push {
        from,
        live,
        want: 0,
        members,
    };
    let mut out = Vec::new();
    n.handle_stream(Time::ZERO, from.addr(), &msg.encode(CLUSTER), &mut out)
        .expect("ok");
    out
}

fn renewed(out: &[Output<SwimTimer>]) -> bool {
    out.iter().any(|o| matches!(o, Output::Renewed(_)))
}

#[test]
fn down_records_from_a_member_held_down_with_a_smaller_view_are_ignored() {
    let mut a = holding_three_down();
    // Node 3 was cut off and holds everyone Down: its view is itself alone.
    let verdicts = vec![
        Member::new(id(0), 0, State::Down),
        Member::new(id(1), 0, State::Down),
    ];
    let out = push(&mut a, id(3), 1, verdicts.clone());
    assert!(!renewed(&out), "{out:?}");
    assert!(
        !out.iter().any(|o| matches!(o, Output::Event(_))),
        "{out:?}"
    );
    assert_eq!(a.num_members(), 2);
    // From a view as large as ours the same verdicts are believed (two equal halves).
    let ours = a.live_count();
    let out = push(&mut a, id(3), ours, verdicts);
    assert!(renewed(&out), "{out:?}");
    assert_eq!(a.id(), id(0).next_generation());
}

/// A cut healed before node 3 had declared every node across it Down: its view still counts
/// one of them, so it ties ours, and its verdict about node 1 dates from the cut. Alone, that
/// verdict downs nobody here; with the verdict about us, we renew and adopt the whole view.
#[test]
fn third_party_down_records_from_a_member_held_down_come_only_with_ours() {
    let mut a = holding_three_down();
    let ours = a.live_count();
    let out = push(
        &mut a,
        id(3),
        ours,
        vec![Member::new(id(1), 0, State::Down)],
    );
    assert!(!renewed(&out), "{out:?}");
    assert!(
        !out.iter().any(|o| matches!(o, Output::Event(_))),
        "{out:?}"
    );
    assert_eq!(a.num_members(), 2);
    let out = push(
        &mut a,
        id(3),
        ours,
        vec![
            Member::new(id(1), 0, State::Down),
            Member::new(id(0), 0, State::Down),
        ],
    );
    assert!(renewed(&out), "{out:?}");
}

#[test]
fn a_member_active_here_is_believed_whatever_its_view() {
    let mut a = holding_three_down();
    let out = push(&mut a, id(2), 1, vec![Member::new(id(0), 0, State::Down)]);
    assert!(renewed(&out), "{out:?}");
}

/// foca's "you are Down" message from `from` to node 0, enveloped.
fn turn_undead(from: NodeId) -> Vec<u8> {
    let header = Header {
        src: from,
        src_incarnation: 0,
        dst: id(0),
        message: Message::TurnUndead,
    };
    let mut bytes = Vec::new();
    PostcardCodec
        .encode_header(&header, &mut bytes)
        .expect("encodes");
    wire::seal(Kind::Swim, CLUSTER, &bytes)
}

/// The anti-entropy messages among `out`, decoded.
fn sync_sent(out: &[Output<SwimTimer>]) -> Vec<(SocketAddrV4, SyncMsg)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send { to, payload, .. } => {
                let (kind, p) = wire::open(payload, CLUSTER, wire::MAX_FRAME_PAYLOAD).ok()?;
                (kind == Kind::AntiEntropy).then(|| (*to, SyncMsg::decode(p).expect("valid")))
            }
            _ => None,
        })
        .collect()
}

/// A `TurnUndead` never renews at once, whoever sends it (foca would, with no view to adopt):
/// it starts an anti-entropy exchange with its sender, where the verdict is weighed.
#[test]
fn turn_undead_starts_an_exchange_instead_of_renewing() {
    let mut a = holding_three_down();
    for from in [id(3), id(1)] {
        let mut out = Vec::new();
        a.handle_datagram(Time::ZERO, from.addr(), &turn_undead(from), &mut out)
            .expect("ok");
        assert!(!renewed(&out), "{out:?}");
        let sent = sync_sent(&out);
        assert!(
            matches!(sent.as_slice(), [(to, SyncMsg::Digest { .. })] if *to == from.addr()),
            "{out:?}"
        );
    }
    assert_eq!(a.id(), id(0));
}

#[test]
fn a_push_from_an_older_generation_of_a_member_is_overruled() {
    let mut a = holding_three_down();
    // Node 2 renewed; a push its old identity sent before that arrives late.
    let out = push(
        &mut a,
        id(1),
        4,
        vec![Member::alive(id(2).next_generation())],
    );
    assert!(out.contains(&Output::Event(MemberEvent::Up(id(2).next_generation()))));
    let out = push(&mut a, id(2), 1, vec![Member::new(id(0), 0, State::Down)]);
    assert!(!renewed(&out), "{out:?}");
}

/// Renewed by a push, a node adopts the pusher's view of the members they differed on.
#[test]
fn a_node_renewed_by_a_push_adopts_its_view() {
    let all: Vec<NodeId> = (0..4).map(id).collect();
    let mut a = node(0);
    a.preseed(Time::ZERO, &all, &mut Vec::new());
    // Node 0 was cut off with node 3 and held nodes 1 and 2 Down.
    for x in [1, 2] {
        push(&mut a, id(3), 4, vec![Member::new(id(x), 0, State::Down)]);
    }
    assert_eq!(a.members(), vec![id(3)]);
    // Node 1 saw more: nodes 0 and 3 are Down, node 2 alive.
    let out = push(
        &mut a,
        id(1),
        3,
        vec![
            Member::new(id(0), 0, State::Down),
            Member::new(id(3), 0, State::Down),
            Member::alive(id(1)),
            Member::alive(id(2)),
        ],
    );
    assert!(renewed(&out), "{out:?}");
    let mut members = a.members();
    members.sort();
    assert_eq!(members, vec![id(1), id(2)]);
    // Node 3 stays Down in the fresh view: its packets and stale verdicts stay out.
    let pushed = a.members_in(ALL_BUCKETS);
    assert!(
        pushed
            .iter()
            .any(|m| *m.id() == id(3) && m.state() == State::Down),
        "{pushed:?}"
    );
    assert!(
        pushed
            .iter()
            .all(|m| m.state() != State::Down || *m.id() == id(3)),
        "{pushed:?}"
    );
}

#[test]
fn a_renewed_node_keeps_its_active_members_and_drops_its_down_records() {
    let mut a = holding_three_down();
    let out = push(&mut a, id(1), 4, vec![Member::new(id(0), 0, State::Down)]);
    assert!(renewed(&out));
    let new = id(0).next_generation();
    // No event about the members it keeps; the old identity's Down records are gone, so its
    // pushes carry no verdict.
    assert!(
        !out.iter().any(|o| matches!(o, Output::Event(_))),
        "{out:?}"
    );
    let mut members = a.members();
    members.sort();
    assert_eq!(members, vec![id(1), id(2)]);
    let pushed = a.members_in(ALL_BUCKETS);
    assert!(
        pushed.iter().all(|m| m.state() != State::Down),
        "{pushed:?}"
    );
    let mut digest = Digest::default();
    for x in [new, id(1), id(2)] {
        digest.add(&x);
    }
    assert_eq!(a.digest(), &digest);
    // Node 3, alive after all, comes back under the same identity.
    let out = push(&mut a, id(1), 4, vec![Member::alive(id(3))]);
    assert!(
        out.contains(&Output::Event(MemberEvent::Up(id(3)))),
        "{out:?}"
    );
    // Timers of the old foca are dropped: only the fresh one's run.
    let mut out = Vec::new();
    let stale = foca::Timer::ProbeRandomMember(Default::default());
    a.handle_timer(Time::ZERO, SwimTimer::Foca(0, stale), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

#[test]
fn leaving_does_not_renew() {
    let mut a = holding_three_down();
    let mut out = Vec::new();
    a.leave(Time::ZERO, &mut out);
    assert!(!renewed(&out), "{out:?}");
    assert_eq!(a.id(), id(0));
}
