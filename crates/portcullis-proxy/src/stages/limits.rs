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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctx::Op;
    use crate::snapshot::for_test;

    fn config(route: &str, upstream: &str) -> String {
        format!(
            "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:0\n\
routes:\n  - path: /mcp\n    upstream: main\n{route}\
upstreams:\n  main:\n    url: http://127.0.0.1:9/mcp\n{upstream}\
admission:\n  max_streams: 1\n"
        )
    }

    fn call(tool: &str) -> Ctx {
        let mut cx = Ctx::new(None);
        cx.op = Op::Message(Some("tools/call".into()));
        cx.target = Some(tool.into());
        cx
    }

    #[tokio::test]
    async fn a_route_limit_refuses_past_its_burst_and_exempt_requests_spend_nothing() {
        let dir = std::env::temp_dir();
        let (snap, metrics) = for_test(
            &dir,
            &config(
                "    rate_limits:\n      - {name: r, per: route, rate: 1/h, burst: 2}\n",
                "",
            ),
        );
        let cx = call("echo");
        for _ in 0..3 {
            assert_eq!(rate(&snap, &metrics, 0, false, &cx).await, Ok(()));
        }
        assert_eq!(rate(&snap, &metrics, 0, true, &cx).await, Ok(()));
        assert_eq!(rate(&snap, &metrics, 0, true, &cx).await, Ok(()));
        assert!(matches!(
            rate(&snap, &metrics, 0, true, &cx).await,
            Err(Refusal::RateLimited { .. })
        ));
    }

    #[test]
    fn the_stream_cap_refuses_past_it_and_a_closed_stream_frees_its_place() {
        let (snap, metrics) = for_test(&std::env::temp_dir(), &config("", ""));
        let first = stream_place(&snap, &metrics).expect("first stream");
        assert_eq!(
            stream_place(&snap, &metrics).err(),
            Some(Refusal::Overloaded(Overload::TooManyStreams))
        );
        assert_eq!(
            metrics.standalone_streams_open.get(),
            1,
            "the refused one left"
        );
        drop(first);
        assert_eq!(metrics.standalone_streams_open.get(), 0);
        assert!(stream_place(&snap, &metrics).is_ok());
    }

    #[tokio::test]
    async fn a_full_gate_refuses_and_its_slot_comes_back_when_dropped() {
        let (snap, metrics) = for_test(
            &std::env::temp_dir(),
            &config(
                "",
                "    concurrency:\n      max_in_flight: 1\n      max_queue: 0\n",
            ),
        );
        let cx = call("echo");
        let held = gates(&snap, &metrics, 0, true, &cx).await.expect("a slot");
        assert!(matches!(
            gates(&snap, &metrics, 0, true, &cx).await,
            Err(Refusal::Overloaded(Overload::QueueFull))
        ));
        // What is not a request (a response, a notification) passes without a slot.
        assert!(gates(&snap, &metrics, 0, false, &cx).await.is_ok());
        drop(held);
        assert!(gates(&snap, &metrics, 0, true, &cx).await.is_ok());
    }
}
