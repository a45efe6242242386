//! Streams stay streams, bodies stay whole: SSE events reach the client while the
//! upstream still holds the result back, and a 1 MiB argument arrives byte for byte.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use portcullis_e2e::*;
use tokio::sync::Notify;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_progress_event_arrives_while_the_upstream_holds_the_result() {
    let release = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let (r, c) = (release.clone(), calls.clone());
    let upstream = Upstream::serve(move || GateServer {
        release: r.clone(),
        calls: c.clone(),
    })
    .await;
    let gw = Gateway::fronting(&upstream, "").await;

    let mut resp = stateless_call(&http_client(), &gw.url, "gate", serde_json::json!({}))
        .send()
        .await
        .expect("response headers arrive before the result exists");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-accel-buffering"], "no");

    // Read until one whole SSE event is in: it must be the progress notification.
    let mut seen = String::new();
    while !seen.contains("\n\n") || messages(&seen).is_empty() {
        let chunk = resp
            .chunk()
            .await
            .expect("stream open")
            .expect("a chunk before the end");
        seen.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let first = messages(&seen);
    assert_eq!(first[0]["method"], "notifications/progress", "{seen}");
    assert!(!seen.contains("released"), "the result cannot exist yet");
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    release.notify_one();
    while let Some(chunk) = resp.chunk().await.expect("stream continues") {
        seen.push_str(std::str::from_utf8(&chunk).expect("utf-8"));
    }
    let all = messages(&seen);
    let last = all.last().expect("a result");
    assert_eq!(last["id"], 1);
    assert_eq!(last["result"]["content"][0]["text"], "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_mebibyte_argument_reaches_the_upstream_whole() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    // Not a repeated byte: a dropped or shifted chunk would show.
    let text: String = (0..1_048_576u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let resp = stateless_call(
        &http_client(),
        &gw.url,
        "echo",
        serde_json::json!({"text": text}),
    )
    .send()
    .await
    .expect("answer");
    assert_eq!(resp.status(), 200);
    let body = resp.text().await.expect("body");
    let msgs = messages(&body);
    let echoed = msgs.last().expect("result")["result"]["content"][0]["text"]
        .as_str()
        .expect("text")
        .to_owned();
    assert_eq!(echoed.len(), text.len());
    assert!(echoed == text, "every byte arrived in order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_413_and_the_gateway_keeps_serving() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "http:\n  max_body_size: 64KiB\n").await;
    let big = "x".repeat(70 * 1024);
    let resp = stateless_call(
        &http_client(),
        &gw.url,
        "echo",
        serde_json::json!({"text": big}),
    )
    .send()
    .await
    .expect("answer");
    assert_eq!(resp.status(), 413);
    let v: serde_json::Value = resp.json().await.expect("json error");
    assert_eq!(v["error"]["code"], -32008);
    assert_eq!(v["error"]["data"]["limit"], 65536);

    // Chunked (no Content-Length): refused while reading.
    let stream = futures_body(big.into_bytes());
    let resp = http_client()
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(stream)
        .send()
        .await
        .expect("answer");
    assert_eq!(resp.status(), 413);

    let ok = stateless_call(
        &http_client(),
        &gw.url,
        "echo",
        serde_json::json!({"text": "small"}),
    )
    .send()
    .await
    .expect("answer");
    assert_eq!(ok.status(), 200);
}

/// A body reqwest sends chunked, without Content-Length.
fn futures_body(bytes: Vec<u8>) -> reqwest::Body {
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
        .chunks(8192)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    reqwest::Body::wrap_stream(futures::stream::iter(chunks))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_are_forwarded_as_a_proxy_must_and_credentials_never() {
    let (url, _task) = header_mirror().await;
    let secret = std::env::temp_dir().join(format!("portcullis-cred-{}", std::process::id()));
    std::fs::write(&secret, "upstream-secret\n").expect("write credential");
    let yaml = config_for(&url, "").replace(
        "connect_timeout: 1s",
        &format!(
            "connect_timeout: 1s\n    headers:\n      x-upstream-key: from-config\n    credential:\n      value_file: {}",
            secret.display()
        ),
    );
    let gw = Gateway::start(&yaml).await;
    let resp = stateless_call(
        &http_client(),
        &gw.url,
        "echo",
        serde_json::json!({"text": "h"}),
    )
    .header("authorization", "Bearer client-token")
    .header("cookie", "session=client")
    .header("connection", "x-private")
    .header("x-private", "hop by hop")
    .header("te", "trailers")
    .header("mcp-param-region", "eu")
    .header("x-forwarded-for", "203.0.113.9")
    .send()
    .await
    .expect("answer");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers().get("x-hop").is_none(),
        "upstream's Connection-listed header stripped"
    );
    assert!(
        resp.headers().get("keep-alive").is_none(),
        "hop-by-hop response header stripped"
    );
    let v: serde_json::Value = resp.json().await.expect("json");
    let head = v["result"]["head"]
        .as_str()
        .expect("head")
        .to_ascii_lowercase();
    let upstream_addr = url.trim_start_matches("http://").trim_end_matches("/mcp");
    assert!(head.starts_with("post /mcp http/1.1"), "{head}");
    assert!(head.contains(&format!("host: {upstream_addr}")), "{head}");
    // The only Authorization the upstream sees is its own credential.
    assert_eq!(head.matches("authorization:").count(), 1, "{head}");
    for absent in ["cookie", "x-private", "\r\nte:", "client-token"] {
        assert!(
            !head.contains(absent),
            "{absent} reached the upstream:\n{head}"
        );
    }
    for present in [
        "mcp-param-region: eu",
        "mcp-method: tools/call",
        "mcp-name: echo",
        "mcp-protocol-version: 2026-07-28",
        "x-upstream-key: from-config",
        // The client is no trusted proxy (http.trusted_proxies is empty), so the
        // X-Forwarded-For it sent is dropped rather than passed on as if vouched for.
        "x-forwarded-for: 127.0.0.1\r\n",
        "accept: application/json, text/event-stream",
        "authorization: bearer upstream-secret",
    ] {
        assert!(head.contains(present), "{present} missing:\n{head}");
    }
}
