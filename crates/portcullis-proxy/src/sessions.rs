//! Sealed session ids. The id a client sees is `<tag>.<replica>.<upstream id>`: the
//! upstream's own session id, a short token naming the replica (endpoint address) that
//! created it, and an HMAC-SHA256 tag over both, the upstream's name and the principal
//! that created the session. The gateway therefore keeps no session table (any gateway
//! replica holding the same key can route a session), a session stays on its upstream
//! replica whatever order DNS lists them in, and an id presented by another principal,
//! or altered in any way, is answered 404 as an unknown session.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use portcullis_auth::Principal;
use sha2::Sha256;

use crate::upstream::Pin;

/// Bytes of the HMAC kept in the tag (128 bits).
const TAG_BYTES: usize = 16;
/// Characters of the tag in base64url without padding.
const TAG_CHARS: usize = 22;
/// Versions the MAC input, so a future layout cannot be confused with this one.
const DOMAIN: &[u8] = b"portcullis-session-v1";

/// Seals client-visible session ids with one key, and opens them with it or with the
/// key being rotated out.
#[derive(Clone)]
pub struct SessionSeal {
    mac: Hmac<Sha256>,
    previous: Option<Hmac<Sha256>>,
}

fn keyed(key: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length; this cannot fail.
    <Hmac<Sha256> as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
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

impl SessionSeal {
    /// A seal with `key` (at least 32 bytes; the config loader checks).
    pub fn new(key: &[u8]) -> SessionSeal {
        SessionSeal {
            mac: keyed(key),
            previous: None,
        }
    }

    /// The same seal, also opening ids sealed with `previous` (a key rotation).
    pub fn with_previous(mut self, previous: &[u8]) -> SessionSeal {
        self.previous = Some(keyed(previous));
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
    /// endpoint named `replica` (a [`replica_token`]) by `owner`. `None` when the
    /// upstream's id is not visible ASCII, as the spec requires.
    pub fn seal(
        &self,
        owner: (&str, &str),
        upstream: &str,
        replica: &str,
        sid: &[u8],
    ) -> Option<String> {
        if !is_visible_ascii(sid) {
            return None;
        }
        let tag = tag_with(&self.mac, owner, upstream, replica, sid)
            .finalize()
            .into_bytes();
        Some(format!(
            "{}.{replica}.{}",
            URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES]),
            String::from_utf8_lossy(sid)
        ))
    }

    /// The upstream session inside a client's session id (the replica that holds it and
    /// the upstream's id), if it was sealed with this key (or the previous one) for this
    /// `owner` and `upstream`. Anything else is an unknown session (and so is a replica
    /// no longer configured, which the upstream finds).
    pub fn open<'a>(
        &self,
        owner: (&str, &str),
        upstream: &str,
        client_sid: &'a [u8],
    ) -> Option<Pin<'a>> {
        let (tag, rest) = split_dot(client_sid)?;
        let (replica, sid) = split_dot(rest)?;
        if tag.len() != TAG_CHARS || !is_visible_ascii(sid) {
            return None;
        }
        let replica = std::str::from_utf8(replica).ok()?;
        if replica.len() != 8
            || !replica
                .bytes()
                .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // Compared in constant time by the hmac crate.
        let valid = |key: &Hmac<Sha256>| {
            tag_with(key, owner, upstream, replica, sid)
                .verify_truncated_left(&tag)
                .is_ok()
        };
        (valid(&self.mac) || self.previous.as_ref().is_some_and(valid))
            .then_some(Pin { replica, id: sid })
    }
}

/// The MAC over one session's binding, before finalising.
fn tag_with(
    key: &Hmac<Sha256>,
    owner: (&str, &str),
    upstream: &str,
    replica: &str,
    sid: &[u8],
) -> Hmac<Sha256> {
    let mut mac = key.clone();
    mac.update(DOMAIN);
    // Length-prefixed fields: no two different inputs share a byte string.
    for field in [
        owner.0.as_bytes(),
        owner.1.as_bytes(),
        upstream.as_bytes(),
        replica.as_bytes(),
        sid,
    ] {
        mac.update(&(field.len() as u64).to_be_bytes());
        mac.update(field);
    }
    mac
}

