//! Members that join a federated session after its `initialize`: a member that was down
//! or slow then is not in the client's session, and without this it would stay out of
//! it until the client initializes again. The client's session carries what it said at
//! `initialize` (its protocol revision, capabilities and `clientInfo`: the [`Hello`]);
//! when a list or a call needs such a member, the gateway initializes it with the same
//! hello, in the caller's name, and remembers the member's session here. Each replica
//! joins on its own (the client's sealed id cannot grow under it), at most once per
//! member per session (concurrent requests start one join), and tries a member that
//! failed again only after [`RETRY`].

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use super::members::MemberSession;
use crate::upstream::OwnedPin;

/// The member name of the entry holding the client's hello (no member is named so).
pub const HELLO: &str = "";
/// How long after a failed join the member is tried again for the same session.
pub const RETRY: Duration = Duration::from_secs(2);
/// How long a replica remembers a joined member's session.
const REMEMBER: Duration = Duration::from_secs(24 * 3600);
/// The most joins remembered (the oldest are forgotten first).
const MAX_JOINS: usize = 65_536;
/// The largest hello kept in a session id (larger capabilities are left out).
const MAX_HELLO: usize = 1024;

/// What the client said at `initialize`, kept in its session for members that join later.
#[derive(Debug, Clone, PartialEq)]
pub struct Hello {
    /// The revision the session speaks.
    pub version: String,
    /// The client's capabilities.
    pub capabilities: Value,
    /// The client's `clientInfo`.
    pub client_info: Value,
}

impl Hello {
    /// The hello as a session entry (its id base64url JSON, visible ASCII as session ids
    /// must be); capabilities are dropped when the whole would be too large.
    pub fn entry(&self) -> MemberSession {
        let mut text =
            json!({"v": self.version, "c": self.capabilities, "i": self.client_info}).to_string();
        if text.len() > MAX_HELLO {
            text = json!({"v": self.version, "c": {}, "i": self.client_info}).to_string();
        }
        if text.len() > MAX_HELLO {
            text = json!({"v": self.version, "c": {}, "i": {"name": "portcullis", "version": "0"}})
                .to_string();
        }
        MemberSession {
            member: HELLO.to_owned(),
            replica: "-".into(),
            id: URL_SAFE_NO_PAD.encode(text).into_bytes(),
        }
    }

    /// The hello in a session's entries, if it has one.
    pub fn of(entries: &[MemberSession]) -> Option<Hello> {
        let e = entries.iter().find(|e| e.member == HELLO)?;
        let json = URL_SAFE_NO_PAD.decode(&e.id).ok()?;
        let v: Value = serde_json::from_slice(&json).ok()?;
        Some(Hello {
            version: v.get("v")?.as_str()?.to_owned(),
            capabilities: v.get("c").cloned().unwrap_or_else(|| json!({})),
            client_info: v.get("i").cloned().unwrap_or_else(|| json!({})),
        })
    }

    /// The `initialize` a joining member gets.
    pub fn initialize(&self) -> Value {
        json!({"jsonrpc": "2.0", "id": "portcullis-join", "method": "initialize",
            "params": {"protocolVersion": self.version, "capabilities": self.capabilities,
                "clientInfo": self.client_info}})
    }
}

/// How long a join may be under way before another may start (its request was
/// dropped, say).
const JOINING: Duration = Duration::from_secs(30);

/// One member's state in one session.
#[derive(Clone)]
enum Joined {
    In(OwnedPin, Instant),
    Failed(Instant),
    /// A join is under way (concurrent lists do not start another).
    Joining(Instant),
}

impl Joined {
    fn at(&self) -> Instant {
        match self {
            Joined::In(_, at) | Joined::Failed(at) | Joined::Joining(at) => *at,
        }
    }

    /// Whether a join may start now.
    fn may_try(&self) -> bool {
        match self {
            Joined::Failed(at) => at.elapsed() >= RETRY,
            Joined::Joining(at) => at.elapsed() >= JOINING,
            Joined::In(_, at) => at.elapsed() >= REMEMBER,
        }
    }
}

