//! Sealed session ids. The id a client sees is an AEAD token (ChaCha20-Poly1305,
//! base64url): the upstream's own session id, the token naming the replica (endpoint)
//! that created it and an expiry, encrypted, with the principal that created the
//! session, the upstream and the route bound in as associated data. The client can
//! read none of it, and an id altered in any way, expired, presented on another route
//! or by another principal, or sealed with a key this gateway does not hold, is
//! answered 404 as an unknown session. The gateway keeps no session table: any replica
//! holding the key (`sessions.key_file`) serves any session, with no shared store and
//! no sticky load balancing. Keys are derived once, when a config is built; each token
//! names its key by a one-byte id, so a rotated-out key keeps opening its sessions.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hmac::{Hmac, Mac};
use portcullis_auth::Principal;
use sha2::Sha256;

/// The layout of the plaintext and the associated data; a new layout gets a new one.
const VERSION: u8 = 1;
/// Mixed into the key derivation and the associated data.
const DOMAIN: &[u8] = b"portcullis-session-v2";
/// Characters of a replica token (8 hex digits).
const REPLICA_LEN: usize = 8;
/// Version, key id, nonce: the token's clear prefix.
const HEADER_LEN: usize = 2 + 12;
/// The Poly1305 tag.
const TAG_LEN: usize = 16;
/// The longest client session id opened (a token for the longest upstream id fits).
const MAX_ID_LEN: usize = 6 * 1024;
/// The longest upstream session id sealed (a federated route's holds every member's).
pub const MAX_UPSTREAM_ID_LEN: usize = 4 * 1024;
/// The token layout of a list cursor (tokens of another layout never open as one).
const CURSOR_VERSION: u8 = 2;
/// The longest cursor opened.
const MAX_CURSOR_LEN: usize = 8 * 1024;
/// How long a sealed id opens when the config does not say (`sessions.ttl`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// An upstream session the gateway routes to: the replica (endpoint) that holds it,
/// by its token, and the upstream's own session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin<'a> {
    /// The replica token (`upstream::endpoints::replica_token`) of the endpoint that created the session.
    pub replica: &'a str,
    /// The upstream's `Mcp-Session-Id`.
    pub id: &'a [u8],
}

/// A [`Pin`] that owns its parts, for messages sent in the background.
#[derive(Debug, Clone)]
pub struct OwnedPin {
    /// See [`Pin::replica`].
    pub replica: Arc<str>,
    /// See [`Pin::id`].
    pub id: Vec<u8>,
}

impl OwnedPin {
    /// Borrowed, to send with.
    pub fn pin(&self) -> Pin<'_> {
        Pin {
            replica: &self.replica,
            id: &self.id,
        }
    }
}

/// One key, ready to use.
#[derive(Clone)]
struct SealKey {
    id: u8,
    aead: ChaCha20Poly1305,
}

impl SealKey {
    /// Derives the AEAD key and its id from the configured key material, once.
    fn derive(material: &[u8]) -> SealKey {
        let prf = |label: &[u8]| {
            // HMAC takes keys of any length; this cannot fail.
            let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(material)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
            mac.update(DOMAIN);
            mac.update(label);
            mac.finalize().into_bytes()
        };
        let key = prf(b"/aead");
        SealKey {
            id: prf(b"/key-id")[0],
            aead: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }
}

/// Seals client-visible session ids with one key, and opens them with it or with the
/// key being rotated out.
#[derive(Clone)]
pub struct SessionSeal {
    current: SealKey,
    previous: Option<SealKey>,
    ttl: Duration,
}

/// Whether `sid` is a session id the spec allows: 1 or more visible ASCII characters.
fn is_visible_ascii(sid: &[u8]) -> bool {
    !sid.is_empty() && sid.iter().all(|b| (0x21..=0x7e).contains(b))
}

/// Who a session belongs to: the issuer and subject of the caller that created it
/// (both empty on an anonymous route).
pub fn owner_of(principal: Option<&Principal>) -> (&str, &str) {
    principal.map_or(("", ""), |p| (p.issuer.as_str(), p.subject.as_str()))
}

/// Where a session may be used: the upstream it lives on and the route it came by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bound<'a> {
    /// The upstream's name.
    pub upstream: &'a str,
    /// The route's path.
    pub route: &'a str,
}

