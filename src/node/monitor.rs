//! Process monitors: be told once when a process ends or its node goes down.
//!
//! A monitor of a local process is a one-shot channel fired when the process's handle drops. A
//! monitor of a remote process is registered on the owner node (one `Monitor` message per
//! watching node and process, however many local monitors share it); the owner answers with a
//! `Down` when the process ends, at once when it does not exist. If the owner node leaves the
//! membership view first, every monitor of its processes fires with [`DownReason::NodeDown`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddrV4;
use std::pin::Pin;
use std::task::{Context, Poll};

use meshreg_membership::NodeId;
use meshreg_registry::Pid;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

/// Why a monitored process is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DownReason {
    /// The process ended (its handle was dropped or its task returned).
    Exited,
    /// There was no such process when the monitor was set (never existed, or already ended, or
    /// belongs to an earlier incarnation of its node).
    NoProcess,
    /// The process's node left the cluster, failed, or became unreachable. The process may
    /// still run on the other side of a partition.
    NodeDown,
    /// This node shut down before the process ended.
    Shutdown,
}

/// Resolves once, when the monitored process is gone. Dropping it cancels the monitor.
#[derive(Debug)]
pub struct ProcessMonitor {
    pid: Pid,
    rx: oneshot::Receiver<DownReason>,
}

impl ProcessMonitor {
    pub(crate) fn new(pid: Pid, rx: oneshot::Receiver<DownReason>) -> Self {
        Self { pid, rx }
    }

    /// The monitored process.
    pub fn pid(&self) -> Pid {
        self.pid
    }
}

impl Future for ProcessMonitor {
    type Output = DownReason;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<DownReason> {
        // The sender only disappears without firing when the node itself is gone.
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(DownReason::Shutdown))
    }
}

/// Monitor bookkeeping of one node. Lives under the node's state lock.
#[derive(Default)]
pub(crate) struct Monitors {
    /// Monitors of local processes, by serial.
    local: HashMap<u64, Vec<oneshot::Sender<DownReason>>>,
    /// Monitors of remote processes, by pid.
    remote: HashMap<Pid, Vec<oneshot::Sender<DownReason>>>,
    /// Remote nodes watching each local process (by serial): told once when it ends.
    watchers: HashMap<u64, BTreeSet<SocketAddrV4>>,
}

impl Monitors {
    /// Watches local process `serial`, known to be alive.
    pub(crate) fn watch_local(&mut self, serial: u64, tx: oneshot::Sender<DownReason>) {
        self.local.entry(serial).or_default().push(tx);
    }

    /// Watches remote `pid`; true when this is the first local monitor of it (so the owner must
    /// be asked).
    pub(crate) fn watch_remote(&mut self, pid: Pid, tx: oneshot::Sender<DownReason>) -> bool {
        let list = self.remote.entry(pid).or_default();
        list.retain(|t| !t.is_closed());
        list.push(tx);
        list.len() == 1
    }

    /// Remote node `watcher` watches local process `serial`.
    pub(crate) fn add_watcher(&mut self, serial: u64, watcher: SocketAddrV4) {
        self.watchers.entry(serial).or_default().insert(watcher);
    }

    /// Local process `serial` ended: fires its local monitors and returns the nodes to tell.
    pub(crate) fn local_exit(&mut self, serial: u64) -> BTreeSet<SocketAddrV4> {
        for tx in self.local.remove(&serial).unwrap_or_default() {
            let _ = tx.send(DownReason::Exited);
        }
        self.watchers.remove(&serial).unwrap_or_default()
    }

    /// The owner of remote `pid` reported it gone.
    pub(crate) fn remote_down(&mut self, pid: Pid, reason: DownReason) {
        for tx in self.remote.remove(&pid).unwrap_or_default() {
            let _ = tx.send(reason);
        }
    }

    /// Node `root` (every generation of it) is no longer in the view: its processes are gone
    /// as far as this node can tell.
    pub(crate) fn node_down(&mut self, root: NodeId) {
        let gone: Vec<Pid> = self
            .remote
            .keys()
            .filter(|p| p.node == root)
            .copied()
            .collect();
        for pid in gone {
            self.remote_down(pid, DownReason::NodeDown);
        }
    }

    /// Every monitor still waiting fires with `Shutdown`.
    pub(crate) fn shutdown(&mut self) {
        for (_, list) in self
            .local
            .drain()
            .chain(self.remote.drain().map(|(p, l)| (p.serial, l)))
        {
            for tx in list {
                let _ = tx.send(DownReason::Shutdown);
            }
        }
        self.watchers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn pid(port: u16, serial: u64) -> Pid {
        Pid {
            node: NodeId::new(SocketAddrV4::new(Ipv4Addr::LOCALHOST, port), 1 << 16),
            serial,
        }
    }

    #[test]
    fn only_the_first_monitor_of_a_remote_pid_asks_its_owner() {
        let mut m = Monitors::default();
        let (a, _ra) = oneshot::channel();
        let (b, _rb) = oneshot::channel();
        assert!(m.watch_remote(pid(1, 1), a));
        assert!(!m.watch_remote(pid(1, 1), b));
    }

    #[test]
    fn node_down_fires_only_that_nodes_monitors() {
        let mut m = Monitors::default();
        let (a, mut ra) = oneshot::channel();
        let (b, mut rb) = oneshot::channel();
        m.watch_remote(pid(1, 1), a);
        m.watch_remote(pid(2, 1), b);
        m.node_down(pid(1, 1).node);
        assert_eq!(ra.try_recv(), Ok(DownReason::NodeDown));
        assert!(rb.try_recv().is_err());
    }

    #[test]
    fn a_local_exit_fires_monitors_and_names_the_watching_nodes() {
        let mut m = Monitors::default();
        let (a, mut ra) = oneshot::channel();
        m.watch_local(5, a);
        let w = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 3);
        m.add_watcher(5, w);
        assert_eq!(m.local_exit(5).into_iter().collect::<Vec<_>>(), vec![w]);
        assert_eq!(ra.try_recv(), Ok(DownReason::Exited));
        assert!(m.local_exit(5).is_empty());
    }
}
