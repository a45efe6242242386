//! The gateway's own messages to upstreams, through the same [`Upstream`] interface as
//! every client's: a message posted into a session in the background (the answer to a
//! server request the policy refused, a cancellation when a call's deadline passes),
//! and one request read to its JSON-RPC answer (the catalog walk).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use portcullis_mcp::sse::Splitter;
use serde_json::Value;

use super::{Failure, Outbound, OwnedPin, Sender, Upstream, Wait};

/// The largest answer the gateway reads for itself.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// How long a background message may take before it is given up.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(10);

/// Posts `body` (one JSON-RPC message) into `session` of `upstream`, in revision
/// `version`, on a task of its own, reading the answer to its end; failures are logged.
pub fn post_in_background(
    upstream: Arc<dyn Upstream>,
    session: Option<OwnedPin>,
    version: String,
    body: Vec<u8>,
) {
    tokio::spawn(async move {
        let out = Outbound {
            sender: Sender::Gateway {
                version: &version,
                method: None,
            },
            session: session.as_ref().map(OwnedPin::pin),
            wait: Wait::Answer,
            answer_by: None,
        };
        let sent = tokio::time::timeout(BACKGROUND_TIMEOUT, async {
            let mut inbound = upstream.send(out, Bytes::from(body)).await?;
            let status = inbound.answer.head().status.as_u16();
            while inbound.answer.chunk().await?.is_some() {}
            inbound.answer.release().await;
            Ok::<u16, Failure>(status)
        })
        .await;
        let name = upstream.name();
        match sent {
            Ok(Ok(status)) if (200..300).contains(&status) => {}
            Ok(Ok(status)) => tracing::warn!(
                upstream = name,
                status,
                "the upstream did not take a message the gateway sent on the client's behalf"
            ),
            Ok(Err(e)) => tracing::warn!(upstream = name, error = ?e,
                "could not send the upstream a message on the client's behalf"),
            Err(_) => tracing::warn!(
                upstream = name,
                "a message the gateway sent on the client's behalf took too long"
            ),
        }
    });
}

/// What one request the gateway made for itself came back with.
pub struct Answered {
    /// The upstream's `Mcp-Session-Id`, if it sent one.
    pub session: Option<OwnedPin>,
    /// The JSON-RPC response: a JSON body, or the first response event of a stream.
    pub message: Option<Value>,
}

/// Sends `body` (a request with method `method`) and reads its answer.
pub async fn call(
    upstream: &dyn Upstream,
    session: Option<&OwnedPin>,
    version: &str,
    method: &str,
    body: &Value,
) -> Result<Answered, String> {
    let out = Outbound {
        sender: Sender::Gateway {
            version,
            method: Some(method),
        },
        session: session.map(OwnedPin::pin),
        wait: Wait::Answer,
        answer_by: None,
    };
    exchange(upstream, out, Bytes::from(body.to_string()), method).await
}

/// Sends `body` as `out` says (a request named `what` in errors) and reads its
/// JSON-RPC answer: the federated route's fan-out sends the client's requests this way.
pub async fn exchange(
    upstream: &dyn Upstream,
    out: Outbound<'_>,
    body: Bytes,
    what: &str,
) -> Result<Answered, String> {
    let method = what;
    let session = out.session;
    let mut inbound = upstream
        .send(out, body)
        .await
        .map_err(|e| format!("{method}: {e:?}"))?;
    let head = inbound.answer.head();
    let status = head.status.as_u16();
    if !(200..300).contains(&status) {
        return Err(format!("{method}: HTTP {status}"));
    }
    let session = head
        .headers
        .get(portcullis_mcp::headers::MCP_SESSION_ID)
        .map(|v| OwnedPin {
            replica: inbound.served.replica.clone(),
            id: v.as_bytes().to_vec(),
        })
        .or_else(|| {
            session.map(|p| OwnedPin {
                replica: p.replica.into(),
                id: p.id.to_vec(),
            })
        });
    let sse = head
        .headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut buf = Vec::new();
    let mut splitter = Splitter::new(MAX_ANSWER);
    while let Some(chunk) = inbound
        .answer
        .chunk()
        .await
        .map_err(|e| format!("{method}: {e:?}"))?
    {
        if !sse {
            if buf.len() + chunk.len() > MAX_ANSWER {
                return Err(format!("{method}: answer too large"));
            }
            buf.extend_from_slice(&chunk);
            continue;
        }
        let events = splitter
            .push(&chunk)
            .map_err(|_| format!("{method}: event too large"))?;
        for ev in events {
            if let Some(msg) = ev.data.and_then(|d| serde_json::from_str::<Value>(&d).ok()) {
                if msg.get("id").is_some()
                    && (msg.get("result").is_some() || msg.get("error").is_some())
                {
                    // The rest of the stream is not wanted: the connection is dropped.
                    return Ok(Answered {
                        session,
                        message: Some(msg),
                    });
                }
            }
        }
    }
    inbound.answer.release().await;
    if sse || buf.is_empty() {
        return Ok(Answered {
            session,
            message: None,
        });
    }
    let msg = serde_json::from_slice(&buf).map_err(|e| format!("{method}: {e}"))?;
    Ok(Answered {
        session,
        message: Some(msg),
    })
}

/// Ends `session` of `upstream` as the gateway.
pub async fn end_session(upstream: &dyn Upstream, session: &OwnedPin, version: &str) {
    let out = Outbound {
        sender: Sender::Gateway {
            version,
            method: None,
        },
        session: Some(session.pin()),
        wait: Wait::Answer,
        answer_by: None,
    };
    if let Ok(mut inbound) = upstream.end_session(out).await {
        while let Ok(Some(_)) = inbound.answer.chunk().await {}
        inbound.answer.release().await;
    }
}
