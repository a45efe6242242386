//! `listeners:` (where the gateway listens) and `server:` (process settings).

use std::net::SocketAddr;
use std::time::Duration;

use crate::error::ConfigError;
use crate::file::{ListenersFile, ServerFile};
use crate::model::TlsListener;
use crate::scope::Scope;

/// Where the gateway listens.
pub(super) struct Listeners {
    pub public: Option<SocketAddr>,
    pub tls: Option<TlsListener>,
    pub admin: SocketAddr,
}

/// The public listeners (plain, TLS or both) and the admin one.
pub(super) fn listeners(at: &Scope<'_>, f: &ListenersFile) -> Result<Listeners, ConfigError> {
    let public = match (&f.public, &f.tls) {
        (Some(p), _) => Some(parse_addr(&at.key("public"), p)?),
        (None, None) => Some(parse_addr(&at.key("public"), "127.0.0.1:8080")?),
        (None, Some(_)) => None,
    };
    let tls = match &f.tls {
        Some(t) => {
            let at_tls = at.key("tls");
            let addr = parse_addr(&at_tls.key("address"), &t.address)?;
            Some(super::tls::listener(&at_tls, t, addr)?)
        }
        None => None,
    };
    let admin = parse_addr(&at.key("admin"), &f.admin)?;
    let taken = |a: SocketAddr| a.port() != 0 && a == admin;
    if public.is_some_and(taken) || tls.as_ref().is_some_and(|t| taken(t.addr)) {
        return Err(at
            .key("admin")
            .err("the admin listener must differ from the public ones"));
    }
    if let (Some(p), Some(t)) = (public, &tls) {
        if p == t.addr && p.port() != 0 {
            return Err(at
                .key("tls")
                .key("address")
                .err("the TLS listener must differ from the plain one"));
        }
    }
    Ok(Listeners { public, tls, admin })
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
