//! On a federated route, a member's answer to a message routed to it: the member's
//! server-to-client requests (sampling, elicitation, roots, ping) and its cancellations
//! of them get ids that name the member ([`ids::outward_request_id`]), so the client's
//! answer goes back to that member alone and two members' ids never meet; task ids
//! likewise ([`ids::outward_task_ids`]), so `tasks/*` reach the member running the task.

use portcullis_mcp::scan::{Head, Mode};
use serde_json::Value;

use super::{Effects, Filter, Verdict};
use crate::upstream::federated::ids;

/// Maps one member's request and task ids on their way to the client.
pub struct MemberIds {
    /// The member's key (its upstream name).
    pub member: String,
    /// The answer is to a task-augmented call or a `tasks/*` request: its result and its
    /// progress carry task ids too.
    pub tasks: bool,
}

impl MemberIds {
    /// A whole JSON answer (not a stream), its task ids mapped; unchanged when it is
    /// not JSON.
    pub fn whole_json(&self, body: &[u8]) -> Vec<u8> {
        let Ok(mut msg) = serde_json::from_slice::<Value>(body) else {
            return body.to_vec();
        };
        if !ids::outward_task_ids(&self.member, &mut msg) {
            return body.to_vec();
        }
        serde_json::to_vec(&msg).unwrap_or_else(|_| body.to_vec())
    }
}

impl Filter for MemberIds {
    fn wants(&self, head: &Head) -> Mode {
        match head {
            // A request's id, a cancellation's requestId, a task's id must be read
            // whole.
            Head::Method(m)
                if !m.starts_with("notifications/")
                    || m == "notifications/cancelled"
                    || m == "notifications/tasks/status"
                    || (self.tasks && m == "notifications/progress") =>
            {
                Mode::Whole
            }
            Head::Response if self.tasks => Mode::Whole,
            _ => Mode::Stream,
        }
    }

    fn on_event(
        &mut self,
        data: Option<&str>,
        head: &Head,
        _ambiguous: bool,
        _fx: &mut Effects,
    ) -> Verdict {
        let Some(data) = data else {
            return Verdict::Pass;
        };
        let Ok(mut msg) = serde_json::from_str::<Value>(data) else {
            return Verdict::Pass;
        };
        let mut changed = ids::outward_task_ids(&self.member, &mut msg);
        if let Head::Method(method) = head {
            let slot = match method.as_str() {
                "notifications/cancelled" => msg.pointer_mut("/params/requestId"),
                m if m.starts_with("notifications/") => None,
                _ => msg.get_mut("id"),
            };
            if let Some(id) = slot {
                *id = ids::outward_request_id(&self.member, id);
                changed = true;
            }
        }
        if changed {
            Verdict::Replace(msg.to_string())
        } else {
            Verdict::Pass
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_request_id_names_the_member_and_notifications_pass() {
        let mut f = MemberIds {
            member: "alpha".into(),
            tasks: false,
        };
        let mut fx = Effects::default();
        let sampling = Head::Method("sampling/createMessage".into());
        assert_eq!(f.wants(&sampling), Mode::Whole);
        let v = f.on_event(
            Some(r#"{"jsonrpc":"2.0","id":3,"method":"sampling/createMessage","params":{}}"#),
            &sampling,
            false,
            &mut fx,
        );
        let Verdict::Replace(d) = v else {
            panic!("rewritten: {v:?}")
        };
        assert!(d.contains(r#""id":"alpha~3""#), "{d}");
        let cancel = Head::Method("notifications/cancelled".into());
        let Verdict::Replace(d) = f.on_event(
            Some(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"x"}}"#),
            &cancel,
            false,
            &mut fx,
        ) else {
            panic!("rewritten")
        };
        assert!(d.contains(r#""requestId":"alpha~\"x\"""#), "{d}");
        let progress = Head::Method("notifications/progress".into());
        assert_eq!(f.wants(&progress), Mode::Stream);
        assert_eq!(f.wants(&Head::Response), Mode::Stream);
    }
}
