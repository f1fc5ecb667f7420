//! The smallest complete meshreg program: two nodes on loopback, a process on one joins a
//! group, the other discovers it and sends it a message.
//!
//! Run: `cargo run --example two_nodes`

use std::time::Duration;

use meshreg::{Node, Profile};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secret = b"two-nodes-example-secret".to_vec();
    let a = Node::builder()
        .name("a")
        .listen("127.0.0.1:0".parse()?)
        .profile(Profile::Test)
        .secret(secret.clone())
        .start()
        .await?;
    let b = Node::builder()
        .name("b")
        .listen("127.0.0.1:0".parse()?)
        .seed(a.addr().into())
        .profile(Profile::Test)
        .secret(secret)
        .start()
        .await?;

    // A process on `a` offers the "greeter" service.
    let mut greeter = a.process();
    a.join("example", "greeter", greeter.pid()).await?;

    // `b` discovers it through its own, local view of the group.
    let found = loop {
        if let Some(&pid) = b.members("example", "greeter").first() {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    b.send(found, &"hello from b".to_string()).await?;

    let msg = greeter.recv().await.expect("a is running");
    println!("greeter on a got: {}", msg.decode::<String>()?);

    b.shutdown().await;
    a.shutdown().await;
    Ok(())
}
