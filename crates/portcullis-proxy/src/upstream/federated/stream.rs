//! A federated route's long-lived streams, merged: a session's GET stream (every
//! member's own GET stream) or a 2026-07-28 `subscriptions/listen` stream (the listen
//! request sent to every member, each asked for its own resources).
//!
//! Each member's stream is read by a task of its own (a feed) that sends its events
//! here through a small bounded channel, so a client that stops reading stops the feeds
//! and, through them, the members. On the way to the client:
//!
//! - event ids become the gateway's ([`ids::event_id`]): every member's last own id,
//!   so the client's `Last-Event-ID` resumes each member where it stopped;
//! - a member's server-to-client request gets an id that routes the client's answer
//!   back to it ([`ids::outward_request_id`]), and its cancellation of one the same id;
//! - `notifications/resources/updated` carries the URI as clients know it;
//! - a member's `notifications/*/list_changed` empties its cached lists and reaches the
//!   client once per [`DEBOUNCE`], however many members said so how often;
//! - a member whose stream ends is reconnected with backoff, where it stopped. While it
//!   is away its last good lists are served; once it has been away for the route's
//!   `grace`, its tools are gone from the merged view and the client hears one
//!   `tools/list_changed`, and one more when it is back. A member that offers no GET
//!   stream (405) is never asked again, so it causes no traffic at all.
//!
//! A listen stream also gets one `notifications/subscriptions/acknowledged` (the union
//! of what the members accepted, once all have answered or the fan-out timeout passed)
//! and, once every member has ended its stream with its final result, one final result
//! of its own; the gateway's own notifications carry the subscription's id.
//!
//! Dropping the merged answer (the client left) stops every feed and closes the
//! members' streams.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use pingora_http::{RequestHeader, ResponseHeader};
use portcullis_auth::Principal;
use portcullis_mcp::sse::{Event, Splitter};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::cache::ListCache;
use super::ids;
use super::joins::Joins;
use super::names::Names;
use crate::upstream::http::HttpUpstream;
use crate::upstream::{
    Answer, ClientRequest, Failure, Inbound, Outbound, OwnedPin, Sender, Upstream, Wait,
};

/// How long `list_changed` notifications are gathered before the client gets one of
/// each kind.
pub const DEBOUNCE: Duration = Duration::from_secs(1);
/// The first wait before a member's ended stream is opened again; doubled each time,
/// up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// The longest wait between reconnections to a member's stream.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a member's stream must last for its next reconnection to be quick again.
const STABLE: Duration = Duration::from_secs(5);
/// The largest event read from a member's stream.
const MAX_EVENT: usize = 4 * 1024 * 1024;
/// Events in flight from the feeds to the client.
const CHANNEL: usize = 16;

/// What the client sent, owned, so a feed can open its member's stream again.
#[derive(Clone)]
pub struct Opener {
    /// The client's GET (its `Last-Event-ID` removed: each member gets its own).
    pub head: RequestHeader,
    /// The caller, for identity headers.
    pub principal: Option<Principal>,
    /// The client's address.
    pub peer: Option<IpAddr>,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
}

/// What a feed reports.
enum Feed {
    /// The member's stream is open.
    Up(usize),
    /// One of its events.
    Event(usize, Event),
    /// Its stream ended or could not be opened; the feed tries again.
    Down(usize),
    /// The feed gave up (the member has no stream for the session).
    Ended,
}

/// How a member's stream is opened.
#[derive(Clone)]
pub enum Opening {
    /// A GET in the member's session.
    Get(OwnedPin),
    /// A `subscriptions/listen` POST of this body (2026-07-28: no session).
    Listen(Bytes),
}

/// One member's part in a merged stream.
pub struct Part {
    /// Its index in the route.
    pub member: usize,
    /// Its upstream.
    pub upstream: Arc<HttpUpstream>,
    /// How its stream is opened.
    pub opening: Opening,
    /// Its own last event id, from the client's `Last-Event-ID`.
    pub last_id: Option<String>,
    /// Its stream, when the first open succeeded.
    pub open: Option<Inbound>,
}

