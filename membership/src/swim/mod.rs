//! SWIM membership: `foca` driven sans-IO, plus meshreg's anti-entropy.
//!
//! foca gives failure detection (probe, indirect probe, suspicion) and infection-style
//! dissemination. Alone it leaves a long convergence tail at scale (a Feed carries ~200 members;
//! foca's periodic announce reaches one member every 30 s), so [`Swim`] adds:
//!
//! - a **full pull** from a seed on join (`Push { want: ALL }`, see [`sync`]);
//! - a periodic **bucketed digest exchange** with one random peer, which ships only the members of
//!   the buckets that differ ([`digest`]);
//! - every few rounds the digest goes to a member believed **Down**, so the sides of a healed
//!   partition find each other quickly;
//! - **re-announce** to the seeds while the node finds itself alone.
//!
//! The digest is maintained incrementally from foca's notifications, so a round in steady state
//! costs O(1) and one small datagram; foca's member table is never copied.
//!
//! **Dead-process evidence from links.** SWIM needs no links, but the node's stream links (opened
//! on demand by anti-entropy and the registries) say more than probes can when a peer's process
//! dies while its host lives, which is what Erlang distribution acts on:
//! - a link to an active member that breaks without a goodbye ([`LinkEvent::Reset`]) makes the
//!   core redial it ([`Output::Connect`]): the *check*. A dial that fails otherwise is repeated,
//!   up to [`CHECK_DIALS`] dials: a dial racing the kernel's teardown of a killed process can
//!   reach its listen socket just before it closes and be reset instead of refused;
//! - a dial refused ([`LinkEvent::Refused`]: the host answered, nothing listens on the port),
//!   whether it was a check or a dial of an on-demand send, declares the active member at that
//!   address Down at once: foca applies the verdict and gossips it (to
//!   `num_indirect_probes` members at once, then piggybacked like any other update).
//!
//! Anything else leaves detection to probing: a redial that succeeds (a live peer whose link
//! broke), fails or times out [`CHECK_DIALS`] times (a partition, a paused process, a lost host:
//! each dial waits out the driver's connect timeout), and a link closed on
//! purpose ([`LinkEvent::Down`]: idle close, shutdown; a leaver says so through foca anyway).
//! A refusal names an address, not an identity: the verdict is about the member we know at that
//! address. A process restarted there listens again (no refusal) and joins as a newer
//! generation; a live node wrongly declared Down (e.g. a firewall that rejects connections)
//! learns it like any other Down verdict and renews its identity (reported as
//! [`Output::Renewed`]), as after a false suspicion.
//!
//! **Verdicts of a cut-off node stay with it.** During a cut each side declares the other Down,
//! and Down is final per identity, so whichever verdicts cross the healed cut renew their
//! subjects. Only the side that saw less of the cluster should renew:
//! - a `Push` carries the size of its sender's live set (members known alive, not suspected);
//!   the Down records of a sender we hold Down (or whose newer generation we know) apply only
//!   if that size is at least ours, so the majority ignores the minority's verdicts and the
//!   minority takes the majority's. Equal sizes (two halves, two nodes) trust each other: both
//!   renew, and any two nodes holding each other Down resolve. Their verdicts about third parties apply only along with the one
//!   about us (a node whose cut healed before it had declared every peer across it Down can
//!   tie our view while its verdicts about our side are stale);
//! - foca's `TurnUndead` ("you are Down"), which foca acts on from anyone, starts such an
//!   exchange with its sender instead;
//! - the node renews itself (`NodeId` never renews inside foca) with a fresh foca: no Down
//!   records, no update backlog, the active members kept, and the view of the push that
//!   renewed it adopted (its Alive records bring back the members it held Down, under the
//!   same identities; its Down records keep the members cut off with it, which renew later,
//!   from teaching it their verdicts again).
//!
//! **A suspicion reaches its suspect.** Only the suspect can refute a suspicion, and foca
//! only piggybacks it, a few times (see `Profile::foca_config`), to random members: in a
//! cluster of tens of nodes about one suspicion in fifty never reached its (live) suspect,
//! which was then declared Down. So whoever raises a suspicion (foca after a failed probe, or
//! [`MembershipCore::suspect`]) also sends the suspect a one-record `Push`; the suspect hands
//! the record to foca, which refutes it (a higher incarnation, gossiped), and announces itself
//! to the suspecter, whose foca takes the new incarnation from the packet's header. A
//! suspicion of an incarnation older than the suspect's current one, which foca ignores, is
//! answered the same way.
//!
//! Left: a Down record about us piggybacked in a foca packet from a member we hold active
//! renews us without a view to adopt (rare: whoever holds us Down no longer sends to us).

pub mod digest;
pub mod sync;

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::time::Duration;

