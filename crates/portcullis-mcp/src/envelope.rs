//! The JSON-RPC envelope, parsed once per POST body without materialising arguments.
//!
//! Only `jsonrpc`, `id`, `method` and the routing facts inside `params` (`name`, `uri`,
//! `_meta`) are read; `params` itself stays a borrowed [`RawValue`] so a tool call's
//! arguments are scanned for validity but never built into a `serde_json::Value`.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// Longest request id the gateway accepts, in bytes of its JSON text. Ids are echoed in
/// errors, logged and later mapped between peers, so they must stay small.
pub const MAX_ID_LEN: usize = 256;

/// Deepest nesting of arrays and objects accepted in a body. Upstream parsers may recurse,
/// so the gateway refuses what would overflow a naive one; 128 is serde_json's own limit.
pub const MAX_DEPTH: usize = 128;

/// What kind of JSON-RPC message an envelope is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Has `method` and `id`: expects a response.
    Request,
    /// Has `method`, no `id`.
    Notification,
    /// Has `id` and `result` or `error`: answers a server-to-client request.
    Response,
}

/// One JSON-RPC message, borrowed from the body it was parsed from.
#[derive(Debug, Clone)]
pub struct Envelope<'a> {
    /// Request, notification or response.
    pub kind: Kind,
    /// The id's JSON text (a string with its quotes, or an integer), if any.
    pub id: Option<&'a RawValue>,
    /// The method, for requests and notifications.
    pub method: Option<Cow<'a, str>>,
    /// `params` as raw JSON, unparsed.
    pub params: Option<&'a RawValue>,
    /// The target a policy decides on: `params.name` of `tools/call` and `prompts/get`,
    /// `params.uri` of `resources/read`, `resources/subscribe`, `resources/unsubscribe`.
    pub target: Option<Cow<'a, str>>,
    /// `params._meta["io.modelcontextprotocol/protocolVersion"]` (2026-07-28 requests).
    pub meta_protocol_version: Option<Cow<'a, str>>,
}

/// A POST body: one message, or a batch (2025-03-26 only).
#[derive(Debug, Clone)]
pub enum Body<'a> {
    /// The usual case: exactly one JSON-RPC message.
    Single(Envelope<'a>),
    /// A JSON array of messages.
    Batch(Vec<Envelope<'a>>),
}

/// Why a body is not an acceptable JSON-RPC message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvelopeError {
    /// Not JSON at all (syntax, truncation, invalid UTF-8, nesting past the limit): -32700.
    Parse(String),
    /// JSON, but not a valid JSON-RPC 2.0 message: -32600. Carries the id when readable.
    Invalid {
        /// The id's JSON text, when the message had a usable one.
        id: Option<String>,
        /// What is wrong, for the error message.
        reason: String,
    },
    /// A JSON-RPC request whose params lack what its method needs: -32602.
    InvalidParams {
        /// The request's id JSON text.
        id: Option<String>,
        /// What is wrong, for the error message.
        reason: String,
    },
}

impl std::fmt::Display for EnvelopeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EnvelopeError::Parse(r) => write!(f, "parse error: {r}"),
            EnvelopeError::Invalid { reason, .. } => write!(f, "invalid request: {reason}"),
            EnvelopeError::InvalidParams { reason, .. } => write!(f, "invalid params: {reason}"),
        }
    }
}

impl std::error::Error for EnvelopeError {}

impl EnvelopeError {
    /// The id to echo in the error response, if one could be read.
    pub fn id(&self) -> Option<&str> {
        match self {
            EnvelopeError::Parse(_) => None,
            EnvelopeError::Invalid { id, .. } | EnvelopeError::InvalidParams { id, .. } => {
                id.as_deref()
            }
        }
    }
}

/// The fields of a message as they arrive; `Some` even for an explicit `null`.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default)]
    jsonrpc: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "present")]
    params: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    result: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

/// The routing facts inside `params`; every other member is skipped unbuilt.
#[derive(Deserialize)]
struct ParamsHead<'a> {
    #[serde(borrow, default)]
    name: Option<&'a RawValue>,
    #[serde(borrow, default)]
    uri: Option<&'a RawValue>,
    #[serde(borrow, default, rename = "_meta")]
    meta: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MetaHead<'a> {
    #[serde(borrow, default, rename = "io.modelcontextprotocol/protocolVersion")]
    protocol_version: Option<Cow<'a, str>>,
}

/// Lets an explicit `null` count as present, unlike serde's `Option` default.
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

