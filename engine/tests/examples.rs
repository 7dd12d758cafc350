//! The seed scenarios in `examples/`, each driven through the state machine
//! to completion and to compensation.

mod common;

use common::*;
use serde_json::json;
use troupe_engine::engine::{EventKind, InstanceStatus::*, StepStatus, TimerKind};

fn task_types(sim: &Sim) -> Vec<String> {
    sim.log
        .iter()
        .filter_map(|e| match e {
            troupe_engine::engine::Effect::DispatchTask(t) => Some(t.task_type.clone()),
            _ => None,
        })
        .collect()
}

fn order() -> Sim {
    Sim::start(
        example("order-fulfillment"),
        json!({"order_id": "o-1", "amount": 129.9, "customer": {"id": "c-42"}}),
    )
}

#[test]
fn order_fulfillment_completes() {
    let mut sim = order();
    assert_eq!(
        sim.task("charge").input,
        json!({"order_id": "o-1", "amount": 129.9, "customer": {"id": "c-42"}})
    );
    sim.complete("charge", json!({"id": "pay-1"}));
    assert_eq!(sim.out(), ["fulfil/0/reserve", "fulfil/1/notify-warehouse"]);
    sim.complete("fulfil/1/notify-warehouse", json!(null));
    sim.complete("fulfil/0/reserve", json!({"reservation": "r-1"}));
    assert_eq!(
        sim.task("dispatch").input["reservation"],
        json!({"reservation": "r-1"})
    );
    sim.complete("dispatch", json!({"tracking": "T-1"}));
    sim.complete("notify", json!(null));
    assert_eq!(sim.finished, Some(Completed));
    assert_eq!(
        sim.inst.output,
        Some(
            json!({"order_id": "o-1", "payment": {"id": "pay-1"}, "reservation": {"reservation": "r-1"}, "shipment": {"tracking": "T-1"}})
        )
    );
}

#[test]
fn order_fulfillment_refunds_and_releases_when_dispatch_fails() {
    let mut sim = order();
    sim.complete("charge", json!({"id": "pay-1"}));
    sim.complete("fulfil/0/reserve", json!("r-1"));
    sim.complete("fulfil/1/notify-warehouse", json!(null));
    sim.fail("dispatch", "address_invalid", true); // non-retryable by policy
    assert_eq!(sim.status(), Compensating);
    assert_eq!(
        sim.task("fulfil/0/reserve/compensate").task_type,
        "inventory.release"
    );
    sim.complete("fulfil/0/reserve/compensate", json!(null));
    let refund = sim.task("charge/compensate").input.clone();
    assert_eq!(refund["payment"], json!({"id": "pay-1"}));
    sim.complete("charge/compensate", json!(null));
    assert_eq!(sim.finished, Some(Compensated));
    assert_eq!(sim.compensated_order, ["fulfil/0/reserve", "charge"]);
    assert_eq!(sim.inst.error.clone().unwrap().code, "address_invalid");
}

#[test]
fn order_fulfillment_declined_card_fails_without_compensation() {
    let mut sim = order();
    sim.fail("charge", "card_declined", true);
    assert_eq!(sim.finished, Some(Failed));
    assert!(sim.compensated_order.is_empty());
}

fn onboarding(remote: bool) -> Sim {
    Sim::start(
        example("employee-onboarding"),
        json!({"name": "Ada", "email": "ada@example.com", "department": "eng", "role": "engineer",
               "start_date": "2026-07-01", "remote": remote, "address": "12 Analytical St"}),
    )
}

fn onboarding_setup(sim: &mut Sim) {
    assert_eq!(
        sim.out(),
        ["setup/0/create-account", "setup/1/hr-record"],
        "IT and HR start together"
    );
    sim.complete("setup/1/hr-record", json!({"record": "h-1"}));
    sim.complete("setup/0/create-account", json!({"account": "a-1"}));
    sim.complete("setup/1/payroll", json!(null));
    sim.complete("setup/0/grant-access", json!(["vpn"]));
}