use foca::{
    Codec, Foca, Header, Member, Message, NoCustomBroadcast, OwnedNotification, PostcardCodec,
    State,
};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};

use crate::wire::{self, Kind};
use crate::{
    Channel, Error, LinkEvent, MemberEvent, MembershipCore, NodeId, Output, Profile, Time,
};
use digest::{ALL_BUCKETS, Digest, in_mask};
use sync::SyncMsg;

/// Timers of the SWIM core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SwimTimer {
    /// A foca timer of view `.0`, handed back to foca; timers of a view replaced by a renewal
    /// are dropped (the fresh foca's tokens could collide with them).
    Foca(u32, foca::Timer<NodeId>),
    /// One anti-entropy round (and the alone check).
    AntiEntropy,
    /// The suspicion this node raised on outside evidence ([`MembershipCore::suspect`]) ran
    /// its course: Down unless `id` refuted it (a higher incarnation) or is gone already.
    SuspectToDown {
        /// The suspected member.
        id: NodeId,
        /// The incarnation suspected.
        incarnation: foca::Incarnation,
    },
}

/// Dials of one check (module docs) before it gives up and leaves the member to probing.
pub const CHECK_DIALS: u8 = 3;

/// Diffs at most this large are re-gossiped after an anti-entropy merge (news worth spreading,
/// e.g. after a partition heals); larger ones (a join's full pull) are not, to avoid a storm.
const REBROADCAST_MAX: usize = 8;

type FocaCore = Foca<NodeId, PostcardCodec, SmallRng, NoCustomBroadcast>;

/// SWIM membership core. See the [module docs](self).
pub struct Swim {
    foca: FocaCore,
    /// Our identity as counted in `digest` (foca renews it on its own; see `flush_notes`).
    me: NodeId,
    cluster: u32,
    profile: Profile,
    /// The cluster size foca's configuration is derived from (kept to rebuild foca on renewal).
    cluster_size: u32,
    /// Renewals so far: the view foca timers belong to.
    view: u32,
    rng: SmallRng,
    seeds: Vec<SocketAddrV4>,
    digest: Digest,
    round: u32,
    left: bool,
    notes: Vec<OwnedNotification<NodeId>>,
    /// The sender of the SWIM packet being handled: a member reported Down by a packet of its
    /// own is saying farewell (foca's `leave_cluster`), not failing.
    receiving_from: Option<SocketAddrV4>,
    /// Addresses of active members whose link reset and whose redial has not answered yet, with
    /// the dials made so far (one entry per member at most; see the module docs).
    checking: HashMap<SocketAddrV4, u8>,
    /// foca's suspect-to-down time (foca does not hand its config back).
    suspicion: Duration,
    /// Suspicions raised on outside evidence.
    suspected: u64,
    /// The records of the push being merged when it declares us Down: the view of whoever
    /// renews us, which the fresh view adopts (see `renew`).
    renewer: Vec<Member<NodeId>>,
    /// Addresses our previous identities held Down that the renewed view does not know (see
    /// `renew`): targets of the anti-entropy rounds that go to members believed Down, like
    /// foca's own Down members. Dropped once foca knows the address again, or after
    /// `graves_left` more rounds (foca's `remove_down_after`).
    graves: Vec<SocketAddrV4>,
    /// Anti-entropy rounds before `graves` is forgotten.
    graves_left: u32,
}

/// Adapts foca's `Runtime` callbacks to [`Output`]s; notifications are kept for post-processing
/// (a `Rename` needs the notification that follows it).
struct Rt<'a> {
    cluster: u32,
    view: u32,
    out: &'a mut Vec<Output<SwimTimer>>,
    notes: &'a mut Vec<OwnedNotification<NodeId>>,
}

impl foca::Runtime<NodeId> for Rt<'_> {
    fn notify(&mut self, n: foca::Notification<'_, NodeId>) {
        self.notes.push(n.to_owned());
    }

    fn send_to(&mut self, to: NodeId, data: &[u8]) {
        self.out.push(Output::Send {
            to: to.addr(),
            channel: Channel::Datagram,
            payload: wire::seal(Kind::Swim, self.cluster, data),
        });
    }

    fn submit_after(&mut self, event: foca::Timer<NodeId>, after: Duration) {
        self.out.push(Output::SetTimer {
            after,
            timer: SwimTimer::Foca(self.view, event),
        });
    }
}