/// What a merged stream needs of its route.
pub struct Route {
    /// Every member's key, by member.
    pub keys: Vec<String>,
    /// Name mapping (resource URIs).
    pub names: Names,
    /// The route's list cache (emptied for a member that says its lists changed).
    pub cache: Arc<ListCache>,
    /// How long an absent member's lists are still served.
    pub grace: Duration,
    /// The replica token of merged answers.
    pub replica: Arc<str>,
    /// How long members have to acknowledge a listen.
    pub fanout_timeout: Duration,
    /// On a GET stream: the client's (federated) session, every member's upstream and
    /// the members this replica joins to sessions, so a member that joins the session
    /// while the stream is open is added to it.
    pub joining: Option<Joining>,
}

/// What a GET stream needs to add members that join its session later.
pub struct Joining {
    /// The client's session.
    pub session: OwnedPin,
    /// Every member's upstream, by member.
    pub upstreams: Vec<Arc<HttpUpstream>>,
    /// The route's joins.
    pub joins: Arc<Joins>,
}

/// What a merged listen stream keeps besides the events.
struct Listen {
    /// The client's request id, which is also the subscription's id.
    id: Value,
    /// Members whose acknowledgment is awaited.
    waiting: BTreeSet<usize>,
    /// The union of what members accepted so far.
    accepted: serde_json::Map<String, Value>,
    /// When the acknowledgment goes out at the latest; `None` once it has.
    ack_by: Option<Instant>,
    /// Whether the final result went out.
    finished: bool,
}

/// The merged stream as an [`Answer`].
pub struct Merged {
    head: ResponseHeader,
    rx: mpsc::Receiver<Feed>,
    feeds: Vec<tokio::task::AbortHandle>,
    route: Route,
    /// Each member's last own event id.
    positions: Vec<Option<String>>,
    /// Since when a member's stream has been away, while it is.
    away: Vec<Option<Instant>>,
    /// Members away longer than the grace period (their tools are out of the view).
    dropped: Vec<bool>,
    /// `list_changed` methods waiting for the debounce window to end, and since when.
    pending: BTreeSet<String>,
    pending_since: Option<Instant>,
    listen: Option<Listen>,
    out: std::collections::VecDeque<Bytes>,
    /// Feeds still running.
    live: usize,
    /// Which members have a feed.
    fed: Vec<bool>,
    /// For new feeds (members joining a GET stream's session).
    tx: Option<mpsc::Sender<Feed>>,
    opener: Opener,
    /// When joined members are looked for next (GET streams).
    join_check: Option<Instant>,
}

/// How often an open GET stream looks for members that joined its session.
const JOIN_CHECK: Duration = Duration::from_secs(2);

impl Merged {
    /// Starts a feed for every part and merges them; `listen` is the client's request
    /// id for a merged `subscriptions/listen`.
    pub fn start(
        route: Route,
        parts: Vec<Part>,
        opener: Opener,
        listen: Option<Value>,
    ) -> Result<Merged, Failure> {
        let bad = |_| Failure::BadRequest("the gateway could not build its answer".into());
        let mut head = ResponseHeader::build(200, Some(3)).map_err(bad)?;
        head.insert_header("content-type", "text/event-stream")
            .map_err(bad)?;
        head.insert_header("cache-control", "no-cache")
            .map_err(bad)?;
        let (tx, rx) = mpsc::channel(CHANNEL);
        let n = route.keys.len();
        let mut positions = vec![None; n];
        let mut away = vec![None; n];
        let mut feeds = Vec::with_capacity(parts.len());
        let listen = listen.map(|id| Listen {
            id,
            waiting: parts
                .iter()
                .filter(|p| p.open.is_some())
                .map(|p| p.member)
                .collect(),
            accepted: serde_json::Map::new(),
            ack_by: Some(Instant::now() + route.fanout_timeout),
            finished: false,
        });
        let mut fed = vec![false; n];
        let live = parts.len();
        for part in parts {
            positions[part.member] = part.last_id.clone();
            fed[part.member] = true;
            if part.open.is_none() {
                away[part.member] = Some(Instant::now());
            }
            feeds.push(spawn_feed(part, opener.clone(), tx.clone()));
        }
        let joining = route.joining.is_some();
        Ok(Merged {
            head,
            rx,
            feeds,
            route,
            positions,
            away,
            dropped: vec![false; n],
            pending: BTreeSet::new(),
            pending_since: None,
            listen,
            out: Default::default(),
            live,
            fed,
            tx: joining.then_some(tx),
            opener,
            join_check: joining.then(|| Instant::now() + JOIN_CHECK),
        })
    }

