//! A federated route's upstream: several members (each an [`HttpUpstream`]) behind
//! one route, presented to clients as one server. `initialize` and `server/discover`
//! fan out in parallel and merge; the four `*/list` methods fan out (or come from the
//! cache), each member's names prefixed ([`names`]), pages walked through the gateway's
//! own sealed cursors that hold every member's position; notifications go to every
//! member, and the client's answer to a member's request to that member only; the GET
//! stream merges every member's ([`stream`]); a session ends at every member. A member that fails or is slower than the
//! fan-out timeout is left out of that answer (its last good list stays for the grace
//! period). Messages that name one target (`tools/call`, `prompts/get`,
//! `resources/read`...) do not come here: the federate stage routes them to their
//! member, so its gates, breakers and catalog apply as on a single-upstream route.

pub mod cache;
pub mod ids;
pub mod joins;
pub mod members;
pub mod merge;
pub mod names;
pub mod stream;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::future::join_all;
use portcullis_config::Federation;
use portcullis_mcp::{Envelope, Kind};
use serde_json::{json, Map, Value};

use self::cache::{ListCache, Page, PageKey};
use self::joins::{Hello, Joins};
use self::members::MemberSession;
use self::merge::{Listing, Naming};
use self::names::Names;
use super::http::HttpUpstream;
use super::own::{self, Answered};
use super::{
    made, ClientRequest, Failure, Inbound, Outbound, OwnedPin, Pin, Sender, Upstream, Wait,
};
use crate::metrics::Metrics;
use crate::sessions::SessionSeal;

/// The replica token a federated session is sealed under (each member's own endpoint
/// is inside the session).
pub const FEDERATED_REPLICA: &str = "federate";

/// Member pages one gateway cursor may hold positions for (one per member).
const MAX_POSITIONS: usize = 256;

/// A federated route as one upstream.
pub struct FederatedUpstream {
    /// The route's name (logs, metrics, the session binding).
    name: String,
    /// The route's path (cursors are bound to it).
    route: String,
    spec: Arc<Federation>,
    names: Names,
    /// Same order as `spec.members`.
    members: Vec<Arc<HttpUpstream>>,
    seal: SessionSeal,
    cache: Arc<ListCache>,
    /// Members this replica joined to sessions after their initialize.
    joins: Arc<Joins>,
    replica: Arc<str>,
    metrics: Arc<Metrics>,
}

/// A JSON-RPC outcome the gateway answers with.
enum Reply {
    Result(Value),
    Error(i64, String),
}

impl FederatedUpstream {
    /// The federated upstream of `route` (whose `federation` is `spec`), over its
    /// members' upstreams, keeping the list cache of `previous` (the same route in the
    /// config version before) so a reload loses no last good list.
    pub fn new(
        route: &portcullis_config::Route,
        spec: Arc<Federation>,
        members: Vec<Arc<HttpUpstream>>,
        seal: SessionSeal,
        previous: Option<&FederatedUpstream>,
        metrics: Arc<Metrics>,
    ) -> FederatedUpstream {
        let names = Names::new(&spec);
        let cache: Arc<ListCache> = previous.map_or_else(Default::default, |p| p.cache.clone());
        if let Some(p) = previous {
            // A member no longer on the route: its pages must not come back with it.
            for m in 0..p.members.len() {
                let key = p.names.key(m);
                if names.member(key).is_none() {
                    cache.forget(key);
                }
            }
        }
        FederatedUpstream {
            name: route.name.clone(),
            route: route.path.clone(),
            names,
            spec,
            members,
            seal,
            cache,
            joins: previous.map_or_else(Default::default, |p| p.joins.clone()),
            replica: Arc::from(FEDERATED_REPLICA),
            metrics,
        }
    }

    /// How the members' names map.
    pub fn names(&self) -> &Names {
        &self.names
    }

    /// The route's path.
    pub fn route(&self) -> &str {
        &self.route
    }

    /// Member `m`'s index into the config's upstreams.
    pub fn upstream_index(&self, m: usize) -> usize {
        self.spec.members[m].upstream
    }

    /// Member `m`'s own session inside the federated session `pin` (or joined to it
    /// later by this replica), if it has one.
    pub fn member_session(&self, pin: Option<Pin<'_>>, m: usize) -> Option<OwnedPin> {
        self.sessions(pin).into_iter().nth(m).flatten()
    }

