//! `portcullis demo`: the built-in demo MCP server on a loopback port of its own, the
//! gateway in front of it with an example config, and a banner saying how to connect.

use std::process::ExitCode;

/// The demo route's policy: destructive tools only for the `admins` group.
const DEMO_POLICY: &str = r#"# Written by `portcullis demo`: who may call what (docs/policies.md).
# Edit and save: the gateway reloads it live.
default: allow
rules:
  - name: destructive-tools-need-admins
    effect: deny
    except: [{group: admins}]
    targets: [{tool: "*", annotations: {destructiveHint: true}}]
"#;

/// Writes the demo config and policy, starts both servers, blocks until a signal.
pub fn run(listen: &str, admin: &str) -> ExitCode {
    let (upstream, _stop) = match portcullis_demo::spawn(([127, 0, 0, 1], 0).into()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot start the demo MCP server: {e}");
            return ExitCode::from(2);
        }
    };
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    let path = dir.join("portcullis.yaml");
    let config = [
        "# Written by `portcullis demo`. Edit and save: the gateway reloads it live.".to_owned(),
        "listeners:".to_owned(),
        format!("  public: {listen}"),
        format!("  admin: {admin}"),
        "http:".to_owned(),
        r#"  allowed_origins: ["http://localhost:*", "http://127.0.0.1:*"]"#.to_owned(),
        "  allowed_hosts: [localhost, 127.0.0.1]".to_owned(),
        "routes:".to_owned(),
        "  - path: /mcp".to_owned(),
        "    upstream: demo".to_owned(),
        "    auth:".to_owned(),
        format!("      required_scopes: [{}]", crate::token::DEMO_SCOPE),
        "      jwt:".to_owned(),
        "        issuers:".to_owned(),
        format!("          - issuer: {}", crate::token::DEMO_ISSUER),
        format!("            audiences: [{}]", crate::token::DEMO_AUDIENCE),
        "            secret_file: demo-hmac.key".to_owned(),
        "    policy: demo-policy.yaml".to_owned(),
        "    rate_limits:".to_owned(),
        "      - {name: per-caller, per: principal, rate: 20/s, burst: 40}".to_owned(),
        "upstreams:".to_owned(),
        "  demo:".to_owned(),
        format!("    url: http://{upstream}/mcp"),
        "    tools:".to_owned(),
        "      - {match: slow, max_in_flight: 2, max_queue: 4, queue_timeout: 10s, deadline: 30s, max_deadline: 2m}".to_owned(),
        String::new(),
    ]
    .join("\n");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|_| std::fs::write(dir.join("demo-hmac.key"), crate::token::DEMO_SECRET))
        .and_then(|_| std::fs::write(dir.join("demo-policy.yaml"), DEMO_POLICY))
        .and_then(|_| std::fs::write(&path, config));
    if let Err(e) = written {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    crate::run(
        &path,
        Some(&|p: &portcullis_proxy::Prepared| banner(p, &path)),
    )
}

fn banner(p: &portcullis_proxy::Prepared, config: &std::path::Path) {
    let url = match (p.tls, p.public) {
        (Some(tls), _) => format!("https://{tls}/mcp"),
        (None, Some(plain)) => format!("http://{plain}/mcp"),
        (None, None) => String::new(),
    };
    let token = crate::token::mint(
        "demo-user",
        &[crate::token::DEMO_SCOPE.to_owned()],
        &[],
        std::time::Duration::from_secs(24 * 3600),
    )
    .unwrap_or_default();
    println!(
        "\nPortcullis demo is running.\n\
\n  MCP endpoint  {url}\n                (Streamable HTTP: 2025-11-25 sessions and 2026-07-28 stateless)\n\
  Admin         http://{admin}/healthz  /readyz  /metrics\n\
  Config        {config} (edit it; changes apply without a restart)\n\
\nDemo tools: echo, add, slow (streams progress), delete_file (annotated destructive).\n\
The demo policy ({policy}) denies destructive tools except to group admins:\n\
  portcullis token --group admins   mints a token that may call delete_file.\n\
Traffic control (docs/traffic.md): 20 calls/s per caller (bursts of 40); slow runs two at\n\
a time with four more waiting, and is cancelled after 30 s without progress.\n\
\nThe endpoint requires a bearer token (scope mcp:tools). One, valid for 24 hours:\n\
\n  export PORTCULLIS_TOKEN={token}\n\
\n(`portcullis token --help` mints others; without a token the gateway answers 401 with\n\
a WWW-Authenticate challenge pointing at its protected resource metadata.)\n\
\nConnect an MCP client:\n\
  TypeScript SDK  node tests/interop/quickstart.mjs {url}   (after make test, or npm ci --prefix tests/interop)\n\
  MCP Inspector   npx @modelcontextprotocol/inspector   (Streamable HTTP, URL {url}, header Authorization: Bearer $PORTCULLIS_TOKEN)\n\
  Claude Code     claude mcp add --transport http portcullis-demo {url} --header \"Authorization: Bearer $PORTCULLIS_TOKEN\"\n\
\nOr call a tool with curl (2026-07-28, one request, no session):\n\
  curl -sN {url} -H \"authorization: Bearer $PORTCULLIS_TOKEN\" -H 'content-type: application/json' \\\n\
    -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2026-07-28' \\\n\
    -H 'mcp-method: tools/call' -H 'mcp-name: echo' \\\n\
    -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hello\"}},\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}'\n\
\nCtrl-C stops; SIGTERM drains.\n",
        admin = p.admin,
        config = config.display(),
        policy = config.with_file_name("demo-policy.yaml").display(),
    );
}