fn split_dot(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let dot = s.iter().position(|b| *b == b'.')?;
    Some((&s[..dot], &s[dot + 1..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: (&str, &str) = ("https://idp", "alice");
    const BOB: (&str, &str) = ("https://idp", "bob");

    fn seal() -> SessionSeal {
        SessionSeal::new(&[7u8; 32])
    }

    fn replicas() -> Vec<String> {
        ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]
            .iter()
            .map(|a| crate::upstream::endpoints::replica_token(&a.parse().expect("addr")))
            .collect()
    }

    #[test]
    fn a_sealed_id_opens_for_its_owner_upstream_and_replica_only() {
        let s = seal();
        let r = replicas();
        let id = s.seal(ALICE, "tools", &r[2], b"abc-123.x").expect("sealed");
        assert!(
            id.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "visible ASCII: {id}"
        );
        assert_eq!(
            s.open(ALICE, "tools", id.as_bytes())
                .map(|p| (p.replica, p.id)),
            Some((r[2].as_str(), b"abc-123.x".as_slice())),
            "dots in the upstream's id survive"
        );
        assert_eq!(
            s.open(BOB, "tools", id.as_bytes()),
            None,
            "another principal"
        );
        assert_eq!(
            s.open(("https://other", "alice"), "tools", id.as_bytes()),
            None
        );
        assert_eq!(
            s.open(ALICE, "files", id.as_bytes()),
            None,
            "another upstream"
        );
        assert_eq!(
            SessionSeal::new(&[8u8; 32]).open(ALICE, "tools", id.as_bytes()),
            None,
            "another key"
        );
        assert_eq!(
            s.seal(ALICE, "tools", &r[2], b"abc-123.x"),
            Some(id.clone()),
            "deterministic"
        );

        // A key rotation: the new key opens what the old one sealed, and seals anew.
        let rotated = SessionSeal::new(&[9u8; 32]).with_previous(&[7u8; 32]);
        assert!(rotated.open(ALICE, "tools", id.as_bytes()).is_some());
        assert!(rotated.open(BOB, "tools", id.as_bytes()).is_none());
        assert_ne!(rotated.seal(ALICE, "tools", &r[2], b"abc-123.x"), Some(id));
    }

    #[test]
    fn upstream_ids_outside_visible_ascii_are_not_sealed() {
        let r = replicas();
        for bad in [
            &b""[..],
            b"has space",
            b"tab\t",
            b"\xff\xfe",
            "é".as_bytes(),
            b"\x7f",
        ] {
            assert_eq!(seal().seal(ALICE, "tools", &r[0], bad), None, "{bad:?}");
        }
    }

    #[test]
    fn altered_truncated_and_hostile_ids_are_unknown_sessions() {
        let s = seal();
        let r = replicas();
        let id = s.seal(ALICE, "tools", &r[1], b"sid").expect("sealed");
        let bytes = id.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(s.open(ALICE, "tools", &bytes[..cut]), None, "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.to_vec();
            flipped[i] ^= 0x01;
            assert_eq!(s.open(ALICE, "tools", &flipped), None, "flip at {i}");
        }
        // The same tag moved to another replica's token.
        let moved = id.replacen(&r[1], &r[0], 1);
        assert_eq!(s.open(ALICE, "tools", moved.as_bytes()), None);
        // Non-canonical spellings of the replica token.
        let upper = id.replacen(&r[1], &r[1].to_ascii_uppercase(), 1);
        if upper != id {
            assert_eq!(s.open(ALICE, "tools", upper.as_bytes()), None);
        }
        let padded = id.replacen(&r[1], &format!("0{}", r[1]), 1);
        assert_eq!(s.open(ALICE, "tools", padded.as_bytes()), None);
        for bad in [
            &b""[..],
            b"...",
            b"1.abc",
            b"9.not-a-replica",
            b"AAAAAAAAAAAAAAAAAAAAAA.0.x",
            b"AAAAAAAAAAAAAAAAAAAAAA.+1.x",
            b"\xff\xfe.0.x",
        ] {
            assert_eq!(s.open(ALICE, "tools", bad), None, "{bad:?}");
        }
        let huge = vec![b'a'; 64 * 1024];
        assert_eq!(s.open(ALICE, "tools", &huge), None);
    }

    #[test]
    fn an_anonymous_route_still_seals() {
        let s = seal();
        let r = replicas();
        let id = s
            .seal(owner_of(None), "tools", &r[0], b"sid")
            .expect("sealed");
        assert!(s.open(("", ""), "tools", id.as_bytes()).is_some());
        assert!(s.open(ALICE, "tools", id.as_bytes()).is_none());
        let per_process = SessionSeal::per_process().expect("randomness");
        let again = SessionSeal::per_process().expect("randomness");
        let id = per_process.seal(ALICE, "t", &r[0], b"s").expect("sealed");
        assert!(
            again.open(ALICE, "t", id.as_bytes()).is_some(),
            "one key per process"
        );
    }
}
