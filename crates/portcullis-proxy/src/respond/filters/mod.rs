//! Small ordered transforms over an answer on its way to the client, in the manner of
//! pingora's `HttpModule`s. An SSE answer is read by an incremental
//! [`Scanner`](portcullis_mcp::scan::Scanner) that classifies each event by its head;
//! each [`Filter`] says how it needs that event (streamed, held if it fits, or whole),
//! watches every head, and may rewrite or hold back the events it asked to see whole.
//! Events no filter needs pass byte for byte, at once, whatever their size.
//!
//! - [`deadline`]: progress renews a call's deadline; other events are held whole
//!   while it runs, so the deadline's error never lands inside one.
//! - [`policy`]: list answers filtered, server-to-client requests judged (refused ones
//!   answered to the upstream on the client's behalf), `list_changed` forgetting the
//!   catalog; on a policy route anything that cannot be read is refused, not passed.
//! - [`member`]: on a federated route, a member's server-to-client request ids mapped
//!   so the client's answer finds its way back.

pub mod deadline;
pub mod member;
pub mod policy;

use bytes::Bytes;
use portcullis_mcp::scan::{Head, Mode, Scanner, Sink};
use portcullis_mcp::sse::Event;

/// What the filters ask the relay to do besides what they send on.
#[derive(Debug, Default)]
pub struct Effects {
    /// Progress was reported: the call's deadline is renewed.
    pub progress: bool,
    /// The answer to the call has begun: its deadline no longer applies.
    pub answered: bool,
    /// Messages to post to the upstream session on the client's behalf.
    pub replies: Vec<Vec<u8>>,
    /// A streamed event turned out ambiguous: the stream must end before its end.
    pub broken: bool,
}

/// What a filter makes of an event it held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Sent on as it arrived.
    Pass,
    /// Sent on with this data instead (other fields kept).
    Replace(String),
    /// Held back: the client never sees it.
    Drop,
}

/// One transform over an answer's events.
pub trait Filter: Send + Sync {
    /// How this filter needs the event whose head this is. Default: streamed.
    fn wants(&self, _head: &Head) -> Mode {
        Mode::Stream
    }
    /// Sees every event's head, once. Default: nothing.
    fn on_head(&mut self, _head: &Head, _fx: &mut Effects) {}
    /// The data of an event some filter held (`None`: it had no data line), as the
    /// filters before this one left it. Default: passed on.
    fn on_event(
        &mut self,
        _data: Option<&str>,
        _head: &Head,
        _ambiguous: bool,
        _fx: &mut Effects,
    ) -> Verdict {
        Verdict::Pass
    }
    /// What the client gets instead of a held event that grew too large. Default:
    /// nothing (the event is dropped).
    fn on_oversized(&mut self, _head: &Head) -> Option<String> {
        None
    }
}

/// The filters of one SSE answer, fed chunk by chunk.
pub struct Chain {
    scanner: Scanner,
    filters: Vec<Box<dyn Filter>>,
    out: Vec<u8>,
    fx: Effects,
    /// Whether the current event's head went to the filters already.
    headed: bool,
}

/// The scanner's view of a chain: the filters and where their output goes.
struct ChainSink<'a> {
    filters: &'a mut [Box<dyn Filter>],
    out: &'a mut Vec<u8>,
    fx: &'a mut Effects,
    headed: &'a mut bool,
}

impl ChainSink<'_> {
    fn heads(&mut self, head: &Head) {
        if !std::mem::replace(self.headed, true) {
            for f in self.filters.iter_mut() {
                f.on_head(head, self.fx);
            }
        }
    }
}

impl Sink for ChainSink<'_> {
    fn decide(&mut self, head: &Head) -> Mode {
        self.heads(head);
        let mut mode = Mode::Stream;
        for f in self.filters.iter() {
            mode = match (mode, f.wants(head)) {
                (Mode::Whole, _) | (_, Mode::Whole) => Mode::Whole,
                (Mode::Hold, _) | (_, Mode::Hold) => Mode::Hold,
                _ => Mode::Stream,
            };
        }
        mode
    }

    fn bytes(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn event(&mut self, event: Event, head: &Head, ambiguous: bool) {
        self.heads(head);
        let mut replaced: Option<String> = None;
        for f in self.filters.iter_mut() {
            let data = replaced.as_deref().or(event.data.as_deref());
            match f.on_event(data, head, ambiguous, self.fx) {
                Verdict::Pass => {}
                Verdict::Replace(d) => replaced = Some(d),
                Verdict::Drop => return,
            }
        }
        match replaced {
            None => self.out.extend_from_slice(&event.raw),
            Some(d) => self.out.extend_from_slice(&event.with_data(&d)),
        }
    }

    fn ambiguous(&mut self) {
        self.fx.broken = true;
    }

    fn end(&mut self) {
        *self.headed = false;
    }

    fn oversized(&mut self, head: &Head) {
        for f in self.filters.iter_mut() {
            if let Some(data) = f.on_oversized(head) {
                let ev = Event {
                    raw: Vec::new(),
                    data: None,
                    id: None,
                    event: Some("message".into()),
                };
                self.out.extend_from_slice(&ev.with_data(&data));
                return;
            }
        }
    }
}

