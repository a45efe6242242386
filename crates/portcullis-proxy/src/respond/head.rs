//! The head of a relayed answer: the upstream's headers minus hop-by-hop ones, its
//! session id sealed for this caller, framing the client can read (chunked for
//! HTTP/1.1 when the length is unknown or changes, close-delimited for HTTP/1.0, which
//! has no chunked encoding), the headers SSE needs through buffering proxies, CORS, and
//! a successful DELETE answered 200 or 204 whatever 2xx the upstream chose.

use http::header;
use pingora_http::ResponseHeader;
use portcullis_mcp::headers::{self, MCP_SESSION_ID};

use super::cors;
use crate::ctx::{Ctx, Op};
use crate::sessions::{Bound, SessionSeal};
use crate::upstream::request::connection_listed;

/// What an upstream session id is sealed with on its way to the client.
pub struct Sealing<'a> {
    /// The seal.
    pub seal: &'a SessionSeal,
    /// Who the session belongs to (issuer, subject).
    pub owner: (&'a str, &'a str),
    /// The upstream and route the session is bound to.
    pub bound: Bound<'a>,
    /// The replica token of the endpoint that answered.
    pub replica: &'a str,
    /// The session the client presented, opened (the upstream's id and replica) and as
    /// the client sent it: an upstream that repeats its session id gets the client's own
    /// id back, so the client's session id stays the same for the whole session.
    pub presented: Option<(&'a [u8], &'a str, &'a [u8])>,
    /// The session the answer belongs to when the upstream moved it to a new one (its
    /// endpoint was gone): the client gets that session's id.
    pub moved: Option<&'a [u8]>,
}

/// How the body of the answer is carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// An SSE stream.
    pub sse: bool,
    /// Its length is not known up front (a stream, or a rewritten body).
    pub open_ended: bool,
    /// The client gets no body (the upstream's is read and dropped).
    pub no_body: bool,
}

