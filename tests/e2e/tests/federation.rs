//! Federated routes: three real rmcp servers whose tool names overlap, behind one route.
//! Merged and prefixed lists, calls routed to the member that owns the name, every page
//! of a member with more than one walked through the gateway's own cursors, a tampered
//! cursor refused, both protocol eras, and a member that goes away (its tools stay for
//! the grace period, then go, while the others keep answering).

#![allow(deprecated)]

use std::sync::Arc;

use portcullis_e2e::*;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler};

/// A member server: `tools` tools (`echo`, `tool1`, `tool2`...) listed `page` at a time,
/// one resource; every answer names the member, so a test sees who served it.
#[derive(Clone)]
struct Member {
    who: &'static str,
    tools: usize,
    page: usize,
    /// Wakes the member's listen streams: each says its subscribed resources changed.
    poke: Arc<tokio::sync::Notify>,
}

impl Member {
    fn tool_names(&self) -> Vec<String> {
        (0..self.tools)
            .map(|i| {
                if i == 0 {
                    "echo".to_owned()
                } else {
                    format!("tool{i}")
                }
            })
            .collect()
    }
}

impl ServerHandler for Member {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_tool_list_changed()
                .enable_resources()
                .enable_resources_subscribe()
                .build(),
        )
        .with_server_info(Implementation::new(self.who, "1.0.0"))
        .with_instructions(format!("{} knows things", self.who))
    }

    fn accepted_subscription_filter(
        &self,
        requested: &SubscriptionFilter,
    ) -> Option<SubscriptionFilter> {
        Some(requested.clone())
    }

    /// Says its tools changed twice as soon as the stream opens, then that its
    /// subscribed resources changed each time the test pokes it.
    async fn listen(&self, ctx: rmcp::service::SubscriptionContext) -> Result<(), McpError> {
        let internal = |e: rmcp::service::SubscriptionSendError| {
            McpError::internal_error(format!("{e:?}"), None)
        };
        if ctx.accepted().tools_list_changed == Some(true) {
            for _ in 0..2 {
                ctx.sink()
                    .notify_tool_list_changed()
                    .await
                    .map_err(internal)?;
            }
        }
        loop {
            tokio::select! {
                _ = ctx.cancelled() => return Ok(()),
                _ = self.poke.notified() => {
                    for uri in ctx.accepted().resource_subscriptions.clone().unwrap_or_default() {
                        ctx.sink().notify_resource_updated(uri).await.map_err(internal)?;
                    }
                }
            }
        }
    }

    async fn list_tools(
        &self,
        r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, McpError> {
        let start: usize = match r.and_then(|r| r.cursor) {
            None => 0,
            Some(c) => c
                .parse()
                .map_err(|_| McpError::invalid_params("not my cursor", None))?,
        };
        let schema = Arc::new(
            serde_json::json!({"type": "object"})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let names = self.tool_names();
        let tools = names
            .iter()
            .skip(start)
            .take(self.page)
            .map(|n| Tool::new(n.clone(), format!("{} {n}", self.who), schema.clone()))
            .collect();
        let mut listed = ListToolsResult::with_all_items(tools);
        if start + self.page < names.len() {
            listed.next_cursor = Some((start + self.page).to_string());
        }
        Ok(listed)
    }

    async fn call_tool(
        &self,
        req: CallToolRequestParams,
        c: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, McpError> {
        if req.name == "notify" {
            // Unlisted: sends `say` as `logs` log messages and `changed` tools/list_changed
            // on the session's GET stream.
            let arg = |k: &str| {
                req.arguments
                    .as_ref()
                    .and_then(|a| a.get(k).cloned())
                    .unwrap_or_default()
            };
            let say = arg("say").as_str().unwrap_or("hello").to_owned();
            let internal =
                |e: rmcp::service::ServiceError| McpError::internal_error(e.to_string(), None);
            for _ in 0..arg("logs").as_u64().unwrap_or(0) {
                c.peer
                    .notify_logging_message(LoggingMessageNotificationParam::new(
                        LoggingLevel::Info,
                        serde_json::json!(format!("{}: {say}", self.who)),
                    ))
                    .await
                    .map_err(internal)?;
            }
            for _ in 0..arg("changed").as_u64().unwrap_or(0) {
                c.peer.notify_tool_list_changed().await.map_err(internal)?;
            }
            return Ok(CallToolResult::success(vec![ContentBlock::text("notified")]).into());
        }
        if !self.tool_names().iter().any(|n| *n == req.name) {
            return Err(McpError::invalid_params(
                format!("no tool {}", req.name),
                None,
            ));
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "{}:{}",
            self.who, req.name
        ))])
        .into())
    }

    async fn list_resources(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![Resource::new(
            format!("mem://{}/readme", self.who),
            "readme",
        )]))
    }

    async fn read_resource(
        &self,
        req: ReadResourceRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if req.uri != format!("mem://{}/readme", self.who) {
            return Err(McpError::resource_not_found(
                format!("no resource {}", req.uri),
                None,
            ));
        }
        Ok(ReadResourceResult::new(vec![ResourceContents::text(
            format!("{} readme", self.who),
            req.uri,
        )])
        .into())
    }
}

