//! The edge against clients that misbehave on the wire: ones that stop reading, drip
//! their headers, hold idle connections, smuggle framing, pipeline, speak HTTP/1.0 or
//! claim a forwarded address; and answers that are large or long. Each resource a
//! client can hold (a gate slot, a connection, a stream) comes back, and nothing is
//! lost or delivered twice.

#![allow(deprecated)] // rmcp 3.x marks parts of its API deprecated (SEP-2577).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use portcullis_e2e::*;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::*;
use rmcp::{tool, tool_handler, tool_router, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `big` arguments.
#[derive(Deserialize, JsonSchema)]
struct BigArgs {
    /// Length of the text answered, in bytes.
    bytes: usize,
}

/// `echo` arguments.
#[derive(Deserialize, JsonSchema)]
struct EchoArgs {
    text: String,
}

/// An upstream whose `big` tool answers a text of any size.
#[derive(Clone, Default)]
struct Big;

/// The text `big` answers: a pattern that shows any byte lost, doubled or moved.
fn pattern(len: usize) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
    (0..len)
        .map(|i| ALPHABET[(i / 7 + i) % ALPHABET.len()] as char)
        .collect()
}

#[tool_router]
impl Big {
    #[tool(description = "Answers a text of the given length")]
    async fn big(&self, Parameters(BigArgs { bytes }): Parameters<BigArgs>) -> String {
        pattern(bytes)
    }

    #[tool(description = "Echo the given text back")]
    async fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }
}

#[tool_handler]
impl ServerHandler for Big {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

fn addr_of(gw: &Gateway) -> String {
    gw.base.trim_start_matches("http://").to_owned()
}

/// A raw 2026-07-28 `tools/call` request (HTTP/1.1 unless `version` says otherwise),
/// without a progress token so the answer may be plain JSON.
fn raw_call(version: &str, tool: &str, arguments: Value, extra_headers: &str) -> Vec<u8> {
    let body = json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}
        }}
    })
    .to_string();
    format!(
        "POST /mcp {version}\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
accept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\n\
mcp-method: tools/call\r\nmcp-name: {tool}\r\n{extra_headers}content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads until the gateway closes the connection, failing after [`DEADLINE`].
async fn read_until_closed(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut out))
        .await
        .expect("the gateway closes the connection")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

fn metric(m: &str, series: &str) -> f64 {
    m.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_loses_its_gate_slot_at_the_write_timeout() {
    let upstream = Upstream::serve(Big::default).await;
    // One call at a time; the next waits its turn rather than being refused.
    let config = config_for(&upstream.url, "http:\n  write_timeout: 1s\n").replace(
        "connect_timeout: 1s\n",
        "connect_timeout: 1s\n    concurrency:\n      max_in_flight: 1\n      max_queue: 4\n      queue_timeout: 20s\n",
    );
    let gw = Gateway::start(&config).await;

    // A client with a tiny receive buffer asks for 10 MiB and never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let mut stalled = socket
        .connect(addr_of(&gw).parse().expect("addr"))
        .await
        .expect("connect");
    stalled
        .write_all(&raw_call("HTTP/1.1", "big", json!({"bytes": 10 << 20}), ""))
        .await
        .expect("write");
    gw.wait_metrics("the stalled call holding the slot", |m| {
        m.contains("portcullis_gate_in_flight{")
            && m.lines()
                .any(|l| l.starts_with("portcullis_gate_in_flight{") && l.ends_with(" 1"))
    })
    .await;

    // Another caller gets through once the write timeout cuts the stalled client.
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "next"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("body").contains("next"));
    let m = gw
        .wait_metrics("the write timeout counted and the slot back", |m| {
            m.contains("portcullis_client_timeouts_total{timeout=\"write\"} 1")
                && m.lines()
                    .filter(|l| l.starts_with("portcullis_gate_in_flight{"))
                    .all(|l| l.ends_with(" 0"))
        })
        .await;
    assert!(m.contains("reason=\"client_write_timeout\""), "{m}");
    drop(stalled);
}