/// The client's response head for the upstream's `up`; its session id sealed with
/// `sealing`, or dropped without. `rewritten`: the body changes on the way (so its
/// length does). `http10`: the client speaks HTTP/1.0.
pub fn build(
    up: &ResponseHeader,
    sealing: Option<&Sealing<'_>>,
    rewritten: bool,
    http10: bool,
    cx: &mut Ctx,
) -> Result<(ResponseHeader, Framing), String> {
    let mut status = up.status.as_u16();
    let mut no_body = false;
    if cx.op == Op::EndSession && (200..300).contains(&status) && status != 200 && status != 204 {
        // Clients check for 200 or 204 (the Python SDK logs anything else as a failure).
        status = 204;
        no_body = true;
    }
    let mut resp =
        ResponseHeader::build(status, Some(up.headers.len() + 4)).map_err(|e| e.to_string())?;
    let listed = connection_listed(&up.headers);
    for (name, value) in up.headers.iter() {
        let n = name.as_str();
        if headers::is_hop_by_hop(n) || listed.iter().any(|l| l == n) {
            continue;
        }
        if n == MCP_SESSION_ID {
            let Some(sealing) = sealing else { continue };
            if let Some((id, replica, token)) = sealing.presented {
                if id == value.as_bytes() && replica == sealing.replica {
                    let same = http::HeaderValue::from_bytes(token).map_err(|e| e.to_string())?;
                    resp.append_header(name.clone(), same)
                        .map_err(|e| e.to_string())?;
                    continue;
                }
            }
            let sealed = sealing
                .seal
                .seal(
                    sealing.owner,
                    sealing.bound,
                    sealing.replica,
                    value.as_bytes(),
                )
                .ok_or("Mcp-Session-Id is not visible ASCII")?;
            resp.append_header(name.clone(), sealed)
                .map_err(|e| e.to_string())?;
            continue;
        }
        if no_body && (name == header::CONTENT_LENGTH || name == header::CONTENT_TYPE) {
            continue;
        }
        resp.append_header(name.clone(), value.clone())
            .map_err(|e| e.to_string())?;
    }
    if let (Some(sealing), Some(id)) = (sealing, sealing.and_then(|s| s.moved)) {
        if !resp.headers.contains_key(MCP_SESSION_ID) {
            let sealed = sealing
                .seal
                .seal(sealing.owner, sealing.bound, sealing.replica, id)
                .ok_or("Mcp-Session-Id is not visible ASCII")?;
            resp.append_header(MCP_SESSION_ID, sealed)
                .map_err(|e| e.to_string())?;
        }
    }
    let body_allowed = !(no_body || status == 204 || status == 304 || (100..200).contains(&status));
    let sse = up
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut open_ended = body_allowed && !up.headers.contains_key(header::CONTENT_LENGTH);
    if rewritten && body_allowed {
        resp.remove_header(&header::CONTENT_LENGTH);
        open_ended = true;
    }
    if open_ended {
        if http10 {
            // No chunked encoding in HTTP/1.0: the body ends when the connection does.
            cx.close = true;
        } else {
            resp.insert_header(header::TRANSFER_ENCODING, "chunked")
                .map_err(|e| e.to_string())?;
        }
    }
    if sse {
        // Tell any buffering proxy in front of us (nginx ingress) to pass events through.
        resp.insert_header("x-accel-buffering", "no")
            .map_err(|e| e.to_string())?;
        if !up.headers.contains_key(header::CACHE_CONTROL) {
            resp.insert_header(header::CACHE_CONTROL, "no-cache")
                .map_err(|e| e.to_string())?;
        }
    }
    cors::add(&mut resp, cx);
    cx.status = status;
    Ok((
        resp,
        Framing {
            sse,
            open_ended,
            no_body,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(status: u16, headers: &[(&str, &str)]) -> ResponseHeader {
        let mut h = ResponseHeader::build(status, None).expect("head");
        for (k, v) in headers {
            h.append_header(k.to_string(), *v).expect("header");
        }
        h
    }

    fn build_for(
        up: &ResponseHeader,
        rewritten: bool,
        http10: bool,
        cx: &mut Ctx,
    ) -> (ResponseHeader, Framing) {
        let seal = SessionSeal::new(&[1u8; 32]);
        let sealing = Sealing {
            seal: &seal,
            owner: ("", ""),
            bound: Bound {
                upstream: "u",
                route: "/mcp",
            },
            replica: "0a0b0c0d",
            presented: None,
            moved: None,
        };
        build(up, Some(&sealing), rewritten, http10, cx).expect("built")
    }

    #[test]
    fn a_repeated_upstream_session_id_gives_the_client_its_own_id_back() {
        let u = up(200, &[("mcp-session-id", "upstream-sid")]);
        let seal = SessionSeal::new(&[1u8; 32]);
        let sealing = |replica, presented| Sealing {
            seal: &seal,
            owner: ("", ""),
            bound: Bound {
                upstream: "u",
                route: "/mcp",
            },
            replica,
            presented,
            moved: None,
        };
        let same = sealing(
            "0a0b0c0d",
            Some((
                b"upstream-sid".as_slice(),
                "0a0b0c0d",
                b"client-token".as_slice(),
            )),
        );
        let (h, _) = build(&u, Some(&same), false, false, &mut Ctx::new(None)).expect("built");
        assert_eq!(
            h.headers["mcp-session-id"], "client-token",
            "stable for the client"
        );
        // Another upstream session, or another endpoint: a new id, sealed.
        for other in [
            sealing(
                "0a0b0c0d",
                Some((
                    b"other-sid".as_slice(),
                    "0a0b0c0d",
                    b"client-token".as_slice(),
                )),
            ),
            sealing(
                "0a0b0c0d",
                Some((
                    b"upstream-sid".as_slice(),
                    "11111111",
                    b"client-token".as_slice(),
                )),
            ),
        ] {
            let (h, _) = build(&u, Some(&other), false, false, &mut Ctx::new(None)).expect("built");
            assert_ne!(h.headers["mcp-session-id"], "client-token");
        }
    }

    #[test]
    fn hop_by_hop_headers_go_and_the_session_is_sealed() {
        let u = up(
            200,
            &[
                ("content-type", "text/event-stream"),
                ("connection", "keep-alive, x-hop"),
                ("x-hop", "secret"),
                ("keep-alive", "timeout=5"),
                ("mcp-session-id", "upstream-sid"),
                ("x-kept", "1"),
            ],
        );
        let (h, f) = build_for(&u, false, false, &mut Ctx::new(None));
        assert!(f.sse && f.open_ended && !f.no_body);
        for gone in ["connection", "x-hop", "keep-alive"] {
            assert!(!h.headers.contains_key(gone), "{gone}");
        }
        assert_eq!(h.headers["x-kept"], "1");
        assert_eq!(h.headers["transfer-encoding"], "chunked");
        assert_eq!(h.headers["x-accel-buffering"], "no");
        assert_eq!(h.headers["cache-control"], "no-cache");
        let sid = h.headers["mcp-session-id"].to_str().expect("ascii");
        assert!(!sid.contains("upstream-sid"), "sealed, not readable: {sid}");
        let pin = SessionSeal::new(&[1u8; 32])
            .open(
                ("", ""),
                Bound {
                    upstream: "u",
                    route: "/mcp",
                },
                sid.as_bytes(),
            )
            .expect("opens");
        assert_eq!(
            (&*pin.replica, pin.id.as_slice()),
            ("0a0b0c0d", &b"upstream-sid"[..])
        );
    }

    #[test]
    fn http10_clients_never_get_chunked_encoding() {
        let u = up(200, &[("content-type", "text/event-stream")]);
        let mut cx = Ctx::new(None);
        let (h, f) = build_for(&u, false, true, &mut cx);
        assert!(f.open_ended);
        assert!(!h.headers.contains_key("transfer-encoding"));
        assert!(cx.close, "close-delimited");
        let json = up(
            200,
            &[
                ("content-type", "application/json"),
                ("content-length", "20"),
            ],
        );
        let mut cx = Ctx::new(None);
        let (h, f) = build_for(&json, true, true, &mut cx);
        assert!(
            !h.headers.contains_key("content-length"),
            "a rewritten body's length changes"
        );
        assert!(!h.headers.contains_key("transfer-encoding"));
        assert!(f.open_ended && cx.close);
    }

    #[test]
    fn a_successful_delete_is_answered_200_or_204() {
        for (from, to) in [(202, 204), (200, 200), (204, 204), (404, 404)] {
            let mut cx = Ctx::new(None);
            cx.op = Op::EndSession;
            let (h, f) = build_for(&up(from, &[("content-length", "0")]), false, false, &mut cx);
            assert_eq!(h.status.as_u16(), to, "{from}");
            assert_eq!(f.no_body, from == 202);
            assert_eq!(cx.status, to);
        }
    }

    #[test]
    fn an_upstream_session_id_outside_visible_ascii_is_refused() {
        let mut u = up(200, &[]);
        u.append_header(
            "mcp-session-id",
            http::HeaderValue::from_bytes(b"bad\xff").expect("value"),
        )
        .expect("header");
        let seal = SessionSeal::new(&[1u8; 32]);
        let sealing = Sealing {
            seal: &seal,
            owner: ("", ""),
            bound: Bound {
                upstream: "u",
                route: "/mcp",
            },
            replica: "0a0b0c0d",
            presented: None,
            moved: None,
        };
        assert!(build(&u, Some(&sealing), false, false, &mut Ctx::new(None)).is_err());
    }
}