impl Swim {
    /// A SWIM core for `id` in cluster `cluster`, sized for about `cluster_size` nodes (foca
    /// derives retransmissions and suspicion time from it). `seed` drives all randomness.
    pub fn new(id: NodeId, cluster: u32, profile: Profile, cluster_size: u32, seed: u64) -> Self {
        let config = profile.foca_config(cluster_size);
        let suspicion = config.suspect_to_down_after;
        let foca = Foca::new(id, config, SmallRng::seed_from_u64(seed), PostcardCodec);
        // The digest covers the whole live set *including* this node, so two converged nodes
        // have equal digests.
        let mut digest = Digest::default();
        digest.add(&id);
        Self {
            me: id,
            foca,
            cluster,
            profile,
            cluster_size,
            view: 0,
            rng: SmallRng::seed_from_u64(seed ^ 0x5157_494D_5F41_45FF),
            seeds: Vec::new(),
            digest,
            round: 0,
            left: false,
            notes: Vec::new(),
            receiving_from: None,
            checking: HashMap::new(),
            suspicion,
            suspected: 0,
            renewer: Vec::new(),
            graves: Vec::new(),
            graves_left: 0,
        }
    }

    /// The active member at `addr`, if any.
    fn active_at(&self, addr: SocketAddrV4) -> Option<&Member<NodeId>> {
        self.foca.iter_members().find(|m| m.id().addr() == addr)
    }

    /// A link to `addr` broke without a goodbye: redial an active member there to learn
    /// whether its process still listens.
    fn check(&mut self, addr: SocketAddrV4, out: &mut Vec<Output<SwimTimer>>) {
        if self.active_at(addr).is_some() && !self.checking.contains_key(&addr) {
            self.checking.insert(addr, 1);
            out.push(Output::Connect { to: addr });
        }
    }

    /// A dial to `addr` failed without a refusal: dial again if a check of a member still
    /// active is under way and has dials left.
    fn check_failed(&mut self, addr: SocketAddrV4, out: &mut Vec<Output<SwimTimer>>) {
        let Some(dials) = self.checking.remove(&addr) else {
            return;
        };
        if dials < CHECK_DIALS && self.active_at(addr).is_some() {
            self.checking.insert(addr, dials + 1);
            out.push(Output::Connect { to: addr });
        }
    }

    /// A dial to `addr` was refused: nothing listens there, so the active member at `addr` is
    /// dead. Declares it Down through foca (which reports it, disseminates it, and keeps it
    /// Down) and gossips the verdict at once.
    fn refused(&mut self, addr: SocketAddrV4, out: &mut Vec<Output<SwimTimer>>) {
        self.checking.remove(&addr);
        let Some(member) = self.active_at(addr) else {
            return;
        };
        let down = Member::new(*member.id(), member.incarnation(), State::Down);
        // Down overrides any incarnation of the same identity, so this cannot be refused (it is
        // never about ourselves: nobody dials its own address).
        let _ = self.with_foca(out, |f, rt| {
            f.apply_many(std::iter::once(down), true, &mut *rt)?;
            f.gossip(rt)
        });
    }

    /// Suspicions raised on outside evidence so far ([`MembershipCore::suspect`]).
    pub fn suspected(&self) -> u64 {
        self.suspected
    }

    /// The anti-entropy digest of the current view (for tests and diagnostics).
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Turns buffered foca notifications into events, keeping the digest in step; renews when
    /// foca found our identity Down.
    fn flush_notes(&mut self, out: &mut Vec<Output<SwimTimer>>) {
        let mut defunct = false;
        let mut i = 0;
        while i < self.notes.len() {
            match self.notes[i].clone() {
                OwnedNotification::MemberUp(x) => self.up(x, out),
                OwnedNotification::MemberDown(x) => self.down(x, out),
                OwnedNotification::Rename(old, new) => {
                    // foca reports a liveness change of the renamed member right after the
                    // Rename, about the *new* id; no such note means both were active (report
                    // the swap) or both were down (nothing to report).
                    match self.notes.get(i + 1) {
                        Some(OwnedNotification::MemberUp(n)) if *n == new => {
                            self.up(new, out);
                            i += 1;
                        }
                        Some(OwnedNotification::MemberDown(n)) if *n == new => {
                            self.down(old, out);
                            i += 1;
                        }
                        _ => {
                            if self.foca.iter_members().any(|m| *m.id() == new) {
                                self.down(old, out);
                                self.up(new, out);
                            }
                        }
                    }
                }
                // Not sent while `NodeId::renew` is `None`; kept should foca renew by itself.
                OwnedNotification::Rejoin(me) => {
                    self.digest.remove(&self.me);
                    self.digest.add(&me);
                    self.me = me;
                    out.push(Output::Renewed(me));
                }
                OwnedNotification::Defunct => defunct = true,
                OwnedNotification::Active | OwnedNotification::Idle => {}
            }
            i += 1;
        }
        self.notes.clear();
        // A preseed or a join pull produces one note per member; keep no such buffer around
        // (at 10,000 nodes x 10,000 members it would be gigabytes of idle capacity).
        if self.notes.capacity() > 64 {
            self.notes = Vec::new();
        }
        if defunct && !self.left {
            self.renew(out);
        }
    }

