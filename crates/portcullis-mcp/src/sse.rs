//! Server-sent events, incrementally: split a byte stream into events whatever the
//! chunk boundaries (LF, CRLF or CR line endings), read an event's fields, and write
//! an event back with new data. Used where the gateway must look inside a stream (list
//! filtering); everything else is relayed byte for byte.

/// One event as it arrived: its raw bytes (blank line included) and its fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// The bytes as received, to pass through unchanged.
    pub raw: Vec<u8>,
    /// The `data:` lines joined with `\n`; `None` when the event had no data line.
    pub data: Option<String>,
    /// The `id:` field, if any.
    pub id: Option<String>,
    /// The `event:` field, if any.
    pub event: Option<String>,
}

impl Event {
    /// The event with `data` replaced, other fields kept, LF line endings.
    pub fn with_data(&self, data: &str) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 32);
        if let Some(e) = &self.event {
            out.extend_from_slice(b"event: ");
            out.extend_from_slice(e.as_bytes());
            out.push(b'\n');
        }
        if let Some(id) = &self.id {
            out.extend_from_slice(b"id: ");
            out.extend_from_slice(id.as_bytes());
            out.push(b'\n');
        }
        for line in data.split('\n') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.push(b'\n');
        out
    }
}

/// An event grew past the limit before it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTooLarge(pub usize);

/// Splits a stream into [`Event`]s.
#[derive(Debug)]
pub struct Splitter {
    buf: Vec<u8>,
    /// Where scanning for the next line ending resumes.
    scanned: usize,
    /// Start of the current (unfinished) line.
    line_start: usize,
    max_event: usize,
}

impl Splitter {
    /// A splitter refusing events larger than `max_event` bytes.
    pub fn new(max_event: usize) -> Splitter {
        Splitter {
            buf: Vec::new(),
            scanned: 0,
            line_start: 0,
            max_event,
        }
    }

    /// Feeds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, EventTooLarge> {
        self.buf.extend_from_slice(chunk);
        let events = self.scan(false);
        if self.buf.len() > self.max_event {
            return Err(EventTooLarge(self.max_event));
        }
        Ok(events)
    }

    /// The stream ended: completes an event whose last line ending was a lone CR.
    pub fn finish(&mut self) -> Vec<Event> {
        self.scan(true)
    }

    fn scan(&mut self, at_end: bool) -> Vec<Event> {
        let mut events = Vec::new();
        let mut event_start = 0;
        let mut i = self.scanned;
        while i < self.buf.len() {
            let b = self.buf[i];
            if b != b'\n' && b != b'\r' {
                i += 1;
                continue;
            }
            let mut end = i + 1;
            if b == b'\r' {
                match self.buf.get(i + 1) {
                    Some(b'\n') => end = i + 2,
                    Some(_) => {}
                    // A CR at the very end: its LF may be in the next chunk.
                    None if !at_end => break,
                    None => {}
                }
            }
            if i == self.line_start {
                events.push(parse_event(&self.buf[event_start..end]));
                event_start = end;
            }
            self.line_start = end;
            i = end;
        }
        self.buf.drain(..event_start);
        self.scanned = i - event_start;
        self.line_start -= event_start;
        events
    }

    /// Bytes of an event that never ended (a stream cut mid-event).
    pub fn remainder(&self) -> &[u8] {
        &self.buf
    }
}

/// Reads one event's fields from its raw bytes.
pub(crate) fn parse_event(raw: &[u8]) -> Event {
    let text = String::from_utf8_lossy(raw);
    let mut data: Option<String> = None;
    let mut id = None;
    let mut event = None;
    for line in text.split(['\n', '\r']) {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => data = Some(value.to_owned()),
            },
            "id" => id = Some(value.to_owned()),
            "event" => event = Some(value.to_owned()),
            _ => {}
        }
    }
    Event {
        raw: raw.to_vec(),
        data,
        id,
        event,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b": comment\nevent: message\nid: 7\ndata: {\"a\":\ndata: 1}\n\ndata: two\r\n\r\nretry: 5\rdata: three\r\r";

    fn all_at_once(s: &[u8]) -> Vec<Event> {
        let mut sp = Splitter::new(1 << 20);
        let mut ev = sp.push(s).expect("fits");
        ev.extend(sp.finish());
        ev
    }

    #[test]
    fn events_split_on_every_line_ending_and_keep_their_fields() {
        let ev = all_at_once(STREAM);
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[0].data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(
            (ev[0].id.as_deref(), ev[0].event.as_deref()),
            (Some("7"), Some("message"))
        );
        assert_eq!(ev[1].data.as_deref(), Some("two"));
        assert_eq!(ev[2].data.as_deref(), Some("three"));
        let joined: Vec<u8> = ev.iter().flat_map(|e| e.raw.clone()).collect();
        assert_eq!(joined, STREAM, "raw bytes pass through exactly");
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let whole = all_at_once(STREAM);
        for size in 1..STREAM.len() {
            let mut s = Splitter::new(1 << 20);
            let mut got = Vec::new();
            for chunk in STREAM.chunks(size) {
                got.extend(s.push(chunk).expect("fits"));
            }
            got.extend(s.finish());
            assert_eq!(got, whole, "chunks of {size}");
            assert!(s.remainder().is_empty());
        }
    }

    #[test]
    fn a_crlf_split_across_chunks_is_one_line_ending() {
        let mut s = Splitter::new(1024);
        let mut got = s.push(b"data: x\r\n\r").expect("fits");
        got.extend(s.push(b"\ndata: y\n\n").expect("fits"));
        let data: Vec<_> = got.iter().map(|e| e.data.clone()).collect();
        assert_eq!(data, [Some("x".into()), Some("y".into())]);
    }

    #[test]
    fn oversized_and_unfinished_events_are_reported() {
        let mut s = Splitter::new(16);
        assert_eq!(s.push(&[b'a'; 17]), Err(EventTooLarge(16)));
        let mut s = Splitter::new(1024);
        assert!(s.push(b"data: cut").expect("fits").is_empty());
        assert_eq!(s.remainder(), b"data: cut");
        let ev = all_at_once(b"\xff\xfe\n\n");
        assert_eq!(
            ev.len(),
            1,
            "invalid UTF-8 is an event without fields, not a panic"
        );
    }

    #[test]
    fn rewriting_keeps_id_and_event() {
        let ev = &all_at_once(STREAM)[0];
        let out = ev.with_data("{\"b\":2}");
        assert_eq!(out, b"event: message\nid: 7\ndata: {\"b\":2}\n\n");
        let again = all_at_once(&out);
        assert_eq!(again[0].data.as_deref(), Some("{\"b\":2}"));
    }
}
