//! Sealed session ids. The id a client sees is `<tag>.<replica>.<upstream id>`: the
//! upstream's own session id, the index of the replica (endpoint) that created it, and
//! an HMAC-SHA256 tag over both, the upstream's name and the principal that created the
//! session. The gateway therefore keeps no session table (any replica holding the same
//! key can route a session), a session stays on its replica, and an id presented by
//! another principal, or altered in any way, is answered 404 as an unknown session.

use std::sync::OnceLock;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use portcullis_auth::Principal;
use sha2::Sha256;

/// Bytes of the HMAC kept in the tag (128 bits).
const TAG_BYTES: usize = 16;
/// Characters of the tag in base64url without padding.
const TAG_CHARS: usize = 22;
/// Versions the MAC input, so a future layout cannot be confused with this one.
const DOMAIN: &[u8] = b"portcullis-session-v1";

/// Seals and opens client-visible session ids with one key.
#[derive(Clone)]
pub struct SessionSeal {
    mac: Hmac<Sha256>,
}

/// Who a session belongs to: the issuer and subject of the caller that created it
/// (both empty on an anonymous route).
pub fn owner_of(principal: Option<&Principal>) -> (&str, &str) {
    principal.map_or(("", ""), |p| (p.issuer.as_str(), p.subject.as_str()))
}

impl SessionSeal {
    /// A seal with `key` (at least 32 bytes; the config loader checks).
    pub fn new(key: &[u8]) -> SessionSeal {
        // HMAC takes keys of any length; this cannot fail.
        let mac = <Hmac<Sha256> as Mac>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        SessionSeal { mac }
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

    fn tag(&self, owner: (&str, &str), upstream: &str, replica: usize, sid: &[u8]) -> Hmac<Sha256> {
        let mut mac = self.mac.clone();
        mac.update(DOMAIN);
        // Length-prefixed fields: no two different inputs share a byte string.
        let replica = replica.to_string();
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

    /// The id the client sees for the upstream's session `sid`, created on `replica` by `owner`.
    pub fn seal(&self, owner: (&str, &str), upstream: &str, replica: usize, sid: &[u8]) -> String {
        let tag = self
            .tag(owner, upstream, replica, sid)
            .finalize()
            .into_bytes();
        format!(
            "{}.{replica}.{}",
            URL_SAFE_NO_PAD.encode(&tag[..TAG_BYTES]),
            String::from_utf8_lossy(sid)
        )
    }

    /// The replica and upstream session id inside a client's session id, if it was
    /// sealed with this key for this `owner` and `upstream` and names one of
    /// `replicas` endpoints. Anything else is an unknown session.
    pub fn open<'a>(
        &self,
        owner: (&str, &str),
        upstream: &str,
        client_sid: &'a [u8],
        replicas: usize,
    ) -> Option<(usize, &'a [u8])> {
        let (tag, rest) = split_dot(client_sid)?;
        let (replica, sid) = split_dot(rest)?;
        if tag.len() != TAG_CHARS || sid.is_empty() {
            return None;
        }
        let replica: usize = std::str::from_utf8(replica).ok()?.parse().ok()?;
        if replica >= replicas {
            return None;
        }
        let tag = URL_SAFE_NO_PAD.decode(tag).ok()?;
        // Compared in constant time by the hmac crate.
        self.tag(owner, upstream, replica, sid)
            .verify_truncated_left(&tag)
            .ok()?;
        Some((replica, sid))
    }
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

    #[test]
    fn a_sealed_id_opens_for_its_owner_upstream_and_replica_only() {
        let s = seal();
        let id = s.seal(ALICE, "tools", 2, b"abc-123.x");
        assert!(
            id.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "visible ASCII: {id}"
        );
        assert_eq!(
            s.open(ALICE, "tools", id.as_bytes(), 3),
            Some((2, b"abc-123.x".as_slice())),
            "dots in the upstream's id survive"
        );
        assert_eq!(
            s.open(BOB, "tools", id.as_bytes(), 3),
            None,
            "another principal"
        );
        assert_eq!(
            s.open(("https://other", "alice"), "tools", id.as_bytes(), 3),
            None
        );
        assert_eq!(
            s.open(ALICE, "files", id.as_bytes(), 3),
            None,
            "another upstream"
        );
        assert_eq!(
            s.open(ALICE, "tools", id.as_bytes(), 2),
            None,
            "replica gone"
        );
        assert_eq!(
            SessionSeal::new(&[8u8; 32]).open(ALICE, "tools", id.as_bytes(), 3),
            None,
            "another key"
        );
        assert_eq!(s.seal(ALICE, "tools", 2, b"abc-123.x"), id, "deterministic");
    }

    #[test]
    fn altered_truncated_and_hostile_ids_are_unknown_sessions() {
        let s = seal();
        let id = s.seal(ALICE, "tools", 1, b"sid");
        let bytes = id.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                s.open(ALICE, "tools", &bytes[..cut], 3),
                None,
                "cut at {cut}"
            );
        }
        for i in 0..bytes.len() {
            let mut flipped = bytes.to_vec();
            flipped[i] ^= 0x01;
            assert_eq!(s.open(ALICE, "tools", &flipped, 3), None, "flip at {i}");
        }
        // The other replica's index with the same tag.
        let moved = id.replacen(".1.", ".0.", 1);
        assert_eq!(s.open(ALICE, "tools", moved.as_bytes(), 3), None);
        for bad in [
            &b""[..],
            b"...",
            b"1.abc",
            b"9.not-a-replica",
            b"AAAAAAAAAAAAAAAAAAAAAA.0.x",
            b"AAAAAAAAAAAAAAAAAAAAAA.99999999999999999999999.x",
            b"\xff\xfe.0.x",
        ] {
            assert_eq!(s.open(ALICE, "tools", bad, 3), None, "{bad:?}");
        }
        let huge = vec![b'a'; 64 * 1024];
        assert_eq!(s.open(ALICE, "tools", &huge, 3), None);
    }

    #[test]
    fn an_anonymous_route_still_seals() {
        let s = seal();
        let id = s.seal(owner_of(None), "tools", 0, b"sid");
        assert!(s.open(("", ""), "tools", id.as_bytes(), 1).is_some());
        assert!(s.open(ALICE, "tools", id.as_bytes(), 1).is_none());
        let per_process = SessionSeal::per_process().expect("randomness");
        let again = SessionSeal::per_process().expect("randomness");
        let id = per_process.seal(ALICE, "t", 0, b"s");
        assert!(
            again.open(ALICE, "t", id.as_bytes(), 1).is_some(),
            "one key per process"
        );
    }
}