    /// Starts feeds for members that joined the session since the stream opened.
    fn add_joined(&mut self) {
        let (Some(j), Some(tx)) = (&self.route.joining, &self.tx) else {
            return;
        };
        for m in 0..self.fed.len() {
            if self.fed[m] {
                continue;
            }
            let Some(pin) = j.joins.get(&j.session.id, &self.route.keys[m]) else {
                continue;
            };
            let Some(upstream) = j.upstreams.get(m) else {
                continue;
            };
            self.fed[m] = true;
            self.live += 1;
            let part = Part {
                member: m,
                upstream: upstream.clone(),
                opening: Opening::Get(pin),
                last_id: None,
                open: None,
            };
            self.feeds
                .push(spawn_feed(part, self.opener.clone(), tx.clone()));
        }
        self.join_check = Some(Instant::now() + JOIN_CHECK);
    }

    /// `method`'s params as the gateway sends them: with the subscription's id on a
    /// listen stream.
    fn own_message(&self, method: &str, params: Option<Value>) -> Bytes {
        let mut msg = serde_json::json!({"jsonrpc": "2.0", "method": method});
        let mut params = params.unwrap_or_else(|| Value::Object(Default::default()));
        if let (Some(l), Some(p)) = (&self.listen, params.as_object_mut()) {
            p.insert(
                "_meta".into(),
                serde_json::json!({ids::SUBSCRIPTION_ID: l.id}),
            );
        }
        if params.as_object().is_some_and(|p| !p.is_empty()) {
            msg["params"] = params;
        }
        Bytes::from(sse(None, &msg.to_string()))
    }

    /// The stream's last words once every feed ended: the acknowledgment if it never
    /// went, what was gathered, and a listen's final result. False when nothing is left.
    fn finish(&mut self) -> bool {
        self.acknowledge();
        if self.pending_since.take().is_some() {
            for method in std::mem::take(&mut self.pending) {
                let message = self.own_message(&method, None);
                self.out.push_back(message);
            }
        }
        if let Some(l) = self.listen.as_mut().filter(|l| !l.finished) {
            l.finished = true;
            let id = l.id.clone();
            let done = serde_json::json!({"jsonrpc": "2.0", "id": id,
                "result": {"_meta": {ids::SUBSCRIPTION_ID: id}}});
            self.out
                .push_back(Bytes::from(sse(None, &done.to_string())));
        }
        !self.out.is_empty()
    }

    /// The merged acknowledgment, once.
    fn acknowledge(&mut self) {
        let Some(l) = self.listen.as_mut() else {
            return;
        };
        if l.ack_by.take().is_none() {
            return;
        }
        let accepted = Value::Object(std::mem::take(&mut l.accepted));
        let ack = self.own_message(
            "notifications/subscriptions/acknowledged",
            Some(serde_json::json!({"notifications": accepted})),
        );
        self.out.push_back(ack);
    }

