//! `routes:`: public paths, the upstream (or federated members) each forwards to, and what applies on the way
//! (authentication, a policy file, rate limits).

use std::collections::HashSet;
use std::sync::Arc;

use crate::error::ConfigError;
use crate::file::RouteFile;
use crate::model::{Route, Upstream};
use crate::scope::Scope;

/// The routes and the text of each policy file they name (part of the config version).
pub(super) struct Routed {
    pub routes: Vec<Route>,
    pub policy_texts: Vec<String>,
}

pub(super) fn routes(
    at: &Scope<'_>,
    files: &[RouteFile],
    upstreams: &[Upstream],
    public_url: Option<&str>,
    has_redis: bool,
) -> Result<Routed, ConfigError> {
    if files.is_empty() {
        return Err(at.err("no routes: add at least one entry under `routes:`"));
    }
    let mut seen = HashSet::new();
    let mut out = Routed {
        routes: Vec::with_capacity(files.len()),
        policy_texts: Vec::new(),
    };
    for (i, r) in files.iter().enumerate() {
        let at = at.index(i);
        let at_path = at.key("path");
        if !r.path.starts_with('/') || r.path.contains(['?', '#', ' ']) {
            return Err(at_path.err(format!(
                "`{}` must be an absolute path without query or fragment",
                r.path
            )));
        }
        if r.path.starts_with("/.well-known/") {
            return Err(at_path.err("/.well-known/ is reserved"));
        }
        if !seen.insert(r.path.as_str()) {
            return Err(at_path.err(format!("`{}` is routed twice", r.path)));
        }
        let (upstream, federation) = match (&r.upstream, r.members.is_empty()) {
            (Some(name), true) => {
                if r.federation.is_some() {
                    return Err(at
                        .key("federation")
                        .err("`federation` is for routes with `members`"));
                }
                let Some(i) = upstreams.iter().position(|u| &u.name == name) else {
                    return Err(at
                        .key("upstream")
                        .err(format!("no upstream named `{name}` under `upstreams:`")));
                };
                (i, None)
            }
            (None, false) => {
                let f = super::federation::federation(
                    &at,
                    &r.members,
                    r.federation.as_ref(),
                    upstreams,
                )?;
                (f.members[0].upstream, Some(Arc::new(f)))
            }
            (Some(_), false) => return Err(at.key("members").err(
                "give either `upstream` (one server) or `members` (several, federated), not both",
            )),
            (None, true) => {
                return Err(at.err(
                    "no upstream: give `upstream` (one server) or `members` (several, federated)",
                ))
            }
        };
        let auth = match &r.auth {
            Some(a) => Some(Arc::new(super::auth::compile(
                &at.key("auth"),
                a,
                public_url,
                &r.path,
            )?)),
            None => None,
        };
        let policy_path = r.policy.as_ref().map(|p| at.resolve(p));
        let policy = match &policy_path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| ConfigError::io(p, e))?;
                let compiled = crate::policy::policy_from_str(p, &text)?;
                out.policy_texts.push(text);
                Some(Arc::new(compiled))
            }
            None => None,
        };
        let rate_limits =
            super::traffic::rate_limits(&at.key("rate_limits"), &r.rate_limits, has_redis)?;
        out.routes.push(Route {
            name: r.name.clone().unwrap_or_else(|| r.path.clone()),
            path: r.path.clone(),
            upstream,
            federation,
            auth,
            policy,
            policy_path,
            rate_limits,
        });
    }
    Ok(out)
}