/// The associated data of a token: everything it is bound to, length-prefixed so no
/// two different bindings share a byte string.
fn associated(owner: (&str, &str), bound: Bound<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.extend_from_slice(DOMAIN);
    for field in [owner.0, owner.1, bound.upstream, bound.route] {
        out.extend_from_slice(&(field.len() as u64).to_be_bytes());
        out.extend_from_slice(field.as_bytes());
    }
    out
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl SessionSeal {
    /// A seal with `key` (at least 32 bytes; the config loader checks).
    pub fn new(key: &[u8]) -> SessionSeal {
        SessionSeal {
            current: SealKey::derive(key),
            previous: None,
            ttl: DEFAULT_TTL,
        }
    }

    /// The same seal, also opening ids sealed with `previous` (a key rotation).
    pub fn with_previous(mut self, previous: &[u8]) -> SessionSeal {
        self.previous = Some(SealKey::derive(previous));
        self
    }

    /// The same seal, sealing ids that open for `ttl` (`sessions.ttl`).
    pub fn with_ttl(mut self, ttl: Duration) -> SessionSeal {
        self.ttl = ttl;
        self
    }

    /// A seal with this process's random key, used when `sessions.key_file|key_env`
    /// is not configured. The same key for the life of the process (reloads keep it).
    pub fn per_process() -> Result<SessionSeal, String> {
        static KEY: OnceLock<Result<[u8; 32], String>> = OnceLock::new();
        let key = KEY.get_or_init(|| {
            let mut k = [0u8; 32];
            getrandom::fill(&mut k)
                .map_err(|e| format!("no randomness for the session key: {e}"))?;
            Ok(k)
        });
        key.as_ref()
            .map(|k| SessionSeal::new(k))
            .map_err(Clone::clone)
    }

    /// The id the client sees for the upstream's session `sid`, created on the
    /// endpoint named `replica` (its replica token) by `owner`, for `bound`. `None`
    /// when the upstream's id is not visible ASCII (as the spec requires) or too long,
    /// or the system has no randomness for a nonce.
    pub fn seal(
        &self,
        owner: (&str, &str),
        bound: Bound<'_>,
        replica: &str,
        sid: &[u8],
    ) -> Option<String> {
        self.seal_at(owner, bound, replica, sid, now_secs())
    }

    fn seal_at(
        &self,
        owner: (&str, &str),
        bound: Bound<'_>,
        replica: &str,
        sid: &[u8],
        now: u64,
    ) -> Option<String> {
        if !is_visible_ascii(sid) || sid.len() > MAX_UPSTREAM_ID_LEN || replica.len() != REPLICA_LEN
        {
            return None;
        }
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).ok()?;
        let expires = now.saturating_add(self.ttl.as_secs());
        let mut plain = Vec::with_capacity(8 + REPLICA_LEN + sid.len());
        plain.extend_from_slice(&expires.to_be_bytes());
        plain.extend_from_slice(replica.as_bytes());
        plain.extend_from_slice(sid);
        let aad = associated(owner, bound);
        let sealed = self
            .current
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .ok()?;
        let mut token = Vec::with_capacity(HEADER_LEN + sealed.len());
        token.push(VERSION);
        token.push(self.current.id);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(token))
    }

    /// The upstream session inside a client's session id (the replica that holds it and
    /// the upstream's id), if it was sealed with this key (or the previous one) for this
    /// `owner` and `bound`, and has not expired. Anything else is an unknown session
    /// (and so is a replica no longer configured, which the upstream finds).
    pub fn open(
        &self,
        owner: (&str, &str),
        bound: Bound<'_>,
        client_sid: &[u8],
    ) -> Option<OwnedPin> {
        self.open_at(owner, bound, client_sid, now_secs())
    }

    fn open_at(
        &self,
        owner: (&str, &str),
        bound: Bound<'_>,
        client_sid: &[u8],
        now: u64,
    ) -> Option<OwnedPin> {
        if client_sid.len() > MAX_ID_LEN {
            return None;
        }
        let token = URL_SAFE_NO_PAD.decode(client_sid).ok()?;
        if token.len() < HEADER_LEN + TAG_LEN + 8 + REPLICA_LEN + 1 || token[0] != VERSION {
            return None;
        }
        let aad = associated(owner, bound);
        // Key ids are one byte, so two keys may share one: each with the id is tried.
        let plain = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .filter(|k| k.id == token[1])
            .find_map(|k| {
                k.aead
                    .decrypt(
                        Nonce::from_slice(&token[2..HEADER_LEN]),
                        Payload {
                            msg: &token[HEADER_LEN..],
                            aad: &aad,
                        },
                    )
                    .ok()
            })?;
        let (expires, rest) = plain.split_at(8);
        let expires = u64::from_be_bytes(expires.try_into().ok()?);
        if expires <= now {
            return None;
        }
        let (replica, sid) = rest.split_at(REPLICA_LEN);
        let replica = std::str::from_utf8(replica).ok()?;
        if !is_visible_ascii(sid) {
            return None;
        }
        Some(OwnedPin {
            replica: replica.into(),
            id: sid.to_vec(),
        })
    }
}