    /// A member's acknowledgment: what it accepted joins the union (its resources as
    /// clients name them).
    fn acknowledged(&mut self, m: usize, msg: &Value) {
        let names = &self.route.names;
        let Some(l) = self.listen.as_mut() else {
            return;
        };
        if l.ack_by.is_none() {
            return;
        }
        if let Some(filter) = msg
            .pointer("/params/notifications")
            .and_then(Value::as_object)
        {
            for (k, v) in filter {
                if k == "resourceSubscriptions" {
                    let uris = v
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|u| names.outward_uri(m, u.as_str()?).map(Value::String));
                    let slot = l
                        .accepted
                        .entry(k.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(all) = slot {
                        all.extend(uris);
                    }
                } else if v == &Value::Bool(true) {
                    l.accepted.insert(k.clone(), Value::Bool(true));
                }
            }
        }
        // Counted per member: a member that reconnects and acknowledges again is one.
        l.waiting.remove(&m);
        if l.waiting.is_empty() {
            self.acknowledge();
        }
    }

    /// When something is due without a feed saying anything: the debounce window
    /// ending, or an away member's grace period.
    fn next_due(&self) -> Option<Instant> {
        let debounce = self.pending_since.map(|t| t + DEBOUNCE);
        let grace = self
            .away
            .iter()
            .zip(&self.dropped)
            .filter_map(|(a, d)| a.filter(|_| !d).map(|t| t + self.route.grace))
            .min();
        let ack = self.listen.as_ref().and_then(|l| l.ack_by);
        let joined = self.join_check.filter(|_| self.fed.iter().any(|f| !f));
        [debounce, grace, ack, joined].into_iter().flatten().min()
    }

    fn changed(&mut self, method: &str) {
        self.pending.insert(method.to_owned());
        self.pending_since.get_or_insert_with(Instant::now);
    }

    /// Whatever is due now: members past their grace leave the view, and the gathered
    /// notifications go out.
    fn tick(&mut self) {
        let now = Instant::now();
        if self.join_check.is_some_and(|t| now >= t) {
            self.add_joined();
        }
        for m in 0..self.away.len() {
            if let Some(since) = self.away[m] {
                if !self.dropped[m] && now >= since + self.route.grace {
                    self.dropped[m] = true;
                    self.changed("notifications/tools/list_changed");
                }
            }
        }
        if self
            .listen
            .as_ref()
            .and_then(|l| l.ack_by)
            .is_some_and(|t| now >= t)
        {
            self.acknowledge();
        }
        if self.pending_since.is_some_and(|t| now >= t + DEBOUNCE) {
            self.pending_since = None;
            for method in std::mem::take(&mut self.pending) {
                let message = self.own_message(&method, None);
                self.out.push_back(message);
            }
        }
    }

    fn take(&mut self, feed: Feed) {
        match feed {
            Feed::Up(m) => {
                self.away[m] = None;
                if std::mem::take(&mut self.dropped[m]) {
                    self.changed("notifications/tools/list_changed");
                }
            }
            Feed::Down(m) => {
                self.away[m].get_or_insert_with(Instant::now);
            }
            Feed::Ended => self.live = self.live.saturating_sub(1),
            Feed::Event(m, event) => self.event(m, event),
        }
    }

