#!/usr/bin/env bash
# `make run`: start a single node with the examples deployed and print how to
# use it. Ctrl-C stops it; data stays in .troupe-data/ between runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${CARGO_TARGET_DIR:-target}/release
config=cluster-config/single.toml
addr=127.0.0.1:8080

"$bin/troupe-node" --config "$config" &
node=$!
trap 'kill $node 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 100); do
  curl -sf "http://$addr/readyz" >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<TXT

Troupe is running: http://$addr   (metrics: http://$addr/metrics; native protocol: 127.0.0.1:7070)
Deployed: $(curl -s "http://$addr/v1/definitions" | tr -d '\n' | grep -o '"name":"[^"]*"' | cut -d'"' -f4 | sort -u | tr '\n' ' ')

Try (the CLI is $bin/troupe; add --json for scripts):
  $bin/troupe start hello --id hello-1 --input @examples/inputs/hello.json
  $bin/troupe signal hello-1 go --payload '{"mood": "great"}'
  $bin/troupe human-tasks --assignee reviewers
  $bin/troupe human-tasks complete <task id> --payload '{"approved": true}'
  $bin/troupe show hello-1
  $bin/troupe list
  $bin/troupe start hello --id hello-2 --input '{"name": "Bob"}' && $bin/troupe cancel hello-2

Or with curl:
  curl -s -XPOST http://$addr/v1/workflows -d '{"definition":"hello","id":"hello-3","input":{"name":"Cy"}}'
  curl -s http://$addr/v1/workflows/hello-3/history

The other examples (order-fulfillment, ...) call task types served by workers.
Start one, then start orders:
  cargo run --release -p troupe-client --example order_worker -- 127.0.0.1:7070
  python3 examples/workers/order_worker.py http://$addr
  $bin/troupe start order-fulfillment --id order-1 --input @examples/inputs/order-fulfillment.json
Dry-run any example offline with: make simulate
Stop with Ctrl-C.
TXT
wait $node
