//! Bad input of every kind gets a clear error with a stable code, and the
//! node keeps serving.

mod common;

use common::TestNode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_stable_codes_and_change_nothing() {
    let t = TestNode::start().await;
    let api = &t.api;

    // Invalid definitions: 400 with every error and its path.
    let (status, body) = api
        .send("PUT", "/v1/definitions", Some("name: bad\nversion: 1\nsteps:\n  - { id: a, task: x, retry: { multiplier: 0 } }\n  - { id: a, await: e }\n".into()))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_definition"))
    );
    let paths: Vec<&str> = body["details"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "steps[0].retry.multiplier",
            "steps[1].timeout",
            "steps[1].id"
        ]
    );
    let (status, body) = api
        .send("PUT", "/v1/definitions", Some("{ not json".into()))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_definition"))
    );
    let (status, _) = api
        .send(
            "PUT",
            "/v1/definitions",
            Some(String::from_utf8_lossy(&[0xff, 0xfe, 0x00]).into_owned()),
        )
        .await;
    assert_eq!(status, 400);
    let (status, _) = api.get("/v1/definitions/bad").await;
    assert_eq!(status, 404, "nothing was stored");

    // Unknown names: 404.
    let (status, body) = api
        .post("/v1/workflows", json!({"definition": "nope", "input": {}}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("definition_not_found"))
    );
    let (status, body) = api.get("/v1/workflows/missing").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("workflow_not_found"))
    );
    let (status, body) = api
        .post("/v1/workflows/missing/signals/go", json!({}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("workflow_not_found"))
    );
    let (status, body) = api.get("/v1/workflows/missing/history").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("workflow_not_found"))
    );
    let (status, body) = api.post("/v1/incidents/incident-0/retry", json!({})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("incident_not_found"))
    );
    let (status, body) = api.get("/v1/no/such/route").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));

    // Garbage JSON and unknown fields: 400.
    let (status, body) = api
        .send("POST", "/v1/workflows", Some("{\"definition\": ".into()))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    let (status, body) = api
        .post("/v1/workflows", json!({"definition": "x", "inptu": {}}))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );
    assert!(body["message"].as_str().unwrap().contains("inptu"));
    let (status, _) = api.get("/v1/workflows?limit=many").await;
    assert_eq!(status, 400);

    // Oversized bodies: 413.
    let huge = format!(
        "{{\"definition\": \"x\", \"input\": \"{}\"}}",
        "x".repeat(2 << 20)
    );
    // On its own client: the node closes a connection after refusing a body
    // midway, and a pooled connection closed that way would fail the next call.
    let once = common::Api::new(&api.base);
    let (status, body) = once.send("POST", "/v1/workflows", Some(huge)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("payload_too_large"))
    );

    // A known id with another input: 409.
    api.deploy("name: ok\nversion: 1\nsteps:\n  - { id: a, wait: 1h }\n")
        .await;
    api.start("ok", "same", json!({"n": 1})).await;
    let (status, body) = api
        .post(
            "/v1/workflows",
            json!({"definition": "ok", "id": "same", "input": {"n": 2}}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("workflow_conflict"))
    );
    let (status, body) = api
        .post(
            "/v1/workflows",
            json!({"definition": "ok", "id": "", "input": {}}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_request"))
    );

    // Still serving, and the instance is intact.
    let (status, _) = api.get("/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(api.workflow("same").await["input"], json!({"n": 1}));
}

#[test]
fn configs_are_validated_with_clear_errors() {
    use troupe_node::Config;
    let base = "node-id = 1\ndata-dir = \"/tmp/x\"\nhttp-addr = \"127.0.0.1:1\"\nnative-addr = \"127.0.0.1:2\"\n";
    assert!(Config::from_toml(base).is_ok());
    let err = Config::from_toml(&format!("{base}shards = 0\n"))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "config: shards: must be between 1 and 4096");
    let err = Config::from_toml(&format!("{base}colour = \"blue\"\n"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown field") && err.contains("colour"),
        "{err}"
    );
    let err = Config::from_toml(&format!("{base}[engine]\npassivate-after = \"soon\"\n"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("invalid duration"), "{err}");
    let err = Config::from_toml(&base.replace("node-id = 1", "node-id = 0"))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "config: node-id: must be >= 1");
    let err = Config::from_toml(&format!("{base}[limits]\nmax-starts-in-flight = 0\n"))
        .unwrap_err()
        .to_string();
    assert_eq!(err, "config: limits.max-starts-in-flight: must be >= 1");
    let retention =
        |value: &str| Config::from_toml(&format!("{base}[storage]\nretention = {value}\n"));
    assert_eq!(
        Config::from_toml(base).unwrap().storage.retention,
        Some(std::time::Duration::from_secs(7 * 86_400)),
        "a week by default"
    );
    assert_eq!(retention("\"never\"").unwrap().storage.retention, None);
    // The cap on background writes: low on a single node, higher on a
    // cluster node, whatever is set when set.
    assert_eq!(Config::from_toml(base).unwrap().background_write_mb(), 16);
    let set = Config::from_toml(&format!("{base}[storage]\nbackground-write-mb = 0\n"));
    assert_eq!(set.unwrap().background_write_mb(), 0);
    assert_eq!(
        retention("\"90s\"").unwrap().storage.retention,
        Some(std::time::Duration::from_secs(90))
    );
    let err = retention("\"0s\"").unwrap_err().to_string();
    assert_eq!(
        err,
        "config: storage.retention: must be >= 1s (or \"never\")"
    );
    let err = retention("\"forever\"").unwrap_err().to_string();
    assert!(
        err.contains("invalid duration \"forever\" (or \"never\")"),
        "{err}"
    );
}

#[test]
fn every_ready_made_topology_loads() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../cluster-config");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            // A cluster's file serves every member, chosen by `--node-id`.
            let text = std::fs::read_to_string(&path).unwrap();
            let ids: Vec<u64> = if text.contains("[cluster]") {
                vec![1, 2, 3]
            } else {
                vec![0]
            };
            let mut data_dirs = std::collections::HashSet::new();
            for id in ids {
                let overrides = troupe_node::Overrides {
                    node_id: (id > 0).then_some(id),
                    ..Default::default()
                };
                let config = troupe_node::Config::load(&path, &overrides)
                    .unwrap_or_else(|e| panic!("{} (node {id}): {e}", path.display()));
                assert!(
                    data_dirs.insert(config.data_dir.clone()),
                    "members share a data dir"
                );
                let cap = if id > 0 { 64 } else { 16 };
                assert_eq!(config.background_write_mb(), cap, "{}", path.display());
                for file in &config.deploy {
                    assert!(
                        file.exists(),
                        "{} deploys missing {}",
                        path.display(),
                        file.display()
                    );
                }
            }
            if text.contains("[[cluster.spares]]") {
                // A spare starts to join a running cluster.
                let spare = troupe_node::Overrides {
                    node_id: Some(4),
                    ..Default::default()
                };
                let joining = troupe_node::Overrides {
                    join: Some("127.0.0.1:8081".into()),
                    ..spare
                };
                let config = troupe_node::Config::load(&path, &joining)
                    .unwrap_or_else(|e| panic!("{} (spare 4): {e}", path.display()));
                assert!(data_dirs.insert(config.data_dir.clone()));
                assert_eq!(config.http_addr.port(), 8084);
            }
            seen += 1;
        }
    }
    assert!(seen >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_counted_by_route_pattern_and_status_class() {
    let t = TestNode::start().await;
    let (status, _) = t.api.get("/v1/workflows/nobody-here").await;
    assert_eq!(status, 404);
    let (status, _) = t.api.get("/v1/workflows?status=bogus").await;
    assert_eq!(status, 400);
    let metrics = reqwest::get(format!("{}/metrics", t.api.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = |route: &str, class: &str| {
        metrics.lines().any(|l| {
            l.starts_with("troupe_http_requests_total{")
                && l.contains(&format!("route=\"{route}\""))
                && l.contains(&format!("status=\"{class}\""))
        })
    };
    assert!(line("/v1/workflows/{id}", "4xx"), "{metrics}");
    assert!(line("/v1/workflows", "4xx"), "{metrics}");
    assert!(!metrics.contains("nobody-here"), "ids never become labels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_of_one_version_cannot_both_win() {
    let t = TestNode::start().await;
    let mut set = tokio::task::JoinSet::new();
    for n in 0..8 {
        let api = t.api.clone();
        set.spawn(async move {
            let doc = format!("name: race\nversion: 1\nsteps:\n  - {{ id: s{n}, task: noop }}\n");
            api.send("PUT", "/v1/definitions", Some(doc)).await.0
        });
    }
    let mut created = 0;
    while let Some(status) = set.join_next().await {
        match status.unwrap() {
            201 => created += 1,
            409 => {}
            other => panic!("deploy answered {other}"),
        }
    }
    assert_eq!(created, 1, "exactly one version 1 was stored");
}
