//! On a federated route, a member's answer to a message routed to it: the member's
//! server-to-client requests (sampling, elicitation, roots, ping) and its cancellations
//! of them get ids that name the member ([`ids::outward_request_id`]), so the client's
//! answer goes back to that member alone and two members' ids never meet.

use portcullis_mcp::scan::{Head, Mode};
use serde_json::Value;

use super::{Effects, Filter, Verdict};
use crate::upstream::federated::ids;

/// Maps one member's request ids on their way to the client.
pub struct MemberIds {
    /// The member's key (its upstream name).
    pub member: String,
}

impl Filter for MemberIds {
    fn wants(&self, head: &Head) -> Mode {
        match head {
            // A request's id, or a cancellation's requestId, must be read whole.
            Head::Method(m)
                if !m.starts_with("notifications/") || m == "notifications/cancelled" =>
            {
                Mode::Whole
            }
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
        let (Some(data), Head::Method(method)) = (data, head) else {
            return Verdict::Pass;
        };
        let Ok(mut msg) = serde_json::from_str::<Value>(data) else {
            return Verdict::Pass;
        };
        let slot = if method == "notifications/cancelled" {
            msg.pointer_mut("/params/requestId")
        } else {
            msg.get_mut("id")
        };
        match slot {
            Some(id) => {
                *id = ids::outward_request_id(&self.member, id);
                Verdict::Replace(msg.to_string())
            }
            None => Verdict::Pass,
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
