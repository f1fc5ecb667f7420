//! Service discovery with failover: three nodes each run a "pricing" service; a client on the
//! first node calls whichever member it discovers. Then one service node crashes: the client's
//! monitor fires, and the client fails over to a surviving member.
//!
//! Run: `cargo run --example service_discovery`

use std::time::Duration;

use meshreg::{Backend, DownReason, Node, Pid, Profile};
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
enum Pricing {
    Quote {
        item: String,
        reply_to: Pid,
    },
    Price {
        item: String,
        cents: u64,
        by: String,
    },
}

/// A pricing service: a process that joins `shop/pricing` and answers quotes.
async fn start_service(node: &Node) -> anyhow::Result<Pid> {
    let mut p = node.process();
    let pid = p.pid();
    node.join_with_meta("shop", "pricing", pid, node.config().name.as_bytes())
        .await?;
    let node = node.clone();
    tokio::spawn(async move {
        while let Some(msg) = p.recv().await {
            if let Ok(Pricing::Quote { item, reply_to }) = msg.decode() {
                let cents = 100 + item.len() as u64;
                let by = node.config().name.clone();
                let _ = node
                    .send(reply_to, &Pricing::Price { item, cents, by })
                    .await;
            }
        }
    });
    Ok(pid)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let backend = match std::env::args().nth(1).as_deref() {
        Some("coordinated") => Backend::Coordinated,
        _ => Backend::Gossip,
    };
    let secret = b"service-discovery-example".to_vec();
    let mut nodes = Vec::new();
    for i in 0..3 {
        let mut b = Node::builder()
            .name(format!("shop-{i}"))
            .listen("127.0.0.1:0".parse()?)
            .backend(backend)
            .profile(Profile::Test)
            .secret(secret.clone());
        if let Some(first) = nodes.first() {
            let first: &Node = first;
            b = b.seed(first.addr().into());
        }
        nodes.push(b.start().await?);
    }
    for node in &nodes[1..] {
        start_service(node).await?;
    }

    let client_node = nodes[0].clone();
    let mut client = client_node.process();
    // Wait until both services are visible from the client's node.
    while client_node.members("shop", "pricing").len() < 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    for round in 0..6 {
        if round == 3 {
            println!("-- crashing {}", nodes[2].config().name);
            nodes[2].crash().await;
        }
        // Fail over: try discovered members until one answers.
        loop {
            let members = client_node.members("shop", "pricing");
            let Some(&service) = members
                .get(round % members.len().max(1))
                .or(members.first())
            else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let down = client_node.monitor(service);
            let quote = Pricing::Quote {
                item: format!("item-{round}"),
                reply_to: client.pid(),
            };
            client_node.send(service, &quote).await?;
            tokio::select! {
                msg = client.recv() => {
                    if let Some(Ok(Pricing::Price { item, cents, by })) = msg.map(|m| m.decode()) {
                        println!("{item}: {cents} cents (from {by})");
                        break;
                    }
                }
                reason = down => {
                    let why = match reason { DownReason::NodeDown => "its node went down", _ => "it ended" };
                    println!("service {service:?} is gone ({why}); failing over");
                }
                () = tokio::time::sleep(Duration::from_millis(500)) => {
                    println!("no answer from {service:?}; failing over");
                }
            }
        }
    }
    for node in &nodes {
        node.shutdown().await;
    }
    Ok(())
}
