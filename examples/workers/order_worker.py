#!/usr/bin/env python3
"""A worker for examples/order-fulfillment.yaml over HTTP, with only the
Python standard library: long-poll for tasks, run them, report the outcome.

    python3 examples/workers/order_worker.py [http://127.0.0.1:8080]

An order whose customer has "address": "nowhere" fails shipping.dispatch with
the non-retryable address_invalid, which rolls the order back.
"""
import json
import sys
import time
import urllib.error
import urllib.request

BASE = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8080"
TYPES = [
    "payments.charge", "payments.refund", "inventory.reserve", "inventory.release",
    "warehouse.notify", "shipping.dispatch", "shipping.cancel", "notifications.send",
]


def post(path, body):
    request = urllib.request.Request(
        BASE + path, data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=70) as response:
            return json.load(response)
    except urllib.error.HTTPError as e:
        if e.code in (429, 503):  # overloaded: back off as the node asks
            time.sleep(float(e.headers.get("Retry-After", "1")))
            return None
        raise


def run(task):
    """Returns (output, None) or (None, (code, message, retryable))."""
    kind, data, key = task["task_type"], task["input"], task["idempotency_key"]
    if kind == "payments.charge":
        return {"charge_id": "ch-" + key, "amount": data.get("amount")}, None
    if kind == "inventory.reserve":
        return {"reservation_id": "rsv-" + str(data.get("order_id"))}, None
    if kind == "shipping.dispatch":
        if data.get("customer", {}).get("address") == "nowhere":
            return None, ("address_invalid", "no such address", False)
        return {"tracking": "trk-" + str(data.get("order_id"))}, None
    return {"done": kind}, None


def main():
    print("python worker polling", BASE, flush=True)
    while True:
        answer = post("/v1/tasks/poll",
                      {"worker": "python-order-worker", "task_types": TYPES, "max": 8, "wait_ms": 20000})
        for task in (answer or {}).get("tasks", []):
            output, error = run(task)
            token = task["token"]
            if error is None:
                result = post(f"/v1/tasks/{token}/complete", {"output": output})
            else:
                code, message, retryable = error
                result = post(f"/v1/tasks/{token}/fail",
                              {"code": code, "message": message, "retryable": retryable})
            print(f"{task['task_type']:<20} {task['workflow_id']} attempt {task['attempt']}"
                  f" accepted={result and result['accepted']}", flush=True)


if __name__ == "__main__":
    main()