    /// Our identity was declared Down (foca went defunct: `NodeId` never renews inside foca):
    /// continue as the next generation with a *fresh* foca that knows the active members, then
    /// adopts the view of the push that declared us Down, if one did.
    ///
    /// Dropping the Down records and foca's update backlog is what keeps one cut-off node from
    /// renewing the cluster: whoever declared us Down saw at least as much of the cluster as we
    /// did (see `merge`), so the verdicts our old identity reached (about every member, when
    /// we were cut off) must not travel on under the new one. Members we held Down that are
    /// alive come back Up under the same identity (a renewed node's view starts anew; the
    /// gossip backend drops its tombstones on `renewed`); truly dead ones are learned Down
    /// again from peers' pushes, with no event since they are not active here.
    /// Cost: O(members²), foca's member table being a `Vec` (as `preseed`); renewals are rare.
    fn renew(&mut self, out: &mut Vec<Output<SwimTimer>>) {
        let new = self.me.next_generation();
        let members: Vec<Member<NodeId>> = self.foca.iter_members().cloned().collect();
        // The fresh view forgets whom we held Down, but not where they were: were it the
        // addresses of the far side of a cut, a cluster whose every node on one side renewed
        // during the cut would have nobody left who knows an address across it, and the
        // healed sides would never find each other.
        self.graves.extend(
            self.foca
                .iter_membership_state()
                .filter(|m| m.state() == State::Down)
                .map(|m| m.id().addr()),
        );
        let config = self.profile.foca_config(self.cluster_size);
        let keep = config.remove_down_after.unwrap_or(Duration::ZERO);
        let seed = self.rng.random::<u64>();
        self.foca = Foca::new(new, config, SmallRng::seed_from_u64(seed), PostcardCodec);
        self.view = self.view.wrapping_add(1);
        // The same active set: its Up notes were reported already.
        let mut known = Vec::new();
        let mut rt = Rt {
            cluster: self.cluster,
            view: self.view,
            out: &mut *out,
            notes: &mut known,
        };
        // Applying Alive or Suspect members of other addresses cannot fail.
        let _ = self.foca.apply_many(members.into_iter(), false, &mut rt);
        self.digest.remove(&self.me);
        self.digest.add(&new);
        self.me = new;
        out.push(Output::Renewed(new));
        // Renewed by a push: adopt its view of the members it differed on. Its Down records
        // (the members cut off with us) keep their packets and verdicts out of the fresh view;
        // its Alive records bring back at once the members our old identity held Down.
        let renewer = std::mem::take(&mut self.renewer);
        let adopt: Vec<Member<NodeId>> = renewer
            .into_iter()
            .filter(|m| m.id().addr() != new.addr())
            .collect();
        if !adopt.is_empty() {
            let _ = self.with_foca(out, |f, rt| f.apply_many(adopt.into_iter(), false, rt));
        }
        self.keep_graves(keep);
        if self.foca.num_members() == 0 {
            self.announce_to_seeds(out);
        } else {
            // Any message from the new identity replaces the old one at its receiver.
            let _ = self.with_foca(out, |f, rt| f.gossip(rt));
        }
    }

    /// Keeps the graves foca does not know (sorted, deduplicated: the choice among them must
    /// not depend on the order foca listed them in) for `keep` of anti-entropy rounds.
    /// O(members + graves log graves); renewals are rare.
    fn keep_graves(&mut self, keep: Duration) {
        let known: std::collections::HashSet<SocketAddrV4> = self
            .foca
            .iter_membership_state()
            .map(|m| m.id().addr())
            .collect();
        let me = self.me.addr();
        self.graves.retain(|a| *a != me && !known.contains(a));
        self.graves.sort_unstable();
        self.graves.dedup();
        self.graves.shrink_to_fit();
        let period = self.profile.anti_entropy_period().as_nanos().max(1);
        self.graves_left = u32::try_from(keep.as_nanos() / period).unwrap_or(u32::MAX);
    }

    /// The sender of a foca `TurnUndead` ("you are Down"), if `payload` is one. foca would
    /// renew at once, on the word of anyone, and with no view to adopt; the verdict is weighed
    /// in an anti-entropy exchange instead (`merge`), where the sizes of both views are known
    /// and a renewal adopts the renewer's view.
    fn turn_undead_from(payload: &[u8]) -> Option<NodeId> {
        let header: Header<NodeId> = PostcardCodec.decode_header(payload).ok()?;
        (header.message == Message::TurnUndead).then_some(header.src)
    }

