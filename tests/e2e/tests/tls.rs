//! TLS and HTTP/2 on both sides of the gateway, with certificates minted per test by a
//! private CA: the TLS listener (HTTP/1.1 and HTTP/2 by ALPN, SNI, rotation, mTLS and
//! certificate principals), h2c on the plain listener, and https upstreams (private CA,
//! untrusted and wrong-host certificates, mTLS to the upstream, HTTP/2 by ALPN).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use portcullis_e2e::pki::{tls_client, Issued, TestCa};
use portcullis_e2e::tls_upstream::{TlsOptions, TlsUpstream};
use portcullis_e2e::*;
use serde_json::json;

/// The `listeners.tls` block serving `gw.crt` / `gw.key`, plus `more` under it.
fn tls_listener(more: &str) -> String {
    format!(
        "  tls:\n    address: 127.0.0.1:0\n    certificates:\n      - cert_file: gw.crt\n        key_file: gw.key\n{more}"
    )
}

/// A config fronting `upstream_url` with a TLS listener beside the plain one.
fn with_tls(upstream_url: &str, listener_more: &str, extra: &str) -> String {
    config_for(upstream_url, extra).replacen(
        "  admin: 127.0.0.1:0\n",
        &format!("  admin: 127.0.0.1:0\n{}", tls_listener(listener_more)),
        1,
    )
}

/// Starts a gateway whose TLS listener serves `cert` (plus `files`).
async fn tls_gateway(yaml: &str, cert: &Issued, files: &[(&str, &str)]) -> Gateway {
    let mut all = vec![
        ("gw.crt", cert.cert_pem.as_str()),
        ("gw.key", cert.key_pem.as_str()),
    ];
    all.extend_from_slice(files);
    Gateway::start_with_files(yaml, &all).await
}

fn https_url(gw: &Gateway) -> String {
    format!("{}/mcp", gw.tls.as_deref().expect("a TLS listener"))
}

async fn echo(client: &reqwest::Client, url: &str, text: &str) -> reqwest::Response {
    stateless_call(client, url, "echo", json!({ "text": text }))
        .send()
        .await
        .expect("an answer")
}

