//! Node settings and their validation: every refusal names the setting at fault.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, SocketAddrV4};
use std::str::FromStr;
use std::time::Duration;

use meshreg_membership::Profile;
use meshreg_membership::wire::MAX_FRAME_PAYLOAD;
use meshreg_registry::groups::DEFAULT_META_CAP_BYTES;

use super::Node;
use super::error::NodeError;

/// Which discovery backend a node runs (GUIDE §1). Both are compiled by default; a backend
/// whose Cargo feature is off is refused at start with [`NodeError::Config`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// SWIM membership (UDP) and CRDT gossip groups: scales to 10,000+ nodes; joins become
    /// visible cluster-wide shortly after the call returns.
    Gossip,
    /// Full-mesh membership (TCP) and boss-node groups: a join is visible on every node when
    /// the call returns; hundreds of nodes per cluster.
    Coordinated,
}

impl Backend {
    /// The backend's name as accepted by [`FromStr`].
    pub const fn name(self) -> &'static str {
        match self {
            Self::Gossip => "gossip",
            Self::Coordinated => "coordinated",
        }
    }

    /// Whether this build contains the backend.
    pub const fn compiled(self) -> bool {
        match self {
            Self::Gossip => cfg!(feature = "gossip"),
            Self::Coordinated => cfg!(feature = "coordinated"),
        }
    }
}

impl Default for Backend {
    fn default() -> Self {
        if cfg!(feature = "gossip") {
            Self::Gossip
        } else {
            Self::Coordinated
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gossip" => Ok(Self::Gossip),
            "coordinated" => Ok(Self::Coordinated),
            _ => Err(format!(
                "unknown backend {s:?}: expected gossip or coordinated"
            )),
        }
    }
}

/// Shortest accepted cluster secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;

/// Everything a node is started with. Built by [`NodeBuilder`]; validated by [`Self::validate`].
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// A label for logs and status output (defaults to the listen address).
    pub name: String,
    /// UDP and TCP listen address (same port for both). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// Addresses of existing members to join through; empty for the first node.
    pub seeds: Vec<SocketAddr>,
    /// Discovery backend.
    pub backend: Backend,
    /// The shared cluster secret (at least [`MIN_SECRET_BYTES`]): peers prove they know it.
    pub secret: Vec<u8>,
    /// Cluster name: nodes of differently named clusters refuse each other's packets.
    pub cluster: String,
    /// Timer profile.
    pub profile: Profile,
    /// Roles this node offers (e.g. [`SESSION_ROLE`](super::SESSION_ROLE): it serves session
    /// shards). Every node learns every node's roles (they are memberships of the reserved
    /// scope [`ROLES_SCOPE`](super::ROLES_SCOPE)).
    pub roles: BTreeSet<String>,
    /// Number of session shards. Every node of a cluster must use the same number.
    pub session_shards: u32,
    /// About how many nodes the cluster will have (SWIM sizes suspicion and retransmission
    /// counts from it).
    pub expected_size: u32,
    /// Largest metadata per group membership, in bytes.
    pub max_meta_bytes: usize,
    /// Largest frame on a link, in bytes (checked before allocation).
    pub max_frame_bytes: usize,
    /// Frames queued per peer before sends see back-pressure.
    pub queue_frames: usize,
    /// This process's creation number (the high half of its generation). A restarted node
    /// must use a higher one than before; by default it is taken from the clock.
    pub creation: Option<u16>,
    /// Coordinated backend: bosses recover every partition of a scope when it is first used
    /// (and the partitions they win at a view change), so no write waits for a recovery round
    /// trip (on by default). Off, a partition is recovered on its first write: cheaper for
    /// many sparsely used scopes (each warmed scope costs about 256 recoveries in the cluster
    /// and a replica entry per partition on every node).
    pub warm_partitions: bool,
}