    /// Starts an anti-entropy exchange with `to` (our digest; it answers only if ours differs).
    fn send_digest(&self, to: SocketAddrV4, out: &mut Vec<Output<SwimTimer>>) {
        let (count, hash) = self.digest.summary();
        let msg = SyncMsg::Digest {
            from: self.id(),
            count,
            hash,
        };
        self.send_sync(to, Channel::Datagram, &msg, out);
    }

    /// Members known alive in our view, ourselves included (what `Push::live` carries).
    /// Suspected ones are left out: after a cut heals early, a cut-off node still counts the
    /// peers across it that it had only suspected so far, and its view would tie the
    /// majority's (then both sides' verdicts are believed). Unprobed peers still count, but
    /// probes go round-robin and a verdict takes a suspicion time, so by its first verdict a
    /// cut-off node has suspected the next few (simulator test
    /// `after_the_earliest_possible_heal_only_the_cut_off_side_renews`). O(members): pushes
    /// are rare.
    fn live_count(&self) -> u32 {
        let alive = self
            .foca
            .iter_membership_state()
            .filter(|m| m.state() == State::Alive)
            .count();
        u32::try_from(alive).unwrap_or(u32::MAX).saturating_add(1)
    }

    fn up(&mut self, x: NodeId, out: &mut Vec<Output<SwimTimer>>) {
        self.digest.add(&x);
        out.push(Output::Event(MemberEvent::Up(x)));
    }

    fn down(&mut self, x: NodeId, out: &mut Vec<Output<SwimTimer>>) {
        if self.receiving_from == Some(x.addr()) {
            out.push(Output::Left(x));
        }
        self.digest.remove(&x);
        out.push(Output::Event(MemberEvent::Down(x)));
    }

