//! Endpoint pools: endpoints that follow a DNS answer (a Kubernetes headless Service)
//! with a resolver the test controls, a pinned session whose endpoint is replaced,
//! health checks that keep new sessions off a refusing endpoint, and least-in-flight
//! selection past a busy one. Every upstream is a real rmcp server on loopback.

#![allow(deprecated)]

use std::net::SocketAddr;
use std::sync::Arc;

use portcullis_e2e::*;

/// The name the upstream's URL carries; only the test's resolver knows it. (rmcp's
/// servers accept `localhost` as a Host; the system resolver is never asked.)
const NAME: &str = "localhost:8080";

fn pool_config(upstream: &str) -> String {
    format!(
        "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
server:\n  threads: 2\n  grace_period: 0s\n  work_stealing: true\n\
routes:\n  - path: /mcp\n    upstream: main\n\
upstreams:\n  main:\n    connect_timeout: 1s\n{upstream}"
    )
}

/// A raw initialize with JSON-RPC id `id`; the session id.
async fn initialize(url: &str, id: u64) -> String {
    initialize_raw_as(url, None, id).await
}

/// A gateway in front of the DNS name [`NAME`] as `dns` answers it, with `more` YAML
/// under the upstream, once the first answer is in use.
async fn discovering(dns: &Arc<TestResolver>, more: &str) -> Gateway {
    let gw = Gateway::start_resolving(
        &pool_config(&format!(
            "    url: http://{NAME}/mcp\n    discovery:\n      refresh: 100ms\n{more}"
        )),
        dns.clone(),
    )
    .await;
    gw.wait_metrics("the first answer in use", |m| {
        m.contains(&endpoints_gauge("healthy", 1))
    })
    .await;
    gw
}

/// A `tools/call` of `echo` in session `sid` with id `id`; the HTTP status.
async fn echo(url: &str, sid: &str, id: u64) -> u16 {
    echo_with_id(url, sid, id).await.0
}

/// The endpoint the access log says served JSON-RPC id `id` with `method`.
async fn served_by(gw: &Gateway, method: &str, id: u64) -> String {
    let line = gw
        .wait_access(&format!("{method} {id}"), |l| {
            l["method"] == method && l["id"] == id
        })
        .await;
    line["endpoint"].as_str().unwrap_or("none").to_owned()
}

