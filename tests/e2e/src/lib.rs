//! Harness for the end-to-end tests: real MCP upstreams (rmcp servers), a Portcullis
//! gateway on loopback ports picked by the kernel, rmcp clients in both protocol eras,
//! and a raw HTTP client for what SDKs will not send.

#![allow(deprecated)] // rmcp 3.x marks parts of its API deprecated (SEP-2577).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmcp::model::*;
use rmcp::service::{NotificationContext, RequestContext, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::StreamableHttpClientTransport;
use rmcp::{
    tool, tool_handler, tool_router, ClientHandler, ClientServiceExt, ErrorData as McpError,
    RoleClient, RoleServer, ServerHandler, ServiceExt,
};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

pub use portcullis_proxy::ShutdownKind;

mod idp;
pub use idp::JwksServer;
pub mod pki;
pub mod tls_upstream;

/// The issuer of the test tokens [`rs256_token`] signs.
pub const TEST_ISSUER: &str = "https://idp.test/realms/demo";

/// The test key fixtures (crates/portcullis-auth/tests/keys).
pub fn keys_dir() -> String {
    format!(
        "{}/../../crates/portcullis-auth/tests/keys",
        env!("CARGO_MANIFEST_DIR")
    )
}

/// `claims` signed RS256 with the fixture key `rsa1.key` (no `kid`).
pub fn rs256_token(claims: &serde_json::Value) -> String {
    let key = std::fs::read(format!("{}/rsa1.key", keys_dir())).expect("test key");
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&key).expect("pem"),
    )
    .expect("sign")
}

/// Unix time now.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The `auth:` block of a route that trusts [`rs256_token`]s for audience
/// `http://mcp.test<path>` (with `http.public_url: http://mcp.test`).
pub fn test_jwt_auth() -> String {
    format!(
        "    auth:\n      jwt:\n        issuers:\n          - issuer: {TEST_ISSUER}\n            pem_file: {}/rsa1.pub\n",
        keys_dir()
    )
}

/// How long any wait in a test may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A gateway running in this process, with its config in a private directory.
pub struct Gateway {
    running: Option<portcullis_proxy::Running>,
    /// `http://127.0.0.1:PORT`
    pub base: String,
    /// `http://127.0.0.1:PORT/mcp`
    pub url: String,
    /// `https://127.0.0.1:PORT` of the TLS listener, when configured.
    pub tls: Option<String>,
    /// `http://127.0.0.1:ADMIN`
    pub admin: String,
    /// The config file; rewrite it to test reloads.
    pub config_path: PathBuf,
    /// The access log file.
    pub access_log: PathBuf,
    /// The audit log file.
    pub audit_log: PathBuf,
}

impl Gateway {
    /// Replaces a file beside the config the way an editor or a ConfigMap update does
    /// (write aside, then rename), so the watcher never sees half a file.
    pub fn write_file(&self, name: &str, content: &str) {
        let target = self.config_path.parent().expect("config dir").join(name);
        let tmp = target.with_extension("tmp");
        std::fs::write(&tmp, content).expect("write");
        std::fs::rename(&tmp, &target).expect("rename into place");
    }
}

static DIRS: AtomicUsize = AtomicUsize::new(0);

/// Every line of a JSON-lines log file.
fn json_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("a log line is JSON"))
        .collect()
}

