//! Global rate limits end to end: two gateway processes sharing one real Redis
//! (redis-server on loopback, started by the test, also over TLS with a private CA)
//! enforce one limit between them, and a gateway whose Redis is unreachable falls back
//! to its own local limit.

mod common;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
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
    let server = spawn_redis(
        &["--port", &port.to_string()],
        format!("redis://127.0.0.1:{port}"),
    );
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

fn spawn_redis(listen: &[&str], url: String) -> RedisServer {
    let child = Command::new("redis-server")
        .args(listen)
        .args(["--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs (`make test` installs it: apt-get install redis-server)");
    RedisServer { child, url }
}

/// A redis-server speaking only TLS (Debian's is built with it), its certificate from
/// a private CA written to `dir/redis-ca.pem`.
fn start_redis_tls(dir: &std::path::Path) -> RedisServer {
    let ca = portcullis_e2e::pki::TestCa::new("redis ca");
    ca.write(dir, "redis-ca.pem");
    let (cert, key) = ca.server(&["127.0.0.1"]).write(dir, "redis");
    let port = free_port();
    let server = spawn_redis(
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &cert.display().to_string(),
            "--tls-key-file",
            &key.display().to_string(),
            "--tls-auth-clients",
            "no",
        ],
        format!("rediss://127.0.0.1:{port}"),
    );
    // redis-server opens its listening socket once it is ready to serve.
    let deadline = Instant::now() + DEADLINE;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server (TLS) never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

/// A stateless `tools/call echo` to the gateway at `public`: status and body.
async fn call(public: &str) -> (u16, serde_json::Value) {
    let r = stateless_call(
        &http_client(),
        &format!("http://{public}/mcp"),
        "echo",
        json!({"text": "hi"}),
    )
    .send()
    .await
    .expect("answer");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

/// Starts `portcullis run` on a config whose route has a global limit (3 at once, then
/// one an hour) counted in `redis_url`; returns the process, public and admin addresses.
fn gateway(name: &str, upstream: &Upstream, redis_url: &str) -> (Proc, String, String) {
    gateway_with(name, upstream, redis_url, "")
}

/// Like [`gateway`], with `redis_extra` under `redis:`.
fn gateway_with(
    name: &str,
    upstream: &Upstream,
    redis_url: &str,
    redis_extra: &str,
) -> (Proc, String, String) {
    let dir = scratch(name);
    let config = dir.join("portcullis.yaml");
    let text = config_for(
        &upstream.url,
        &format!(
            "redis:\n  url: {redis_url}\n  timeout: 200ms\n{redis_extra}access_log:\n  enabled: false\naudit_log:\n  enabled: false\n"
        ),
    )
    // The binary runs with its default runtimes (one per thread).
    .replace("  work_stealing: true\n", "")
    .replace(
        "    upstream: main\n",
        "    upstream: main\n    rate_limits:\n      - {name: shared, per: route, rate: 1/h, burst: 3, global: true}\n",
    );
    std::fs::write(&config, text).expect("write config");
    start(&config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_holds_across_two_gateway_processes_sharing_redis() {
    let redis = start_redis();
    let upstream = Upstream::demo().await;
    let (_a, a, a_admin) = gateway("global-a", &upstream, &redis.url);
    let (_b, b, b_admin) = gateway("global-b", &upstream, &redis.url);
    assert_eq!(call(&a).await.0, 200);
    assert_eq!(call(&b).await.0, 200);
    assert_eq!(call(&a).await.0, 200);
    let (status, refused) = call(&b).await;
    assert_eq!(status, 429, "three calls spent the shared burst: {refused}");
    let ms = refused["error"]["data"]["retryAfterMs"]
        .as_u64()
        .expect("retryAfterMs");
    assert!(
        ms > 3_500_000 && ms <= 3_600_000,
        "Redis's own wait: {ms} ms"
    );
    assert_eq!(call(&a).await.0, 429, "on both gateways");
    for admin in [&a_admin, &b_admin] {
        let m = metrics_at(&format!("http://{admin}")).await;
        // The series exists from load (so alerts see a zero, not an absence).
        assert!(
            m.contains("portcullis_rate_limit_fallbacks_total{limit=\"shared\",route=\"/mcp\"} 0"),
            "Redis answered every check: {m}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_a_global_limit_falls_back_to_the_local_one() {
    let upstream = Upstream::demo().await;
    let dead = format!("redis://127.0.0.1:{}", free_port());
    let (_gw, public, admin) = gateway("global-dead", &upstream, &dead);
    for i in 0..3 {
        assert_eq!(call(&public).await.0, 200, "call {i}: the local burst");
    }
    assert_eq!(call(&public).await.0, 429, "the local limit holds");
    let m = metrics_at(&format!("http://{admin}")).await;
    assert!(
        m.contains(r#"portcullis_rate_limit_fallbacks_total{limit="shared",route="/mcp"} 4"#),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_global_limit_holds_over_rediss_with_a_private_ca() {
    let dir = scratch("global-tls-redis");
    let redis = start_redis_tls(&dir);
    let upstream = Upstream::demo().await;
    let ca = format!("  ca_file: {}\n", dir.join("redis-ca.pem").display());
    let (_a, a, a_admin) = gateway_with("global-tls-a", &upstream, &redis.url, &ca);
    let (_b, b, b_admin) = gateway_with("global-tls-b", &upstream, &redis.url, &ca);
    for public in [&a, &b, &a] {
        assert_eq!(call(public).await.0, 200);
    }
    assert_eq!(
        call(&b).await.0,
        429,
        "the burst is shared through Redis over TLS"
    );
    for admin in [&a_admin, &b_admin] {
        let m = metrics_at(&format!("http://{admin}")).await;
        assert!(
            m.contains("portcullis_rate_limit_fallbacks_total{limit=\"shared\",route=\"/mcp\"} 0"),
            "Redis answered every check over TLS: {m}"
        );
    }
}
