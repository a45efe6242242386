//! `routes[].members` and `routes[].federation`: the upstreams a federated route merges,
//! the prefixes that keep their names apart, and the proof that an unprefixed member's
//! names cannot collide with another member's.

use std::collections::HashSet;

use crate::error::ConfigError;
use crate::file::{FederationFile, MemberFile};
use crate::model::{Federation, Member, Upstream};
use crate::scope::Scope;

/// The characters the spec allows in a tool name.
fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
}

/// The longest tool name the spec allows.
pub const MAX_NAME: usize = 128;

pub(super) fn federation(
    at: &Scope<'_>,
    members: &[MemberFile],
    settings: Option<&FederationFile>,
    upstreams: &[Upstream],
) -> Result<Federation, ConfigError> {
    let defaults = FederationFile::default();
    let settings = settings.unwrap_or(&defaults);
    let at_sep = at.key("federation").key("separator");
    let sep = &settings.separator;
    if sep.is_empty() || sep.len() > 4 || !sep.chars().all(|c| matches!(c, '_' | '-' | '.')) {
        return Err(at_sep.err(format!(
            "`{sep}` must be one to four of `_`, `-`, `.`: valid in tool names, and not a letter or digit a name could contain"
        )));
    }
    if settings.fanout_timeout.is_zero() {
        return Err(at
            .key("federation")
            .key("fanout_timeout")
            .err("must be more than 0s"));
    }
    let at_members = at.key("members");
    let mut out = Vec::with_capacity(members.len());
    let mut seen_upstreams = HashSet::new();
    let mut seen_prefixes = HashSet::new();
    for (i, m) in members.iter().enumerate() {
        let at = at_members.index(i);
        let (name, prefix, expose) = match m {
            MemberFile::Name(n) => (n, Some(n.clone()), None),
            MemberFile::Mounted(m) => (
                &m.upstream,
                match m.prefix.as_deref() {
                    None => Some(m.upstream.clone()),
                    Some("") => None,
                    Some(p) => Some(p.to_owned()),
                },
                m.expose.clone(),
            ),
        };
        let Some(upstream) = upstreams.iter().position(|u| &u.name == name) else {
            return Err(at.err(format!("no upstream named `{name}` under `upstreams:`")));
        };
        if name.is_empty() || name.len() > 64 || !name.chars().all(is_name_char) {
            return Err(at.err(format!(
                "a member's upstream name must be 1 to 64 letters, digits, `_`, `-` or `.` (resource URIs and sealed sessions name the member by it); rename `{name}` under `upstreams:`"
            )));
        }
        if !seen_upstreams.insert(name.as_str()) {
            return Err(at.err(format!("`{name}` is a member twice")));
        }
        match &prefix {
            Some(p) => {
                let at = at.key("prefix");
                if p.len() > 64
                    || !p.chars().all(is_name_char)
                    || !p.ends_with(|c: char| c.is_ascii_alphanumeric())
                {
                    return Err(at.err(format!(
                        "`{p}` must be 1 to 64 letters, digits, `_`, `-` or `.`, ending in a letter or digit (prefixed names must stay valid tool names and split back one way only)"
                    )));
                }
                if p.contains(sep.as_str()) {
                    return Err(at.err(format!(
                        "`{p}` contains the separator `{sep}`, so prefixed names could not be split back"
                    )));
                }
                if !seen_prefixes.insert(p.clone()) {
                    return Err(at.err(format!("`{p}` prefixes two members")));
                }
                if expose.is_some() {
                    return Err(
                        at.err("`expose` is for members mounted without a prefix (`prefix: \"\"`)")
                    );
                }
            }
            None => {
                let Some(names) = &expose else {
                    return Err(at.key("prefix").err(
                        "a member mounted without a prefix must list the names it shows under `expose`, so the config proves they collide with no other member's",
                    ));
                };
                for (k, n) in names.iter().enumerate() {
                    if n.is_empty() || n.len() > MAX_NAME || !n.chars().all(is_name_char) {
                        return Err(at
                            .key("expose")
                            .index(k)
                            .err(format!("`{n}` is not a valid tool name")));
                    }
                }
            }
        }
        out.push(Member {
            upstream,
            name: name.clone(),
            prefix,
            expose,
        });
    }
    if out.is_empty() {
        return Err(at_members.err("a federated route needs at least one member"));
    }
    // An exposed name must not look like another member's prefixed name, nor be
    // exposed twice.
    let mut exposed = HashSet::new();
    for (i, m) in out.iter().enumerate() {
        for (k, n) in m.expose.iter().flatten().enumerate() {
            let at = at_members.index(i).key("expose").index(k);
            if let Some(other) = out
                .iter()
                .filter_map(|o| o.prefix.as_deref())
                .find(|p| n.starts_with(&format!("{p}{sep}")))
            {
                return Err(at.err(format!(
                    "`{n}` would collide with the names of the member prefixed `{other}`"
                )));
            }
            if !exposed.insert(n.as_str()) {
                return Err(at.err(format!("`{n}` is exposed by two members")));
            }
        }
    }
    Ok(Federation {
        members: out,
        separator: sep.clone(),
        fanout_timeout: settings.fanout_timeout,
        list_cache_ttl: settings.list_cache_ttl,
        grace: settings.grace,
    })
}