impl<'a> Body<'a> {
    /// Parses a POST body. Leading whitespace decides between a single message and a batch.
    pub fn parse(bytes: &'a [u8]) -> Result<Body<'a>, EnvelopeError> {
        if nesting_exceeds(bytes, MAX_DEPTH) {
            return Err(invalid(
                None,
                &format!("JSON nested deeper than {MAX_DEPTH} levels"),
            ));
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first == Some(&b'[') {
            let items: Vec<&'a RawValue> = serde_json::from_slice(bytes).map_err(classify)?;
            if items.is_empty() {
                return Err(invalid(None, "empty batch"));
            }
            let mut batch = Vec::with_capacity(items.len());
            for item in items {
                batch.push(Envelope::parse_str(item.get())?);
            }
            Ok(Body::Batch(batch))
        } else {
            Envelope::parse(bytes).map(Body::Single)
        }
    }

    /// The messages in this body, one or many.
    pub fn messages(&self) -> &[Envelope<'a>] {
        match self {
            Body::Single(e) => std::slice::from_ref(e),
            Body::Batch(v) => v,
        }
    }
}

impl<'a> Envelope<'a> {
    /// Parses exactly one JSON-RPC message from bytes.
    pub fn parse(bytes: &'a [u8]) -> Result<Envelope<'a>, EnvelopeError> {
        match serde_json::from_slice::<Wire<'a>>(bytes) {
            Ok(w) => Self::from_wire(w),
            Err(e) => Err(with_recovered_id(classify(e), || {
                serde_json::from_slice::<IdOnly>(bytes).ok()
            })),
        }
    }

    fn parse_str(s: &'a str) -> Result<Envelope<'a>, EnvelopeError> {
        match serde_json::from_str::<Wire<'a>>(s) {
            Ok(w) => Self::from_wire(w),
            Err(e) => Err(with_recovered_id(classify(e), || {
                serde_json::from_str::<IdOnly>(s).ok()
            })),
        }
    }

    fn from_wire(w: Wire<'a>) -> Result<Envelope<'a>, EnvelopeError> {
        let id_text = w.id.map(|r| r.get().to_owned());
        if w.jsonrpc.as_deref() != Some("2.0") {
            return Err(invalid(usable_id(w.id), "\"jsonrpc\" must be \"2.0\""));
        }
        if let Some(id) = w.id {
            check_id(id)?;
        }
        let kind = match (&w.method, w.id, w.result.is_some(), w.error.is_some()) {
            (Some(_), _, false, false) if w.id.is_some() => Kind::Request,
            (Some(_), None, false, false) => Kind::Notification,
            (None, Some(_), true, false) | (None, Some(_), false, true) => Kind::Response,
            (Some(_), _, _, _) => {
                return Err(invalid(id_text, "a request must not carry result or error"))
            }
            (None, None, _, _) => return Err(invalid(None, "message has neither method nor id")),
            (None, Some(_), _, _) => {
                return Err(invalid(
                    id_text,
                    "a response carries exactly one of result and error",
                ))
            }
        };
        if let Some(method) = &w.method {
            if method.is_empty() {
                return Err(invalid(id_text, "method must not be empty"));
            }
        }
        let mut env = Envelope {
            kind,
            id: w.id,
            method: w.method,
            params: w.params,
            target: None,
            meta_protocol_version: None,
        };
        if let Some(params) = w.params {
            env.read_params(params, id_text)?;
        } else if let Some((key, true)) = env.target_key() {
            return Err(EnvelopeError::InvalidParams {
                id: id_text,
                reason: format!("params.{key} is required"),
            });
        }
        Ok(env)
    }

    /// Which `params` member names this method's target, and whether every revision
    /// requires it. `resources/subscribe` and `unsubscribe` do not exist in 2026-07-28,
    /// where the upstream answers them with -32601; the gateway must not pre-empt that.
    fn target_key(&self) -> Option<(&'static str, bool)> {
        match self.method.as_deref()? {
            "tools/call" | "prompts/get" => Some(("name", true)),
            "resources/read" => Some(("uri", true)),
            "resources/subscribe" | "resources/unsubscribe" => Some(("uri", false)),
            _ => None,
        }
    }

    fn read_params(
        &mut self,
        params: &'a RawValue,
        id_text: Option<String>,
    ) -> Result<(), EnvelopeError> {
        let text = params.get();
        match text.as_bytes().first() {
            Some(b'{') => {}
            Some(b'[') => return Ok(()),
            _ => return Err(invalid(id_text, "params must be an object")),
        }
        // Valid JSON already (it was captured as a RawValue); only shape errors remain.
        let head: ParamsHead<'a> =
            serde_json::from_str(text).map_err(|e| EnvelopeError::InvalidParams {
                id: id_text.clone(),
                reason: e.to_string(),
            })?;
        if let Some(meta) = head.meta {
            // A malformed _meta is the upstream's to judge; the gateway only reads the version.
            if let Ok(m) = serde_json::from_str::<MetaHead<'a>>(meta.get()) {
                self.meta_protocol_version = m.protocol_version;
            }
        }
        if let Some((key, required)) = self.target_key() {
            let raw = if key == "name" { head.name } else { head.uri };
            let value = raw
                .and_then(|r| serde_json::from_str::<Cow<'a, str>>(r.get()).ok())
                .filter(|s| !s.is_empty());
            match value {
                Some(v) => self.target = Some(v),
                None if !required => {}
                None => {
                    return Err(EnvelopeError::InvalidParams {
                        id: id_text,
                        reason: format!("params.{key} must be a non-empty string"),
                    })
                }
            }
        }
        Ok(())
    }

    /// The method, or "" for responses.
    pub fn method_str(&self) -> &str {
        self.method.as_deref().unwrap_or("")
    }
}

/// Whether arrays and objects nest deeper than `limit`, brackets in strings not counted.
/// Malformed input is left to the parser to report.
fn nesting_exceeds(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<Box<RawValue>>,
}

fn classify(e: serde_json::Error) -> EnvelopeError {
    use serde_json::error::Category;
    match e.classify() {
        Category::Data => invalid(None, &e.to_string()),
        Category::Syntax | Category::Eof | Category::Io => EnvelopeError::Parse(e.to_string()),
    }
}

/// For a message that is JSON but not JSON-RPC, echo its id when one is readable.
fn with_recovered_id(err: EnvelopeError, id: impl FnOnce() -> Option<IdOnly>) -> EnvelopeError {
    match err {
        EnvelopeError::Invalid { id: None, reason } => {
            let id = id().and_then(|i| i.id).and_then(|r| usable_id(Some(&r)));
            EnvelopeError::Invalid { id, reason }
        }
        other => other,
    }
}

fn usable_id(id: Option<&RawValue>) -> Option<String> {
    id.filter(|r| check_id(r).is_ok())
        .map(|r| r.get().to_owned())
}

fn invalid(id: Option<String>, reason: &str) -> EnvelopeError {
    EnvelopeError::Invalid {
        id,
        reason: reason.to_owned(),
    }
}

/// JSON-RPC ids in MCP are strings or integers, never null, and (here) bounded.
fn check_id(id: &RawValue) -> Result<(), EnvelopeError> {
    let text = id.get();
    if text.len() > MAX_ID_LEN {
        return Err(invalid(
            None,
            &format!("id is longer than {MAX_ID_LEN} bytes"),
        ));
    }
    let ok = match text.as_bytes().first() {
        Some(b'"') => true,
        Some(b'-' | b'0'..=b'9') => !text.contains(['.', 'e', 'E']),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(invalid(None, "id must be a string or an integer"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(s: &str) -> Envelope<'_> {
        Envelope::parse(s.as_bytes()).expect("valid message")
    }

    #[test]
    fn a_tool_call_yields_method_id_and_target_without_touching_arguments() {
        let e = one(
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi","deep":[[[1]]]}}}"#,
        );
        assert_eq!(e.kind, Kind::Request);
        assert_eq!(e.id.map(|r| r.get()), Some("7"));
        assert_eq!(e.method_str(), "tools/call");
        assert_eq!(e.target.as_deref(), Some("echo"));
        assert!(e.params.is_some_and(|p| p.get().contains("\"deep\"")));
    }

    #[test]
    fn resources_are_targeted_by_uri_and_escapes_are_decoded() {
        let e = one(
            r#"{"jsonrpc":"2.0","id":"a","method":"resources/read","params":{"uri":"file:\/\/x"}}"#,
        );
        assert_eq!(e.target.as_deref(), Some("file://x"));
    }

    #[test]
    fn notifications_and_responses_are_told_apart() {
        let n = one(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(n.kind, Kind::Notification);
        let r = one(r#"{"jsonrpc":"2.0","id":3,"result":{}}"#);
        assert_eq!(r.kind, Kind::Response);
        let err = one(r#"{"jsonrpc":"2.0","id":"x","error":{"code":1,"message":"m"}}"#);
        assert_eq!(err.kind, Kind::Response);
    }

    #[test]
    fn meta_protocol_version_is_read_for_stateless_requests() {
        let e = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","other":{"x":1}}}}"#,
        );
        assert_eq!(e.meta_protocol_version.as_deref(), Some("2026-07-28"));
    }

    #[test]
    fn malformed_json_is_a_parse_error() {
        for s in [
            "",
            "{",
            r#"{"jsonrpc":"2.0","id":1,"method":"ping""#,
            r#"{"jsonrpc":"2.0","id":1,"method":"ping"} trailing"#,
            "nul",
        ] {
            assert!(
                matches!(Envelope::parse(s.as_bytes()), Err(EnvelopeError::Parse(_))),
                "{s:?}"
            );
        }
    }

    #[test]
    fn invalid_utf8_is_a_parse_error() {
        let bytes = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"p\xffing\"}";
        assert!(matches!(
            Envelope::parse(bytes),
            Err(EnvelopeError::Parse(_))
        ));
    }

    #[test]
    fn deep_nesting_is_refused_not_a_stack_overflow() {
        let deep = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{}{}}}}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let got = Body::parse(deep.as_bytes());
        assert!(matches!(got, Err(EnvelopeError::Invalid { .. })));
        // Exactly at the limit, with brackets inside a string that must not count.
        let ok = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x[[[[","arguments":{}"[{{\\"{}}}}}"#,
            "[".repeat(MAX_DEPTH - 2),
            "]".repeat(MAX_DEPTH - 2)
        );
        assert!(Body::parse(ok.as_bytes()).is_ok());
    }

    #[test]
    fn json_that_is_not_json_rpc_is_invalid_and_keeps_a_readable_id() {
        let cases = [
            (r#"{"id":1,"method":"ping"}"#, Some("1")),
            (
                r#"{"jsonrpc":"1.0","id":"q","method":"ping"}"#,
                Some("\"q\""),
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":5}"#, Some("1")),
            (r#"{"jsonrpc":"2.0","id":null,"method":"ping"}"#, None),
            (r#"{"jsonrpc":"2.0","id":1.5,"method":"ping"}"#, None),
            (r#"{"jsonrpc":"2.0","id":{},"method":"ping"}"#, None),
            (r#"{"jsonrpc":"2.0"}"#, None),
            (r#"{"jsonrpc":"2.0","id":1}"#, Some("1")),
            (
                r#"{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":"x"}}"#,
                Some("1"),
            ),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"ping","result":{}}"#,
                Some("1"),
            ),
            (r#"{"jsonrpc":"2.0","id":1,"method":""}"#, Some("1")),
            (
                r#"{"jsonrpc":"2.0","id":1,"method":"x","params":3}"#,
                Some("1"),
            ),
            ("42", None),
            ("\"str\"", None),
        ];
        for (s, id) in cases {
            match Envelope::parse(s.as_bytes()) {
                Err(EnvelopeError::Invalid { id: got, .. }) => {
                    assert_eq!(got.as_deref(), id, "{s}")
                }
                other => panic!("{s}: expected Invalid, got {other:?}"),
            }
        }
    }

    #[test]
    fn duplicated_members_are_invalid() {
        let s = r#"{"jsonrpc":"2.0","id":1,"id":2,"method":"ping"}"#;
        assert!(matches!(
            Envelope::parse(s.as_bytes()),
            Err(EnvelopeError::Invalid { .. })
        ));
    }

    #[test]
    fn huge_ids_are_refused() {
        let s = format!(
            r#"{{"jsonrpc":"2.0","id":"{}","method":"ping"}}"#,
            "x".repeat(MAX_ID_LEN)
        );
        assert!(matches!(
            Envelope::parse(s.as_bytes()),
            Err(EnvelopeError::Invalid { id: None, .. })
        ));
        let s = format!(
            r#"{{"jsonrpc":"2.0","id":{},"method":"ping"}}"#,
            "9".repeat(300)
        );
        assert!(Envelope::parse(s.as_bytes()).is_err());
    }

    #[test]
    fn a_call_without_a_usable_name_is_invalid_params() {
        for s in [
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call"}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":5}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":""}}"#,
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/read","params":{"name":"x"}}"#,
        ] {
            assert!(
                matches!(
                    Envelope::parse(s.as_bytes()),
                    Err(EnvelopeError::InvalidParams { id: Some(_), .. })
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn subscribe_without_a_uri_is_left_to_the_upstream() {
        // Removed in 2026-07-28: the upstream's -32601 must come through.
        let e = one(r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{}}"#);
        assert_eq!(e.target, None);
        let e = one(
            r#"{"jsonrpc":"2.0","id":1,"method":"resources/subscribe","params":{"uri":"a://b"}}"#,
        );
        assert_eq!(e.target.as_deref(), Some("a://b"));
    }

    #[test]
    fn batches_parse_each_member_and_empty_batches_are_invalid() {
        let b = Body::parse(
            br#" [{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/x"}]"#,
        )
        .expect("batch");
        assert_eq!(b.messages().len(), 2);
        assert!(matches!(
            Body::parse(b"[]"),
            Err(EnvelopeError::Invalid { .. })
        ));
        assert!(matches!(
            Body::parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},"#),
            Err(EnvelopeError::Parse(_))
        ));
        assert!(Body::parse(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}, 3]"#).is_err());
    }

    #[test]
    fn truncation_at_every_byte_is_an_error_never_a_panic() {
        let s = br#"{"jsonrpc":"2.0","id":"abc","method":"tools/call","params":{"name":"echo","arguments":{"t":"\u00e9"}}}"#;
        for cut in 0..s.len() {
            assert!(Body::parse(&s[..cut]).is_err(), "cut at {cut}");
        }
        assert!(Body::parse(s).is_ok());
    }
}