    /// One member event on its way to the client.
    fn event(&mut self, m: usize, event: Event) {
        if let Some(own) = &event.id {
            self.positions[m] = Some(own.clone());
        }
        let id = event.id.as_ref().map(|_| {
            let positions: Vec<(&str, &str)> = self
                .positions
                .iter()
                .enumerate()
                .filter_map(|(i, p)| Some((self.route.keys[i].as_str(), p.as_deref()?)))
                .collect();
            ids::event_id(&positions)
        });
        let Some(data) = &event.data else {
            // A priming event (an id and nothing else) still moves the client's
            // position.
            if let Some(id) = id {
                self.out.push_back(Bytes::from(format!("id: {id}\n\n")));
            }
            return;
        };
        let Ok(mut msg) = serde_json::from_str::<Value>(data) else {
            // Not JSON-RPC: nothing of it can be mapped, so it does not go on.
            tracing::debug!(member = %self.route.keys[m], "a member's stream carried an event that is not JSON");
            return;
        };
        // Task ids (a status notification, a request about a task) name the member.
        ids::outward_task_ids(&self.route.keys[m], &mut msg);
        let method = msg.get("method").and_then(Value::as_str).map(str::to_owned);
        if method.is_none() {
            // A member's final result of its listen: the client gets the gateway's own
            // once every member has ended.
            return;
        }
        match method.as_deref() {
            Some("notifications/subscriptions/acknowledged") => {
                self.acknowledged(m, &msg);
                return;
            }
            Some(
                list @ ("notifications/tools/list_changed"
                | "notifications/prompts/list_changed"
                | "notifications/resources/list_changed"),
            ) => {
                self.route.cache.forget(&self.route.keys[m]);
                self.changed(list);
                if let Some(id) = id {
                    self.out.push_back(Bytes::from(format!("id: {id}\n\n")));
                }
                return;
            }
            Some("notifications/resources/updated") => {
                let uri = msg
                    .pointer("/params/uri")
                    .and_then(Value::as_str)
                    .and_then(|u| self.route.names.outward_uri(m, u));
                match (uri, msg.pointer_mut("/params/uri")) {
                    (Some(u), Some(slot)) => *slot = Value::String(u),
                    _ => return,
                }
            }
            Some("notifications/cancelled") => {
                if let Some(slot) = msg.pointer_mut("/params/requestId") {
                    *slot = ids::outward_request_id(&self.route.keys[m], slot);
                }
            }
            Some(_) if msg.get("id").is_some() => {
                if let Some(slot) = msg.get_mut("id") {
                    *slot = ids::outward_request_id(&self.route.keys[m], slot);
                }
            }
            _ => {}
        }
        self.out
            .push_back(Bytes::from(sse(id.as_deref(), &msg.to_string())));
    }
}

impl Drop for Merged {
    fn drop(&mut self) {
        for f in &self.feeds {
            f.abort();
        }
    }
}

/// Whether an event's data is a JSON-RPC response (it has no method).
fn is_response(data: &str) -> bool {
    serde_json::from_str::<Value>(data).is_ok_and(|v| {
        v.get("method").is_none() && (v.get("result").is_some() || v.get("error").is_some())
    })
}

/// One SSE event.
fn sse(id: Option<&str>, data: &str) -> String {
    match id {
        Some(id) => format!("id: {id}\ndata: {data}\n\n"),
        None => format!("data: {data}\n\n"),
    }
}

#[async_trait]
impl Answer for Merged {
    fn head(&self) -> &ResponseHeader {
        &self.head
    }

    async fn chunk(&mut self) -> Result<Option<Bytes>, Failure> {
        loop {
            if let Some(b) = self.out.pop_front() {
                return Ok(Some(b));
            }
            if self.live == 0 {
                // Every feed ended: no member has a stream any more.
                if !self.finish() {
                    return Ok(None);
                }
                continue;
            }
            let due = self.next_due();
            tokio::select! {
                feed = self.rx.recv() => match feed {
                    Some(f) => self.take(f),
                    None => self.live = 0,
                },
                _ = sleep_until(due) => self.tick(),
            }
        }
    }

