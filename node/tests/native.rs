//! The native protocol over real TCP: every client operation, pipelining on
//! one connection, garbage and oversized frames (only the offending
//! connection is closed), and overload answered with the overload code
//! while the node's memory stays bounded.

mod common;

use common::{NodeProcess, TempDir, TestNode};
use serde_json::json;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use troupe_client::{Client, ErrorCode, RetryPolicy};
use troupe_protocol::frame::{self, LENGTH_BYTES};
use troupe_protocol::{ClientFrame, Request, Response, ServerFrame};

const HELLO: &str = r#"
name: hi
version: 1
steps:
  - { id: a, task: noop, input: { n: "${input.n}" } }
  - { id: go, await: go, timeout: 1m }
output: { n: "${input.n}" }
"#;

/// Writes raw bytes and reads what the node answers until it closes.
async fn send_raw(addr: &str, bytes: &[u8]) -> Vec<ServerFrame> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(bytes).await.unwrap();
    let mut answers = Vec::new();
    loop {
        let mut prefix = [0u8; LENGTH_BYTES];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut prefix))
            .await
            .expect("the node answers or closes");
        if read.is_err() {
            return answers;
        }
        let len = frame::frame_len(prefix, 1 << 20).unwrap();
        let mut body = vec![0; len];
        stream.read_exact(&mut body).await.unwrap();
        answers.push(frame::decode_frame(&body).unwrap());
    }
}

