//! The built-in demo MCP server (rmcp) that `portcullis demo` runs behind the gateway,
//! also used by the end-to-end tests as a real upstream. It speaks both eras: sessions
//! for 2025-11-25 clients and stateless requests for 2026-07-28 ones.
//!
//! Tools: `echo`, `add`, `slow` (streams progress, then answers), `delete_file`
//! (annotated destructive; it deletes nothing). A resource and a prompt round it off.

#![allow(deprecated)] // rmcp 3.x marks the logging API deprecated (SEP-2577); it still works.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::*;
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{tool, tool_handler, tool_router, ErrorData as McpError, RoleServer, ServerHandler};
use schemars::JsonSchema;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// `echo` arguments.
#[derive(Deserialize, JsonSchema)]
pub struct EchoArgs {
    /// Text to send back.
    pub text: String,
}

/// `add` arguments.
#[derive(Deserialize, JsonSchema)]
pub struct AddArgs {
    /// First addend.
    pub a: f64,
    /// Second addend.
    pub b: f64,
}

/// `slow` arguments.
#[derive(Deserialize, JsonSchema)]
pub struct SlowArgs {
    /// Progress steps to report (default 3, at most 100).
    #[serde(default)]
    pub steps: Option<u32>,
    /// Milliseconds between steps (default 200, at most 10000).
    #[serde(default)]
    pub delay_ms: Option<u64>,
}

/// `delete_file` arguments.
#[derive(Deserialize, JsonSchema)]
pub struct DeleteArgs {
    /// The path it pretends to delete.
    pub path: String,
}

/// The demo MCP server's handler.
#[derive(Clone, Default)]
pub struct Demo;

#[tool_router]
impl Demo {
    /// Echo the text back.
    #[tool(
        description = "Echo the given text back",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn echo(&self, Parameters(EchoArgs { text }): Parameters<EchoArgs>) -> String {
        text
    }

    /// Add two numbers.
    #[tool(
        description = "Add two numbers",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn add(&self, Parameters(AddArgs { a, b }): Parameters<AddArgs>) -> String {
        (a + b).to_string()
    }

    /// A slow task that reports progress before it answers.
    #[tool(
        description = "A slow task that streams progress notifications, then answers",
        annotations(read_only_hint = true, open_world_hint = false)
    )]
    async fn slow(
        &self,
        Parameters(args): Parameters<SlowArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, McpError> {
        let steps = args.steps.unwrap_or(3).min(100);
        let delay = Duration::from_millis(args.delay_ms.unwrap_or(200).min(10_000));
        let token = ctx.meta.get_progress_token();
        for i in 1..=steps {
            if let Some(t) = &token {
                ctx.peer
                    .notify_progress(
                        ProgressNotificationParam::new(t.clone(), f64::from(i))
                            .with_total(f64::from(steps))
                            .with_message(format!("step {i} of {steps}")),
                    )
                    .await
                    .map_err(|e| McpError::internal_error(e.to_string(), None))?;
            }
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = ctx.ct.cancelled() => {
                    return Err(McpError::internal_error("cancelled", None));
                }
            }
        }
        Ok(CallToolResult::success(vec![ContentBlock::text(format!(
            "done after {steps} steps"
        ))]))
    }

    /// Looks destructive (for policy demos); deletes nothing.
    #[tool(
        description = "Delete a file (demo: nothing is deleted)",
        annotations(
            read_only_hint = false,
            destructive_hint = true,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn delete_file(&self, Parameters(DeleteArgs { path }): Parameters<DeleteArgs>) -> String {
        format!("pretended to delete {path}")
    }
}

