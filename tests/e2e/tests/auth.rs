//! Identity at the edge: bearer JWTs checked before any upstream work, 401/403 with the
//! spec's WWW-Authenticate challenge, RFC 9728 metadata, tokens never in the URL.

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use portcullis_e2e::*;
use serde_json::{json, Value};

const ISS: &str = TEST_ISSUER;

fn token(claims: Value) -> String {
    rs256_token(&claims)
}

fn claims(scope: &str, exp_in: i64) -> Value {
    json!({"iss": ISS, "aud": "http://mcp.test/mcp", "sub": "alice", "scope": scope,
        "exp": (now() as i64 + exp_in), "iat": now()})
}

async fn authed_gateway(upstream: &Upstream) -> Gateway {
    let auth = format!(
        "    auth:\n      required_scopes: [mcp:call]\n      jwt:\n        issuers:\n\
         \x20         - issuer: {ISS}\n            pem_file: {}/rsa1.pub\n",
        keys_dir()
    );
    let yaml = config_for(&upstream.url, "http:\n  public_url: http://mcp.test\n").replace(
        "    upstream: main\n",
        &format!("    upstream: main\n{auth}"),
    );
    Gateway::start(&yaml).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_invalid_and_underscoped_tokens_get_the_specs_answers() {
    let upstream = Upstream::demo().await;
    let gw = authed_gateway(&upstream).await;
    let meta = "resource_metadata=\"http://mcp.test/.well-known/oauth-protected-resource/mcp\"";

    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "x"}))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        challenge.starts_with("Bearer ") && challenge.contains(meta),
        "{challenge}"
    );
    assert!(challenge.contains("scope=\"mcp:call\""), "{challenge}");
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], -32014);
    assert!(v["id"].is_null(), "decided before the body is read");

    for (what, t) in [
        ("expired", token(claims("mcp:call", -600))),
        ("garbage", "not.a.jwt".to_owned()),
        (
            "wrong audience",
            token(json!({"iss": ISS, "aud": "http://other/mcp", "sub": "a", "exp": now() + 60})),
        ),
    ] {
        let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "x"}))
            .bearer_auth(&t)
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 401, "{what}");
        let c = r.headers()["www-authenticate"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert!(c.contains("error=\"invalid_token\""), "{what}: {c}");
    }

    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "x"}))
        .bearer_auth(token(claims("mcp:read", 600)))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 403);
    let c = r.headers()["www-authenticate"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(
        c.contains("error=\"insufficient_scope\"") && c.contains("scope=\"mcp:call\""),
        "{c}"
    );
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["error"]["code"], -32015);

    // A token in the query string is refused even when it is valid.
    let r = stateless_call(
        &http_client(),
        &format!("{}?access_token={}", gw.url, token(claims("mcp:call", 600))),
        "echo",
        json!({"text": "x"}),
    )
    .send()
    .await
    .expect("answer");
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_reaches_the_upstream_and_names_the_caller_in_the_log() {
    let upstream = Upstream::demo().await;
    let gw = authed_gateway(&upstream).await;
    let t = token(claims("mcp:call tools:read", 600));
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "authed"}))
        .bearer_auth(&t)
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    assert!(r.text().await.expect("body").contains("authed"));
    // A real SDK client with the token: initialize, list, call.
    let c = connect_session_with_token(&gw.url, &t).await;
    assert_eq!(
        c.service.list_tools(None).await.expect("list").tools.len(),
        4
    );
    let line = gw
        .wait_access("an authenticated call", |l| l["subject"] == "alice")
        .await;
    assert_eq!(line["status"], 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protected_resource_metadata_is_served_per_rfc_9728() {
    let upstream = Upstream::demo().await;
    let gw = authed_gateway(&upstream).await;
    for path in [
        "/.well-known/oauth-protected-resource/mcp",
        "/.well-known/oauth-protected-resource",
    ] {
        let r = http_client()
            .get(format!("{}{path}", gw.base))
            .send()
            .await
            .expect("answer");
        assert_eq!(r.status(), 200, "{path}");
        let v: Value = r.json().await.expect("json");
        assert_eq!(v["resource"], "http://mcp.test/mcp");
        assert_eq!(v["authorization_servers"], json!([ISS]));
        assert_eq!(v["scopes_supported"], json!(["mcp:call"]));
        assert_eq!(v["bearer_methods_supported"], json!(["header"]));
    }
    let r = http_client()
        .get(format!(
            "{}/.well-known/oauth-protected-resource/nope",
            gw.base
        ))
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_authenticate_machine_clients_and_never_reach_the_upstream() {
    let upstream = Upstream::demo().await;
    // What `printf %s ci-key-123 | sha256sum` prints: the config never holds the key.
    let real = {
        use sha2::Digest as _;
        use std::fmt::Write as _;
        sha2::Sha256::digest(b"ci-key-123")
            .iter()
            .fold(String::new(), |mut s, b| {
                let _ = write!(s, "{b:02x}");
                s
            })
    };
    let auth = format!(
        "    auth:\n      required_scopes: [mcp:call]\n      api_keys:\n\
         \x20       - name: ci-bot\n          sha256: {real}\n          groups: [ci]\n          scopes: [mcp:call]\n"
    );
    let yaml = config_for(&upstream.url, "").replace(
        "    upstream: main\n",
        &format!("    upstream: main\n{auth}"),
    );
    let gw = Gateway::start(&yaml).await;
    for (how, req) in [
        (
            "x-api-key",
            stateless_call(&http_client(), &gw.url, "echo", json!({"text": "k"}))
                .header("x-api-key", "ci-key-123"),
        ),
        (
            "bearer",
            stateless_call(&http_client(), &gw.url, "echo", json!({"text": "k"}))
                .bearer_auth("ci-key-123"),
        ),
    ] {
        let r = req.send().await.expect("answer");
        assert_eq!(r.status(), 200, "{how}");
    }
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "k"}))
        .header("x-api-key", "wrong")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 401);
    let line = gw
        .wait_access("the API key caller", |l| l["subject"] == "ci-bot")
        .await;
    assert_eq!(line["status"], 200);
}