fn endpoints_gauge(state: &str, n: usize) -> String {
    format!("portcullis_upstream_endpoints{{state=\"{state}\",upstream=\"main\"}} {n}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_follow_the_dns_answer_and_a_replaced_endpoint_s_sessions_end_with_404() {
    let old = Upstream::demo().await;
    let new = Upstream::demo().await;
    let dns = Arc::new(TestResolver::default());
    dns.set(NAME, &[old.addr]);
    let gw = discovering(&dns, "      drain: 1m\n").await;
    gw.wait_for("/readyz", 200).await;

    let pinned = initialize(&gw.url, 1).await;
    assert_eq!(served_by(&gw, "initialize", 1).await, old.addr.to_string());
    assert_eq!(echo(&gw.url, &pinned, 2).await, 200);

    // The pod is replaced: the Service's answer now names only the new one.
    dns.set(NAME, &[new.addr]);
    gw.wait_metrics("the old endpoint draining", |m| {
        m.contains(&endpoints_gauge("draining", 1)) && m.contains(&endpoints_gauge("healthy", 1))
    })
    .await;
    let fresh = initialize(&gw.url, 3).await;
    assert_eq!(
        served_by(&gw, "initialize", 3).await,
        new.addr.to_string(),
        "a new session goes to the endpoint the DNS answer names"
    );
    assert_eq!(
        echo(&gw.url, &pinned, 4).await,
        200,
        "a draining endpoint still serves the sessions pinned to it"
    );
    assert_eq!(served_by(&gw, "tools/call", 4).await, old.addr.to_string());

    // The old pod goes away: its sessions are gone, and the client is told so.
    drop(old);
    assert_eq!(
        echo(&gw.url, &pinned, 5).await,
        404,
        "the spec's answer for a session the server no longer has"
    );
    gw.wait_metrics("the refusing draining endpoint forgotten", |m| {
        m.contains(&endpoints_gauge("draining", 0))
    })
    .await;
    assert_eq!(
        echo(&gw.url, &fresh, 6).await,
        200,
        "the new pod's sessions go on"
    );

    // A DNS failure keeps the endpoints found before.
    dns.set(NAME, &[]);
    gw.wait_metrics("a failed resolution counted", |m| {
        m.contains("portcullis_discovery_failures_total{upstream=\"main\"}")
    })
    .await;
    assert_eq!(echo(&gw.url, &fresh, 7).await, 200);
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_endpoint_of_three_refusing_fails_no_new_session_once_it_is_marked_unhealthy() {
    let a = Upstream::demo().await;
    let b = Upstream::demo().await;
    // A port nothing listens on: connections to it are refused.
    let dead: SocketAddr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let gw = Gateway::start(&pool_config(&format!(
        "    url: {}\n    endpoints: [\"{}\", \"{dead}\", \"{}\"]\n    health_check:\n      interval: 100ms\n      unhealthy_after: 1\n",
        a.url, a.addr, b.addr
    )))
    .await;
    gw.wait_metrics("the refusing endpoint marked unhealthy", |m| {
        m.contains(&endpoints_gauge("unhealthy", 1)) && m.contains(&endpoints_gauge("healthy", 2))
    })
    .await;
    let refused = |m: &str| {
        m.lines()
            .find(|l| {
                l.starts_with(
                    "portcullis_upstream_errors_total{kind=\"connect_refused\",upstream=\"main\"}",
                )
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let before = refused(&gw.metrics().await);
    for id in 0..30 {
        initialize(&gw.url, 100 + id).await;
    }
    let mut used = std::collections::BTreeSet::new();
    for id in 0..30 {
        used.insert(served_by(&gw, "initialize", 100 + id).await);
    }
    assert_eq!(
        used,
        [a.addr.to_string(), b.addr.to_string()]
            .into_iter()
            .collect(),
        "both healthy endpoints share the new sessions, the refusing one gets none"
    );
    assert_eq!(
        refused(&gw.metrics().await),
        before,
        "no connection was even tried to the unhealthy endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_sessions_go_past_an_endpoint_busy_with_a_long_call() {
    let release = Arc::new(tokio::sync::Notify::new());
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let server = {
        let (release, calls) = (release.clone(), calls.clone());
        move || GateServer {
            release: release.clone(),
            calls: calls.clone(),
        }
    };
    let a = Upstream::serve(server.clone()).await;
    let b = Upstream::serve(server).await;
    let gw = Gateway::start(&pool_config(&format!(
        "    url: {}\n    endpoints: [\"{}\", \"{}\"]\n",
        a.url, a.addr, b.addr
    )))
    .await;
    let busy = initialize(&gw.url, 1).await;
    let busy_at = served_by(&gw, "initialize", 1).await;
    let held = {
        let (url, sid) = (gw.url.clone(), busy.clone());
        tokio::spawn(async move {
            session_post(
                &url,
                &sid,
                r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"gate","arguments":{}}}"#.to_owned(),
            )
            .send()
                .await
                .expect("answer")
                .text()
                .await
                .expect("body")
        })
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while calls.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long call never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for id in 10..16 {
        initialize(&gw.url, id).await;
        assert_ne!(
            served_by(&gw, "initialize", id).await,
            busy_at,
            "initialize {id} went to the endpoint with a call in flight"
        );
    }
    // A permit, should the call not be waiting yet.
    release.notify_one();
    let body = held.await.expect("the held call ends");
    assert!(body.contains("released"), "{body}");
}

/// A `tools/call` of `echo` in session `sid`; the status and the session id the answer
/// gave, if any.
async fn echo_with_id(url: &str, sid: &str, id: u64) -> (u16, Option<String>) {
    let r = session_post(
        url,
        sid,
        serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text":"hi"}}})
        .to_string(),
    )
    .send()
    .await
    .expect("answer");
    let given = r
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let status = r.status().as_u16();
    let body = r.text().await.expect("body");
    if status == 200 {
        assert!(body.contains("hi"), "the echo came back: {body}");
    }
    (status, given)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_session_failover_a_session_whose_endpoint_is_gone_moves_to_a_live_one_once() {
    let old = Upstream::demo().await;
    let new = Upstream::demo().await;
    let dns = Arc::new(TestResolver::default());
    dns.set(NAME, &[old.addr]);
    let gw = discovering(&dns, "    session_failover: reinitialize\n").await;
    let sid = initialize(&gw.url, 1).await;
    assert_eq!(echo_with_id(&gw.url, &sid, 2).await.0, 200);

    dns.set(NAME, &[new.addr]);
    gw.wait_metrics("the old endpoint draining", |m| {
        m.contains(&endpoints_gauge("draining", 1))
    })
    .await;
    drop(old);
    let (status, moved) = echo_with_id(&gw.url, &sid, 3).await;
    assert_eq!(status, 200, "the call went on in a new session");
    let moved = moved.expect("the answer names the new session");
    assert_ne!(moved, sid);
    assert_eq!(served_by(&gw, "tools/call", 3).await, new.addr.to_string());

    // A client that keeps the old id is not given a new session on every request.
    let (status, again) = echo_with_id(&gw.url, &sid, 4).await;
    assert_eq!(status, 200);
    assert!(again.is_some(), "told the new id again");
    assert_eq!(
        echo_with_id(&gw.url, &moved, 5).await.0,
        200,
        "the new id works"
    );
    let m = gw.metrics().await;
    assert!(
        m.contains("portcullis_session_failovers_total{upstream=\"main\"} 1"),
        "one move for three calls: {m}"
    );
    drop(new);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_session_failover_the_same_session_gets_404() {
    let old = Upstream::demo().await;
    let new = Upstream::demo().await;
    let gw = Gateway::start(&pool_config(&format!(
        "    url: {}\n    endpoints: [\"{}\"]\n",
        old.url, old.addr
    )))
    .await;
    let sid = initialize(&gw.url, 1).await;
    // The endpoint leaves the config (a reload): its session is unknown now.
    let text = std::fs::read_to_string(&gw.config_path).expect("config");
    gw.write_file(
        "portcullis.yaml",
        &text.replace(
            &format!("[\"{}\"]", old.addr),
            &format!("[\"{}\"]", new.addr),
        ),
    );
    gw.wait_metrics("the reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"success\"} 1")
    })
    .await;
    assert_eq!(echo_with_id(&gw.url, &sid, 2).await.0, 404);
    drop(old);
}
