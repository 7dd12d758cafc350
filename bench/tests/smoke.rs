//! The harness end to end against a node it starts (the debug build): each
//! kind of scenario runs, and its correctness check holds. Figures are not
//! asserted here; `make bench` measures them on a release build.

use serde_json::Value;
use std::process::Command;

fn run(args: &[&str]) -> Value {
    let out = std::env::temp_dir().join(format!(
        "troupe-bench-smoke-{}-{}.json",
        std::process::id(),
        args.join("-").replace(['/', ' '], "_")
    ));
    let status = Command::new(env!("CARGO_BIN_EXE_troupe-bench"))
        .args(["run", "--warmup", "0s", "--duration", "30s"])
        .args(args)
        .args(["--out", out.to_str().unwrap()])
        .status()
        .expect("run troupe-bench");
    assert!(status.success(), "troupe-bench {args:?} failed");
    let result = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let _ = std::fs::remove_file(out);
    result
}

#[test]
fn scenarios_run_and_every_instance_ends_exactly_once() {
    for (scenario, count) in [
        ("noop", "300"),
        ("workers", "200"),
        ("saga", "100"),
        ("fanout", "50"),
        ("signal", "100"),
    ] {
        let r = run(&[
            "--scenario",
            scenario,
            "--concurrency",
            "16",
            "--count",
            count,
        ]);
        let c = &r["correctness"];
        assert_eq!(c["ok"], true, "{scenario}: {r:#}");
        assert_eq!(
            c["started"].as_u64(),
            Some(count.parse().unwrap()),
            "{scenario}"
        );
        assert!(
            r["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
            "{scenario}: {r:#}"
        );
        assert!(
            r["transitions_per_s"].as_f64().unwrap() > 0.0,
            "{scenario}: {r:#}"
        );
    }
}

#[test]
fn open_loop_and_waiting_instances_report_memory() {
    let r = run(&["--scenario", "noop", "--rate", "200", "--count", "200"]);
    assert_eq!(r["load"]["mode"], "open");
    assert_eq!(r["correctness"]["ok"], true, "{r:#}");
    let t = run(&[
        "--scenario",
        "timers",
        "--concurrency",
        "32",
        "--count",
        "2000",
        "--kill-restart",
    ]);
    assert_eq!(t["correctness"]["ok"], true, "{t:#}");
    assert!(t["memory_per_waiting_instance_bytes"].is_u64(), "{t:#}");
    // The whole node over 2,000 waiting instances: tens of kilobytes each.
    assert!(
        t["node_rss_per_waiting_instance_bytes"].as_u64().unwrap() > 1024,
        "{t:#}"
    );
    assert!(t["restart_after_kill_s"].as_f64().unwrap() > 0.0, "{t:#}");
    assert!(
        t["list_rare_page_ms"]["median"].as_f64().unwrap() > 0.0,
        "{t:#}"
    );
}

/// Runs a `troupe-bench` subcommand that prints one JSON object.
fn json_of(args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_troupe-bench"))
        .args(args)
        .output()
        .expect("run troupe-bench");
    assert!(
        out.status.success(),
        "troupe-bench {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn big_instance_scenarios_run_to_their_end() {
    let map = json_of(&[
        "bigmap",
        "--items",
        "2000",
        "--concurrency",
        "100",
        "--shards",
        "4",
    ]);
    assert_eq!(map["total"], 2000.0, "{map:#}");
    assert!(map["per_s"].as_f64().unwrap() > 0.0, "{map:#}");
    assert!(map["journal_mb"].as_f64().unwrap() > 0.0, "{map:#}");
    let long = json_of(&["longlived", "--iterations", "200", "--shards", "4"]);
    assert_eq!(long["total"], 200.0, "{long:#}");
    assert!(long["last_tenth_per_s"].as_f64().unwrap() > 0.0, "{long:#}");
    assert!(long["read_old_ms"].as_f64().unwrap() > 0.0, "{long:#}");
}

#[test]
fn a_refused_start_is_counted_as_refused_not_lost() {
    // One shard that takes one command at a time refuses many of 64
    // concurrent starts as overloaded (the client does not retry here);
    // those created nothing.
    let r = run(&[
        "--attempts",
        "1",
        "--scenario",
        "noop",
        "--concurrency",
        "64",
        "--count",
        "2000",
        "--shards",
        "1",
        "--node-toml",
        "[limits]\nmax-pending-per-shard = 1\n",
    ]);
    let c = &r["correctness"];
    let refused = c["refused"].as_u64().unwrap();
    assert!(refused > 0, "{r:#}");
    assert_eq!(
        r["errors"]["start_refused"].as_u64(),
        Some(refused),
        "{r:#}"
    );
    assert_eq!(c["lost"], 0, "{r:#}");
    assert_eq!(c["ok"], true, "{r:#}");
    assert_eq!(
        c["finished_on_node"].as_f64(),
        Some((c["started"].as_u64().unwrap() - refused) as f64),
        "{r:#}"
    );
}