#[test]
fn onboarding_ships_a_laptop_only_to_remote_hires_and_completes() {
    let mut sim = onboarding(true);
    onboarding_setup(&mut sim);
    sim.complete("laptop/0/ship-laptop", json!({"shipment": "s-1"}));
    assert_eq!(
        sim.humans.get("manager-approval").map(String::as_str),
        Some("managers")
    );
    sim.human("manager-approval", json!({"approved": true}));
    sim.complete("welcome", json!(null));
    assert_eq!(sim.finished, Some(Completed));

    let mut onsite = onboarding(false);
    onboarding_setup(&mut onsite);
    assert_eq!(onsite.step_status("laptop"), StepStatus::Skipped);
    assert!(onsite.humans.contains_key("manager-approval"));
    assert!(!task_types(&onsite).contains(&"it.ship_laptop".to_owned()));
}

#[test]
fn onboarding_rolls_everything_back_when_approval_times_out() {
    let mut sim = onboarding(true);
    onboarding_setup(&mut sim);
    sim.complete("laptop/0/ship-laptop", json!({"shipment": "s-1"}));
    sim.fire(TimerKind::HumanTimeout, "manager-approval");
    assert_eq!(sim.status(), Compensating);
    sim.complete_everything();
    assert_eq!(sim.finished, Some(Compensated));
    assert_eq!(
        sim.compensated_order,
        [
            "laptop/0/ship-laptop",
            "setup/0/grant-access",
            "setup/0/create-account",
            "setup/1/hr-record"
        ],
        "reverse order of completion across both branches"
    );
}

fn loan(score: i64, amount: i64) -> Sim {
    let mut sim = Sim::start(
        example("loan-approval"),
        json!({"applicant": {"id": "a-7", "name": "Grace"}, "amount": amount}),
    );
    sim.complete("credit-check", json!({"score": score}));
    sim
}

#[test]
fn loan_is_approved_automatically_or_by_a_person() {
    let mut auto = loan(800, 20_000);
    assert_eq!(
        auto.inst.vars["decision"],
        json!({"approved": true, "by": "auto"})
    );
    auto.complete("decide/0/disburse", json!({"id": "d-1"}));
    auto.complete("decide/0/book", json!(null));
    assert_eq!(auto.finished, Some(Completed));

    let mut reviewed = loan(600, 20_000);
    assert_eq!(
        reviewed.humans.get("route/1/review").map(String::as_str),
        Some("loan-officers")
    );
    reviewed.human(
        "route/1/review",
        json!({"approved": false, "by": "officer"}),
    );
    assert_eq!(
        reviewed.task("decide/1/reject").task_type,
        "notifications.send"
    );
    reviewed.complete("decide/1/reject", json!(null));
    assert_eq!(reviewed.finished, Some(Completed));
}

#[test]
fn loan_review_escalates_then_declines_on_timeout() {
    let mut sim = loan(600, 90_000);
    sim.fire(TimerKind::HumanTimeout, "route/1/review");
    assert_eq!(
        sim.humans.get("route/1/review").map(String::as_str),
        Some("credit-managers")
    );
    sim.fire(TimerKind::HumanEscalation, "route/1/review");
    assert_eq!(
        sim.inst.vars["decision"],
        json!({"approved": false, "by": "timeout"})
    );
    sim.complete("decide/1/reject", json!(null));
    assert_eq!(sim.finished, Some(Completed));
}

#[test]
fn loan_disbursement_is_reversed_when_booking_is_rejected() {
    let mut sim = loan(800, 20_000);
    sim.complete("decide/0/disburse", json!({"id": "d-1"}));
    sim.fail("decide/0/book", "ledger_rejected", true);
    assert_eq!(
        sim.task("decide/0/disburse/compensate").input["disbursement"],
        json!({"id": "d-1"})
    );
    sim.complete("decide/0/disburse/compensate", json!(null));
    assert_eq!(sim.finished, Some(Compensated));
}

fn claim(amount: i64) -> Sim {
    let mut sim = Sim::start(
        example("insurance-claim"),
        json!({"claim_id": "c-1", "policy_id": "p-1", "amount": amount, "claimant": "x"}),
    );
    sim.complete("validate", json!({"valid": true}));
    sim
}

