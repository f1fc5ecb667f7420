#!/usr/bin/env bash
# Runs `meshreg bench groups` for both backends, all nodes in one process and then (for the
# multi-node units) one OS process per node, as the Erlang harness runs its nodes. Prints each
# table (with the Erlang reference) and writes one JSON file per run under target/bench/.
#
# Usage: scripts/bench_groups.sh            full sizes (tens of minutes on 2 cores)
#        SCALE=0.1 scripts/bench_groups.sh  every size x0.1
#        ONLY=prop,bulk scripts/bench_groups.sh
# Run nothing else meanwhile: the figures are CPU-bound on a small machine.
set -uo pipefail
cd "$(dirname "$0")/.."
scale=${SCALE:-1}
only=${ONLY:-}
reference=${REFERENCE:-../shared/anchors/erlang/results.txt}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --bin meshreg >/dev/null || exit 1
bin=$target/release/meshreg
out=target/bench
mkdir -p "$out"
status=0
run() { # name, extra flags...
  local name=$1
  shift
  echo "== $name: bench groups $*" >&2
  "$bin" bench groups --scale "$scale" --reference "$reference" \
    --json-out "$out/$name.json" "$@" || status=1
}
for backend in coordinated gossip; do
  in_process=(--backend "$backend")
  processes=(--backend "$backend" --processes --only "${only:-prop,bulk,nodedown}")
  if [ -n "$only" ]; then
    in_process+=(--only "$only")
  fi
  run "groups-$backend" "${in_process[@]}"
  run "groups-$backend-processes" "${processes[@]}"
done
echo "JSON written to $out/groups-*.json" >&2
exit $status