fn result_text(body: &str) -> String {
    let msgs = messages(body);
    let last = msgs.last().expect("a message");
    last["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("a text result: {last}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tls_listener_serves_http1_and_http2_by_alpn_and_names_https_in_metadata() {
    let up = Upstream::demo().await;
    let ca = TestCa::new("test ca");
    let cert = ca.server(&["localhost", "127.0.0.1"]);
    let auth = test_jwt_auth().replacen(
        "            pem_file:",
        "            audiences: [tls-test]\n            pem_file:",
        1,
    );
    let yaml = with_tls(&up.url, "", "").replacen(
        "    upstream: main\n",
        &format!("    upstream: main\n{auth}"),
        1,
    );
    let gw = tls_gateway(&yaml, &cert, &[]).await;
    let url = https_url(&gw);
    let token = rs256_token(&json!({"iss": TEST_ISSUER, "sub": "alice",
        "aud": "tls-test", "exp": now() + 600}));

    // HTTP/2 is chosen by ALPN when the client offers it.
    let h2 = tls_client(&ca.pem, None);
    let r = stateless_call(&h2, &url, "echo", json!({"text": "over h2"}))
        .bearer_auth(&token)
        .send()
        .await
        .expect("h2 answer");
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(result_text(&r.text().await.expect("body")), "over h2");

    // HTTP/1.1 when that is all the client speaks.
    let h1 = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("ca")])
        .http1_only()
        .timeout(DEADLINE)
        .build()
        .expect("client");
    let r = stateless_call(&h1, &url, "echo", json!({"text": "over h1"}))
        .bearer_auth(&token)
        .send()
        .await
        .expect("h1 answer");
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(result_text(&r.text().await.expect("body")), "over h1");

    // The 401 challenge and the resource metadata name the https URL the client used.
    let r = stateless_call(&h2, &url, "echo", json!({"text": "x"}))
        .send()
        .await
        .expect("401");
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().expect("ascii");
    let base = gw.tls.as_deref().unwrap_or_default();
    assert!(
        challenge.contains(&format!(
            "resource_metadata=\"{base}/.well-known/oauth-protected-resource/mcp\""
        )),
        "{challenge}"
    );
    let meta: serde_json::Value = h2
        .get(format!("{base}/.well-known/oauth-protected-resource/mcp"))
        .send()
        .await
        .expect("metadata")
        .json()
        .await
        .expect("json");
    assert_eq!(meta["resource"], format!("{base}/mcp"));

    // A client that does not trust the CA is refused at the handshake.
    let stranger = tls_client(&TestCa::new("other").pem, None);
    assert!(
        stateless_call(&stranger, &url, "echo", json!({"text": "x"}))
            .send()
            .await
            .is_err()
    );

    // The plain listener still serves.
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "plain"}))
        .bearer_auth(&token)
        .send()
        .await
        .expect("plain");
    assert_eq!(r.status(), 200);

    // The served certificate's expiry is a metric.
    let m = gw.metrics().await;
    assert!(
        m.contains("portcullis_tls_certificate_expiry_timestamp_seconds{name=\"localhost\",use=\"listener\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_calls_an_sse_stream_and_a_get_stream_share_one_h2_connection() {
    let up = Upstream::demo().await;
    let ca = TestCa::new("test ca");
    let cert = ca.server(&["127.0.0.1"]);
    let gw = tls_gateway(&with_tls(&up.url, "", ""), &cert, &[]).await;
    let url = https_url(&gw);
    let client = tls_client(&ca.pem, None);

    // A session and its GET stream, held open while the calls run.
    let init = client
        .post(&url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion":"2025-11-25","capabilities":{},
                "clientInfo":{"name":"h2","version":"1"}}})
            .to_string(),
        )
        .send()
        .await
        .expect("initialize");
    assert_eq!(init.version(), http::Version::HTTP_2);
    let sid = init.headers()["mcp-session-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    let _ = init.text().await;
    let stream = client
        .get(&url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("GET stream");
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.version(), http::Version::HTTP_2);

    // Twenty calls and three streamed (SSE) calls at once, each matched to its id.
    let mut calls = Vec::new();
    for i in 0..20 {
        let (client, url) = (client.clone(), url.clone());
        calls.push(tokio::spawn(async move {
            let body = json!({"jsonrpc":"2.0","id": i,"method":"tools/call","params":{
                "name":"echo","arguments":{"text": format!("call {i}")},"_meta": stateless_meta()}});
            let r = client
                .post(&url)
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .header("mcp-protocol-version", "2026-07-28")
                .header("mcp-method", "tools/call")
                .header("mcp-name", "echo")
                .body(body.to_string())
                .send()
                .await
                .expect("answer");
            assert_eq!(r.version(), http::Version::HTTP_2);
            let msgs = messages(&r.text().await.expect("body"));
            let last = msgs.last().expect("a result").clone();
            assert_eq!(last["id"], i, "{last}");
            assert_eq!(last["result"]["content"][0]["text"], format!("call {i}"));
        }));
    }
    let mut slow = Vec::new();
    for _ in 0..3 {
        let (client, url) = (client.clone(), url.clone());
        slow.push(tokio::spawn(async move {
            let r = stateless_call(&client, &url, "slow", json!({"steps": 3, "delay_ms": 100}))
                .send()
                .await
                .expect("slow");
            assert_eq!(r.headers()["content-type"], "text/event-stream");
            let msgs = messages(&r.text().await.expect("body"));
            let progress = msgs
                .iter()
                .filter(|m| m["method"] == "notifications/progress")
                .count();
            assert_eq!(progress, 3, "{msgs:?}");
            assert!(msgs.last().expect("result")["result"].is_object());
        }));
    }
    // While they run, the gateway holds exactly one client connection.
    let m = gw
        .wait_metrics("the streams in flight", |m| {
            m.contains("portcullis_open_streams{route=\"/mcp\"} ")
        })
        .await;
    assert!(m.contains("portcullis_connections_open 1\n"), "{m}");
    for c in calls.into_iter().chain(slow) {
        c.await.expect("a call task");
    }
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_with_prior_knowledge_and_http1_share_the_plain_listener() {
    let up = Upstream::demo().await;
    let gw = Gateway::fronting(&up, "http:\n  h2c: true\n  h2_max_streams: 8\n").await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(DEADLINE)
        .build()
        .expect("client");
    let r = echo(&h2c, &gw.url, "h2c").await;
    assert_eq!(r.version(), http::Version::HTTP_2);
    assert_eq!(result_text(&r.text().await.expect("body")), "h2c");
    let r = echo(&http_client(), &gw.url, "h1").await;
    assert_eq!(r.version(), http::Version::HTTP_11);
    assert_eq!(result_text(&r.text().await.expect("body")), "h1");
    // More concurrent streams than the connection allows wait their turn; none fails.
    let mut all = Vec::new();
    for i in 0..24 {
        let (c, url) = (h2c.clone(), gw.url.clone());
        all.push(tokio::spawn(async move {
            let r = echo(&c, &url, &format!("n{i}")).await;
            assert_eq!(result_text(&r.text().await.expect("body")), format!("n{i}"));
        }));
    }
    for t in all {
        t.await.expect("task");
    }
    // The cap is what the gateway announces in its SETTINGS.
    let addr = gw
        .url
        .trim_start_matches("http://")
        .trim_end_matches("/mcp");
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    tokio::spawn(conn);
    let mut client = client.ready().await.expect("ready");
    let req = http::Request::get(format!("{}/healthz-nowhere", gw.base))
        .body(())
        .expect("request");
    let (answer, _) = client.send_request(req, true).expect("send");
    let _ = answer.await.expect("an answer (the SETTINGS came first)");
    assert_eq!(client.current_max_send_streams(), 8);
}

/// The DER of the certificate a TLS server presents to a client trusting `ca_pem`,
/// connecting by `name` (sent as SNI) to `addr`.
async fn served_cert(ca_pem: &str, name: &str, addr: &str) -> Vec<u8> {
    let sock: std::net::SocketAddr = addr.parse().expect("addr");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("ca")])
        .resolve(name, sock)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .timeout(DEADLINE)
        .build()
        .expect("client");
    let r = client
        .get(format!(
            "https://{name}:{}/.well-known/nothing",
            sock.port()
        ))
        .send()
        .await
        .expect("a handshake and an answer");
    let info = r
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .expect("tls info");
    info.peer_certificate().expect("a certificate").to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .expect("pem")
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_chosen_by_sni_and_rotate_without_dropping_open_streams() {
    let up = Upstream::demo().await;
    let ca = TestCa::new("test ca");
    let (a, b) = (ca.server(&["a.test"]), ca.server(&["*.b.test"]));
    let yaml = with_tls(
        &up.url,
        "      - cert_file: b.crt\n        key_file: b.key\n",
        "",
    );
    let gw = tls_gateway(
        &yaml,
        &a,
        &[
            ("b.crt", b.cert_pem.as_str()),
            ("b.key", b.key_pem.as_str()),
        ],
    )
    .await;
    let addr = gw
        .tls
        .as_deref()
        .and_then(|u| u.strip_prefix("https://"))
        .expect("addr")
        .to_owned();
    assert_eq!(
        served_cert(&ca.pem, "a.test", &addr).await,
        der_of(&a.cert_pem)
    );
    assert_eq!(
        served_cert(&ca.pem, "x.b.test", &addr).await,
        der_of(&b.cert_pem)
    );

    // A streamed call in flight across the rotation.
    let sock: std::net::SocketAddr = addr.parse().expect("addr");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("ca")])
        .resolve("a.test", sock)
        .timeout(DEADLINE)
        .build()
        .expect("client");
    let url = format!("https://a.test:{}/mcp", sock.port());
    let inflight = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let r = stateless_call(&client, &url, "slow", json!({"steps": 4, "delay_ms": 300}))
                .send()
                .await
                .expect("slow call");
            r.text().await.expect("the stream ends whole")
        })
    };
    gw.wait_metrics("the call streaming", |m| {
        m.contains("portcullis_open_streams{route=\"/mcp\"} 1")
    })
    .await;

    // cert-manager writes the renewed certificate in place.
    let renewed = ca.server(&["a.test"]);
    gw.write_file("gw.key", &renewed.key_pem);
    gw.write_file("gw.crt", &renewed.cert_pem);
    let deadline = Instant::now() + DEADLINE;
    while served_cert(&ca.pem, "a.test", &addr).await != der_of(&renewed.cert_pem) {
        assert!(
            Instant::now() < deadline,
            "new handshakes never got the renewed certificate"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = inflight.await.expect("task");
    let msgs = messages(&body);
    assert_eq!(
        msgs.iter()
            .filter(|m| m["method"] == "notifications/progress")
            .count(),
        4,
        "{body}"
    );
    assert!(msgs.last().expect("result")["result"].is_object(), "{body}");

    // A broken rotation (a key that does not match) is refused; the last good pair serves.
    gw.write_file("gw.key", &ca.server(&["a.test"]).key_pem);
    gw.wait_metrics("the refused reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"failure\"} 1")
    })
    .await;
    assert_eq!(
        served_cert(&ca.pem, "a.test", &addr).await,
        der_of(&renewed.cert_pem)
    );
}

