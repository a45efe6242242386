//! Real rmcp clients through Portcullis to a real rmcp server, in both protocol eras.

#![allow(deprecated)]

use portcullis_e2e::*;
use rmcp::model::*;

fn args(v: serde_json::Value) -> JsonObject {
    v.as_object().cloned().unwrap_or_default()
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_era_initialize_list_call_progress_ping_and_delete() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let mut c = connect_session(&gw.url).await;
    let info = c.service.peer_info().expect("initialize result");
    assert_eq!(info.protocol_version, ProtocolVersion::V_2025_11_25);

    let tools = c.service.list_tools(None).await.expect("tools/list");
    let mut names: Vec<_> = tools.tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(names, ["add", "delete_file", "echo", "slow"]);

    let r = c
        .service
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(args(serde_json::json!({"text": "hi"}))),
        )
        .await
        .expect("echo");
    assert_eq!(text(&r), "hi");
    let r = c
        .service
        .call_tool(
            CallToolRequestParams::new("add")
                .with_arguments(args(serde_json::json!({"a": 2, "b": 3}))),
        )
        .await
        .expect("add");
    assert_eq!(text(&r), "5");

    let r = c
        .service
        .call_tool(
            CallToolRequestParams::new("slow")
                .with_arguments(args(serde_json::json!({"steps": 3, "delay_ms": 1}))),
        )
        .await
        .expect("slow");
    assert_eq!(text(&r), "done after 3 steps");
    // rmcp runs notification handlers concurrently, so callbacks may come out of wire
    // order; order on the wire is checked in streaming.rs.
    let mut seen = c.progress(3).await;
    seen.sort_by(f64::total_cmp);
    assert_eq!(
        seen,
        [1.0, 2.0, 3.0],
        "every progress notification reached the client"
    );

    let pong = c
        .service
        .send_request(ClientRequest::PingRequest(PingRequest::default()))
        .await
        .expect("ping");
    assert!(matches!(pong, ServerResult::EmptyResult(_)));

    c.service.cancel().await.expect("close session (DELETE)");
    // DELETE through the gateway ends a session; its id is then unknown: 404.
    let sid = raw_initialize(&gw).await;
    let del = http_client()
        .delete(&gw.url)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("delete");
    assert!(
        del.status() == 200 || del.status() == 204,
        "DELETE forwarded, answered 200 or 204 whatever 2xx the upstream chose: {}",
        del.status()
    );
    let after = http_client()
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .body(r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#)
        .send()
        .await
        .expect("post after delete");
    assert_eq!(after.status(), 404, "a deleted session is gone");
}