    /// Joins member `m` to the client's session (`out.session`, a federated one) when it
    /// is not in it: the member is initialized with what the client said at its own
    /// initialize ([`joins`]). `None` when it cannot be (no session, tried too recently,
    /// the member does not answer).
    pub async fn join(&self, out: &Outbound<'_>, m: usize) -> Option<OwnedPin> {
        let pin = out.session?;
        if let Some(have) = self.member_session(Some(pin), m) {
            return Some(have);
        }
        let key = self.names.key(m);
        let hello = members::decode(pin.id).and_then(|all| Hello::of(&all))?;
        if !self.joins.begin(pin.id, key) {
            return None;
        }
        let body = Bytes::from(hello.initialize().to_string());
        let joined = self
            .ask(m, out, None, body, "initialize")
            .await
            .filter(|a| {
                a.message
                    .as_ref()
                    .is_some_and(|v| v.get("result").is_some())
            })
            .and_then(|a| a.session);
        self.joins.put(pin.id, key, joined.clone());
        let member = joined?;
        let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        self.ask(
            m,
            out,
            Some(&member),
            Bytes::from(initialized.to_string()),
            "notifications/initialized",
        )
        .await;
        tracing::info!(route = %self.name, member = key, "a member joined a session after its initialize");
        Some(member)
    }

