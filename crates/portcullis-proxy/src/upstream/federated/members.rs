//! A federated session: every member's own session (the endpoint it is pinned to and
//! the member's session id), written as one string that the gateway seals into the
//! client's `Mcp-Session-Id` like any upstream session id (docs/sessions.md). Each part
//! is length-prefixed (`<n>:<bytes>`), so no member name or id can be read as another.

use std::sync::Arc;

use crate::upstream::OwnedPin;

/// One member's session, by the member's upstream name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberSession {
    /// The member's upstream name.
    pub member: String,
    /// The replica token of the endpoint holding it.
    pub replica: Arc<str>,
    /// The member's session id.
    pub id: Vec<u8>,
}

impl MemberSession {
    /// The session to send with.
    pub fn pin(&self) -> OwnedPin {
        OwnedPin {
            replica: self.replica.clone(),
            id: self.id.clone(),
        }
    }
}

fn push(out: &mut Vec<u8>, part: &[u8]) {
    out.extend_from_slice(part.len().to_string().as_bytes());
    out.push(b':');
    out.extend_from_slice(part);
}

/// The members' sessions as one visible-ASCII string (member ids are visible ASCII, as
/// the spec requires, and names are checked by the config).
pub fn encode(sessions: &[MemberSession]) -> Vec<u8> {
    let mut out = Vec::with_capacity(sessions.len() * 64);
    for s in sessions {
        push(&mut out, s.member.as_bytes());
        push(&mut out, s.replica.as_bytes());
        push(&mut out, &s.id);
    }
    out
}

/// Reads one `<n>:<bytes>` part off the front of `rest`.
fn part<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let colon = rest.iter().take(6).position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&rest[..colon]).ok()?.parse().ok()?;
    let body = rest.get(colon + 1..colon + 1 + len)?;
    *rest = &rest[colon + 1 + len..];
    Some(body)
}

/// The members' sessions from [`encode`]'s string; `None` if it is not one.
pub fn decode(mut bytes: &[u8]) -> Option<Vec<MemberSession>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let member = std::str::from_utf8(part(&mut bytes)?).ok()?.to_owned();
        let replica = std::str::from_utf8(part(&mut bytes)?).ok()?;
        let id = part(&mut bytes)?.to_vec();
        out.push(MemberSession {
            member,
            replica: Arc::from(replica),
            id,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(member: &str, replica: &str, id: &[u8]) -> MemberSession {
        MemberSession {
            member: member.into(),
            replica: replica.into(),
            id: id.to_vec(),
        }
    }

    #[test]
    fn sessions_round_trip_whatever_their_ids_hold() {
        let all = vec![
            session("alpha", "0a0b0c0d", b"3:ab:cd"),
            session("beta", "11223344", b"uuid-1234"),
        ];
        let text = encode(&all);
        assert!(text.iter().all(|b| (0x21..=0x7e).contains(b)));
        assert_eq!(decode(&text), Some(all));
        assert_eq!(decode(b""), Some(vec![]));
    }

    #[test]
    fn malformed_and_truncated_strings_are_refused() {
        let text = encode(&[session("alpha", "0a0b0c0d", b"sid")]);
        for cut in 1..text.len() {
            assert_eq!(decode(&text[..cut]), None, "cut at {cut}");
        }
        assert_eq!(decode(b"99999999999:x"), None);
        assert_eq!(decode(b"x:abc"), None);
        assert_eq!(decode(b"5:ab"), None);
    }
}