/// Opens a raw session through the gateway and returns its id (as the client sees it).
async fn raw_initialize(gw: &Gateway) -> String {
    let r = http_client()
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            serde_json::json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion":"2025-11-25","capabilities":{},
                "clientInfo":{"name":"raw","version":"1"}}})
            .to_string(),
        )
        .send()
        .await
        .expect("initialize");
    assert_eq!(r.status(), 200);
    let sid = r
        .headers()
        .get("mcp-session-id")
        .expect("session id header passes through")
        .to_str()
        .expect("visible ASCII")
        .to_owned();
    let _ = r.text().await;
    sid
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_era_notifications_are_accepted_with_202_and_get_opens_a_stream() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let http = http_client();
    let sid = raw_initialize(&gw).await;
    let note = http
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .body(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#)
        .send()
        .await
        .expect("notification");
    assert_eq!(note.status(), 202);
    assert_eq!(note.text().await.expect("body"), "");

    let get = http
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("GET stream");
    assert_eq!(get.status(), 200);
    assert!(get.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    drop(get);
    gw.wait_metrics("the GET stream closed", |m| {
        m.contains("portcullis_open_streams{route=\"/mcp\"} 0")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_era_discover_list_call_and_progress() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let mut c = connect_stateless(&gw.url).await;
    let tools = c.service.list_tools(None).await.expect("tools/list");
    assert_eq!(tools.tools.len(), 4);
    let r = c
        .service
        .call_tool(
            CallToolRequestParams::new("echo")
                .with_arguments(args(serde_json::json!({"text": "stateless"}))),
        )
        .await
        .expect("echo");
    assert_eq!(text(&r), "stateless");
    let r = c
        .service
        .call_tool(
            CallToolRequestParams::new("slow")
                .with_arguments(args(serde_json::json!({"steps": 2, "delay_ms": 1}))),
        )
        .await
        .expect("slow");
    assert_eq!(text(&r), "done after 2 steps");
    let mut seen = c.progress(2).await;
    seen.sort_by(f64::total_cmp);
    assert_eq!(seen, [1.0, 2.0]);
    // The access log names the tool and no session (stateless).
    let line = gw
        .wait_access("the slow call", |l| {
            l["method"] == "tools/call" && l["target"] == "slow"
        })
        .await;
    assert_eq!(line["status"], 200);
    assert!(line["session"].is_null());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_get_and_delete_are_405_at_the_gateway() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let r = http_client()
            .request(method.clone(), &gw.url)
            .header("accept", "text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 405, "{method}");
        assert_eq!(r.headers()["allow"], "POST");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_a_get_stream_answers_405_through_the_gateway() {
    let upstream = Upstream::demo_stateless().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let r = http_client()
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-protocol-version", "2025-11-25")
        .header("last-event-id", "7")
        .send()
        .await
        .expect("answer");
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(status, 405, "the upstream's 405 passes through: {body}");
    // It still serves POSTs.
    let mut c = connect_stateless(&gw.url).await;
    assert_eq!(
        c.service.list_tools(None).await.expect("list").tools.len(),
        4
    );
    assert!(c.progress.try_recv().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_of_three_endpoints_refusing_connections_no_new_session_or_call_fails() {
    let a = Upstream::demo().await;
    let b = Upstream::demo().await;
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let yaml = config_for(&a.url, "").replace(
        "connect_timeout: 1s",
        &format!(
            "connect_timeout: 1s\n    endpoints: [\"{}\", \"{dead}\", \"{}\"]",
            a.addr, b.addr
        ),
    );
    let gw = Gateway::start(&yaml).await;
    // Round-robin hands every third new session to the dead endpoint; each moves on.
    for i in 0..6 {
        let c = connect_session(&gw.url).await;
        let r = c
            .service
            .call_tool(
                CallToolRequestParams::new("echo")
                    .with_arguments(args(serde_json::json!({"text": format!("s{i}")}))),
            )
            .await
            .expect("a call in a session that began while an endpoint was down");
        assert_eq!(text(&r), format!("s{i}"));
    }
    for i in 0..6 {
        let r = stateless_call(
            &http_client(),
            &gw.url,
            "echo",
            serde_json::json!({"text": format!("c{i}")}),
        )
        .send()
        .await
        .expect("answer");
        assert_eq!(r.status(), 200, "stateless call {i}");
    }
    let m = gw.metrics().await;
    assert!(
        m.contains("portcullis_upstream_errors_total{kind=\"connect_refused\",upstream=\"main\"}"),
        "the dead endpoint was tried and passed over: {m}"
    );
    assert!(gw
        .access_lines()
        .iter()
        .all(|l| l["endpoint"] != dead.to_string().as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_stay_on_the_replica_that_created_them() {
    let a = Upstream::demo().await;
    let b = Upstream::demo().await;
    let yaml = config_for(&a.url, "").replace(
        "connect_timeout: 1s",
        &format!(
            "connect_timeout: 1s\n    endpoints: [\"{}\", \"{}\"]",
            a.addr, b.addr
        ),
    );
    let gw = Gateway::start(&yaml).await;
    // Round-robin would send every other request to the replica that never saw the
    // session (rmcp answers 404 there); pinning keeps each session on its own replica.
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(connect_session(&gw.url).await);
    }
    for c in &clients {
        for i in 0..4 {
            let r = c
                .service
                .call_tool(
                    CallToolRequestParams::new("echo")
                        .with_arguments(args(serde_json::json!({"text": format!("r{i}")}))),
                )
                .await
                .expect("call on the pinned replica");
            assert_eq!(text(&r), format!("r{i}"));
        }
    }
    // Both replicas served sessions (new sessions go round-robin).
    for replica in [a.addr, b.addr] {
        gw.wait_access("a request on each replica", |l| {
            l["endpoint"] == replica.to_string().as_str()
        })
        .await;
    }
    // A session id that names no replica is the gateway's 404.
    let r = http_client()
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", "9.not-a-replica")
        .header("mcp-protocol-version", "2025-11-25")
        .body(r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], -32013);
    assert_eq!(v["id"], 4);
}

/// A tools/list on session `sid` through `gw`: the HTTP status.
async fn list_on(gw: &Gateway, sid: &str) -> u16 {
    http_client()
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-11-25")
        .body(r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#)
        .send()
        .await
        .expect("answer")
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_replicas_sharing_a_session_key_serve_each_others_sessions() {
    let upstream = Upstream::demo().await;
    let dir = scratch_dir();
    let key = |name: &str, fill: &str| {
        let path = dir.join(name);
        std::fs::write(&path, fill.repeat(40)).expect("write key");
        format!("sessions:\n  key_file: {}\n", path.display())
    };
    let shared = key("shared", "a");
    let a = Gateway::fronting(&upstream, &shared).await;
    let b = Gateway::fronting(&upstream, &shared).await;
    let other = Gateway::fronting(&upstream, &key("other", "b")).await;

    let sid = raw_initialize(&a).await;
    assert_eq!(list_on(&a, &sid).await, 200);
    assert_eq!(list_on(&b, &sid).await, 200, "the other replica opens it");
    assert_eq!(
        list_on(&other, &sid).await,
        404,
        "a gateway with another key does not"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_session_id_on_a_stateless_request_is_ignored() {
    let upstream = Upstream::demo_stateless().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let r = stateless_call(
        &http_client(),
        &gw.url,
        "echo",
        serde_json::json!({"text": "s"}),
    )
    .header("mcp-session-id", "not-a-sealed-id")
    .send()
    .await
    .expect("answer");
    assert_eq!(r.status(), 200, "2026-07-28 has no sessions to look up");
    assert!(r.text().await.expect("body").contains("\"s\""));
}
