#!/usr/bin/env bash
# Propagation against Erlang `pg`, in pairs: each pair runs the Erlang harness's `prop` unit,
# then at once `meshreg bench groups --only prop` (coordinated backend, one OS process per
# node, current-thread runtimes), so both see the same host. Prints one line per pair and K
# (p50 / p99 of join `all_nodes`, µs) and how many pairs met "no slower than pg".
#
# Usage: scripts/prop_pairs.sh              6 pairs
#        PAIRS=3 scripts/prop_pairs.sh
#        ERLANG=path/to/anchors/erlang scripts/prop_pairs.sh
# Needs `erl` (apt-get install -y erlang-nox). Run nothing else meanwhile: on a small machine
# the host's load moves these latencies more than most changes do.
set -uo pipefail
cd "$(dirname "$0")/.."
pairs=${PAIRS:-6}
erlang=${ERLANG:-../shared/anchors/erlang}
target=${CARGO_TARGET_DIR:-target}
command -v erl >/dev/null || { echo "erl not found: apt-get install -y erlang-nox" >&2; exit 1; }
[ -x "$erlang/run.sh" ] || { echo "no Erlang harness at $erlang (set ERLANG)" >&2; exit 1; }
cargo build --release --locked --bin meshreg >/dev/null || exit 1
bin=$target/release/meshreg
out=$(pwd)/target/bench
mkdir -p "$out"

# The value of metric $2 in Erlang results file $1 ("pg.<metric>  value  unit").
pg_value() { awk -v m="pg.$2" '$1 == m { print $2 }' "$1"; }
# The value of metric $2 in meshreg's flat JSON object $1.
our_value() { grep -o "\"$2\":[0-9.e+-]*" "$1" | cut -d: -f2; }

declare -A met
for i in $(seq 1 "$pairs"); do
  erl_file=$out/prop-pair-$i-erlang.txt
  our_file=$out/prop-pair-$i-meshreg.json
  echo "== pair $i: Erlang" >&2
  (cd "$erlang" && ANCHOR_ONLY=prop ANCHOR_RESULTS="$erl_file" ./run.sh >/dev/null 2>&1) ||
    { echo "the Erlang harness failed (pair $i)" >&2; exit 1; }
  echo "== pair $i: meshreg" >&2
  "$bin" bench groups --backend coordinated --only prop --processes --worker-threads 0 \
    --reference "$erl_file" --json-out "$our_file" --json >/dev/null ||
    { echo "meshreg bench groups failed (pair $i)" >&2; exit 1; }
  for k in 2 4 8; do
    line="pair $i k$k:"
    for q in p50 p99; do
      m=prop.k$k.join.all_nodes.$q
      pg=$(pg_value "$erl_file" "$m")
      ours=$(our_value "$our_file" "$m")
      ok=$(awk -v a="$ours" -v b="$pg" 'BEGIN { print (a != "" && b != "" && a + 0 <= b + 0) ? 1 : 0 }')
      met[k$k.$q]=$(( ${met[k$k.$q]:-0} + ok ))
      line+=$(printf ' %s pg %s ours %s%s' "$q" "$pg" "$ours" "$([ "$ok" = 1 ] && echo ' (met)')")
    done
    echo "$line"
  done
done
for k in 2 4 8; do
  echo "k$k: p50 met in ${met[k$k.p50]:-0} of $pairs pairs, p99 in ${met[k$k.p99]:-0} of $pairs"
done
echo "files: $out/prop-pair-*" >&2
