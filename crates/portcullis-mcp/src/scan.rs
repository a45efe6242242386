//! Server-sent events read as they stream, each classified by its JSON-RPC head (a
//! response, or a request or notification and its method) from the first bytes of its
//! data. A gateway can then pass most events on byte for byte as they arrive, whatever
//! their size, and hold whole only the few it must judge or rewrite.
//!
//! The scan goes on over the rest of every event at the top level of its JSON only,
//! building nothing, so an event whose head turns out ambiguous (`method`, `id`,
//! `result` or `error` written twice, or a `method` beside a `result`) is caught before
//! its terminating blank line is sent, which is when a client would act on it.

use crate::sse::Event;

/// How many bytes of an event are looked at for its head before it is called
/// [`Head::Unknown`].
pub const HEAD_WINDOW: usize = 64 * 1024;

/// What the first bytes of an event's data say it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Head {
    /// A JSON-RPC response: `result` or `error` at the top level.
    Response,
    /// A request or notification with this method (whether it carries an `id` is
    /// known only at its end).
    Method(String),
    /// A JSON array (a batch of messages).
    Batch,
    /// No data, or data that is neither a JSON object nor an array (a priming event, a
    /// comment).
    Opaque,
    /// A JSON object whose head was not found within [`HEAD_WINDOW`] bytes, or which
    /// ended without `method`, `result` or `error`.
    Unknown,
}

/// What the scanner does with an event once its head is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Send its bytes on as they arrive.
    Stream,
    /// Hold it until it ends, if it fits in the limit; past the limit, stream the rest.
    Hold,
    /// It must be seen whole: hold it; past the limit it is dropped.
    Whole,
}

/// Where a [`Scanner`]'s output goes.
pub trait Sink {
    /// The head of the event being read is known. Called once per event, before any
    /// of its bytes are handed on (not at all for an event that ends undecided: it
    /// arrives whole through [`Sink::event`]).
    fn decide(&mut self, head: &Head) -> Mode;
    /// Bytes to send on now.
    fn bytes(&mut self, bytes: &[u8]);
    /// A held event, complete (blank line included). `ambiguous` says its top-level keys
    /// contradict each other (see the module docs).
    fn event(&mut self, event: Event, head: &Head, ambiguous: bool);
    /// A streamed event turned out ambiguous at its end; its terminating blank line was
    /// withheld, so no client has acted on it yet.
    fn ambiguous(&mut self);
    /// A [`Mode::Whole`] event grew past the limit and is dropped.
    fn oversized(&mut self, head: &Head);
    /// The current event ended, however it was handled (streamed, held, dropped), so
    /// the next call concerns a new event. Default: nothing.
    fn end(&mut self) {}
}

/// What the scanner is doing with the current event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Its head is not known yet: its bytes are held.
    Undecided,
    Stream,
    Hold,
    Whole,
    /// An oversized [`Mode::Whole`] event: the rest of it is skipped.
    Dropping,
}

/// Which part of a line the scanner is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    /// Reading the field name; `len` bytes so far, `data` while they spell a prefix of
    /// `data`.
    Name { len: u8, data: bool },
    /// Just after `data:` (an optional space follows).
    DataStart,
    /// In a `data` value.
    Data,
    /// In the value of another field, or a comment.
    Other,
}

/// An incremental SSE event scanner (see the module docs).
#[derive(Debug)]
pub struct Scanner {
    strict: bool,
    limit: usize,
    at_line_start: bool,
    after_cr: bool,
    field: Field,
    state: State,
    held: Vec<u8>,
    top: TopScan,
    data_seen: bool,
}

impl Scanner {
    /// A scanner holding events of at most `limit` bytes. `strict` withholds the end of
    /// a streamed event whose head turns out ambiguous.
    pub fn new(limit: usize, strict: bool) -> Scanner {
        Scanner {
            strict,
            limit,
            at_line_start: true,
            after_cr: false,
            field: Field::Name { len: 0, data: true },
            state: State::Undecided,
            held: Vec::new(),
            top: TopScan::default(),
            data_seen: false,
        }
    }

    /// Whether the bytes handed on so far end at an event boundary (nothing of the
    /// current event has been streamed), so something else may be sent in between.
    pub fn at_boundary(&self) -> bool {
        self.state != State::Stream
    }

