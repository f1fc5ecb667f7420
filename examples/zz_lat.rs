use meshreg::{Backend, Node, Policy, Profile};
use std::time::{Duration, Instant};
#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mk = |seed: Option<std::net::SocketAddr>, role: bool| {
        let mut b = Node::builder()
            .listen("127.0.0.1:0".parse().unwrap())
            .backend(Backend::Coordinated)
            .profile(Profile::Lan)
            .secret(b"0123456789abcdefghij".to_vec());
        if role {
            b = b.role("session");
        }
        if let Some(s) = seed {
            b = b.seed(s);
        }
        b.start()
    };
    let a = mk(None, true).await.unwrap();
    let b = mk(Some(a.addr().into()), true).await.unwrap();
    let c = mk(Some(a.addr().into()), false).await.unwrap();
    while c.members(meshreg::node::ROLES_SCOPE, "session").len() < 2
        || a.members(meshreg::node::ROLES_SCOPE, "session").len() < 2
        || b.members(meshreg::node::ROLES_SCOPE, "session").len() < 2
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = a.process();
    let s = a.sessions();
    for round in 0..3 {
        let t = Instant::now();
        let mut lats = vec![];
        for k in 0..500u64 {
            let t1 = Instant::now();
            s.register(k + round * 1000, p.pid(), Policy::Reject)
                .await
                .unwrap();
            lats.push(t1.elapsed().as_micros());
        }
        lats.sort();
        println!(
            "register: {:?} per call; p50 {} p99 {}",
            t.elapsed() / 500,
            lats[250],
            lats[495]
        );
        let t = Instant::now();
        for k in 0..500u64 {
            s.lookup(k).await.unwrap();
        }
        println!("lookup: {:?} per call", t.elapsed() / 500);
    }
    println!("{:?}", c.stats());
}