/// The fixture JWKS limited to the keys named.
fn jwks_with(kids: &[&str]) -> String {
    let text = std::fs::read_to_string(format!("{}/jwks.json", keys_dir())).expect("jwks");
    let all: Value = serde_json::from_str(&text).expect("json");
    let keys: Vec<Value> = all["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter(|k| kids.iter().any(|kid| k["kid"] == *kid))
        .cloned()
        .collect();
    json!({ "keys": keys }).to_string()
}

/// A token for `sub`, signed with the fixture key `key` and naming `kid`.
fn token_by(kid: &str, key: &str, sub: &str) -> String {
    let pem = std::fs::read(format!("{}/{key}", keys_dir())).expect("test key");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    let mut c = claims("", 600);
    c["sub"] = json!(sub);
    encode(&header, &c, &EncodingKey::from_rsa_pem(&pem).expect("pem")).expect("sign")
}

async fn jwks_gateway(upstream: &Upstream, jwks_url: &str, extra: &str) -> Gateway {
    let auth = format!(
        "    auth:\n      jwt:\n        issuers:\n\
         \x20         - issuer: {ISS}\n            jwks_url: {jwks_url}\n{extra}"
    );
    let yaml = config_for(&upstream.url, "http:\n  public_url: http://mcp.test\n").replace(
        "    upstream: main\n",
        &format!("    upstream: main\n{auth}"),
    );
    Gateway::start(&yaml).await
}

async fn status_with(gw: &Gateway, token: &str) -> u16 {
    stateless_call(&http_client(), &gw.url, "echo", json!({"text": "x"}))
        .bearer_auth(token)
        .send()
        .await
        .expect("answer")
        .status()
        .as_u16()
}

/// Lets `jwks_refetch_min_interval` (1s, the least allowed) pass since the last fetch,
/// so the next unknown kid may fetch again.
async fn past_the_refetch_limit() {
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_from_a_jwks_url_rotate_and_the_last_good_set_outlives_the_idp() {
    let idp = JwksServer::start(jwks_with(&["k1"])).await;
    let upstream = Upstream::demo().await;
    let gw = jwks_gateway(
        &upstream,
        &idp.url,
        "            jwks_refetch_min_interval: 1s\n",
    )
    .await;

    let old = token_by("k1", "rsa1.key", "old");
    assert_eq!(
        status_with(&gw, &old).await,
        200,
        "a key from the fetched set"
    );
    assert_eq!(idp.fetches(), 1, "fetched once at start");

    // The provider publishes a second key: its first token fetches the set once.
    idp.set(200, jwks_with(&["k1", "k2"]));
    past_the_refetch_limit().await;
    assert_eq!(
        status_with(&gw, &token_by("k2", "rsa2.key", "new-1")).await,
        200
    );
    assert_eq!(idp.fetches(), 2, "an unknown kid fetched the set");
    assert_eq!(
        status_with(&gw, &token_by("k2", "rsa2.key", "new-2")).await,
        200
    );
    assert_eq!(
        status_with(&gw, &token_by("k1", "rsa1.key", "old-2")).await,
        200
    );
    assert_eq!(idp.fetches(), 2, "a known kid does not fetch again");

    let made_up = token_by("k9", "rsa1.key", "mallory");
    // The old key leaves the set: its tokens stop working, cached ones included.
    idp.set(200, jwks_with(&["k2"]));
    past_the_refetch_limit().await;
    assert_eq!(status_with(&gw, &made_up).await, 401);
    assert_eq!(idp.fetches(), 3, "the unknown kid fetched once");
    assert_eq!(
        status_with(&gw, &old).await,
        401,
        "its key has left the set"
    );
    assert_eq!(
        status_with(&gw, &token_by("k2", "rsa2.key", "new-3")).await,
        200
    );
    // (On a slow machine the old token may have fetched again: count from here.)
    let base = idp.fetches();

    // The provider fails, or serves hostile or broken documents: the last good set
    // keeps serving.
    let huge = format!("{{\"keys\":[\"{}\"]}}", "x".repeat(2 * 1024 * 1024));
    let bad = [
        (503, "down".to_owned()),
        (200, huge),
        (200, "{\"keys\":".into()),
    ];
    for (n, (status, body)) in bad.into_iter().enumerate() {
        idp.set(status, body);
        past_the_refetch_limit().await;
        assert_eq!(status_with(&gw, &made_up).await, 401);
        assert_eq!(idp.fetches(), base + n + 1);
        let t = token_by("k2", "rsa2.key", &format!("after-bad-{n}"));
        assert_eq!(status_with(&gw, &t).await, 200, "nothing lost");
    }
    let m = gw
        .wait_metrics("the failed fetches counted", |m| {
            m.contains("result=\"failure\",url=")
        })
        .await;
    assert!(m.contains("portcullis_jwks_keys{"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_key_ids_do_not_flood_the_identity_provider() {
    let idp = JwksServer::start(jwks_with(&["k1"])).await;
    let upstream = Upstream::demo().await;
    let gw = jwks_gateway(
        &upstream,
        &idp.url,
        "            jwks_refetch_min_interval: 1h\n",
    )
    .await;
    for n in 0..30 {
        let t = token_by(&format!("k{}", 100 + n), "rsa1.key", "mallory");
        assert_eq!(status_with(&gw, &t).await, 401, "unknown kid");
    }
    assert_eq!(idp.fetches(), 1, "the fetch at start, and no other");
    assert_eq!(
        status_with(&gw, &token_by("k1", "rsa1.key", "a")).await,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_is_refreshed_in_the_background() {
    let idp = JwksServer::start(jwks_with(&["k1"])).await;
    let upstream = Upstream::demo().await;
    let gw = jwks_gateway(
        &upstream,
        &idp.url,
        "            jwks_refresh_interval: 1s\n",
    )
    .await;
    assert_eq!(
        status_with(&gw, &token_by("k1", "rsa1.key", "a")).await,
        200
    );
    idp.set(200, jwks_with(&["k2"]));
    // No token asks for it: the refresh alone drops k1 and brings k2.
    let deadline = std::time::Instant::now() + DEADLINE;
    let mut n = 0;
    while status_with(&gw, &token_by("k1", "rsa1.key", &format!("b{n}"))).await != 401 {
        assert!(std::time::Instant::now() < deadline, "k1 was never dropped");
        n += 1;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        status_with(&gw, &token_by("k2", "rsa2.key", "c")).await,
        200
    );
}

/// A session-era request on `sid` with `token`; the status and the JSON-RPC error code.
async fn on_session(gw: &Gateway, method: http::Method, sid: &str, token: &str) -> (u16, Value) {
    let mut req = http_client()
        .request(method.clone(), &gw.url)
        .bearer_auth(token)
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-11-25");
    req = match method {
        http::Method::POST => req
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#),
        _ => req.header("accept", "text/event-stream"),
    };
    let r = req.send().await.expect("answer");
    let status = r.status().as_u16();
    if status == 200 && method == http::Method::GET {
        return (status, Value::Null); // an open stream: do not wait for its end
    }
    let body = r.text().await.unwrap_or_default();
    let code = messages(&body)
        .first()
        .map_or(Value::Null, |m| m["error"]["code"].clone());
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_belongs_to_the_principal_that_created_it() {
    let upstream = Upstream::demo().await;
    let gw = authed_gateway(&upstream).await;
    let alice = token(claims("mcp:call", 600));
    let mut bob_claims = claims("mcp:call", 600);
    bob_claims["sub"] = json!("bob");
    let bob = token(bob_claims);

    let r = http_client()
        .post(&gw.url)
        .bearer_auth(&alice)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{
                "protocolVersion":"2025-11-25","capabilities":{},
                "clientInfo":{"name":"raw","version":"1"}}})
            .to_string(),
        )
        .send()
        .await
        .expect("initialize");
    assert_eq!(r.status(), 200);
    let sid = r.headers()["mcp-session-id"]
        .to_str()
        .expect("visible ASCII")
        .to_owned();
    let _ = r.text().await;

    use http::Method;
    assert_eq!(on_session(&gw, Method::POST, &sid, &alice).await.0, 200);
    for method in [Method::POST, Method::GET, Method::DELETE] {
        assert_eq!(
            on_session(&gw, method.clone(), &sid, &bob).await,
            (404, json!(-32013)),
            "{method} with another principal's token is an unknown session"
        );
    }
    let mut altered = sid.clone().into_bytes();
    let last = altered.len() - 1;
    altered[last] = if altered[last] == b'x' { b'y' } else { b'x' };
    let altered = String::from_utf8(altered).expect("ascii");
    assert_eq!(
        on_session(&gw, Method::POST, &altered, &alice).await,
        (404, json!(-32013)),
        "an altered id"
    );
    assert_eq!(
        on_session(&gw, Method::POST, &sid, &alice).await.0,
        200,
        "bob's attempts (DELETE included) did not end alice's session"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_identity_reaches_the_upstream_and_clients_cannot_forge_it() {
    let (url, _task) = header_mirror().await;
    let identity = "connect_timeout: 1s\n    identity_headers:\n      subject: x-user\n      \
                    issuer: x-user-issuer\n      groups: x-groups\n      scopes: x-scopes\n      \
                    claims:\n        tenant: x-tenant\n";
    let auth = format!(
        "    auth:\n      jwt:\n        issuers:\n\
         \x20         - issuer: {ISS}\n            pem_file: {}/rsa1.pub\n\
         \x20           keep_claims: [tenant]\n",
        keys_dir()
    );
    let yaml = config_for(&url, "http:\n  public_url: http://mcp.test\n")
        .replace(
            "    upstream: main\n",
            &format!("    upstream: main\n{auth}"),
        )
        .replace("connect_timeout: 1s\n", identity);
    let gw = Gateway::start(&yaml).await;
    let mut c = claims("mcp:call tools:read", 600);
    c["groups"] = json!(["eng", "on,call"]);
    c["tenant"] = json!("acme");
    c["sub"] = json!("zoë");
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "x"}))
        .bearer_auth(token(c))
        .header("x-user", "admin")
        .header("x-tenant", "everyone")
        .send()
        .await
        .expect("answer");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.expect("json");
    let head = v["result"]["head"]
        .as_str()
        .expect("head")
        .to_ascii_lowercase();
    for present in [
        "x-user: zo%c3%ab",
        &format!("x-user-issuer: {}", ISS.to_ascii_lowercase()),
        "x-groups: eng,on%2ccall",
        "x-scopes: mcp:call,tools:read",
        "x-tenant: acme",
    ] {
        assert!(head.contains(present), "{present} missing:\n{head}");
    }
    for forged in ["admin", "everyone"] {
        assert!(
            !head.contains(forged),
            "the client's {forged} got through:\n{head}"
        );
    }
    assert_eq!(head.matches("x-user:").count(), 1, "{head}");

    // On an anonymous route the headers are still the gateway's: stripped, not set.
    let anon = config_for(&url, "").replace("connect_timeout: 1s\n", identity);
    let gw = Gateway::start(&anon).await;
    let r = stateless_call(&http_client(), &gw.url, "echo", json!({"text": "x"}))
        .header("x-user", "admin")
        .send()
        .await
        .expect("answer");
    let v: Value = r.json().await.expect("json");
    let head = v["result"]["head"]
        .as_str()
        .expect("head")
        .to_ascii_lowercase();
    assert!(!head.contains("x-user"), "{head}");
}
