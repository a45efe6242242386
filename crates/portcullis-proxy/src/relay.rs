//! The relay: an upstream answer that has started, carried to the client through its
//! filters. While it runs, four things may end it before the upstream does, and all
//! four are watched whatever the relay is waiting on (the upstream's next bytes, or a
//! write to a client that reads slowly): the client leaving, the client cancelling, the
//! call's deadline, and a write the client does not take within `http.write_timeout`.
//! A quiet SSE stream gets a keep-alive comment every `http.stream_keepalive`, which
//! both keeps idle-timeout proxies in front from cutting it and finds clients that
//! vanished without a FIN.
//!
//! What the relay knows of the client is one [`Client`] state, moving one way:
//! `Watched` (its socket is polled for a close) → `Unwatched` (it sent the next
//! pipelined request; writes will tell if it goes) → `Draining` (it is gone, but its
//! request belongs to a session whose upstream work must be waited out).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use pingora_core::protocols::http::ServerSession;
use pingora_timeout::fast_timeout::fast_sleep;
use portcullis_config::Deadline;
use portcullis_mcp::Refusal;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::metrics::{Metrics, Raised};
use crate::respond::client::{Unwritten, Writer};
use crate::respond::filters::{Effects, Transform};
use crate::upstream::own::post_in_background;
use crate::upstream::{Answer, OwnedPin, Upstream};

/// The comment a quiet SSE stream is sent (ignored by every SSE parser).
const KEEPALIVE_COMMENT: &[u8] = b": keep-alive\n\n";

/// What the relay knows of the client (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// Its socket is watched for a close.
    Watched,
    /// Not watched: pipelined bytes arrived, or nothing long-lived is relayed.
    Unwatched,
    /// Gone; the upstream's answer is read to its end and dropped.
    Draining,
}

/// How a relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The whole answer reached the client.
    Complete,
    /// The client went away.
    ClientGone,
    /// The client accepted nothing for the write timeout.
    WriteTimedOut,
    /// The client cancelled the request; `ended`: the answer was then ended cleanly.
    Cancelled {
        /// The answer's end was written (otherwise it is cut).
        ended: bool,
    },
    /// The call's deadline passed; the upstream was told to cancel. `ended`: the
    /// deadline event and the answer's end were written.
    DeadlineExceeded {
        /// The answer's end was written (otherwise it is cut).
        ended: bool,
    },
    /// The upstream failed mid-answer (the `portcullis_upstream_errors_total` kind), or
    /// sent what a policy route cannot pass on.
    Broken(&'static str),
}

impl Ended {
    /// The reason logged and counted, for an answer that did not complete.
    pub fn reason(self) -> Option<&'static str> {
        match self {
            Ended::Complete => None,
            Ended::ClientGone => Some("client_closed"),
            Ended::WriteTimedOut => Some("client_write_timeout"),
            Ended::Cancelled { .. } => Some("client_cancelled"),
            Ended::DeadlineExceeded { .. } => Some("deadline_exceeded"),
            Ended::Broken(_) => Some("upstream_broken"),
        }
    }

    /// Whether the answer stopped short of a written end: the client must then see
    /// a reset stream or a closed connection, never an answer that looks whole.
    pub fn cut(self) -> bool {
        match self {
            Ended::Complete => false,
            Ended::Cancelled { ended } | Ended::DeadlineExceeded { ended } => !ended,
            Ended::ClientGone | Ended::WriteTimedOut | Ended::Broken(_) => true,
        }
    }
}

/// Where the gateway writes on the client's behalf: the request's upstream session.
pub struct OnBehalf {
    /// The upstream.
    pub upstream: Arc<dyn Upstream>,
    /// Its session, when the request had one.
    pub session: Option<OwnedPin>,
    /// The protocol revision to speak.
    pub version: &'static str,
}

/// What may end a relay early.
pub struct Watches<'a> {
    /// Notified when the client cancels the request (`notifications/cancelled`).
    pub cancelled: Option<&'a Notify>,
    /// The call's deadline, counted from `sent`.
    pub deadline: Option<Deadline>,
    /// When the request was sent.
    pub sent: Instant,
    /// A request in a session: its client leaving does not end it (the client may
    /// resume; it cancels with `notifications/cancelled`), so its answer is drained and
    /// the slots it holds are kept until the upstream is done.
    pub keep_on: bool,
}

/// One answer's relay.
pub struct Relay<'a> {
    /// Writes to the client.
    pub writer: Writer<'a>,
    /// What happens to the body on the way.
    pub transform: Transform,
    /// Whether the body is an SSE stream.
    pub sse: bool,
    /// Whether its length is unknown (then the client's socket is watched).
    pub open_ended: bool,
    /// How long an SSE stream may stay quiet before a keep-alive comment.
    pub keepalive: Duration,
    /// What may end it early.
    pub watches: Watches<'a>,
    /// Where answers to refused server requests and a deadline's cancellation go.
    pub on_behalf: Option<OnBehalf>,
    /// The request's id (JSON text): the deadline's error and cancellation name it.
    pub rpc_id: Option<&'a str>,
    /// The upstream's name.
    pub upstream: &'a str,
    /// The route's name (`portcullis_open_streams{route}`).
    pub route: &'a str,
    /// Where streams are counted.
    pub metrics: &'a Metrics,
}