    /// Feeds a chunk of the stream.
    pub fn push(&mut self, chunk: &[u8], sink: &mut dyn Sink) {
        let mut span = 0;
        let mut i = 0;
        while i < chunk.len() {
            let b = chunk[i];
            if std::mem::take(&mut self.after_cr) && b == b'\n' {
                // The second half of a CRLF: part of the line ending already counted.
                i += 1;
                continue;
            }
            if b == b'\n' || b == b'\r' {
                self.after_cr = b == b'\r';
                if self.at_line_start {
                    self.route(&chunk[span..i], sink);
                    let mut end = i + 1;
                    if b == b'\r' && chunk.get(end) == Some(&b'\n') {
                        end += 1;
                        self.after_cr = false;
                    }
                    self.end_event(&chunk[i..end], sink);
                    span = end;
                    i = end;
                    continue;
                }
                if matches!(
                    self.field,
                    Field::Data | Field::DataStart | Field::Name { len: 4, data: true }
                ) {
                    self.data_seen = true;
                    self.top.feed(b'\n');
                }
                self.at_line_start = true;
                self.field = Field::Name { len: 0, data: true };
                i += 1;
                continue;
            }
            self.at_line_start = false;
            match self.field {
                Field::Name { len, data } => {
                    self.field = if b == b':' {
                        if len == 4 && data {
                            Field::DataStart
                        } else {
                            Field::Other
                        }
                    } else {
                        let data = data && usize::from(len) < 4 && b"data"[usize::from(len)] == b;
                        Field::Name {
                            len: len.saturating_add(1),
                            data,
                        }
                    };
                }
                Field::DataStart => {
                    self.field = Field::Data;
                    self.data_seen = true;
                    if b != b' ' {
                        self.top.feed(b);
                    }
                }
                Field::Data => self.top.feed(b),
                Field::Other => {}
            }
            i += 1;
            if self.state == State::Undecided
                && (self.top.head.is_some() || self.held.len() + (i - span) > HEAD_WINDOW)
            {
                self.route(&chunk[span..i], sink);
                span = i;
                if self.state == State::Undecided {
                    self.decide(sink);
                }
            }
        }
        self.route(&chunk[span..], sink);
    }

    /// The stream ended. An event it cut off is dropped when it had to be judged
    /// ([`Mode::Whole`], or undecided in a strict scanner), sent on otherwise.
    pub fn finish(&mut self, sink: &mut dyn Sink) {
        let held = std::mem::take(&mut self.held);
        let pass = match self.state {
            State::Hold => true,
            // Without data it cannot carry a message (line endings, comments).
            State::Undecided => !self.strict || !self.data_seen,
            State::Stream | State::Whole | State::Dropping => false,
        };
        if pass && !held.is_empty() {
            sink.bytes(&held);
        }
        self.reset();
    }

    fn decide(&mut self, sink: &mut dyn Sink) {
        // Frozen: what the rest of the event shows no longer changes how it is treated.
        let head = self.top.head.get_or_insert(Head::Unknown).clone();
        self.state = match sink.decide(&head) {
            Mode::Stream => State::Stream,
            Mode::Hold => State::Hold,
            Mode::Whole => State::Whole,
        };
        if self.state == State::Stream && !self.held.is_empty() {
            sink.bytes(&std::mem::take(&mut self.held));
        }
        self.check_limit(&head, sink);
    }

    /// Sends `bytes` of the current event where its state says.
    fn route(&mut self, bytes: &[u8], sink: &mut dyn Sink) {
        if bytes.is_empty() {
            return;
        }
        match self.state {
            State::Stream => sink.bytes(bytes),
            State::Dropping => {}
            State::Undecided | State::Hold | State::Whole => {
                self.held.extend_from_slice(bytes);
                if self.state == State::Undecided {
                    if self.held.len() > HEAD_WINDOW {
                        self.decide(sink);
                    }
                } else {
                    let head = self.top.head.clone().unwrap_or(Head::Unknown);
                    self.check_limit(&head, sink);
                }
            }
        }
    }

    fn check_limit(&mut self, head: &Head, sink: &mut dyn Sink) {
        if self.held.len() <= self.limit {
            return;
        }
        match self.state {
            State::Hold => {
                self.state = State::Stream;
                sink.bytes(&std::mem::take(&mut self.held));
            }
            State::Whole => {
                self.state = State::Dropping;
                self.held = Vec::new();
                sink.oversized(head);
            }
            _ => {}
        }
    }

