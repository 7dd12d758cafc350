#!/usr/bin/env bash
# `make cluster`: start the three-node loopback cluster of
# cluster-config/local-3.toml with the examples deployed, and print how to
# use it. Ctrl-C stops every node; data stays in .troupe-data/.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/release
config=cluster-config/local-3.toml
mkdir -p .troupe-data
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT INT TERM
for n in 1 2 3; do
  "$bin/troupe-node" --config "$config" --node-id "$n" >".troupe-data/cluster-node-$n.log" 2>&1 &
  pids+=($!)
done
for n in 1 2 3; do
  for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:808$n/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
done
sleep 1

cat <<TXT

A three-node Troupe cluster is running (every shard on all three nodes):
  node 1: http://127.0.0.1:8081  native 127.0.0.1:7071   pid ${pids[0]}
  node 2: http://127.0.0.1:8082  native 127.0.0.1:7072   pid ${pids[1]}
  node 3: http://127.0.0.1:8083  native 127.0.0.1:7073   pid ${pids[2]}
Logs: .troupe-data/cluster-node-N.log

Which node leads which shards:
  $bin/troupe --addr 127.0.0.1:8081 cluster

Any node takes any request:
  curl -s -XPOST http://127.0.0.1:8082/v1/workflows -d '{"definition":"hello","id":"hello-1","input":{"name":"Ann"}}'
  curl -s http://127.0.0.1:8083/v1/workflows/hello-1

Kill a node (kill -9 <pid>) and watch its shards move; restart it with
  $bin/troupe-node --config $config --node-id N
Grow it: a fourth node joins and takes its share of shards
  $bin/troupe-node --config $config --node-id 4 --join 127.0.0.1:8081 &
Drain, remove, restart every node in turn (docs/operations.md):
  $bin/troupe --addr 127.0.0.1:8081 cluster drain 2
  $bin/troupe --addr 127.0.0.1:8081 cluster remove 2
  scripts/rolling-restart.sh $config 1 3 4
Load it with:
  $bin/troupe-bench run --cluster 127.0.0.1:7071,127.0.0.1:7072,127.0.0.1:7073 --scenario noop --concurrency 64 --duration 30s
Stop with Ctrl-C.
TXT
wait
