//! Sessions whose endpoint is gone, on upstreams with `session_failover: reinitialize`:
//! the gateway opens a new session on a live endpoint (an `initialize` in the client's
//! protocol revision, then `notifications/initialized`), sends the request there, and
//! the client gets the new session's id on that answer (the TypeScript and Python SDKs
//! adopt it). Each replica remembers the move ([`Moves`]), so a client that keeps the
//! old id is not given a new session on every request.
//!
//! Only for servers that keep nothing per session a client depends on: the new session
//! starts with no client capabilities and none of the old one's state. Upstreams
//! without the setting answer such a session 404, as the spec asks (docs/endpoints.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use super::own;
use super::{Failure, OwnedPin, Upstream};

/// How long a replica remembers where a session went.
const REMEMBER: Duration = Duration::from_secs(3600);
/// The most moves one upstream remembers (the oldest are forgotten first).
const MAX_MOVES: usize = 65_536;

/// Where sessions of one upstream went: the old session (replica token and id) to the
/// new one.
#[derive(Default)]
pub struct Moves {
    moved: Mutex<HashMap<Named, (OwnedPin, Instant)>>,
}

/// A session as the client named it: the replica token and the upstream's id.
type Named = (String, Vec<u8>);

impl Moves {
    /// Where `from` went, if it moved less than [`REMEMBER`] ago.
    pub fn get(&self, from: &OwnedPin) -> Option<OwnedPin> {
        let moved = self.moved.lock().ok()?;
        let (to, at) = moved.get(&(from.replica.to_string(), from.id.clone()))?;
        (at.elapsed() < REMEMBER).then(|| to.clone())
    }

    /// Forgets where `from` went (the session was ended).
    pub fn forget(&self, from: &OwnedPin) {
        if let Ok(mut moved) = self.moved.lock() {
            moved.remove(&(from.replica.to_string(), from.id.clone()));
        }
    }

    /// Remembers that `from` went to `to`.
    pub fn put(&self, from: &OwnedPin, to: &OwnedPin) {
        let Ok(mut moved) = self.moved.lock() else {
            return;
        };
        if moved.len() >= MAX_MOVES {
            moved.retain(|_, (_, at)| at.elapsed() < REMEMBER);
            if moved.len() >= MAX_MOVES {
                let oldest = moved
                    .iter()
                    .min_by_key(|(_, (_, at))| *at)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    moved.remove(&k);
                }
            }
        }
        moved.insert(
            (from.replica.to_string(), from.id.clone()),
            (to.clone(), Instant::now()),
        );
    }
}

/// Opens a new session on `upstream` (a live endpoint of its choosing) in revision
/// `version`; `UnknownSession` when none could be opened (the client then starts over).
pub async fn reinitialize(upstream: &dyn Upstream, version: &str) -> Result<OwnedPin, Failure> {
    let init = json!({"jsonrpc": "2.0", "id": "portcullis-failover", "method": "initialize",
        "params": {"protocolVersion": version, "capabilities": {},
            "clientInfo": {"name": "portcullis-failover", "version": env!("CARGO_PKG_VERSION")}}});
    let answered = own::call(upstream, None, version, "initialize", &init)
        .await
        .map_err(|e| {
            tracing::warn!(upstream = upstream.name(), error = %e, "could not open a new session for a session whose endpoint is gone");
            Failure::UnknownSession
        })?;
    let ok = answered
        .message
        .as_ref()
        .is_some_and(|m| m.get("result").is_some());
    let Some(session) = answered.session.filter(|_| ok) else {
        tracing::warn!(
            upstream = upstream.name(),
            "the upstream opened no session for a session whose endpoint is gone"
        );
        return Err(Failure::UnknownSession);
    };
    let initialized = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    if let Err(e) = own::call(
        upstream,
        Some(&session),
        version,
        "notifications/initialized",
        &initialized,
    )
    .await
    {
        tracing::debug!(upstream = upstream.name(), error = %e, "notifications/initialized after a failover");
    }
    Ok(session)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin(replica: &str, id: &str) -> OwnedPin {
        OwnedPin {
            replica: replica.into(),
            id: id.as_bytes().to_vec(),
        }
    }

    #[test]
    fn moves_are_remembered_per_session() {
        let moves = Moves::default();
        let (a, b) = (pin("0a0a0a0a", "s1"), pin("0b0b0b0b", "s9"));
        assert!(moves.get(&a).is_none());
        moves.put(&a, &b);
        let to = moves.get(&a).expect("remembered");
        assert_eq!(
            (&*to.replica, to.id.as_slice()),
            ("0b0b0b0b", b"s9".as_slice())
        );
        assert!(
            moves.get(&pin("0a0a0a0a", "s2")).is_none(),
            "only that session"
        );
    }
}