    /// The blank line `terminator` ended the current event.
    fn end_event(&mut self, terminator: &[u8], sink: &mut dyn Sink) {
        let head = self.top.head.clone().unwrap_or(if self.top.object {
            Head::Unknown
        } else {
            Head::Opaque
        });
        let ambiguous = self.top.ambiguous();
        match self.state {
            State::Stream => {
                if self.strict && ambiguous {
                    sink.ambiguous();
                } else {
                    sink.bytes(terminator);
                }
            }
            State::Dropping => {}
            State::Undecided | State::Hold | State::Whole => {
                self.held.extend_from_slice(terminator);
                let event = crate::sse::parse_event(&self.held);
                self.held.clear();
                sink.event(event, &head, ambiguous);
            }
        }
        sink.end();
        self.reset();
    }

    fn reset(&mut self) {
        self.state = State::Undecided;
        self.held.clear();
        self.top = TopScan::default();
        self.data_seen = false;
        self.at_line_start = true;
        self.field = Field::Name { len: 0, data: true };
    }
}

/// Where the top-level scan of an event's JSON stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Expect {
    /// Before the first non-space byte.
    #[default]
    Start,
    /// A key (or the end of the object).
    Key,
    /// The colon after a key.
    Colon,
    /// A value.
    Value,
    /// Inside a number, `true`, `false` or `null`.
    Scalar,
    /// A comma or the end of the object.
    After,
    /// Past the end of the top-level object, or not an object: nothing more to learn.
    Done,
}

/// What a string being read at the top level is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Text {
    /// Not being read (or read without keeping it).
    #[default]
    Skipped,
    /// A key.
    Key,
    /// The value of `method`.
    Method,
}

/// Longest key kept while scanning (longer keys are none of the ones that matter).
const MAX_KEY: usize = 16;
/// Longest method kept.
const MAX_METHOD: usize = 256;

/// A scanner of the top level of one JSON object, fed byte by byte.
#[derive(Debug, Default)]
struct TopScan {
    expect: Expect,
    /// Whether the data started a JSON object.
    object: bool,
    /// Nesting depth of the value being skipped (0 at the top level).
    depth: u32,
    in_string: bool,
    escaped: bool,
    /// Hex digits of a `\u` escape still to come, and the code so far.
    unicode: (u8, u32),
    text: Text,
    buf: Vec<u8>,
    /// The key whose value comes next (one of `method`, `id`, `result`, `error`, or
    /// none of them).
    key: Option<Key>,
    counts: [u8; 4],
    head: Option<Head>,
}

/// The top-level keys that decide what a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Method = 0,
    Id = 1,
    Result = 2,
    Error = 3,
}

impl TopScan {
    fn ambiguous(&self) -> bool {
        let [method, id, result, error] = self.counts;
        method > 1 || id > 1 || result + error > 1 || (method > 0 && result + error > 0)
    }

