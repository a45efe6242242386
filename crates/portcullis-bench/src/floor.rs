//! The floor: a bare pingora `ProxyHttp` pass-through (only `upstream_peer`) with the
//! same pingora settings Portcullis uses, so "Portcullis / floor" isolates what
//! Portcullis's own work costs on top of pingora.

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{http_proxy_service, ProxyHttp, Session};

struct PassThrough {
    peer: HttpPeer,
}

#[async_trait]
impl ProxyHttp for PassThrough {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(self.peer.clone()))
    }
}

/// Serves until killed.
pub fn serve(listen: &str, upstream: &str, threads: usize, work_stealing: bool) {
    let Ok(addr) = upstream.parse::<std::net::SocketAddr>() else {
        eprintln!("floor: bad upstream address {upstream}");
        return;
    };
    let conf = ServerConf {
        threads,
        work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upstream_keepalive_pool_size: 128,
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    let peer = HttpPeer::new(addr, false, String::new());
    let mut svc = http_proxy_service(&server.configuration, PassThrough { peer });
    svc.add_tcp(listen);
    server.add_service(svc);
    server.run_forever();
}