#[tool_handler]
impl ServerHandler for Demo {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(
            ServerCapabilities::builder()
                .enable_tools()
                .enable_resources()
                .enable_prompts()
                .build(),
        )
        .with_server_info(Implementation::new(
            "portcullis-demo",
            env!("CARGO_PKG_VERSION"),
        ))
        .with_instructions("Portcullis demo server: echo, add, slow (progress), delete_file.")
    }

    async fn list_resources(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        Ok(ListResourcesResult::with_all_items(vec![Resource::new(
            "demo://readme",
            "readme",
        )
        .with_mime_type("text/plain")]))
    }

    async fn read_resource(
        &self,
        req: ReadResourceRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        if req.uri != "demo://readme" {
            return Err(McpError::resource_not_found(
                format!("no resource {}", req.uri),
                None,
            ));
        }
        Ok(ReadResourceResult::new(vec![ResourceContents::text(
            "This MCP server sits behind Portcullis.",
            req.uri.clone(),
        )])
        .into())
    }

    async fn list_prompts(
        &self,
        _r: Option<PaginatedRequestParams>,
        _c: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        Ok(ListPromptsResult::with_all_items(vec![Prompt::new(
            "greet",
            Some("Greet someone"),
            Some(vec![PromptArgument::new("name").with_required(true)]),
        )]))
    }

    async fn get_prompt(
        &self,
        req: GetPromptRequestParams,
        _c: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if req.name != "greet" {
            return Err(McpError::invalid_params("unknown prompt", None));
        }
        let name = req
            .arguments
            .as_ref()
            .and_then(|a| a.get("name"))
            .and_then(|v| v.as_str())
            .unwrap_or("world")
            .to_owned();
        Ok(GetPromptResult::new(vec![PromptMessage::new_text(
            Role::User,
            format!("Say hello to {name}"),
        )])
        .into())
    }
}

/// Serves any rmcp handler over Streamable HTTP on `listener` until `stop` is cancelled,
/// with sessions for session-era clients.
pub async fn serve_handler<H, F>(
    listener: tokio::net::TcpListener,
    factory: F,
    stop: CancellationToken,
) where
    H: ServerHandler + Send + 'static,
    F: Fn() -> H + Send + Sync + 'static,
{
    serve_with(listener, factory, true, stop).await
}

/// Serves any rmcp handler; `sessions: false` makes a stateless-only server (no GET
/// stream, no DELETE: both answered 405).
pub async fn serve_with<H, F>(
    listener: tokio::net::TcpListener,
    factory: F,
    sessions_on: bool,
    stop: CancellationToken,
) where
    H: ServerHandler + Send + 'static,
    F: Fn() -> H + Send + Sync + 'static,
{
    let config = StreamableHttpServerConfig::default()
        .with_legacy_session_mode(sessions_on)
        .with_cancellation_token(stop.child_token());
    if sessions_on {
        let mut sessions = LocalSessionManager::default();
        sessions.session_config.keep_alive = Some(Duration::from_secs(600));
        let service = StreamableHttpService::new(move || Ok(factory()), Arc::new(sessions), config);
        accept_loop(listener, service, stop).await
    } else {
        // No session manager at all: no event store, so GET is 405 too.
        let sessions = NeverSessionManager::default();
        let service = StreamableHttpService::new(move || Ok(factory()), Arc::new(sessions), config);
        accept_loop(listener, service, stop).await
    }
}

async fn accept_loop<S>(listener: tokio::net::TcpListener, service: S, stop: CancellationToken)
where
    S: Clone + Send + 'static,
    TowerToHyperService<S>: hyper::service::Service<
            hyper::Request<hyper::body::Incoming>,
            Response = hyper::Response<
                http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>,
            >,
        > + Send
        + 'static,
    <TowerToHyperService<S> as hyper::service::Service<hyper::Request<hyper::body::Incoming>>>::Future:
        Send + 'static,
    <TowerToHyperService<S> as hyper::service::Service<hyper::Request<hyper::body::Incoming>>>::Error:
        Into<Box<dyn std::error::Error + Send + Sync>>,
{
    loop {
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(_) => continue,
            },
            _ = stop.cancelled() => return,
        };
        let svc = TowerToHyperService::new(service.clone());
        let stop = stop.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Serves the demo server on `listener` until `stop` is cancelled.
pub async fn serve(listener: tokio::net::TcpListener, stop: CancellationToken) {
    serve_handler(listener, Demo::default, stop).await
}

/// Binds `addr` and serves the demo server on a runtime of its own, returning the bound
/// address and a token that stops it.
pub fn spawn(addr: SocketAddr) -> std::io::Result<(SocketAddr, CancellationToken)> {
    let std_listener = std::net::TcpListener::bind(addr)?;
    std_listener.set_nonblocking(true)?;
    let bound = std_listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("demo-mcp")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("demo-mcp".into())
        .spawn(move || {
            rt.block_on(async move {
                match tokio::net::TcpListener::from_std(std_listener) {
                    Ok(l) => serve(l, token).await,
                    Err(e) => tracing::error!(error = %e, "demo server cannot listen"),
                }
            })
        })?;
    Ok((bound, stop))
}
