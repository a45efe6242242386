//! Traffic control through a running gateway, against a real rmcp upstream whose
//! `block` tool holds its answer until the test releases it: concurrency gates (slots,
//! FIFO queue, queue timeout, permits given back on every path), rate limits (burst,
//! steady rate, Retry-After, one caller not starving another) and admission caps.

#![allow(deprecated)] // rmcp 3.x marks parts of its API deprecated (SEP-2577).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use portcullis_e2e::*;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

/// `block` counts its start, reports progress when asked, then waits for one release
/// (or its cancellation, which it counts); `quick` answers at once; `tick` sends `n`
/// progress notifications `ms` apart, then answers.
#[derive(Clone)]
struct Blocker {
    started: Arc<AtomicUsize>,
    release: Arc<Semaphore>,
    cancelled: Arc<AtomicUsize>,
}

impl Blocker {
    fn new() -> Blocker {
        Blocker {
            started: Arc::new(AtomicUsize::new(0)),
            release: Arc::new(Semaphore::new(0)),
            cancelled: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl ServerHandler for Blocker {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let tools = json!({"tools": [
            {"name": "block", "inputSchema": {"type": "object"}},
            {"name": "quick", "inputSchema": {"type": "object"}},
            {"name": "tick", "inputSchema": {"type": "object"}},
        ]});
        serde_json::from_value(tools).map_err(|e| McpError::internal_error(e.to_string(), None))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if request.name == "block" {
            self.started.fetch_add(1, Ordering::SeqCst);
            if let Some(t) = ctx.meta.get_progress_token() {
                let _ = ctx
                    .peer
                    .notify_progress(ProgressNotificationParam::new(t, 1.0))
                    .await;
            }
            tokio::select! {
                p = self.release.acquire() => {
                    if let Ok(p) = p {
                        p.forget();
                    }
                }
                _ = ctx.ct.cancelled() => {
                    self.cancelled.fetch_add(1, Ordering::SeqCst);
                    return Err(McpError::internal_error("cancelled", None));
                }
            }
        }
        if request.name == "tick" {
            let arg = |k: &str| {
                request
                    .arguments
                    .as_ref()
                    .and_then(|a| a.get(k))
                    .and_then(Value::as_u64)
                    .unwrap_or(1)
            };
            let token = ctx.meta.get_progress_token();
            for i in 0..arg("n") {
                tokio::time::sleep(Duration::from_millis(arg("ms"))).await;
                if let Some(t) = &token {
                    let _ = ctx
                        .peer
                        .notify_progress(ProgressNotificationParam::new(t.clone(), i as f64))
                        .await;
                }
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(request.name.to_string())]).into())
    }
}

/// A gateway in front of a fresh [`Blocker`], with `upstream_extra` under the upstream.
async fn setup(upstream_extra: &str, extra: &str) -> (Gateway, Blocker, Upstream) {
    let b = Blocker::new();
    let factory = b.clone();
    let upstream = Upstream::serve(move || factory.clone()).await;
    let yaml = config_for(&upstream.url, extra).replace(
        "connect_timeout: 1s\n",
        &format!("connect_timeout: 1s\n{upstream_extra}"),
    );
    (Gateway::start(&yaml).await, b, upstream)
}

/// A 2026-07-28 call without a progress token (a plain JSON answer).
fn call(url: &str, tool: &str) -> reqwest::RequestBuilder {
    let mut meta = stateless_meta();
    if let Some(m) = meta.as_object_mut() {
        m.remove("progressToken");
    }
    stateless_call_with_meta(&http_client(), url, tool, json!({}), meta)
}

/// Status, Retry-After and the one JSON-RPC message of an answer.
async fn outcome(r: reqwest::RequestBuilder) -> (u16, Option<String>, Value) {
    let resp = r.send().await.expect("answer");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.expect("body");
    let msg = messages(&body)
        .into_iter()
        .find(|m| m.get("id").is_some())
        .unwrap_or(Value::Null);
    (status, retry, msg)
}

/// Two `block` calls through a gate of one slot and a queue: returns them once the
/// first runs upstream and the second waits in the queue.
async fn one_running_one_queued(gw: &Gateway, b: &Blocker) -> (Answer, Answer) {
    let first = tokio::spawn(outcome(call(&gw.url, "block")));
    until("the first call upstream", || {
        b.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let second = tokio::spawn(outcome(call(&gw.url, "block")));
    gw.wait_metrics("the second call queued", |m| {
        metric(
            m,
            r#"portcullis_gate_queue_depth{gate="block",upstream="main"}"#,
        ) == 1.0
    })
    .await;
    (first, second)
}

/// A call on its own task: status, Retry-After and message.
type Answer = tokio::task::JoinHandle<(u16, Option<String>, Value)>;

/// Waits until `f` holds, failing after [`DEADLINE`].
async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The value of one metric series in the exposition text (0 when absent).
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

const BLOCK_GATE: &str = "    tools:\n      - match: block\n        max_in_flight: 2\n        max_queue: 3\n        queue_timeout: 60s\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_calls_two_run_three_queue_then_run_two_are_refused() {
    let (gw, b, _up) = setup(BLOCK_GATE, "").await;
    let calls: Vec<_> = (0..7)
        .map(|_| tokio::spawn(outcome(call(&gw.url, "block"))))
        .collect();
    let m = gw
        .wait_metrics("2 running, 3 queued, 2 refused", |m| {
            metric(m, r#"portcullis_gate_in_flight{gate="block",upstream="main"}"#) == 2.0
                && metric(m, r#"portcullis_gate_queue_depth{gate="block",upstream="main"}"#) == 3.0
                && metric(
                    m,
                    r#"portcullis_gate_refusals_total{gate="block",reason="queue_full",upstream="main"}"#,
                ) == 2.0
        })
        .await;
    assert_eq!(
        b.started.load(Ordering::SeqCst),
        2,
        "only two reached the upstream"
    );
    assert_eq!(
        metric(
            &m,
            r#"portcullis_tool_calls_in_flight{tool="block",upstream="main"}"#
        ),
        2.0
    );
    // A tool without a gate is not held back by the busy one.
    let (status, _, msg) = outcome(call(&gw.url, "quick")).await;
    assert_eq!(
        (status, msg["result"]["content"][0]["text"].as_str()),
        (200, Some("quick"))
    );

    b.release.add_permits(5);
    let mut served = 0;
    let mut refused = 0;
    for c in calls {
        let (status, retry, msg) = c.await.expect("task");
        match status {
            200 => {
                assert_eq!(msg["result"]["content"][0]["text"], "block", "{msg}");
                served += 1;
            }
            503 => {
                assert_eq!(retry.as_deref(), Some("1"));
                assert_eq!(msg["error"]["code"], -32011, "{msg}");
                assert_eq!(msg["error"]["data"]["reason"], "queue_full", "{msg}");
                assert_eq!(msg["id"], 1, "the refusal answers the call's id");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {msg}"),
        }
    }
    assert_eq!((served, refused), (5, 2));
    assert_eq!(b.started.load(Ordering::SeqCst), 5);
    let m = gw
        .wait_metrics("every slot back", |m| {
            metric(
                m,
                r#"portcullis_gate_in_flight{gate="block",upstream="main"}"#,
            ) == 0.0
        })
        .await;
    assert_eq!(
        metric(
            &m,
            r#"portcullis_gate_queue_depth{gate="block",upstream="main"}"#
        ),
        0.0
    );
    assert!(
        m.contains(r#"portcullis_gate_queue_wait_seconds_count{gate="block",upstream="main"} 3"#),
        "three calls queued"
    );
    assert!(m.contains(r#"portcullis_refusals_total{reason="queue_full",route="/mcp"} 2"#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_call_times_out_and_the_queue_place_comes_back() {
    let gate = "    concurrency:\n      max_in_flight: 1\n      max_queue: 1\n      queue_timeout: 200ms\n";
    let (gw, b, _up) = setup(gate, "").await;
    let first = tokio::spawn(outcome(call(&gw.url, "block")));
    until("the first call upstream", || {
        b.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let (status, retry, msg) = outcome(call(&gw.url, "quick")).await;
    assert_eq!(status, 503, "{msg}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(msg["error"]["data"]["reason"], "queue_timeout", "{msg}");
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"portcullis_gate_queue_depth{gate="upstream",upstream="main"}"#
        ),
        0.0
    );
    assert_eq!(
        metric(
            &m,
            r#"portcullis_gate_refusals_total{gate="upstream",reason="queue_timeout",upstream="main"}"#
        ),
        1.0
    );
    b.release.add_permits(1);
    assert_eq!(first.await.expect("task").0, 200);
    let (status, _, _) = outcome(call(&gw.url, "quick")).await;
    assert_eq!(status, 200, "the slot came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_gives_its_slot_back() {
    let gate = "    concurrency:\n      max_in_flight: 1\n";
    let (gw, b, _up) = setup(gate, "").await;
    // With a progress token the answer streams: progress first, then (never) the result.
    let mut resp = stateless_call(&http_client(), &gw.url, "block", json!({}))
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 200);
    let first = resp
        .chunk()
        .await
        .expect("a chunk")
        .expect("the stream is open");
    assert!(String::from_utf8_lossy(&first).contains("notifications/progress"));
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"portcullis_gate_in_flight{gate="upstream",upstream="main"}"#
        ),
        1.0,
        "the slot is held while the answer streams"
    );
    let (status, _, msg) = outcome(call(&gw.url, "quick")).await;
    assert_eq!(
        (status, msg["error"]["data"]["reason"].as_str()),
        (503, Some("queue_full"))
    );
    drop(resp);
    gw.wait_metrics("the slot given back", |m| {
        metric(
            m,
            r#"portcullis_gate_in_flight{gate="upstream",upstream="main"}"#,
        ) == 0.0
    })
    .await;
    let (status, _, msg) = outcome(call(&gw.url, "quick")).await;
    assert_eq!(status, 200, "a following call is served: {msg}");
    b.release.add_permits(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_dying_mid_call_gives_its_slot_back() {
    let gate = "    concurrency:\n      max_in_flight: 1\n";
    let (gw, b, up) = setup(gate, "").await;
    let held = tokio::spawn(outcome(call(&gw.url, "block")));
    until("the call upstream", || {
        b.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let addr = up.addr;
    drop(up);
    let (status, _, msg) = held.await.expect("task");
    // Either the connection dropped (502 from the gateway) or rmcp, shutting down,
    // answered 500 on its way out; both end the call.
    assert!(
        matches!(status, 500 | 502),
        "the upstream died mid-call: {status} {msg}"
    );
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"portcullis_gate_in_flight{gate="upstream",upstream="main"}"#
        ),
        0.0
    );
    let again = Blocker::new();
    let _back = Upstream::serve_at(addr, move || again.clone()).await;
    let (status, _, msg) = outcome(call(&gw.url, "quick")).await;
    assert_eq!(status, 200, "a following call is served: {msg}");
}

/// A gateway whose `/mcp` route authenticates test tokens and has `limits`.
async fn limited(limits: &str) -> (Gateway, Blocker, Upstream) {
    let b = Blocker::new();
    let factory = b.clone();
    let upstream = Upstream::serve(move || factory.clone()).await;
    let yaml = config_for(&upstream.url, "http:\n  public_url: http://mcp.test\n").replace(
        "    upstream: main\n",
        &format!(
            "    upstream: main\n{}    rate_limits:\n{limits}",
            test_jwt_auth()
        ),
    );
    (Gateway::start(&yaml).await, b, upstream)
}

fn token(sub: &str) -> String {
    rs256_token(
        &json!({"iss": TEST_ISSUER, "aud": "http://mcp.test/mcp", "sub": sub, "exp": now() + 600}),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_passes_then_the_rate_holds_with_a_right_retry_after() {
    let limits =
        "      - name: per-caller\n        per: principal\n        rate: 1/2s\n        burst: 3\n";
    let (gw, _b, _up) = limited(limits).await;
    let alice = token("alice");
    for i in 0..3 {
        let (status, _, msg) = outcome(call(&gw.url, "quick").bearer_auth(&alice)).await;
        assert_eq!(status, 200, "burst call {i}: {msg}");
    }
    let (status, retry, msg) = outcome(call(&gw.url, "quick").bearer_auth(&alice)).await;
    assert_eq!(status, 429, "{msg}");
    assert_eq!(msg["error"]["code"], -32017);
    assert_eq!(msg["error"]["data"]["limit"], "per-caller");
    assert_eq!(msg["id"], 1);
    let ms = msg["error"]["data"]["retryAfterMs"]
        .as_u64()
        .expect("retryAfterMs");
    // 2 s after the burst's first call, less the time the calls took (slow machines).
    assert!(ms > 1000 && ms <= 2000, "one request per 2 s: {ms} ms");
    assert_eq!(retry.as_deref(), Some("2"), "Retry-After rounds {ms} ms up");

    // One caller's exhaustion leaves another's budget alone.
    let (status, _, _) = outcome(call(&gw.url, "quick").bearer_auth(token("bob"))).await;
    assert_eq!(status, 200, "bob is not starved by alice");

    // Waiting what the refusal said is enough; the steady rate then holds again.
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let (status, _, msg) = outcome(call(&gw.url, "quick").bearer_auth(&alice)).await;
    assert_eq!(status, 200, "after retryAfterMs: {msg}");
    let (status, _, _) = outcome(call(&gw.url, "quick").bearer_auth(&alice)).await;
    assert_eq!(status, 429, "one request per period, no second burst");
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"portcullis_rate_limited_total{limit="per-caller",route="/mcp"} 2"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_limits_count_only_their_tools_and_hold_per_caller_and_tool() {
    let limits = "      - name: blocks\n        per: principal_tool\n        rate: 1/h\n        tools: [\"bl*\"]\n";
    let (gw, b, _up) = limited(limits).await;
    b.release.add_permits(10);
    let alice = token("alice");
    for _ in 0..3 {
        assert_eq!(
            outcome(call(&gw.url, "quick").bearer_auth(&alice)).await.0,
            200,
            "quick is not limited"
        );
    }
    assert_eq!(
        outcome(call(&gw.url, "block").bearer_auth(&alice)).await.0,
        200
    );
    let (status, retry, msg) = outcome(call(&gw.url, "block").bearer_auth(&alice)).await;
    assert_eq!(
        (status, msg["error"]["data"]["limit"].as_str()),
        (429, Some("blocks"))
    );
    let ms = msg["error"]["data"]["retryAfterMs"].as_u64().expect("ms");
    assert!(ms > 3_500_000 && ms <= 3_600_000, "{ms}");
    assert_eq!(retry.as_deref(), Some("3600"));
    assert_eq!(
        outcome(call(&gw.url, "block").bearer_auth(token("bob")))
            .await
            .0,
        200,
        "bob's own bucket"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_and_responses_pass_a_spent_limit_other_notifications_are_refused_visibly() {
    let limits = "      - name: tight\n        per: route\n        rate: 1/h\n";
    let (gw, _b, _up) = limited(limits).await;
    let alice = token("alice");
    assert_eq!(
        outcome(call(&gw.url, "quick").bearer_auth(&alice)).await.0,
        200
    );
    assert_eq!(
        outcome(call(&gw.url, "quick").bearer_auth(&alice)).await.0,
        429
    );
    let post = |body: Value| {
        http_client()
            .post(&gw.url)
            .bearer_auth(&alice)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2025-11-25")
            .body(body.to_string())
    };
    // Without a session the upstream refuses these itself; what matters is that the
    // gateway let them through rather than answering 429.
    for body in [
        json!({"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}),
        json!({"jsonrpc":"2.0","method":"notifications/initialized"}),
        json!({"jsonrpc":"2.0","id":"s1","result":{}}),
    ] {
        let r = post(body.clone()).send().await.expect("answer");
        assert_ne!(r.status().as_u16(), 429, "{body} spends nothing");
    }
    let r = post(json!({"jsonrpc":"2.0","method":"notifications/roots/list_changed"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status().as_u16(), 429, "refused visibly, never dropped");
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        (v["id"].clone(), v["error"]["code"].clone()),
        (Value::Null, json!(-32017))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_caps_turn_excess_into_a_fast_503() {
    let (gw, b, _up) = setup("", "admission:\n  max_requests: 1\n  max_streams: 1\n").await;
    let held = tokio::spawn(outcome(call(&gw.url, "block")));
    until("the call upstream", || {
        b.started.load(Ordering::SeqCst) == 1
    })
    .await;
    let (status, retry, msg) = outcome(call(&gw.url, "quick")).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")));
    assert_eq!(msg["error"]["data"]["reason"], "too_many_requests", "{msg}");
    b.release.add_permits(1);
    assert_eq!(held.await.expect("task").0, 200);
    gw.wait_metrics("nothing in flight", |m| {
        m.contains("portcullis_requests_in_flight 0")
    })
    .await;
    assert_eq!(
        outcome(call(&gw.url, "quick")).await.0,
        200,
        "capacity came back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_cap_refuses_a_get_stream_past_it_and_frees_with_the_stream() {
    let (gw, _b, _up) = setup("", "admission:\n  max_streams: 1\n").await;
    let sid = initialize_raw(&gw.url, "unused").await;
    let get = || {
        http_client()
            .get(&gw.url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-11-25")
            .send()
    };
    let first = get().await.expect("answer");
    assert_eq!(first.status(), 200);
    gw.wait_metrics("one stream open", |m| {
        m.contains("portcullis_standalone_streams_open 1")
    })
    .await;
    let second = get().await.expect("answer");
    assert_eq!(second.status(), 503);
    let v: Value = second.json().await.expect("json");
    assert_eq!(v["error"]["data"]["reason"], "too_many_streams", "{v}");
    drop(first);
    gw.wait_metrics("the stream closed", |m| {
        m.contains("portcullis_standalone_streams_open 0")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_resetting_the_connection_gives_the_slot_back() {
    use tokio::io::AsyncReadExt;
    // Reads each request, then closes without a word: a crashed server.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/mcp", l.local_addr().expect("addr"));
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
        }
    });
    let yaml = config_for(&url, "").replace(
        "connect_timeout: 1s\n",
        "connect_timeout: 1s\n    concurrency:\n      max_in_flight: 1\n",
    );
    let gw = Gateway::start(&yaml).await;
    for i in 0..3 {
        let (status, _, msg) = outcome(call(&gw.url, "quick")).await;
        assert_eq!(
            status, 502,
            "call {i} reached the upstream, not a full gate: {msg}"
        );
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"portcullis_gate_in_flight{gate="upstream",upstream="main"}"#
        ),
        0.0
    );
    assert!(accepted.load(Ordering::SeqCst) >= 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cancelling_a_call_reaches_the_upstream_and_frees_the_slot() {
    let gate = "    tools:\n      - match: block\n        max_in_flight: 1\n";
    let (gw, b, _up) = setup(gate, "").await;
    let c = connect_session(&gw.url).await;
    let handle = c
        .service
        .peer()
        .send_cancellable_request(
            ClientRequest::CallToolRequest(CallToolRequest::new(CallToolRequestParams::new(
                "block",
            ))),
            rmcp::service::PeerRequestOptions::no_options(),
        )
        .await
        .expect("sent");
    until("the call upstream", || {
        b.started.load(Ordering::SeqCst) == 1
    })
    .await;
    handle
        .cancel(Some("the test gave up".into()))
        .await
        .expect("cancellation sent");
    until("the upstream saw the cancellation", || {
        b.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    gw.wait_metrics("the slot given back", |m| {
        metric(
            m,
            r#"portcullis_gate_in_flight{gate="block",upstream="main"}"#,
        ) == 0.0
    })
    .await;
    // With the only slot back, the next call runs at once (no queue: it would be 503).
    b.release.add_permits(1);
    let done = c
        .service
        .call_tool(CallToolRequestParams::new("block"))
        .await
        .expect("the next call is served");
    assert_eq!(
        done.content[0].as_text().map(|t| t.text.as_str()),
        Some("block")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_is_cancelled_upstream_and_answered_with_an_error() {
    let tools = "    tools:\n      - match: block\n        deadline: 300ms\n";
    let (gw, b, _up) = setup(tools, "").await;
    let c = connect_session(&gw.url).await;
    let err = c
        .service
        .call_tool(CallToolRequestParams::new("block"))
        .await
        .expect_err("the deadline passes first");
    match err {
        rmcp::ServiceError::McpError(e) => {
            assert_eq!(e.code.0, -32010, "{e:?}");
            let data = e.data.expect("data");
            assert_eq!(data["reason"], "deadline_exceeded");
            assert!(
                data["afterMs"].as_u64().is_some_and(|ms| ms >= 300),
                "{data}"
            );
        }
        other => panic!("not a JSON-RPC error: {other}"),
    }
    until("the upstream saw the gateway's cancellation", || {
        b.cancelled.load(Ordering::SeqCst) == 1
    })
    .await;
    // The session lives on.
    assert!(c
        .service
        .call_tool(CallToolRequestParams::new("quick"))
        .await
        .is_ok());
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"portcullis_refusals_total{reason="deadline_exceeded",route="/mcp"} 1"#),
        "{m}"
    );
}

/// A 2026-07-28 `tick` call with a progress token: `n` progress events `ms` apart.
async fn tick(gw: &Gateway, n: u64, ms: u64) -> Vec<Value> {
    let body = stateless_call(&http_client(), &gw.url, "tick", json!({"n": n, "ms": ms}))
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("body");
    messages(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_extends_a_deadline_up_to_its_maximum() {
    let tools =
        "    tools:\n      - match: tick\n        deadline: 400ms\n        max_deadline: 1500ms\n";
    let (gw, _b, _up) = setup(tools, "").await;
    // 6 x 150 ms = 900 ms: past the deadline, but each progress event renews it.
    let kept = tick(&gw, 6, 150).await;
    let last = kept.last().expect("messages");
    assert_eq!(last["result"]["content"][0]["text"], "tick", "{kept:?}");
    // 12 x 150 ms = 1.8 s: past the maximum, however much progress it reports.
    let cut = tick(&gw, 12, 150).await;
    let last = cut.last().expect("messages");
    assert_eq!(
        last["error"]["data"]["reason"], "deadline_exceeded",
        "{cut:?}"
    );
    let ms = last["error"]["data"]["afterMs"].as_u64().expect("afterMs");
    assert!(
        (1500..5000).contains(&ms),
        "cut at the maximum, not before: {ms}"
    );
    assert!(
        cut.iter()
            .filter(|m| m["method"] == "notifications/progress")
            .count()
            >= 5,
        "progress was relayed up to the cut"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_and_calls_without_an_id_cannot_slip_past_limits() {
    let (gw, _b, _up) = setup("    concurrency:\n      max_in_flight: 4\n", "").await;
    let post = |body: Value, version: &str| {
        http_client()
            .post(&gw.url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", version)
            .body(body.to_string())
    };
    let call = |id: Value| {
        let mut m =
            json!({"jsonrpc":"2.0","method":"tools/call","params":{"name":"quick","arguments":{}}});
        if !id.is_null() {
            m["id"] = id;
        }
        m
    };
    let (status, _, _) = outcome(post(json!([call(json!(1)), call(json!(2))]), "2025-03-26")).await;
    assert_eq!(status, 400, "a batch would take one slot for two calls");
    let r = post(call(Value::Null), "2025-11-25")
        .send()
        .await
        .expect("answer");
    assert_eq!(
        r.status().as_u16(),
        400,
        "a call without an id would pass ungated"
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], -32600, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_while_queued_leaves_the_queue_and_its_call_is_never_sent() {
    let gate = "    tools:\n      - match: block\n        max_in_flight: 1\n        max_queue: 1\n        queue_timeout: 60s\n";
    let (gw, b, _up) = setup(gate, "").await;
    let (first, queued) = one_running_one_queued(&gw, &b).await;
    queued.abort(); // the client hangs up
    gw.wait_metrics("the queue place given back", |m| {
        metric(
            m,
            r#"portcullis_gate_queue_depth{gate="block",upstream="main"}"#,
        ) == 0.0
    })
    .await;
    b.release.add_permits(2);
    assert_eq!(first.await.expect("task").0, 200);
    gw.wait_metrics("the slot given back", |m| {
        metric(
            m,
            r#"portcullis_gate_in_flight{gate="block",upstream="main"}"#,
        ) == 0.0
    })
    .await;
    assert_eq!(
        b.started.load(Ordering::SeqCst),
        1,
        "the abandoned call never reached the upstream"
    );
}

/// A loopback address nothing listens on (bound, then released).
async fn dead_address() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    l.local_addr().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_breaker_sends_new_calls_to_the_other_endpoint() {
    let b = Blocker::new();
    let factory = b.clone();
    let alive = Upstream::serve(move || factory.clone()).await;
    let dead = dead_address().await;
    let yaml = config_for(&alive.url, "").replace(
        "connect_timeout: 1s\n",
        &format!(
            "connect_timeout: 1s\n    endpoints: [\"{dead}\", \"{}\"]\n    breaker:\n      consecutive_failures: 2\n      cool_down: 60s\n",
            alive.addr
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(outcome(call(&gw.url, "quick")).await.0);
    }
    // A call that could not connect to the dead endpoint moved on to the live one (it
    // was never sent), so no call failed; the two connect failures opened the breaker.
    assert!(
        statuses.iter().all(|s| *s == 200),
        "every call answered: {statuses:?}"
    );
    let m = gw.metrics().await;
    let series = |name: &str| format!(r#"{name}{{endpoint="{dead}",upstream="main"}}"#);
    assert_eq!(metric(&m, &series("portcullis_breaker_state")), 1.0, "{m}");
    assert!(m.contains(&format!(
        r#"portcullis_breaker_transitions_total{{endpoint="{dead}",state="open",upstream="main"}} 1"#
    )));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_endpoint_fails_fast_while_open_and_a_probe_closes_it() {
    let addr = dead_address().await;
    let url = format!("http://{addr}/mcp");
    let yaml = config_for(&url, "").replace(
        "connect_timeout: 1s\n",
        "connect_timeout: 1s\n    breaker:\n      consecutive_failures: 2\n      cool_down: 1s\n",
    );
    let gw = Gateway::start(&yaml).await;
    for _ in 0..2 {
        assert_eq!(outcome(call(&gw.url, "quick")).await.0, 502);
    }
    let (status, retry, msg) = outcome(call(&gw.url, "quick")).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{msg}");
    assert_eq!(msg["error"]["code"], -32009);
    assert_eq!(msg["error"]["data"]["reason"], "circuit_open");
    assert_eq!(msg["id"], 1);

    let b = Blocker::new();
    let _up = Upstream::serve_at(addr, move || b.clone()).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, _, msg) = outcome(call(&gw.url, "quick")).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "only fast failures until the probe: {msg}");
        assert!(
            Instant::now() < deadline,
            "the breaker never let a probe through"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            &format!(r#"portcullis_breaker_state{{endpoint="{addr}",upstream="main"}}"#)
        ),
        0.0,
        "the probe's success closed it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_session_a_client_hanging_up_does_not_free_the_slot_before_the_upstream_is_done() {
    let gate = "    tools:\n      - match: block\n        max_in_flight: 1\n";
    let (gw, b, _up) = setup(gate, "").await;
    let sid = initialize_raw(&gw.url, "unused").await;
    let body = json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"block","arguments":{}}});
    let hung_up = {
        let (url, sid) = (gw.url.clone(), sid.clone());
        tokio::spawn(async move {
            http_client()
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2025-11-25")
                .header("mcp-session-id", sid)
                .body(body.to_string())
                .send()
                .await
                .expect("the answer starts");
            // Dropped with the stream open: the client disconnects, which in a session
            // is not a cancellation.
        })
    };
    until("the call upstream", || {
        b.started.load(Ordering::SeqCst) == 1
    })
    .await;
    hung_up.await.expect("the client hung up");
    // For longer than the stateless rule would take to free it (one second before the
    // client's socket is watched), every call finds the slot still held by the call
    // the upstream is still working on.
    let watch_until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < watch_until {
        let (status, _, msg) = outcome(call(&gw.url, "block")).await;
        assert_eq!(
            (status, msg["error"]["data"]["reason"].as_str()),
            (503, Some("queue_full"))
        );
    }
    b.release.add_permits(2);
    gw.wait_metrics("the slot given back once the upstream answered", |m| {
        metric(
            m,
            r#"portcullis_gate_in_flight{gate="block",upstream="main"}"#,
        ) == 0.0
    })
    .await;
    assert_eq!(
        b.cancelled.load(Ordering::SeqCst),
        0,
        "the upstream was let finish"
    );
    assert_eq!(outcome(call(&gw.url, "block")).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_resizes_a_busy_gate_in_place() {
    let gate = "    tools:\n      - match: block\n        max_in_flight: 1\n        max_queue: 1\n        queue_timeout: 60s\n";
    let (gw, b, _up) = setup(gate, "").await;
    let (first, second) = one_running_one_queued(&gw, &b).await;
    // Two at a time from now on: the queued call goes in, the running one stays.
    let text = std::fs::read_to_string(&gw.config_path).expect("read config");
    std::fs::write(
        &gw.config_path,
        text.replace("max_in_flight: 1", "max_in_flight: 2"),
    )
    .expect("write config");
    until("the queued call let in by the reload", || {
        b.started.load(Ordering::SeqCst) == 2
    })
    .await;
    let m = gw.metrics().await;
    assert_eq!(
        metric(
            &m,
            r#"portcullis_gate_in_flight{gate="block",upstream="main"}"#
        ),
        2.0,
        "the gate kept its running call: {m}"
    );
    let (status, _, msg) = outcome(call(&gw.url, "quick")).await;
    assert_eq!(status, 200, "{msg}");
    b.release.add_permits(2);
    assert_eq!(first.await.expect("task").0, 200);
    assert_eq!(second.await.expect("task").0, 200);
}