#[test]
fn low_risk_claims_are_approved_automatically() {
    let mut sim = claim(500);
    sim.complete("fraud-score", json!({"score": 10}));
    sim.complete("route/0/auto-approve", json!(null));
    assert_eq!(sim.finished, Some(Completed));
}

#[test]
fn claims_fall_back_to_manual_review_when_scoring_is_down() {
    let mut sim = claim(500);
    for _ in 0..3 {
        sim.fail("fraud-score", "scoring_unavailable", true);
        if sim.tasks.contains_key("fraud-score") {
            continue;
        }
        if sim.timers.keys().any(|t| t.kind == TimerKind::Retry) {
            sim.fire(TimerKind::Retry, "fraud-score");
        }
    }
    assert_eq!(sim.step_status("fraud-score"), StepStatus::Failed);
    assert_eq!(sim.inst.vars["fraud"]["fallback"], json!(true));
    assert_eq!(
        sim.humans.get("route/1/manual-review").map(String::as_str),
        Some("adjusters")
    );
    sim.human("route/1/manual-review", json!({"approved": true}));
    sim.complete("route/1/settle/0/pay", json!({"payout": "po-1"}));
    sim.complete("route/1/settle/0/close", json!(null));
    assert_eq!(sim.finished, Some(Completed));
}

#[test]
fn a_claim_payout_is_clawed_back_when_closing_fails() {
    let mut sim = claim(5000);
    sim.complete("fraud-score", json!({"score": 50}));
    sim.human("route/1/manual-review", json!({"approved": true}));
    sim.complete("route/1/settle/0/pay", json!({"payout": "po-1"}));
    sim.fail("route/1/settle/0/close", "claim_locked", true);
    assert_eq!(
        sim.task("route/1/settle/0/pay/compensate").task_type,
        "payments.clawback"
    );
    sim.complete("route/1/settle/0/pay/compensate", json!(null));
    assert_eq!(sim.finished, Some(Compensated));
}

#[test]
fn invalid_claims_are_not_retried() {
    let mut sim = Sim::start(
        example("insurance-claim"),
        json!({"claim_id": "c", "policy_id": "p", "amount": 1, "claimant": "x"}),
    );
    sim.fail("validate", "invalid_claim", true);
    assert_eq!(sim.finished, Some(Failed));
}

fn trip() -> Sim {
    Sim::start(
        example("travel-booking"),
        json!({"trip_id": "t-1", "traveller": {"name": "Ada"}, "origin": "LHR", "destination": "JFK", "depart_on": "2026-09-14", "return_on": "2026-09-21"}),
    )
}

#[test]
fn travel_booking_books_everything() {
    let mut sim = trip();
    for (path, id) in [("flight", "F1"), ("hotel", "H1"), ("car", "C1")] {
        sim.complete(path, json!({"booking_id": id}));
    }
    sim.complete("confirm", json!(null));
    assert_eq!(sim.finished, Some(Completed));
}

#[test]
fn travel_booking_cancels_what_was_booked_when_the_car_fails() {
    let mut sim = trip();
    sim.complete("flight", json!({"booking_id": "F1"}));
    sim.complete("hotel", json!({"booking_id": "H1"}));
    sim.fail("car", "no_cars", false);
    assert_eq!(
        sim.task("hotel/compensate").input["booking_id"],
        json!("H1")
    );
    sim.complete("hotel/compensate", json!(null));
    assert_eq!(
        sim.task("flight/compensate").input["booking_id"],
        json!("F1")
    );
    sim.complete("flight/compensate", json!(null));
    assert_eq!(sim.finished, Some(Compensated));
    assert_eq!(sim.compensated_order, ["hotel", "flight"]);
}

#[test]
fn travel_booking_cancel_request_rolls_back() {
    let mut sim = trip();
    sim.complete("flight", json!({"booking_id": "F1"}));
    sim.apply(EventKind::CancelRequested {
        reason: "trip called off".into(),
    });
    sim.fail("hotel", "cancelled", false);
    sim.complete("flight/compensate", json!(null));
    assert_eq!(sim.finished, Some(Cancelled));
}
