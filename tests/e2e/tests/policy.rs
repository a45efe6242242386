//! Policies through a running gateway, against a real rmcp upstream with annotated,
//! paginated tools: hidden tools absent and refused as unknown, denied tools listed and
//! refused, annotation rules, renames, pagination across filtered pages, reloads.

#![allow(deprecated)] // rmcp 3.x marks parts of its API deprecated (SEP-2577).

use std::sync::Arc;

use parking_lot::Mutex;
use portcullis_e2e::*;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};
use serde_json::{json, Value};

/// Tools in upstream order, with their annotations; listed four per page.
fn catalog() -> Vec<Value> {
    let safe = json!({"readOnlyHint": true, "destructiveHint": false, "openWorldHint": false});
    let mut tools = vec![
        json!({"name": "read_file", "annotations": safe}),
        json!({"name": "write_file", "annotations": {"readOnlyHint": false, "destructiveHint": false}}),
        json!({"name": "delete_file", "annotations": {"destructiveHint": true}}),
        json!({"name": "search", "description": "old", "annotations": safe}),
    ];
    for n in ["admin_a", "admin_b", "admin_c", "admin_d"] {
        tools.push(json!({"name": n, "annotations": safe}));
    }
    tools.push(json!({"name": "echo_1", "annotations": safe}));
    tools.push(json!({"name": "echo_2", "annotations": safe}));
    // Holds its answer until the test releases it (an in-flight call across a reload).
    tools.push(json!({"name": "hold", "annotations": safe}));
    for t in &mut tools {
        t["inputSchema"] = json!({"type": "object"});
    }
    tools
}

const PAGE: usize = 4;

/// An upstream serving [`catalog`] in pages and recording the tools called.
#[derive(Clone, Default)]
struct Catalog {
    called: Arc<Mutex<Vec<String>>>,
    release: Arc<tokio::sync::Notify>,
}

impl ServerHandler for Catalog {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let start: usize = request
            .and_then(|r| r.cursor)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let all = catalog();
        let end = (start + PAGE).min(all.len());
        let mut page = json!({"tools": all[start.min(end)..end]});
        if end < all.len() {
            page["nextCursor"] = json!(end.to_string());
        }
        serde_json::from_value(page).map_err(|e| McpError::internal_error(e.to_string(), None))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let name = request.name.to_string();
        if !catalog().iter().any(|t| t["name"] == name.as_str()) {
            return Err(McpError::invalid_params(
                format!("Unknown tool: {name}"),
                None,
            ));
        }
        self.called.lock().push(name.clone());
        if name == "hold" {
            self.release.notified().await;
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!("called {name}"))]).into())
    }
}

const POLICY: &str = r#"default: allow
rules:
  - name: hide-admin
    effect: hide
    except: [{group: admins}]
    targets: [{tool: "admin_*"}]
  - name: no-destructive
    effect: deny
    targets: [{tool: "*", annotations: {destructiveHint: true}}]
  - name: writers-only
    effect: deny
    except: [{group: writers}]
    targets: [{tool: write_file}]
transforms:
  tools:
    - {tool: search, rename: find, description: Find things}
"#;

struct Setup {
    gw: Gateway,
    called: Arc<Mutex<Vec<String>>>,
    release: Arc<tokio::sync::Notify>,
    _upstream: Upstream,
}

async fn setup(policy: &str, upstream_extra: &str) -> Setup {
    let cat = Catalog::default();
    let called = cat.called.clone();
    let release = cat.release.clone();
    let upstream = Upstream::serve(move || cat.clone()).await;
    let yaml = config_for(&upstream.url, "http:\n  public_url: http://mcp.test\n")
        .replace(
            "    upstream: main\n",
            &format!(
                "    upstream: main\n{}    policy: policies/policy.yaml\n",
                test_jwt_auth()
            ),
        )
        .replace(
            "connect_timeout: 1s\n",
            &format!("connect_timeout: 1s\n{upstream_extra}"),
        );
    // In a directory of its own, as a second ConfigMap would be: watched too.
    let gw = Gateway::start_with_files(&yaml, &[("policies/policy.yaml", policy)]).await;
    Setup {
        gw,
        called,
        release,
        _upstream: upstream,
    }
}

fn token_for(sub: &str, groups: &[&str]) -> String {
    rs256_token(
        &json!({"iss": TEST_ISSUER, "aud": "http://mcp.test/mcp", "sub": sub,
        "groups": groups, "exp": now() + 600}),
    )
}