#[cfg(test)]
mod tests {
    use crate::error::ConfigError;
    use crate::Config;

    const UPSTREAMS: &str = "\
upstreams:
  github:
    url: http://127.0.0.1:3001/mcp
  jira:
    url: http://127.0.0.1:3002/mcp
  docs:
    url: http://127.0.0.1:3003/mcp
";

    fn load(route: &str) -> Result<Config, ConfigError> {
        let text = format!(
            "listeners:\n  public: 127.0.0.1:0\n  admin: 127.0.0.1:1\nroutes:\n  - path: /mcp\n{route}{UPSTREAMS}"
        );
        crate::load_str(
            std::path::Path::new("/etc/portcullis/portcullis.yaml"),
            &text,
        )
    }

    fn refused(route: &str, key: &str, says: &str) {
        let e = load(route).expect_err("should be refused");
        assert_eq!(e.key.as_deref(), Some(key), "{route}: {e}");
        assert!(e.line.is_some(), "{e}");
        assert!(e.message.contains(says), "{route}: {e}");
    }

    #[test]
    fn members_are_prefixed_by_name_unless_told_otherwise() {
        let c = load(
            "    members:\n      - github\n      - {upstream: jira, prefix: tickets}\n      - {upstream: docs, prefix: \"\", expose: [search_docs]}\n    federation:\n      separator: \".\"\n      list_cache_ttl: 0s\n",
        )
        .expect("valid");
        let f = c.routes[0].federation.as_ref().expect("federated");
        let prefixes: Vec<_> = f.members.iter().map(|m| m.prefix.as_deref()).collect();
        assert_eq!(prefixes, [Some("github"), Some("tickets"), None]);
        assert_eq!(f.separator, ".");
        assert!(f.list_cache_ttl.is_zero());
        assert_eq!(f.fanout_timeout, std::time::Duration::from_secs(5));
        assert_eq!(c.routes[0].upstream, f.members[0].upstream);
    }

    #[test]
    fn names_that_could_collide_are_refused_with_their_key() {
        refused(
            "    members: [github, github]\n",
            "routes[0].members[1]",
            "a member twice",
        );
        refused(
            "    members: [github, {upstream: jira, prefix: github}]\n",
            "routes[0].members[1].prefix",
            "prefixes two members",
        );
        refused(
            "    members: [github, {upstream: jira, prefix: \"a__b\"}]\n",
            "routes[0].members[1].prefix",
            "separator",
        );
        refused(
            "    members: [github, {upstream: jira, prefix: \"j-\"}]\n",
            "routes[0].members[1].prefix",
            "ending in a letter or digit",
        );
        refused(
            "    members: [github, {upstream: jira, prefix: \"\"}]\n",
            "routes[0].members[1].prefix",
            "expose",
        );
        refused(
            "    members: [github, {upstream: jira, prefix: \"\", expose: [github__x]}]\n",
            "routes[0].members[1].expose[0]",
            "collide",
        );
        refused(
            "    members:\n      - {upstream: jira, prefix: \"\", expose: [x]}\n      - {upstream: docs, prefix: \"\", expose: [x]}\n",
            "routes[0].members[1].expose[0]",
            "two members",
        );
        refused(
            "    members: [{upstream: jira, prefix: \"\", expose: [\"bad name\"]}]\n",
            "routes[0].members[0].expose[0]",
            "not a valid tool name",
        );
        refused(
            "    members: [{upstream: jira, expose: [x]}]\n",
            "routes[0].members[0].prefix",
            "without a prefix",
        );
    }

    #[test]
    fn settings_and_shapes_are_checked() {
        refused(
            "    members: [github]\n    federation:\n      separator: \"/\"\n",
            "routes[0].federation.separator",
            "one to four",
        );
        refused(
            "    members: [github]\n    federation:\n      fanout_timeout: 0s\n",
            "routes[0].federation.fanout_timeout",
            "more than 0s",
        );
        refused(
            "    members: [nope]\n",
            "routes[0].members[0]",
            "no upstream named `nope`",
        );
        refused(
            "    upstream: github\n    members: [jira]\n",
            "routes[0].members",
            "not both",
        );
        refused(
            "    upstream: github\n    federation:\n      separator: \"-\"\n",
            "routes[0].federation",
            "with `members`",
        );
        refused("    name: x\n", "routes[0]", "no upstream");
        refused("    members: []\n", "routes[0]", "no upstream");
    }
}
