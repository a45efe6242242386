//! The deadline filter, on calls with a deadline: a progress notification renews the
//! deadline and the answer's first event ends it. Until then every other event is held
//! until it ends (when it fits), so the error the gateway sends when the deadline
//! passes never lands inside one.

use portcullis_mcp::scan::{Head, Mode};

use super::{Effects, Filter};

/// Watches a call's events for its deadline.
#[derive(Debug)]
pub struct DeadlineFilter {
    armed: bool,
}

impl DeadlineFilter {
    /// A filter for a call whose deadline runs.
    pub fn new() -> DeadlineFilter {
        DeadlineFilter { armed: true }
    }
}

impl Default for DeadlineFilter {
    fn default() -> Self {
        DeadlineFilter::new()
    }
}

impl Filter for DeadlineFilter {
    fn wants(&self, head: &Head) -> Mode {
        if self.armed && *head != Head::Response {
            Mode::Hold
        } else {
            Mode::Stream
        }
    }

    fn on_head(&mut self, head: &Head, fx: &mut Effects) {
        match head {
            Head::Method(m) if m == "notifications/progress" => fx.progress = true,
            Head::Response => {
                self.armed = false;
                fx.answered = true;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Chain;
    use super::*;

    #[test]
    fn progress_renews_and_the_answer_streams_through_at_once() {
        let mut chain = Chain::new(vec![Box::new(DeadlineFilter::new())], 1 << 20, false);
        let half = b"data: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":";
        assert!(chain.push(half).is_empty(), "held until it ends");
        assert!(chain.at_boundary());
        let out = chain.push(b"{\"progress\":1}}\n\n");
        assert!(out.starts_with(half) && out.ends_with(b"\n\n"));
        let fx = chain.effects();
        assert!(fx.progress && !fx.answered);
        let out = chain.push(b"data: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[");
        assert!(!out.is_empty(), "the answer is not held");
        assert!(chain.effects().answered);
        assert!(!chain.at_boundary());
    }
}
