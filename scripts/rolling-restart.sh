#!/usr/bin/env bash
# Restarts every node of a running loopback cluster in turn, one at a time,
# without failed requests: each node is stopped with SIGTERM (it hands the
# shards it leads to other replicas first), started again on its data dir,
# and the next one waits until every shard has a leader and no replica is
# moving. docs/operations.md explains each step.
#
#   scripts/rolling-restart.sh [CONFIG] [NODE_IDS...]
#   (default: cluster-config/local-3.toml, nodes 1 2 3)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/release
config=${1:-cluster-config/local-3.toml}
shift || true
nodes=("$@")
[ ${#nodes[@]} -gt 0 ] || nodes=(1 2 3)
mkdir -p .troupe-data

# The HTTP address of node N, from the config.
http_of() {
  awk -v id="$1" '
    /^\[\[cluster\.(members|spares)\]\]/ { in_member = 1; this = ""; next }
    in_member && /^id *=/ { gsub(/[^0-9]/, "", $0); this = $0 }
    in_member && /^http-addr/ && this == id { gsub(/.*= *"|".*/, "", $0); print; exit }
  ' "$config"
}

# Waits until node N answers and sees every shard led with nothing moving.
wait_settled() {
  local addr=$1
  for _ in $(seq 1 600); do
    if view=$(curl -sf "http://$addr/v1/cluster" 2>/dev/null) &&
       python3 -c '
import json, sys
v = json.loads(sys.argv[1])
led = all(s.get("leader") is not None for s in v["shards"])
sys.exit(0 if led and not v.get("moves_in_progress") else 1)' "$view"; then
      return 0
    fi
    sleep 0.1
  done
  echo "node at $addr did not settle" >&2
  return 1
}

for n in "${nodes[@]}"; do
  addr=$(http_of "$n")
  [ -n "$addr" ] || { echo "node $n is not in $config" >&2; exit 1; }
  pid=$(pgrep -f -- "--config $config --node-id $n( |\$)" || true)
  if [ -n "$pid" ]; then
    echo "node $n (pid $pid): handing off its shards and stopping"
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  fi
  echo "node $n: starting again"
  nohup "$bin/troupe-node" --config "$config" --node-id "$n" \
    >>".troupe-data/cluster-node-$n.log" 2>&1 &
  wait_settled "$addr"
  echo "node $n: back, every shard led"
done
echo "rolling restart done"
