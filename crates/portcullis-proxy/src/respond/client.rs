//! Writes to the client. Every one is bounded by `http.write_timeout` (a client that
//! stops reading is cut, and what it held comes back), and bodies go out in pieces of
//! at most [`PIECE`] bytes, so "no progress for the write timeout" means no piece
//! accepted in that time, however large the body.

use std::future::Future;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_http::ResponseHeader;

use crate::metrics::Metrics;

/// The largest piece of body written at once.
pub const PIECE: usize = 64 * 1024;

/// Why a write to the client did not complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritten {
    /// The client is gone (reset, closed).
    Gone,
    /// The client accepted nothing for the write timeout.
    TimedOut,
}

/// The client's side of one response, with the write timeout that bounds it.
pub struct Writer<'a> {
    /// The bound on each write.
    pub timeout: Duration,
    /// Where timeouts are counted.
    pub metrics: &'a Metrics,
}

/// Runs a write, bounded by `limit`. Most writes complete at once (the socket has
/// room), so the write is tried first and a timer is armed only when it has to wait:
/// the common case costs no timer at all.
async fn bounded<T>(limit: Duration, write: impl Future<Output = T>) -> Option<T> {
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(done) => Some(done),
        Poll::Pending => pingora_timeout::timeout(limit, write).await.ok(),
    }
}

impl Writer<'_> {
    fn timed_out(&self) -> Unwritten {
        self.metrics
            .client_timeouts
            .with_label_values(&["write"])
            .inc();
        Unwritten::TimedOut
    }

    /// Writes the response head.
    pub async fn head(
        &self,
        ds: &mut ServerSession,
        head: ResponseHeader,
    ) -> Result<(), Unwritten> {
        match bounded(self.timeout, ds.write_response_header(Box::new(head))).await {
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(Unwritten::Gone),
            None => Err(self.timed_out()),
        }
    }

    /// Writes body bytes, piece by piece.
    pub async fn body(&self, ds: &mut ServerSession, mut bytes: Bytes) -> Result<(), Unwritten> {
        while !bytes.is_empty() {
            let piece = bytes.split_to(bytes.len().min(PIECE));
            match bounded(self.timeout, ds.write_response_body(piece, false)).await {
                Some(Ok(())) => {}
                Some(Err(_)) => return Err(Unwritten::Gone),
                None => return Err(self.timed_out()),
            }
        }
        Ok(())
    }

    /// Ends the body (the last chunk of a chunked one).
    pub async fn finish(&self, ds: &mut ServerSession) -> Result<(), Unwritten> {
        match bounded(self.timeout, ds.finish_body()).await {
            Some(Ok(())) => Ok(()),
            Some(Err(_)) => Err(Unwritten::Gone),
            None => Err(self.timed_out()),
        }
    }

    /// A whole response: head, then body.
    pub async fn whole(
        &self,
        ds: &mut ServerSession,
        head: ResponseHeader,
        body: Bytes,
    ) -> Result<(), Unwritten> {
        self.head(ds, head).await?;
        if !body.is_empty() {
            self.body(ds, body).await?;
        }
        self.finish(ds).await
    }
}
