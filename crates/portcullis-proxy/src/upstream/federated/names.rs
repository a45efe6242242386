//! How a federated route names what its members offer: tool and prompt names get the
//! member's prefix and the separator (`github__search`), resource URIs are wrapped
//! reversibly in `portcullis://<member>/<the member's own URI>`, and each maps back to
//! exactly one member and its own name. A member mounted without a prefix shows only
//! the names it `expose`s (the config proved they collide with no other member's).

use std::collections::HashSet;

use portcullis_config::Federation;

/// The scheme and authority prefix of a member's resource URIs as clients see them.
pub const URI_SCHEME: &str = "portcullis://";

/// The longest tool or prompt name the spec allows.
const MAX_NAME: usize = 128;

#[derive(Clone)]
struct Mount {
    /// The member's upstream name (its URIs are wrapped with it).
    key: String,
    /// `prefix` + separator, or `None` when unprefixed.
    lead: Option<String>,
    /// An unprefixed member's names.
    expose: Option<HashSet<String>>,
}

/// The names of one federated route's members.
#[derive(Clone)]
pub struct Names {
    mounts: Vec<Mount>,
}

impl Names {
    /// The naming of `spec`'s members, in its order.
    pub fn new(spec: &Federation) -> Names {
        Names {
            mounts: spec
                .members
                .iter()
                .map(|m| Mount {
                    key: m.name.clone(),
                    lead: m.prefix.as_ref().map(|p| format!("{p}{}", spec.separator)),
                    expose: m.expose.as_ref().map(|e| e.iter().cloned().collect()),
                })
                .collect(),
        }
    }

    /// What clients call member `m`'s tool or prompt `own`; `None` when it is not shown
    /// (not exposed, or too long a name once prefixed).
    pub fn outward(&self, m: usize, own: &str) -> Option<String> {
        let mount = self.mounts.get(m)?;
        let name = match (&mount.lead, &mount.expose) {
            (Some(lead), _) => format!("{lead}{own}"),
            (None, Some(names)) if names.contains(own) => own.to_owned(),
            (None, _) => return None,
        };
        (name.len() <= MAX_NAME).then_some(name)
    }

    /// The member a client's tool or prompt name belongs to, and its own name there.
    pub fn inward<'a>(&self, name: &'a str) -> Option<(usize, &'a str)> {
        // Prefixes end in a letter or digit and never hold the separator, so at most
        // one matches.
        self.mounts
            .iter()
            .enumerate()
            .find_map(|(m, mount)| match (&mount.lead, &mount.expose) {
                (Some(lead), _) => name
                    .strip_prefix(lead.as_str())
                    .filter(|own| !own.is_empty())
                    .map(|own| (m, own)),
                (None, Some(names)) if names.contains(name) => Some((m, name)),
                (None, _) => None,
            })
    }

    /// What clients see for member `m`'s resource URI (or URI template) `own`.
    pub fn outward_uri(&self, m: usize, own: &str) -> Option<String> {
        let mount = self.mounts.get(m)?;
        Some(format!("{URI_SCHEME}{}/{own}", mount.key))
    }

    /// The member a client's resource URI belongs to, and the member's own URI.
    pub fn inward_uri<'a>(&self, uri: &'a str) -> Option<(usize, &'a str)> {
        let (key, own) = uri.strip_prefix(URI_SCHEME)?.split_once('/')?;
        let m = self.member(key)?;
        (!own.is_empty()).then_some((m, own))
    }

    /// The member (its upstream name) and its own name behind `name`, a name of `kind`
    /// as clients see it: what a policy rule naming the member matches.
    pub fn own(&self, kind: portcullis_policy::Kind, name: &str) -> Option<(String, String)> {
        use portcullis_policy::Kind;
        let (m, own) = match kind {
            Kind::Tool | Kind::Prompt => self.inward(name)?,
            Kind::Resource | Kind::ResourceTemplate => self.inward_uri(name)?,
            Kind::Method => return None,
        };
        Some((self.key(m).to_owned(), own.to_owned()))
    }

    /// The member whose upstream is named `key`.
    pub fn member(&self, key: &str) -> Option<usize> {
        self.mounts.iter().position(|mount| mount.key == key)
    }

    /// Member `m`'s upstream name.
    pub fn key(&self, m: usize) -> &str {
        self.mounts.get(m).map_or("", |mount| mount.key.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portcullis_config::Member;
    use std::time::Duration;

    fn names() -> Names {
        let member = |name: &str, prefix: Option<&str>, expose: Option<&[&str]>| Member {
            upstream: 0,
            name: name.into(),
            prefix: prefix.map(Into::into),
            expose: expose.map(|e| e.iter().map(|s| s.to_string()).collect()),
        };
        Names::new(&Federation {
            members: vec![
                member("alpha", Some("a"), None),
                member("beta", Some("a_b"), None),
                member("plain", None, Some(&["search"])),
            ],
            separator: "__".into(),
            fanout_timeout: Duration::from_secs(1),
            list_cache_ttl: Duration::from_secs(1),
            grace: Duration::from_secs(1),
        })
    }

    #[test]
    fn names_map_out_and_back_to_one_member() {
        let n = names();
        assert_eq!(n.outward(0, "echo").as_deref(), Some("a__echo"));
        assert_eq!(n.inward("a__echo"), Some((0, "echo")));
        assert_eq!(n.outward(1, "echo").as_deref(), Some("a_b__echo"));
        assert_eq!(n.inward("a_b__echo"), Some((1, "echo")));
        // A member's own name may hold the separator.
        assert_eq!(n.inward("a___x"), Some((0, "_x")));
        assert_eq!(n.inward("a__"), None, "no own name");
        assert_eq!(n.inward("echo"), None, "unprefixed and not exposed");
        assert_eq!(n.outward(2, "search").as_deref(), Some("search"));
        assert_eq!(n.outward(2, "other"), None, "not exposed");
        assert_eq!(n.inward("search"), Some((2, "search")));
        assert_eq!(
            n.outward(0, &"x".repeat(126)),
            None,
            "too long once prefixed"
        );
        assert_eq!(n.outward(9, "echo"), None);
    }

    #[test]
    fn uris_wrap_reversibly() {
        let n = names();
        let out = n.outward_uri(1, "file:///a/b?c#d").expect("wrapped");
        assert_eq!(out, "portcullis://beta/file:///a/b?c#d");
        assert_eq!(n.inward_uri(&out), Some((1, "file:///a/b?c#d")));
        assert_eq!(n.inward_uri("portcullis://nobody/file:///x"), None);
        assert_eq!(n.inward_uri("portcullis://alpha"), None, "truncated");
        assert_eq!(n.inward_uri("portcullis://alpha/"), None);
        assert_eq!(n.inward_uri("file:///x"), None);
    }
}