/// What woke the relay.
enum Step {
    Chunk(Result<Option<Bytes>, crate::upstream::Failure>),
    ClientClosed(bool),
    Cancelled,
    Deadline,
    Quiet,
}

/// Why a write did not happen.
enum Stop {
    Unwritten(Unwritten),
    Cancelled,
    Deadline,
}

/// Whether what was written of an SSE stream (byte for byte) ends between events.
#[derive(Default)]
struct EventEdge {
    tail: [u8; 4],
    written: bool,
}

impl EventEdge {
    fn push(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.written = true;
        let n = bytes.len().min(4);
        self.tail.rotate_left(n);
        self.tail[4 - n..].copy_from_slice(&bytes[bytes.len() - n..]);
    }

    fn at_boundary(&self) -> bool {
        !self.written
            || self.tail[2..] == *b"\n\n"
            || self.tail[2..] == *b"\r\r"
            || self.tail == *b"\r\n\r\n"
    }
}

/// Waits for `n`, or forever without one.
pub async fn notified(n: Option<&Notify>) {
    match n {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

/// Sleeps until `at`, or forever without one.
async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `notifications/cancelled` for request `id` (its JSON text), sent upstream when the
/// gateway gives up on the call.
pub fn cancelled_notification(id: &str) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","method":"notifications/cancelled","params":{{"requestId":{id},"reason":"deadline exceeded at the gateway"}}}}"#
    )
    .into_bytes()
}