/// Three members: alpha with 5 tools listed 2 at a time (three pages), beta and gamma
/// with 2 tools each; all three have `echo`.
async fn members() -> (Upstream, Upstream, Upstream) {
    members_poked(Arc::default()).await
}

/// [`members`] whose listen streams `poke` wakes.
async fn members_poked(poke: Arc<tokio::sync::Notify>) -> (Upstream, Upstream, Upstream) {
    let member = |who, tools, page| {
        let poke = poke.clone();
        move || Member {
            who,
            tools,
            page,
            poke: poke.clone(),
        }
    };
    let alpha = Upstream::serve(member("alpha", 5, 2)).await;
    let beta = Upstream::serve(member("beta", 2, 10)).await;
    let gamma = Upstream::serve(member("gamma", 2, 10)).await;
    (alpha, beta, gamma)
}

/// A gateway with one federated route `/mcp` over the three, with `federation`
/// settings (YAML under `federation:`).
async fn federated(m: &(Upstream, Upstream, Upstream), federation: &str) -> Gateway {
    federated_with(m, federation, "").await
}

/// [`federated`] with `extra` top-level YAML (a `sessions:` block).
async fn federated_with(
    m: &(Upstream, Upstream, Upstream),
    federation: &str,
    extra: &str,
) -> Gateway {
    Gateway::start(&format!(
        "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
server:\n  threads: 2\n  grace_period: 0s\n  work_stealing: true\n\
routes:\n  - path: /mcp\n    name: fleet\n    members: [alpha, beta, gamma]\n    federation:\n{federation}\
upstreams:\n  alpha:\n    url: {}\n    connect_timeout: 1s\n  beta:\n    url: {}\n    connect_timeout: 1s\n  gamma:\n    url: {}\n    connect_timeout: 1s\n{extra}",
        m.0.url, m.1.url, m.2.url
    ))
    .await
}