    async fn release(self: Box<Self>) {}
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Opens member `upstream`'s stream as `opening` says, resuming after its own event
/// `last_id`.
pub async fn open_member(
    upstream: &HttpUpstream,
    opening: &Opening,
    last_id: Option<&str>,
    opener: &Opener,
) -> Result<Inbound, Failure> {
    let mut head = opener.head.clone();
    if let Some(id) = last_id {
        head.insert_header("last-event-id", id)
            .map_err(|_| Failure::BadRequest("a member's event id is not a header value".into()))?;
    }
    let out = Outbound {
        sender: Sender::Client(ClientRequest {
            head: &head,
            principal: opener.principal.as_ref(),
            peer: opener.peer,
            peer_trusted: opener.peer_trusted,
            renamed: None,
            uncompressed: true,
        }),
        session: None,
        wait: Wait::Stream,
        answer_by: None,
    };
    match opening {
        Opening::Get(pin) => {
            upstream
                .open_stream(Outbound {
                    session: Some(pin.pin()),
                    ..out
                })
                .await
        }
        Opening::Listen(body) => upstream.send(out, body.clone()).await,
    }
}

/// Whether a member's answer is an event stream (a listen a member does not support is
/// answered with a JSON error instead).
pub fn is_stream(i: &Inbound) -> bool {
    let head = i.answer.head();
    head.status.as_u16() == 200
        && head
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|c| c.trim_start().starts_with("text/event-stream"))
}

/// Runs `part`'s feed on a task of its own, saying when it gives up.
fn spawn_feed(part: Part, opener: Opener, tx: mpsc::Sender<Feed>) -> tokio::task::AbortHandle {
    tokio::spawn(async move {
        feed(part, opener, tx.clone()).await;
        let _ = tx.send(Feed::Ended).await;
    })
    .abort_handle()
}

/// Reads one member's stream to the client, opening it again when it ends, until the
/// member says it has no stream or no such session.
async fn feed(part: Part, opener: Opener, tx: mpsc::Sender<Feed>) {
    let m = part.member;
    let mut last_id = part.last_id;
    let mut open = part.open;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let inbound = match open.take() {
            Some(i) => Ok(i),
            None => open_member(&part.upstream, &part.opening, last_id.as_deref(), &opener).await,
        };
        let listen = matches!(part.opening, Opening::Listen(_));
        match inbound {
            Ok(i) if listen && !is_stream(&i) => {
                tracing::debug!(
                    member = part.upstream.name(),
                    "a member no longer takes the subscription"
                );
                return;
            }
            Ok(mut i) => match i.answer.head().status.as_u16() {
                200 => {
                    let opened = Instant::now();
                    if tx.send(Feed::Up(m)).await.is_err() {
                        return;
                    }
                    // Some servers replay from the event named in Last-Event-ID rather
                    // than after it; the client has that one already.
                    let mut delivered = last_id.clone();
                    let mut split = Splitter::new(MAX_EVENT);
                    while let Ok(Some(chunk)) = i.answer.chunk().await {
                        let Ok(events) = split.push(&chunk) else {
                            break;
                        };
                        for e in events {
                            if let Some(id) = &e.id {
                                let again = delivered.take().is_some_and(|d| d == *id);
                                last_id = Some(id.clone());
                                if again {
                                    continue;
                                }
                            }
                            // A listen's final result: the member ended it on purpose.
                            let last = listen && e.data.as_deref().is_some_and(is_response);
                            if tx.send(Feed::Event(m, e)).await.is_err() || last {
                                return;
                            }
                        }
                    }
                    // Only a stream that lasted earns a quick reconnection: one that
                    // ends at once (an empty body, an event too large to take) backs off.
                    if opened.elapsed() >= STABLE {
                        backoff = FIRST_BACKOFF;
                    }
                }
                // No stream offered, or the member no longer has this session: asking
                // again would only repeat the answer.
                405 | 404 => {
                    tracing::debug!(
                        member = part.upstream.name(),
                        status = i.answer.head().status.as_u16(),
                        "a member offers no GET stream for this session"
                    );
                    return;
                }
                _ => {}
            },
            // The member's endpoint is gone with its session: nothing to reconnect to.
            Err(Failure::UnknownSession) => return,
            Err(e) => {
                tracing::debug!(member = part.upstream.name(), error = ?e, "a member's GET stream failed");
            }
        }
        if tx.send(Feed::Down(m)).await.is_err() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
