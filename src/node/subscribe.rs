//! Event streams: group monitors and cluster membership.
//!
//! A subscription is registered under the node's state lock together with the snapshot it
//! starts from, so the snapshot plus the stream's events always equal the current state: no
//! event is missed or seen twice. Streams are unbounded: the node never blocks on a slow
//! subscriber, and a dropped subscription is pruned at its next event.

use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use meshreg_registry::Pid;
use tokio::sync::mpsc;

/// An ordered stream of events, until dropped. Also usable without `Stream` through
/// [`Subscription::recv`].
#[derive(Debug)]
pub struct Subscription<T> {
    rx: mpsc::UnboundedReceiver<T>,
}

impl<T> Subscription<T> {
    pub(crate) fn new(rx: mpsc::UnboundedReceiver<T>) -> Self {
        Self { rx }
    }

    /// The next event; `None` once the node shut down.
    pub async fn recv(&mut self) -> Option<T> {
        self.rx.recv().await
    }

    /// The next event if one is waiting.
    pub fn try_recv(&mut self) -> Option<T> {
        self.rx.try_recv().ok()
    }
}

impl<T> Stream for Subscription<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.rx.poll_recv(cx)
    }
}

/// A member of a group as a monitor snapshot lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MemberInfo {
    /// The process.
    pub pid: Pid,
    /// Its metadata for this membership.
    pub meta: Vec<u8>,
}

/// Subscribers of one kind of event, pruned as they drop.
pub(crate) struct Subscribers<T> {
    txs: Vec<mpsc::UnboundedSender<T>>,
}

impl<T> Default for Subscribers<T> {
    fn default() -> Self {
        Self { txs: Vec::new() }
    }
}

impl<T: Clone> Subscribers<T> {
    pub(crate) fn subscribe(&mut self) -> Subscription<T> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.txs.push(tx);
        Subscription::new(rx)
    }

    /// Sends to every live subscriber; returns false when none is left (the owner may drop us).
    pub(crate) fn publish(&mut self, event: &T) -> bool {
        self.txs.retain(|tx| tx.send(event.clone()).is_ok());
        !self.txs.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dropped_subscription_is_pruned_at_the_next_event() {
        let mut subs = Subscribers::default();
        let mut keep = subs.subscribe();
        let gone = subs.subscribe();
        drop(gone);
        assert!(subs.publish(&1));
        assert_eq!(subs.txs.len(), 1);
        assert_eq!(keep.try_recv(), Some(1));
        drop(keep);
        assert!(!subs.publish(&2));
    }
}
