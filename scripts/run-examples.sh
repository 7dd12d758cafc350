#!/usr/bin/env bash
# `make run`: validate every example and dry-run each through the engine,
# once to completion and once to compensation.
set -euo pipefail
troupe=${1:-target/release/troupe}
cd "$(dirname "$0")/.."

echo "== validating examples/"
"$troupe" validate examples/*.yaml

run() {
  local title=$1; shift
  echo
  echo "== $title"
  echo "   troupe simulate $*"
  "$troupe" simulate "$@" || true
}

run "order fulfilment: happy path" examples/order-fulfillment.yaml --input @examples/inputs/order-fulfillment.json
run "order fulfilment: dispatch fails, stock released and payment refunded" \
  examples/order-fulfillment.yaml --input @examples/inputs/order-fulfillment.json --fail dispatch=address_invalid
run "loan approval: human review times out, escalates, then declines" \
  examples/loan-approval.yaml --input @examples/inputs/loan-approval.json \
  --respond 'credit-check={"score": 600}' --respond 'route/1/review="timeout"'
run "insurance claim: fraud scoring down, manual review, payout clawed back when closing fails" \
  examples/insurance-claim.yaml --input @examples/inputs/insurance-claim.json \
  --fail fraud-score=scoring_down --fail route/1/settle/0/close=claim_locked
run "travel booking: car fails, hotel then flight cancelled" \
  examples/travel-booking.yaml --input @examples/inputs/travel-booking.json \
  --respond 'flight={"booking_id": "F-1"}' --respond 'hotel={"booking_id": "H-1"}' --fail car=no_cars
run "employee onboarding: cancelled midway" \
  examples/employee-onboarding.yaml --input @examples/inputs/employee-onboarding.json --cancel-after 4

cat <<'TXT'

Where to look next:
  examples/*.yaml               the definitions run above
  docs/workflow-language.md     the language reference
  docs/architecture.md          how the engine works and what it guarantees
  troupe simulate --help        script your own runs (responses, failures, cancel)
TXT
