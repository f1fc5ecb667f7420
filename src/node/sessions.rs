//! The session manager through a node: [`Sessions`] (from [`Node::sessions`]).
//!
//! Keys (u64 or bytes) map to the local process holding the session. Each key lives in one of
//! [`NodeConfig::session_shards`](super::NodeConfig::session_shards) shards, served by the
//! nodes with the [`SESSION_ROLE`] role: a primary that answers only once its standby holds the
//! write, so an acknowledged registration of a live process survives any single session-node
//! crash (its node re-asserts it at the new primary). Calls from any node are routed to the
//! primary in that node's view, batched per primary, and retried with the same request id
//! until a definite answer (see `meshreg_registry::session::manager`).
//!
//! Roles travel as memberships of the reserved scope [`ROLES_SCOPE`]: a node with role `r`
//! joins group `r` there with an internal pid, so every node learns every node's roles through
//! the discovery backend and loses them when the node goes down.

use meshreg_membership::Time;
use meshreg_registry::Pid;
use meshreg_registry::session::manager::{CallId, SessionCallError, SessionManager, SessionOutput};
use meshreg_registry::session::{Answer, Outcome};
pub use meshreg_registry::session::{Policy, Session, SessionKey};

use super::Node;
use super::engine::Engine;
use super::error::NodeError;
use super::subscribe::Subscription;

/// The reserved scope whose groups are node roles (group = role name, members = one internal
/// pid per node with that role). Readable like any scope (`node.members(ROLES_SCOPE,
/// "session")` lists the session nodes); processes cannot join or leave it.
pub const ROLES_SCOPE: &str = "$meshreg.roles";

/// The role of nodes that serve session shards.
pub const SESSION_ROLE: &str = "session";

/// A session of a local process was lost: another registration replaced it (policy
/// [`Policy::Replace`]), or after a failover the new primary found the key taken.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionLost {
    /// The key.
    pub key: SessionKey,
    /// The local process that held it.
    pub pid: Pid,
}

/// What a successful [`Sessions::register`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Registered {
    /// The key was free (or already held by this pid: its metadata was updated, or held by a
    /// process of an earlier incarnation of the same node, which is dead).
    New,
    /// Policy [`Policy::Replace`] took the key from `old`, whose node was told (it reports
    /// [`SessionLost`]).
    Replaced {
        /// The previous holder.
        old: Pid,
    },
}

/// The session registry of a node. Cheap to clone; keeps the node running while it exists.
#[derive(Clone, Debug)]
pub struct Sessions {
    node: Node,
}

impl Node {
    /// The session registry (see [`Sessions`]). Any node can call it; only nodes with the
    /// [`SESSION_ROLE`] role serve shards.
    pub fn sessions(&self) -> Sessions {
        Sessions { node: self.clone() }
    }
}

impl Sessions {
    /// Runs one session-manager call and waits for its completion.
    async fn call(
        &self,
        mut f: impl FnMut(&mut SessionManager, Time, CallId, &mut Vec<SessionOutput>) + Send,
    ) -> Result<Outcome, NodeError> {
        let call = |e: &mut dyn Engine, now, req, out: &mut Vec<_>| {
            e.session(now, &mut |m, o| f(m, now, req, o), out);
        };
        match self
            .node
            .shared()
            .call(|st| &mut st.session_pending, call)
            .await
        {
            Some(r) => r.map_err(NodeError::Session),
            None => Err(NodeError::Stopped),
        }
    }

    /// Makes local process `pid` the holder of `key`. Returns once the shard's primary and its
    /// standby hold it. With [`Policy::Reject`] a key held by another live process is refused
    /// with [`NodeError::Taken`]; with [`Policy::Replace`] it is taken over.
    pub async fn register(
        &self,
        key: impl Into<SessionKey>,
        pid: Pid,
        policy: Policy,
    ) -> Result<Registered, NodeError> {
        self.register_with_meta(key, pid, &[], policy).await
    }