impl SessionSeal {
    /// A gateway-minted list cursor for `route`: `plain` (each member's position)
    /// sealed so a client can neither read nor alter it. `None` without randomness.
    pub fn seal_cursor(&self, route: &str, plain: &[u8]) -> Option<String> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).ok()?;
        let aad = cursor_associated(route);
        let sealed = self
            .current
            .aead
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .ok()?;
        let mut token = Vec::with_capacity(HEADER_LEN + sealed.len());
        token.push(CURSOR_VERSION);
        token.push(self.current.id);
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        Some(URL_SAFE_NO_PAD.encode(token))
    }

    /// What a cursor from [`SessionSeal::seal_cursor`] holds, if it was sealed for
    /// `route` with this key (or the previous one) and not altered.
    pub fn open_cursor(&self, route: &str, cursor: &str) -> Option<Vec<u8>> {
        if cursor.len() > MAX_CURSOR_LEN {
            return None;
        }
        let token = URL_SAFE_NO_PAD.decode(cursor).ok()?;
        if token.len() < HEADER_LEN + TAG_LEN || token[0] != CURSOR_VERSION {
            return None;
        }
        let aad = cursor_associated(route);
        [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .filter(|k| k.id == token[1])
            .find_map(|k| {
                k.aead
                    .decrypt(
                        Nonce::from_slice(&token[2..HEADER_LEN]),
                        Payload {
                            msg: &token[HEADER_LEN..],
                            aad: &aad,
                        },
                    )
                    .ok()
            })
    }
}

