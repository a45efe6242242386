//! The limits stage: the route's rate limits, the replica's cap on standalone streams,
//! and the concurrency gates a request must pass before it is sent (its tool's gate,
//! then its upstream's). Gate waits are the driver's to run, since a client that leaves
//! or cancels while queued gives its place up.

use portcullis_mcp::{Overload, Refusal};

use crate::ctx::Ctx;
use crate::metrics::{Metrics, Raised};
use crate::snapshot::Snapshot;
use crate::traffic::{Counted, Slots};

/// Counts the request against its route's rate limits, in order (`counted: false`
/// passes without spending anything). The tool of a `tools/call` is counted by the
/// name the client used.
pub async fn rate(
    snap: &Snapshot,
    metrics: &Metrics,
    route: usize,
    counted: bool,
    cx: &Ctx,
) -> Result<(), Refusal> {
    let counted = if !counted {
        Counted::Exempt
    } else {
        Counted::Request {
            tool: cx.target.as_deref().filter(|_| cx.op.is_tool_call()),
        }
    };
    snap.traffic
        .check_limits(
            &snap.config,
            metrics,
            route,
            cx.principal.as_deref(),
            cx.client,
            counted,
        )
        .await
}

/// A place among the replica's standalone streams (GET streams and
/// `subscriptions/listen`), held while the stream is open.
pub fn stream_place(snap: &Snapshot, metrics: &Metrics) -> Result<Raised, Refusal> {
    let open = Raised::new(metrics.standalone_streams_open.clone());
    if metrics.standalone_streams_open.get() > snap.config.admission.max_streams as i64 {
        return Err(Refusal::Overloaded(Overload::TooManyStreams));
    }
    Ok(open)
}

/// The slots a request needs, taken in order: a `tools/call`'s tool gate (by the
/// upstream's name for the tool), then the upstream's gate for any request. A
/// `subscriptions/listen` stream and anything but a request take none.
pub async fn gates(
    snap: &Snapshot,
    metrics: &Metrics,
    upstream: usize,
    request: bool,
    cx: &Ctx,
) -> Result<Slots, Refusal> {
    let tool = cx
        .upstream_tool
        .as_deref()
        .or(cx.target.as_deref())
        .filter(|_| cx.op.is_tool_call());
    snap.traffic
        .enter(&snap.config, metrics, upstream, request, tool)
        .await
}