    /// Runs `f` against foca with a runtime that writes into `out`, then post-processes.
    fn with_foca<R>(
        &mut self,
        out: &mut Vec<Output<SwimTimer>>,
        f: impl FnOnce(&mut FocaCore, &mut Rt<'_>) -> R,
    ) -> R {
        let mut rt = Rt {
            cluster: self.cluster,
            view: self.view,
            out,
            notes: &mut self.notes,
        };
        let r = f(&mut self.foca, &mut rt);
        self.flush_notes(out);
        r
    }

    /// Tells the suspect of every suspicion foca raised among `out[start..]`: foca arms a
    /// suspicion timer of the current `view` exactly when a probe failed (timers only: a
    /// packet never concludes a probe).
    fn tell_suspects(&self, view: u32, start: usize, out: &mut Vec<Output<SwimTimer>>) {
        for i in start..out.len() {
            if let Output::SetTimer {
                timer:
                    SwimTimer::Foca(
                        v,
                        foca::Timer::ChangeSuspectToDown {
                            member_id,
                            incarnation,
                            ..
                        },
                    ),
                ..
            } = &out[i]
                && *v == view
            {
                let (id, incarnation) = (*member_id, *incarnation);
                self.tell_suspect(id, incarnation, out);
            }
        }
    }

    /// Tells `id` that this node suspects its `incarnation` (module docs): a one-record push,
    /// the suspect's only sure way to hear of it in time to refute it.
    fn tell_suspect(
        &self,
        id: NodeId,
        incarnation: foca::Incarnation,
        out: &mut Vec<Output<SwimTimer>>,
    ) {
        let msg = SyncMsg::Push {
            from: self.id(),
            live: self.live_count(),
            want: 0,
            members: vec![Member::new(id, incarnation, State::Suspect)],
        };
        self.send_sync(id.addr(), Channel::Datagram, &msg, out);
    }

    fn send_sync(
        &self,
        to: SocketAddrV4,
        channel: Channel,
        msg: &SyncMsg,
        out: &mut Vec<Output<SwimTimer>>,
    ) {
        out.push(Output::Send {
            to,
            channel,
            payload: msg.encode(self.cluster),
        });
    }

    fn arm_anti_entropy(&mut self, out: &mut Vec<Output<SwimTimer>>) {
        let period = self.profile.anti_entropy_period();
        // ±25% jitter keeps rounds of different nodes from lining up.
        let ms = period.as_millis() as u64;
        let jitter = self.rng.random_range(0..=ms / 2);
        let after = Duration::from_millis(ms - ms / 4 + jitter);
        out.push(Output::SetTimer {
            after,
            timer: SwimTimer::AntiEntropy,
        });
    }

    /// Asks the seeds to let us in and one of them for its full view.
    fn announce_to_seeds(&mut self, out: &mut Vec<Output<SwimTimer>>) {
        let me = self.foca.identity().addr();
        let seeds: Vec<_> = self.seeds.iter().copied().filter(|s| *s != me).collect();
        if seeds.is_empty() {
            return;
        }
        for seed in &seeds {
            // Announce accepts any generation at the destination address.
            let _ = self.with_foca(out, |f, rt| f.announce(NodeId::new(*seed, 0), rt));
        }
        let pull_from = seeds[self.rng.random_range(0..seeds.len())];
        let msg = SyncMsg::Push {
            from: self.id(),
            live: self.live_count(),
            want: ALL_BUCKETS,
            members: vec![Member::alive(self.id())],
        };
        self.send_sync(pull_from, Channel::Stream, &msg, out);
    }

    /// One anti-entropy round: pick a peer (now and then a Down one) and send our digest.
    fn anti_entropy_round(&mut self, out: &mut Vec<Output<SwimTimer>>) {
        if self.foca.num_members() == 0 {
            self.announce_to_seeds(out);
            return;
        }
        self.round = self.round.wrapping_add(1);
        self.graves_left = self.graves_left.saturating_sub(1);
        if self.graves_left == 0 && !self.graves.is_empty() {
            self.graves = Vec::new();
        }
        let total = self.foca.iter_membership_state().len();
        let active = self.foca.num_members();
        let down = total - active;
        let target = if down + self.graves.len() > 0
            && self
                .round
                .is_multiple_of(self.profile.anti_entropy_down_every())
        {
            let k = self.rng.random_range(0..down + self.graves.len());
            if k < down {
                self.foca
                    .iter_membership_state()
                    .filter(|m| m.state() == State::Down)
                    .nth(k)
                    .map(|m| m.id().addr())
            } else {
                self.grave_target(k - down)
            }
        } else {
            let k = self.rng.random_range(0..active);
            self.foca.iter_members().nth(k).map(|m| m.id().addr())
        };
        let Some(target) = target else {
            return;
        };
        self.send_digest(target, out);
    }

    /// The grave at `i` as a digest target, unless foca knows its address again (then foca's
    /// own rounds cover it and the grave is dropped). O(members), every few rounds at most.
    fn grave_target(&mut self, i: usize) -> Option<SocketAddrV4> {
        let addr = self.graves[i];
        if self
            .foca
            .iter_membership_state()
            .any(|m| m.id().addr() == addr)
        {
            self.graves.swap_remove(i);
            return None;
        }
        Some(addr)
    }

    /// Our member states (and our own entry) in the buckets of `mask`.
    fn members_in(&self, mask: u64) -> Vec<Member<NodeId>> {
        let me = self.id();
        let mut v: Vec<Member<NodeId>> = self
            .foca
            .iter_membership_state()
            .filter(|m| mask == ALL_BUCKETS || in_mask(mask, m.id()))
            .cloned()
            .collect();
        if in_mask(mask, &me) {
            v.push(Member::alive(me));
        }
        v
    }

    /// Applies the entries of `from`'s push that differ from our view in liveness or generation
    /// (incarnation-only differences are left to SWIM's own probing). Returns how many applied.
    ///
    /// The Down records of a sender we hold Down are trusted only if its view (`live`) is at
    /// least as large as ours: after a cut heals, the side that saw less of the cluster (one
    /// isolated node, a minority) takes the other side's verdicts and renews, and its own
    /// verdicts renew nobody (it drops them when it renews). Equal views (two halves, two
    /// nodes) trust each other, as before. Of two nodes holding each other Down at least one
    /// trusts the other, so a healed cut always resolves. Such a sender's verdicts about third
    /// parties come only with its verdict about us (see below): each node across a healed cut
    /// learns its own verdict and renews itself, and nobody downs a peer on its word alone.
    fn merge(
        &mut self,
        from: NodeId,
        live: u32,
        members: Vec<Member<NodeId>>,
        out: &mut Vec<Output<SwimTimer>>,
    ) -> usize {
        let me = self.id();
        let ours: HashMap<SocketAddrV4, (NodeId, bool)> = self
            .foca
            .iter_membership_state()
            .map(|m| (m.id().addr(), (*m.id(), m.state() != State::Down)))
            .collect();
        // A sender we hold Down, or one we know a newer generation of (a push sent before it
        // renewed), speaks for a view we already overruled.
        let overruled = ours.get(&from.addr()).is_some_and(|&(known, active)| {
            known.generation() > from.generation() || (known == from && !active)
        });
        let trust_downs = !overruled || live >= self.live_count();
        // From an overruled sender, a verdict about a third party is taken only with the
        // verdict about us (we renew and adopt that view). Alone it would be the other side's
        // word against ours: a node whose cut healed before it had declared every peer across
        // it Down counts those peers in its view, so its view can tie ours and its verdicts
        // about the nodes on our side (taken before the heal) would down them here.
        let third_party_downs = !overruled
            || members
                .iter()
                .any(|m| *m.id() == me && m.state() == State::Down);
        let fresh: Vec<Member<NodeId>> = members
            .into_iter()
            .filter(|m| {
                if m.state() == State::Down
                    && (!trust_downs || (!third_party_downs && m.id().addr() != me.addr()))
                {
                    return false;
                }
                let id = m.id();
                if id.addr() == me.addr() {
                    // A Down verdict about our own identity is news we must see (foca renews),
                    // and so is a suspicion of it (foca refutes it).
                    return *id == me && m.state() != State::Alive;
                }
                let active = m.state() != State::Down;
                match ours.get(&id.addr()) {
                    None => true,
                    Some((known, known_active)) => {
                        id.generation() > known.generation()
                            || (id == known && active != *known_active)
                    }
                }
            })
            .collect();
        let n = fresh.len();
        let suspected = fresh
            .iter()
            .any(|m| *m.id() == me && m.state() == State::Suspect);
        if n > 0 {
            if fresh
                .iter()
                .any(|m| *m.id() == me && m.state() == State::Down)
            {
                self.renewer.clone_from(&fresh);
            }
            let rebroadcast = n <= REBROADCAST_MAX;
            // Errors here can only come from a self-update foca refuses; nothing to report.
            let _ = self.with_foca(out, |f, rt| {
                f.apply_many(fresh.into_iter(), rebroadcast, rt)
            });
            self.renewer.clear();
        }
        if suspected {
            // Refuted (or older than our incarnation): any foca packet carries our current
            // incarnation in its header, and an announce is the one foca sends to a chosen
            // member; the suspecter's foca applies it before anything else.
            let _ = self.with_foca(out, |f, rt| f.announce(from, rt));
        }
        n
    }

    fn handle_sync(&mut self, msg: SyncMsg, out: &mut Vec<Output<SwimTimer>>) {
        let from = msg.from();
        if from.addr() == self.id().addr() || self.left {
            return;
        }
        match msg {
            SyncMsg::Digest { count, hash, .. } => {
                if (count, hash) != self.digest.summary() {
                    let buckets = self.digest.buckets().to_vec();
                    let reply = SyncMsg::Buckets {
                        from: self.id(),
                        buckets,
                    };
                    self.send_sync(from.addr(), Channel::Datagram, &reply, out);
                }
            }
            SyncMsg::Buckets { buckets, .. } => {
                let mask = self.digest.diff_mask(&buckets);
                if mask != 0 {
                    let members = self.members_in(mask);
                    let reply = SyncMsg::Push {
                        from: self.id(),
                        live: self.live_count(),
                        want: mask,
                        members,
                    };
                    self.send_sync(from.addr(), Channel::Stream, &reply, out);
                }
            }
            SyncMsg::Push {
                from,
                live,
                want,
                members,
            } => {
                self.merge(from, live, members, out);
                if want != 0 {
                    let members = self.members_in(want);
                    let reply = SyncMsg::Push {
                        from: self.id(),
                        live: self.live_count(),
                        want: 0,
                        members,
                    };
                    self.send_sync(from.addr(), Channel::Stream, &reply, out);
                }
            }
        }
    }
}

impl MembershipCore for Swim {
    type Timer = SwimTimer;