/// A fresh private directory under the system temp dir.
pub fn scratch_dir() -> PathBuf {
    let n = DIRS.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("portcullis-e2e-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// A config routing `/mcp` to `upstream_url`, listeners on port 0, plus `extra` YAML
/// appended at top level (e.g. an `http:` block).
///
/// In-process gateways use the work-stealing runtime: pingora 0.9.1's per-thread
/// runtimes find their pool through a `thread_local::ThreadLocal`, whose slots are
/// reused by later threads, so a second server started in the same process after a
/// first one stopped would spawn onto the dead one's runtimes. Production runs one
/// server per process; the default (per-thread runtimes) is covered by the tests that
/// run the binary (crates/portcullis/tests, tests/interop, tests/conformance).
pub fn config_for(upstream_url: &str, extra: &str) -> String {
    format!(
        "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
server:\n  threads: 2\n  grace_period: 0s\n  work_stealing: true\n\
routes:\n  - path: /mcp\n    upstream: main\n\
upstreams:\n  main:\n    url: {upstream_url}\n    connect_timeout: 1s\n\
{extra}"
    )
}

impl Gateway {
    /// Starts a gateway on `yaml` (whose `access_log` block is added here) and waits
    /// until `/healthz` answers.
    pub async fn start(yaml: &str) -> Gateway {
        Gateway::start_with_files(yaml, &[]).await
    }

    /// Like [`Gateway::start`], with `files` (name, content) written beside the config
    /// first (policy files, keys).
    pub async fn start_with_files(yaml: &str, files: &[(&str, &str)]) -> Gateway {
        Gateway::start_with(yaml, files, portcullis_proxy::Options::default()).await
    }

    /// Like [`Gateway::start`], resolving `discovery` names with `resolver`.
    pub async fn start_resolving(yaml: &str, resolver: Arc<TestResolver>) -> Gateway {
        Gateway::start_with(yaml, &[], portcullis_proxy::Options { resolver }).await
    }

    async fn start_with(
        yaml: &str,
        files: &[(&str, &str)],
        options: portcullis_proxy::Options,
    ) -> Gateway {
        let dir = scratch_dir();
        for (name, content) in files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).expect("create a directory beside the config");
            }
            std::fs::write(path, content).expect("write a file beside the config");
        }
        let config_path = dir.join("portcullis.yaml");
        let access_log = dir.join("access.log");
        let audit_log = dir.join("audit.log");
        let text = format!(
            "{yaml}\naccess_log:\n  output: {}\naudit_log:\n  output: {}\n",
            access_log.display(),
            audit_log.display()
        );
        std::fs::write(&config_path, text).expect("write config");
        let running = portcullis_proxy::spawn_with(&config_path, options).expect("gateway starts");
        let base = match (running.public, running.tls) {
            (Some(plain), _) => format!("http://{plain}"),
            (None, Some(tls)) => format!("https://{tls}"),
            (None, None) => unreachable!("a gateway has a public listener"),
        };
        let gw = Gateway {
            tls: running.tls.map(|a| format!("https://{a}")),
            url: format!("{base}/mcp"),
            base,
            admin: format!("http://{}", running.admin),
            running: Some(running),
            config_path,
            access_log,
            audit_log,
        };
        gw.wait_for("/healthz", 200).await;
        // Reload tests rewrite the file right away: wait until changes are watched.
        gw.wait_metrics("the reload watcher armed", |m| {
            m.contains("portcullis_config_watching 1")
        })
        .await;
        gw
    }

    /// Starts a gateway in front of `upstream` with default settings plus `extra`.
    pub async fn fronting(upstream: &Upstream, extra: &str) -> Gateway {
        Gateway::start(&config_for(&upstream.url, extra)).await
    }

    /// Polls an admin path until it answers `status`, failing after [`DEADLINE`].
    pub async fn wait_for(&self, path: &str, status: u16) {
        let client = http_client();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Ok(r) = client.get(format!("{}{path}", self.admin)).send().await {
                if r.status().as_u16() == status {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{path} never answered {status}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.admin).await
    }

    /// Polls `/metrics` until `pred` holds, failing after [`DEADLINE`].
    pub async fn wait_metrics(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_metrics_at(&self.admin, what, pred).await
    }

    /// Access log lines written so far, parsed.
    pub fn access_lines(&self) -> Vec<serde_json::Value> {
        json_lines(&self.access_log)
    }

    /// Polls the audit log until a line satisfies `pred`, failing after [`DEADLINE`].
    pub async fn wait_audit(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(l) = json_lines(&self.audit_log).into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(Instant::now() < deadline, "no audit log line for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Polls the access log until a line satisfies `pred` (lines are batched and
    /// written every 50 ms), failing after [`DEADLINE`].
    pub async fn wait_access(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(l) = self.access_lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            assert!(Instant::now() < deadline, "no access log line for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the gateway.
    pub fn stop(mut self, kind: ShutdownKind) {
        if let Some(r) = self.running.take() {
            r.stop(kind);
        }
    }
}

/// The `/metrics` text of the admin listener at `admin` (`http://host:port`).
pub async fn metrics_at(admin: &str) -> String {
    http_client()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .expect("metrics body")
}

/// Polls `admin`'s `/metrics` until `pred` holds, failing after [`DEADLINE`].
pub async fn wait_metrics_at(admin: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let m = metrics_at(admin).await;
        if pred(&m) {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed {what}:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One SSE event as a test reads it.
#[derive(Debug, Clone)]
pub struct SseEvent {
    /// Its `id:`, if any.
    pub id: Option<String>,
    /// Its `data:` lines joined, parsed as JSON (`Null` when there was none).
    pub data: serde_json::Value,
}

/// Reads an SSE response event by event.
pub struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    /// Reads `resp`'s body as events.
    pub fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            resp,
            buf: String::new(),
        }
    }

    /// The next event (comments skipped), failing the test after [`DEADLINE`] or if the
    /// stream ends.
    pub async fn next(&mut self) -> SseEvent {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let normalized = self.buf.replace("\r\n", "\n");
            if let Some(end) = normalized.find("\n\n") {
                let block = normalized[..end].to_owned();
                self.buf = normalized[end + 2..].to_owned();
                let mut id = None;
                let mut data: Vec<&str> = Vec::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim_start().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.strip_prefix(' ').unwrap_or(v));
                    }
                }
                if id.is_none() && data.is_empty() {
                    continue;
                }
                let joined = data.join("\n");
                let data = if joined.trim().is_empty() {
                    serde_json::Value::Null
                } else {
                    serde_json::from_str(&joined).expect("SSE data is JSON")
                };
                return SseEvent { id, data };
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.resp.chunk())
                .await
                .expect("an event within the deadline")
                .expect("the stream goes on")
                .expect("the stream did not end");
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Reads events until one satisfies `pred`; returns it and every event before it.
    pub async fn until(&mut self, pred: impl Fn(&SseEvent) -> bool) -> (SseEvent, Vec<SseEvent>) {
        let mut before = Vec::new();
        loop {
            let e = self.next().await;
            if pred(&e) {
                return (e, before);
            }
            before.push(e);
        }
    }
}

/// A DNS the test controls: each name resolves to what the test last set.
#[derive(Default)]
pub struct TestResolver {
    answers: parking_lot::Mutex<std::collections::HashMap<String, Vec<SocketAddr>>>,
    /// How many lookups were made.
    pub lookups: AtomicUsize,
}

impl TestResolver {
    /// From now on `name` resolves to `addrs` (none: the name does not exist).
    pub fn set(&self, name: &str, addrs: &[SocketAddr]) {
        self.answers.lock().insert(name.to_owned(), addrs.to_vec());
    }
}

#[async_trait::async_trait]
impl portcullis_proxy::Resolve for TestResolver {
    async fn resolve(&self, name: &str) -> std::io::Result<Vec<SocketAddr>> {
        self.lookups.fetch_add(1, Ordering::SeqCst);
        match self.answers.lock().get(name) {
            Some(a) if !a.is_empty() => Ok(a.clone()),
            _ => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{name}: no such name"),
            )),
        }
    }
}

