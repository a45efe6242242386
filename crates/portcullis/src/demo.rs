//! `portcullis demo`: the built-in demo MCP server on a loopback port of its own, the
//! gateway in front of it with an example config, and a banner saying how to connect.

use std::process::ExitCode;

/// Writes the demo config next to nothing else, starts both servers, blocks until a signal.
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
    let config = format!(
        "# Written by `portcullis demo`. Edit and save: the gateway reloads it live.\n\
listeners:\n  public: {listen}\n  admin: {admin}\n\
http:\n  allowed_origins: [\"http://localhost:*\", \"http://127.0.0.1:*\"]\n  allowed_hosts: [localhost, 127.0.0.1]\n\
routes:\n  - path: /mcp\n    upstream: demo\n\
upstreams:\n  demo:\n    url: http://{upstream}/mcp\n"
    );
    if let Err(e) = std::fs::create_dir_all(&dir).and_then(|_| std::fs::write(&path, config)) {
        eprintln!("error: cannot write {}: {e}", path.display());
        return ExitCode::from(2);
    }
    crate::run(
        &path,
        Some(&|p: &portcullis_proxy::Prepared| banner(p, &path)),
    )
}

fn banner(p: &portcullis_proxy::Prepared, config: &std::path::Path) {
    let url = format!("http://{}/mcp", p.public);
    println!(
        "\nPortcullis demo is running.\n\
\n  MCP endpoint  {url}\n                (Streamable HTTP: 2025-11-25 sessions and 2026-07-28 stateless)\n\
  Admin         http://{admin}/healthz  /readyz  /metrics\n\
  Config        {config} (edit it; changes apply without a restart)\n\
\nDemo tools: echo, add, slow (streams progress), delete_file (annotated destructive).\n\
\nConnect an MCP client:\n\
  MCP Inspector   npx @modelcontextprotocol/inspector   (transport: Streamable HTTP, URL {url})\n\
  Claude Code     claude mcp add --transport http portcullis-demo {url}\n\
\nOr call a tool with curl (2026-07-28, one request, no session):\n\
  curl -sN {url} -H 'content-type: application/json' \\\n\
    -H 'accept: application/json, text/event-stream' -H 'mcp-protocol-version: 2026-07-28' \\\n\
    -H 'mcp-method: tools/call' -H 'mcp-name: echo' \\\n\
    -d '{{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hello\"}},\"_meta\":{{\"io.modelcontextprotocol/protocolVersion\":\"2026-07-28\",\"io.modelcontextprotocol/clientCapabilities\":{{}}}}}}}}'\n\
\nCtrl-C stops; SIGTERM drains.\n",
        admin = p.admin,
        config = config.display(),
    );
}