    /// Joins every member missing from the client's session that may be tried now.
    async fn join_missing(&self, out: &Outbound<'_>) {
        let Some(pin) = out.session else { return };
        let missing: Vec<usize> = self
            .sessions(Some(pin))
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_none())
            .map(|(m, _)| m)
            .filter(|m| self.joins.may_try(pin.id, self.names.key(*m)))
            .collect();
        join_all(missing.into_iter().map(|m| self.join(out, m))).await;
    }

    /// Forgets member `m`'s cached lists (it said they changed).
    pub fn forget(&self, m: usize) {
        self.cache.forget(self.names.key(m));
    }

    /// Every member's session inside `pin` (or joined to it by this replica), by member.
    fn sessions(&self, pin: Option<Pin<'_>>) -> Vec<Option<OwnedPin>> {
        let all = pin.and_then(|p| members::decode(p.id)).unwrap_or_default();
        (0..self.members.len())
            .map(|m| {
                let key = self.names.key(m);
                all.iter()
                    .find(|s| s.member == key)
                    .map(MemberSession::pin)
                    .or_else(|| self.joins.get(pin?.id, key))
            })
            .collect()
    }

    /// `out` as sent to one member: in its session, answered within the fan-out
    /// timeout, uncompressed (the gateway reads it).
    fn member_out<'a>(&self, out: &Outbound<'a>, pin: Option<Pin<'a>>) -> Outbound<'a> {
        let by = tokio::time::Instant::now() + self.spec.fanout_timeout;
        Outbound {
            sender: match out.sender {
                Sender::Client(c) => Sender::Client(ClientRequest {
                    renamed: None,
                    uncompressed: true,
                    ..c
                }),
                gateway => gateway,
            },
            session: pin,
            wait: Wait::Answer,
            answer_by: Some(out.answer_by.map_or(by, |a| a.min(by))),
        }
    }

    /// Sends `body` to member `m` and reads its answer within the fan-out timeout;
    /// `None` (counted, logged) when it failed, timed out or answered an error.
    async fn ask(
        &self,
        m: usize,
        out: &Outbound<'_>,
        pin: Option<&OwnedPin>,
        body: Bytes,
        what: &str,
    ) -> Option<Answered> {
        let member_out = self.member_out(out, pin.map(OwnedPin::pin));
        let asked = tokio::time::timeout(
            self.spec.fanout_timeout,
            own::exchange(&*self.members[m], member_out, body, what),
        )
        .await;
        let failed = |kind: &str, why: &str| {
            self.metrics
                .member_failures
                .with_label_values(&[self.name.as_str(), self.names.key(m), kind])
                .inc();
            tracing::debug!(route = %self.name, member = self.names.key(m), what, why,
                "a member was left out of a fanned-out answer");
        };
        match asked {
            Err(_) => {
                failed("timeout", "no answer within federation.fanout_timeout");
                None
            }
            Ok(Err(e)) => {
                failed("error", &e);
                None
            }
            Ok(Ok(a)) if a.message.as_ref().is_some_and(|v| v.get("error").is_some()) => {
                failed("refused", "answered a JSON-RPC error");
                None
            }
            Ok(Ok(a)) => Some(a),
        }
    }

    /// `initialize`: every member's handshake, merged; their sessions go into one.
    async fn initialize(
        &self,
        out: &Outbound<'_>,
        id: Option<&str>,
        body: &Bytes,
    ) -> Result<Inbound, Failure> {
        let answers = join_all(
            (0..self.members.len()).map(|m| self.ask(m, out, None, body.clone(), "initialize")),
        )
        .await;
        let mut results = Vec::new();
        let mut sessions = Vec::new();
        for (m, answered) in answers.into_iter().enumerate() {
            let Some(answered) = answered else { continue };
            let Some(result) = answered
                .message
                .and_then(|mut v| v.get_mut("result").map(Value::take))
            else {
                continue;
            };
            if let Some(pin) = answered.session {
                sessions.push(MemberSession {
                    member: self.names.key(m).to_owned(),
                    replica: pin.replica,
                    id: pin.id,
                });
            }
            results.push((self.names.key(m), result));
        }
        if results.is_empty() {
            return Err(Failure::Broken {
                kind: "federation",
                detail: "no member of the federated route answered",
                timeout: false,
            });
        }
        let borrowed: Vec<(&str, &Value)> = results.iter().map(|(k, v)| (*k, v)).collect();
        let merged = merge::initialize(&self.name, &borrowed);
        if !sessions.is_empty() {
            // For members that join the session later.
            let asked: Value = serde_json::from_slice(body).unwrap_or_default();
            let hello = Hello {
                version: merged["protocolVersion"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                capabilities: asked
                    .pointer("/params/capabilities")
                    .cloned()
                    .unwrap_or_else(|| json!({})),
                client_info: asked
                    .pointer("/params/clientInfo")
                    .cloned()
                    .unwrap_or_else(|| json!({})),
            };
            sessions.push(hello.entry());
            if members::encode(&sessions).len() > crate::sessions::MAX_UPSTREAM_ID_LEN {
                // The members' own ids come first: without the hello, members that
                // were not in the session at first cannot join it later.
                sessions.pop();
            }
        }
        let sid = members::encode(&sessions);
        let mut headers: Vec<(&'static str, &[u8])> = vec![("content-type", b"application/json")];
        if !sid.is_empty() {
            headers.push((portcullis_mcp::headers::MCP_SESSION_ID, &sid));
        }
        made::answer(
            200,
            &headers,
            rpc_body(id, Reply::Result(merged)),
            &self.replica,
        )
    }

    /// `server/discover` (2026-07-28): every member's, merged.
    async fn discover(&self, out: &Outbound<'_>, body: &Bytes) -> Reply {
        let answers = join_all(
            (0..self.members.len())
                .map(|m| self.ask(m, out, None, body.clone(), "server/discover")),
        )
        .await;
        let results: Vec<(&str, Value)> = answers
            .into_iter()
            .enumerate()
            .filter_map(|(m, a)| {
                let result = a?.message?.get_mut("result").map(Value::take)?;
                Some((self.names.key(m), result))
            })
            .collect();
        if results.is_empty() {
            return Reply::Error(-32603, "no member of the federated route answered".into());
        }
        let borrowed: Vec<(&str, &Value)> = results.iter().map(|(k, v)| (*k, v)).collect();
        Reply::Result(merge::discover(&self.name, &borrowed))
    }

    /// One page of a merged list: the next page of every member the cursor says has
    /// more (all of them without a cursor), names mapped, and a cursor for the rest.
    async fn list(&self, out: &Outbound<'_>, env: &Envelope<'_>, listing: Listing) -> Reply {
        let mut params: Map<String, Value> = env
            .params
            .and_then(|p| serde_json::from_str(p.get()).ok())
            .unwrap_or_default();
        let positions = match params.remove("cursor") {
            None | Some(Value::Null) => (0..self.members.len()).map(|m| (m, None)).collect(),
            Some(Value::String(c)) => match self.open_cursor(listing.method, &c) {
                Some(p) => p,
                None => return Reply::Error(-32602, "Invalid cursor".into()),
            },
            Some(_) => return Reply::Error(-32602, "Invalid cursor".into()),
        };
        // A member that was not in the session at its initialize may be now.
        self.join_missing(out).await;
        let sessions = self.sessions(out.session);
        let id = env.id.map(|r| r.get()).unwrap_or("0");
        let pages = join_all(positions.iter().map(|(m, cursor)| {
            self.page(
                out,
                sessions[*m].as_ref(),
                *m,
                listing,
                cursor.clone(),
                &params,
                id,
            )
        }))
        .await;
        let mut items = Vec::new();
        let mut next = Vec::new();
        let mut rest: Option<Map<String, Value>> = None;
        for ((m, _), page) in positions.iter().zip(pages) {
            let Some(page) = page else { continue };
            if rest.is_none() {
                rest = Some(page.rest.clone());
            }
            for item in &page.items {
                if let Some(mapped) = self.outward_item(*m, listing, item) {
                    items.push(mapped);
                }
            }
            if let Some(c) = &page.next {
                next.push((*m, c.clone()));
            }
        }
        let mut result = rest.unwrap_or_default();
        result.insert(listing.items.into(), Value::Array(items));
        if !next.is_empty() {
            if let Some(c) = self.seal_cursor(listing.method, &next) {
                result.insert("nextCursor".into(), Value::String(c));
            }
        }
        Reply::Result(Value::Object(result))
    }

    /// Member `m`'s item as clients see it: named with its prefix (or its URI wrapped);
    /// `None` when it is not shown.
    fn outward_item(&self, m: usize, listing: Listing, item: &Value) -> Option<Value> {
        let mut item = item.as_object()?.clone();
        let own = item.get(listing.key)?.as_str()?;
        let mapped = match listing.naming {
            Naming::Uri => self.names.outward_uri(m, own)?,
            Naming::Name => self.names.outward(m, own)?,
            Naming::Task => {
                let id = ids::outward_request_id(self.names.key(m), &Value::from(own));
                id.as_str()?.to_owned()
            }
        };
        item.insert(listing.key.into(), Value::String(mapped));
        Some(Value::Object(item))
    }

    /// One page of member `m`'s list: fresh from the cache, else asked for (and kept),
    /// else its last good copy within the grace period, else nothing.
    #[allow(clippy::too_many_arguments)]
    async fn page(
        &self,
        out: &Outbound<'_>,
        pin: Option<&OwnedPin>,
        m: usize,
        listing: Listing,
        cursor: Option<String>,
        params: &Map<String, Value>,
        id: &str,
    ) -> Option<Arc<Page>> {
        let key = PageKey {
            member: self.names.key(m).to_owned(),
            method: listing.method,
            cursor,
            caller: self.caller(m, out),
        };
        let count = |source: &str| {
            self.metrics
                .list_pages
                .with_label_values(&[self.name.as_str(), source])
                .inc();
        };
        // Tasks come and go as they run: their list is never served from the cache.
        let cacheable = listing.naming != Naming::Task;
        if let Some(page) = self
            .cache
            .fresh(&key, self.spec.list_cache_ttl)
            .filter(|_| cacheable)
        {
            count("cache");
            return Some(page);
        }
        let mut params = params.clone();
        if let Some(c) = &key.cursor {
            params.insert("cursor".into(), Value::String(c.clone()));
        }
        let id: Value = serde_json::from_str(id).unwrap_or(Value::from(0));
        let body = json!({"jsonrpc": "2.0", "id": id, "method": listing.method, "params": params});
        let fetched = self
            .ask(m, out, pin, Bytes::from(body.to_string()), listing.method)
            .await
            .and_then(|a| a.message)
            .and_then(|mut v| v.get_mut("result").map(Value::take))
            .and_then(|r| page_of(r, listing));
        match fetched {
            Some(page) => {
                let page = Arc::new(page);
                if cacheable {
                    self.cache.put(key, page.clone());
                }
                count("upstream");
                Some(page)
            }
            None if !cacheable => None,
            None => {
                let kept = self.cache.last_good(&key, self.spec.grace);
                if kept.is_some() {
                    count("stale");
                }
                kept
            }
        }
    }

    /// Whose list this is, for a member whose answers depend on the caller (it is sent
    /// the caller's identity).
    fn caller(&self, m: usize, out: &Outbound<'_>) -> Option<(String, String)> {
        let personal = self.members[m]
            .config()
            .identity_headers
            .names()
            .next()
            .is_some();
        match out.sender {
            Sender::Client(c) if personal => {
                let (iss, sub) = crate::sessions::owner_of(c.principal);
                Some((iss.to_owned(), sub.to_owned()))
            }
            _ => None,
        }
    }

    /// A cursor holding each member's next position.
    fn seal_cursor(&self, method: &str, next: &[(usize, String)]) -> Option<String> {
        let positions: Vec<Value> = next
            .iter()
            .map(|(m, c)| json!([self.names.key(*m), c]))
            .collect();
        let plain = json!({"m": method, "p": positions}).to_string();
        self.seal.seal_cursor(&self.route, plain.as_bytes())
    }

    /// The member positions in a cursor the gateway minted for `method` on this route;
    /// `None` for anything else (altered, another route's or list's, not ours).
    fn open_cursor(&self, method: &str, cursor: &str) -> Option<Vec<(usize, Option<String>)>> {
        let plain = self.seal.open_cursor(&self.route, cursor)?;
        let v: Value = serde_json::from_slice(&plain).ok()?;
        if v.get("m")?.as_str()? != method {
            return None;
        }
        let positions = v.get("p")?.as_array()?;
        if positions.len() > MAX_POSITIONS {
            return None;
        }
        // A member removed since the cursor was minted is passed over.
        Some(
            positions
                .iter()
                .filter_map(|p| {
                    let m = self.names.member(p.get(0)?.as_str()?)?;
                    Some((m, Some(p.get(1)?.as_str()?.to_owned())))
                })
                .collect(),
        )
    }

    /// Sends a message to every member (in its session, when the client has one) and
    /// waits for each to take it, within the fan-out timeout.
    async fn broadcast(&self, out: &Outbound<'_>, body: &Bytes, what: &str) {
        let sessions = self.sessions(out.session);
        join_all(sessions.iter().enumerate().filter_map(|(m, pin)| {
            // In a session, only members that joined it hear of it.
            if out.session.is_some() && pin.is_none() {
                return None;
            }
            Some(self.ask(m, out, pin.as_ref(), body.clone(), what))
        }))
        .await;
    }
}

impl FederatedUpstream {
    /// A merged stream over `parts`.
    fn merged(
        &self,
        parts: Vec<stream::Part>,
        opener: stream::Opener,
        listen: Option<Value>,
        joining: Option<stream::Joining>,
    ) -> Result<Inbound, Failure> {
        let route = stream::Route {
            keys: (0..self.members.len())
                .map(|m| self.names.key(m).to_owned())
                .collect(),
            names: self.names.clone(),
            cache: self.cache.clone(),
            grace: self.spec.grace,
            replica: self.replica.clone(),
            fanout_timeout: self.spec.fanout_timeout,
            joining,
        };
        let merged = stream::Merged::start(route, parts, opener, listen)?;
        Ok(Inbound {
            answer: Box::new(merged),
            served: super::Served {
                endpoint: None,
                replica: self.replica.clone(),
                moved: None,
            },
        })
    }

    /// `subscriptions/listen` (2026-07-28): sent to every member, each asked for the
    /// change notifications requested and for its own resources among those named,
    /// and their streams merged ([`stream`]). Members that do not take it are left
    /// out; when none does, the answer is theirs: method not found.
    async fn listen(
        &self,
        out: &Outbound<'_>,
        env: &Envelope<'_>,
        body: &Bytes,
    ) -> Result<Inbound, Failure> {
        let Sender::Client(client) = out.sender else {
            return Err(Failure::BadRequest("a listen comes from a client".into()));
        };
        let msg: Value = serde_json::from_slice(body)
            .map_err(|e| Failure::BadRequest(format!("the message is not JSON: {e}")))?;
        let id: Value = env
            .id
            .and_then(|r| serde_json::from_str(r.get()).ok())
            .unwrap_or(Value::Null);
        let opener = stream::Opener {
            head: client.head.clone(),
            principal: client.principal.cloned(),
            peer: client.peer,
            peer_trusted: client.peer_trusted,
        };
        let opener_ref = &opener;
        let first = join_all((0..self.members.len()).filter_map(|m| {
            let body = self.listen_body(&msg, m)?;
            let upstream = self.members[m].clone();
            let opening = stream::Opening::Listen(body);
            Some(async move {
                let opened = tokio::time::timeout(
                    self.spec.fanout_timeout,
                    stream::open_member(&upstream, &opening, None, opener_ref),
                )
                .await;
                (m, upstream, opening, opened)
            })
        }))
        .await;
        let parts: Vec<stream::Part> = first
            .into_iter()
            .filter_map(|(member, upstream, opening, opened)| match opened {
                Ok(Ok(i)) if stream::is_stream(&i) => Some(stream::Part {
                    member,
                    upstream,
                    opening,
                    last_id: None,
                    open: Some(i),
                }),
                _ => None,
            })
            .collect();
        if parts.is_empty() {
            return made::answer(
                200,
                &[("content-type", b"application/json")],
                rpc_body(
                    env.id.map(|r| r.get()),
                    Reply::Error(-32601, "Method not found: subscriptions/listen".into()),
                ),
                &self.replica,
            );
        }
        self.merged(parts, opener, Some(id), None)
    }

    /// The listen request as member `m` gets it: its own resources among those named
    /// (by its own URIs); `None` when it is asked for nothing at all.
    fn listen_body(&self, msg: &Value, m: usize) -> Option<Bytes> {
        let mut msg = msg.clone();
        let filter = msg.pointer_mut("/params/notifications")?.as_object_mut()?;
        if let Some(Value::Array(uris)) = filter.get_mut("resourceSubscriptions") {
            let own: Vec<Value> = uris
                .iter()
                .filter_map(|u| {
                    let (owner, own) = self.names.inward_uri(u.as_str()?)?;
                    (owner == m).then(|| Value::String(own.to_owned()))
                })
                .collect();
            if own.is_empty() {
                filter.remove("resourceSubscriptions");
            } else {
                *uris = own;
            }
        }
        let asked = filter
            .values()
            .any(|v| v == &Value::Bool(true) || v.is_array());
        asked.then(|| Bytes::from(msg.to_string()))
    }

    /// The member a client's answer is for, and the answer with the member's own id;
    /// `None` when its id is not one the gateway mapped.
    fn answering(&self, env: &Envelope<'_>, body: &Bytes) -> Option<(usize, Bytes)> {
        let id: Value = serde_json::from_str(env.id?.get()).ok()?;
        let (key, own) = ids::inward_request_id(&id)?;
        let m = self.names.member(key)?;
        let mut msg: Value = serde_json::from_slice(body).ok()?;
        *msg.get_mut("id")? = own;
        Some((m, Bytes::from(msg.to_string())))
    }
}

/// A member's list result as a page; `None` when it is not one.
fn page_of(mut result: Value, listing: Listing) -> Option<Page> {
    let obj = result.as_object_mut()?;
    let items = match obj.remove(listing.items) {
        Some(Value::Array(a)) => a,
        None => Vec::new(),
        Some(_) => return None,
    };
    let next = match obj.remove("nextCursor") {
        Some(Value::String(c)) if !c.is_empty() => Some(c),
        _ => None,
    };
    Some(Page {
        items,
        next,
        rest: std::mem::take(obj),
    })
}

/// A JSON-RPC response body with the request's id text.
fn rpc_body(id: Option<&str>, reply: Reply) -> Bytes {
    let id = id.unwrap_or("null");
    let text = match reply {
        Reply::Result(r) => format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{r}}}"#),
        Reply::Error(code, message) => format!(
            r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":{code},"message":{}}}}}"#,
            Value::String(message)
        ),
    };
    Bytes::from(text)
}

