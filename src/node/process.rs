//! Processes: addressable mailboxes owned by tasks.
//!
//! A [`Process`] is a `Pid` plus the receiving end of its mailbox. Whoever holds it is the
//! process; dropping it ends the process: it leaves every group, its monitors fire, and later
//! messages to its pid are dropped. Mailboxes are unbounded, as Erlang's are: a local send
//! never blocks and never fails while the process lives (back-pressure applies to the network
//! link instead, see `Node::send`).

use std::sync::Weak;

use meshreg_registry::Pid;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::runtime::Shared;

/// A message in a mailbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The sending process, when the sender named one.
    pub from: Option<Pid>,
    /// The bytes sent: postcard for typed sends, as given for raw sends.
    pub body: Vec<u8>,
}

impl Message {
    /// Decodes a message sent with `Node::send` (postcard).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, postcard::Error> {
        postcard::from_bytes(&self.body)
    }
}

/// A process of this node: its pid and its mailbox. Dropping it ends the process.
#[derive(Debug)]
pub struct Process {
    pid: Pid,
    rx: mpsc::UnboundedReceiver<Message>,
    node: Weak<Shared>,
}

impl Process {
    pub(crate) fn new(pid: Pid, rx: mpsc::UnboundedReceiver<Message>, node: Weak<Shared>) -> Self {
        Self { pid, rx, node }
    }

    /// This process's pid: give it to others so they can send to it, or join it to groups.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The next message; `None` once the node shut down.
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await
    }

    /// The next message if one is waiting.
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(node) = self.node.upgrade() {
            node.process_exit(self.pid.serial);
        }
    }
}