/// A gateway whose TLS listener (a certificate for 127.0.0.1 from `ca`) verifies client
/// certificates from `clients` (`required` or not), with `route_extra` under its route
/// and `files` beside its config.
struct Mtls {
    gw: Gateway,
    ca: TestCa,
    clients: TestCa,
    url: String,
    _up: Upstream,
}

async fn mtls_gateway(required: bool, route_extra: &str, files: &[(&str, &str)]) -> Mtls {
    let up = Upstream::demo().await;
    let (ca, clients) = (TestCa::new("test ca"), TestCa::new("client ca"));
    let listener = format!(
        "    client_certificates:\n      ca_file: clients.pem\n      required: {required}\n"
    );
    let yaml = with_tls(&up.url, &listener, "").replacen(
        "    upstream: main\n",
        &format!("    upstream: main\n{route_extra}"),
        1,
    );
    let mut all = vec![("clients.pem", clients.pem.as_str())];
    all.extend_from_slice(files);
    let gw = tls_gateway(&yaml, &ca.server(&["127.0.0.1"]), &all).await;
    let url = https_url(&gw);
    Mtls {
        gw,
        ca,
        clients,
        url,
        _up: up,
    }
}

/// A policy allowing `echo` to the certificate principal `ci-bot` only.
const BOT_POLICY: &str = "default: deny\nrules:\n  - name: bot-echo\n    effect: allow\n    subjects: [{subject: ci-bot, issuer: mtls}]\n    targets:\n      - tool: echo\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_client_certificate_is_the_principal_a_policy_names() {
    let route = "    policy: bot.yaml\n    auth:\n      client_certificate:\n        subject: common_name\n";
    let Mtls {
        gw,
        ca,
        clients,
        url,
        _up: _upstream,
    } = mtls_gateway(false, route, &[("bot.yaml", BOT_POLICY)]).await;

    // No certificate: the handshake passes (certificates are optional on this
    // listener) and the route refuses with 401.
    let r = echo(&tls_client(&ca.pem, None), &url, "x").await;
    assert_eq!(r.status(), 401);

    // The bot's certificate: its common name is the principal the policy allows.
    let bot = clients.client("ci-bot", None);
    let r = echo(&tls_client(&ca.pem, Some(&bot)), &url, "hello").await;
    assert_eq!(r.status(), 200);
    assert_eq!(result_text(&r.text().await.expect("body")), "hello");
    gw.wait_audit("the bot's call", |l| {
        l["subject"] == "ci-bot" && l["issuer"] == "mtls"
    })
    .await;

    // Another certificate from the same CA is authenticated but denied by the policy.
    let other = clients.client("intruder", None);
    let r = echo(&tls_client(&ca.pem, Some(&other)), &url, "hello").await;
    let body = r.text().await.expect("body");
    assert!(
        body.contains("-32016") || body.contains("Unknown tool"),
        "{body}"
    );

    // A certificate from a CA the listener does not trust fails the handshake.
    let forged = TestCa::new("forger").client("ci-bot", None);
    assert!(stateless_call(
        &tls_client(&ca.pem, Some(&forged)),
        &url,
        "echo",
        json!({"text": "x"})
    )
    .send()
    .await
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_checked_again_when_the_cas_change() {
    let route = "    auth:\n      client_certificate: {}\n";
    let Mtls {
        gw,
        ca,
        clients,
        url,
        _up: _upstream,
    } = mtls_gateway(false, route, &[]).await;
    // One client, one kept-alive HTTP/2 connection.
    let bot = tls_client(&ca.pem, Some(&clients.client("ci-bot", None)));
    assert_eq!(echo(&bot, &url, "before").await.status(), 200);
    // The CA that signed the bot is removed: the open connection's certificate is no
    // longer a principal, though its handshake passed.
    gw.write_file("clients.pem", &TestCa::new("another client ca").pem);
    gw.wait_metrics("the reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"success\"} 1")
    })
    .await;
    let r = echo(&bot, &url, "after").await;
    assert_eq!(
        r.status(),
        401,
        "the same connection, judged under the new CAs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_client_certificates_from_a_reload_on_admit_no_new_connection_without_one() {
    let Mtls {
        gw,
        ca,
        url,
        clients: _clients,
        _up: _upstream,
    } = mtls_gateway(false, "", &[]).await;
    // A client without a certificate, whose TLS sessions rustls would resume.
    let anonymous = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("ca")])
        .pool_max_idle_per_host(0)
        .timeout(DEADLINE)
        .build()
        .expect("client");
    assert_eq!(echo(&anonymous, &url, "optional").await.status(), 200);
    let text = std::fs::read_to_string(&gw.config_path).expect("config");
    gw.write_file(
        "portcullis.yaml",
        &text.replacen("      required: false\n", "      required: true\n", 1),
    );
    gw.wait_metrics("the reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"success\"} 1")
    })
    .await;
    // A new connection (a resumed TLS session or a full handshake) without a
    // certificate gets nothing.
    assert!(
        stateless_call(&anonymous, &url, "echo", json!({"text": "x"}))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_that_requires_client_certificates_refuses_handshakes_without_one() {
    let Mtls {
        ca,
        clients,
        url,
        gw: _gw,
        _up: _upstream,
    } = mtls_gateway(true, "", &[]).await;
    assert!(stateless_call(
        &tls_client(&ca.pem, None),
        &url,
        "echo",
        json!({"text": "x"})
    )
    .send()
    .await
    .is_err());
    let me = clients.client("me", None);
    let r = echo(&tls_client(&ca.pem, Some(&me)), &url, "in").await;
    assert_eq!(r.status(), 200);
}

/// Writes `ca` as `upstream-ca.pem` beside the config; the upstream's `tls:` block.
fn upstream_tls(extra: &str) -> String {
    format!("    tls:\n      ca_file: upstream-ca.pem\n{extra}")
}

/// A gateway in front of the https upstream `url` with `tls_block` under it.
async fn https_front(url: &str, tls_block: &str, files: &[(&str, &str)]) -> Gateway {
    let yaml = config_for(url, tls_block);
    Gateway::start_with_files(&yaml, files).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstreams_are_verified_against_their_ca_and_name() {
    let ca = TestCa::new("upstream ca");
    let up = TlsUpstream::demo(TlsOptions {
        cert: ca.server(&["127.0.0.1", "mcp.internal"]),
        client_ca: None,
        h2: false,
    })
    .await;
    let files = [("upstream-ca.pem", ca.pem.as_str())];

    // Trusted: calls pass, in both eras; the readiness probe's handshake succeeds.
    let gw = https_front(&up.url, &upstream_tls(""), &files).await;
    gw.wait_metrics("the TLS probe up", |m| {
        m.contains("portcullis_upstream_up{upstream=\"main\"} 1")
    })
    .await;
    let r = echo(&http_client(), &gw.url, "via https").await;
    assert_eq!(result_text(&r.text().await.expect("body")), "via https");
    let session = connect_session(&gw.url).await;
    let tools = session.service.list_all_tools().await.expect("list");
    assert!(tools.iter().any(|t| t.name == "echo"));
    drop(session);
    drop(gw);

    // A name the certificate does not carry: a clear 502, at once.
    let gw = https_front(
        &up.url,
        &upstream_tls("      server_name: other.internal\n"),
        &files,
    )
    .await;
    gw.wait_metrics("the TLS probe down", |m| {
        m.contains("portcullis_upstream_up{upstream=\"main\"} 0")
    })
    .await;
    let started = Instant::now();
    let r = echo(&http_client(), &gw.url, "x").await;
    assert_eq!(r.status(), 502);
    let body = r.text().await.expect("body");
    assert!(body.contains("TLS handshake failed"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let m = gw.metrics().await;
    assert!(
        m.contains("portcullis_upstream_errors_total{kind=\"tls\",upstream=\"main\"} 1"),
        "{m}"
    );
    drop(gw);

    // A CA the upstream's certificate does not chain to: refused likewise.
    let other = TestCa::new("someone else");
    let gw = https_front(
        &up.url,
        &upstream_tls(""),
        &[("upstream-ca.pem", other.pem.as_str())],
    )
    .await;
    let r = echo(&http_client(), &gw.url, "x").await;
    assert_eq!(r.status(), 502);
    assert!(r
        .text()
        .await
        .expect("body")
        .contains("TLS handshake failed"));

    // A CA removed by a reload: no connection checked under it is reused.
    let gw = https_front(&up.url, &upstream_tls(""), &files).await;
    assert_eq!(echo(&http_client(), &gw.url, "pooled").await.status(), 200);
    gw.write_file("upstream-ca.pem", &TestCa::new("replacement").pem);
    gw.wait_metrics("the reload", |m| {
        m.contains("portcullis_config_reloads_total{result=\"success\"} 1")
    })
    .await;
    let r = echo(&http_client(), &gw.url, "x").await;
    assert_eq!(
        r.status(),
        502,
        "the pooled connection was not reused under the new CA"
    );

    // Verification off (loudly): the same untrusted upstream answers.
    let gw = https_front(&up.url, "    tls:\n      insecure_skip_verify: true\n", &[]).await;
    let r = echo(&http_client(), &gw.url, "unverified").await;
    assert_eq!(result_text(&r.text().await.expect("body")), "unverified");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_presents_its_client_certificate_to_an_upstream_that_requires_one() {
    let ca = TestCa::new("upstream ca");
    let clients = TestCa::new("gateway client ca");
    let up = TlsUpstream::demo(TlsOptions {
        cert: ca.server(&["127.0.0.1"]),
        client_ca: Some(clients.pem.clone()),
        h2: false,
    })
    .await;
    let me = clients.client("portcullis", None);
    let files = [
        ("upstream-ca.pem", ca.pem.as_str()),
        ("client.crt", me.cert_pem.as_str()),
        ("client.key", me.key_pem.as_str()),
    ];
    let gw = https_front(&up.url, &upstream_tls(""), &files).await;
    let r = echo(&http_client(), &gw.url, "x").await;
    assert_eq!(r.status(), 502, "no client certificate, no handshake");
    drop(gw);
    let gw = https_front(
        &up.url,
        &upstream_tls("      client_cert_file: client.crt\n      client_key_file: client.key\n"),
        &files,
    )
    .await;
    let r = echo(&http_client(), &gw.url, "mutual").await;
    assert_eq!(result_text(&r.text().await.expect("body")), "mutual");
    let m = gw.metrics().await;
    assert!(
        m.contains("portcullis_tls_certificate_expiry_timestamp_seconds{name=\"main\",use=\"upstream_client\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_to_an_upstream_that_offers_it_carries_calls_and_streams() {
    let ca = TestCa::new("upstream ca");
    let up = TlsUpstream::demo(TlsOptions {
        cert: ca.server(&["127.0.0.1"]),
        client_ca: None,
        h2: true,
    })
    .await;
    let gw = https_front(
        &up.url,
        &upstream_tls(""),
        &[("upstream-ca.pem", ca.pem.as_str())],
    )
    .await;
    let mut all = Vec::new();
    for i in 0..10 {
        let url = gw.url.clone();
        all.push(tokio::spawn(async move {
            let r = echo(&http_client(), &url, &format!("h2-{i}")).await;
            assert_eq!(
                result_text(&r.text().await.expect("body")),
                format!("h2-{i}")
            );
        }));
    }
    let slow = stateless_call(
        &http_client(),
        &gw.url,
        "slow",
        json!({"steps": 2, "delay_ms": 100}),
    )
    .send()
    .await
    .expect("slow");
    let msgs = messages(&slow.text().await.expect("body"));
    assert_eq!(
        msgs.iter()
            .filter(|m| m["method"] == "notifications/progress")
            .count(),
        2
    );
    for t in all {
        t.await.expect("task");
    }
    assert!(up.h2_handshakes.load(Ordering::SeqCst) >= 1);
    assert_eq!(
        up.h2_handshakes.load(Ordering::SeqCst),
        up.handshakes.load(Ordering::SeqCst),
        "every connection negotiated h2"
    );
}

#[test]
fn tls_files_that_cannot_serve_are_refused_with_their_file_and_key() {
    let dir = scratch_dir();
    let ca = TestCa::new("test ca");
    ca.server(&["gw.test"]).write(&dir, "gw");
    ca.server(&["gw.test"]).write(&dir, "other");
    std::fs::write(dir.join("junk.pem"), "not a certificate\n").expect("w");
    let load = |certs: &str| {
        let text = format!(
            "listeners:\n  tls:\n    address: 127.0.0.1:0\n    certificates:\n{certs}\
routes:\n  - path: /mcp\n    upstream: u\nupstreams:\n  u:\n    url: http://127.0.0.1:9/mcp\n"
        );
        portcullis_config::load_str(&dir.join("portcullis.yaml"), &text)
    };
    let c = load("      - cert_file: gw.crt\n        key_file: gw.key\n").expect("valid");
    assert_eq!(
        c.public_addr, None,
        "TLS only: no plain listener unless written"
    );
    // A token issuer cannot take the name of certificate principals.
    let e = portcullis_config::load_str(
        &dir.join("portcullis.yaml"),
        "routes:\n  - path: /mcp\n    upstream: u\n    auth:\n      jwt:\n        issuers:\n          - issuer: mtls\n            audiences: [a]\n            secret_file: gw.key\nupstreams:\n  u:\n    url: http://127.0.0.1:9/mcp\n",
    )
    .expect_err("mtls is the gateway's issuer");
    assert_eq!(
        e.key.as_deref(),
        Some("routes[0].auth.jwt.issuers[0].issuer"),
        "{e}"
    );
    // An https upstream's name must be one its certificate can be verified against.
    let e = portcullis_config::load_str(
        &dir.join("portcullis.yaml"),
        "routes:\n  - path: /mcp\n    upstream: u\nupstreams:\n  u:\n    url: https://bad_name.test/mcp\n    endpoints: [127.0.0.1:9]\n",
    )
    .expect_err("underscore");
    assert_eq!(e.key.as_deref(), Some("upstreams.u.url"), "{e}");
    for (certs, key, says) in [
        (
            "      - cert_file: missing.crt\n        key_file: gw.key\n",
            "listeners.tls.certificates[0].cert_file",
            "cannot read",
        ),
        (
            "      - cert_file: junk.pem\n        key_file: gw.key\n",
            "listeners.tls.certificates[0].cert_file",
            "no PEM certificate",
        ),
        (
            "      - cert_file: gw.crt\n        key_file: other.key\n",
            "listeners.tls.certificates[0].key_file",
            "does not belong",
        ),
        (
            "      - cert_file: gw.crt\n        key_file: gw.key\n        server_names: [other.test]\n",
            "listeners.tls.certificates[0].server_names[0]",
            "does not cover",
        ),
    ] {
        let e = load(certs).expect_err(key);
        assert_eq!(e.key.as_deref(), Some(key), "{e}");
        assert!(e.to_string().contains(says), "{e}");
        assert!(e.line.is_some(), "{e}");
    }
}