    fn id(&self) -> NodeId {
        *self.foca.identity()
    }

    fn start(&mut self, _now: Time, seeds: &[SocketAddrV4], out: &mut Vec<Output<SwimTimer>>) {
        self.seeds = seeds.to_vec();
        self.announce_to_seeds(out);
        self.arm_anti_entropy(out);
    }

    /// Loads the member list without disseminating it, as when restoring a snapshot of a
    /// converged cluster; then arms timers like `start` with no seeds.
    ///
    /// Cost: foca's member table is a `Vec` scanned per update, so this is O(members²).
    fn preseed(&mut self, now: Time, members: &[NodeId], out: &mut Vec<Output<SwimTimer>>) {
        let me = self.foca.identity().addr();
        let members = members
            .iter()
            .filter(|m| m.addr() != me)
            .map(|m| Member::alive(*m));
        let mut rt = Rt {
            cluster: self.cluster,
            view: self.view,
            out,
            notes: &mut self.notes,
        };
        // Applying Alive members of another address cannot fail.
        let _ = self.foca.apply_many(members, false, &mut rt);
        self.flush_notes(out);
        self.start(now, &[], out);
    }

    fn handle_datagram(
        &mut self,
        _now: Time,
        from: SocketAddrV4,
        bytes: &[u8],
        out: &mut Vec<Output<SwimTimer>>,
    ) -> Result<(), Error> {
        let (kind, payload) = wire::open(bytes, self.cluster, wire::MAX_DATAGRAM_PAYLOAD)?;
        if self.left {
            return Ok(());
        }
        match kind {
            Kind::Swim => {
                if let Some(sender) = Self::turn_undead_from(payload) {
                    if sender.addr() != self.id().addr() {
                        self.send_digest(sender.addr(), out);
                    }
                    return Ok(());
                }
                self.receiving_from = Some(from);
                let r = self
                    .with_foca(out, |f, rt| f.handle_data(payload, rt))
                    .map_err(|e| Error::Protocol(format!("swim: {e}")));
                self.receiving_from = None;
                r
            }
            Kind::AntiEntropy => {
                let msg = SyncMsg::decode(payload)?;
                self.handle_sync(msg, out);
                Ok(())
            }
            other => Err(Error::Protocol(format!(
                "{other:?} datagram on a SWIM membership core"
            ))),
        }
    }