#[async_trait]
impl Upstream for FederatedUpstream {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, out: Outbound<'_>, body: Bytes) -> Result<Inbound, Failure> {
        let env = Envelope::parse(&body).map_err(|e| Failure::BadRequest(e.to_string()))?;
        let id = env.id.map(|r| r.get());
        let method = env.method.as_deref().unwrap_or("");
        if env.kind == Kind::Response {
            // The client's answer to a member's request goes to that member alone,
            // with the member's own id.
            if let Some((m, own)) = self.answering(&env, &body) {
                let sessions = self.sessions(out.session);
                self.ask(m, &out, sessions[m].as_ref(), own, "response")
                    .await;
                return made::answer(202, &[], Bytes::new(), &self.replica);
            }
        }
        if env.kind != Kind::Request {
            // Notifications (and answers the gateway cannot place) go to every member.
            self.broadcast(&out, &body, method).await;
            return made::answer(202, &[], Bytes::new(), &self.replica);
        }
        let reply = match method {
            "initialize" => return self.initialize(&out, id, &body).await,
            "server/discover" => self.discover(&out, &body).await,
            "ping" => Reply::Result(json!({})),
            "subscriptions/listen" => return self.listen(&out, &env, &body).await,
            "logging/setLevel" => {
                self.broadcast(&out, &body, method).await;
                Reply::Result(json!({}))
            }
            m => match merge::listing(m) {
                Some(listing) => self.list(&out, &env, listing).await,
                None => Reply::Error(-32601, format!("Method not found: {m}")),
            },
        };
        made::answer(
            200,
            &[("content-type", b"application/json")],
            rpc_body(id, reply),
            &self.replica,
        )
    }

    /// The session's GET stream: every member's that offers one, merged
    /// ([`stream`]); 405 (which the spec gives a server without one) when none does.
    async fn open_stream(&self, out: Outbound<'_>) -> Result<Inbound, Failure> {
        let no_stream = || {
            made::answer(
                405,
                &[("allow", b"POST, DELETE")],
                Bytes::new(),
                &self.replica,
            )
        };
        let Sender::Client(client) = out.sender else {
            return no_stream();
        };
        let resume: Vec<(String, String)> = client
            .head
            .headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .and_then(ids::positions)
            .unwrap_or_default();
        let mut head = client.head.clone();
        head.remove_header("last-event-id");
        let opener = stream::Opener {
            head,
            principal: client.principal.cloned(),
            peer: client.peer,
            peer_trusted: client.peer_trusted,
        };
        let sessions = self.sessions(out.session);
        let opener_ref = &opener;
        let resume_ref = &resume;
        let first = join_all(sessions.into_iter().enumerate().filter_map(|(m, pin)| {
            let pin = pin?;
            let key = self.names.key(m);
            let last_id = resume_ref
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, id)| id.clone());
            let upstream = self.members[m].clone();
            let opening = stream::Opening::Get(pin);
            Some(async move {
                let opened = tokio::time::timeout(
                    self.spec.fanout_timeout,
                    stream::open_member(&upstream, &opening, last_id.as_deref(), opener_ref),
                )
                .await;
                (m, upstream, opening, last_id, opened)
            })
        }))
        .await;
        let mut parts = Vec::new();
        for (member, upstream, opening, last_id, opened) in first {
            let open = match opened {
                Ok(Ok(i)) => match i.answer.head().status.as_u16() {
                    200 => Some(i),
                    // This member offers no stream, or no longer has the session: it
                    // is left out.
                    404 | 405 => continue,
                    // Busy or failing now (409, 429, 5xx): its feed keeps trying.
                    _ => None,
                },
                // The member's endpoint is gone with its session.
                Ok(Err(Failure::UnknownSession)) => continue,
                // Down or slow now: its feed keeps trying.
                _ => None,
            };
            parts.push(stream::Part {
                member,
                upstream,
                opening,
                last_id,
                open,
            });
        }
        if parts.is_empty() {
            return no_stream();
        }
        let joining = out.session.map(|pin| stream::Joining {
            session: OwnedPin {
                replica: pin.replica.into(),
                id: pin.id.to_vec(),
            },
            upstreams: self.members.clone(),
            joins: self.joins.clone(),
        });
        self.merged(parts, opener, None, joining)
    }

    /// Ends every member's session.
    async fn end_session(&self, out: Outbound<'_>) -> Result<Inbound, Failure> {
        let sessions = self.sessions(out.session);
        join_all(sessions.iter().enumerate().filter_map(|(m, pin)| {
            let pin = pin.as_ref()?;
            let member_out = self.member_out(&out, Some(pin.pin()));
            let member = &self.members[m];
            Some(async move {
                let ended = tokio::time::timeout(self.spec.fanout_timeout, async {
                    if let Ok(mut inbound) = member.end_session(member_out).await {
                        while let Ok(Some(_)) = inbound.answer.chunk().await {}
                        inbound.answer.release().await;
                    }
                })
                .await;
                if ended.is_err() {
                    tracing::debug!(
                        member = member.name(),
                        "ending a member's session timed out"
                    );
                }
            })
        }))
        .await;
        made::answer(204, &[], Bytes::new(), &self.replica)
    }
}
