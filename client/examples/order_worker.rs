//! A worker for every task type of `examples/order-fulfillment.yaml`.
//!
//! ```sh
//! cargo run --release -p troupe-client --example order_worker -- 127.0.0.1:7070
//! ```
//!
//! The "services" here only log and answer; each answer carries the
//! idempotency key, the one a real service would deduplicate on. An order
//! whose customer has `"address": "nowhere"` fails `shipping.dispatch` with
//! the non-retryable `address_invalid`, which rolls the order back.

use serde_json::{Value, json};
use troupe_client::{Client, Task, TaskError, Worker};

/// Answers a task after logging it.
async fn answer(task: Task, output: Value) -> Result<Value, TaskError> {
    println!(
        "{:<20} {} attempt {} ({})",
        task.task_type, task.workflow_id, task.attempt, task.idempotency_key
    );
    Ok(output)
}

#[tokio::main]
async fn main() -> Result<(), troupe_client::Error> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:7070".into());
    let client = Client::connect(addr).await?;
    Worker::new(&client, "order-worker")
        .concurrency(32)
        .handle("payments.charge", |t| {
            let charge = json!({ "charge_id": format!("ch-{}", t.idempotency_key), "amount": t.input["amount"] });
            answer(t, charge)
        })
        .handle("payments.refund", |t| {
            let refund = json!({ "refunded": t.input["payment"]["charge_id"] });
            answer(t, refund)
        })
        .handle("inventory.reserve", |t| {
            let reservation = json!({ "reservation_id": format!("rsv-{}", t.input["order_id"].as_str().unwrap_or("?")) });
            answer(t, reservation)
        })
        .handle("inventory.release", |t| answer(t, json!({ "released": true })))
        .handle("warehouse.notify", |t| answer(t, json!({ "notified": true })))
        .handle("shipping.dispatch", |t| async move {
            if t.input["customer"]["address"] == "nowhere" {
                return Err(TaskError::permanent("address_invalid", "no such address"));
            }
            let shipment = json!({ "tracking": format!("trk-{}", t.input["order_id"].as_str().unwrap_or("?")) });
            answer(t, shipment).await
        })
        .handle("shipping.cancel", |t| answer(t, json!({ "cancelled": true })))
        .handle("notifications.send", |t| answer(t, json!({ "sent": true })))
        .run()
        .await
}
