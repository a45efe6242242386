//! Requests in flight that their client may cancel: a client's
//! `notifications/cancelled` names a request by its id within a session, and the
//! gateway ends that request's relay (so its gate slots come back) while the
//! notification itself goes on to the upstream running the request.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Notify;

/// A session (the client's sealed `Mcp-Session-Id`), its caller (issuer and subject: a
/// session id alone, if it leaked, must not let anyone else cancel) and a request id
/// (normalised JSON).
type Key = (Box<[u8]>, Box<str>, Box<str>);

fn key(session: &[u8], owner: (&str, &str), id: String) -> Key {
    let who = format!("{}\0{}", owner.0, owner.1);
    (session.into(), who.into(), id.into())
}

/// The registry of cancellable requests of one gateway.
#[derive(Default)]
pub struct Calls {
    map: Mutex<HashMap<Key, (u64, Arc<Notify>)>>,
    next: AtomicU64,
}

/// A registered request; unregisters when dropped.
pub struct Registered<'a> {
    calls: &'a Calls,
    key: Option<Key>,
    token: u64,
    /// Notified when the client cancels the request.
    pub cancelled: Arc<Notify>,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut map = self.calls.map.lock();
            if map.get(&key).is_some_and(|(t, _)| *t == self.token) {
                map.remove(&key);
            }
        }
    }
}

/// The id's JSON in one canonical spelling (`1`, `"a"`), so `1` and `1.0`, or `"a"`
/// and `"\u0061"`, name the same request. `None` for what is not an id.
pub(crate) fn canonical_id(json: &str) -> Option<String> {
    match serde_json::from_str::<serde_json::Value>(json).ok()? {
        serde_json::Value::String(s) => serde_json::to_string(&s).ok(),
        serde_json::Value::Number(n) => Some(match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => format!("{}", f as i64),
            _ => n.to_string(),
        }),
        _ => None,
    }
}

impl Calls {
    /// Registers request `id` (JSON text) of `session`. A second request in flight with
    /// the same id in the same session is not registered (a cancellation could not tell
    /// the two apart) and cannot be cancelled by the gateway.
    pub fn register(&self, session: &[u8], owner: (&str, &str), id: &str) -> Registered<'_> {
        let cancelled = Arc::new(Notify::new());
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let key = canonical_id(id).and_then(|id| {
            let key = key(session, owner, id);
            let mut map = self.map.lock();
            if map.contains_key(&key) {
                return None;
            }
            map.insert(key.clone(), (token, cancelled.clone()));
            Some(key)
        });
        Registered {
            calls: self,
            key,
            token,
            cancelled,
        }
    }

    /// Cancels request `id` (JSON text) that `owner` sent in `session`; whether one was
    /// in flight.
    pub fn cancel(&self, session: &[u8], owner: (&str, &str), id: &str) -> bool {
        let Some(id) = canonical_id(id) else {
            return false;
        };
        let key = key(session, owner, id);
        match self.map.lock().get(&key) {
            Some((_, n)) => {
                // A stored permit: the relay sees it even if it is not waiting right now.
                n.notify_one();
                true
            }
            None => false,
        }
    }

    /// Requests registered now.
    pub fn len(&self) -> usize {
        self.map.lock().len()
    }

    /// Whether none are registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_compared_by_value_not_spelling() {
        assert_eq!(canonical_id("1"), canonical_id("1.0"));
        assert_eq!(canonical_id("\"a\""), canonical_id("\"\\u0061\""));
        assert_ne!(canonical_id("1"), canonical_id("\"1\""));
        assert_eq!(canonical_id("null"), None);
        assert_eq!(canonical_id("{}"), None);
        assert_eq!(canonical_id("garbage"), None);
    }

    const A: (&str, &str) = ("https://idp", "alice");

    #[tokio::test]
    async fn a_cancellation_reaches_the_registered_request_of_that_session_only() {
        let calls = Calls::default();
        let r = calls.register(b"s1", A, "7");
        assert!(
            !calls.cancel(b"s1", ("https://idp", "mallory"), "7"),
            "another caller holding the session id"
        );
        assert!(!calls.cancel(b"s2", A, "7"), "another session's request 7");
        assert!(!calls.cancel(b"s1", A, "8"));
        assert!(calls.cancel(b"s1", A, "7.0"));
        r.cancelled.notified().await;
        drop(r);
        assert!(calls.is_empty(), "unregistered when the request ended");
        assert!(!calls.cancel(b"s1", A, "7"));
    }

    #[test]
    fn a_duplicate_id_is_not_registered_and_does_not_unregister_the_first() {
        let calls = Calls::default();
        let first = calls.register(b"s", A, "1");
        let second = calls.register(b"s", A, "1");
        assert_eq!(calls.len(), 1);
        drop(second);
        assert_eq!(calls.len(), 1, "the first stays registered");
        drop(first);
        assert!(calls.is_empty());
    }
}