/// The members this replica joined to sessions: by the session (its member sessions as
/// sealed) and the member's key.
#[derive(Default)]
pub struct Joins {
    joined: Mutex<HashMap<(Vec<u8>, String), Joined>>,
}

impl Joins {
    /// The member's session in `session`, if this replica joined it.
    pub fn get(&self, session: &[u8], member: &str) -> Option<OwnedPin> {
        let joined = self.joined.lock().ok()?;
        match joined.get(&(session.to_vec(), member.to_owned()))? {
            Joined::In(pin, at) if at.elapsed() < REMEMBER => Some(pin.clone()),
            _ => None,
        }
    }

    /// Whether joining the member to `session` may be tried now.
    pub fn may_try(&self, session: &[u8], member: &str) -> bool {
        let Ok(joined) = self.joined.lock() else {
            return false;
        };
        joined
            .get(&(session.to_vec(), member.to_owned()))
            .is_none_or(Joined::may_try)
    }

    /// Starts a join of the member to `session` when one may be tried now, so that
    /// concurrent requests start one join, not one each; false when it may not.
    pub fn begin(&self, session: &[u8], member: &str) -> bool {
        let Ok(mut joined) = self.joined.lock() else {
            return false;
        };
        let key = (session.to_vec(), member.to_owned());
        if !joined.get(&key).is_none_or(Joined::may_try) {
            return false;
        }
        Self::make_room(&mut joined);
        joined.insert(key, Joined::Joining(Instant::now()));
        true
    }

    /// Forgets stale entries, then the oldest, when the map is full.
    fn make_room(joined: &mut HashMap<(Vec<u8>, String), Joined>) {
        if joined.len() < MAX_JOINS {
            return;
        }
        joined.retain(|_, j| !j.may_try() || matches!(j, Joined::In(..)));
        if joined.len() >= MAX_JOINS {
            let oldest = joined
                .iter()
                .min_by_key(|(_, j)| j.at())
                .map(|(k, _)| k.clone());
            if let Some(k) = oldest {
                joined.remove(&k);
            }
        }
    }

    /// Records a join (`Some`) or a failed one.
    pub fn put(&self, session: &[u8], member: &str, pin: Option<OwnedPin>) {
        let Ok(mut joined) = self.joined.lock() else {
            return;
        };
        Self::make_room(&mut joined);
        let now = Instant::now();
        let state = match pin {
            Some(p) => Joined::In(p, now),
            None => Joined::Failed(now),
        };
        joined.insert((session.to_vec(), member.to_owned()), state);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hello_round_trips_as_visible_ascii_and_huge_capabilities_are_dropped() {
        let hello = Hello {
            version: "2025-11-25".into(),
            capabilities: json!({"sampling": {}}),
            client_info: json!({"name": "Claude Desktop", "version": "1"}),
        };
        let e = hello.entry();
        assert!(e.id.iter().all(|b| (0x21..=0x7e).contains(b)));
        assert_eq!(Hello::of(&[e]), Some(hello.clone()));
        let big = Hello {
            capabilities: json!({"experimental": {"x": "y".repeat(5000)}}),
            ..hello
        };
        let back = Hello::of(&[big.entry()]).expect("kept");
        assert_eq!(back.capabilities, json!({}));
        assert_eq!(back.client_info["name"], "Claude Desktop");
        assert_eq!(Hello::of(&[]), None);
    }

    #[test]
    fn a_failed_join_waits_before_it_is_tried_again() {
        let joins = Joins::default();
        assert!(joins.may_try(b"s", "gamma"));
        assert!(joins.begin(b"s", "gamma"));
        assert!(!joins.begin(b"s", "gamma"), "one join at a time");
        joins.put(b"s", "gamma", None);
        assert!(!joins.may_try(b"s", "gamma"), "not at once");
        assert!(joins.get(b"s", "gamma").is_none());
        let pin = OwnedPin {
            replica: "0a0a0a0a".into(),
            id: b"g1".to_vec(),
        };
        joins.put(b"s", "gamma", Some(pin));
        assert_eq!(joins.get(b"s", "gamma").map(|p| p.id), Some(b"g1".to_vec()));
        assert!(joins.get(b"t", "gamma").is_none(), "per session");
    }
}
