//! Property suites of the session shard: a reference model, replication convergence, and
//! failover durability (issue 5's "acknowledged writes survive; retries are definite and
//! applied once").

mod model;
mod props;
