//! Running it: dead and silent upstreams, hot reload (good and bad files), metrics,
//! the access log and readiness.

use portcullis_e2e::*;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_a_prompt_502_never_a_hang() {
    // Bind then drop: nothing listens on this port any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let gw = Gateway::start(&config_for(&format!("http://127.0.0.1:{port}/mcp"), "")).await;
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "x"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["id"], 1);
    assert_eq!(v["error"]["code"], -32009);
    assert_eq!(v["error"]["data"]["upstream"], "main");
    assert!(v["error"]["message"]
        .as_str()
        .expect("message")
        .contains("connection refused"));
    gw.wait_metrics("the upstream error", |m| {
        m.contains("portcullis_upstream_errors_total{kind=\"connect_refused\",upstream=\"main\"} 1")
    })
    .await;
    // Not ready: the only upstream is down.
    gw.wait_for("/readyz", 503).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_upstream_is_a_504_after_its_read_timeout() {
    // Accepts connections, never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = silent.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept().await {
            held.push(s);
        }
    });
    let yaml = config_for(&format!("http://{addr}/mcp"), "").replace(
        "connect_timeout: 1s",
        "connect_timeout: 1s\n    read_timeout: 300ms",
    );
    let gw = Gateway::start(&yaml).await;
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "x"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 504);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], -32010);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_swaps_config_and_a_bad_file_keeps_the_old_one() {
    let first = Upstream::demo().await;
    let second = Upstream::demo().await;
    let gw = Gateway::fronting(&first, "").await;
    let v1 = gw
        .wait_metrics("a config version", |m| {
            m.contains("portcullis_config_info{version=")
        })
        .await;
    let version_of = |m: &str| -> String {
        m.lines()
            .find(|l| l.starts_with("portcullis_config_info{version="))
            .map(|l| l.split('"').nth(1).unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    let old_version = version_of(&v1);

    // A good change: route moves to /v2 and to the second upstream.
    let text = std::fs::read_to_string(&gw.config_path).expect("read config");
    let moved = text
        .replace("path: /mcp", "path: /v2")
        .replace(&first.url, &second.url);
    std::fs::write(&gw.config_path, &moved).expect("write config");
    let m = gw
        .wait_metrics("the new version", |m| {
            m.contains("portcullis_config_reloads_total{result=\"success\"} 1")
        })
        .await;
    assert_ne!(version_of(&m), old_version);
    let r = stateless_call(
        &http_client(),
        &format!("{}/v2", gw.base),
        "echo",
        json!({"text": "moved"}),
    )
    .send()
    .await
    .expect("answer");
    assert_eq!(r.status(), 200);
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "old"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404, "the old route is gone");

    // A broken file: refused, the previous config keeps serving.
    std::fs::write(&gw.config_path, format!("{moved}\nbogus_key: 1\n")).expect("write config");
    gw.wait_metrics("the refused reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    let r = stateless_call(
        &http_client(),
        &format!("{}/v2", gw.base),
        "echo",
        json!({"text": "kept"}),
    )
    .send()
    .await
    .expect("answer");
    assert_eq!(r.status(), 200, "old config still serves");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_flight_requests_finish_on_their_snapshot_across_a_reload() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let slow = spawn_slow_call(&gw.url);
    // Wait until the call is in flight, then move the route away.
    gw.wait_metrics("the slow call in flight", |m| {
        m.contains("portcullis_open_streams{route=\"/mcp\"} 1")
    })
    .await;
    let text = std::fs::read_to_string(&gw.config_path).expect("read");
    std::fs::write(&gw.config_path, text.replace("path: /mcp", "path: /moved")).expect("write");
    gw.wait_metrics("the reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"success\"} 1")
    })
    .await;
    let body = tokio::time::timeout(DEADLINE, slow)
        .await
        .expect("finishes")
        .expect("task");
    assert!(body.contains("done after 3 steps"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_access_log_and_readiness_describe_the_traffic() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    gw.wait_for("/readyz", 200).await;
    let ready: Value = http_client()
        .get(format!("{}/readyz", gw.admin))
        .send()
        .await
        .expect("readyz")
        .json()
        .await
        .expect("json");
    assert_eq!(ready["ready"], true);
    assert_eq!(ready["upstreams"]["main"], true);

    for _ in 0..3 {
        let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "m"}))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200);
        let _ = r.text().await;
    }
    let m = gw
        .wait_metrics("three calls", |m| {
            m.contains("portcullis_requests_total{http_method=\"POST\",route=\"/mcp\",rpc_method=\"tools/call\",status=\"200\"} 3")
        })
        .await;
    for name in [
        "portcullis_request_duration_seconds_bucket",
        "portcullis_upstream_response_seconds_bucket",
        "portcullis_requests_in_flight",
        "portcullis_upstream_up{upstream=\"main\"} 1",
    ] {
        assert!(m.contains(name), "{name} missing:\n{m}");
    }
    // Hostile method names do not become labels.
    let r = http_client()
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(r#"{"jsonrpc":"2.0","method":"evil/\u0000label"}"#)
        .send()
        .await
        .expect("answer");
    let _ = r.text().await;
    let m = gw.metrics().await;
    assert!(!m.contains("evil"), "unbounded label leaked");

    let call = gw
        .wait_access("a tools/call", |l| l["method"] == "tools/call")
        .await;
    for key in [
        "ts",
        "route",
        "status",
        "duration_ms",
        "upstream",
        "endpoint",
        "target",
    ] {
        assert!(!call[key].is_null(), "{key} missing in {call}");
    }
    assert_eq!(call["target"], "echo");
}