impl Chain {
    /// A chain of `filters` holding events of at most `limit` bytes; `strict` cuts a
    /// stream whose streamed event turns out ambiguous.
    pub fn new(filters: Vec<Box<dyn Filter>>, limit: usize, strict: bool) -> Chain {
        Chain {
            scanner: Scanner::new(limit, strict),
            filters,
            out: Vec::new(),
            fx: Effects::default(),
            headed: false,
        }
    }

    fn sink(&mut self) -> (&mut Scanner, ChainSink<'_>) {
        (
            &mut self.scanner,
            ChainSink {
                filters: &mut self.filters,
                out: &mut self.out,
                fx: &mut self.fx,
                headed: &mut self.headed,
            },
        )
    }

    /// Takes a chunk of the upstream's stream; returns what to send now.
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        let (scanner, mut sink) = self.sink();
        scanner.push(chunk, &mut sink);
        Bytes::from(std::mem::take(&mut self.out))
    }

    /// The upstream's stream ended; returns what is left to send.
    pub fn finish(&mut self) -> Bytes {
        let (scanner, mut sink) = self.sink();
        scanner.finish(&mut sink);
        Bytes::from(std::mem::take(&mut self.out))
    }

    /// What the filters asked for since the last call.
    pub fn effects(&mut self) -> Effects {
        std::mem::take(&mut self.fx)
    }

    /// Whether what was sent so far ends between events.
    pub fn at_boundary(&self) -> bool {
        self.scanner.at_boundary()
    }
}

/// A JSON answer to rewrite grew past [`policy::MAX_LIST_BYTES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooLarge;

/// What happens to an answer's body on its way through.
pub enum Transform {
    /// Relayed byte for byte.
    Pass,
    /// A JSON list answer, read whole and filtered.
    Json {
        /// The route's policy filter.
        filter: Box<policy::PolicyFilter>,
        /// The body so far.
        buf: Vec<u8>,
    },
    /// An SSE stream through filters.
    Events(Box<Chain>),
    /// A federated member's JSON answer that may carry task ids, read whole and mapped.
    MemberJson {
        /// The member's id mapping.
        ids: Box<member::MemberIds>,
        /// The body so far.
        buf: Vec<u8>,
    },
}

impl Transform {
    /// Whether the body changes on the way (then its length does too).
    pub fn rewrites(&self) -> bool {
        !matches!(self, Transform::Pass)
    }

    /// Takes a chunk; returns what to send now.
    pub fn push(&mut self, chunk: Bytes) -> Result<Bytes, TooLarge> {
        match self {
            Transform::Pass => Ok(chunk),
            Transform::Json { buf, .. } | Transform::MemberJson { buf, .. } => {
                if buf.len() + chunk.len() > policy::MAX_LIST_BYTES {
                    return Err(TooLarge);
                }
                buf.extend_from_slice(&chunk);
                Ok(Bytes::new())
            }
            Transform::Events(chain) => Ok(chain.push(&chunk)),
        }
    }

    /// The upstream's body ended; returns what is left to send.
    pub fn finish(&mut self) -> Bytes {
        match self {
            Transform::Pass => Bytes::new(),
            Transform::Json { filter, buf } => Bytes::from(filter.whole_json(buf)),
            Transform::MemberJson { ids, buf } => Bytes::from(ids.whole_json(buf)),
            Transform::Events(chain) => chain.finish(),
        }
    }

    /// What the filters asked for since the last call.
    pub fn effects(&mut self) -> Effects {
        match self {
            Transform::Events(chain) => chain.effects(),
            Transform::Json { .. } | Transform::MemberJson { .. } | Transform::Pass => {
                Effects::default()
            }
        }
    }

    /// Whether what was sent so far ends between events (always, for what is not a
    /// stream of events: nothing is inserted there).
    pub fn at_boundary(&self) -> bool {
        match self {
            Transform::Events(chain) => chain.at_boundary(),
            _ => true,
        }
    }
}