impl Relay<'_> {
    /// Relays `answer` to the client on `ds`, counting body bytes into `bytes_out`.
    pub async fn run(
        mut self,
        ds: &mut ServerSession,
        mut answer: Box<dyn Answer>,
        bytes_out: &mut usize,
    ) -> Ended {
        let _open = self
            .sse
            .then(|| Raised::new(self.metrics.open_streams.with_label_values(&[self.route])));
        let mut client = if self.open_ended {
            Client::Watched
        } else {
            Client::Unwatched
        };
        // Without SSE the answer itself has started: nothing is left for a deadline.
        let mut deadline_at = self
            .watches
            .deadline
            .filter(|_| self.sse)
            .map(|d| self.watches.sent + d.initial);
        let mut lost = Ended::ClientGone;
        let mut edge = EventEdge::default();
        loop {
            let step = tokio::select! {
                biased;
                r = answer.chunk() => Step::Chunk(r),
                r = ds.read_body_or_idle(true), if client == Client::Watched => {
                    Step::ClientClosed(r.is_err())
                }
                _ = notified(self.watches.cancelled) => Step::Cancelled,
                _ = until(deadline_at) => Step::Deadline,
                _ = fast_sleep(self.keepalive), if self.sse && client != Client::Draining => {
                    Step::Quiet
                }
            };
            let out = match step {
                Step::ClientClosed(false) => {
                    // Bytes of a pipelined request: they wait for their turn.
                    client = Client::Unwatched;
                    continue;
                }
                Step::ClientClosed(true) if self.watches.keep_on => {
                    client = Client::Draining;
                    continue;
                }
                Step::ClientClosed(true) => return Ended::ClientGone,
                Step::Cancelled => {
                    let ended = client != Client::Draining && self.writer.finish(ds).await.is_ok();
                    return Ended::Cancelled { ended };
                }
                Step::Deadline => {
                    self.cancel_upstream();
                    let mut ended = false;
                    if client != Client::Draining && self.at_boundary(&edge) {
                        let event = self.deadline_event();
                        if self.writer.body(ds, event.clone()).await.is_ok() {
                            *bytes_out += event.len();
                            ended = self.writer.finish(ds).await.is_ok();
                        }
                    }
                    return Ended::DeadlineExceeded { ended };
                }
                Step::Quiet => {
                    if !self.at_boundary(&edge) {
                        continue;
                    }
                    self.metrics.stream_keepalives.inc();
                    Bytes::from_static(KEEPALIVE_COMMENT)
                }
                Step::Chunk(Err(f)) => return Ended::Broken(f.kind().unwrap_or("other")),
                Step::Chunk(Ok(None)) => {
                    let tail = self.transform.finish();
                    let fx = self.transform.effects();
                    self.act(&fx, &mut deadline_at);
                    if client != Client::Draining && !tail.is_empty() {
                        match self.write(ds, tail.clone(), deadline_at).await {
                            Ok(()) => {
                                edge.push(&tail);
                                *bytes_out += tail.len();
                            }
                            Err(_) => client = Client::Draining,
                        }
                    }
                    answer.release().await;
                    if client == Client::Draining {
                        return lost;
                    }
                    return match self.writer.finish(ds).await {
                        Ok(()) => Ended::Complete,
                        Err(Unwritten::TimedOut) => Ended::WriteTimedOut,
                        Err(Unwritten::Gone) => Ended::ClientGone,
                    };
                }
                Step::Chunk(Ok(Some(chunk))) => {
                    let Ok(out) = self.transform.push(chunk) else {
                        return Ended::Broken("protocol");
                    };
                    let fx = self.transform.effects();
                    self.act(&fx, &mut deadline_at);
                    if fx.broken {
                        if client != Client::Draining && !out.is_empty() {
                            let _ = self.write(ds, out, deadline_at).await;
                        }
                        return Ended::Broken("protocol");
                    }
                    out
                }
            };
            if out.is_empty() || client == Client::Draining {
                continue;
            }
            match self.write(ds, out.clone(), deadline_at).await {
                Ok(()) => {
                    edge.push(&out);
                    *bytes_out += out.len();
                }
                Err(Stop::Cancelled) => return Ended::Cancelled { ended: false },
                Err(Stop::Deadline) => {
                    // Mid-write: no room for an error event; closing is the signal.
                    self.cancel_upstream();
                    return Ended::DeadlineExceeded { ended: false };
                }
                Err(Stop::Unwritten(why)) => {
                    let ended = match why {
                        Unwritten::Gone => Ended::ClientGone,
                        Unwritten::TimedOut => Ended::WriteTimedOut,
                    };
                    if !self.watches.keep_on {
                        return ended;
                    }
                    lost = ended;
                    client = Client::Draining;
                }
            }
        }
    }

    /// Writes `bytes` while still watching for a cancellation and the deadline.
    async fn write(
        &self,
        ds: &mut ServerSession,
        bytes: Bytes,
        deadline_at: Option<Instant>,
    ) -> Result<(), Stop> {
        tokio::select! {
            biased;
            r = self.writer.body(ds, bytes) => r.map_err(Stop::Unwritten),
            _ = notified(self.watches.cancelled) => Err(Stop::Cancelled),
            _ = until(deadline_at) => Err(Stop::Deadline),
        }
    }

    /// Whether a comment or an event may be written now without landing inside one.
    fn at_boundary(&self, edge: &EventEdge) -> bool {
        match self.transform {
            Transform::Events(_) => self.transform.at_boundary(),
            _ => edge.at_boundary(),
        }
    }

    /// Does what the filters asked.
    fn act(&self, fx: &Effects, deadline_at: &mut Option<Instant>) {
        if fx.answered {
            *deadline_at = None;
        } else if fx.progress && deadline_at.is_some() {
            if let Some(d) = self.watches.deadline {
                let latest = self.watches.sent + d.max;
                *deadline_at = Some((Instant::now() + d.initial).min(latest));
            }
        }
        if let Some(to) = &self.on_behalf {
            for reply in &fx.replies {
                post_in_background(
                    to.upstream.clone(),
                    to.session.clone(),
                    to.version.to_owned(),
                    reply.clone(),
                );
            }
        }
    }

    /// Tells the upstream the call is given up: in a session, by notification; without
    /// one (2026-07-28) dropping the connection is the cancellation.
    fn cancel_upstream(&self) {
        if let (Some(to), Some(id)) = (&self.on_behalf, self.rpc_id) {
            if to.session.is_some() {
                post_in_background(
                    to.upstream.clone(),
                    to.session.clone(),
                    to.version.to_owned(),
                    cancelled_notification(id),
                );
            }
        }
    }

    /// The deadline's error, as the stream's last event.
    fn deadline_event(&self) -> Bytes {
        let after = self.watches.sent.elapsed();
        let refusal = Refusal::DeadlineExceeded {
            upstream: self.upstream.to_owned(),
            after_ms: u64::try_from(after.as_millis()).unwrap_or(u64::MAX),
        };
        let mut event = b"event: message\ndata: ".to_vec();
        event.extend_from_slice(&refusal.body(self.rpc_id));
        event.extend_from_slice(b"\n\n");
        Bytes::from(event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_edge_follows_blank_lines_across_writes() {
        let mut e = EventEdge::default();
        assert!(e.at_boundary(), "nothing written yet");
        e.push(b"data: {}\n");
        assert!(!e.at_boundary());
        e.push(b"\n");
        assert!(e.at_boundary(), "the blank line came in its own write");
        e.push(b"data: x\r\n\r\n");
        assert!(e.at_boundary());
        e.push(b"data: x\r\n");
        assert!(!e.at_boundary());
        e.push(b"");
        assert!(!e.at_boundary());
    }

    #[test]
    fn reasons_name_how_a_relay_ended() {
        assert_eq!(Ended::Complete.reason(), None);
        assert_eq!(Ended::WriteTimedOut.reason(), Some("client_write_timeout"));
        assert_eq!(Ended::Broken("reset").reason(), Some("upstream_broken"));
        assert!(Ended::Broken("reset").cut());
        assert!(!Ended::DeadlineExceeded { ended: true }.cut());
        assert!(Ended::DeadlineExceeded { ended: false }.cut());
        assert!(!Ended::Complete.cut());
    }
}