    fn handle_stream(
        &mut self,
        _now: Time,
        _from: SocketAddrV4,
        bytes: &[u8],
        out: &mut Vec<Output<SwimTimer>>,
    ) -> Result<(), Error> {
        let (kind, payload) = wire::open(bytes, self.cluster, wire::MAX_FRAME_PAYLOAD)?;
        match kind {
            Kind::AntiEntropy => {
                let msg = SyncMsg::decode(payload)?;
                self.handle_sync(msg, out);
                Ok(())
            }
            other => Err(Error::Protocol(format!(
                "unexpected {other:?} frame on a SWIM stream"
            ))),
        }
    }

    /// Links only feed the dead-process check (module docs); probing does the rest.
    fn handle_link(&mut self, _now: Time, event: LinkEvent, out: &mut Vec<Output<SwimTimer>>) {
        if self.left {
            return;
        }
        match event {
            LinkEvent::Reset(addr) => self.check(addr, out),
            LinkEvent::Refused(addr) => self.refused(addr, out),
            LinkEvent::ConnectFailed(addr) => self.check_failed(addr, out),
            // The process answered (Up), or closed the link on purpose (Down).
            LinkEvent::Up(addr) | LinkEvent::Down(addr) => {
                self.checking.remove(&addr);
            }
        }
    }

    fn handle_timer(&mut self, _now: Time, timer: SwimTimer, out: &mut Vec<Output<SwimTimer>>) {
        match timer {
            SwimTimer::Foca(view, t) => {
                if view != self.view {
                    return;
                }
                // foca filters stale timers by token; an error means a timer of an old state.
                let start = out.len();
                let _ = self.with_foca(out, |f, rt| f.handle_timer(t, rt));
                self.tell_suspects(view, start, out);
            }
            SwimTimer::AntiEntropy => {
                if self.left {
                    return;
                }
                self.anti_entropy_round(out);
                self.arm_anti_entropy(out);
            }
            SwimTimer::SuspectToDown { id, incarnation } => {
                let unrefuted = self.foca.iter_membership_state().any(|m| {
                    *m.id() == id && m.state() == State::Suspect && m.incarnation() == incarnation
                });
                if unrefuted && !self.left {
                    let down = Member::new(id, incarnation, State::Down);
                    let _ = self.with_foca(out, |f, rt| {
                        f.apply_many(std::iter::once(down), true, &mut *rt)?;
                        f.gossip(rt)
                    });
                }
            }
        }
    }

    /// Suspects `id` the way foca does after a failed probe: the suspicion is applied and
    /// gossiped at once (so a live `id` hears it and refutes with a higher incarnation), and
    /// this node declares `id` Down after foca's suspicion time unless it was refuted. Only an
    /// active, unsuspected member is suspected: a suspicion already running (ours or foca's)
    /// keeps its own deadline.
    fn suspect(&mut self, _now: Time, id: NodeId, out: &mut Vec<Output<SwimTimer>>) {
        if self.left || id.addr() == self.me.addr() {
            return;
        }
        let Some(incarnation) = self
            .foca
            .iter_members()
            .find(|m| *m.id() == id && m.state() == State::Alive)
            .map(Member::incarnation)
        else {
            return;
        };
        self.suspected += 1;
        let suspicion = Member::new(id, incarnation, State::Suspect);
        let _ = self.with_foca(out, |f, rt| {
            f.apply_many(std::iter::once(suspicion), true, &mut *rt)?;
            f.gossip(rt)
        });
        self.tell_suspect(id, incarnation, out);
        out.push(Output::SetTimer {
            after: self.suspicion,
            timer: SwimTimer::SuspectToDown { id, incarnation },
        });
    }

    fn leave(&mut self, _now: Time, out: &mut Vec<Output<SwimTimer>>) {
        // Set first: foca goes defunct when it leaves, which must not renew us.
        self.left = true;
        let _ = self.with_foca(out, |f, rt| f.leave_cluster(rt));
    }

    fn num_members(&self) -> usize {
        self.foca.num_members()
    }

    fn members(&self) -> Vec<NodeId> {
        self.foca.iter_members().map(|m| *m.id()).collect()
    }
}

#[cfg(test)]
mod tests;