    /// [`Self::register`] with metadata stored beside the holder (bounded by the shard limits;
    /// an oversized value is refused with the limit named).
    pub async fn register_with_meta(
        &self,
        key: impl Into<SessionKey>,
        pid: Pid,
        meta: &[u8],
        policy: Policy,
    ) -> Result<Registered, NodeError> {
        let key = key.into();
        let outcome = self
            .call(|m, now, req, o| m.register(now, req, key.clone(), pid, meta, policy, o))
            .await?;
        match outcome {
            Outcome::One(Answer::Registered { .. }) => Ok(Registered::New),
            Outcome::One(Answer::Replaced { old, .. }) => Ok(Registered::Replaced { old }),
            Outcome::One(Answer::Taken { holder }) => Err(NodeError::Taken { holder }),
            other => Err(unexpected(&other)),
        }
    }

    /// Removes `key` if local process `pid` holds it; otherwise [`NodeError::NotHolder`] and
    /// nothing changes.
    pub async fn unregister(&self, key: impl Into<SessionKey>, pid: Pid) -> Result<(), NodeError> {
        let key = key.into();
        let outcome = self
            .call(|m, now, req, o| m.unregister(now, req, key.clone(), pid, o))
            .await?;
        match outcome {
            Outcome::One(Answer::Unregistered) => Ok(()),
            Outcome::One(Answer::NotHolder { holder }) => Err(NodeError::NotHolder { holder }),
            other => Err(unexpected(&other)),
        }
    }

    /// The session of `key`, read at the shard's primary.
    pub async fn lookup(&self, key: impl Into<SessionKey>) -> Result<Option<Session>, NodeError> {
        let key = key.into();
        let outcome = self
            .call(|m, now, req, o| m.lookup(now, req, key.clone(), o))
            .await?;
        match outcome {
            Outcome::One(Answer::Found(s)) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// The sessions of `keys`, in the same order (one request per shard touched, sent
    /// concurrently).
    pub async fn lookup_many(
        &self,
        keys: Vec<SessionKey>,
    ) -> Result<Vec<Option<Session>>, NodeError> {
        let mut keys = Some(keys);
        let outcome = self
            .call(|m, now, req, o| m.lookup_many(now, req, keys.take().unwrap_or_default(), o))
            .await?;
        match outcome {
            Outcome::Many(answers) => answers
                .into_iter()
                .map(|a| match a {
                    Answer::Found(s) => Ok(s),
                    other => Err(unexpected(&Outcome::One(other))),
                })
                .collect(),
            other => Err(unexpected(&other)),
        }
    }

    /// Every later loss of a session of a local process, in order.
    pub fn lost(&self) -> Subscription<SessionLost> {
        self.node.shared().lock().session_subs.subscribe()
    }
}

/// An answer whose shape does not match the call: a protocol bug, reported rather than hidden.
fn unexpected(outcome: &Outcome) -> NodeError {
    NodeError::Session(SessionCallError::Unavailable(format!(
        "answer of an unexpected shape: {outcome:?}"
    )))
}

impl Node {
    /// Publishes this node's roles as memberships of [`ROLES_SCOPE`], retrying while the
    /// cluster cannot order them (coordinated backend without a reachable boss).
    pub(super) fn announce_roles(&self) {
        let roles: Vec<String> = self.config().roles.iter().cloned().collect();
        if roles.is_empty() {
            return;
        }
        // One internal pid, never in the process table: messages to it find no process.
        let pid = self.shared().next_pid();
        let weak = std::sync::Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let Ok(scope) = meshreg_registry::groups::ScopeName::new(ROLES_SCOPE) else {
                return; // a constant within the name limits
            };
            for role in roles {
                let Ok(group) = meshreg_registry::groups::GroupName::new(&role) else {
                    continue; // validated at start
                };
                let mut backoff = std::time::Duration::from_millis(50);
                loop {
                    let Some(inner) = weak.upgrade() else { return };
                    let node = Node { inner };
                    let r = node
                        .call(|e, now, req, out| e.join(now, req, &scope, &group, pid, &[], out))
                        .await;
                    match r {
                        Ok(()) => break,
                        Err(NodeError::Stopped) => return,
                        Err(e) if super::is_retryable(&e) => {
                            drop(node);
                            tokio::time::sleep(backoff).await;
                            backoff = (backoff * 2).min(std::time::Duration::from_secs(2));
                        }
                        Err(e) => {
                            tracing::error!(%role, %e, "could not announce a role");
                            break;
                        }
                    }
                }
            }
        });
    }
}