/// A stateless `tools/call` as an HTTP/2 request.
fn h2_call(base: &str, tool: &str, args: Value) -> (http::Request<()>, bytes::Bytes) {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": args, "_meta": stateless_meta()}});
    let req = http::Request::post(format!("{base}/mcp"))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(())
        .expect("request");
    (req, bytes::Bytes::from(body.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_h2_stream_is_cut_at_the_write_timeout_while_its_connection_goes_on() {
    let upstream = Upstream::serve(Big::default).await;
    let config = config_for(&upstream.url, "http:\n  write_timeout: 1s\n  h2c: true\n").replace(
        "connect_timeout: 1s\n",
        "connect_timeout: 1s\n    concurrency:\n      max_in_flight: 1\n      max_queue: 4\n      queue_timeout: 20s\n",
    );
    let gw = Gateway::start(&config).await;
    // One HTTP/2 connection whose streams get a 1 KiB window each (the connection's
    // own window is large): a stream the client never reads stalls at 1 KiB.
    let tcp = TcpStream::connect(addr_of(&gw)).await.expect("connect");
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(1024)
        .initial_connection_window_size(16 << 20)
        .handshake::<_, bytes::Bytes>(tcp)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");

    // Stream A asks for 4 MiB and never reads its body: it holds the only gate slot.
    let (req, body) = h2_call(&gw.base, "big", json!({"bytes": 4 << 20}));
    let (stalled, mut send) = client.send_request(req, false).expect("send A");
    send.send_data(body, true).expect("body A");
    let stalled = stalled.await.expect("A's head");
    assert_eq!(stalled.status(), 200);
    gw.wait_metrics("A holding the slot", |m| {
        m.lines()
            .any(|l| l.starts_with("portcullis_gate_in_flight{") && l.ends_with(" 1"))
    })
    .await;

    // Stream B on the same connection waits for the slot and is served once A is cut.
    let mut client = client.ready().await.expect("ready again");
    let (req, body) = h2_call(&gw.base, "echo", json!({"text": "after the stall"}));
    let (answer, mut send) = client.send_request(req, false).expect("send B");
    send.send_data(body, true).expect("body B");
    let answer = tokio::time::timeout(DEADLINE, answer)
        .await
        .expect("B answered in time")
        .expect("B's head");
    assert_eq!(answer.status(), 200);
    let mut body = answer.into_body();
    let mut text = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("B's body");
        let _ = body.flow_control().release_capacity(chunk.len());
        text.extend_from_slice(&chunk);
    }
    assert!(String::from_utf8_lossy(&text).contains("after the stall"));

    // A was reset, counted as a write timeout, and its slot came back.
    let mut a_body = stalled.into_body();
    let mut a_failed = false;
    while let Some(chunk) = a_body.data().await {
        match chunk {
            Ok(c) => {
                let _ = a_body.flow_control().release_capacity(c.len());
            }
            Err(_) => {
                a_failed = true;
                break;
            }
        }
    }
    assert!(a_failed, "the stalled stream was reset, not finished");
    gw.wait_metrics("the write timeout and the slot back", |m| {
        m.contains("portcullis_client_timeouts_total{timeout=\"write\"} 1")
            && m.lines()
                .filter(|l| l.starts_with("portcullis_gate_in_flight{"))
                .all(|l| l.ends_with(" 0"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_tool_result_arrives_byte_exact_through_a_policy_route() {
    let upstream = Upstream::serve(Big::default).await;
    let config = config_for(&upstream.url, "").replace(
        "    upstream: main\n",
        "    upstream: main\n    policy: policy.yaml\n",
    );
    let gw = Gateway::start_with_files(
        &config,
        &[(
            "policy.yaml",
            "default: allow\nrules:\n  - {name: h, effect: hide, targets: [{tool: \"secret*\"}]}\n",
        )],
    )
    .await;
    let len = 64 << 20;
    let r = stateless_call(&http_client(), &gw.url, "big", json!({"bytes": len}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let body = r.text().await.expect("body");
    let results: Vec<Value> = messages(&body)
        .into_iter()
        .filter(|m| m.get("result").is_some())
        .collect();
    assert_eq!(results.len(), 1, "exactly one result, delivered once");
    let text = results[0]["result"]["content"][0]["text"]
        .as_str()
        .expect("text");
    assert_eq!(text.len(), len);
    assert!(
        text == pattern(len),
        "the 64 MiB text arrived byte for byte"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_stream_gets_keep_alive_comments() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "http:\n  stream_keepalive: 200ms\n").await;
    let sid = initialize_raw(&gw.url, "unused").await;
    let mut resp = http_client()
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("stream");
    assert_eq!(resp.status(), 200);
    let mut seen = String::new();
    while !seen.contains(": keep-alive\n\n") {
        let chunk = tokio::time::timeout(DEADLINE, resp.chunk())
            .await
            .expect("a keep-alive before the deadline")
            .expect("read")
            .expect("the stream stays open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    let m = gw.metrics().await;
    assert!(
        metric(&m, "portcullis_stream_keepalives_total") >= 1.0,
        "{m}"
    );
    assert!(m.contains("portcullis_standalone_streams_open 1"), "{m}");
    // A client that vanishes is found (its next keep-alive cannot be written) and its
    // stream place comes back.
    drop(resp);
    gw.wait_metrics("the vanished client's stream closed", |m| {
        m.contains("portcullis_standalone_streams_open 0")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_dripped_slower_than_the_header_timeout_are_cut() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "http:\n  header_timeout: 500ms\n").await;
    let mut s = TcpStream::connect(addr_of(&gw)).await.expect("connect");
    // One byte every 50 ms: each read makes progress, the headers never end in time.
    let head = b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\nx-drip: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let (mut rd, mut wr) = s.split();
    let drip = async {
        let mut sent = 0;
        for b in head.iter() {
            if wr.write_all(&[*b]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        sent
    };
    let read = async {
        let mut out = Vec::new();
        let _ = rd.read_to_end(&mut out).await;
        out
    };
    let (sent, _answer) = tokio::select! {
        out = read => (None, out),
        sent = drip => (Some(sent), Vec::new()),
    };
    assert!(
        sent.is_none(),
        "the gateway closed the connection before the headers were complete"
    );
    let m = gw
        .wait_metrics("the header timeout counted", |m| {
            m.contains("portcullis_client_timeouts_total{timeout=\"header\"} 1")
        })
        .await;
    drop(m);
    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_at_the_idle_timeout() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "http:\n  idle_timeout: 1s\n").await;
    let mut s = TcpStream::connect(addr_of(&gw)).await.expect("connect");
    s.write_all(&raw_call("HTTP/1.1", "echo", json!({"text": "once"}), ""))
        .await
        .expect("write");
    let text = read_until_closed(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("once"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    gw.wait_metrics("the idle timeout counted", |m| {
        metric(m, "portcullis_client_timeouts_total{timeout=\"idle\"}") >= 1.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_refused_and_the_connection_closed() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let mut s = TcpStream::connect(addr_of(&gw)).await.expect("connect");
    // A smuggling attempt: the second request hides in what one framing calls a body.
    s.write_all(
        b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
accept: application/json, text/event-stream\r\ncontent-length: 4\r\n\
transfer-encoding: chunked\r\n\r\n0\r\n\r\nGET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n",
    )
    .await
    .expect("write");
    let text = read_until_closed(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "nothing smuggled: {text}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );

    // Other framings two parsers could read differently: refused, connection closed,
    // nothing after the head served.
    for framing in [
        "content-length: 4\r\ncontent-length: 40\r\n",
        "content-length: 4, 40\r\n",
        "transfer-encoding: chunked, gzip\r\n",
        "transfer-encoding: identity\r\n",
    ] {
        let mut s = TcpStream::connect(addr_of(&gw)).await.expect("connect");
        let req = format!(
            "POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
accept: application/json, text/event-stream\r\n{framing}\r\n0\r\n\r\nGET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let text = read_until_closed(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{framing}: {text}");
        assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{framing}: {text}");
    }
    still_serving(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicated_mcp_method_or_mcp_name_header_is_refused() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    for dup in ["mcp-method: tools/call\r\n", "mcp-name: echo\r\n"] {
        let mut s = TcpStream::connect(addr_of(&gw)).await.expect("connect");
        let req = raw_call(
            "HTTP/1.1",
            "echo",
            json!({"text": "x"}),
            &format!("{dup}connection: close\r\n"),
        );
        s.write_all(&req).await.expect("write");
        let text = read_until_closed(&mut s).await;
        assert!(text.starts_with("HTTP/1.1 400"), "{dup}: {text}");
        assert!(!text.contains("\"text\":\"x\""), "never forwarded: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_client_gets_no_chunked_answer() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    for (tool, args, expect) in [
        ("echo", json!({"text": "old client"}), "old client"),
        // With a progress token the answer is an SSE stream: still not chunked.
        (
            "slow",
            json!({"steps": 2, "delay_ms": 50}),
            "done after 2 steps",
        ),
    ] {
        let mut s = TcpStream::connect(addr_of(&gw)).await.expect("connect");
        let mut req = String::from_utf8(raw_call("HTTP/1.0", tool, args, "")).expect("utf-8");
        if tool == "slow" {
            req = req.replace(
                "\"clientCapabilities\":{}",
                "\"clientCapabilities\":{}},\"progressToken\":\"p\"",
            );
            req = req.replacen("}}}", "}}", 1);
            // Re-frame the edited body.
            let (head, body) = req.split_once("\r\n\r\n").expect("head");
            let head: String = head
                .lines()
                .filter(|l| !l.starts_with("content-length"))
                .map(|l| format!("{l}\r\n"))
                .collect();
            req = format!("{head}content-length: {}\r\n\r\n{body}", body.len());
        }
        s.write_all(req.as_bytes()).await.expect("write");
        let text = read_until_closed(&mut s).await;
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1."), "{text}");
        assert!(head.contains(" 200"), "{text}");
        assert!(
            !head.to_ascii_lowercase().contains("transfer-encoding"),
            "HTTP/1.0 has no chunked coding: {head}"
        );
        assert!(body.contains(expect), "{text}");
        assert!(!body.contains("\r\n0\r\n"), "no chunk framing: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_once_each() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let mut s = TcpStream::connect(addr_of(&gw)).await.expect("connect");
    let mut both = raw_call("HTTP/1.1", "slow", json!({"steps": 2, "delay_ms": 100}), "");
    both.extend(raw_call(
        "HTTP/1.1",
        "echo",
        json!({"text": "second in line"}),
        "connection: close\r\n",
    ));
    s.write_all(&both).await.expect("write");
    let text = read_until_closed(&mut s).await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let first = text.find("done after 2 steps").expect("the first answer");
    let second = text.find("second in line").expect("the second answer");
    assert!(first < second, "answered in the order asked: {text}");
    assert_eq!(text.matches("done after 2 steps").count(), 1, "{text}");
    assert_eq!(text.matches("second in line").count(), 1, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_and_counted() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "admission:\n  max_connections: 2\n").await;
    let a = TcpStream::connect(addr_of(&gw)).await.expect("connect");
    let b = TcpStream::connect(addr_of(&gw)).await.expect("connect");
    gw.wait_metrics("two connections open", |m| {
        m.contains("portcullis_connections_open 2")
    })
    .await;
    let mut c = TcpStream::connect(addr_of(&gw)).await.expect("connect");
    let text = read_until_closed(&mut c).await;
    assert!(text.is_empty(), "closed before any byte: {text}");
    gw.wait_metrics("the refused connection counted", |m| {
        m.contains("portcullis_connections_rejected_total 1")
    })
    .await;
    // A connection that closes gives its place back.
    drop(a);
    gw.wait_metrics("one connection open", |m| {
        m.contains("portcullis_connections_open 1")
    })
    .await;
    still_serving(&gw).await;
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_names_the_client_and_an_untrusted_one_does_not() {
    let (url, _mirror) = header_mirror().await;
    let gw = Gateway::start(&config_for(
        &url,
        "http:\n  trusted_proxies: [127.0.0.1/32]\n",
    ))
    .await;
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "t"}))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let head = v["result"]["head"]
        .as_str()
        .expect("head")
        .to_ascii_lowercase();
    assert!(
        head.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\r\n"),
        "the chain goes on with the proxy appended: {head}"
    );
    gw.wait_access("the forwarded client", |l| l["client"] == "203.0.113.9")
        .await;

    // The same header from a peer that is not trusted is not believed.
    let (url, _mirror2) = header_mirror().await;
    let plain = Gateway::start(&config_for(&url, "")).await;
    let r = stateless_call(&http_client(), &plain.url, "echo", json!({"text": "t"}))
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let _ = r.text().await;
    let line = plain
        .wait_access("the direct client", |l| l["client"].is_string())
        .await;
    assert_eq!(line["client"], "127.0.0.1", "{line}");
}

/// An upstream that starts an SSE answer (one progress event), then drops the
/// connection mid-stream.
async fn breaking_upstream() -> (String, tokio::task::JoinHandle<()>) {
    raw_upstream(|mut s| async move {
                let mut buf = [0u8; 8192];
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let event = "data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progressToken\":\"p1\",\"progress\":1}}\n\n";
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n{:x}\r\n{event}\r\n",
                    event.len()
                );
                let _ = s.write_all(head.as_bytes()).await;
                // Gone without the last chunk.
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_upstream_breaks_mid_stream_never_looks_whole_to_the_client() {
    let (url, _up) = breaking_upstream().await;
    let gw = Gateway::start(&config_for(&url, "http:\n  h2c: true\n")).await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(DEADLINE)
        .build()
        .expect("client");
    // HTTP/1.1: the head arrives, then the connection closes without the last chunk.
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "t"}))
        .send()
        .await
        .expect("the head arrives");
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "a cut answer reads as an error");
    // HTTP/2: the stream is reset (the reset may overtake the queued head); either way
    // the client sees an error, never a short answer that ended normally.
    let sent = stateless_call(&h2c, &gw.url, "echo", json!({"text": "t"}))
        .send()
        .await;
    match sent {
        Ok(r) => assert!(
            r.bytes().await.is_err(),
            "a cut h2 answer reads as an error"
        ),
        Err(e) => assert!(format!("{e:?}").contains("Reset"), "{e:?}"),
    }
    gw.wait_metrics("both counted as broken upstream answers", |m| {
        m.contains("portcullis_refusals_total{reason=\"upstream_broken\",route=\"/mcp\"} 2")
    })
    .await;
}

/// An upstream that refuses every request with 401 and a challenge.
async fn refusing_upstream() -> (String, tokio::task::JoinHandle<()>) {
    raw_upstream(|mut s| async move {
                let mut buf = [0u8; 8192];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    let answer = b"HTTP/1.1 401 Unauthorized\r\nwww-authenticate: Bearer realm=\"up\"\r\ncontent-length: 0\r\n\r\n";
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_refuses_the_gateways_credential_is_a_502_naming_it() {
    let (url, _up) = refusing_upstream().await;
    let gw = Gateway::start(&config_for(&url, "")).await;
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "t"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(
        r.status(),
        502,
        "the client's own credentials are not at fault"
    );
    assert!(
        r.headers().get("www-authenticate").is_none(),
        "the upstream's challenge is not the client's"
    );
    let v: Value = r.json().await.expect("json");
    let msg = v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
        + &v["error"]["data"].to_string();
    assert!(msg.contains("upstreams.main.credential"), "{v}");
    gw.wait_metrics("the auth failure counted", |m| {
        m.contains("portcullis_upstream_errors_total{kind=\"auth\",upstream=\"main\"} 1")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gate_series_exist_from_load_and_log_writes_trigger_no_reload() {
    let upstream = Upstream::demo().await;
    let config = config_for(&upstream.url, "").replace(
        "connect_timeout: 1s\n",
        "connect_timeout: 1s\n    concurrency:\n      max_in_flight: 2\n",
    );
    let gw = Gateway::start(&config).await;
    let m = gw.metrics().await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("portcullis_gate_in_flight{") && l.ends_with(" 0")),
        "a gate's series before any call: {m}"
    );
    // Traffic writes the access and audit logs beside the config file.
    for i in 0..3 {
        let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": i}))
            .send()
            .await
            .expect("answer");
        let _ = r.text().await;
    }
    gw.wait_access("the calls logged", |l| l["method"] == "tools/call")
        .await;
    // A real change reloads once; the log writes before it reloaded nothing.
    gw.write_file(
        "portcullis.yaml",
        &(std::fs::read_to_string(&gw.config_path).expect("read") + "\n"),
    );
    let m = gw
        .wait_metrics("the real change reloaded", |m| {
            m.contains("portcullis_config_reloads_total{result=\"success\"} 1")
        })
        .await;
    assert!(
        !m.contains("portcullis_config_reloads_total{result=\"failure\"} 1"),
        "{m}"
    );
}

/// An upstream that answers a call named "first" and, on the same kept-alive
/// connection, reads the next call and closes without answering it. It counts the
/// arrivals of that second call.
async fn vanishing_upstream() -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/mcp", l.local_addr().expect("addr"));
    let arrivals = Arc::new(AtomicUsize::new(0));
    let count = arrivals.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                while let Some(req) = read_request(&mut s).await {
                    if req.contains("\"first\"") {
                        let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"first"}]}}"#;
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                            body.len()
                        );
                        if s.write_all(answer.as_bytes()).await.is_err() {
                            return;
                        }
                    } else {
                        count.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                }
            });
        }
    });
    (url, arrivals)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_the_upstream_read_is_never_sent_twice() {
    let (url, arrivals) = vanishing_upstream().await;
    let gw = Gateway::start(&config_for(&url, "")).await;
    // The first call leaves a pooled connection behind for the second to reuse.
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "first"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let _ = r.text().await;
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "second"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 502, "the upstream closed without answering");
    let _ = r.text().await;
    assert_eq!(
        arrivals.load(Ordering::SeqCst),
        1,
        "written once: a request that reached the upstream is not retried"
    );
}

/// An upstream that answers `subscriptions/listen` with an SSE stream it never writes
/// to, and anything else with a small JSON result.
async fn listening_upstream() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/mcp", l.local_addr().expect("addr"));
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                while let Some(req) = read_request(&mut s).await {
                    if req.contains("subscriptions/listen") {
                        let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                        if s.write_all(head.as_bytes()).await.is_err() {
                            return;
                        }
                        // Quiet until the gateway goes away.
                        let mut sink = [0u8; 64];
                        while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
                        return;
                    }
                    let body = r#"{"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":"called"}]}}"#;
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_listen_is_a_stream_that_holds_no_gate_slot() {
    let url = listening_upstream().await;
    let config = config_for(&url, "http:\n  stream_keepalive: 200ms\n").replace(
        "connect_timeout: 1s\n",
        "connect_timeout: 1s\n    read_timeout: 500ms\n    concurrency:\n      max_in_flight: 1\n      max_queue: 0\n",
    );
    let gw = Gateway::start(&config).await;
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "subscriptions/listen",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {}}}});
    let mut listen = http_client()
        .post(&gw.url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "subscriptions/listen")
        .body(body.to_string())
        .send()
        .await
        .expect("listen");
    assert_eq!(listen.status(), 200);
    gw.wait_metrics("the listen stream counted as a stream", |m| {
        m.contains("portcullis_standalone_streams_open 1")
    })
    .await;
    // The one gate slot is free for a call while the listen stream is open.
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "t"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200, "no slot held by the stream");
    assert!(r.text().await.expect("body").contains("called"));
    // Quiet upstream for longer than read_timeout: keep-alives, not a 504 or a cut.
    let mut keepalives = 0;
    let mut seen = String::new();
    while keepalives < 4 {
        let chunk = tokio::time::timeout(DEADLINE, listen.chunk())
            .await
            .expect("a keep-alive before the deadline")
            .expect("read")
            .expect("the stream stays open past read_timeout");
        seen.push_str(&String::from_utf8_lossy(&chunk));
        keepalives = seen.matches(": keep-alive\n\n").count();
    }
    drop(listen);
    gw.wait_metrics("the stream place back", |m| {
        m.contains("portcullis_standalone_streams_open 0")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_refusal_closes_the_connection_instead_of_reading_the_body() {
    let upstream = Upstream::demo().await;
    let gw = Gateway::fronting(&upstream, "").await;
    let mut s = TcpStream::connect(addr_of(&gw)).await.expect("connect");
    // An unknown route with a large body promised and only a little of it sent.
    s.write_all(
        b"POST /nowhere HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n\
content-length: 10000000\r\n\r\n{\"jsonrpc\":",
    )
    .await
    .expect("write");
    let text = read_until_closed(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 404"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
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