fn text(r: &CallToolResult) -> String {
    r.content
        .iter()
        .filter_map(|c| c.as_text().map(|t| t.text.clone()))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

async fn call(c: &Client, name: &str) -> Result<String, rmcp::ServiceError> {
    c.service
        .call_tool(CallToolRequestParams::new(name.to_owned()))
        .await
        .map(|r| text(&r))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_lists_are_prefixed_and_each_call_reaches_the_member_that_owns_it() {
    let m = members().await;
    let gw = federated(&m, "      separator: __\n").await;
    let c = connect_session(&gw.url).await;

    let info = c.service.peer_info().expect("initialize result");
    let server = info.server_info.clone().expect("serverInfo");
    assert_eq!(server.name, "portcullis fleet");
    let instructions = info.instructions.clone().unwrap_or_default();
    for who in ["alpha", "beta", "gamma"] {
        assert!(
            instructions.contains(&format!("{who} knows things")),
            "instructions joined: {instructions}"
        );
    }
    assert!(info.capabilities.tools.is_some() && info.capabilities.resources.is_some());

    // rmcp's list_all_tools follows nextCursor: every page of alpha arrives.
    let tools = c.service.list_all_tools().await.expect("every page");
    let names = sorted(tools.iter().map(|t| t.name.to_string()).collect());
    assert_eq!(
        names,
        sorted(
            [
                "alpha__echo",
                "alpha__tool1",
                "alpha__tool2",
                "alpha__tool3",
                "alpha__tool4",
                "beta__echo",
                "beta__tool1",
                "gamma__echo",
                "gamma__tool1"
            ]
            .map(String::from)
            .to_vec()
        ),
        "nothing lost or listed twice"
    );

    assert_eq!(call(&c, "beta__echo").await.expect("beta"), "beta:echo");
    assert_eq!(
        call(&c, "alpha__tool4").await.expect("alpha"),
        "alpha:tool4"
    );
    assert_eq!(call(&c, "gamma__echo").await.expect("gamma"), "gamma:echo");
    let unknown = call(&c, "delta__echo").await;
    assert!(unknown.is_err(), "a prefix no member has is unknown");
    let unprefixed = call(&c, "echo").await;
    assert!(unprefixed.is_err(), "own names are not client names");

    let resources = c.service.list_all_resources().await.expect("resources");
    let uris = sorted(resources.iter().map(|r| r.uri.clone()).collect());
    assert_eq!(
        uris,
        [
            "portcullis://alpha/mem://alpha/readme",
            "portcullis://beta/mem://beta/readme",
            "portcullis://gamma/mem://gamma/readme"
        ]
    );
    let read = c
        .service
        .read_resource(ReadResourceRequestParams::new(
            "portcullis://beta/mem://beta/readme",
        ))
        .await
        .expect("read through the wrapped URI");
    let body = serde_json::to_string(&read).expect("json");
    assert!(body.contains("beta readme"), "{body}");

    let metrics = gw.metrics().await;
    assert!(
        metrics
            .contains(r#"portcullis_federation_list_pages_total{route="fleet",source="upstream"}"#),
        "{metrics}"
    );
    c.service
        .cancel()
        .await
        .expect("DELETE ends every member's session");
}

/// A raw `tools/list` in the stateless revision, with `cursor` if any.
async fn raw_list(url: &str, cursor: Option<&str>) -> serde_json::Value {
    let mut params = serde_json::json!({"_meta": stateless_meta()});
    if let Some(c) = cursor {
        params["cursor"] = serde_json::Value::String(c.to_owned());
    }
    let body =
        serde_json::json!({"jsonrpc": "2.0", "id": 7, "method": "tools/list", "params": params});
    let r = http_client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/list")
        .body(body.to_string())
        .send()
        .await
        .expect("tools/list");
    let text = r.text().await.expect("body");
    messages(&text).pop().expect("one message")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_cursors_walk_every_page_and_a_tampered_one_is_refused() {
    let m = members().await;
    let gw = federated(&m, "      list_cache_ttl: 0s\n").await;

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    let first_cursor = loop {
        let page = raw_list(&gw.url, cursor.as_deref()).await;
        let result = &page["result"];
        for t in result["tools"].as_array().expect("tools") {
            seen.push(t["name"].as_str().expect("name").to_owned());
        }
        pages += 1;
        assert!(pages <= 5, "the walk ends");
        match result["nextCursor"].as_str() {
            Some(next) => {
                assert!(
                    !next.contains("alpha") && next.parse::<u64>().is_err(),
                    "the cursor is the gateway's own, not a member's: {next}"
                );
                if cursor.is_none() {
                    cursor = Some(next.to_owned());
                    continue;
                }
                cursor = Some(next.to_owned());
            }
            None => break cursor,
        }
    };
    assert_eq!(pages, 3, "alpha's three pages");
    assert_eq!(seen.len(), 9, "{seen:?}");
    assert_eq!(
        sorted(seen.clone()),
        {
            let mut d = seen.clone();
            d.sort();
            d.dedup();
            d
        },
        "no name twice"
    );

    let cursor = first_cursor.expect("a cursor");
    // Flip one character in the middle: the seal no longer opens.
    let mut bytes = cursor.into_bytes();
    let mid = bytes.len() / 2;
    bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(bytes).expect("ascii");
    for bad in [tampered.as_str(), "3", "", "not a cursor at all"] {
        let answer = raw_list(&gw.url, Some(bad)).await;
        assert_eq!(answer["error"]["code"], -32602, "{bad:?}: {answer}");
        assert_eq!(answer["id"], 7);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stateless_revision_discovers_lists_and_calls_through_a_federated_route() {
    let m = members().await;
    let gw = federated(&m, "      separator: \"-\"\n").await;
    let c = connect_stateless(&gw.url).await;
    let tools = c.service.list_all_tools().await.expect("tools");
    assert!(tools.iter().any(|t| t.name == "gamma-tool1"), "{tools:?}");
    let r = stateless_call(
        &http_client(),
        &gw.url,
        "gamma-tool1",
        serde_json::json!({}),
    )
    .send()
    .await
    .expect("call");
    let body = r.text().await.expect("body");
    assert!(body.contains("gamma:tool1"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_goes_down_keeps_its_tools_for_the_grace_period_then_they_go() {
    let (alpha, beta, gamma) = members().await;
    let m = (alpha, beta, gamma);
    let gw = federated(
        &m,
        "      list_cache_ttl: 0s\n      grace: 3s\n      fanout_timeout: 2s\n",
    )
    .await;
    let c = connect_stateless(&gw.url).await;
    let names =
        |tools: Vec<Tool>| -> Vec<String> { tools.iter().map(|t| t.name.to_string()).collect() };
    let before = names(c.service.list_all_tools().await.expect("tools"));
    assert!(before.iter().any(|n| n == "gamma__echo"));

    let (alpha, beta, gamma) = m;
    drop(gamma);
    // Within the grace period its last good list is served.
    let during = names(c.service.list_all_tools().await.expect("tools"));
    assert!(
        during.iter().any(|n| n == "gamma__echo"),
        "kept for the grace period: {during:?}"
    );
    gw.wait_metrics("a stale page served", |m| {
        m.contains(r#"portcullis_federation_list_pages_total{route="fleet",source="stale"}"#)
    })
    .await;
    let failures = gw.metrics().await;
    assert!(
        failures.contains(r#"portcullis_federation_member_failures_total{kind="error",member="gamma",route="fleet"}"#),
        "{failures}"
    );

    // Then they go, and the others stay.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let after = loop {
        let now = names(c.service.list_all_tools().await.expect("tools"));
        if !now.iter().any(|n| n.starts_with("gamma__")) {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gamma's tools outlived the grace period"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert!(after.iter().any(|n| n == "alpha__tool4") && after.iter().any(|n| n == "beta__echo"));
    drop((alpha, beta));
}

/// A raw 2025-11-25 POST in session `sid`; the status and the JSON-RPC messages.
async fn in_session(
    url: &str,
    sid: &str,
    body: serde_json::Value,
) -> (u16, Vec<serde_json::Value>) {
    let r = session_post(url, sid, body.to_string())
        .send()
        .await
        .expect("answer");
    let status = r.status().as_u16();
    let text = r.text().await.expect("body");
    let msgs = if status == 200 {
        messages(&text)
    } else {
        Vec::new()
    };
    (status, msgs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_with_one_key_serve_one_federated_session_alternately() {
    let m = members().await;
    let dir = scratch_dir();
    let key = dir.join("session.key");
    std::fs::write(&key, "k".repeat(40)).expect("write key");
    let shared = format!("sessions:\n  key_file: {}\n", key.display());
    let a = federated_with(&m, "      separator: __\n", &shared).await;
    let b = federated_with(&m, "      separator: __\n", &shared).await;

    let sid = initialize_raw(&a.url, "unused").await;
    let (status, _) = in_session(
        &b.url,
        &sid,
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(
        status, 202,
        "the other replica takes the session's next message"
    );

    // Each call lands on the member that owns the name, in the member session the
    // first replica opened, whichever replica carries it.
    let calls = [
        (&a, "alpha__echo", "alpha:echo"),
        (&b, "beta__tool1", "beta:tool1"),
        (&a, "gamma__echo", "gamma:echo"),
        (&b, "alpha__tool4", "alpha:tool4"),
    ];
    for (i, (gw, tool, says)) in calls.into_iter().enumerate() {
        let (status, msgs) = in_session(
            &gw.url,
            &sid,
            serde_json::json!({"jsonrpc": "2.0", "id": i + 1, "method": "tools/call",
                "params": {"name": tool, "arguments": {}}}),
        )
        .await;
        assert_eq!(status, 200, "{tool} on {}", gw.url);
        assert_eq!(msgs.len(), 1, "one answer, not two: {msgs:?}");
        assert_eq!(msgs[0]["id"], i + 1);
        assert_eq!(
            msgs[0]["result"]["content"][0]["text"], says,
            "{tool}: {msgs:?}"
        );
    }
    let (status, msgs) = in_session(
        &b.url,
        &sid,
        serde_json::json!({"jsonrpc": "2.0", "id": 9, "method": "tools/list"}),
    )
    .await;
    assert_eq!(status, 200);
    let listed = msgs[0]["result"]["tools"].to_string();
    assert!(
        listed.contains("beta__echo") && listed.contains("gamma__tool1"),
        "{listed}"
    );

    // Ending the session on one replica ends it for both: the members forgot it.
    let r = http_client()
        .delete(&b.url)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-11-25")
        .send()
        .await
        .expect("DELETE");
    assert!(r.status().is_success(), "{}", r.status());
    let (status, _) = in_session(
        &a.url,
        &sid,
        serde_json::json!({"jsonrpc": "2.0", "id": 10, "method": "tools/call",
            "params": {"name": "beta__echo", "arguments": {}}}),
    )
    .await;
    assert_eq!(
        status, 404,
        "a session ended on one replica is gone on the other"
    );
}

/// A session on `gw` (initialized) and its GET stream, opened with `last_event_id`.
async fn session_with_stream(gw: &Gateway) -> (String, SseReader) {
    let sid = initialize_raw(&gw.url, "unused").await;
    let (status, _) = in_session(
        &gw.url,
        &sid,
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )
    .await;
    assert_eq!(status, 202);
    let stream = get_stream(gw, &sid, None).await;
    (sid, stream)
}

async fn get_stream(gw: &Gateway, sid: &str, last_event_id: Option<&str>) -> SseReader {
    let mut req = http_client()
        .get(&gw.url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-11-25");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let r = req.send().await.expect("GET");
    assert_eq!(r.status(), 200, "the merged GET stream opens");
    SseReader::new(r)
}

/// Calls `<member>__notify` with `args` in session `sid`.
async fn notify(gw: &Gateway, sid: &str, member: &str, args: serde_json::Value) {
    let (status, msgs) = in_session(
        &gw.url,
        sid,
        serde_json::json!({"jsonrpc": "2.0", "id": 50, "method": "tools/call",
            "params": {"name": format!("{member}__notify"), "arguments": args}}),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        msgs.last()
            .map(|m| m["result"]["content"][0]["text"].clone()),
        Some("notified".into()),
        "{msgs:?}"
    );
}

fn log_text(e: &SseEvent) -> Option<&str> {
    (e.data["method"] == "notifications/message")
        .then(|| e.data["params"]["data"].as_str())
        .flatten()
}

fn is_list_changed(e: &SseEvent) -> bool {
    e.data["method"] == "notifications/tools/list_changed"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_get_stream_merges_the_members_and_last_event_id_resumes_each_where_it_stopped() {
    let m = members().await;
    let gw = federated(&m, "      separator: __\n").await;
    let (sid, mut stream) = session_with_stream(&gw).await;

    notify(
        &gw,
        &sid,
        "alpha",
        serde_json::json!({"logs": 2, "say": "one"}),
    )
    .await;
    notify(
        &gw,
        &sid,
        "beta",
        serde_json::json!({"logs": 1, "say": "two"}),
    )
    .await;
    let mut seen = Vec::new();
    let mut last_id = None;
    while seen.len() < 3 {
        let e = stream.next().await;
        if let Some(t) = log_text(&e) {
            seen.push(t.to_owned());
            let id = e.id.clone().expect("member events carry ids");
            assert!(id.starts_with("f1."), "the gateway's own event id: {id}");
            last_id = Some(id);
        }
    }
    seen.sort();
    assert_eq!(seen, ["alpha: one", "alpha: one", "beta: two"]);

    // The client goes away; alpha says more while no stream is open.
    drop(stream);
    notify(
        &gw,
        &sid,
        "alpha",
        serde_json::json!({"logs": 1, "say": "missed"}),
    )
    .await;
    let mut resumed = get_stream(&gw, &sid, last_id.as_deref()).await;
    let (e, before) = resumed.until(|e| log_text(e).is_some()).await;
    assert_eq!(
        log_text(&e),
        Some("alpha: missed"),
        "alpha resumed after its own last event, nothing replayed twice: {before:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_changed_from_many_members_reaches_the_client_once_and_empties_their_cache() {
    let m = members().await;
    let gw = federated(&m, "      separator: __\n      list_cache_ttl: 1h\n").await;
    let (sid, mut stream) = session_with_stream(&gw).await;
    let list = || async {
        in_session(
            &gw.url,
            &sid,
            serde_json::json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}),
        )
        .await
    };
    list().await;
    list().await;
    let cached = gw.metrics().await;
    assert!(
        cached.contains(r#"portcullis_federation_list_pages_total{route="fleet",source="cache"}"#),
        "{cached}"
    );

    notify(&gw, &sid, "alpha", serde_json::json!({"changed": 3})).await;
    notify(&gw, &sid, "beta", serde_json::json!({"changed": 2})).await;
    let (_, before) = stream.until(is_list_changed).await;
    assert!(before.iter().all(|e| !is_list_changed(e)));
    // A marker after the window: nothing else came between.
    notify(
        &gw,
        &sid,
        "gamma",
        serde_json::json!({"logs": 1, "say": "marker"}),
    )
    .await;
    let (_, between) = stream.until(|e| log_text(e) == Some("gamma: marker")).await;
    assert!(
        !between.iter().any(is_list_changed),
        "five list_changed from two members, one to the client: {between:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stays_down_past_the_grace_period_is_announced_once() {
    let (alpha, beta, gamma) = members().await;
    let m = (alpha, beta, gamma);
    let gw = federated(
        &m,
        "      list_cache_ttl: 0s\n      grace: 2s\n      fanout_timeout: 2s\n",
    )
    .await;
    let (sid, mut stream) = session_with_stream(&gw).await;
    let names = || async {
        let (_, msgs) = in_session(
            &gw.url,
            &sid,
            serde_json::json!({"jsonrpc": "2.0", "id": 8, "method": "tools/list"}),
        )
        .await;
        msgs[0]["result"]["tools"].to_string()
    };
    assert!(names().await.contains("gamma__echo"));
    let (alpha, beta, gamma) = m;
    drop(gamma);
    assert!(
        names().await.contains("gamma__echo"),
        "kept for the grace period"
    );
    let (_, before) = stream.until(is_list_changed).await;
    assert!(before.iter().all(|e| !is_list_changed(e)));
    assert!(
        !names().await.contains("gamma__echo"),
        "announced once its tools were gone"
    );
    notify(
        &gw,
        &sid,
        "alpha",
        serde_json::json!({"logs": 1, "say": "marker"}),
    )
    .await;
    let (_, between) = stream.until(|e| log_text(e) == Some("alpha: marker")).await;
    assert!(
        !between.iter().any(is_list_changed),
        "one list_changed for a member going away, not one per reconnection: {between:?}"
    );
    drop((alpha, beta));
}

async fn next_of(sub: &mut rmcp::service::Subscription) -> ServerNotification {
    tokio::time::timeout(DEADLINE, sub.next())
        .await
        .expect("a notification within the deadline")
        .expect("the subscription goes on")
        .expect("not ended")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_listen_fans_out_acknowledges_once_and_maps_resource_updates() {
    let poke = Arc::new(tokio::sync::Notify::new());
    let m = members_poked(poke.clone()).await;
    let gw = federated(&m, "      separator: __\n").await;
    let c = connect_stateless(&gw.url).await;
    let readme = "portcullis://alpha/mem://alpha/readme";
    let mut sub = c
        .service
        .listen(
            SubscriptionFilter::builder()
                .tools_list_changed()
                .resource_subscription(readme)
                .build(),
        )
        .await
        .expect("listen through the federated route");
    let ack = sub.acknowledged();
    assert_eq!(ack.tools_list_changed, Some(true), "{ack:?}");
    assert_eq!(
        ack.resource_subscriptions.as_deref(),
        Some(&[readme.to_owned()][..]),
        "alpha accepted its resource, named as the client names it"
    );

    let first = next_of(&mut sub).await;
    assert!(
        matches!(first, ServerNotification::ToolListChangedNotification(_)),
        "{first:?}"
    );
    // Six list_changed from three members became one; a resource update marks the
    // end of the window.
    poke.notify_waiters();
    let mut sub_next = next_of(&mut sub).await;
    let mut extra = 0;
    while !matches!(sub_next, ServerNotification::ResourceUpdatedNotification(_)) {
        extra += 1;
        sub_next = next_of(&mut sub).await;
    }
    assert_eq!(extra, 0, "one tools/list_changed for six");
    let ServerNotification::ResourceUpdatedNotification(updated) = sub_next else {
        unreachable!()
    };
    assert_eq!(updated.params.uri, readme, "the member's URI mapped back");
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_sees_the_clients_names_and_rules_naming_a_member_see_its_own() {
    let m = members().await;
    let policy = "default: allow\nrules:\n\
  - {name: no-beta-echo, effect: hide, targets: [{tool: echo, upstream: beta}]}\n\
  - {name: alpha-tools-denied, effect: deny, targets: [{tool: \"alpha__tool*\"}]}\n\
  - {name: not-by-own-name, effect: hide, targets: [{tool: tool1}]}\n";
    let gw = Gateway::start_with_files(
        &format!(
            "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
server:\n  threads: 2\n  grace_period: 0s\n  work_stealing: true\n\
routes:\n  - path: /mcp\n    name: fleet\n    members: [alpha, beta, gamma]\n    policy: policy.yaml\n\
upstreams:\n  alpha:\n    url: {}\n  beta:\n    url: {}\n  gamma:\n    url: {}\n",
            m.0.url, m.1.url, m.2.url
        ),
        &[("policy.yaml", policy)],
    )
    .await;
    let c = connect_session(&gw.url).await;
    let tools = c.service.list_all_tools().await.expect("tools");
    let names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    assert!(
        !names.iter().any(|n| n == "beta__echo"),
        "hidden by its own name on its member: {names:?}"
    );
    for shown in [
        "alpha__echo",
        "gamma__echo",
        "alpha__tool1",
        "beta__tool1",
        "gamma__tool1",
    ] {
        assert!(
            names.iter().any(|n| n == shown),
            "{shown} listed (a rule without upstream matches client names only): {names:?}"
        );
    }
    let hidden = call(&c, "beta__echo").await.expect_err("hidden");
    assert!(format!("{hidden:?}").contains("Unknown tool"), "{hidden:?}");
    let denied = call(&c, "alpha__tool1").await.expect_err("denied");
    assert!(
        format!("{denied:?}").contains("-32016")
            || format!("{denied:?}").contains("alpha-tools-denied"),
        "{denied:?}"
    );
    assert_eq!(
        call(&c, "gamma__echo").await.expect("allowed"),
        "gamma:echo"
    );
    assert_eq!(
        call(&c, "beta__tool1").await.expect("allowed"),
        "beta:tool1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_vanishes_from_the_merged_stream_gives_back_every_member_stream() {
    let m = members().await;
    let gw = federated(&m, "      separator: __\n").await;
    let (sid, stream) = session_with_stream(&gw).await;
    gw.wait_metrics("the merged stream open", |m| {
        m.contains("portcullis_standalone_streams_open 1")
    })
    .await;
    drop(stream);
    gw.wait_metrics("the merged stream closed", |m| {
        m.contains("portcullis_standalone_streams_open 0")
    })
    .await;
    // Had alpha's own GET stream stayed open, alpha (rmcp) would keep sending to it and
    // give a second stream nothing: the new stream hearing alpha proves it was closed.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let mut again = get_stream(&gw, &sid, None).await;
        notify(
            &gw,
            &sid,
            "alpha",
            serde_json::json!({"logs": 1, "say": "after"}),
        )
        .await;
        let heard = tokio::time::timeout(std::time::Duration::from_secs(2), async {
            again.until(|e| log_text(e) == Some("alpha: after")).await
        })
        .await;
        if heard.is_ok() {
            break;
        }
        // The member may not have noticed the closed connection yet: try again.
        assert!(
            tokio::time::Instant::now() < deadline,
            "alpha's stream for the vanished client was never closed"
        );
    }
}

/// A member with sessions that offers no GET stream (405), counting the GETs it gets.
async fn member_without_stream() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::AsyncWriteExt;
    let gets = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = gets.clone();
    let (url, _task) = raw_upstream(move |mut s| {
        let gets = counted.clone();
        async move {
            while let Some(req) = read_request(&mut s).await {
                let answer = if req.starts_with("GET ") {
                    gets.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    "HTTP/1.1 405 Method Not Allowed\r\nallow: POST, DELETE\r\ncontent-length: 0\r\n\r\n".to_owned()
                } else if req.contains("\"initialize\"") {
                    let body = r#"{"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2025-11-25","capabilities":{"tools":{}},"serverInfo":{"name":"quiet","version":"1"}}}"#;
                    format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nmcp-session-id: quiet-1\r\ncontent-length: {}\r\n\r\n{body}", body.len())
                } else {
                    "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_owned()
                };
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    (url, gets)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_answers_405_to_get_is_left_out_of_the_stream_without_a_storm() {
    let alpha = Upstream::serve(|| Member {
        who: "alpha",
        tools: 2,
        page: 10,
        poke: Arc::default(),
    })
    .await;
    let (quiet, gets) = member_without_stream().await;
    let gw = Gateway::start(&format!(
        "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
server:\n  threads: 2\n  grace_period: 0s\n  work_stealing: true\n\
routes:\n  - path: /mcp\n    name: fleet\n    members: [alpha, quiet]\n    federation:\n      grace: 1s\n\
upstreams:\n  alpha:\n    url: {}\n  quiet:\n    url: {quiet}\n",
        alpha.url
    ))
    .await;
    let (sid, mut stream) = session_with_stream(&gw).await;
    assert_eq!(
        gets.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the member was asked for its stream"
    );
    // Past the grace period and the debounce window, nothing may arrive: a member that
    // offers no stream is not a member that went away.
    let quiet_window =
        tokio::time::timeout(std::time::Duration::from_millis(2500), stream.next()).await;
    assert!(quiet_window.is_err(), "a quiet stream: {quiet_window:?}");
    notify(
        &gw,
        &sid,
        "alpha",
        serde_json::json!({"logs": 1, "say": "tick"}),
    )
    .await;
    let (_, before) = stream.until(|e| log_text(e) == Some("alpha: tick")).await;
    assert!(
        !before.iter().any(is_list_changed),
        "no list_changed for a member that offers no stream: {before:?}"
    );
    assert_eq!(
        gets.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "a 405 is not asked again"
    );
    drop(alpha);
}

/// A member with two tools (`echo`, `tool1`) on one page.
fn small(who: &'static str) -> impl Fn() -> Member + Send + Sync + 'static {
    move || Member {
        who,
        tools: 2,
        page: 10,
        poke: Arc::default(),
    }
}

/// A loopback address nothing listens on yet: a member that is not up.
fn not_listening() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// A gateway whose route `fleet` federates `members` (name, URL), with `federation`
/// settings (YAML under `federation:`).
async fn fleet_of(members: &[(&str, String)], federation: &str) -> Gateway {
    let names: Vec<&str> = members.iter().map(|(n, _)| *n).collect();
    let upstreams: String = members
        .iter()
        .map(|(n, url)| format!("  {n}:\n    url: {url}\n    connect_timeout: 1s\n"))
        .collect();
    Gateway::start(&format!(
        "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
server:\n  threads: 2\n  grace_period: 0s\n  work_stealing: true\n\
routes:\n  - path: /mcp\n    name: fleet\n    members: [{}]\n    federation:\n{federation}\
upstreams:\n{upstreams}",
        names.join(", ")
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_down_at_initialize_joins_the_session_once_it_is_back() {
    let member = small;
    let alpha = Upstream::serve(small("alpha")).await;
    let beta = Upstream::serve(small("beta")).await;
    let gamma_addr = not_listening();
    let gw = fleet_of(
        &[
            ("alpha", alpha.url.clone()),
            ("beta", beta.url.clone()),
            ("gamma", format!("http://{gamma_addr}/mcp")),
        ],
        "      list_cache_ttl: 0s\n      fanout_timeout: 2s\n",
    )
    .await;
    let c = connect_session(&gw.url).await;
    let names =
        |tools: Vec<Tool>| -> Vec<String> { tools.iter().map(|t| t.name.to_string()).collect() };
    let before = names(c.service.list_all_tools().await.expect("tools"));
    assert!(
        !before.iter().any(|n| n.starts_with("gamma__"))
            && before.iter().any(|n| n == "beta__echo"),
        "{before:?}"
    );

    let gamma = Upstream::serve_at(gamma_addr, member("gamma")).await;
    // A call to it joins it to the session (once its last failed try is old enough).
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let called = loop {
        match call(&c, "gamma__tool1").await {
            Ok(text) => break text,
            Err(e) => assert!(
                tokio::time::Instant::now() < deadline,
                "gamma never joined the session: {e:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(called, "gamma:tool1");
    let after = names(c.service.list_all_tools().await.expect("tools"));
    assert!(
        after.iter().any(|n| n == "gamma__echo"),
        "listed now: {after:?}"
    );
    assert_eq!(
        call(&c, "gamma__echo").await.expect("in its session"),
        "gamma:echo"
    );
    drop((alpha, beta, gamma));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_joins_later_is_added_to_the_open_get_stream() {
    let member = small;
    let alpha = Upstream::serve(small("alpha")).await;
    let gamma_addr = not_listening();
    let gw = fleet_of(
        &[
            ("alpha", alpha.url.clone()),
            ("gamma", format!("http://{gamma_addr}/mcp")),
        ],
        "      fanout_timeout: 2s\n",
    )
    .await;
    let (sid, mut stream) = session_with_stream(&gw).await;
    let gamma = Upstream::serve_at(gamma_addr, member("gamma")).await;
    // The first call that reaches gamma joins it to the session.
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let (status, msgs) = in_session(
            &gw.url,
            &sid,
            serde_json::json!({"jsonrpc": "2.0", "id": 60, "method": "tools/call",
                "params": {"name": "gamma__notify", "arguments": {"logs": 1, "say": "joined"}}}),
        )
        .await;
        if status == 200
            && msgs
                .iter()
                .any(|m| m["result"]["content"][0]["text"] == "notified")
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "gamma never joined");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // Its GET stream joins the one the client has open, and says it again.
    loop {
        notify(
            &gw,
            &sid,
            "gamma",
            serde_json::json!({"logs": 1, "say": "on the stream"}),
        )
        .await;
        let heard = tokio::time::timeout(std::time::Duration::from_secs(3), async {
            stream
                .until(|e| log_text(e) == Some("gamma: on the stream"))
                .await
        })
        .await;
        if heard.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gamma's stream never joined the open one"
        );
    }
    drop((alpha, gamma));
}
