//! Global rate limits end to end: two gateways sharing one real Redis (redis-server on
//! loopback, started by the test) enforce one limit between them, and a gateway whose
//! Redis is unreachable falls back to its own local limit.

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use portcullis_e2e::*;
use serde_json::json;

/// A redis-server on a free loopback port, stopped when dropped.
struct RedisServer {
    child: Child,
    url: String,
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn start_redis() -> RedisServer {
    let port = free_port();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (`make test` installs it: apt-get install redis-server)");
    let server = RedisServer {
        child,
        url: format!("redis://127.0.0.1:{port}"),
    };
    let deadline = Instant::now() + DEADLINE;
    loop {
        let pong = std::net::TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(1)))?;
            s.write_all(b"PING\r\n")?;
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)?;
            Ok(&buf == b"+PONG\r\n")
        });
        if matches!(pong, Ok(true)) {
            return server;
        }
        assert!(
            Instant::now() < deadline,
            "redis-server never answered PING"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A stateless `tools/call echo` through `gw`; the HTTP status.
async fn call(gw: &Gateway) -> u16 {
    stateless_call(&http_client(), &gw.url, "echo", json!({"text": "hi"}))
        .send()
        .await
        .expect("answer")
        .status()
        .as_u16()
}

fn limited_config(upstream: &Upstream, redis_url: &str) -> String {
    config_for(
        &upstream.url,
        &format!("redis:\n  url: {redis_url}\n  timeout: 200ms\n"),
    )
    .replace(
        "    upstream: main\n",
        "    upstream: main\n    rate_limits:\n      - {name: shared, per: route, rate: 1/h, burst: 3, global: true}\n",
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_holds_across_two_gateways_sharing_redis() {
    let redis = start_redis();
    let upstream = Upstream::demo().await;
    let a = Gateway::start(&limited_config(&upstream, &redis.url)).await;
    let b = Gateway::start(&limited_config(&upstream, &redis.url)).await;
    assert_eq!(call(&a).await, 200);
    assert_eq!(call(&b).await, 200);
    assert_eq!(call(&a).await, 200);
    assert_eq!(call(&b).await, 429, "three calls spent the shared burst");
    assert_eq!(call(&a).await, 429, "on both gateways");
    let refused: serde_json::Value =
        stateless_call(&http_client(), &b.url, "echo", json!({"text": "hi"}))
            .send()
            .await
            .expect("answer")
            .json()
            .await
            .expect("json");
    let ms = refused["error"]["data"]["retryAfterMs"]
        .as_u64()
        .expect("retryAfterMs");
    assert!(
        ms > 3_500_000 && ms <= 3_600_000,
        "Redis's own wait: {ms} ms"
    );
    for gw in [&a, &b] {
        let m = gw.metrics().await;
        assert!(
            !m.contains("portcullis_rate_limit_fallbacks_total{"),
            "Redis answered every check: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_global_limit_falls_back_to_the_local_one() {
    let upstream = Upstream::demo().await;
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let gw = Gateway::start(&limited_config(&upstream, &dead)).await;
    for i in 0..3 {
        assert_eq!(call(&gw).await, 200, "call {i}: the local burst");
    }
    assert_eq!(call(&gw).await, 429, "the local limit holds");
    let m = gw.metrics().await;
    assert!(
        m.contains(r#"portcullis_rate_limit_fallbacks_total{limit="shared",route="/mcp"} 4"#),
        "{m}"
    );
}
