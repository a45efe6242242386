//! Listening sockets bound before pingora starts, so `127.0.0.1:0` works and the
//! actual address is known (pingora 0.9.1 exposes no bound address). The socket is
//! handed to pingora through its listen-fd table, the same path a graceful upgrade
//! uses, so pingora's own accept loop and buffered streams serve it.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{IntoRawFd, RawFd};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::server::Fds;
use pingora_core::server::{ListenFds, ShutdownWatch};
use pingora_core::services::Service;

/// A socket bound and listening, not yet handed to pingora.
pub struct Prebound {
    /// The address it is bound to, with the real port.
    pub addr: SocketAddr,
    fd: RawFd,
}

impl Prebound {
    /// Binds and listens on `addr` (port 0 picks a free port).
    pub fn bind(addr: SocketAddr) -> std::io::Result<Prebound> {
        let listener = TcpListener::bind(addr)?;
        // pingora drives it with tokio, which needs a non-blocking socket.
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Prebound {
            addr,
            fd: listener.into_raw_fd(),
        })
    }

    /// The key pingora looks the socket up by.
    pub fn key(&self) -> String {
        self.addr.to_string()
    }
}

/// Wraps a pingora listening service so it finds its prebound socket in the fd table.
pub struct PreboundService<S> {
    inner: S,
    sockets: Vec<(String, RawFd)>,
}

impl<S> PreboundService<S> {
    /// `inner` must listen (`add_tcp`, `add_tls_with_settings`) on exactly each
    /// socket's `key()`.
    pub fn new(inner: S, sockets: Vec<Prebound>) -> PreboundService<S> {
        PreboundService {
            inner,
            sockets: sockets.into_iter().map(|s| (s.key(), s.fd)).collect(),
        }
    }
}

#[async_trait]
impl<S: Service + 'static> Service for PreboundService<S> {
    async fn start_service(
        &mut self,
        fds: Option<ListenFds>,
        shutdown: ShutdownWatch,
        listeners_per_fd: usize,
    ) {
        let fds = fds.unwrap_or_else(|| Arc::new(Mutex::new(Fds::new())));
        {
            let mut table = fds.lock();
            for (key, fd) in self.sockets.drain(..) {
                table.add(key, fd);
            }
        }
        self.inner
            .start_service(Some(fds), shutdown, listeners_per_fd)
            .await
    }

    fn name(&self) -> &str {
        self.inner.name()
    }

    fn threads(&self) -> Option<usize> {
        self.inner.threads()
    }
}
