//! Hostile and malformed input: each gets its documented answer (docs/errors.md) and
//! the gateway keeps serving everyone else.

use std::time::Duration;

use portcullis_e2e::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ACCEPT: &str = "application/json, text/event-stream";

async fn post(
    gw: &Gateway,
    headers: &[(&str, &str)],
    body: impl Into<reqwest::Body>,
) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = http_client().post(&gw.url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.body(body).send().await.expect("an answer");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.expect("body");
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, v, headers)
}

fn json_post() -> Vec<(&'static str, &'static str)> {
    vec![("content-type", "application/json"), ("accept", ACCEPT)]
}

async fn still_serving(gw: &Gateway) {
    let r = stateless_call(
        &http_client(),
        &gw.url,
        "echo",
        json!({"text": "still here"}),
    )
    .send()
    .await
    .expect("answer");
    assert_eq!(r.status(), 200, "the gateway keeps serving others");
    assert!(r.text().await.expect("body").contains("still here"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_get_parse_or_invalid_request_errors() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let deep = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{{\"a\":{}1{}}}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    let huge_id = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":\"{}\",\"method\":\"ping\"}}",
        "i".repeat(10_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16, i64, Value)> = vec![
        (
            "truncated",
            br#"{"jsonrpc":"2.0","id":1,"method":"too"#.to_vec(),
            400,
            -32700,
            Value::Null,
        ),
        ("empty", Vec::new(), 400, -32700, Value::Null),
        (
            "invalid utf-8",
            b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\"}".to_vec(),
            400,
            -32700,
            Value::Null,
        ),
        (
            "not json-rpc",
            br#"{"id":5,"method":"ping"}"#.to_vec(),
            400,
            -32600,
            json!(5),
        ),
        (
            "null id",
            br#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#.to_vec(),
            400,
            -32600,
            Value::Null,
        ),
        ("array of nothing", b"[]".to_vec(), 400, -32600, Value::Null),
        ("deep nesting", deep.into_bytes(), 400, -32600, Value::Null),
        ("huge id", huge_id.into_bytes(), 400, -32600, Value::Null),
        (
            "duplicate member",
            br#"{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}"#.to_vec(),
            400,
            -32600,
            json!(1),
        ),
        (
            "call without name",
            br#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{}}"#.to_vec(),
            400,
            -32602,
            json!(2),
        ),
    ];
    for (what, body, status, code, id) in cases {
        let (s, v, h) = post(&gw, &json_post(), body).await;
        assert_eq!(s, status, "{what}: {v}");
        assert_eq!(v["jsonrpc"], "2.0", "{what}");
        assert_eq!(v["error"]["code"], code, "{what}: {v}");
        assert_eq!(v["id"], id, "{what}");
        assert_eq!(h["content-type"], "application/json", "{what}");
    }
    still_serving(&gw).await;
    let m = gw.metrics().await;
    assert!(
        m.contains("portcullis_refusals_total{reason=\"parse_error\",route=\"/mcp\"} 3"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_rules_are_enforced_at_the_edge() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;

    let (s, v, _) = post(
        &gw,
        &[("content-type", "text/plain"), ("accept", ACCEPT)],
        ping,
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_i64()), (415, Some(-32007)));
    let (s, v, _) = post(&gw, &[("accept", ACCEPT)], ping).await;
    assert_eq!(
        (s, v["error"]["code"].as_i64()),
        (415, Some(-32007)),
        "missing content-type"
    );
    let (s, v, _) = post(
        &gw,
        &[
            ("content-type", "application/json"),
            ("accept", "application/json"),
        ],
        ping,
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_i64()), (406, Some(-32006)));
    let (s, _, _) = post(
        &gw,
        &[
            ("content-type", "application/json"),
            ("accept", "text/event-stream"),
        ],
        ping,
    )
    .await;
    assert_eq!(s, 406, "accept without application/json");

    let mut h = json_post();
    h.push(("mcp-protocol-version", "1999-01-01"));
    let (s, v, _) = post(&gw, &h, ping).await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32022)));
    assert_eq!(v["error"]["data"]["requested"], "1999-01-01");
    assert_eq!(v["id"], 1, "the refusal carries the request's id");

    let mut h = json_post();
    h.push(("mcp-protocol-version", "2025-11-25"));
    h.push(("mcp-protocol-version", "2025-11-25"));
    let (s, v, _) = post(&gw, &h, ping).await;
    assert_eq!(
        (s, v["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "duplicated version header"
    );

    let mut h = json_post();
    h.push(("mcp-protocol-version", "2025-06-18"));
    let (s, v, _) = post(&gw, &h, format!("[{ping}]")).await;
    assert_eq!(
        (s, v["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "batch outside 2025-03-26"
    );

    let r = http_client()
        .put(&gw.url)
        .body(ping)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, POST, DELETE, OPTIONS");
    let r = http_client()
        .post(format!("{}/nope", gw.base))
        .body(ping)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404);
    let r = http_client()
        .get(&gw.url)
        .header("accept", "application/json")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 406, "GET must accept text/event-stream");
    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateless_headers_must_agree_with_the_body() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let body = json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":"x"},"_meta": stateless_meta()}})
    .to_string();
    let base = [
        ("content-type", "application/json"),
        ("accept", ACCEPT),
        ("mcp-protocol-version", "2026-07-28"),
    ];
    for (what, extra) in [
        ("no Mcp-Method", vec![("mcp-name", "echo")]),
        (
            "wrong Mcp-Method",
            vec![("mcp-method", "tools/list"), ("mcp-name", "echo")],
        ),
        ("no Mcp-Name", vec![("mcp-method", "tools/call")]),
        (
            "wrong Mcp-Name",
            vec![("mcp-method", "tools/call"), ("mcp-name", "add")],
        ),
    ] {
        let mut h = base.to_vec();
        h.extend(extra);
        let (s, v, _) = post(&gw, &h, body.clone()).await;
        assert_eq!(
            (s, v["error"]["code"].as_i64()),
            (400, Some(-32020)),
            "{what}: {v}"
        );
        assert_eq!(v["id"], 3, "{what}");
    }
    // The base64 form of Mcp-Name is decoded before comparing.
    let mut h = base.to_vec();
    h.extend([
        ("mcp-method", "tools/call"),
        ("mcp-name", "=?base64?ZWNobw==?="),
    ]);
    let (s, _, _) = post(&gw, &h, body.clone()).await;
    assert_eq!(s, 200);
    // Header version and _meta version must match.
    let mut h = json_post();
    h.extend([("mcp-protocol-version", "2025-11-25")]);
    let (s, v, _) = post(&gw, &h, body).await;
    assert_eq!((s, v["error"]["code"].as_i64()), (400, Some(-32020)));
    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origin_and_host_are_validated() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(
        &upstream,
        "http:\n  allowed_origins: [\"http://localhost:*\"]\n  allowed_hosts: [127.0.0.1, localhost]\n",
    )
    .await;
    let call = |origin: Option<&str>, host: Option<&str>| {
        let mut r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "o"}));
        if let Some(o) = origin {
            r = r.header("origin", o);
        }
        if let Some(h) = host {
            r = r.header("host", h);
        }
        r.send()
    };
    let r = call(Some("http://evil.example.com"), None)
        .await
        .expect("answer");
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], -32005);
    let r = call(Some("http://localhost:6274"), None)
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:6274"
    );
    let r = call(None, Some("evil.example.com")).await.expect("answer");
    assert_eq!(r.status(), 403, "DNS rebinding: foreign Host");
    let r = call(None, None).await.expect("answer");
    assert_eq!(r.status(), 200, "no Origin: non-browser clients pass");
    // CORS preflight for an allowed origin.
    let r = http_client()
        .request(reqwest::Method::OPTIONS, &gw.url)
        .header("origin", "http://localhost:6274")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 204);
    assert!(r.headers()["access-control-allow-headers"]
        .to_str()
        .expect("ascii")
        .contains("mcp-session-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_and_garbage_connections_do_not_hold_up_others() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "http:\n  body_timeout: 1s\n").await;
    let addr = gw.base.trim_start_matches("http://").to_owned();

    // A client that promises 100 bytes, sends 10 and stalls.
    let mut slow = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    slow.write_all(
        b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
accept: application/json, text/event-stream\r\ncontent-length: 100\r\n\r\n{\"jsonrpc\"",
    )
    .await
    .expect("write");
    // Others are served meanwhile.
    still_serving(&gw).await;
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, slow.read_to_end(&mut answer))
        .await
        .expect("the gateway answers and closes")
        .expect("read");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("-32012"), "{text}");

    // Garbage instead of HTTP, and a connection that closes mid-headers.
    let mut junk = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    junk.write_all(b"\x16\x03\x01\x00\xffNOT HTTP\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), junk.read_to_end(&mut sink)).await;
    let mut half = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    half.write_all(b"POST /mcp HTTP/1.1\r\nhost: x\r\ncontent-le")
        .await
        .expect("write");
    drop(half);
    // Headers far past any sane size.
    let mut fat = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let big = format!(
        "GET /mcp HTTP/1.1\r\nx-big: {}\r\n\r\n",
        "a".repeat(2 << 20)
    );
    let _ = fat.write_all(big.as_bytes()).await;
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), fat.read_to_end(&mut sink)).await;
    still_serving(&gw).await;
}