/// A reqwest client that never pools across tests and never follows redirects.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(DEADLINE)
        .build()
        .expect("reqwest client")
}

/// A real MCP server on loopback.
pub struct Upstream {
    /// `http://127.0.0.1:PORT/mcp`
    pub url: String,
    /// Its address.
    pub addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Upstream {
    /// The demo server (echo, add, slow, delete_file).
    pub async fn demo() -> Upstream {
        Upstream::serve(portcullis_demo::Demo::default).await
    }

    /// Any rmcp handler, served statefully (sessions) with rmcp's defaults.
    pub async fn serve<H, F>(factory: F) -> Upstream
    where
        H: ServerHandler + Send + 'static,
        F: Fn() -> H + Send + Sync + 'static,
    {
        Upstream::serve_with(factory, true).await
    }

    /// The demo server without sessions (stateless only: GET and DELETE get 405).
    pub async fn demo_stateless() -> Upstream {
        Upstream::serve_with(portcullis_demo::Demo::default, false).await
    }

    /// Any rmcp handler, served statefully on `addr` (an upstream coming back on the
    /// address a stopped one had).
    pub async fn serve_at<H, F>(addr: SocketAddr, factory: F) -> Upstream
    where
        H: ServerHandler + Send + 'static,
        F: Fn() -> H + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .expect("bind upstream again");
        Upstream::serve_on(listener, factory, true)
    }

    async fn serve_with<H, F>(factory: F, sessions: bool) -> Upstream
    where
        H: ServerHandler + Send + 'static,
        F: Fn() -> H + Send + Sync + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        Upstream::serve_on(listener, factory, sessions)
    }

    fn serve_on<H, F>(listener: tokio::net::TcpListener, factory: F, sessions: bool) -> Upstream
    where
        H: ServerHandler + Send + 'static,
        F: Fn() -> H + Send + Sync + 'static,
    {
        let addr = listener.local_addr().expect("upstream addr");
        let stop = CancellationToken::new();
        tokio::spawn(portcullis_demo::serve_with(
            listener,
            factory,
            sessions,
            stop.clone(),
        ));
        Upstream {
            url: format!("http://{addr}/mcp"),
            addr,
            stop,
        }
    }
}

