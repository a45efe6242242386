//! The benchmark's upstream: a minimal, fast MCP echo over HTTP that answers a
//! `tools/call` with a JSON result carrying the request's id (and `tools/list` with five
//! tools). It is deliberately
//! cheaper than any SDK server so the proxies' own cost shows in the ratios.

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// The tools the echo upstream lists.
const TOOLS: &str = r#"{"name":"echo","inputSchema":{"type":"object"},"annotations":{"readOnlyHint":true}},{"name":"search","inputSchema":{"type":"object"}},{"name":"fetch","inputSchema":{"type":"object"}},{"name":"create","inputSchema":{"type":"object"}},{"name":"delete","inputSchema":{"type":"object"}}"#;

async fn answer(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let msg = serde_json::from_slice::<serde_json::Value>(&body).ok();
    let id = msg
        .as_ref()
        .and_then(|v| v.get("id").cloned())
        .unwrap_or(serde_json::Value::Null);
    let method = msg
        .as_ref()
        .and_then(|v| v.get("method").and_then(serde_json::Value::as_str));
    let out = match method {
        // A federated route's members are listed: five tools each.
        Some("tools/list") => {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{{"tools":[{TOOLS}]}}}}"#)
        }
        _ => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"result":{{"content":[{{"type":"text","text":"hello"}}],"isError":false}}}}"#
        ),
    };
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(out)))
        .unwrap_or_default())
}

/// Serves until killed.
pub fn serve(listen: &str) {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("upstream: {e}");
            return;
        }
    };
    rt.block_on(async {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("upstream: cannot listen on {listen}: {e}");
                return;
            }
        };
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service_fn(answer))
                    .await;
            });
        }
    });
}