    fn feed(&mut self, b: u8) {
        if self.in_string {
            self.string_byte(b);
            return;
        }
        if self.depth > 0 {
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth = self.depth.saturating_add(1),
                b'}' | b']' => {
                    self.depth -= 1;
                    if self.depth == 0 {
                        self.expect = Expect::After;
                    }
                }
                _ => {}
            }
            return;
        }
        let space = matches!(b, b' ' | b'\t' | b'\n' | b'\r');
        match self.expect {
            Expect::Done => {}
            Expect::Start => match b {
                _ if space => {}
                b'{' => {
                    self.object = true;
                    self.expect = Expect::Key;
                }
                b'[' => {
                    self.head = Some(Head::Batch);
                    self.expect = Expect::Done;
                }
                _ => {
                    self.head = Some(Head::Opaque);
                    self.expect = Expect::Done;
                }
            },
            Expect::Key => match b {
                _ if space => {}
                b'"' => self.start_string(Text::Key),
                _ => self.expect = Expect::Done,
            },
            Expect::Colon => match b {
                _ if space => {}
                b':' => self.expect = Expect::Value,
                _ => self.expect = Expect::Done,
            },
            Expect::Value => {
                if space {
                    return;
                }
                let key = self.key.take();
                if let Some(k) = key {
                    let c = &mut self.counts[k as usize];
                    *c = c.saturating_add(1);
                    if matches!(k, Key::Result | Key::Error) && self.head.is_none() {
                        self.head = Some(Head::Response);
                    }
                }
                match b {
                    b'"' if key == Some(Key::Method) => self.start_string(Text::Method),
                    b'"' => self.start_string(Text::Skipped),
                    b'{' | b'[' => self.depth = 1,
                    _ => self.expect = Expect::Scalar,
                }
            }
            Expect::Scalar => match b {
                b',' => self.expect = Expect::Key,
                b'}' => self.expect = Expect::Done,
                _ if space => self.expect = Expect::After,
                _ => {}
            },
            Expect::After => match b {
                _ if space => {}
                b',' => self.expect = Expect::Key,
                _ => self.expect = Expect::Done,
            },
        }
    }

    fn start_string(&mut self, text: Text) {
        self.in_string = true;
        self.text = text;
        self.buf.clear();
    }

    fn string_byte(&mut self, b: u8) {
        if self.unicode.0 > 0 {
            let digit = (b as char).to_digit(16).unwrap_or(0);
            self.unicode = (self.unicode.0 - 1, self.unicode.1 * 16 + digit);
            if self.unicode.0 == 0 {
                let c = char::from_u32(self.unicode.1).unwrap_or('\u{fffd}');
                let mut tmp = [0u8; 4];
                self.keep(c.encode_utf8(&mut tmp).as_bytes());
            }
            return;
        }
        if self.escaped {
            self.escaped = false;
            let c = match b {
                b'u' => {
                    self.unicode = (4, 0);
                    return;
                }
                b'n' => b'\n',
                b't' => b'\t',
                b'r' => b'\r',
                b'b' => 8,
                b'f' => 12,
                other => other,
            };
            self.keep(&[c]);
            return;
        }
        match b {
            b'\\' => self.escaped = true,
            b'"' => {
                self.in_string = false;
                self.end_string();
            }
            _ => self.keep(&[b]),
        }
    }

    fn keep(&mut self, bytes: &[u8]) {
        let max = match self.text {
            Text::Skipped => return,
            Text::Key => MAX_KEY,
            Text::Method => MAX_METHOD,
        };
        if self.buf.len() + bytes.len() <= max {
            self.buf.extend_from_slice(bytes);
        } else {
            // Too long to be a key that matters (or a real method): remembered as none.
            self.buf.clear();
            self.buf.push(0);
        }
    }

    fn end_string(&mut self) {
        if self.depth > 0 {
            return;
        }
        match std::mem::take(&mut self.text) {
            Text::Key => {
                self.key = match self.buf.as_slice() {
                    b"method" => Some(Key::Method),
                    b"id" => Some(Key::Id),
                    b"result" => Some(Key::Result),
                    b"error" => Some(Key::Error),
                    _ => None,
                };
                self.expect = Expect::Colon;
            }
            Text::Method => {
                if self.head.is_none() {
                    let m = String::from_utf8_lossy(&self.buf).into_owned();
                    self.head = Some(Head::Method(m));
                }
                self.expect = Expect::After;
            }
            Text::Skipped => self.expect = Expect::After,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records what the scanner hands on, deciding by a fixed rule.
    struct Record {
        out: Vec<u8>,
        heads: Vec<Head>,
        events: Vec<(String, Head, bool)>,
        ambiguous: usize,
        oversized: usize,
        /// Heads that are held whole; everything else streams.
        whole: fn(&Head) -> Mode,
    }

    impl Record {
        fn new(whole: fn(&Head) -> Mode) -> Record {
            Record {
                out: Vec::new(),
                heads: Vec::new(),
                events: Vec::new(),
                ambiguous: 0,
                oversized: 0,
                whole,
            }
        }
    }

    impl Sink for Record {
        fn decide(&mut self, head: &Head) -> Mode {
            self.heads.push(head.clone());
            (self.whole)(head)
        }
        fn bytes(&mut self, bytes: &[u8]) {
            self.out.extend_from_slice(bytes);
        }
        fn event(&mut self, event: Event, head: &Head, ambiguous: bool) {
            self.out.extend_from_slice(&event.raw);
            self.events.push((
                event.data.clone().unwrap_or_default(),
                head.clone(),
                ambiguous,
            ));
        }
        fn ambiguous(&mut self) {
            self.ambiguous += 1;
        }
        fn oversized(&mut self, _: &Head) {
            self.oversized += 1;
        }
    }

    fn stream_all(_: &Head) -> Mode {
        Mode::Stream
    }

    fn requests_whole(h: &Head) -> Mode {
        match h {
            Head::Method(m) if !m.starts_with("notifications/") => Mode::Whole,
            _ => Mode::Stream,
        }
    }

    const STREAM: &str = "event: message\nid: 1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{\"progress\":1}}\n\n\
: keep-alive\n\n\
data: {\"jsonrpc\":\"2.0\",\"id\":\"s1\",\"method\":\"sampling/createMessage\",\"params\":{\"messages\":[]}}\n\n\
data: {\"jsonrpc\":\"2.0\",\n\
data:  \"id\":7,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"a \\\"quoted\\\" }{ text\"}]}}\n\n";

    fn scan(chunks: &[&[u8]], whole: fn(&Head) -> Mode) -> Record {
        let mut rec = Record::new(whole);
        let mut s = Scanner::new(1 << 20, true);
        for c in chunks {
            s.push(c, &mut rec);
        }
        s.finish(&mut rec);
        rec
    }

    #[test]
    fn events_are_classified_by_their_head_and_pass_byte_for_byte() {
        let rec = scan(&[STREAM.as_bytes()], requests_whole);
        assert_eq!(String::from_utf8_lossy(&rec.out), STREAM);
        assert_eq!(
            rec.heads,
            [
                Head::Method("notifications/progress".into()),
                Head::Method("sampling/createMessage".into()),
                Head::Response,
            ]
        );
        // The comment ends undecided (no data) and arrives as an event; the request
        // is held whole.
        assert_eq!(rec.events.len(), 2, "{:?}", rec.events);
        assert_eq!(rec.events[0].1, Head::Opaque);
        assert_eq!(
            rec.events[1].1,
            Head::Method("sampling/createMessage".into())
        );
        assert!(rec.events[1].0.contains("messages"));
        assert_eq!(rec.ambiguous, 0);
    }

    #[test]
    fn chunk_boundaries_and_line_endings_do_not_matter() {
        let whole = scan(&[STREAM.as_bytes()], requests_whole);
        for size in 1..40 {
            let chunks: Vec<&[u8]> = STREAM.as_bytes().chunks(size).collect();
            let got = scan(&chunks, requests_whole);
            assert_eq!(got.out, whole.out, "chunks of {size}");
            assert_eq!(got.heads, whole.heads, "chunks of {size}");
        }
        for ending in ["\r\n", "\r"] {
            let text = STREAM.replace('\n', ending);
            for size in [1, 2, 3, 7, 1000] {
                let chunks: Vec<&[u8]> = text.as_bytes().chunks(size).collect();
                let got = scan(&chunks, requests_whole);
                assert_eq!(got.out, text.as_bytes(), "{ending:?} chunks of {size}");
                assert_eq!(got.heads, whole.heads, "{ending:?} chunks of {size}");
                assert_eq!(got.events.len(), 2, "{ending:?} chunks of {size}");
            }
        }
    }

    #[test]
    fn a_streamed_event_is_sent_as_it_arrives_before_it_ends() {
        let mut rec = Record::new(stream_all);
        let mut s = Scanner::new(64, true);
        s.push(b"data: {\"id\":1,\"result\":{\"text\":\"", &mut rec);
        let big = vec![b'x'; 10_000];
        s.push(&big, &mut rec);
        assert!(
            rec.out.len() > 10_000,
            "streamed past the limit: {}",
            rec.out.len()
        );
        assert!(!s.at_boundary());
        s.push(b"\"}}\n\n", &mut rec);
        assert!(s.at_boundary());
        assert!(rec.out.ends_with(b"\"}}\n\n"));
    }

    #[test]
    fn heads_are_read_however_the_json_is_spelled() {
        let cases = [
            (r#"{"res\u0075lt":{}}"#, Head::Response),
            (r#"{ "error" : {"code":1}, "id": 2 }"#, Head::Response),
            (
                r#"{"params":{"method":"x","result":1},"method":"roots/list","id":1}"#,
                Head::Method("roots/list".into()),
            ),
            (
                r#"{"id":"a\"b","meth\u006fd":"ping"}"#,
                Head::Method("ping".into()),
            ),
            (r#"{"jsonrpc":"2.0","id":1}"#, Head::Unknown),
            ("[1,2]", Head::Batch),
            ("not json", Head::Opaque),
            ("", Head::Opaque),
        ];
        for (data, head) in cases {
            let text = format!("data: {data}\n\n");
            let rec = scan(&[text.as_bytes()], |_| Mode::Whole);
            let got = rec
                .heads
                .first()
                .or(rec.events.first().map(|e| &e.1))
                .cloned();
            assert_eq!(got, Some(head), "{data}");
            assert_eq!(rec.out, text.as_bytes(), "{data}");
        }
    }

    #[test]
    fn ambiguous_messages_are_caught_before_their_end() {
        for data in [
            r#"{"method":"notifications/progress","method":"sampling/createMessage","id":1}"#,
            r#"{"id":1,"result":{},"method":"sampling/createMessage"}"#,
            r#"{"id":1,"result":{},"error":{}}"#,
            r#"{"id":1,"id":2,"result":{}}"#,
        ] {
            let text = format!("data: {data}\n\n");
            let rec = scan(&[text.as_bytes()], stream_all);
            assert_eq!(rec.ambiguous, 1, "{data}");
            assert!(
                !rec.out.ends_with(b"\n\n"),
                "the blank line is withheld: {data}"
            );
            let rec = scan(&[text.as_bytes()], |_| Mode::Whole);
            assert_eq!(rec.events.len(), 1);
            assert!(rec.events[0].2, "held and flagged: {data}");
        }
        let fine = "data: {\"id\":1,\"result\":{\"method\":\"x\",\"id\":3}}\n\n";
        assert_eq!(scan(&[fine.as_bytes()], stream_all).ambiguous, 0);
    }

    #[test]
    fn held_events_past_the_limit_stream_or_drop() {
        let big = format!(
            "data: {{\"method\":\"x/y\",\"params\":\"{}\"}}\n\n",
            "a".repeat(500)
        );
        let mut rec = Record::new(|_| Mode::Hold);
        let mut s = Scanner::new(100, false);
        s.push(big.as_bytes(), &mut rec);
        assert_eq!(
            rec.out,
            big.as_bytes(),
            "a held event that outgrows the limit streams"
        );
        let mut rec = Record::new(|_| Mode::Whole);
        let mut s = Scanner::new(100, true);
        s.push(big.as_bytes(), &mut rec);
        s.push(b"data: {\"method\":\"a\"}\n\n", &mut rec);
        assert_eq!(rec.oversized, 1);
        assert_eq!(rec.events.len(), 1, "the next event is read again");
        assert_eq!(rec.out, b"data: {\"method\":\"a\"}\n\n");
    }

    #[test]
    fn a_head_not_found_in_the_window_is_unknown() {
        let text = format!(
            "data: {{\"padding\":\"{}\",\"method\":\"late\"}}\n\n",
            "p".repeat(HEAD_WINDOW + 10)
        );
        let rec = scan(&[text.as_bytes()], stream_all);
        assert_eq!(rec.heads, [Head::Unknown]);
        assert_eq!(rec.out, text.as_bytes());
    }

    #[test]
    fn a_stream_cut_mid_event_drops_what_had_to_be_judged() {
        let mut rec = Record::new(|_| Mode::Whole);
        let mut s = Scanner::new(1 << 20, true);
        s.push(
            b"data: {\"id\":\"s\",\"method\":\"sampling/createMessage\"",
            &mut rec,
        );
        s.finish(&mut rec);
        assert!(rec.out.is_empty());
        let mut rec = Record::new(|_| Mode::Hold);
        let mut s = Scanner::new(1 << 20, false);
        s.push(b"data: {\"method\":\"notifications/progress\"", &mut rec);
        s.finish(&mut rec);
        assert_eq!(rec.out, b"data: {\"method\":\"notifications/progress\"");
    }

    #[test]
    fn hostile_bytes_are_scanned_without_panics() {
        let inputs: [&[u8]; 6] = [
            b"\xff\xfe\n\n",
            b"data: {\"\\u12\"\n\n",
            b"data: {\"method\":\"\\uD800\\uDC00\"}\n\n",
            b"data: {{{{{{{{{{\n\n",
            b"data: }}}}]]]]\n\n",
            b"\r\r\r\n\n\n:\n\ndata\n\n",
        ];
        for input in inputs {
            for size in [1, 3, 100] {
                let chunks: Vec<&[u8]> = input.chunks(size).collect();
                let rec = scan(&chunks, requests_whole);
                assert_eq!(rec.out, input, "{input:?}");
            }
        }
    }
}
