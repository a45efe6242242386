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
