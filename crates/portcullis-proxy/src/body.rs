//! Reading a request body: up to `http.max_body_size` bytes, within `http.body_timeout`
//! from the first time it has to be waited for, answering `Expect: 100-continue`. A
//! body refused or cut short leaves the connection unusable, so it is closed.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header;
use pingora_core::protocols::http::ServerSession;
use pingora_error::ErrorType;
use portcullis_config::Http;
use portcullis_mcp::Refusal;

use crate::ctx::Ctx;

/// Reads the whole body of the request on `ds`.
pub async fn read(ds: &mut ServerSession, http: &Http, cx: &mut Ctx) -> Result<Bytes, Refusal> {
    let limit = http.max_body_size;
    let declared = ds
        .req_header()
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        cx.close = true;
        return Err(Refusal::PayloadTooLarge { limit });
    }
    let expects_continue = ds
        .get_header(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if expects_continue && ds.write_continue_response().await.is_err() {
        cx.close = true;
        return Err(Refusal::RequestTimeout);
    }
    let mut buf = BodyBuf::Empty;
    let mut received = 0usize;
    let mut deadline = None;
    loop {
        let chunk = match read_chunk(ds, http.body_timeout, &mut deadline).await {
            Ok(chunk) => chunk,
            Err(()) => {
                cx.close = true;
                return Err(Refusal::RequestTimeout);
            }
        };
        match chunk {
            Err(e) => {
                cx.close = true;
                return Err(if matches!(e.etype(), ErrorType::ReadTimedout) {
                    Refusal::RequestTimeout
                } else {
                    Refusal::InvalidRequest(format!(
                        "request body could not be read: {}",
                        e.etype().as_str()
                    ))
                });
            }
            Ok(None) => break,
            Ok(Some(bytes)) => {
                received += bytes.len();
                if received > limit {
                    cx.close = true;
                    return Err(Refusal::PayloadTooLarge { limit });
                }
                buf.push(bytes, declared.unwrap_or(0));
            }
        }
    }
    Ok(buf.freeze())
}

/// Reads the next body chunk, bounded by a deadline `timeout` after the first time the
/// body had to be waited for. A body already buffered with the headers (the usual
/// small request) is read without arming any timer.
async fn read_chunk(
    ds: &mut ServerSession,
    timeout: Duration,
    deadline: &mut Option<Instant>,
) -> Result<pingora_error::Result<Option<Bytes>>, ()> {
    let mut read = std::pin::pin!(ds.read_request_body());
    if let std::task::Poll::Ready(r) = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))
    })
    .await
    {
        return Ok(r);
    }
    let at = *deadline.get_or_insert_with(|| Instant::now() + timeout);
    let left = at.saturating_duration_since(Instant::now());
    // pingora's coarse (10 ms) timer: far cheaper per request than tokio's wheel.
    pingora_timeout::timeout(left, read).await.map_err(|_| ())
}

/// A request body as it arrives: most bodies come in one chunk, kept without a copy.
enum BodyBuf {
    Empty,
    One(Bytes),
    Many(BytesMut),
}

impl BodyBuf {
    fn push(&mut self, chunk: Bytes, declared: usize) {
        *self = match std::mem::replace(self, BodyBuf::Empty) {
            BodyBuf::Empty => BodyBuf::One(chunk),
            BodyBuf::One(first) => {
                let mut all = BytesMut::with_capacity(declared.max(first.len() + chunk.len()));
                all.extend_from_slice(&first);
                all.extend_from_slice(&chunk);
                BodyBuf::Many(all)
            }
            BodyBuf::Many(mut all) => {
                all.extend_from_slice(&chunk);
                BodyBuf::Many(all)
            }
        };
    }

    fn freeze(self) -> Bytes {
        match self {
            BodyBuf::Empty => Bytes::new(),
            BodyBuf::One(b) => b,
            BodyBuf::Many(m) => m.freeze(),
        }
    }
}