/// An upstream whose `gate` tool reports progress and then holds its answer until the
/// test releases it, so streaming order can be observed without timing.
#[derive(Clone)]
pub struct GateServer {
    /// Released by the test.
    pub release: Arc<Notify>,
    /// Counts calls that reached the upstream.
    pub calls: Arc<AtomicUsize>,
}

#[tool_router]
impl GateServer {
    /// Sends one progress notification, then waits for the release.
    #[tool(description = "Reports progress, then waits until the test releases it")]
    async fn gate(&self, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, McpError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(t) = ctx.meta.get_progress_token() {
            ctx.peer
                .notify_progress(ProgressNotificationParam::new(t, 1.0).with_message("waiting"))
                .await
                .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        }
        self.release.notified().await;
        Ok(CallToolResult::success(vec![ContentBlock::text(
            "released",
        )]))
    }
}

#[tool_handler]
impl ServerHandler for GateServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
    }
}

/// An rmcp client handler that forwards progress notifications to a channel.
#[derive(Clone)]
pub struct TestClient {
    version: ProtocolVersion,
    /// Progress notifications as they arrive.
    pub progress: mpsc::UnboundedSender<ProgressNotificationParam>,
}

impl ClientHandler for TestClient {
    fn get_info(&self) -> ClientConfig {
        ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("portcullis-e2e", "0.1.0"),
        )
        .with_protocol_version(self.version.clone())
    }

    async fn on_progress(
        &self,
        p: ProgressNotificationParam,
        _cx: NotificationContext<RoleClient>,
    ) {
        let _ = self.progress.send(p);
    }
}

impl Client {
    /// Waits for the next `n` progress notifications (handlers may run just after the
    /// response they precede on the wire settles), failing after [`DEADLINE`].
    pub async fn progress(&mut self, n: usize) -> Vec<f64> {
        let mut seen = Vec::with_capacity(n);
        while seen.len() < n {
            let p = tokio::time::timeout(DEADLINE, self.progress.recv())
                .await
                .expect("progress notification in time")
                .expect("progress channel open");
            seen.push(p.progress);
        }
        seen
    }
}

/// A connected rmcp client and its progress channel.
pub struct Client {
    /// The rmcp peer.
    pub service: RunningService<RoleClient, TestClient>,
    /// Progress notifications received.
    pub progress: mpsc::UnboundedReceiver<ProgressNotificationParam>,
}

fn transport(url: &str) -> StreamableHttpClientTransport<reqwest::Client> {
    StreamableHttpClientTransport::from_config(StreamableHttpClientTransportConfig::with_uri(
        url.to_owned(),
    ))
}

/// Connects with `initialize` (2025-11-25, sessions) sending `Authorization: Bearer`.
pub async fn connect_session_with_token(url: &str, token: &str) -> Client {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = TestClient {
        version: ProtocolVersion::V_2025_11_25,
        progress: tx,
    };
    let transport = StreamableHttpClientTransport::from_config(
        StreamableHttpClientTransportConfig::with_uri(url.to_owned()).auth_header(token.to_owned()),
    );
    let service = handler
        .serve(transport)
        .await
        .expect("initialize with a token");
    Client {
        service,
        progress: rx,
    }
}

/// A raw 2025-11-25 POST of `body` in session `sid`, every header right; add a token
/// or more headers before sending.
pub fn session_post(url: &str, sid: &str, body: String) -> reqwest::RequestBuilder {
    http_client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-11-25")
        .body(body)
}

/// A raw `initialize` (2025-11-25) with a bearer token; returns the session id.
pub async fn initialize_raw(url: &str, token: &str) -> String {
    initialize_raw_as(url, Some(token), 0).await
}

/// A raw `initialize` (2025-11-25) with JSON-RPC id `id` and a bearer token if given;
/// returns the session id.
pub async fn initialize_raw_as(url: &str, token: Option<&str>, id: u64) -> String {
    let mut req = http_client()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .body(
            serde_json::json!({"jsonrpc":"2.0","id":id,"method":"initialize","params":{
                "protocolVersion":"2025-11-25","capabilities":{},
                "clientInfo":{"name":"raw","version":"1"}}})
            .to_string(),
        );
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("initialize");
    assert_eq!(r.status(), 200, "initialize {id}");
    let sid = r.headers()["mcp-session-id"]
        .to_str()
        .expect("visible ASCII")
        .to_owned();
    let _ = r.text().await;
    sid
}

