//! The `troupe` binary, run as a process.

use std::process::Command;

fn troupe(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_troupe"))
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("run troupe");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (
        out.status.code().unwrap_or(-1),
        text(out.stdout),
        text(out.stderr),
    )
}

#[test]
fn validate_accepts_every_example_with_a_summary() {
    let examples: Vec<String> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
            .map(|p| format!("examples/{}", p.file_name().unwrap().to_string_lossy()))
            .collect();
    assert_eq!(examples.len(), 6);
    let args: Vec<&str> = std::iter::once("validate")
        .chain(examples.iter().map(String::as_str))
        .collect();
    let (code, stdout, _) = troupe(&args);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(stdout.lines().count(), 6);
    assert!(stdout.contains("examples/order-fulfillment.yaml: ok: order-fulfillment v1: 6 steps (1 parallel, 5 task)"), "{stdout}");
}

#[test]
fn validate_prints_every_error_with_its_path_and_fails() {
    let dir = std::env::temp_dir().join(format!("troupe-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("bad.yaml");
    std::fs::write(
        &bad,
        "name: bad\nversion: 1\nsteps:\n  - { id: a, task: x, retry: { multiplier: 0 } }\n  - { id: a, await: ev }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = troupe(&["validate", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let lines: Vec<&str> = stdout.lines().collect();
    let shown = bad.display().to_string();
    assert_eq!(
        lines,
        [
            format!("{shown}: steps[0].retry.multiplier: must be >= 1"),
            format!(
                "{shown}: steps[1].timeout: is required: a step that waits needs a timeout (write `never` to wait forever)"
            ),
            format!("{shown}: steps[1].id: duplicate step id \"a\" (first at steps[0])"),
        ]
    );
    assert!(stderr.contains("3 error(s)"));
    let (code, stdout, _) = troupe(&["validate", "--json", bad.to_str().unwrap()]);
    assert_eq!(code, 1);
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report[0]["errors"][0]["path"], "steps[0].retry.multiplier");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn validate_reports_unreadable_files() {
    let (code, _, stderr) = troupe(&["validate", "no/such/file.yaml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("reading no/such/file.yaml"), "{stderr}");
}

#[test]
fn simulate_runs_to_completion_and_to_compensation() {
    let input = "@examples/inputs/travel-booking.json";
    let booked = |step: &str| format!("{step}={{\"booking_id\": \"{step}-1\"}}");
    let (flight, hotel, car) = (booked("flight"), booked("hotel"), booked("car"));
    let (code, stdout, _) = troupe(&[
        "simulate",
        "examples/travel-booking.yaml",
        "--input",
        input,
        "--respond",
        &flight,
        "--respond",
        &hotel,
        "--respond",
        &car,
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.contains("status: completed\noutput: {"), "{stdout}");
    let (code, stdout, _) = troupe(&[
        "simulate",
        "examples/travel-booking.yaml",
        "--input",
        input,
        "--respond",
        "flight={\"booking_id\": \"F-1\"}",
        "--fail",
        "hotel=sold_out",
    ]);
    assert_eq!(code, 3);
    let cancel = stdout
        .lines()
        .position(|l| l.contains("dispatch flight/compensate#1 (travel.cancel_flight)"));
    assert!(cancel.is_some(), "{stdout}");
    assert!(stdout.contains("status: compensated"));
    assert!(stdout.contains("error: sold_out (scripted failure) at hotel"));
}