impl NodeConfig {
    /// Checks every setting; the error names the first one at fault.
    pub fn validate(&self) -> Result<(), NodeError> {
        let bad = |setting: &'static str, why: String| Err(NodeError::Config { setting, why });
        if self.name.is_empty() || self.name.len() > 255 {
            return bad("name", "must be 1 to 255 bytes".into());
        }
        if !matches!(self.listen, SocketAddr::V4(_)) {
            return bad(
                "listen",
                format!("{}: only IPv4 addresses are supported", self.listen),
            );
        }
        if let Some(s) = self.seeds.iter().find(|s| !matches!(s, SocketAddr::V4(_))) {
            return bad("seeds", format!("{s}: only IPv4 addresses are supported"));
        }
        if !self.backend.compiled() {
            return bad(
                "backend",
                format!(
                    "{} is not compiled into this build (enable Cargo feature `{}`)",
                    self.backend,
                    self.backend.name()
                ),
            );
        }
        if self.secret.len() < MIN_SECRET_BYTES {
            return bad(
                "secret",
                format!(
                    "{} bytes: at least {MIN_SECRET_BYTES} are required",
                    self.secret.len()
                ),
            );
        }
        if self.cluster.is_empty() {
            return bad("cluster", "must not be empty".into());
        }
        if let Some(r) = self
            .roles
            .iter()
            .find(|r| meshreg_registry::groups::GroupName::new(r).is_err() || r.is_empty())
        {
            return bad("roles", format!("{r:?}: 1 to 255 bytes"));
        }
        if !(1..=1 << 20).contains(&self.session_shards) {
            return bad(
                "session_shards",
                format!("{}: between 1 and 1048576", self.session_shards),
            );
        }
        if self.expected_size == 0 {
            return bad("expected_size", "must be at least 1".into());
        }
        if self.max_meta_bytes > 64 * 1024 {
            return bad(
                "max_meta_bytes",
                format!("{}: at most 65536", self.max_meta_bytes),
            );
        }
        if !(64 * 1024..=MAX_FRAME_PAYLOAD + 64).contains(&self.max_frame_bytes) {
            return bad(
                "max_frame_bytes",
                format!(
                    "{}: between 65536 and {MAX_FRAME_PAYLOAD}",
                    self.max_frame_bytes
                ),
            );
        }
        if self.queue_frames == 0 {
            return bad("queue_frames", "must be at least 1".into());
        }
        Ok(())
    }

    pub(crate) fn listen_v4(&self) -> SocketAddrV4 {
        match self.listen {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable_v4(),
        }
    }

    pub(crate) fn seeds_v4(&self) -> Vec<SocketAddrV4> {
        self.seeds
            .iter()
            .filter_map(|s| match s {
                SocketAddr::V4(a) => Some(*a),
                SocketAddr::V6(_) => None,
            })
            .collect()
    }

    /// The 32-bit cluster id every envelope carries (FNV-1a of the cluster name: stable across
    /// builds and platforms).
    pub(crate) fn cluster_id(&self) -> u32 {
        self.cluster.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
    }

    /// Transport heartbeat for the profile: a dead link is noticed after three of them.
    pub(crate) fn heartbeat(&self) -> Duration {
        match self.profile {
            Profile::Test => Duration::from_millis(100),
            Profile::Lan => Duration::from_millis(500),
            Profile::Wan => Duration::from_secs(2),
        }
    }
}

/// Validation rejects IPv6 before any caller gets here; the unspecified v4 address keeps this
/// total without a panic.
fn unreachable_v4() -> SocketAddrV4 {
    SocketAddrV4::new(std::net::Ipv4Addr::UNSPECIFIED, 0)
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            seeds: Vec::new(),
            backend: Backend::default(),
            secret: Vec::new(),
            cluster: "meshreg".into(),
            profile: Profile::Lan,
            roles: BTreeSet::new(),
            session_shards: meshreg_registry::session::manager::DEFAULT_SHARDS,
            expected_size: 64,
            max_meta_bytes: DEFAULT_META_CAP_BYTES,
            max_frame_bytes: MAX_FRAME_PAYLOAD + 64,
            queue_frames: 4096,
            creation: None,
            warm_partitions: true,
        }
    }
}

/// Builds and starts a [`Node`]:
///
/// ```no_run
/// # async fn demo() -> Result<(), meshreg::NodeError> {
/// let node = meshreg::Node::builder()
///     .listen("127.0.0.1:7100".parse().unwrap())
///     .seed("127.0.0.1:7101".parse().unwrap())
///     .secret(b"sixteen-or-more-bytes".to_vec())
///     .start()
///     .await?;
/// # node.shutdown().await; Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
#[must_use = "a builder does nothing until `start`"]
pub struct NodeBuilder {
    config: NodeConfig,
}