/// The JSON-RPC error code of a failed call, or `None` if it succeeded.
async fn call_code(c: &Client, name: &str) -> Option<i32> {
    let params = CallToolRequestParams::new(name.to_owned());
    match c.service.call_tool(params).await {
        Ok(_) => None,
        Err(rmcp::ServiceError::McpError(e)) => Some(e.code.0),
        Err(other) => panic!("{name}: not a JSON-RPC error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hidden_tools_are_absent_and_unknown_denied_ones_listed_and_refused() {
    let s = setup(POLICY, "").await;
    let c = connect_session_with_token(&s.gw.url, &token_for("alice", &[])).await;
    let tools = c.service.list_all_tools().await.expect("walks every page");
    let names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
    assert_eq!(
        names,
        [
            "read_file",
            "write_file",
            "delete_file",
            "find",
            "echo_1",
            "echo_2",
            "hold"
        ],
        "admin tools hidden (a whole page of them); denied ones listed; search renamed"
    );
    let find = tools.iter().find(|t| t.name == "find").expect("find");
    assert_eq!(find.description.as_deref(), Some("Find things"));

    let unknown_code = call_code(&c, "no_such_tool").await;
    assert_eq!(
        unknown_code,
        Some(-32602),
        "the upstream's own unknown tool"
    );
    assert_eq!(
        call_code(&c, "admin_a").await,
        unknown_code,
        "hidden = unknown"
    );
    assert_eq!(
        call_code(&c, "search").await,
        unknown_code,
        "the pre-rename name is unknown"
    );
    assert_eq!(
        call_code(&c, "delete_file").await,
        Some(-32016),
        "destructive: denied"
    );
    assert_eq!(
        call_code(&c, "write_file").await,
        Some(-32016),
        "writers only"
    );
    assert_eq!(call_code(&c, "read_file").await, None);
    assert_eq!(
        call_code(&c, "find").await,
        None,
        "the new name reaches the upstream"
    );
    assert_eq!(
        *s.called.lock(),
        ["read_file", "search"],
        "refused calls never reached the upstream; find arrived as search"
    );

    let admin =
        connect_session_with_token(&s.gw.url, &token_for("root", &["admins", "writers"])).await;
    let all = admin.service.list_all_tools().await.expect("list");
    assert_eq!(all.len(), 11, "admins see every tool");
    assert_eq!(call_code(&admin, "write_file").await, None);
    assert_eq!(
        call_code(&admin, "delete_file").await,
        Some(-32016),
        "no-destructive has no except"
    );

    let line =
        s.gw.wait_access("a denied call", |l| l["rule"] == "no-destructive")
            .await;
    assert_eq!(line["reason"], "policy_denied");
    let m =
        s.gw.wait_metrics("decisions counted", |m| {
            m.contains("portcullis_policy_decisions_total")
        })
        .await;
    assert!(
        m.contains(r#"effect="hide",route="/mcp",rule="hide-admin""#),
        "{m}"
    );
}

/// One raw `tools/list` page through the gateway: its result.
async fn raw_page(gw: &Gateway, token: &str, sid: &str, cursor: Option<&str>) -> Value {
    let params = cursor.map_or(json!({}), |c| json!({"cursor": c}));
    let body = http_client()
        .post(&gw.url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-11-25")
        .body(json!({"jsonrpc":"2.0","id":2,"method":"tools/list","params":params}).to_string())
        .send()
        .await
        .expect("answer");
    assert!(
        body.headers()["content-type"]
            .to_str()
            .is_ok_and(|t| t.starts_with("text/event-stream")),
        "rmcp streams its answers: this list was filtered as SSE"
    );
    let body = body.text().await.expect("body");
    messages(&body)
        .into_iter()
        .find(|m| m["id"] == 2)
        .map(|m| m["result"].clone())
        .expect("a list answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_emptied_by_filtering_keeps_its_cursor() {
    let s = setup(POLICY, "").await;
    let token = token_for("alice", &[]);
    let sid = initialize_raw(&s.gw.url, &token).await;
    let first = raw_page(&s.gw, &token, &sid, None).await;
    assert_eq!(first["tools"].as_array().map(Vec::len), Some(4));
    let second = raw_page(&s.gw, &token, &sid, first["nextCursor"].as_str()).await;
    assert_eq!(second["tools"], json!([]), "every admin tool hidden");
    assert!(
        second["nextCursor"].is_string(),
        "the walk goes on: {second}"
    );
    let third = raw_page(&s.gw, &token, &sid, second["nextCursor"].as_str()).await;
    assert_eq!(third["tools"].as_array().map(Vec::len), Some(3));
    assert!(third.get("nextCursor").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_upstreams_annotations_are_ignored() {
    let s = setup(POLICY, "    trust_annotations: false\n").await;
    let c = connect_session_with_token(&s.gw.url, &token_for("alice", &[])).await;
    let _ = c.service.list_all_tools().await.expect("list");
    assert_eq!(
        call_code(&c, "read_file").await,
        Some(-32016),
        "read_file says read-only, but untrusted: the spec's default (destructive) applies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_changes_new_decisions_and_a_broken_one_keeps_the_old() {
    let s = setup(POLICY, "").await;
    let c = connect_session_with_token(&s.gw.url, &token_for("alice", &[])).await;
    let _ = c.service.list_all_tools().await.expect("list");
    assert_eq!(call_code(&c, "read_file").await, None);
    // A call in flight across the reload: allowed when it started, it finishes.
    let held = {
        let peer = c.service.peer().clone();
        tokio::spawn(async move { peer.call_tool(CallToolRequestParams::new("hold")).await })
    };
    let deadline = std::time::Instant::now() + DEADLINE;
    while !s.called.lock().iter().any(|n| n == "hold") {
        assert!(
            std::time::Instant::now() < deadline,
            "the held call never arrived"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let stricter = format!("{POLICY}  # appended by the test\n").replace(
        "rules:\n",
        "rules:\n  - name: no-reading\n    effect: deny\n    targets: [{tool: read_file}, {tool: hold}]\n",
    );
    s.gw.write_file("policies/policy.yaml", &stricter);
    s.gw.wait_metrics("the reload", |m| {
        m.contains(r#"portcullis_config_reloads_total{result="success"} 1"#)
    })
    .await;
    assert_eq!(
        call_code(&c, "read_file").await,
        Some(-32016),
        "new decisions"
    );
    assert_eq!(call_code(&c, "echo_1").await, None, "the session lives on");
    assert_eq!(
        call_code(&c, "hold").await,
        Some(-32016),
        "a new hold is denied"
    );
    s.release.notify_one();
    let done = held
        .await
        .expect("task")
        .expect("the in-flight call completes");
    assert!(serde_json::to_string(&done.content)
        .expect("json")
        .contains("called hold"));

    s.gw.write_file(
        "policies/policy.yaml",
        "default: deny\nrules:\n  - name: x\n    effect: maybe\n",
    );
    s.gw.wait_metrics("the refused reload", |m| {
        m.contains(r#"portcullis_config_reloads_total{result="failure"} 1"#)
    })
    .await;
    assert_eq!(
        call_code(&c, "read_file").await,
        Some(-32016),
        "the previous policy serves"
    );
    assert_eq!(call_code(&c, "echo_1").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_before_any_list_is_judged_from_the_gateways_own_walk() {
    let s = setup(POLICY, "").await;
    let c = connect_session_with_token(&s.gw.url, &token_for("alice", &[])).await;
    // No tools/list from this client: the gateway walks the upstream's list itself.
    assert_eq!(
        call_code(&c, "no_such_tool").await,
        Some(-32602),
        "absent: the upstream's own answer"
    );
    assert_eq!(
        call_code(&c, "admin_b").await,
        Some(-32602),
        "hidden: the same answer"
    );
    assert_eq!(
        call_code(&c, "delete_file").await,
        Some(-32016),
        "annotations known without a list"
    );
    assert_eq!(call_code(&c, "read_file").await, None);
    assert_eq!(*s.called.lock(), ["read_file"]);
}

/// A raw POST on a policy route: status and JSON-RPC error code.
async fn raw_post(gw: &Gateway, token: &str, sid: &str, body: Value) -> (u16, Value) {
    let r = session_post(&gw.url, sid, body.to_string())
        .bearer_auth(token)
        .send()
        .await
        .expect("answer");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let code = messages(&text)
        .first()
        .map_or(Value::Null, |m| m["error"]["code"].clone());
    (status, code)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_would_escape_judgement_are_refused() {
    let s = setup(POLICY, "").await;
    let token = token_for("alice", &[]);
    let sid = initialize_raw(&s.gw.url, &token).await;
    let cases = [
        (
            "a call sent as a notification",
            json!({"jsonrpc":"2.0","method":"tools/call","params":{"name":"admin_a"}}),
            (400, json!(-32600)),
        ),
        (
            "array params hide the tool name",
            json!({"jsonrpc":"2.0","id":3,"method":"tools/call","params":["admin_a"]}),
            (400, json!(-32602)),
        ),
        (
            "an unreadable completion reference",
            json!({"jsonrpc":"2.0","id":4,"method":"completion/complete","params":{"ref":{"type":"ref/prompt"}}}),
            (400, json!(-32602)),
        ),
    ];
    for (what, body, want) in cases {
        assert_eq!(raw_post(&s.gw, &token, &sid, body).await, want, "{what}");
    }
    assert!(s.called.lock().is_empty(), "nothing reached the upstream");
}

/// An upstream whose `ask` tool asks the client to sample (a server-to-client request)
/// and reports what came back.
#[derive(Clone, Default)]
struct Sampler;

impl ServerHandler for Sampler {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _ctx: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        serde_json::from_value(
            json!({"tools": [{"name": "ask", "inputSchema": {"type": "object"},
            "annotations": {"readOnlyHint": true}}]}),
        )
        .map_err(|e| McpError::internal_error(e.to_string(), None))
    }

    async fn call_tool(
        &self,
        _request: CallToolRequestParams,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        let params: CreateMessageRequestParams = serde_json::from_value(json!({
            "messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}],
            "maxTokens": 10
        }))
        .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let text = match ctx.peer.create_message(params).await {
            Ok(r) => format!(
                "sampled: {}",
                serde_json::to_value(&r.message.content).unwrap_or_default()
            ),
            Err(rmcp::ServiceError::McpError(e)) => format!("refused: {}", e.code.0),
            Err(other) => format!("failed: {other}"),
        };
        Ok(CallToolResult::success(vec![ContentBlock::text(text)]).into())
    }
}

/// A client that samples (answers `sampling/createMessage`) and counts the requests.
#[derive(Clone, Default)]
struct SamplingClient {
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

impl rmcp::ClientHandler for SamplingClient {
    async fn create_message(
        &self,
        _params: CreateMessageRequestParams,
        _ctx: RequestContext<rmcp::RoleClient>,
    ) -> Result<CreateMessageResult, McpError> {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        serde_json::from_value(json!({"role": "assistant",
            "content": {"type": "text", "text": "hello"}, "model": "test"}))
        .map_err(|e| McpError::internal_error(e.to_string(), None))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_requests_the_policy_refuses_never_reach_the_client() {
    use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
    use rmcp::transport::StreamableHttpClientTransport;
    use rmcp::ServiceExt;

    let upstream = Upstream::serve(|| Sampler).await;
    let policy = "default: allow\nrules:\n  - name: sampling-for-admins\n    effect: deny\n    except: [{group: admins}]\n    targets: [{method: sampling/createMessage}]\n";
    let yaml = config_for(&upstream.url, "http:\n  public_url: http://mcp.test\n").replace(
        "    upstream: main\n",
        &format!(
            "    upstream: main\n{}    policy: policy.yaml\n",
            test_jwt_auth()
        ),
    );
    let gw = Gateway::start_with_files(&yaml, &[("policy.yaml", policy)]).await;

    for (who, groups, want) in [
        ("alice", &[][..], "refused: -32016"),
        ("root", &["admins"][..], "sampled: "),
    ] {
        let client = SamplingClient::default();
        let asked = client.asked.clone();
        let transport = StreamableHttpClientTransport::from_config(
            StreamableHttpClientTransportConfig::with_uri(gw.url.clone())
                .auth_header(token_for(who, groups)),
        );
        let service = client.serve(transport).await.expect("connects");
        let r = service
            .call_tool(CallToolRequestParams::new("ask"))
            .await
            .expect("the tool answers");
        let text = serde_json::to_string(&r.content).expect("json");
        assert!(text.contains(want), "{who}: {text}");
        let reached = asked.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(
            reached,
            usize::from(who == "root"),
            "{who}: sampling reached the client {reached} times"
        );
        let _ = service.cancel().await;
    }
}