/// Connects with `initialize` (2025-11-25, sessions).
pub async fn connect_session(url: &str) -> Client {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = TestClient {
        version: ProtocolVersion::V_2025_11_25,
        progress: tx,
    };
    let service = handler
        .serve(transport(url))
        .await
        .expect("initialize through the gateway");
    Client {
        service,
        progress: rx,
    }
}

/// Connects statelessly (2026-07-28: `server/discover`, no session).
pub async fn connect_stateless(url: &str) -> Client {
    let (tx, rx) = mpsc::unbounded_channel();
    let handler = TestClient {
        version: ProtocolVersion::V_2026_07_28,
        progress: tx,
    };
    let service = handler
        .serve_with_lifecycle(
            transport(url),
            rmcp::ClientLifecycleMode::Discover {
                preferred_versions: vec![ProtocolVersion::V_2026_07_28],
            },
        )
        .await
        .expect("discover through the gateway");
    Client {
        service,
        progress: rx,
    }
}

/// The `_meta` a 2026-07-28 request carries.
pub fn stateless_meta() -> serde_json::Value {
    serde_json::json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {},
        "progressToken": "p1"
    })
}

/// A raw 2026-07-28 `tools/call` POST with every header right (with a progress
/// token: see [`stateless_meta`]).
pub fn stateless_call(
    client: &reqwest::Client,
    url: &str,
    tool: &str,
    arguments: serde_json::Value,
) -> reqwest::RequestBuilder {
    stateless_call_with_meta(client, url, tool, arguments, stateless_meta())
}

/// Like [`stateless_call`], with `meta` as `params._meta`.
pub fn stateless_call_with_meta(
    client: &reqwest::Client,
    url: &str,
    tool: &str,
    arguments: serde_json::Value,
    meta: serde_json::Value,
) -> reqwest::RequestBuilder {
    let body = serde_json::json!({
        "jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": meta}
    });
    client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", tool)
        .body(body.to_string())
}

/// Starts a `slow` demo call (3 steps of 300 ms) on its own task; the task yields the
/// response body. Used to have a call in flight while something else happens.
pub fn spawn_slow_call(url: &str) -> tokio::task::JoinHandle<String> {
    let url = url.to_owned();
    tokio::spawn(async move {
        stateless_call(
            &http_client(),
            &url,
            "slow",
            serde_json::json!({"steps": 3, "delay_ms": 300}),
        )
        .send()
        .await
        .expect("answer")
        .text()
        .await
        .expect("body")
    })
}

/// The JSON-RPC messages in an SSE or JSON response body.
pub fn messages(body: &str) -> Vec<serde_json::Value> {
    if body.trim_start().starts_with('{') {
        return vec![serde_json::from_str(body).expect("JSON body")];
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .filter(|d| !d.is_empty())
        .map(|d| serde_json::from_str(d).expect("SSE data is JSON"))
        .collect()
}

/// Reads one HTTP/1.1 request (head and `Content-Length` body) off `s`, as text;
/// `None` once the connection closes.
pub async fn read_request(s: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some(end) = text.find("\r\n\r\n") {
            let len = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                })
                .unwrap_or(0);
            if buf.len() >= end + 4 + len {
                return Some(text);
            }
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// A raw-socket upstream on loopback for what an MCP SDK will not send: `serve`
/// handles each accepted connection. Returns its `http://.../mcp` URL and the accept
/// loop's task.
pub async fn raw_upstream<F, Fut>(serve: F) -> (String, tokio::task::JoinHandle<()>)
where
    F: Fn(tokio::net::TcpStream) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/mcp", l.local_addr().expect("addr"));
    let task = tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(serve(s));
        }
    });
    (url, task)
}

/// An upstream that answers every POST with the request headers it received.
pub async fn header_mirror() -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::AsyncWriteExt;
    raw_upstream(|mut s| async move {
        while let Some(text) = read_request(&mut s).await {
            let end = text.find("\r\n\r\n").unwrap_or(text.len());
            let head = serde_json::to_string(&text[..end]).unwrap_or_default();
            let body = format!(r#"{{"jsonrpc":"2.0","id":1,"result":{{"head":{head}}}}}"#);
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: keep-alive, x-hop\r\nx-hop: secret\r\nkeep-alive: timeout=5\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(resp.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await
}
