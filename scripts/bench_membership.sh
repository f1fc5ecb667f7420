#!/usr/bin/env bash
# Runs the membership benchmark set of the README and prints one line per run.
# Usage: scripts/bench_membership.sh [quick|full]   (full adds the 10,000-node run, ~4-6 min)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked --bin meshreg >/dev/null
bin=target/release/meshreg
runs=(
  "--membership swim --nodes 100 --profile lan --boot announce"
  "--membership swim --nodes 1000 --profile lan --boot announce"
  "--membership swim --nodes 2000 --profile lan --boot announce"
  "--membership swim --nodes 1000 --profile lan --boot preseed --scenario crash-one"
  "--membership swim --nodes 1000 --profile lan --boot preseed --scenario crash-one --loss 0.05"
  "--membership swim --nodes 1000 --profile lan --boot announce --scenario crash-one"
  "--membership swim --nodes 1000 --profile lan --boot preseed --scenario partition-half"
  "--membership swim --nodes 1000 --profile lan --boot preseed --scenario churn"
  "--membership swim --nodes 100 --profile lan --boot preseed --scenario crash-one"
  "--membership mesh --nodes 100 --profile lan --boot preseed --scenario crash-one"
  "--membership swim --nodes 500 --profile lan --boot preseed --scenario crash-one"
  "--membership mesh --nodes 500 --profile lan --boot preseed --scenario crash-one"
)
if [ "${1:-quick}" = full ]; then
  runs+=("--membership swim --nodes 10000 --boot preseed --duration-s 60 --profile lan --scenario crash-one")
fi
for r in "${runs[@]}"; do
  json=$($bin sim $r --json)
  python3 - "$r" "$json" <<'PY'
import json, sys
args, d = sys.argv[1], json.loads(sys.argv[2])
keys = ["converged", "membership_convergence_ms", "detect_down_ms", "recovery_ms", "false_down",
        "msgs_per_node_per_s", "bytes_per_node_per_s", "bytes_per_node_per_s_max", "wall_s", "peak_rss_mb"]
def f(v):
    return f"{v:.1f}" if isinstance(v, float) else str(v)
print(f"meshreg sim {args} | " + " ".join(f"{k}={f(d[k])}" for k in keys))
PY
done
