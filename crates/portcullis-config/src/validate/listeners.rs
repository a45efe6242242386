//! `listeners:` (where the gateway listens) and `server:` (process settings).

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ConfigError;
use crate::file::{ListenersFile, ServerFile};
use crate::scope::Scope;

/// The public and admin addresses.
pub(super) fn addresses(
    at: &Scope<'_>,
    f: &ListenersFile,
) -> Result<(SocketAddr, SocketAddr), ConfigError> {
    let public = parse_addr(&at.key("public"), &f.public)?;
    let admin = parse_addr(&at.key("admin"), &f.admin)?;
    if public == admin && public.port() != 0 {
        return Err(at
            .key("admin")
            .err("the admin listener must differ from the public one"));
    }
    Ok((public, admin))
}

fn parse_addr(at: &Scope<'_>, value: &str) -> Result<SocketAddr, ConfigError> {
    value
        .parse()
        .map_err(|_| at.err(format!("`{value}` is not an address such as 0.0.0.0:8080")))
}

/// `server:` as the gateway uses it.
pub(super) struct Server {
    pub threads: usize,
    pub grace_period: Duration,
    pub work_stealing: bool,
}

pub(super) fn server(at: &Scope<'_>, f: &ServerFile) -> Result<Server, ConfigError> {
    let threads = match f.threads {
        Some(0) => return Err(at.key("threads").err("threads must be at least 1")),
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    Ok(Server {
        threads,
        grace_period: f.grace_period,
        work_stealing: f.work_stealing,
    })
}