/// A cursor's associated data: the route, in a domain of its own.
fn cursor_associated(route: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + route.len());
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(b"/cursor");
    out.extend_from_slice(&(route.len() as u64).to_be_bytes());
    out.extend_from_slice(route.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: (&str, &str) = ("https://idp", "alice");
    const BOB: (&str, &str) = ("https://idp", "bob");
    const TOOLS: Bound<'static> = Bound {
        upstream: "tools",
        route: "/mcp",
    };

    fn seal() -> SessionSeal {
        SessionSeal::new(&[7u8; 32])
    }

    fn replicas() -> Vec<String> {
        // Replica tokens are 8 hex digits (upstream::endpoints::replica_token).
        ["0a1b2c3d", "4e5f6a7b", "8c9d0e1f"]
            .iter()
            .map(|t| (*t).to_owned())
            .collect()
    }

    fn opened(p: Option<OwnedPin>) -> Option<(String, Vec<u8>)> {
        p.map(|p| (p.replica.to_string(), p.id))
    }

    #[test]
    fn a_sealed_id_opens_for_its_owner_upstream_route_and_replica_only() {
        let s = seal();
        let r = replicas();
        let id = s.seal(ALICE, TOOLS, &r[2], b"abc-123.x").expect("sealed");
        assert!(
            id.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "visible ASCII: {id}"
        );
        assert!(!id.contains("abc-123"), "the upstream's id is not readable");
        assert_eq!(
            opened(s.open(ALICE, TOOLS, id.as_bytes())),
            Some((r[2].clone(), b"abc-123.x".to_vec())),
        );
        assert_eq!(
            opened(s.open(BOB, TOOLS, id.as_bytes())),
            None,
            "another principal"
        );
        assert_eq!(
            opened(s.open(("https://other", "alice"), TOOLS, id.as_bytes())),
            None
        );
        let files = Bound {
            upstream: "files",
            route: "/mcp",
        };
        assert_eq!(
            opened(s.open(ALICE, files, id.as_bytes())),
            None,
            "another upstream"
        );
        let other_route = Bound {
            upstream: "tools",
            route: "/other/mcp",
        };
        assert_eq!(
            opened(s.open(ALICE, other_route, id.as_bytes())),
            None,
            "another route"
        );
        assert_eq!(
            opened(SessionSeal::new(&[8u8; 32]).open(ALICE, TOOLS, id.as_bytes())),
            None,
            "another key"
        );
        assert_ne!(
            s.seal(ALICE, TOOLS, &r[2], b"abc-123.x"),
            Some(id.clone()),
            "a fresh nonce each time"
        );

        // A key rotation: the new key opens what the old one sealed, and seals anew.
        let rotated = SessionSeal::new(&[9u8; 32]).with_previous(&[7u8; 32]);
        assert!(rotated.open(ALICE, TOOLS, id.as_bytes()).is_some());
        assert!(rotated.open(BOB, TOOLS, id.as_bytes()).is_none());
        let new_id = rotated.seal(ALICE, TOOLS, &r[2], b"x").expect("sealed");
        assert!(
            s.open(ALICE, TOOLS, new_id.as_bytes()).is_none(),
            "the old key alone cannot"
        );
    }

    #[test]
    fn a_sealed_id_expires() {
        let s = seal().with_ttl(Duration::from_secs(60));
        let r = replicas();
        let id = s
            .seal_at(ALICE, TOOLS, &r[0], b"sid", 1_000)
            .expect("sealed");
        assert!(s.open_at(ALICE, TOOLS, id.as_bytes(), 1_059).is_some());
        assert!(
            s.open_at(ALICE, TOOLS, id.as_bytes(), 1_060).is_none(),
            "expired"
        );
    }

    #[test]
    fn upstream_ids_outside_visible_ascii_or_too_long_are_not_sealed() {
        let r = replicas();
        let long = vec![b'a'; MAX_UPSTREAM_ID_LEN + 1];
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            b"\xff\xfe",
            "é".as_bytes(),
            b"\x7f",
            &long,
        ] {
            assert_eq!(seal().seal(ALICE, TOOLS, &r[0], bad), None, "{bad:?}");
        }
    }

    #[test]
    fn altered_truncated_and_hostile_ids_are_unknown_sessions() {
        let s = seal();
        let r = replicas();
        let id = s.seal(ALICE, TOOLS, &r[1], b"sid").expect("sealed");
        let bytes = id.as_bytes();
        for cut in 0..bytes.len() {
            assert!(
                s.open(ALICE, TOOLS, &bytes[..cut]).is_none(),
                "cut at {cut}"
            );
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.to_vec();
            flipped[i] ^= 0x01;
            assert!(s.open(ALICE, TOOLS, &flipped).is_none(), "flip at {i}");
        }
        for bad in [
            &b""[..],
            b"...",
            b"1.abc",
            b"AAAAAAAAAAAAAAAAAAAAAA.0.x",
            b"\xff\xfe.0.x",
            b"AQ",
        ] {
            assert!(s.open(ALICE, TOOLS, bad).is_none(), "{bad:?}");
        }
        let huge = vec![b'a'; 64 * 1024];
        assert!(s.open(ALICE, TOOLS, &huge).is_none());
    }

    #[test]
    fn an_anonymous_route_still_seals() {
        let s = seal();
        let r = replicas();
        let id = s
            .seal(owner_of(None), TOOLS, &r[0], b"sid")
            .expect("sealed");
        assert!(s.open(("", ""), TOOLS, id.as_bytes()).is_some());
        assert!(s.open(ALICE, TOOLS, id.as_bytes()).is_none());
        let per_process = SessionSeal::per_process().expect("randomness");
        let again = SessionSeal::per_process().expect("randomness");
        let id = per_process.seal(ALICE, TOOLS, &r[0], b"s").expect("sealed");
        assert!(
            again.open(ALICE, TOOLS, id.as_bytes()).is_some(),
            "one key per process"
        );
    }

    #[test]
    fn cursors_open_only_unaltered_and_on_their_route() {
        let s = seal();
        let c = s.seal_cursor("/mcp", b"positions").expect("sealed");
        assert_eq!(
            s.open_cursor("/mcp", &c).as_deref(),
            Some(&b"positions"[..])
        );
        assert_eq!(s.open_cursor("/other", &c), None, "another route");
        let mut bytes = c.clone().into_bytes();
        let last = bytes.len() - 1;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(bytes).expect("ascii");
        assert_eq!(s.open_cursor("/mcp", &altered), None, "altered");
        assert_eq!(s.open_cursor("/mcp", "not-a-cursor!"), None);
        assert_eq!(s.open_cursor("/mcp", ""), None, "truncated");
        assert_eq!(s.open_cursor("/mcp", &"A".repeat(MAX_CURSOR_LEN + 1)), None);
        // A session id never opens as a cursor.
        let sid = s.seal(ALICE, TOOLS, "0a0b0c0d", b"sid").expect("sealed");
        assert_eq!(s.open_cursor("/mcp", &sid), None);
    }
}