fn connection_error(answers: &[ServerFrame]) -> String {
    match answers {
        [
            ServerFrame {
                id: 0,
                response: Response::Error(e),
            },
        ] => e.code.clone(),
        other => panic!("expected one connection error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_operations_pipeline_on_one_connection() {
    let t = TestNode::start().await;
    let client = Client::connect(t.node.native_addr().to_string())
        .await
        .unwrap();
    let deployed = client.deploy(HELLO).await.unwrap();
    assert_eq!(
        (deployed["name"].as_str(), deployed["created"].as_bool()),
        (Some("hi"), Some(true))
    );
    // 200 starts in flight at once on one connection.
    let mut set = tokio::task::JoinSet::new();
    for n in 0..200 {
        let client = client.clone();
        set.spawn(async move {
            client
                .start("hi", Some(&format!("hi-{n}")), &json!({"n": n}))
                .await
                .map(|v| (n, v))
        });
    }
    while let Some(done) = set.join_next().await {
        let (n, view) = done.unwrap().unwrap();
        assert_eq!(view["id"], format!("hi-{n}"));
        assert_eq!(view["created"], true);
    }
    // Idempotent start: same id and input answer with the instance.
    let again = client
        .start("hi", Some("hi-7"), &json!({"n": 7}))
        .await
        .unwrap();
    assert_eq!(again["created"], false);
    let conflict = client
        .start("hi", Some("hi-7"), &json!({"n": 8}))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Some(ErrorCode::WorkflowConflict));
    let signal = client
        .signal("hi-7", "go", Some("sig-1"), &json!({"ok": true}))
        .await
        .unwrap();
    assert_eq!(signal["duplicate"], false);
    let waiting = client
        .result("hi-9", Duration::from_millis(50))
        .await
        .unwrap();
    assert_eq!(waiting["status"], "waiting");
    let done = client
        .result("hi-7", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done["status"], "completed");
    assert_eq!(done["output"], json!({"n": 7}));
    let history = client.history("hi-7").await.unwrap();
    let kinds: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert_eq!(
        kinds,
        ["started", "task_completed", "signal"],
        "{history:#}"
    );
    // Pages: one event at a time from a cursor.
    let page = |cursor: Option<&str>| troupe_client::Page {
        cursor: cursor.map(str::to_owned),
        limit: Some(1),
    };
    let first = client.history_page("hi-7", page(None)).await.unwrap();
    assert_eq!(first["events"].as_array().unwrap().len(), 1);
    let cursor = first["next_cursor"].as_str().unwrap().to_owned();
    let second = client
        .history_page("hi-7", page(Some(&cursor)))
        .await
        .unwrap();
    assert_eq!(second["events"][0]["type"], "task_completed", "{second:#}");
    let steps = client.steps("hi-7", page(None)).await.unwrap();
    assert_eq!(steps["steps"].as_array().unwrap().len(), 1, "{steps:#}");
    assert!(steps["next_cursor"].is_string(), "{steps:#}");
    let page = client
        .list(troupe_client::ListWorkflows {
            status: Some("completed".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(page["workflows"].as_array().unwrap().len(), 1);
    let cancelled = client.cancel("hi-8", Some("test")).await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    let missing = client.workflow("nope").await.unwrap_err();
    assert_eq!(missing.code(), Some(ErrorCode::WorkflowNotFound));
    let invalid = client.deploy("name: [").await.unwrap_err();
    assert_eq!(invalid.code(), Some(ErrorCode::InvalidDefinition));
    let published = client
        .publish("nobody", "e-1", None, &json!({}))
        .await
        .unwrap();
    assert_eq!(published["delivered"], 0);
}

/// Ends within its start: its `noop` step runs inline.
const SHORT: &str = r#"
name: short
version: 1
steps:
  - { id: a, task: noop }
output: { n: "${input.n}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_answers_with_the_result_in_one_request_when_it_can() {
    let t = TestNode::start().await;
    let client = Client::connect(t.node.native_addr().to_string())
        .await
        .unwrap();
    client.deploy(SHORT).await.unwrap();
    client.deploy(HELLO).await.unwrap();
    let wait = Duration::from_secs(10);
    // Ended within its start: the start's answer (it alone says `created`)
    // is the result.
    let short = client
        .run("short", Some("s-1"), &json!({"n": 1}), wait)
        .await
        .unwrap();
    assert_eq!(
        (&short["status"], &short["output"], &short["created"]),
        (&json!("completed"), &json!({"n": 1}), &json!(true)),
        "{short:#}"
    );
    // Still running after its start: the answer comes from waiting.
    let signaller = client.clone();
    let signal = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        signaller
            .signal("r-1", "go", None, &json!({}))
            .await
            .unwrap();
    });
    let long = client
        .run("hi", Some("r-1"), &json!({"n": 2}), wait)
        .await
        .unwrap();
    signal.await.unwrap();
    assert_eq!(
        (&long["status"], &long["output"], long.get("created")),
        (&json!("completed"), &json!({"n": 2}), None),
        "{long:#}"
    );
    // Not ended within the wait: its current view.
    let waiting = client
        .run(
            "hi",
            Some("r-2"),
            &json!({"n": 3}),
            Duration::from_millis(50),
        )
        .await
        .unwrap();
    assert_eq!(waiting["status"], "waiting", "{waiting:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_close_only_their_connection() {
    let t = TestNode::start().await;
    let addr = t.node.native_addr().to_string();
    let client = Client::connect(addr.clone()).await.unwrap();
    client.deploy(HELLO).await.unwrap();

    // Text where a frame should be: the length prefix is absurd.
    let http = send_raw(&addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(connection_error(&http), "payload_too_large");
    // A frame over the limit.
    let mut big = ((4u32 << 20) + 1).to_be_bytes().to_vec();
    big.extend_from_slice(&[1; 64]);
    assert_eq!(
        connection_error(&send_raw(&addr, &big).await),
        "payload_too_large"
    );
    // A frame of the right size full of garbage.
    let mut garbage = 40u32.to_be_bytes().to_vec();
    garbage.push(1);
    garbage.extend((0..39u8).map(|b| b.wrapping_mul(97)));
    assert_eq!(
        connection_error(&send_raw(&addr, &garbage).await),
        "malformed_frame"
    );
    // A well-formed frame of an unknown version.
    let mut version = frame::encode_frame(&ClientFrame {
        id: 1,
        request: Request::Cluster,
    });
    version[LENGTH_BYTES] = 42;
    assert_eq!(
        connection_error(&send_raw(&addr, &version).await),
        "malformed_frame"
    );
    // A valid frame followed by garbage: the first is answered, then the close.
    let mut mixed = frame::encode_frame(&ClientFrame {
        id: 5,
        request: Request::Cluster,
    });
    mixed.extend_from_slice(&[0, 0, 0, 3, 1, 0xff, 0xff]);
    let answers = send_raw(&addr, &mixed).await;
    assert!(
        answers
            .iter()
            .any(|f| f.id == 5 && matches!(f.response, Response::Json(_))),
        "{answers:?}"
    );
    assert_eq!(answers.last().unwrap().id, 0);

    // The connection opened before all that still works, and so do new ones.
    let view = client
        .start("hi", Some("still-1"), &json!({"n": 1}))
        .await
        .unwrap();
    assert_eq!(view["created"], true);
    let fresh = Client::connect(addr).await.unwrap();
    assert_eq!(fresh.workflow("still-1").await.unwrap()["id"], "still-1");
    let (status, _) = t.api.get("/healthz").await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_is_answered_and_memory_stays_bounded() {
    let dir = TempDir::new("overload");
    let config = dir.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "node-id = 1\ndata-dir = \"{}\"\nhttp-addr = \"127.0.0.1:0\"\nnative-addr = \"127.0.0.1:0\"\nshards = 4\n\
             [limits]\nmax-queued-tasks = 2000\nmax-pending-per-shard = 64\n",
            dir.path().join("data").display()
        ),
    )
    .unwrap();
    let node = NodeProcess::spawn(&config, &dir.path().join("node.log"));
    // Faults on fresh memory must not zero 2 MiB at a time.
    assert!(!node.huge_pages_enabled(), "transparent huge pages are on");
    // Work that piles up: every instance waits for a worker that never comes.
    let client = Client::connect(node.native.clone())
        .await
        .unwrap()
        .with_retry(RetryPolicy::none());
    client
        .deploy("name: pile\nversion: 1\nsteps:\n  - { id: a, task: nobody.home, timeout: 1h }\n")
        .await
        .unwrap();
    let before = node.rss_bytes();

    // 64 connections, each with 50 starts in flight at a time: 20,000 starts.
    let mut set = tokio::task::JoinSet::new();
    for c in 0..64 {
        let client = client
            .reconnect()
            .await
            .unwrap()
            .with_retry(RetryPolicy::none());
        set.spawn(async move {
            let (mut ok, mut overloaded) = (0u32, 0u32);
            for round in 0..6 {
                let mut batch = tokio::task::JoinSet::new();
                for n in 0..50 {
                    let client = client.clone();
                    let id = format!("p-{c}-{round}-{n}");
                    batch.spawn(async move {
                        client
                            .start("pile", Some(&id), &json!({"pad": "x".repeat(256)}))
                            .await
                    });
                }
                while let Some(result) = batch.join_next().await {
                    match result.unwrap() {
                        Ok(_) => ok += 1,
                        Err(e) if e.code() == Some(ErrorCode::Overloaded) => overloaded += 1,
                        Err(e) => panic!("unexpected error {e}"),
                    }
                }
            }
            (ok, overloaded)
        });
    }
    let (mut ok, mut overloaded) = (0, 0);
    while let Some(done) = set.join_next().await {
        let (o, v) = done.unwrap();
        ok += o;
        overloaded += v;
    }
    let after = node.rss_bytes();
    assert!(overloaded > 0, "{ok} accepted, none refused");
    assert!(
        ok >= 256,
        "the node kept taking work while refusing some: {ok}"
    );
    // Over HTTP the same refusal is a 429 with Retry-After.
    let (status, body) = node
        .api
        .post(
            "/v1/workflows",
            json!({"definition": "pile", "id": "http-1", "input": {}}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("overloaded")),
        "{body}"
    );
    let growth = after.saturating_sub(before);
    eprintln!("accepted {ok}, refused {overloaded}; RSS {before} -> {after} bytes");
    assert!(
        growth < 256 << 20,
        "RSS grew by {growth} bytes under overload ({before} -> {after})"
    );
    // The node still serves: a worker drains a task and a read works.
    let tasks = client
        .poll("w", &["nobody.home"], 1, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(tasks.len(), 1);
    node.kill();
}