impl NodeBuilder {
    /// A label for logs.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// UDP and TCP listen address.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = addr;
        self
    }

    /// Adds a seed (an existing member's address).
    pub fn seed(mut self, addr: SocketAddr) -> Self {
        self.config.seeds.push(addr);
        self
    }

    /// Replaces the seeds.
    pub fn seeds(mut self, addrs: impl IntoIterator<Item = SocketAddr>) -> Self {
        self.config.seeds = addrs.into_iter().collect();
        self
    }

    /// Discovery backend.
    pub fn backend(mut self, backend: Backend) -> Self {
        self.config.backend = backend;
        self
    }

    /// The shared cluster secret.
    pub fn secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.config.secret = secret.into();
        self
    }

    /// Cluster name.
    pub fn cluster(mut self, name: impl Into<String>) -> Self {
        self.config.cluster = name.into();
        self
    }

    /// Timer profile.
    pub fn profile(mut self, profile: Profile) -> Self {
        self.config.profile = profile;
        self
    }

    /// Adds a role.
    pub fn role(mut self, role: impl Into<String>) -> Self {
        self.config.roles.insert(role.into());
        self
    }

    /// Number of session shards (the same on every node).
    pub fn session_shards(mut self, shards: u32) -> Self {
        self.config.session_shards = shards;
        self
    }

    /// About how many nodes the cluster will have.
    pub fn expected_size(mut self, nodes: u32) -> Self {
        self.config.expected_size = nodes;
        self
    }

    /// Largest metadata per membership.
    pub fn max_meta_bytes(mut self, bytes: usize) -> Self {
        self.config.max_meta_bytes = bytes;
        self
    }

    /// Frames queued per peer before back-pressure.
    pub fn queue_frames(mut self, frames: usize) -> Self {
        self.config.queue_frames = frames;
        self
    }

    /// Whether bosses warm a scope's partitions (see [`NodeConfig::warm_partitions`]).
    pub fn warm_partitions(mut self, warm: bool) -> Self {
        self.config.warm_partitions = warm;
        self
    }

    /// Creation number of this process (see [`NodeConfig::creation`]).
    pub fn creation(mut self, creation: u16) -> Self {
        self.config.creation = Some(creation);
        self
    }

    /// Replaces the whole configuration.
    pub fn config(mut self, config: NodeConfig) -> Self {
        self.config = config;
        self
    }

    /// The configuration so far.
    pub fn as_config(&self) -> &NodeConfig {
        &self.config
    }

    /// Validates the settings, binds the sockets and joins the cluster through the seeds.
    /// Returns once the node runs; membership then converges in the background.
    pub async fn start(self) -> Result<Node, NodeError> {
        let mut config = self.config;
        if config.name.is_empty() {
            config.name = config.listen.to_string();
        }
        config.validate()?;
        Node::start(config).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> NodeConfig {
        NodeConfig {
            name: "n".into(),
            secret: vec![7; 16],
            ..NodeConfig::default()
        }
    }

    #[test]
    fn a_short_secret_is_refused_by_name() {
        let c = NodeConfig {
            secret: vec![1; 5],
            ..valid()
        };
        assert!(matches!(
            c.validate(),
            Err(NodeError::Config {
                setting: "secret",
                ..
            })
        ));
        assert!(valid().validate().is_ok());
    }

    #[test]
    fn ipv6_listen_and_seeds_are_refused_by_name() {
        let c = NodeConfig {
            listen: "[::1]:1".parse().unwrap(),
            ..valid()
        };
        assert!(matches!(
            c.validate(),
            Err(NodeError::Config {
                setting: "listen",
                ..
            })
        ));
        let c = NodeConfig {
            seeds: vec!["[::1]:1".parse().unwrap()],
            ..valid()
        };
        assert!(matches!(
            c.validate(),
            Err(NodeError::Config {
                setting: "seeds",
                ..
            })
        ));
    }

    #[test]
    fn backend_names_parse_and_unknown_ones_are_refused() {
        assert_eq!("gossip".parse(), Ok(Backend::Gossip));
        assert_eq!("coordinated".parse(), Ok(Backend::Coordinated));
        assert!("raft".parse::<Backend>().is_err());
    }

    #[test]
    fn the_cluster_id_depends_only_on_the_name() {
        let a = valid();
        let b = NodeConfig {
            cluster: "other".into(),
            ..valid()
        };
        assert_eq!(a.cluster_id(), valid().cluster_id());
        assert_ne!(a.cluster_id(), b.cluster_id());
    }
}
