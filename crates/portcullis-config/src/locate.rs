//! Finds the line of a key path (`upstreams.demo.url`, `routes[1].upstream`) in YAML
//! text, so validation errors found after parsing can still name a line. It reads block
//! style YAML by indentation; for anything it cannot follow it answers `None`.

/// One step of a key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step<'a> {
    /// A mapping key.
    Key(&'a str),
    /// A sequence index.
    Index(usize),
}

/// The 1-based line where `path` is written; for a key that is absent (a missing
/// setting), the line of its deepest present parent; `None` if nothing matches.
pub(crate) fn line_of(text: &str, path: &[Step<'_>]) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    // The search window: lines [start, end) whose indentation exceeds `parent_indent`.
    let mut start = 0;
    let mut end = lines.len();
    let mut parent_indent: isize = -1;
    let mut found = None;
    for step in path {
        match step {
            Step::Key(key) => {
                let Some((line_no, indent)) = find_key(&lines, start, end, parent_indent, key)
                else {
                    return found;
                };
                found = Some(line_no + 1);
                parent_indent = indent as isize;
                start = line_no + 1;
                end = block_end(&lines, start, end, parent_indent);
            }
            Step::Index(i) => {
                let Some((line_no, dash)) = find_item(&lines, start, end, parent_indent, *i) else {
                    return found;
                };
                found = Some(line_no + 1);
                // The item's first key sits on the dash line itself.
                parent_indent = dash as isize;
                end = block_end(&lines, line_no + 1, end, parent_indent);
                start = line_no;
            }
        }
    }
    found
}

fn indent_of(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

fn is_content(line: &str) -> bool {
    let t = line.trim();
    !t.is_empty() && !t.starts_with('#')
}

fn block_end(lines: &[&str], start: usize, end: usize, indent: isize) -> usize {
    (start..end)
        .find(|&i| is_content(lines[i]) && (indent_of(lines[i]) as isize) <= indent)
        .unwrap_or(end)
}

fn find_key(
    lines: &[&str],
    start: usize,
    end: usize,
    parent: isize,
    key: &str,
) -> Option<(usize, usize)> {
    let mut level: Option<usize> = None;
    for (i, line) in lines.iter().enumerate().take(end).skip(start) {
        if !is_content(line) {
            continue;
        }
        let mut indent = indent_of(line);
        let mut rest = &line[indent..];
        if let Some(after) = rest.strip_prefix("- ") {
            indent += 2;
            rest = after;
        }
        if (indent as isize) <= parent {
            continue;
        }
        // Only keys at the block's own level count, not deeper ones.
        let lvl = *level.get_or_insert(indent);
        if indent != lvl {
            continue;
        }
        let k = rest.split(':').next().unwrap_or("").trim();
        let k = k.trim_matches(|c| c == '"' || c == '\'');
        if k == key && rest.contains(':') {
            return Some((i, indent));
        }
    }
    None
}

fn find_item(
    lines: &[&str],
    start: usize,
    end: usize,
    parent: isize,
    index: usize,
) -> Option<(usize, usize)> {
    let mut seen = 0;
    let mut level: Option<usize> = None;
    for (i, line) in lines.iter().enumerate().take(end).skip(start) {
        if !is_content(line) {
            continue;
        }
        let indent = indent_of(line);
        let rest = &line[indent..];
        if !(rest.starts_with("- ") || rest == "-") || (indent as isize) < parent {
            continue;
        }
        let lvl = *level.get_or_insert(indent);
        if indent != lvl {
            continue;
        }
        if seen == index {
            return Some((i, indent));
        }
        seen += 1;
    }
    None
}

/// A key written twice in one mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Duplicate {
    /// The 1-based line of the second occurrence.
    pub line: usize,
    /// Its dotted key path, e.g. `upstreams.demo.url` or `routes[0].path`.
    pub key: String,
    /// The key itself.
    pub leaf: String,
}

/// One open mapping or sequence while walking block YAML.
struct Frame {
    indent: usize,
    /// How this node is reached from its parent (`None` at the top).
    name: Option<String>,
    kind: FrameKind,
}

enum FrameKind {
    Map { keys: Vec<String> },
    Seq { items: usize },
}

/// The first key written twice in the same block mapping, if any. Flow collections and
/// the insides of block scalars are not looked into.
pub(crate) fn first_duplicate_key(text: &str) -> Option<Duplicate> {
    let mut frames: Vec<Frame> = Vec::new();
    // Lines indented past this belong to a block scalar (`key: |`) and are skipped.
    let mut scalar_above: Option<usize> = None;
    for (no, line) in text.lines().enumerate() {
        if !is_content(line) {
            continue;
        }
        let indent = indent_of(line);
        if let Some(floor) = scalar_above {
            if indent > floor {
                continue;
            }
            scalar_above = None;
        }
        let mut rest = &line[indent..];
        let mut key_indent = indent;
        while frames.last().is_some_and(|f| f.indent > indent) {
            frames.pop();
        }
        let is_item = rest.starts_with("- ") || rest == "-";
        if !is_item
            && frames
                .last()
                .is_some_and(|f| f.indent == indent && matches!(f.kind, FrameKind::Seq { .. }))
        {
            frames.pop();
        }
        if is_item {
            let item = match frames.last_mut() {
                Some(Frame {
                    indent: i,
                    kind: FrameKind::Seq { items },
                    ..
                }) if *i == indent => {
                    *items += 1;
                    *items - 1
                }
                _ => {
                    let name = last_key(&frames);
                    frames.push(Frame {
                        indent,
                        name,
                        kind: FrameKind::Seq { items: 1 },
                    });
                    0
                }
            };
            rest = rest
                .strip_prefix('-')
                .unwrap_or(rest)
                .trim_start_matches(' ');
            key_indent = indent + (line[indent..].len() - rest.len());
            let Some((key, value)) = key_of(rest) else {
                continue;
            };
            frames.push(Frame {
                indent: key_indent,
                name: Some(format!("[{item}]")),
                kind: FrameKind::Map {
                    keys: vec![key.to_owned()],
                },
            });
            if is_block_scalar(value) {
                scalar_above = Some(key_indent);
            }
            continue;
        }
        let Some((key, value)) = key_of(rest) else {
            continue;
        };
        match frames.last_mut() {
            Some(Frame {
                indent: i,
                kind: FrameKind::Map { keys },
                ..
            }) if *i == key_indent => {
                if keys.iter().any(|k| k == key) {
                    let mut path = dotted(&frames);
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                    return Some(Duplicate {
                        line: no + 1,
                        key: path,
                        leaf: key.to_owned(),
                    });
                }
                keys.push(key.to_owned());
            }
            _ => {
                let name = last_key(&frames);
                frames.push(Frame {
                    indent: key_indent,
                    name,
                    kind: FrameKind::Map {
                        keys: vec![key.to_owned()],
                    },
                });
            }
        }
        if is_block_scalar(value) {
            scalar_above = Some(key_indent);
        }
    }
    None
}

/// `key: value` split, when the text is a mapping entry (quotes around the key dropped).
fn key_of(rest: &str) -> Option<(&str, &str)> {
    if rest.starts_with(['{', '[', '"', '\'', '&', '*', '!', '|', '>'])
        && !rest.starts_with(['"', '\''])
    {
        return None;
    }
    let colon = rest
        .char_indices()
        .find(|&(i, c)| c == ':' && rest[i + 1..].chars().next().is_none_or(|n| n == ' '))?
        .0;
    let key = rest[..colon].trim().trim_matches(|c| c == '"' || c == '\'');
    if key.is_empty() || key.starts_with('#') {
        return None;
    }
    Some((key, rest[colon + 1..].trim()))
}

fn is_block_scalar(value: &str) -> bool {
    value.starts_with('|') || value.starts_with('>')
}

/// The name a new child node of the innermost mapping gets: its last key.
fn last_key(frames: &[Frame]) -> Option<String> {
    match frames.last() {
        Some(Frame {
            kind: FrameKind::Map { keys },
            ..
        }) => keys.last().cloned(),
        _ => None,
    }
}

fn dotted(frames: &[Frame]) -> String {
    let mut out = String::new();
    for name in frames.iter().filter_map(|f| f.name.as_deref()) {
        if !out.is_empty() && !name.starts_with('[') {
            out.push('.');
        }
        out.push_str(name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = "\
listeners:
  public: 127.0.0.1:8080
routes:
  - path: /a
    upstream: one
  - path: /b
    # a comment
    upstream: two
upstreams:
  one:
    url: http://x
  two:
    url: http://y
    headers:
      url: not-this-one
";

    #[test]
    fn finds_nested_keys_and_sequence_items() {
        assert_eq!(
            line_of(YAML, &[Step::Key("listeners"), Step::Key("public")]),
            Some(2)
        );
        assert_eq!(
            line_of(YAML, &[Step::Key("routes"), Step::Index(1)]),
            Some(6)
        );
        assert_eq!(
            line_of(
                YAML,
                &[Step::Key("routes"), Step::Index(1), Step::Key("upstream")]
            ),
            Some(8)
        );
        assert_eq!(
            line_of(
                YAML,
                &[Step::Key("routes"), Step::Index(0), Step::Key("path")]
            ),
            Some(4)
        );
        assert_eq!(
            line_of(
                YAML,
                &[Step::Key("upstreams"), Step::Key("two"), Step::Key("url")]
            ),
            Some(13)
        );
    }

    #[test]
    fn duplicate_keys_are_found_where_the_second_one_is_written() {
        let dup = |t: &str| first_duplicate_key(t).map(|d| (d.line, d.key));
        assert_eq!(dup(YAML), None);
        assert_eq!(
            dup("a: 1\nb:\n  c: 1\n  c: 2\n"),
            Some((4, "b.c".to_owned()))
        );
        assert_eq!(
            dup("routes:\n  - path: /a\n    path: /b\n"),
            Some((3, "routes[0].path".to_owned()))
        );
        assert_eq!(
            dup("routes:\n- path: /a\n- path: /b\n  upstream: x\n  upstream: y\n"),
            Some((5, "routes[1].upstream".to_owned()))
        );
        assert_eq!(dup("a: 1\nb: 2\na: 3\n"), Some((3, "a".to_owned())));
        assert_eq!(
            dup("x:\n  t: |\n    a: 1\n    a: 2\n  u: 1\n"),
            None,
            "block scalars are text"
        );
        assert_eq!(dup("u:\n  url: http://x\n  other: http://y\n"), None);
        assert_eq!(dup("k: {a: 1, a: 2}\n"), None, "flow style is not read");
        assert_eq!(dup("\"a\": 1\n'a': 2\n"), Some((2, "a".to_owned())));
    }

    #[test]
    fn missing_keys_point_at_their_deepest_present_parent() {
        assert_eq!(line_of(YAML, &[Step::Key("nope")]), None);
        assert_eq!(
            line_of(YAML, &[Step::Key("routes"), Step::Index(5)]),
            Some(3)
        );
        assert_eq!(
            line_of(
                YAML,
                &[
                    Step::Key("upstreams"),
                    Step::Key("one"),
                    Step::Key("absent")
                ]
            ),
            Some(10)
        );
        assert_eq!(line_of("", &[Step::Key("a")]), None);
    }
}
