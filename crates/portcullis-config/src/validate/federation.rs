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
